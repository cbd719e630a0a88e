//! `Idempotency-Key`: a repeated request answers the original result and appends
//! nothing; the same key with another request is refused.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use chronicle_tests::{eventually, spawn_app};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_repeated_request_returns_the_original_response_and_adds_no_event() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    let path = format!("/v1/accounts/{account}/deposits");
    let key = [("Idempotency-Key", "deposit-0001")];

    let first = app
        .post(&path, Some(&token), &key, &json!({ "amount": 700 }))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let events = app.count_events("FundsDeposited").await;
    // Formatting differs, meaning does not.
    let again = app
        .post_raw(
            &path,
            Some(&token),
            &key,
            "application/json",
            br#"{ "amount" : 700 }"#.to_vec(),
        )
        .await;
    assert_eq!(again.status, first.status);
    assert_eq!(again.body, first.body);
    assert_eq!(app.count_events("FundsDeposited").await, events);

    let other = app
        .post(&path, Some(&token), &key, &json!({ "amount": 701 }))
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.code(), "idempotency_key_reused");
    let elsewhere = app
        .post(
            &format!("/v1/accounts/{account}/withdrawals"),
            Some(&token),
            &key,
            &json!({ "amount": 700 }),
        )
        .await;
    assert_eq!(elsewhere.code(), "idempotency_key_reused");
    assert_eq!(app.count_events("FundsDeposited").await, events);
    assert_eq!(app.count_events("FundsWithdrawn").await, 0);
}

#[tokio::test]
async fn a_repeated_create_names_the_same_aggregate() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let key = [("Idempotency-Key", "open-1")];
    let body = json!({ "currency": "EUR" });
    let first = app.post("/v1/accounts", Some(&token), &key, &body).await;
    let second = app.post("/v1/accounts", Some(&token), &key, &body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(first.body, second.body);
    assert_eq!(app.count_events("AccountOpened").await, 1);

    // Keys belong to their principal: bob's "open-1" is his own.
    let bob = app.client_token("bob");
    let his = app.post("/v1/accounts", Some(&bob), &key, &body).await;
    assert_eq!(his.status, StatusCode::CREATED);
    assert_ne!(his.id("account_id"), first.id("account_id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_with_one_key_create_one_account() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let body = json!({ "currency": "EUR" });
    let replies = join_all((0..8).map(|_| {
        app.post(
            "/v1/accounts",
            Some(&token),
            &[("Idempotency-Key", "same")],
            &body,
        )
    }))
    .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        assert_eq!(reply.body, replies[0].body);
    }
    assert_eq!(app.count_events("AccountOpened").await, 1);
}

/// Records past the retention are forgotten by the sweeper `serve` runs; younger ones
/// are kept and still answer repeats.
#[tokio::test]
async fn records_past_the_retention_are_forgotten_and_younger_ones_kept() {
    use std::sync::Arc;
    use std::time::Duration;

    use chronicle_commands::{CommandService, CommandSettings};
    use tokio_util::sync::CancellationToken;

    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    let path = format!("/v1/accounts/{account}/deposits");
    for key in ["old-1", "young-1"] {
        let reply = app
            .post(
                &path,
                Some(&token),
                &[("Idempotency-Key", key)],
                &json!({ "amount": 5 }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '3 hours' \
          WHERE idempotency_key = 'old-1'",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let sweeper = Arc::new(CommandService::new(
        app.pool.clone(),
        CommandSettings {
            idempotency_retention: Duration::from_secs(2 * 3600),
            ..CommandSettings::default()
        },
    ));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (sweeper, stop) = (sweeper.clone(), stop.clone());
        async move { sweeper.sweep_expired_records(stop).await }
    });
    let remaining = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT idempotency_key FROM idempotency_keys WHERE actor = 'alice' ORDER BY 1",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };
    eventually("the old record expired", || async {
        let keys = remaining().await;
        if keys.contains(&"old-1".to_owned()) {
            Err(format!("{keys:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(remaining().await, ["young-1"]);
    let repeat = app
        .post(
            &path,
            Some(&token),
            &[("Idempotency-Key", "young-1")],
            &json!({ "amount": 5 }),
        )
        .await;
    assert_eq!(repeat.status, StatusCode::OK);
    assert_eq!(app.count_events("FundsDeposited").await, 2);
}
