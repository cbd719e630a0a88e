//! The clock row's own work and checks. Before the jump: recurring payments on a funded
//! account of their own (every 10 minutes, 12 charges; the first falls due at once), and
//! a burst of bookings whose holds are still open. The clock then jumps an hour: six
//! more charges fall due at once, and every booking still pending has held its seats
//! longer than the hold allows. Afterwards each payment must have been charged exactly
//! for the charges due by the (moved) clock, none twice and none skipped, and each
//! booking's money must match its fate: a confirmed booking charged once, an expired
//! one not charged (or refunded).

use std::time::Duration;

use serde_json::{Value, json};

use crate::clock::FakedClock;
use crate::load::{Answer, LoadReport, send};

/// How far the clock jumps.
pub const JUMP: Duration = Duration::from_secs(3600);
/// The recurring payments' interval.
const EVERY_SECONDS: u32 = 600;
const PAYMENTS: usize = 8;
const BOOKINGS: usize = 30;

/// A client of the suite's own rows: its requests' answers and acknowledged positions
/// join the load's report.
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    pub(crate) report: LoadReport,
}

impl Client {
    pub(crate) fn new(base: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(crate::load::CLIENT_TIMEOUT)
                .build()
                .unwrap(),
            base: base.to_owned(),
            token: token.to_owned(),
            report: LoadReport::default(),
        }
    }

    /// Sends a command; records its answer and, when acknowledged, its position.
    pub(crate) async fn post(&mut self, path: &str, body: Value) -> Option<Value> {
        let reply = send(&self.http, &self.base, &self.token, path, body).await;
        self.record(reply)
    }

    fn record(&mut self, (answer, body): (Answer, Option<Value>)) -> Option<Value> {
        self.report.answers.push(answer);
        let body = body?;
        if let Some(position) = body["position"].as_i64() {
            self.report.acknowledged.push(position);
        }
        Some(body)
    }
}

/// Sets up the payments, sends the burst of bookings and jumps the clock while they are
/// in flight. Returns what the clients did and a note.
pub async fn jump(base: &str, token: &str, clock: &FakedClock) -> (LoadReport, String) {
    let mut client = Client::new(base, token);
    let account = client
        .post("/v1/accounts", json!({ "currency": "EUR" }))
        .await
        .and_then(|b| b["account_id"].as_str().map(str::to_owned))
        .expect("an account for the clock row");
    client
        .post(
            &format!("/v1/accounts/{account}/deposits"),
            json!({ "amount": 10_000_000 }),
        )
        .await
        .expect("a deposit for the clock row");
    let mut payments = 0;
    for _ in 0..PAYMENTS {
        let body = json!({
            "account_id": account, "amount": 700, "currency": "EUR", "kind": "recurring",
            "schedule": { "interval_seconds": EVERY_SECONDS, "count": 12 }
        });
        payments += usize::from(client.post("/v1/payments", body).await.is_some());
    }
    // The first charges fall due at once; let them go through before the burst.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let starts = chrono::Utc::now() + chrono::Duration::days(3);
    let burst: Vec<_> = (0..BOOKINGS)
        .map(|seat| {
            let (http, base, token) = (client.http.clone(), base.to_owned(), token.to_owned());
            let body = json!({
                "account_id": account, "resource_id": "clock-hall", "seats": [format!("J{seat}")],
                "starts_at": starts, "ends_at": starts + chrono::Duration::hours(2),
                "price": { "amount": 300, "currency": "EUR" },
                "guest": { "name": "Clock Guest", "email": "clock@example.org" }
            });
            tokio::spawn(async move { send(&http, &base, &token, "/v1/bookings", body).await })
        })
        .collect();
    // The jump lands while the burst is answered and its bookings are being charged.
    tokio::time::sleep(Duration::from_millis(150)).await;
    clock.jump(JUMP);
    let mut booked = 0;
    for reply in burst {
        let body = client.record(reply.await.unwrap());
        booked += usize::from(body.is_some());
    }
    // The processes re-read the clock's file within a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    (
        client.report,
        format!(
            "{payments} recurring payments every {} min, {booked} bookings in flight at the jump",
            EVERY_SECONDS / 60
        ),
    )
}

/// What the checks found, for the note; `Err` when the jump broke a promise.
pub async fn check(pool: &sqlx::PgPool) -> Result<String, String> {
    // Per recurring payment: the charges due by the clock now and 5 s ago (a charge
    // falling due while the checks run may be in flight), and what was captured.
    let rows: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "WITH initiated AS ( \
           SELECT aggregate_id, (payload->>'initiated_at')::timestamptz AS start, \
                  (payload->'schedule'->>'interval_seconds')::int AS every, \
                  (payload->'schedule'->>'count')::int AS count \
             FROM events \
            WHERE event_type = 'PaymentInitiated' AND payload->>'kind' = 'recurring'), \
         captured AS ( \
           SELECT aggregate_id, count(*) AS captures, \
                  count(DISTINCT (payload->>'charge')::int) AS charges, \
                  coalesce(max((payload->>'charge')::int), 0) AS last \
             FROM events WHERE event_type = 'PaymentCaptured' GROUP BY aggregate_id) \
         SELECT least(count, floor(extract(epoch FROM now() - interval '5 s' - start) / every) + 1)::bigint, \
                least(count, floor(extract(epoch FROM now() - start) / every) + 1)::bigint, \
                coalesce(captures, 0), coalesce(charges, 0), coalesce(last, 0)::bigint \
           FROM initiated LEFT JOIN captured USING (aggregate_id)",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    let doubled = rows.iter().filter(|r| r.2 != r.3).count();
    let skipped = rows
        .iter()
        .filter(|&&(due_before, due_now, _, charges, last)| {
            charges != last || charges < due_before || charges > due_now
        })
        .count();
    let charges: i64 = rows.iter().map(|r| r.3).sum();
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'ChargeFailed'")
            .fetch_one(pool)
            .await
            .map_err(|e| e.to_string())?;
    // Each booking's money against its fate, in the read models (which the diff has
    // shown equal to a replay).
    let (expired, confirmed, wrong): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE b.status = 'expired'), \
                count(*) FILTER (WHERE b.status = 'confirmed'), \
                count(*) FILTER (WHERE \
                  (b.status = 'confirmed' AND coalesce(p.captured_total - p.refunded_total, 0) <> b.price_amount) \
                  OR (b.status IN ('expired', 'rejected') AND coalesce(p.captured_total - p.refunded_total, 0) <> 0)) \
           FROM bookings b LEFT JOIN payments p ON p.payment_id = b.payment_id \
          WHERE b.resource_id = 'clock-hall'",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    let note = format!(
        "{charges} recurring charges captured for {} payments, {doubled} twice, {skipped} \
         skipped, {failed} failed; of the burst {expired} bookings expired and {confirmed} \
         confirmed, {wrong} with money not matching",
        rows.len()
    );
    if doubled > 0 || skipped > 0 || wrong > 0 || failed > 0 || rows.is_empty() {
        Err(note)
    } else {
        Ok(note)
    }
}
