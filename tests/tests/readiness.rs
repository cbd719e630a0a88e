//! `/readyz` fails, with a reason, when the relay is held back by an open transaction
//! or a projector (the process manager among them) lags beyond its bound; `/metrics`
//! shows both lags.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::sync::Arc;
use std::time::Duration;

use chronicle_tests::{
    AppOptions, TestApp, TestDb, eventually, spawn_with_settings, test_settings,
};
use reqwest::StatusCode;
use sqlx::Executor;

async fn readyz(app: &TestApp) -> (StatusCode, serde_json::Value) {
    let response = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn wait_for_reason(app: &TestApp, fragment: &str) -> serde_json::Value {
    eventually(&format!("readiness failing with {fragment:?}"), || async {
        let (status, body) = readyz(app).await;
        if status == StatusCode::SERVICE_UNAVAILABLE
            && body["reasons"].to_string().contains(fragment)
        {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await
}

async fn wait_until_ready(app: &TestApp) {
    eventually("ready", || async {
        match readyz(app).await {
            (StatusCode::OK, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_holding_the_relay_back_is_a_readiness_failure() {
    let mut settings = test_settings(&AppOptions::with_read_side());
    settings.lag_interval = Duration::from_millis(100);
    settings.ready.held_back_seconds = 0.5;
    let app = spawn_with_settings(Arc::new(TestDb::create().await), settings, true).await;
    let token = app.client_token("alice");
    app.open_account(&token, "EUR", 0).await;
    app.wait_until_projected().await;
    wait_until_ready(&app).await;

    let mut blocker = app.pool.begin().await.unwrap();
    blocker
        .execute("SELECT pg_current_xact_id()")
        .await
        .unwrap();
    app.open_account(&token, "EUR", 0).await;
    let body = wait_for_reason(&app, "relay held back").await;
    assert_eq!(body["relay"]["held_back"], 1);
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("chronicle_relay_held_back_events 1"),
        "{metrics}"
    );

    blocker.rollback().await.unwrap();
    app.wait_until_projected().await;
    wait_until_ready(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_projector_is_a_readiness_failure() {
    let mut settings = test_settings(&AppOptions::with_read_side());
    settings.lag_interval = Duration::from_millis(100);
    settings.ready.projector_messages = 2;
    let app = spawn_with_settings(Arc::new(TestDb::create().await), settings, false).await;
    app.start_relay();
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    for amount in 1..=5 {
        app.deposit(&token, account, amount).await;
    }
    let body = wait_for_reason(&app, "projector read-models lag").await;
    assert_eq!(body["projector_lag"], 6);
    app.start_projector();
    app.wait_until_projected().await;
    wait_until_ready(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_process_manager_is_a_readiness_failure() {
    let mut settings = test_settings(&AppOptions::with_read_side());
    settings.lag_interval = Duration::from_millis(100);
    settings.ready.projector_messages = 2;
    let app = spawn_with_settings(Arc::new(TestDb::create().await), settings, true).await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 100_000).await;
    // Seven requests over three partitions: one partition holds at least three, beyond
    // the bound of two.
    for seat in ["A1", "A2", "A3", "A4", "A5", "A6", "A7"] {
        let body = TestApp::booking_body(account, "hall", &[seat], 10, 0);
        let reply = app.post("/v1/bookings", Some(&token), &[], &body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    }
    // Nothing charges the bookings: their requests wait on the booking topic. The
    // monitor samples partitions one by one while the relay publishes, so the first
    // failing report may not count every request yet: wait until it does.
    wait_for_reason(&app, "projector process-manager lag").await;
    eventually("all seven requests counted as lag", || async {
        let (status, body) = readyz(&app).await;
        if status == StatusCode::SERVICE_UNAVAILABLE && body["projectors"]["process-manager"] == 7 {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chronicle_projector_lag{")
                && l.contains("projector=\"process-manager\"")),
        "{metrics}"
    );

    app.start_process_manager();
    wait_until_ready(&app).await;
    // Ready means within the bound (two), not caught up: wait for the last flows.
    eventually("the process manager caught up", || async {
        match readyz(&app).await {
            (StatusCode::OK, body) if body["projectors"]["process-manager"] == 0 => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
}
