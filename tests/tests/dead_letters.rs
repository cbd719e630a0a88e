//! One policy for a message a consumer cannot read, for each of the three consumers
//! (read models, search, process manager), against the real broker: the message is set
//! aside in `projector_dead_letters` with the reason, counted in
//! `chronicle_projector_dead_letters_total{projector}`, and the consumer goes on with
//! the next message.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::time::Duration;

use chronicle_eventstore::envelope::{Envelope, EnvelopeMetadata, topic_for};
use chronicle_eventstore::kafka::ensure_topics;
use chronicle_tests::{AppOptions, TestApp, eventually, spawn_app_with};
use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// Sends `payload` to the topic of `aggregate_type` as the relay would (keyed by id);
/// an empty one as a message without a payload.
async fn send(app: &TestApp, aggregate_type: &str, key: &str, payload: Vec<u8>) {
    let producer: FutureProducer = app
        .settings
        .kafka
        .client_config("dead-letter-test")
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let topic = topic_for(&app.settings.kafka.topic_prefix, aggregate_type);
    let mut record = FutureRecord::to(&topic).key(key);
    if !payload.is_empty() {
        record = record.payload(&payload);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| error)
        .unwrap();
}

fn envelope(aggregate_type: &str, id: Uuid, event_type: &str, payload: Value) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        event_id: Uuid::new_v4(),
        global_position: 1_000_000,
        aggregate_type: aggregate_type.into(),
        aggregate_id: id.to_string(),
        sequence: 1,
        event_type: event_type.into(),
        event_version: "1".into(),
        recorded_at: Utc::now(),
        payload,
        metadata: EnvelopeMetadata::default(),
    })
    .unwrap()
}

/// Waits until `projector` has set aside `count` messages; returns their reasons, in
/// offset order.
async fn dead_letters(app: &TestApp, projector: &str, count: usize) -> Vec<String> {
    let reasons = eventually(&format!("{count} dead letters of {projector}"), || async {
        let reasons: Vec<String> = sqlx::query_scalar(
            "SELECT error FROM projector_dead_letters WHERE projector = $1 \
             ORDER BY topic, partition, \"offset\"",
        )
        .bind(projector)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        if reasons.len() >= count {
            Ok(reasons)
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await;
    assert_eq!(reasons.len(), count, "{reasons:?}");
    reasons
}

async fn counted(app: &TestApp, projector: &str) -> String {
    let metrics = app.get_text("/metrics").await;
    let line = format!("chronicle_projector_dead_letters_total{{projector=\"{projector}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or("absent")
        .to_owned()
}

/// Waits until `path`, read with `token`, answers 200 with a body `done` accepts.
async fn shows(app: &TestApp, token: &str, path: &str, done: impl Fn(&Value) -> bool) {
    eventually(path, || async {
        let reply = app.get(path, token).await;
        if reply.status == StatusCode::OK && done(&reply.body) {
            Ok(())
        } else {
            Err(format!("{reply:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_models_set_aside_what_they_cannot_read_and_go_on() {
    let app = spawn_app_with(AppOptions::default()).await;
    ensure_topics(&app.settings.kafka).await.unwrap();
    let id = Uuid::new_v4();
    send(&app, "Account", &id.to_string(), b"not json".to_vec()).await;
    let garbled = envelope(
        "Account",
        id,
        "FundsDeposited",
        json!({"type": "FundsDeposited"}),
    );
    send(&app, "Account", &id.to_string(), garbled).await;
    app.start_relay();
    app.start_projector_only_read_models();

    let reasons = dead_letters(&app, "read-models", 2).await;
    assert!(
        reasons[0].starts_with("not an event envelope: "),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("Account FundsDeposited: "),
        "{reasons:?}"
    );
    assert_eq!(counted(&app, "read-models").await, "2");
    // What comes after is applied.
    let token = app.client_token("ada");
    let account = app.open_account(&token, "EUR", 0).await;
    let deposit = app.deposit(&token, account, 250).await;
    assert_eq!(deposit.status, StatusCode::OK, "{deposit:?}");
    shows(&app, &token, &format!("/v1/accounts/{account}"), |a| {
        a["balance"] == 250
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_projector_sets_aside_what_it_cannot_read_and_goes_on() {
    let app = spawn_app_with(AppOptions::default()).await;
    ensure_topics(&app.settings.kafka).await.unwrap();
    let id = Uuid::new_v4();
    send(&app, "Booking", &id.to_string(), Vec::new()).await;
    let garbled = envelope(
        "Booking",
        id,
        "BookingRequested",
        json!({"type": "BookingRequested", "booking_id": 7}),
    );
    send(&app, "Booking", &id.to_string(), garbled).await;
    let _search = app.start_search_projector().await;

    let reasons = dead_letters(&app, "search", 2).await;
    assert_eq!(reasons[0], "empty message");
    assert!(
        reasons[1].starts_with("Booking BookingRequested: "),
        "{reasons:?}"
    );
    assert_eq!(counted(&app, "search").await, "2");
    // What comes after is indexed.
    let booking = Uuid::new_v4();
    let requested = json!({
        "type": "BookingRequested", "booking_id": booking, "account_id": Uuid::new_v4(),
        "owner": "ada", "resource_id": "hall-1", "seats": ["A1"],
        "starts_at": "2030-01-01T10:00:00Z", "ends_at": "2030-01-01T12:00:00Z",
        "price": {"amount": 1500, "currency": "EUR"},
        "guest": {"name": "Ada Quillfeather", "email": "ada@example.org"},
        "notes": null, "requested_at": "2029-12-01T00:00:00Z"
    });
    send(
        &app,
        "Booking",
        &booking.to_string(),
        envelope("Booking", booking, "BookingRequested", requested),
    )
    .await;
    let token = app.client_token("ada");
    let id = booking.to_string();
    shows(&app, &token, "/v1/search/bookings?q=quillfeather", |page| {
        page.to_string().contains(&id)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_manager_sets_aside_what_it_cannot_read_and_goes_on() {
    let app = spawn_app_with(AppOptions::default()).await;
    ensure_topics(&app.settings.kafka).await.unwrap();
    let id = Uuid::new_v4();
    send(
        &app,
        "Booking",
        &id.to_string(),
        b"{\"truncated\":".to_vec(),
    )
    .await;
    // A flow starter whose payload is another event: no flow may guess from it.
    let cancelled =
        json!({"type": "BookingCancelled", "reason": null, "cancelled_at": "2029-12-02T00:00:00Z"});
    let mislabelled = envelope("Booking", id, "BookingRequested", cancelled);
    send(&app, "Booking", &id.to_string(), mislabelled).await;
    app.start_process_manager();

    let reasons = dead_letters(&app, "process-manager", 2).await;
    assert!(
        reasons[0].starts_with("not an event envelope: "),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[1],
        "event type BookingRequested with a BookingCancelled payload"
    );
    assert_eq!(counted(&app, "process-manager").await, "2");
    // Both offsets are stored: a restart reads neither again.
    eventually("both offsets stored", || async {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT sum(next_offset)::bigint FROM projector_offsets WHERE projector = 'process-manager'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if next == Some(2) { Ok(()) } else { Err(format!("{next:?}")) }
    })
    .await;
}
