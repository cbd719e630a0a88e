//! An independent Kafka client (kafka-python, not librdkafka) reads the topics and
//! parses every envelope. `scripts/test.sh` prepares the Python environment and names it
//! in `CHRONICLE_TEST_PYTHON`.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use chronicle_eventstore::envelope::event_id;
use chronicle_tests::spawn_full_app;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_reads_and_parses_every_envelope() {
    let python = std::env::var("CHRONICLE_TEST_PYTHON")
        .expect("CHRONICLE_TEST_PYTHON is not set: run the suite with scripts/test.sh, which installs kafka-python");
    let app = spawn_full_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    let deposit = app.deposit(&token, account, 40).await;
    assert_eq!(deposit.status, StatusCode::OK, "{deposit:?}");
    let booking = chronicle_tests::TestApp::booking_body(account, "deck", &["1"], 2, 0);
    let booked = app.post("/v1/bookings", Some(&token), &[], &booking).await;
    assert_eq!(booked.status, StatusCode::CREATED, "{booked:?}");
    let paid = app
        .post(
            "/v1/payments",
            Some(&token),
            &[],
            &json!({ "account_id": account, "amount": 5, "currency": "EUR", "kind": "one_time" }),
        )
        .await;
    assert_eq!(paid.status, StatusCode::CREATED, "{paid:?}");
    app.wait_until_projected().await;

    let stored: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence FROM events ORDER BY global_position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/consume_envelopes.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(&app.settings.kafka.brokers)
        .arg(app.settings.kafka.topics().join(","))
        .arg(stored.len().to_string())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "kafka-python: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["count"].as_u64(), Some(stored.len() as u64));
    let mut seen: Vec<String> = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_str().unwrap().to_owned())
        .collect();
    let mut expected: Vec<String> = stored
        .iter()
        .map(|(t, id, seq)| event_id(t, id, *seq).to_string())
        .collect();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
}
