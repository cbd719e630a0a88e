//! Malformed and hostile input never produces a 5xx, and each kind gets its own
//! documented status and problem code.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use chronicle_api::auth::JwtKeys;
use chronicle_domain::Role;
use chronicle_tests::{TestApp, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    status: StatusCode,
    code: &'static str,
}

fn expect(name: &'static str, status: StatusCode, code: &'static str) -> Case {
    Case { name, status, code }
}

fn check(case: &Case, reply: &chronicle_tests::Reply) {
    assert!(
        reply.status.as_u16() < 500,
        "{}: got a 5xx: {reply:?}",
        case.name
    );
    assert_eq!(reply.status, case.status, "{}: {reply:?}", case.name);
    assert_eq!(reply.code(), case.code, "{}: {reply:?}", case.name);
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{}",
        case.name
    );
}

async fn json_cases(app: &TestApp, token: &str, account: uuid::Uuid) {
    let deposits = format!("/v1/accounts/{account}/deposits");
    let withdrawals = format!("/v1/accounts/{account}/withdrawals");
    let cases: Vec<(Case, &str, Value)> = vec![
        (
            expect(
                "wrong type",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &deposits,
            json!({ "amount": "ten" }),
        ),
        (
            expect(
                "float amount",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &deposits,
            json!({ "amount": 12.5 }),
        ),
        (
            expect(
                "missing field",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &deposits,
            json!({}),
        ),
        (
            expect(
                "unknown field",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &deposits,
            json!({ "amount": 1, "admin": true }),
        ),
        (
            expect(
                "negative amount",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &deposits,
            json!({ "amount": -5 }),
        ),
        (
            expect(
                "zero amount",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &withdrawals,
            json!({ "amount": 0 }),
        ),
        (
            expect(
                "amount above the maximum",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &deposits,
            json!({ "amount": 1_000_000_000_000_000_001i64 }),
        ),
        (
            expect(
                "amount beyond i64",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &deposits,
            json!({ "amount": 1e30 }),
        ),
        (
            expect(
                "amount i64::MAX",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &deposits,
            json!({ "amount": i64::MAX }),
        ),
        (
            expect(
                "amount i64::MIN",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &withdrawals,
            json!({ "amount": i64::MIN }),
        ),
        (
            expect(
                "unknown currency",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            "/v1/accounts",
            json!({ "currency": "XYZ" }),
        ),
        (
            expect(
                "lowercase currency",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            "/v1/accounts",
            json!({ "currency": "eur" }),
        ),
        (
            expect(
                "negative overdraft",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            "/v1/accounts",
            json!({ "currency": "EUR", "overdraft_limit": -1 }),
        ),
        (
            expect(
                "currency mismatch",
                StatusCode::UNPROCESSABLE_ENTITY,
                "currency_mismatch",
            ),
            &deposits,
            json!({ "amount": 5, "currency": "USD" }),
        ),
        (
            expect(
                "control characters",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &deposits,
            json!({ "amount": 5, "reference": "a\u{0}b" }),
        ),
        (
            expect(
                "array body",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            &deposits,
            json!([1, 2, 3]),
        ),
        (
            expect(
                "insufficient funds",
                StatusCode::UNPROCESSABLE_ENTITY,
                "insufficient_funds",
            ),
            &withdrawals,
            json!({ "amount": 1_000_000 }),
        ),
    ];
    for (case, path, body) in &cases {
        check(case, &app.post(path, Some(token), &[], body).await);
    }
}

async fn booking_cases(app: &TestApp, token: &str, account: uuid::Uuid) {
    let valid = TestApp::booking_body(account, "room-9", &["1"], 3, 0);
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let cases = vec![
        (
            expect(
                "start in the past",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            with("starts_at", json!(past)),
        ),
        (
            expect(
                "empty range",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            with("ends_at", valid["starts_at"].clone()),
        ),
        (
            expect(
                "no seats",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            with("seats", json!([])),
        ),
        (
            expect(
                "duplicate seats",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            with("seats", json!(["1", "1"])),
        ),
        (
            expect(
                "not a time",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            with("starts_at", json!("tomorrow")),
        ),
        (
            expect(
                "bad email",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            with("guest", json!({ "name": "x", "email": "nope" })),
        ),
        (
            expect(
                "price currency not the account's",
                StatusCode::UNPROCESSABLE_ENTITY,
                "currency_mismatch",
            ),
            with("price", json!({ "amount": 5, "currency": "USD" })),
        ),
        (
            expect("unknown account", StatusCode::NOT_FOUND, "not_found"),
            with("account_id", json!(uuid::Uuid::new_v4())),
        ),
        (
            expect(
                "huge notes",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            with("notes", json!("n".repeat(5_000))),
        ),
    ];
    for (case, body) in &cases {
        check(
            case,
            &app.post("/v1/bookings", Some(token), &[], body).await,
        );
    }
}

#[tokio::test]
async fn malformed_values_are_4xx_with_stable_codes() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    json_cases(&app, &token, account).await;
    booking_cases(&app, &token, account).await;
}

#[tokio::test]
async fn malformed_requests_are_4xx() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    let path = format!("/v1/accounts/{account}/deposits");
    let raw = [
        (
            expect("bad json", StatusCode::BAD_REQUEST, "malformed_json"),
            "application/json",
            b"{\"amount\": ".to_vec(),
        ),
        (
            expect("not json at all", StatusCode::BAD_REQUEST, "malformed_json"),
            "application/json",
            b"\xff\xfe garbage".to_vec(),
        ),
        (
            expect(
                "wrong content type",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            ),
            "text/plain",
            b"{\"amount\": 1}".to_vec(),
        ),
        (
            expect(
                "10 MB body",
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
            ),
            "application/json",
            {
                let mut body = b"{\"amount\": 1, \"reference\": \"".to_vec();
                body.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
                body.extend(b"\"}");
                body
            },
        ),
    ];
    for (case, content_type, body) in raw {
        check(
            &case,
            &app.post_raw(&path, Some(&token), &[], content_type, body)
                .await,
        );
    }
    let nested = "[".repeat(100_000);
    let reply = app
        .post_raw(
            &path,
            Some(&token),
            &[],
            "application/json",
            nested.into_bytes(),
        )
        .await;
    assert!(reply.status.is_client_error(), "deep nesting: {reply:?}");

    let bad_headers = [
        (
            expect("bad If-Match", StatusCode::BAD_REQUEST, "invalid_if_match"),
            ("If-Match", "\"two\""),
        ),
        (
            expect(
                "stale If-Match",
                StatusCode::PRECONDITION_FAILED,
                "version_conflict",
            ),
            ("If-Match", "\"7\""),
        ),
        (
            expect(
                "bad idempotency key",
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
            ),
            ("Idempotency-Key", "has spaces in it"),
        ),
    ];
    for (case, header) in &bad_headers {
        check(
            case,
            &app.post(&path, Some(&token), &[*header], &json!({ "amount": 1 }))
                .await,
        );
    }
    check(
        &expect("not a uuid in the path", StatusCode::NOT_FOUND, "not_found"),
        &app.post(
            "/v1/accounts/not-a-uuid/deposits",
            Some(&token),
            &[],
            &json!({ "amount": 1 }),
        )
        .await,
    );
    check(
        &expect("unknown route", StatusCode::NOT_FOUND, "not_found"),
        &app.post("/v1/nothing", Some(&token), &[], &json!({})).await,
    );
}

#[tokio::test]
async fn authentication_and_object_level_authorization() {
    let app = spawn_app().await;
    let alice = app.client_token("alice");
    let account = app.open_account(&alice, "EUR", 0).await;
    let path = format!("/v1/accounts/{account}/deposits");
    let body = json!({ "amount": 1 });

    let forged = JwtKeys::hs256(b"not the server's key, not at all")
        .issue("alice", &[Role::Client], chrono::Duration::hours(1))
        .unwrap();
    let expired = app
        .keys
        .issue("alice", &[Role::Client], chrono::Duration::hours(-2))
        .unwrap();
    for (name, token) in [
        ("forged", forged.as_str()),
        ("expired", expired.as_str()),
        ("garbage", "abc.def.ghi"),
    ] {
        check(
            &expect(name, StatusCode::UNAUTHORIZED, "unauthorized"),
            &app.post(&path, Some(token), &[], &body).await,
        );
    }
    let missing = app.post(&path, None, &[], &body).await;
    check(
        &expect("missing token", StatusCode::UNAUTHORIZED, "unauthorized"),
        &missing,
    );
    assert_eq!(
        missing
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let basic = app
        .client
        .post(format!("{}{path}", app.base))
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);

    // Someone else's account does not exist, as far as bob can tell.
    let bob = app.client_token("bob");
    check(
        &expect("bob deposits to alice", StatusCode::NOT_FOUND, "not_found"),
        &app.post(&path, Some(&bob), &[], &body).await,
    );
    let booking = TestApp::booking_body(account, "room-1", &["1"], 2, 0);
    check(
        &expect(
            "bob books on alice's account",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        &app.post("/v1/bookings", Some(&bob), &[], &booking).await,
    );
    let created = app.post("/v1/bookings", Some(&alice), &[], &booking).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let cancel = format!("/v1/bookings/{}/cancel", created.id("booking_id"));
    check(
        &expect(
            "bob cancels alice's booking",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        &app.post(&cancel, Some(&bob), &[], &json!({})).await,
    );
    check(
        &expect(
            "bob opens an account for alice",
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        &app.post(
            "/v1/accounts",
            Some(&bob),
            &[],
            &json!({ "currency": "EUR", "owner": "alice" }),
        )
        .await,
    );

    // Roles: an auditor reads history, it does not move money; an admin may.
    let auditor = app.token("audrey", &[Role::Auditor]);
    check(
        &expect("auditor deposits", StatusCode::FORBIDDEN, "forbidden"),
        &app.post(&path, Some(&auditor), &[], &body).await,
    );
    let admin = app.token("root", &[Role::Admin]);
    assert_eq!(
        app.post(&path, Some(&admin), &[], &body).await.status,
        StatusCode::OK
    );
    assert_eq!(app.count_events("FundsDeposited").await, 1);
}
