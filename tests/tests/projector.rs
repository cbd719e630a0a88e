//! The read-model projector against the real broker: duplicate delivery changes
//! nothing, a kill mid-batch loses nothing and applies nothing twice, explicit
//! assignment splits the partitions.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::sync::Arc;
use std::time::Duration;

use chronicle_eventstore::relay::relay_lag;
use chronicle_projections::read_models::{ApplyObserver, ReadModels};
use chronicle_projections::{Assignment, Projector, ProjectorSettings};
use chronicle_tests::{
    AppOptions, TestApp, TestDb, eventually, eventually_within, read_models_snapshot,
    spawn_app_with, spawn_full_app,
};
use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A little of everything: accounts with movements, bookings in several states, a
/// payment with a refund attempt.
async fn some_history(app: &TestApp) {
    let token = app.client_token("alice");
    for n in 0..3 {
        let account = app.open_account(&token, "EUR", 100).await;
        for amount in [500, 250, 125] {
            app.deposit(&token, account, amount + n).await;
        }
        let withdrawal = app
            .post(
                &format!("/v1/accounts/{account}/withdrawals"),
                Some(&token),
                &[],
                &json!({ "amount": 300 }),
            )
            .await;
        assert_eq!(withdrawal.status, StatusCode::OK);
        let booking = app
            .post(
                "/v1/bookings",
                Some(&token),
                &[],
                &TestApp::booking_body(account, &format!("room-{n}"), &["1", "2"], 5, 0),
            )
            .await;
        assert_eq!(booking.status, StatusCode::CREATED, "{booking:?}");
        if n == 1 {
            let cancel = format!("/v1/bookings/{}/cancel", booking.id("booking_id"));
            assert_eq!(
                app.post(&cancel, Some(&token), &[], &json!({}))
                    .await
                    .status,
                StatusCode::OK
            );
        }
        let payment = app
            .post(
                "/v1/payments",
                Some(&token),
                &[],
                &json!({ "account_id": account, "amount": 99, "currency": "EUR", "kind": "one_time" }),
            )
            .await;
        assert_eq!(payment.status, StatusCode::CREATED, "{payment:?}");
    }
}

async fn restart_projector(
    app: &TestApp,
    running: tokio::task::JoinHandle<()>,
) -> tokio::task::JoinHandle<()> {
    running.abort();
    let _ = running.await;
    app.start_projector()
}

async fn wait_for_offsets(app: &TestApp, total: i64) {
    eventually_within(
        &format!("offsets summing to {total}"),
        Duration::from_secs(60),
        || async {
            let sum: Option<i64> =
                sqlx::query_scalar("SELECT sum(next_offset)::bigint FROM projector_offsets")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            if sum == Some(total) {
                Ok(())
            } else {
                Err(format!("{sum:?}"))
            }
        },
    )
    .await;
}

/// Waits until `pool`'s journal lists `events` applied events.
async fn journal_lists(pool: &sqlx::PgPool, events: i64) {
    eventually_within(
        &format!("{events} applied events"),
        Duration::from_secs(60),
        || async {
            let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_applied_events")
                .fetch_one(pool)
                .await
                .unwrap();
            if applied == events {
                Ok(())
            } else {
                Err(format!("{applied}"))
            }
        },
    )
    .await;
}

async fn offsets_total(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT sum(next_offset)::bigint FROM projector_offsets")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivering_every_message_changes_no_read_model() {
    let app = spawn_app_with(AppOptions::default()).await;
    app.start_relay();
    let projector = app.start_projector();
    some_history(&app).await;
    app.wait_until_projected().await;
    let before = read_models_snapshot(&app.pool).await;
    let total = offsets_total(&app).await;
    assert!(total > 20, "{total} messages");

    // Replay the topics from offset 0 into the projector: the applied-events journal
    // recognises every event.
    sqlx::query("DELETE FROM projector_offsets")
        .execute(&app.pool)
        .await
        .unwrap();
    let projector = restart_projector(&app, projector).await;
    wait_for_offsets(&app, total).await;
    assert_eq!(read_models_snapshot(&app.pool).await, before);

    // Again without the journal: the version guard alone keeps every change single.
    sqlx::query("DELETE FROM projector_offsets")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM rm_applied_events")
        .execute(&app.pool)
        .await
        .unwrap();
    let _projector = restart_projector(&app, projector).await;
    wait_for_offsets(&app, total).await;
    app.wait_until_projected().await;
    assert_eq!(read_models_snapshot(&app.pool).await, before);
}

/// Stops the projector for good once batch `batch` is applied, before it commits.
struct StopMidBatch {
    batch: u64,
    reached: Arc<Notify>,
}

impl ApplyObserver for StopMidBatch {
    fn before_commit(&self, batch: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if batch == self.batch {
                self.reached.notify_one();
                std::future::pending::<()>().await;
            }
        })
    }
}

fn projector_on(
    app: &TestApp,
    pool: sqlx::PgPool,
    observer: Option<Arc<dyn ApplyObserver>>,
) -> Projector<ReadModels> {
    let mut read_models = ReadModels::new(pool);
    if let Some(observer) = observer {
        read_models = read_models.observed_by(observer);
    }
    Projector::new(
        Arc::new(read_models),
        app.settings.kafka.clone(),
        ProjectorSettings {
            batch_max: 5,
            batch_wait: Duration::from_millis(50),
            assignment: Assignment::Static {
                instance: 0,
                instances: 1,
            },
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_batch_resumes_without_loss_or_double_effect() {
    let app = spawn_app_with(AppOptions::default()).await;
    app.start_relay();
    some_history(&app).await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // Everything is on the topics before the projector starts, so its batches are full.
    eventually("the relay caught up", || async {
        match relay_lag(&app.pool, "default").await.unwrap().unpublished {
            0 => Ok(()),
            left => Err(format!("{left} unpublished")),
        }
    })
    .await;

    let reached = Arc::new(Notify::new());
    let observer = Arc::new(StopMidBatch {
        batch: 3,
        reached: reached.clone(),
    });
    let doomed = projector_on(&app, app.pool.clone(), Some(observer));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { doomed.run(stop).await }
    });
    tokio::time::timeout(Duration::from_secs(60), reached.notified())
        .await
        .expect("the projector reached batch 3");
    task.abort();
    let _ = task.await;

    // Whole batches are in, nothing of the third: effects and offsets moved together.
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_applied_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        applied > 0 && applied <= 10 && applied < events,
        "{applied} applied of {events}"
    );
    assert_eq!(offsets_total(&app).await, applied);

    let resumed = projector_on(&app, app.pool.clone(), None);
    let stop_resumed = CancellationToken::new();
    tokio::spawn({
        let stop = stop_resumed.clone();
        async move { resumed.run(stop).await }
    });
    app.wait_until_projected().await;

    // A fresh projection of every event, into a database of its own.
    let fresh_db = TestDb::create().await;
    let fresh_pool = fresh_db.pool(4).await;
    let fresh = projector_on(&app, fresh_pool.clone(), None);
    let stop_fresh = CancellationToken::new();
    tokio::spawn({
        let stop = stop_fresh.clone();
        async move { fresh.run(stop).await }
    });
    journal_lists(&fresh_pool, events).await;
    assert_eq!(
        read_models_snapshot(&app.pool).await,
        read_models_snapshot(&fresh_pool).await
    );
    let ledger_lines: i64 = sqlx::query_scalar("SELECT count(*) FROM account_ledger")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        ledger_lines, 12,
        "3 accounts × (3 deposits + 1 withdrawal), each once"
    );
    stop_resumed.cancel();
    stop_fresh.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_partitions_by_explicit_assignment() {
    let app = spawn_full_app().await;
    some_history(&app).await;
    app.wait_until_projected().await;
    let expected = read_models_snapshot(&app.pool).await;

    let db = TestDb::create().await;
    let pool = db.pool(4).await;
    let stop = CancellationToken::new();
    for instance in 0..2 {
        let projector = Projector::new(
            Arc::new(ReadModels::new(pool.clone())),
            app.settings.kafka.clone(),
            ProjectorSettings {
                assignment: Assignment::Static {
                    instance,
                    instances: 2,
                },
                ..ProjectorSettings::default()
            },
        );
        let stop = stop.clone();
        tokio::spawn(async move { projector.run(stop).await });
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    journal_lists(&pool, events).await;
    assert_eq!(read_models_snapshot(&pool).await, expected);
    let partitions: Vec<(String, i32)> =
        sqlx::query_as("SELECT topic, partition FROM projector_offsets ORDER BY 1, 2")
            .fetch_all(&pool)
            .await
            .unwrap();
    let unique: std::collections::BTreeSet<_> = partitions.iter().collect();
    assert_eq!(unique.len(), partitions.len());
    stop.cancel();
}

/// A projector that starts before the relay has created the topics must not settle for
/// an empty assignment: it retries until the topics exist, then projects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_started_before_its_topics_exist_projects_once_they_do() {
    let db = Arc::new(TestDb::create().await);
    let settings = chronicle_tests::test_settings(&AppOptions::with_read_side());
    let app = chronicle_tests::spawn_with_settings(db, settings, false).await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.start_projector();
    // It has met the missing topics and is retrying: only then let the relay create them.
    eventually("the projector's first retry", || async {
        let metrics = app.get_text("/metrics").await;
        if metrics
            .lines()
            .any(|l| l.starts_with("chronicle_projector_restarts_total{projector=\"read-models\"}"))
        {
            Ok(())
        } else {
            Err("no restart counted".into())
        }
    })
    .await;
    app.start_relay();
    app.deposit(&token, account, 250).await;
    app.wait_until_projected().await;
    let view = app.get(&format!("/v1/accounts/{account}"), &token).await;
    assert_eq!(view.body["balance"], json!(250), "{view:?}");
}
