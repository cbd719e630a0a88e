//! Metrics count what this process did. The registry is global to the process, so this
//! test has a binary of its own: in `operations.rs` the other tests' requests, running
//! at the same time, were counted too (seen as a deposit counted twice).

#![allow(clippy::unwrap_used)]

use chronicle_tests::spawn_app;
use serde_json::json;

#[tokio::test]
async fn metrics_count_requests_commands_and_events() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 5).await;
    app.post(
        &format!("/v1/accounts/{account}/withdrawals"),
        Some(&token),
        &[],
        &json!({ "amount": 50 }),
    )
    .await;
    let text = app.get_text("/metrics").await;
    for expected in [
        "chronicle_http_requests_total{method=\"POST\",route=\"/v1/accounts/{id}/deposits\",status=\"200\"} 1",
        "chronicle_http_request_duration_seconds_bucket",
        "chronicle_commands_total{aggregate=\"Account\",outcome=\"appended\"} 2",
        "chronicle_commands_total{aggregate=\"Account\",outcome=\"insufficient_funds\"} 1",
        "chronicle_events_appended_total{aggregate=\"Account\"} 2",
        "chronicle_db_pool_connections{state=\"idle\"}",
    ] {
        assert!(text.contains(expected), "missing {expected}\n{text}");
    }
}
