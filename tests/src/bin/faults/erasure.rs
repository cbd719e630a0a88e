//! The erasure row's own work and checks (issue 16, ADR 0035): bookings for guests of
//! their own, then every guest's erasure requested one after another while `chronicle
//! all` is killed with -9 in the middle of them and started again. Right after the
//! restart no subject may be half erased (a key gone without its `PersonalDataErased`
//! event, or the event without the key gone); every erasure answered before the kill
//! must have held. The erasures not answered are then asked again, as a client would.
//! Afterwards each guest must be erased exactly once, and every read row and search
//! document of their bookings must show them erased (the suite's diffs compare the
//! opened fields with a replay).

use std::time::Duration;

use chronicle_domain::Role;
use serde_json::{Value, json};

use crate::jump::Client;
use crate::load::LoadReport;
use crate::stage::Stage;

const GUESTS: usize = 30;
/// How many erasures are answered before the kill.
const BEFORE_KILL: usize = 8;

fn email(n: usize) -> String {
    format!("erasure-guest-{n}@example.org")
}

/// Books for the guests, then kills Chronicle among their erasures and asks again for
/// what was not answered. Returns what the clients did and a note.
pub async fn kill_during_erasures(stage: &mut Stage) -> (LoadReport, String) {
    let base = stage.deployment.base.clone();
    let mut client = Client::new(&base, &stage.deployment.token());
    let account = client
        .post("/v1/accounts", json!({ "currency": "EUR" }))
        .await
        .and_then(|b| b["account_id"].as_str().map(str::to_owned))
        .expect("an account for the erasure row");
    client
        .post(
            &format!("/v1/accounts/{account}/deposits"),
            json!({ "amount": 1_000_000 }),
        )
        .await
        .expect("a deposit for the erasure row");
    let starts = chrono::Utc::now() + chrono::Duration::days(6);
    let mut booked = 0;
    for n in 0..GUESTS {
        let body = json!({
            "account_id": account, "resource_id": "erasure-hall", "seats": [format!("E{n}")],
            "starts_at": starts, "ends_at": starts + chrono::Duration::hours(2),
            "price": { "amount": 100, "currency": "EUR" },
            "guest": { "name": format!("Erasable Guest{n}"), "email": email(n) },
            "notes": format!("private note {n}")
        });
        booked += usize::from(client.post("/v1/bookings", body).await.is_some());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let privacy = stage.deployment.token_of("dpo", &[Role::Privacy]);
    let erasures = tokio::spawn(erase_all(base.clone(), privacy.clone()));
    // Kill once some erasures were answered: the next is most likely in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while erased_events(&stage.pool).await < BEFORE_KILL as i64
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stage.deployment.kill("all").await;
    let answered = erasures.await.unwrap();
    let half = half_erased(&stage.pool).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stage.deployment.start(false).await;
    let lost = still_live(&stage.pool, &answered).await;
    // Ask again for every guest: the answered ones answer the same.
    let again = erase_all(base, privacy).await;
    let retried_ok = again.iter().filter(|a| a.is_some()).count();
    (
        client.report,
        format!(
            "{booked} bookings of {GUESTS} guests; killed with -9 after {} erasures were \
             answered; right after: {half} half-erased subjects, {lost} answered erasures \
             lost; asked again: {retried_ok} of {GUESTS} answered",
            answered.iter().filter(|a| a.is_some()).count()
        ),
    )
}

/// How many of the subjects whose erasure was answered still have a live key.
async fn still_live(pool: &sqlx::PgPool, answered: &[Option<Value>]) -> i64 {
    let subjects: Vec<String> = answered
        .iter()
        .flatten()
        .filter_map(|body| Some(body["subject_id"].as_str()?.to_owned()))
        .collect();
    sqlx::query_scalar(
        "SELECT count(*) FROM subject_keys WHERE subject_id = ANY($1) AND wrapped IS NOT NULL",
    )
    .bind(&subjects)
    .fetch_one(pool)
    .await
    .unwrap_or(-1)
}

/// Asks for each guest's erasure in turn; each answer's body when it was 200.
async fn erase_all(base: String, token: String) -> Vec<Option<Value>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut answers = Vec::with_capacity(GUESTS);
    for n in 0..GUESTS {
        let reply = http
            .post(format!("{base}/v1/subjects/erasure"))
            .bearer_auth(&token)
            .json(&json!({ "email": email(n) }))
            .send()
            .await;
        let body = match reply {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
            _ => None,
        };
        answers.push(body);
    }
    answers
}

async fn erased_events(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'PersonalDataErased'")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// Subjects with a key erased but no erasure event, or an erasure event and a key of
/// the versions it names still live.
async fn half_erased(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "WITH erased AS ( \
           SELECT payload->>'subject_id' AS subject_id, \
                  (jsonb_array_elements_text(payload->'key_versions'))::int AS key_version \
             FROM events WHERE event_type = 'PersonalDataErased') \
         SELECT count(*) FROM subject_keys k \
          WHERE (k.wrapped IS NULL) <> EXISTS ( \
                SELECT 1 FROM erased e \
                 WHERE e.subject_id = k.subject_id AND e.key_version = k.key_version)",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(-1)
}

/// What the checks found, for the note; `Err` when an erasure was lost, doubled or
/// half done, or a read row still shows a guest.
pub async fn check(pool: &sqlx::PgPool) -> Result<String, String> {
    let half = half_erased(pool).await;
    let (events, subjects): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT payload->>'subject_id') FROM events \
          WHERE event_type = 'PersonalDataErased'",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM subject_keys k \
          WHERE k.wrapped IS NOT NULL AND EXISTS ( \
                SELECT 1 FROM events e JOIN bookings b \
                    ON e.aggregate_type = 'Booking' AND b.booking_id::text = e.aggregate_id \
                 WHERE e.payload ? 'personal' \
                   AND e.payload -> 'personal' ->> 'subject' = k.subject_id \
                   AND b.resource_id = 'erasure-hall')",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    // The read rows: every guest of the row's bookings erased, nothing sealed left.
    let (rows, showing): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE guest_name <> '[erased]' OR personal IS NOT NULL \
                                           OR notes IS NOT NULL) \
           FROM bookings WHERE resource_id = 'erasure-hall'",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    let note = format!(
        "{events} erasures of {subjects} subjects, {half} half erased, {live} keys of the \
         row's guests still live; {showing} of {rows} read rows still showing a guest"
    );
    let all = GUESTS as i64;
    if events != all || subjects != all || half != 0 || live != 0 || showing != 0 || rows != all {
        Err(note)
    } else {
        Ok(note)
    }
}
