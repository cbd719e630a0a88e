//! What an operator relies on: the rate limit with its headers, request timeouts, the
//! bound on commands in flight, the OpenAPI document and its offline page. (Metrics are in `metrics.rs`.)

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::sync::Arc;
use std::time::Duration;

use chronicle_api::limits::LimitSettings;
use chronicle_tests::{
    AppOptions, TestApp, TestDb, eventually, spawn_app, spawn_with_settings, test_settings,
};
use reqwest::StatusCode;
use serde_json::json;

async fn app_with(protection: LimitSettings) -> TestApp {
    let mut settings = test_settings(&AppOptions::default());
    settings.protection = protection;
    spawn_with_settings(Arc::new(TestDb::create().await), settings, false).await
}

#[tokio::test]
async fn over_the_rate_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let app = app_with(LimitSettings {
        per_second: 1.0,
        burst: 3.0,
        ..LimitSettings::default()
    })
    .await;
    let alice = app.client_token("alice");
    let body = json!({ "currency": "EUR" });
    for remaining in ["2", "1", "0"] {
        let reply = app.post("/v1/accounts", Some(&alice), &[], &body).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        let header = reply.headers["ratelimit"].to_str().unwrap();
        assert!(
            header.starts_with(&format!("limit=3, remaining={remaining}")),
            "{header}"
        );
    }
    let limited = app.post("/v1/accounts", Some(&alice), &[], &body).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.code(), "rate_limited");
    assert_eq!(limited.headers["retry-after"].to_str().unwrap(), "1");
    assert_eq!(
        limited.headers["ratelimit"].to_str().unwrap(),
        "limit=3, remaining=0, reset=1"
    );
    assert_eq!(
        limited.headers["ratelimit-policy"].to_str().unwrap(),
        "3;w=3"
    );
    // Another principal has a bucket of its own; health checks are never limited.
    assert_eq!(
        app.post("/v1/accounts", Some(&app.client_token("bob")), &[], &body)
            .await
            .status,
        StatusCode::CREATED
    );
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Tokens come back with time (a refused request takes none).
    eventually("a token back for alice", || async {
        let reply = app.post("/v1/accounts", Some(&alice), &[], &body).await;
        match reply.status {
            StatusCode::CREATED => Ok(()),
            StatusCode::TOO_MANY_REQUESTS => Err("still limited".to_owned()),
            _ => panic!("{reply:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_request_over_its_time_answers_503_timeout() {
    let app = app_with(LimitSettings {
        request_timeout: Duration::from_millis(300),
        ..LimitSettings::default()
    })
    .await;
    let token = app.client_token("alice");
    let created = app
        .post(
            "/v1/accounts",
            Some(&token),
            &[],
            &json!({ "currency": "EUR" }),
        )
        .await;
    // No projector runs here: waiting for this position outlasts the request's time.
    let path = format!(
        "/v1/accounts/{}?min_position={}",
        created.id("account_id"),
        created.body["position"]
    );
    let reply = app.get(&path, &token).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "timeout")
    );
    assert!(reply.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_beyond_the_in_flight_bound_answer_503_overloaded() {
    let app = app_with(LimitSettings {
        max_inflight_commands: 1,
        ..LimitSettings::default()
    })
    .await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    // An uncommitted booking holds the seat: a second request for it waits on the
    // database, occupying the only command slot.
    let mut holder = app.pool.begin().await.unwrap();
    let booking = uuid::Uuid::new_v4();
    let body = TestApp::booking_body(account, "stage", &["X1"], 2, 0);
    let payload = json!({
        "type": "BookingRequested", "booking_id": booking, "account_id": account, "owner": "alice",
        "resource_id": "stage", "seats": ["X1"], "starts_at": body["starts_at"], "ends_at": body["ends_at"],
        "price": {"amount": 1, "currency": "EUR"}, "guest": {"name": "a", "email": "a@b.cd"}, "notes": null,
        "requested_at": body["starts_at"]
    });
    sqlx::query("INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) VALUES ('Booking', $1, 1, 'BookingRequested', '1', $2, '{}')")
        .bind(booking.to_string())
        .bind(payload)
        .execute(&mut *holder)
        .await
        .unwrap();
    let waiting = {
        let (app_base, client, token, body) = (
            app.base.clone(),
            app.client.clone(),
            token.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            client
                .post(format!("{app_base}/v1/bookings"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // The booking holds the only slot once its append waits for the seat's lock.
    eventually("the booking waiting on the seat lock", || async {
        let waiting_on_lock: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if waiting_on_lock > 0 {
            Ok(())
        } else {
            Err("no backend waits on a lock".into())
        }
    })
    .await;
    let refused = app
        .post(
            &format!("/v1/accounts/{account}/deposits"),
            Some(&token),
            &[],
            &json!({ "amount": 1 }),
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    );
    holder.commit().await.unwrap();
    assert_eq!(
        waiting.await.unwrap(),
        StatusCode::CONFLICT,
        "the seat was taken by the holder"
    );
    let after = app
        .post(
            &format!("/v1/accounts/{account}/deposits"),
            Some(&token),
            &[],
            &json!({ "amount": 1 }),
        )
        .await;
    assert_eq!(after.status, StatusCode::OK);
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_and_the_docs_page_works_offline() {
    let app = spawn_app().await;
    let document: serde_json::Value = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/accounts", "post"),
        ("/v1/accounts/{id}", "get"),
        ("/v1/accounts/{id}/transactions", "get"),
        ("/v1/accounts/{id}/balance", "get"),
        ("/v1/accounts/{id}/deposits", "post"),
        ("/v1/accounts/{id}/withdrawals", "post"),
        ("/v1/accounts/{id}/close", "post"),
        ("/v1/bookings", "post"),
        ("/v1/bookings", "get"),
        ("/v1/bookings/{id}", "get"),
        ("/v1/bookings/{id}/cancel", "post"),
        ("/v1/payments", "post"),
        ("/v1/payments/{id}", "get"),
        ("/v1/payments/{id}/refund", "post"),
        ("/v1/search/bookings", "get"),
        ("/v1/analytics/revenue", "get"),
        ("/v1/analytics/occupancy", "get"),
        ("/v1/audit/{aggregate_type}/{id}/events", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        let operation = &paths[path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        if path.starts_with("/v1") {
            assert_eq!(
                operation["security"][0]["bearer"],
                json!([]),
                "{method} {path} names its auth"
            );
            assert!(
                operation["responses"]["401"].is_object()
                    && operation["responses"]["429"].is_object()
            );
        }
    }
    let codes = document["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap();
    for code in [
        "insufficient_funds",
        "seat_taken",
        "version_conflict",
        "idempotency_key_reused",
        "rate_limited",
    ] {
        assert!(codes.contains(&json!(code)), "{code}");
    }
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let page = app.get_text("/docs/").await;
    assert!(
        page.contains("swagger") && !page.contains("cdn."),
        "the page loads nothing from a CDN"
    );
    let bundle = app
        .client
        .get(format!("{}/docs/swagger-ui-bundle.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK);
}
