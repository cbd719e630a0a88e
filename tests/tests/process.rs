//! The process manager end to end, through HTTP and the real broker: bookings charged,
//! rejected, refunded; recurring charges; expiry; redelivery and a crash between two
//! steps moving no money twice.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::sync::Arc;
use std::time::Duration;

use chronicle_commands::process::{ProcessManager, StepObserver};
use chronicle_commands::{CommandService, CommandSettings};
use chronicle_tests::{
    AppOptions, Reply, TestApp, TestDb, read_models_snapshot, spawn_app_with, spawn_with_settings,
    test_settings,
};
use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

const PRICE: i64 = 2_500;

/// Polls `path` until `done` holds for its body.
async fn eventually(
    app: &TestApp,
    token: &str,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    chronicle_tests::eventually(path, || async {
        let reply = app.get(path, token).await;
        if reply.status == StatusCode::OK && done(&reply.body) {
            Ok(reply.body)
        } else {
            Err(format!("{reply:?}"))
        }
    })
    .await
}

async fn settled(app: &TestApp, token: &str, booking: Uuid) -> Value {
    eventually(app, token, &format!("/v1/bookings/{booking}"), |b| {
        b["status"] != "pending"
    })
    .await
}

async fn balance(app: &TestApp, token: &str, account: Uuid, expected: i64) {
    eventually(app, token, &format!("/v1/accounts/{account}"), |a| {
        a["balance"] == expected
    })
    .await;
}

async fn book(app: &TestApp, token: &str, account: Uuid, seat: &str) -> Reply {
    let mut body = TestApp::booking_body(account, "theatre", &[seat], 10, 0);
    body["price"] = json!({ "amount": PRICE, "currency": "EUR" });
    let reply = app.post("/v1/bookings", Some(token), &[], &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    reply
}

async fn withdrawals(app: &TestApp, account: Uuid) -> Vec<Value> {
    app.stream("Account", account)
        .await
        .into_iter()
        .filter(|(t, _)| t == "FundsWithdrawn")
        .map(|(_, p)| p)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bookings_are_charged_rejected_and_refunded() {
    let app = spawn_app_with(AppOptions::with_process_manager()).await;
    let token = app.client_token("alice");

    // Funded: confirmed, and the balance drops by the price.
    let rich = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, rich, 10_000).await;
    let booking = book(&app, &token, rich, "A1").await.id("booking_id");
    let confirmed = settled(&app, &token, booking).await;
    assert_eq!(confirmed["status"], "confirmed", "{confirmed}");
    balance(&app, &token, rich, 10_000 - PRICE).await;
    let payment_id = confirmed["payment_id"].as_str().unwrap().to_owned();
    let payment = eventually(&app, &token, &format!("/v1/payments/{payment_id}"), |p| {
        p["status"] == "captured"
    })
    .await;
    assert_eq!(
        (
            payment["captured_total"].as_i64(),
            payment["booking_id"].as_str()
        ),
        (Some(PRICE), Some(booking.to_string().as_str()))
    );
    let debits = withdrawals(&app, rich).await;
    assert_eq!(debits.len(), 1);
    assert_eq!(
        debits[0]["reference"],
        payment_id.as_str(),
        "the payment id is the reference"
    );

    // Unfunded: rejected, the seat released for the next booking.
    let poor = app.open_account(&token, "EUR", 0).await;
    let refused = book(&app, &token, poor, "B7").await.id("booking_id");
    let rejected = settled(&app, &token, refused).await;
    assert_eq!(
        (
            rejected["status"].as_str(),
            rejected["status_reason"].as_str()
        ),
        (Some("rejected"), Some("insufficient_funds"))
    );
    let failed = app
        .get(
            &format!("/v1/bookings?status=rejected&account_id={poor}"),
            &token,
        )
        .await;
    assert_eq!(failed.body["items"].as_array().unwrap().len(), 1);
    let next = book(&app, &token, rich, "B7").await.id("booking_id");
    assert_eq!(settled(&app, &token, next).await["status"], "confirmed");
    balance(&app, &token, rich, 10_000 - 2 * PRICE).await;
    assert!(withdrawals(&app, poor).await.is_empty());

    // Confirmed, then cancelled: refunded and the balance restored.
    let cancel = app
        .post(
            &format!("/v1/bookings/{booking}/cancel"),
            Some(&token),
            &[],
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{cancel:?}");
    balance(&app, &token, rich, 10_000 - PRICE).await;
    let refunded = eventually(&app, &token, &format!("/v1/payments/{payment_id}"), |p| {
        p["status"] == "refunded"
    })
    .await;
    assert_eq!(refunded["refunded_total"].as_i64(), Some(PRICE));
    let deposits: Vec<_> = app
        .stream("Account", rich)
        .await
        .into_iter()
        .filter(|(t, _)| t == "FundsDeposited")
        .collect();
    assert_eq!(deposits.len(), 2, "the opening deposit and the refund");

    // Every command of a flow names its cause and its booking.
    let (metadata,): (Value,) = sqlx::query_as(
        "SELECT metadata FROM events WHERE aggregate_type = 'Booking' AND aggregate_id = $1 AND event_type = 'BookingConfirmed'",
    )
    .bind(booking.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(metadata["correlation_id"], booking.to_string());
    assert_eq!(metadata["actor"], "system:process-manager");
    let requested_id = chronicle_eventstore::envelope::event_id("Booking", &booking.to_string(), 1);
    assert_eq!(metadata["causation_id"], requested_id.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recurring_payments_charge_each_due_time_exactly_once_even_with_two_schedulers() {
    let app = spawn_app_with(AppOptions::with_process_manager()).await;
    app.start_process_manager(); // a second instance: same events, same schedule
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 1_000).await;
    let body = json!({
        "account_id": account, "amount": 150, "currency": "EUR", "kind": "recurring",
        "schedule": { "interval_seconds": 1, "count": 3 }
    });
    let created = app.post("/v1/payments", Some(&token), &[], &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let payment = created.id("payment_id");
    let done = eventually(&app, &token, &format!("/v1/payments/{payment}"), |p| {
        p["status"] == "completed"
    })
    .await;
    assert_eq!(
        (
            done["charges_captured"].as_i64(),
            done["captured_total"].as_i64()
        ),
        (Some(3), Some(450))
    );
    balance(&app, &token, account, 1_000 - 450).await;
    // Nothing more can be charged once no flow is running and nothing is due; only
    // then count (a fixed wait would pass whenever the schedulers happened to be slow).
    no_flow_running(&app).await;
    let scheduler = chronicle_api::roles::process_manager(&app.settings, app.pool.clone());
    assert_eq!(scheduler.charge_due().await.unwrap(), 0, "nothing is due");
    let debits = withdrawals(&app, account).await;
    assert_eq!(debits.len(), 3, "{debits:?}");
}

/// Waits until every flow the process managers started has finished.
async fn no_flow_running(app: &TestApp) {
    chronicle_tests::eventually("no flow running", || async {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pm_flows WHERE status = 'running'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if running == 0 {
            Ok(())
        } else {
            Err(format!("{running} running"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recurring_charge_that_keeps_failing_is_retried_then_suspended() {
    let mut settings = test_settings(&AppOptions::with_process_manager());
    settings.process.charge_retry = Duration::from_secs(1);
    settings.process.charge_max_attempts = 2;
    let app = spawn_with_settings(Arc::new(TestDb::create().await), settings, true).await;
    app.start_process_manager();
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 100).await;
    let body = json!({
        "account_id": account, "amount": 80, "currency": "EUR", "kind": "recurring",
        "schedule": { "interval_seconds": 1, "count": 5 }
    });
    let payment = app
        .post("/v1/payments", Some(&token), &[], &body)
        .await
        .id("payment_id");
    let suspended = eventually(&app, &token, &format!("/v1/payments/{payment}"), |p| {
        p["status"] == "suspended"
    })
    .await;
    assert_eq!(
        suspended["charges_captured"].as_i64(),
        Some(1),
        "the first charge went through"
    );
    let failures: Vec<_> = app
        .stream("Payment", payment)
        .await
        .into_iter()
        .filter(|(t, _)| t == "ChargeFailed")
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures[0].1["retry_at"].is_string() && failures[1].1["retry_at"].is_null());
    assert_eq!(withdrawals(&app, account).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivering_every_event_to_the_process_manager_changes_nothing() {
    let app = spawn_app_with(AppOptions::with_process_manager()).await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 6_000).await;
    let mut bookings = Vec::new();
    for seat in ["C1", "C2", "C3"] {
        bookings.push(book(&app, &token, account, seat).await.id("booking_id"));
    }
    // Two of the three are paid for (which two depends on the order the process manager
    // met them in); cancel one of those.
    let mut confirmed = Vec::new();
    for booking in &bookings {
        if settled(&app, &token, *booking).await["status"] == "confirmed" {
            confirmed.push(*booking);
        }
    }
    assert_eq!(confirmed.len(), 2);
    let cancel = app
        .post(
            &format!("/v1/bookings/{}/cancel", confirmed[0]),
            Some(&token),
            &[],
            &json!({}),
        )
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{cancel:?}");
    balance(&app, &token, account, 6_000 - 2 * PRICE + PRICE).await;
    app.wait_until_projected().await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let before = read_models_snapshot(&app.pool).await;

    // Forget the process manager's offsets: every event is delivered again, and every
    // flow it started has finished, so none runs again and none changes its status.
    let flows_before = flows(&app).await;
    let steps_before = count(&app, "SELECT count(*) FROM pm_steps").await;
    forget_offsets(&app).await;
    let again = app.start_process_manager();
    caught_up(&app).await;
    again.abort();
    assert_eq!(flows(&app).await, flows_before);
    assert_eq!(
        count(&app, "SELECT count(*) FROM pm_steps").await,
        steps_before
    );

    // Forget its flows and steps too: every flow runs again and every command is issued
    // again.
    forget_offsets(&app).await;
    sqlx::query("DELETE FROM pm_steps")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM pm_flows")
        .execute(&app.pool)
        .await
        .unwrap();
    let again = app.start_process_manager();
    caught_up(&app).await;
    assert!(count(&app, "SELECT count(*) FROM pm_steps").await > 0);
    again.abort();
    app.wait_until_projected().await;
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        after, events,
        "no command appended anything the second time"
    );
    assert_eq!(read_models_snapshot(&app.pool).await, before);
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

/// Every flow's id, kind and status.
async fn flows(app: &TestApp) -> Vec<(Uuid, String, String)> {
    sqlx::query_as("SELECT flow_id, kind, status FROM pm_flows ORDER BY flow_id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn forget_offsets(app: &TestApp) {
    sqlx::query("DELETE FROM projector_offsets WHERE projector = 'process-manager'")
        .execute(&app.pool)
        .await
        .unwrap();
}

/// Waits until the process manager's stored offsets cover every booking and payment
/// event.
async fn caught_up(app: &TestApp) {
    chronicle_tests::eventually("the process manager caught up", || async {
        let handled = count(
            app,
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM projector_offsets WHERE projector = 'process-manager'",
        )
        .await;
        let events = count(
            app,
            "SELECT count(*) FROM events WHERE aggregate_type IN ('Booking', 'Payment')",
        )
        .await;
        if handled == events {
            Ok(())
        } else {
            Err(format!("{handled} of {events}"))
        }
    })
    .await;
}

/// Holds the process manager forever right after a step.
struct StopAfter {
    step: &'static str,
    reached: Arc<Notify>,
}

impl StepObserver for StopAfter {
    fn after_step(&self, step: &str) -> BoxFuture<'_, ()> {
        let stop = step == self.step;
        Box::pin(async move {
            if stop {
                self.reached.notify_one();
                std::future::pending::<()>().await;
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_withdrawn_and_captured_resumes_with_one_withdrawal() {
    let app = spawn_app_with(AppOptions::with_read_side()).await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 5_000).await;

    let reached = Arc::new(Notify::new());
    let commands = Arc::new(CommandService::new(
        app.pool.clone(),
        CommandSettings::default(),
    ));
    let doomed = Arc::new(
        ProcessManager::new(commands, app.settings.process).observed_by(Arc::new(StopAfter {
            step: "withdraw",
            reached: reached.clone(),
        })),
    );
    let (kafka, projector) = (app.settings.kafka.clone(), app.settings.projector.clone());
    let shutdown = app.shutdown.clone();
    let task = tokio::spawn(async move { doomed.run(kafka, projector, shutdown).await });
    let booking = book(&app, &token, account, "D4").await.id("booking_id");
    tokio::time::timeout(Duration::from_secs(30), reached.notified())
        .await
        .expect("the withdrawal happened");
    task.abort();
    let _ = task.await;
    assert_eq!(withdrawals(&app, account).await.len(), 1);
    let payment_status: String = sqlx::query_scalar(
        "SELECT payload->>'type' FROM events WHERE aggregate_type = 'Payment' ORDER BY global_position DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        payment_status, "PaymentInitiated",
        "killed before the capture"
    );
    // Steps are recorded with the flow's end (ADR 0033), so none of this flow's is; and
    // if one were, deleting it leaves the reference alone to keep the withdrawal single.
    sqlx::query("DELETE FROM pm_steps WHERE step = 'withdraw'")
        .execute(&app.pool)
        .await
        .unwrap();

    app.start_process_manager();
    assert_eq!(settled(&app, &token, booking).await["status"], "confirmed");
    balance(&app, &token, account, 5_000 - PRICE).await;
    assert_eq!(withdrawals(&app, account).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_pending_past_its_hold_expires_and_frees_its_seats() {
    let mut settings = test_settings(&AppOptions::with_read_side());
    settings.process.booking_hold = Duration::from_secs(4);
    let app = spawn_with_settings(Arc::new(TestDb::create().await), settings, true).await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    // No process manager consumer runs: nothing charges the booking.
    let booking = book(&app, &token, account, "E5").await.id("booking_id");
    app.wait_until_projected().await;
    let process = chronicle_api::roles::process_manager(&app.settings, app.pool.clone());
    assert_eq!(process.expire_holds().await.unwrap(), 0, "not yet");
    // The hold is over once the booking is older than it: age it rather than wait.
    sqlx::query(
        "UPDATE bookings SET created_at = created_at - interval '5 seconds' WHERE booking_id = $1",
    )
    .bind(booking)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(process.expire_holds().await.unwrap(), 1);
    let expired = eventually(&app, &token, &format!("/v1/bookings/{booking}"), |b| {
        b["status"] == "expired"
    })
    .await;
    assert_eq!(expired["status"], "expired");
    let again = book(&app, &token, account, "E5").await;
    assert_eq!(again.status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_flows_are_forgotten_after_the_retention_and_stuck_ones_kept() {
    let app = spawn_app_with(AppOptions::default()).await;
    let commands = Arc::new(CommandService::new(
        app.pool.clone(),
        CommandSettings::default(),
    ));
    let manager = ProcessManager::new(commands, app.settings.process);
    // Flows of every standing, some finished long ago, each with a step.
    let flows = [
        ("confirmed", 48, true),
        ("skipped", 48, true),
        ("stuck", 48, false),
        ("running", 48, false),
        ("confirmed", 0, false),
    ];
    let mut ids = Vec::new();
    for (status, hours_ago, _) in flows {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO pm_flows (flow_id, kind, subject_id, status, updated_at) \
             VALUES ($1, 'booking-charge', $1, $2, now() - make_interval(hours => $3))",
        )
        .bind(id)
        .bind(status)
        .bind(hours_ago)
        .execute(&app.pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO pm_steps (flow_id, step, command_id) VALUES ($1, 'withdraw', $1)")
            .bind(id)
            .execute(&app.pool)
            .await
            .unwrap();
        ids.push(id);
    }
    let forgotten = manager
        .forget_flows_before(Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!(forgotten, 2);
    for (id, (status, hours_ago, gone)) in ids.iter().zip(flows) {
        let (flow, steps): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pm_flows WHERE flow_id = $1), \
                    (SELECT count(*) FROM pm_steps WHERE flow_id = $1)",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let expected = if gone { 0 } else { 1 };
        assert_eq!(
            (flow, steps),
            (expected, expected),
            "{status}, {hours_ago} h ago"
        );
    }
}
