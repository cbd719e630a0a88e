//! What an operator relies on: the rate limit with its headers, request timeouts, the
//! bounds on commands and queries in flight (and slow readers holding neither), the OpenAPI document and its offline page. (Metrics are in `metrics.rs`.)

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_beyond_the_in_flight_bound_answer_503_overloaded_at_once_and_recover() {
    let app = app_with(LimitSettings {
        max_inflight_queries: 1,
        admission_wait: Duration::from_millis(50),
        request_timeout: Duration::from_secs(3),
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
    let account = created.id("account_id");
    // No projector runs here: a read of this position waits, holding the only place.
    let waiting = {
        let (client, url, token) = (
            app.client.clone(),
            format!(
                "{}/v1/accounts/{account}?min_position={}",
                app.base, created.body["position"]
            ),
            token.clone(),
        );
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await })
    };
    eventually("the waiting read holding the only place", || async {
        let page = app.get_text("/metrics").await;
        if page.contains("chronicle_admission_in_flight{kind=\"queries\"} 1") {
            Ok(())
        } else {
            Err("no query in flight yet".to_owned())
        }
    })
    .await;
    // Refused after the admission wait, not after the request's whole time (`timeout`).
    let refused = app.get(&format!("/v1/accounts/{account}"), &token).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    );
    assert_eq!(refused.headers["retry-after"].to_str().unwrap(), "1");
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("chronicle_admission_refused_total{kind=\"queries\"} 1"),
        "{metrics}"
    );
    // Commands have places of their own.
    let deposit = app.deposit(&token, account, 5).await;
    assert!(deposit.status.is_success(), "{deposit:?}");
    // The waiting read runs out of time; its place comes free and reads are served
    // again at once (no projector: the read model never has the account).
    let waited = waiting.await.unwrap().unwrap();
    assert_eq!(waited.status(), StatusCode::SERVICE_UNAVAILABLE);
    let served = app.get(&format!("/v1/accounts/{account}"), &token).await;
    assert_eq!(served.status, StatusCode::NOT_FOUND, "{served:?}");
}

/// Audit-trail queries the handler has answered (counted when its response is built,
/// before the body is sent).
async fn trail_answers(app: &TestApp) -> u64 {
    app.get_text("/metrics")
        .await
        .lines()
        .filter(|l| {
            l.starts_with("chronicle_http_requests_total")
                && l.contains("/v1/audit/{aggregate_type}/{id}/events")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A client that sends a long query and then does not read the answer holds neither a
/// database connection nor a query place: the body is built whole before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_long_answer_holds_no_connection_and_no_place() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The audit trail is read from the projector's journal: the read side runs.
    let mut settings = test_settings(&AppOptions::with_read_side());
    settings.protection.max_inflight_queries = 2;
    let app = spawn_with_settings(Arc::new(TestDb::create().await), settings, true).await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    let deposits: Vec<_> = (0..8)
        .map(|worker| {
            let (client, base, token) = (app.client.clone(), app.base.clone(), token.clone());
            tokio::spawn(async move {
                for n in 0..60 {
                    let reply = client
                        .post(format!("{base}/v1/accounts/{account}/deposits"))
                        .bearer_auth(&token)
                        .json(&json!({ "amount": 1, "reference": format!("w{worker}-{n}") }))
                        .send()
                        .await
                        .unwrap();
                    assert!(reply.status().is_success(), "{}", reply.status());
                }
            })
        })
        .collect();
    for deposits in deposits {
        deposits.await.unwrap();
    }
    let auditor = app.token("auditor", &[chronicle_domain::Role::Auditor]);
    let trail = format!("/v1/audit/account/{account}/events?limit=500");
    eventually("the whole trail projected", || async {
        let reply = app.get(&trail, &auditor).await;
        match reply.body["items"].as_array().map(Vec::len) {
            Some(481) => Ok(()),
            other => Err(format!("{other:?} events of 481")),
        }
    })
    .await;
    // What the app holds on its own once idle (listeners of the watch and the relay):
    // the least seen over a moment.
    let in_use = || app.pool.size() as usize - app.pool.num_idle();
    let mut held_anyway = usize::MAX;
    for _ in 0..10 {
        held_anyway = held_anyway.min(in_use());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let trail_answers_before = trail_answers(&app).await;
    let addr: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let request = format!(
        "GET {trail} HTTP/1.1\r\nHost: chronicle\r\nAuthorization: Bearer {auditor}\r\n\r\n"
    );
    // Eight readers with tiny receive buffers that never read: each answer (about
    // 200 KiB) sticks in its socket.
    let mut readers = Vec::new();
    for _ in 0..8 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(2048).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        readers.push(stream);
    }
    eventually(
        "every slow reader's query answered by its handler",
        || async {
            match trail_answers(&app).await - trail_answers_before {
                n if n >= 8 => Ok(()),
                n => Err(format!("{n} of 8 answered")),
            }
        },
    )
    .await;
    eventually("no connection in use while the answers wait", || async {
        match in_use() {
            n if n <= held_anyway => Ok(()),
            n => Err(format!("{n} connections in use, {held_anyway} before")),
        }
    })
    .await;
    let page = app.get_text("/metrics").await;
    assert!(
        page.contains("chronicle_admission_in_flight{kind=\"queries\"} 0"),
        "{page}"
    );
    // Two places, eight stuck readers: queries are still served.
    let balance = app
        .get(
            &format!("/v1/audit/account/{account}/events?limit=1"),
            &auditor,
        )
        .await;
    assert_eq!(balance.status, StatusCode::OK, "{balance:?}");
    // The answers were only waiting for their readers.
    let mut first = readers.swap_remove(0);
    let mut head = [0u8; 12];
    first.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
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
