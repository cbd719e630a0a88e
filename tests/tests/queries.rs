//! Queries through HTTP, served from the read models that the relay and projector keep,
//! with `min_position` read-your-writes.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::collections::HashMap;

use chronicle_domain::Role;
use chronicle_tests::{TestApp, spawn_full_app};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

fn position(reply: &chronicle_tests::Reply) -> i64 {
    reply.body["position"].as_i64().unwrap()
}

/// What the test expects the read models to show.
#[derive(Default)]
struct Model {
    balances: HashMap<Uuid, i64>,
    pending: Vec<Uuid>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_query_after_a_command_with_min_position_sees_it() {
    let app = spawn_full_app().await;
    let token = app.client_token("alice");
    let mut model = Model::default();
    let mut accounts = Vec::new();
    let mut checked = 0;
    for i in 0..500u32 {
        let step = if accounts.is_empty() { 0 } else { i % 6 };
        let account = accounts.get(i as usize % accounts.len().max(1)).copied();
        match (step, account) {
            (0, _) | (_, None) => {
                let reply = app
                    .post(
                        "/v1/accounts",
                        Some(&token),
                        &[],
                        &json!({ "currency": "EUR" }),
                    )
                    .await;
                assert_eq!(reply.status, StatusCode::CREATED);
                let id = reply.id("account_id");
                accounts.push(id);
                model.balances.insert(id, 0);
                let view = app
                    .get(
                        &format!("/v1/accounts/{id}?min_position={}", position(&reply)),
                        &token,
                    )
                    .await;
                assert_eq!(
                    (view.status, view.body["balance"].as_i64()),
                    (StatusCode::OK, Some(0)),
                    "{view:?}"
                );
            }
            (1 | 2, Some(id)) => {
                let (route, sign) = if step == 1 {
                    ("deposits", 1)
                } else {
                    ("withdrawals", -1)
                };
                let amount = 1 + i64::from(i % 97) * 10;
                let reply = app
                    .post(
                        &format!("/v1/accounts/{id}/{route}"),
                        Some(&token),
                        &[],
                        &json!({ "amount": amount }),
                    )
                    .await;
                if reply.status == StatusCode::OK {
                    *model.balances.get_mut(&id).unwrap() += sign * amount;
                } else {
                    assert_eq!(reply.code(), "insufficient_funds", "{reply:?}");
                    continue;
                }
                let view = app
                    .get(
                        &format!("/v1/accounts/{id}?min_position={}", position(&reply)),
                        &token,
                    )
                    .await;
                assert_eq!(
                    view.body["balance"].as_i64(),
                    Some(model.balances[&id]),
                    "step {i}: {view:?}"
                );
                assert_eq!(view.body["version"], reply.body["version"]);
                let ledger = app
                    .get(
                        &format!(
                            "/v1/accounts/{id}/transactions?limit=500&min_position={}",
                            position(&reply)
                        ),
                        &token,
                    )
                    .await;
                let last = ledger.body["items"]
                    .as_array()
                    .unwrap()
                    .last()
                    .unwrap()
                    .clone();
                assert_eq!(last["balance_after"].as_i64(), Some(model.balances[&id]));
            }
            (3, Some(id)) => {
                let body = TestApp::booking_body(id, &format!("res-{i}"), &["A"], 3, 0);
                let reply = app.post("/v1/bookings", Some(&token), &[], &body).await;
                assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
                let booking = reply.id("booking_id");
                model.pending.push(booking);
                let view = app
                    .get(
                        &format!("/v1/bookings/{booking}?min_position={}", position(&reply)),
                        &token,
                    )
                    .await;
                assert_eq!(view.body["status"], "pending", "{view:?}");
            }
            (4, Some(_)) if !model.pending.is_empty() => {
                let booking = model.pending.remove(0);
                let reply = app
                    .post(
                        &format!("/v1/bookings/{booking}/cancel"),
                        Some(&token),
                        &[],
                        &json!({}),
                    )
                    .await;
                assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
                let view = app
                    .get(
                        &format!("/v1/bookings/{booking}?min_position={}", position(&reply)),
                        &token,
                    )
                    .await;
                assert_eq!(view.body["status"], "cancelled", "{view:?}");
            }
            (_, Some(id)) => {
                let body = json!({ "account_id": id, "amount": 250, "currency": "EUR", "kind": "one_time" });
                let reply = app.post("/v1/payments", Some(&token), &[], &body).await;
                assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
                let payment = reply.id("payment_id");
                let view = app
                    .get(
                        &format!("/v1/payments/{payment}?min_position={}", position(&reply)),
                        &token,
                    )
                    .await;
                assert_eq!(
                    (view.body["status"].as_str(), view.body["amount"].as_i64()),
                    (Some("pending"), Some(250))
                );
            }
        }
        checked += 1;
    }
    assert!(checked > 400, "{checked} commands were checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_with_cursors_and_show_only_what_is_yours() {
    let app = spawn_full_app().await;
    let alice = app.client_token("alice");
    let bob = app.client_token("bob");
    let account = app.open_account(&alice, "EUR", 0).await;
    for amount in 1..=7 {
        app.deposit(&alice, account, amount).await;
    }
    let mut last = 0;
    for n in 0..5 {
        let reply = app
            .post(
                "/v1/bookings",
                Some(&alice),
                &[],
                &TestApp::booking_body(account, &format!("hall-{}", n % 2), &["S1"], 4 + n, 0),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        last = position(&reply);
    }
    let bobs = app.open_account(&bob, "EUR", 0).await;
    let reply = app
        .post(
            "/v1/bookings",
            Some(&bob),
            &[],
            &TestApp::booking_body(bobs, "hall-0", &["S9"], 4, 0),
        )
        .await;
    last = last.max(position(&reply));
    app.wait_until_projected().await;

    // The ledger in pages of 3: 3 + 3 + 1, each line once, in order.
    let mut amounts = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("/v1/accounts/{account}/transactions?limit=3&cursor={c}"),
            None => format!("/v1/accounts/{account}/transactions?limit=3&min_position={last}"),
        };
        let page = app.get(&query, &alice).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        pages += 1;
        amounts.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["amount"].as_i64().unwrap()),
        );
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!((pages, amounts), (3, (1..=7).collect::<Vec<_>>()));

    // Bookings, newest first, filtered; a client sees only its own.
    let all = app.get("/v1/bookings?limit=2", &alice).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
    let rest = app
        .get(
            &format!(
                "/v1/bookings?limit=10&cursor={}",
                all.body["next_cursor"].as_str().unwrap()
            ),
            &alice,
        )
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 3);
    assert!(rest.body["next_cursor"].is_null());
    let hall0 = app
        .get("/v1/bookings?resource_id=hall-0&status=pending", &alice)
        .await;
    assert_eq!(
        hall0.body["items"].as_array().unwrap().len(),
        3,
        "{hall0:?}"
    );
    let bobs_view = app.get("/v1/bookings", &bob).await;
    assert_eq!(bobs_view.body["items"].as_array().unwrap().len(), 1);
    let admin = app.token("root", &[Role::Admin]);
    assert_eq!(
        app.get("/v1/bookings?limit=100", &admin).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        6
    );

    // Someone else's account is not found; bad parameters are 4xx.
    assert_eq!(
        app.get(&format!("/v1/accounts/{account}"), &bob)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/v1/accounts/{account}/transactions"), &bob)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let bad = app.get("/v1/bookings?cursor=forged", &alice).await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::BAD_REQUEST, "invalid_cursor")
    );
    assert_eq!(
        app.get("/v1/bookings?limit=501", &alice).await.code(),
        "validation_failed"
    );
    assert_eq!(
        app.get("/v1/bookings?status=lost", &alice).await.code(),
        "validation_failed"
    );
    assert_eq!(
        app.get("/v1/bookings?colour=red", &alice).await.code(),
        "validation_failed"
    );
    assert_eq!(
        app.get("/v1/accounts/nope", &alice).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_position_not_applied_in_time_answers_503_and_one_never_given_out_422() {
    let db = std::sync::Arc::new(chronicle_tests::TestDb::create().await);
    let mut settings = chronicle_tests::test_settings(&chronicle_tests::AppOptions::default());
    settings.reads.min_position_timeout = std::time::Duration::from_millis(300);
    // No relay or projector runs: nothing will be applied.
    let app = chronicle_tests::spawn_with_settings(db, settings, false).await;
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
    let position = position(&created);
    let reply = app
        .get(
            &format!("/v1/accounts/{account}?min_position={position}"),
            &token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.code(), "position_not_yet_applied");
    assert_eq!(reply.headers["retry-after"].to_str().unwrap(), "1");
    let never = app
        .get(
            &format!("/v1/accounts/{account}?min_position=999999"),
            &token,
        )
        .await;
    assert_eq!(
        (never.status, never.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
    );
}
