//! The billing row's own work and checks (issue 15): weekly subscriptions on a funded
//! account of their own, each charged its first period at once; then the clock jumps
//! five weeks, so a billing run of five periods per subscription falls due, and
//! `chronicle all` is killed with -9 in the middle of it and started again. Afterwards
//! every subscription must have exactly the periods due by the (moved) clock charged,
//! each once and in order, and the account must have been debited once per charge.

use std::time::Duration;

use serde_json::json;

use crate::clock::FakedClock;
use crate::jump::Client;
use crate::load::LoadReport;
use crate::stage::Stage;

const SUBSCRIPTIONS: usize = 20;
const PRICE: i64 = 700;
/// How far the clock jumps: five weekly periods.
pub const JUMP: Duration = Duration::from_secs(35 * 24 * 3600);

/// Starts the subscriptions, jumps the clock and kills Chronicle while it bills. Returns
/// what the clients did and a note.
pub async fn kill_during_billing(stage: &mut Stage, clock: &FakedClock) -> (LoadReport, String) {
    let mut client = Client::new(&stage.deployment.base, &stage.deployment.token());
    let account = client
        .post("/v1/accounts", json!({ "currency": "EUR" }))
        .await
        .and_then(|b| b["account_id"].as_str().map(str::to_owned))
        .expect("an account for the billing row");
    client
        .post(
            &format!("/v1/accounts/{account}/deposits"),
            json!({ "amount": 10_000_000 }),
        )
        .await
        .expect("a deposit for the billing row");
    let mut started = 0;
    for n in 0..SUBSCRIPTIONS {
        let body = json!({
            "account_id": account, "kind": "subscription",
            "plan": { "name": format!("weekly {n}"), "amount": PRICE, "currency": "EUR", "interval": "week" }
        });
        started += usize::from(client.post("/v1/payments", body).await.is_some());
    }
    // The first periods are charged at once; let them go through.
    tokio::time::sleep(Duration::from_secs(3)).await;
    clock.jump(JUMP);
    // The processes re-read the clock's file within a second; then the run is under way.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let charged_before = period_charges(&stage.pool).await;
    stage.deployment.kill("all").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stage.deployment.start(false).await;
    (
        client.report,
        format!(
            "{started} weekly subscriptions, the clock moved five weeks, killed with -9 after \
             {charged_before} period charges"
        ),
    )
}

async fn period_charges(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'PeriodCharged'")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// Per subscription: periods due by the clock 5 s ago and now (a period falling due while
/// the checks run may be in flight), period charges, distinct periods charged, and the
/// highest period charged plus one.
type Billed = (i64, i64, i64, i64, i64);

async fn billed(pool: &sqlx::PgPool) -> Result<Vec<Billed>, String> {
    sqlx::query_as(
        "WITH started AS ( \
           SELECT aggregate_id, (payload->>'anchor')::timestamptz AS anchor FROM events \
            WHERE event_type = 'SubscriptionStarted'), \
         charged AS ( \
           SELECT aggregate_id, count(*) AS charges, \
                  count(DISTINCT (payload->>'period')::int) AS periods, \
                  max((payload->>'period')::int) + 1 AS upto \
             FROM events WHERE event_type = 'PeriodCharged' GROUP BY aggregate_id) \
         SELECT (floor(extract(epoch FROM now() - interval '5 s' - anchor) / 604800) + 1)::bigint, \
                (floor(extract(epoch FROM now() - anchor) / 604800) + 1)::bigint, \
                coalesce(charges, 0), coalesce(periods, 0), coalesce(upto, 0)::bigint \
           FROM started LEFT JOIN charged USING (aggregate_id)",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())
}

/// What the checks found, for the note; `Err` when a period was charged twice, skipped,
/// or debited without being recorded (or the other way round).
pub async fn check(pool: &sqlx::PgPool) -> Result<String, String> {
    // The restarted scheduler catches up a period per subscription a tick: wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = billed(pool).await?;
        let behind = rows.iter().any(|r| r.2 < r.0);
        if !behind || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let twice = rows.iter().filter(|r| r.2 != r.3).count();
    let skipped = rows
        .iter()
        .filter(|&&(due_before, due_now, _, periods, upto)| {
            periods != upto || periods < due_before || periods > due_now
        })
        .count();
    let charges: i64 = rows.iter().map(|r| r.2).sum();
    // Every debit of the row's account is a period's charge (its only withdrawals).
    let debits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events w \
          WHERE w.event_type = 'FundsWithdrawn' AND w.aggregate_id IN ( \
                SELECT DISTINCT payload->>'account_id' FROM events \
                 WHERE event_type = 'SubscriptionStarted')",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    let note = format!(
        "{charges} period charges for {} subscriptions, {twice} twice, {skipped} skipped or \
         beyond what is due; {debits} debits of the account",
        rows.len()
    );
    if twice > 0 || skipped > 0 || debits != charges || rows.is_empty() {
        Err(note)
    } else {
        Ok(note)
    }
}
