//! `chronicle-replay` as an auditor runs it, against real stores.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

mod common;

use chronicle_tests::{
    AppOptions, TestApp, TestDb, eventually, spawn_app, spawn_app_with, spawn_on,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

use common::{guards_off, replay, stderr, stdout};

async fn tamper(app: &TestApp, statement: &str, id: &str) {
    let mut conn = guards_off(app).await;
    sqlx::query(statement)
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_state_and_export_replay_the_store() {
    let app = spawn_app().await;
    let url = app.db.url();
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    for amount in [100, 200, 300] {
        app.deposit(&token, account, amount).await;
    }
    let id = account.to_string();

    let history = replay(&url, &["history", "account", &id, "--json"]).await;
    assert!(history.status.success(), "{}", stderr(&history));
    let lines: Value = serde_json::from_slice(&history.stdout).unwrap();
    let lines = lines.as_array().unwrap();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["state"]["state"]["balance"], 600);
    assert_eq!(lines[1]["actor"], "alice");
    assert!(lines[1]["correlation_id"].is_string() && lines[1]["causation_id"].is_string());
    let table = replay(&url, &["history", "Account", &id]).await;
    assert!(stdout(&table).contains("FundsDeposited") && stdout(&table).contains("state:"));

    let by_version = replay(&url, &["state", "account", &id, "--version", "2"]).await;
    let state: Value = serde_json::from_slice(&by_version.stdout).unwrap();
    assert_eq!(
        (
            state["version"].as_u64(),
            state["state"]["state"]["balance"].as_i64()
        ),
        (Some(2), Some(100))
    );
    let third = lines[2]["recorded_at"].as_str().unwrap();
    let as_of = replay(&url, &["state", "account", &id, "--as-of", third]).await;
    let state: Value = serde_json::from_slice(&as_of.stdout).unwrap();
    assert_eq!(state["state"]["state"]["balance"], 300);
    let before = replay(
        &url,
        &["state", "account", &id, "--as-of", "2000-01-01T00:00:00Z"],
    )
    .await;
    assert_eq!(before.status.code(), Some(2), "nothing existed then");

    let jsonl = replay(&url, &["export", "--format", "jsonl"]).await;
    let exported: Vec<Value> = stdout(&jsonl)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), 4);
    assert_eq!(exported[0]["event_type"], "AccountOpened");
    let csv = replay(
        &url,
        &["export", "--format", "csv", "--type", "account", "--stats"],
    )
    .await;
    assert_eq!(stdout(&csv).lines().count(), 5, "header and four events");
    assert!(stderr(&csv).contains("peak RSS"), "{}", stderr(&csv));
    let none = replay(&url, &["export", "--to", "2000-01-01T00:00:00Z"]).await;
    assert!(stdout(&none).is_empty());
    assert!(replay(&url, &["verify"]).await.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_stream_and_sequence_of_every_tampering() {
    let app = spawn_app().await;
    let url = app.db.url();
    let token = app.client_token("alice");
    let mut accounts = Vec::new();
    for _ in 0..3 {
        let account = app.open_account(&token, "EUR", 0).await;
        for amount in [1, 2, 3] {
            app.deposit(&token, account, amount).await;
        }
        accounts.push(account.to_string());
    }
    let clean = replay(&url, &["verify"]).await;
    assert!(
        clean.status.success(),
        "{}{}",
        stdout(&clean),
        stderr(&clean)
    );

    tamper(&app, "UPDATE events SET payload = jsonb_set(payload, '{amount}', '99') WHERE aggregate_id = $1 AND sequence = 3", &accounts[0]).await;
    tamper(
        &app,
        "DELETE FROM events WHERE aggregate_id = $1 AND sequence = 2",
        &accounts[1],
    )
    .await;
    tamper(
        &app,
        "DELETE FROM events WHERE aggregate_id = $1 AND sequence = 4",
        &accounts[2],
    )
    .await;
    let found = replay(&url, &["verify"]).await;
    assert_eq!(found.status.code(), Some(1));
    let report = stdout(&found);
    assert!(
        report.contains(&format!(
            "BROKEN Account {}: sequence 3: hash does not match",
            accounts[0]
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "BROKEN Account {}: sequence 3 where 2 was expected",
            accounts[1]
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "BROKEN Account {}: head records sequence 4 but the last stored is 3",
            accounts[2]
        )),
        "{report}"
    );
    let one = replay(&url, &["verify", "--type", "account", "--id", &accounts[0]]).await;
    assert_eq!(stdout(&one).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_then_diff_finds_nothing_and_the_projector_carries_on() {
    let app = spawn_app_with(AppOptions::with_process_manager()).await;
    let url = app.db.url();
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 20_000).await;
    for n in 0..4 {
        let booking = app
            .post(
                "/v1/bookings",
                Some(&token),
                &[],
                &TestApp::booking_body(account, "hall", &[&format!("R{n}")], 3, 0),
            )
            .await;
        assert_eq!(booking.status, StatusCode::CREATED, "{booking:?}");
        if n == 0 {
            // Cancel it once the process manager has confirmed it, so it is refunded.
            let id = booking.id("booking_id");
            settled(&app, &token, &format!("/v1/bookings/{id}")).await;
            let cancelled = app
                .post(
                    &format!("/v1/bookings/{id}/cancel"),
                    Some(&token),
                    &[],
                    &json!({}),
                )
                .await;
            assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
        }
    }
    let payment = app
        .post(
            "/v1/payments",
            Some(&token),
            &[],
            &json!({"account_id": account, "amount": 70, "currency": "EUR", "kind": "one_time"}),
        )
        .await;
    assert_eq!(payment.status, StatusCode::CREATED, "{payment:?}");
    // Four charges, one refund and the payment's charge: six flows, all finished.
    flows_finished(&app, 6).await;
    app.wait_until_projected().await;

    let clean = replay(&url, &["diff", "read-models"]).await;
    assert!(
        clean.status.success(),
        "{}{}",
        stdout(&clean),
        stderr(&clean)
    );
    sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE account_id = $1")
        .bind(account)
        .execute(&app.pool)
        .await
        .unwrap();
    let drift = replay(&url, &["diff", "read-models"]).await;
    assert_eq!(drift.status.code(), Some(1));
    assert!(
        stdout(&drift).contains(&format!("accounts {account}: balance")),
        "{}",
        stdout(&drift)
    );

    let rebuilt = replay(&url, &["rebuild", "read-models"]).await;
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    assert!(stderr(&rebuilt).contains("events/s"));
    let after = replay(&url, &["diff", "read-models"]).await;
    assert!(
        after.status.success(),
        "{}{}",
        stdout(&after),
        stderr(&after)
    );

    // The live projector writes into the swapped-in tables.
    app.deposit(&token, account, 5).await;
    app.wait_until_projected().await;
    let still = replay(&url, &["diff", "read-models"]).await;
    assert!(
        still.status.success(),
        "{}{}",
        stdout(&still),
        stderr(&still)
    );
    // The search index commits on its own schedule: wait for it to catch up.
    let search_dir = app.settings.search_dir.to_string_lossy().into_owned();
    eventually("the search index agreeing with the store", || async {
        let search = replay(&url, &["diff", "search", "--search-dir", &search_dir]).await;
        if search.status.success() {
            Ok(())
        } else {
            Err(format!("{}{}", stdout(&search), stderr(&search)))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_store_rebuilds_and_diffs_clean_and_the_search_index_swaps() {
    let db = std::sync::Arc::new(TestDb::create().await);
    let seeded = chronicle_tests::seed::seed(&db.pool(4).await, 5_000, 0)
        .await
        .unwrap();
    let app = spawn_on(db, AppOptions::default()).await;
    let url = app.db.url();
    let rebuilt = replay(&url, &["rebuild", "read-models"]).await;
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    assert!(
        stderr(&rebuilt).contains(&format!("rebuilt from {seeded} events")),
        "{}",
        stderr(&rebuilt)
    );
    let diff = replay(&url, &["diff", "read-models"]).await;
    assert!(diff.status.success(), "{}{}", stdout(&diff), stderr(&diff));
    let verify = replay(&url, &["verify"]).await;
    assert!(verify.status.success(), "{}", stdout(&verify));

    let search_dir = app.settings.search_dir.to_string_lossy().into_owned();
    let index = replay(&url, &["rebuild", "search", "--search-dir", &search_dir]).await;
    assert!(index.status.success(), "{}", stderr(&index));
    let diff = replay(&url, &["diff", "search", "--search-dir", &search_dir]).await;
    assert!(diff.status.success(), "{}{}", stdout(&diff), stderr(&diff));
    // A running search projector holds the index: the swap is refused.
    let _projector = app.start_search_projector().await;
    let refused = replay(
        &url,
        &["rebuild", "search", "--search-dir", &search_dir, "--fresh"],
    )
    .await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("stop the search projector"),
        "{}",
        stderr(&refused)
    );
}

/// Polls `path` until its status is no longer `pending`.
async fn settled(app: &TestApp, token: &str, path: &str) {
    eventually(path, || async {
        let reply = app.get(path, token).await;
        if reply.status == StatusCode::OK && reply.body["status"] != "pending" {
            Ok(())
        } else {
            Err(format!("{reply:?}"))
        }
    })
    .await;
}

/// Waits until the process manager has started `count` flows and finished them all.
async fn flows_finished(app: &TestApp, count: i64) {
    eventually(&format!("{count} finished flows"), || async {
        let (finished, all): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status <> 'running'), count(*) FROM pm_flows",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert!(all <= count, "{all} flows, expected {count}");
        if finished == count {
            Ok(())
        } else {
            Err(format!("{finished} of {all} finished"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_waits_for_events_held_back_by_a_transaction_elsewhere() {
    let app = spawn_app_with(AppOptions::default()).await;
    let token = app.client_token("alice");
    app.open_account(&token, "EUR", 0).await;
    // A transaction in another database takes an xid and stays open: the commit-safe
    // horizon is cluster-wide, so what commits after it here is held back meanwhile.
    let elsewhere = TestDb::create().await;
    let mut held = elsewhere.pool(1).await.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *held)
        .await
        .unwrap();
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 5).await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        held.commit().await.unwrap();
    });
    let rebuilt = replay(&app.db.url(), &["rebuild", "read-models"]).await;
    release.await.unwrap();
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    assert!(
        stderr(&rebuilt).contains("rebuilt from 3 events"),
        "{}",
        stderr(&rebuilt)
    );
}
