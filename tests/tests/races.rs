//! Concurrency through HTTP against the real PostgreSQL: set validation of seats and the
//! balance floor under contention, across two server processes sharing one database.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::sync::Arc;

use chronicle_tests::{AppOptions, TestApp, spawn_app, spawn_on};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

const RACERS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_requests_for_one_seat_book_it_once() {
    let app = spawn_app().await;
    let other = spawn_on(Arc::clone(&app.db), AppOptions::default()).await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;

    let requests = (0..RACERS).map(|i| {
        // Every range overlaps every other: each starts a minute after the previous
        // and lasts two hours.
        let body = TestApp::booking_body(account, "concert-hall", &["R1-S7"], 30, i as i64);
        let server = if i % 2 == 0 { &app } else { &other };
        let token = token.clone();
        async move { server.post("/v1/bookings", Some(&token), &[], &body).await }
    });
    let replies = join_all(requests).await;

    let created = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let taken = replies
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT && r.code() == "seat_taken")
        .count();
    assert_eq!(created, 1, "{replies:#?}");
    assert_eq!(taken, RACERS - 1, "{replies:#?}");
    assert_eq!(app.count_events("BookingRequested").await, 1);
    let claims: i64 = sqlx::query_scalar("SELECT count(*) FROM seat_claims")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(claims, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_withdrawals_never_break_the_floor() {
    let app = spawn_app().await;
    let other = spawn_on(Arc::clone(&app.db), AppOptions::default()).await;
    let token = app.client_token("alice");
    let overdraft = 500;
    let account = app.open_account(&token, "EUR", overdraft).await;
    app.deposit(&token, account, 2_000).await;

    // Amounts 100, 110, …, 410: together far more than the 2,500 available.
    let requests = (0..RACERS).map(|i| {
        let server = if i % 2 == 0 { &app } else { &other };
        let token = token.clone();
        let amount = 100 + 10 * i as i64;
        async move {
            let reply = server
                .post(
                    &format!("/v1/accounts/{account}/withdrawals"),
                    Some(&token),
                    &[],
                    &json!({ "amount": amount }),
                )
                .await;
            (amount, reply)
        }
    });
    let replies = join_all(requests).await;

    let mut withdrawn = 0;
    for (amount, reply) in &replies {
        match reply.status {
            StatusCode::OK => withdrawn += amount,
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(reply.code(), "insufficient_funds", "{reply:?}")
            }
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
    let accepted = replies
        .iter()
        .filter(|(_, r)| r.status == StatusCode::OK)
        .count();
    assert!(accepted > 0 && accepted < RACERS, "{accepted} accepted");

    // The events tell one consistent story: each balance_after follows from the one
    // before, none is below the floor, and the total matches the 200s.
    let events = app.stream("Account", account).await;
    let mut balance = 0;
    let mut withdrawals = 0;
    for (event_type, payload) in &events {
        let amount = payload["amount"].as_i64().unwrap_or_default();
        match event_type.as_str() {
            "FundsDeposited" => balance += amount,
            "FundsWithdrawn" => {
                balance -= amount;
                withdrawals += 1;
            }
            _ => continue,
        }
        assert_eq!(payload["balance_after"].as_i64(), Some(balance));
        assert!(balance >= -overdraft, "balance {balance} below the floor");
    }
    assert_eq!(withdrawals, accepted);
    assert_eq!(balance, 2_000 - withdrawn);
    let state = app.commands.load_account(account).await.unwrap();
    assert_eq!(state.state().unwrap().balance, balance);
    // The balance only fell, so each refusal came when at least the final balance was
    // there: every refused amount must exceed what the floor still allows.
    for (amount, reply) in &replies {
        if reply.status != StatusCode::OK {
            assert!(
                *amount > balance + overdraft,
                "{amount} refused with {balance} left"
            );
        }
    }
}
