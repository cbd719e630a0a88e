//! The recurring-charge scheduler takes a due payment without holding a transaction open
//! while it charges: the relay keeps publishing what commits meanwhile, a second
//! scheduler skips the payment being charged, and a scheduler stopped mid-charge leaves
//! no lock behind.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::sync::Arc;
use std::time::Duration;

use chronicle_commands::process::ProcessManager;
use chronicle_eventstore::kafka::ensure_topics;
use chronicle_eventstore::relay::{Relay, RelaySettings};
use chronicle_tests::pause::PauseAfter;
use chronicle_tests::{TestApp, eventually, kafka_brokers, spawn_app};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

const AMOUNT: i64 = 150;

/// An app without relay or projectors (nothing else writes to its database), a funded
/// account, and a recurring payment whose first charge is due in the schedule read model
/// (written here, as the projector would have).
async fn due_payment() -> (TestApp, String, Uuid, Uuid) {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 1_000).await;
    let body = json!({
        "account_id": account, "amount": AMOUNT, "currency": "EUR", "kind": "recurring",
        "schedule": { "interval_seconds": 3_600, "count": 2 }
    });
    let created = app.post("/v1/payments", Some(&token), &[], &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let payment = created.id("payment_id");
    sqlx::query(
        "INSERT INTO payment_schedules (payment_id, account_id, owner, amount, currency, \
             interval_seconds, charge_count, starts_at, next_charge, next_due_at, status, version) \
         VALUES ($1, $2, 'alice', $3, 'EUR', 3600, 2, now(), 1, now() - interval '1 second', \
             'active', 1)",
    )
    .bind(payment)
    .bind(account)
    .bind(AMOUNT)
    .execute(&app.pool)
    .await
    .unwrap();
    (app, token, account, payment)
}

fn scheduler(app: &TestApp) -> ProcessManager {
    ProcessManager::new(app.commands.clone(), app.settings.process)
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

/// Sessions of this database (other than the asking one) that hold a transaction id.
async fn sessions_with_xid(app: &TestApp) -> i64 {
    count(
        app,
        "SELECT count(*) FROM pg_stat_activity \
          WHERE datname = current_database() AND backend_xid IS NOT NULL \
            AND pid <> pg_backend_pid()",
    )
    .await
}

/// Sessions holding the scheduler's lock on `payment` (a bigint advisory lock: its high
/// half in `classid`, its low half in `objid`).
async fn charge_locks(app: &TestApp, payment: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
          WHERE l.locktype = 'advisory' AND d.datname = current_database() \
            AND l.objsubid = 1 AND l.granted \
            AND (l.classid::int8 << 32 | l.objid::int8) \
                = hashtextextended('chronicle.charge/' || $1::text, 0)",
    )
    .bind(payment)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// (withdrawals from the account, captures of the payment) in the store.
async fn money_moved(app: &TestApp, account: Uuid, payment: Uuid) -> (usize, usize) {
    let withdrawn = app.stream("Account", account).await;
    let captured = app.stream("Payment", payment).await;
    let n = |events: &[(String, serde_json::Value)], kind: &str| {
        events.iter().filter(|(t, _)| t == kind).count()
    };
    (
        n(&withdrawn, "FundsWithdrawn"),
        n(&captured, "PaymentCaptured"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_in_progress_holds_back_neither_the_relay_nor_a_second_scheduler() {
    let (mut app, token, account, payment) = due_payment().await;
    let pause = PauseAfter::new("withdraw");
    let first = Arc::new(scheduler(&app).observed_by(pause.clone()));
    let charging = tokio::spawn({
        let first = first.clone();
        async move { first.charge_due().await }
    });
    pause.reached().await;

    // Mid-charge, nothing of the scheduler's holds a transaction id ...
    assert_eq!(
        sessions_with_xid(&app).await,
        0,
        "a transaction with an xid stays open while the scheduler charges"
    );
    // ... so the relay publishes what commits meanwhile, up to the last event.
    app.deposit(&token, account, 5).await;
    let last = count(&app, "SELECT max(global_position) FROM events").await;
    app.settings.kafka.brokers = kafka_brokers();
    ensure_topics(&app.settings.kafka).await.unwrap();
    let relay = Relay::new(
        app.pool.clone(),
        app.settings.kafka.clone(),
        RelaySettings::default(),
    );
    let mut active = relay.try_activate().await.unwrap().expect("the only relay");
    // Other databases of the cluster may hold the horizon back for a moment; this one
    // must not hold it back at all.
    // A loop of its own: each look publishes with the relay, which it borrows mutably.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while active.checkpoint().global_position != last {
        active.publish_available().await.unwrap();
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay is held back at {:?}, the last event is {last}",
            active.checkpoint()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A second scheduler skips the payment being charged.
    let second = scheduler(&app);
    assert_eq!(second.charge_due().await.unwrap(), 0);

    pause.release();
    assert_eq!(charging.await.unwrap().unwrap(), 1);
    assert_eq!(
        charge_locks(&app, payment).await,
        0,
        "the lock was released"
    );
    assert_eq!(money_moved(&app, account, payment).await, (1, 1));
    // The schedule read model was not updated here: the second scheduler takes the
    // payment on again, and the aggregate tells it the charge is done.
    assert_eq!(second.charge_due().await.unwrap(), 1);
    assert_eq!(money_moved(&app, account, payment).await, (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduler_stopped_mid_charge_leaves_no_lock_behind() {
    let (app, _token, account, payment) = due_payment().await;
    let pause = PauseAfter::new("withdraw");
    let doomed = Arc::new(scheduler(&app).observed_by(pause.clone()));
    let charging = tokio::spawn({
        let doomed = doomed.clone();
        async move { doomed.charge_due().await }
    });
    pause.reached().await;
    assert_eq!(
        charge_locks(&app, payment).await,
        1,
        "the payment is locked"
    );
    charging.abort();
    assert!(charging.await.unwrap_err().is_cancelled());

    // The connection that held the lock is closed rather than pooled with it.
    eventually("the stopped scheduler's lock released", || async {
        match charge_locks(&app, payment).await {
            0 => Ok(()),
            held => Err(format!("{held} held")),
        }
    })
    .await;
    // Another scheduler finishes the charge: the withdrawal is not repeated.
    assert_eq!(scheduler(&app).charge_due().await.unwrap(), 1);
    assert_eq!(money_moved(&app, account, payment).await, (1, 1));
}
