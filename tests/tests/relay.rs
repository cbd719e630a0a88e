//! The relay against the real PostgreSQL and the real broker: commit order, the classic
//! gap, hot standby, upcasting on the wire.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use chronicle_eventstore::envelope::event_id;
use chronicle_eventstore::kafka::ensure_topics;
use chronicle_eventstore::relay::{
    ActiveRelay, Relay, RelaySettings, SELECT_NEXT_AFTER, relay_lag,
};
use chronicle_tests::{consume_envelopes, spawn_app};
use serde_json::json;
use sqlx::{Executor, Postgres, Transaction};
use uuid::Uuid;

async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    sequence: i64,
    event_type: &str,
    version: &str,
    payload: serde_json::Value,
) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('Account', $1, $2, $3, $4, $5, '{\"actor\": \"alice\"}')",
    )
    .bind(id.to_string())
    .bind(sequence)
    .bind(event_type)
    .bind(version)
    .bind(payload)
    .execute(&mut **tx)
    .await
    .unwrap();
}

fn opened(id: Uuid) -> serde_json::Value {
    json!({
        "type": "AccountOpened", "account_id": id, "owner": "alice", "currency": "EUR",
        "overdraft_limit": 0, "opened_at": "2030-01-01T00:00:00Z"
    })
}

/// Deposits into `account`'s stream with the given `sequences`, in one statement.
async fn insert_deposits(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    sequences: std::ops::RangeInclusive<i64>,
) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'Account', $1, n, 'FundsDeposited', '1', \
                jsonb_build_object('type', 'FundsDeposited', 'amount', 1, 'reference', 'd' || n, \
                                   'balance_after', n, 'occurred_at', '2030-01-01T00:00:00Z'), \
                '{\"actor\": \"alice\"}' \
           FROM generate_series($2::bigint, $3::bigint) AS n",
    )
    .bind(account.to_string())
    .bind(sequences.start())
    .bind(sequences.end())
    .execute(&mut **tx)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_commits_late_is_published_not_skipped() {
    let app = spawn_app().await;
    ensure_topics(&app.settings.kafka).await.unwrap();
    let relay = Relay::new(
        app.pool.clone(),
        app.settings.kafka.clone(),
        RelaySettings::default(),
    );
    let mut active = relay
        .try_activate()
        .await
        .unwrap()
        .expect("the only relay is active");

    // A appends two events and stays open.
    let slow = Uuid::new_v4();
    let mut a = app.pool.begin().await.unwrap();
    insert_event(&mut a, slow, 1, "AccountOpened", "2", opened(slow)).await;
    let deposit = json!({"type": "FundsDeposited", "amount": 5, "reference": null, "balance_after": 5, "occurred_at": "2030-01-01T00:00:00Z"});
    insert_event(&mut a, slow, 2, "FundsDeposited", "1", deposit).await;

    // B appends and commits.
    let token = app.client_token("bob");
    let fast = app.open_account(&token, "EUR", 0).await;

    // The relay runs: B is committed but must wait behind A.
    assert_eq!(active.publish_available().await.unwrap(), 0);
    let lag = relay_lag(&app.pool, "default").await.unwrap();
    assert_eq!((lag.unpublished, lag.held_back), (1, 1), "{lag:?}");
    assert!(lag.oldest_transaction_seconds >= 0.0);

    // A commits; the relay publishes all three, A's first.
    a.commit().await.unwrap();
    publish_exactly(&mut active, 3).await;
    assert_eq!(
        relay_lag(&app.pool, "default").await.unwrap().unpublished,
        0
    );

    let envelopes = consume_envelopes(&app, 3).await;
    let mut slow_events: Vec<_> = envelopes
        .iter()
        .filter(|(_, _, e)| e.aggregate_id == slow.to_string())
        .collect();
    slow_events.sort_by_key(|(_, offset, _)| *offset);
    let sequences: Vec<i64> = slow_events.iter().map(|(_, _, e)| e.sequence).collect();
    assert_eq!(sequences, vec![1, 2], "per-aggregate order follows offsets");
    assert!(
        envelopes
            .iter()
            .any(|(_, _, e)| e.aggregate_id == fast.to_string())
    );
    let (_, _, first) = slow_events[0];
    assert_eq!(first.event_id, event_id("Account", &slow.to_string(), 1));
    assert_eq!(first.metadata.actor.as_deref(), Some("alice"));
    // Nothing is published twice by a relay that keeps its checkpoint.
    assert_eq!(active.publish_available().await.unwrap(), 0);
}

#[tokio::test]
async fn a_second_relay_waits_as_a_hot_standby_and_resumes_from_the_checkpoint() {
    let app = spawn_app().await;
    ensure_topics(&app.settings.kafka).await.unwrap();
    let settings = RelaySettings::default();
    let first = Relay::new(
        app.pool.clone(),
        app.settings.kafka.clone(),
        settings.clone(),
    );
    let second = Relay::new(app.pool.clone(), app.settings.kafka.clone(), settings);

    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    let mut active = first.try_activate().await.unwrap().unwrap();
    assert!(
        second.try_activate().await.unwrap().is_none(),
        "the lock is taken"
    );
    publish_exactly(&mut active, 1).await;
    drop(active);

    app.deposit(&token, account, 10).await;
    let mut taken_over = second
        .try_activate()
        .await
        .unwrap()
        .expect("the standby takes over");
    // Only what the first did not publish.
    publish_exactly(&mut taken_over, 1).await;
    assert_eq!(taken_over.publish_available().await.unwrap(), 0);
    let envelopes = consume_envelopes(&app, 2).await;
    let mut sequences: Vec<i64> = envelopes.iter().map(|(_, _, e)| e.sequence).collect();
    sequences.sort();
    assert_eq!(sequences, vec![1, 2]);
}

#[tokio::test]
async fn stored_old_versions_go_out_upcast_and_long_transactions_show_as_held_back() {
    let app = spawn_app().await;
    ensure_topics(&app.settings.kafka).await.unwrap();
    let id = Uuid::new_v4();
    let mut tx = app.pool.begin().await.unwrap();
    let mut v1 = opened(id);
    v1.as_object_mut().unwrap().remove("overdraft_limit");
    insert_event(&mut tx, id, 1, "AccountOpened", "1", v1).await;
    tx.commit().await.unwrap();

    // An unrelated transaction anywhere in the cluster that holds an xid.
    let mut blocker = app.pool.begin().await.unwrap();
    blocker
        .execute("SELECT pg_current_xact_id()")
        .await
        .unwrap();
    let token = app.client_token("carol");
    app.open_account(&token, "EUR", 0).await;

    let relay = Relay::new(
        app.pool.clone(),
        app.settings.kafka.clone(),
        RelaySettings::default(),
    );
    let mut active = relay.try_activate().await.unwrap().unwrap();
    // Only the event before the blocker.
    publish_exactly(&mut active, 1).await;
    let lag = relay_lag(&app.pool, "default").await.unwrap();
    assert_eq!(lag.held_back, 1);
    blocker.rollback().await.unwrap();
    publish_exactly(&mut active, 1).await;

    let envelopes = consume_envelopes(&app, 2).await;
    let (_, _, upcast) = envelopes
        .iter()
        .find(|(_, _, e)| e.aggregate_id == id.to_string())
        .unwrap();
    assert_eq!(upcast.event_version, "2");
    assert_eq!(upcast.payload["overdraft_limit"], 0);
}

/// Publishes until `expected` events went out. Transactions of other tests on the same
/// server can hold a commit-safe read back for a moment (the snapshot's xmin is
/// server-wide), so one call may publish fewer; more than `expected` is a failure.
async fn publish_exactly(active: &mut ActiveRelay<'_>, expected: usize) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut published = active.publish_available().await.unwrap();
    while published < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        published += active.publish_available().await.unwrap();
    }
    assert_eq!(published, expected, "events published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_wakes_the_relay_after_its_commit_without_waiting_for_a_poll() {
    let app = spawn_app().await;
    ensure_topics(&app.settings.kafka).await.unwrap();
    let relay = Relay::new(
        app.pool.clone(),
        app.settings.kafka.clone(),
        RelaySettings {
            poll_interval: std::time::Duration::from_secs(300),
            ..RelaySettings::default()
        },
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let token = app.client_token("alice");
    // The first account may go out with the relay's first look; the deposits each need
    // a wake-up, since nothing else makes the relay look again within five minutes.
    let account = app.open_account(&token, "EUR", 0).await;
    for expected in 2..=4 {
        app.deposit(&token, account, 5).await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let published: i64 = sqlx::query_scalar(
                "SELECT coalesce(max(published), 0) FROM relay_checkpoints WHERE name = 'default'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            if published >= expected {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "event {expected} not published: the relay was not woken"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    shutdown.cancel();
    running.await.unwrap();
}

/// Many small batches in flight at once, and a batch committed while earlier ones are
/// still unacknowledged: every event goes out once, in order, and the checkpoint ends
/// after the last one with every event counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_go_out_once_in_order_and_the_checkpoint_follows() {
    let app = spawn_app().await;
    ensure_topics(&app.settings.kafka).await.unwrap();
    let relay = Relay::new(
        app.pool.clone(),
        app.settings.kafka.clone(),
        RelaySettings {
            batch_size: 3,
            in_flight: 2,
            poll_interval: std::time::Duration::from_secs(300),
            ..RelaySettings::default()
        },
    );
    let account = Uuid::new_v4();
    let mut tx = app.pool.begin().await.unwrap();
    insert_event(&mut tx, account, 1, "AccountOpened", "2", opened(account)).await;
    insert_deposits(&mut tx, account, 2..=20).await;
    tx.commit().await.unwrap();

    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    // More events in a second transaction, likely while the first ones are in flight;
    // the writers' wake-up (raw inserts send none) is a NOTIFY of our own.
    let mut tx = app.pool.begin().await.unwrap();
    insert_deposits(&mut tx, account, 21..=31).await;
    sqlx::query("NOTIFY chronicle_events")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let envelopes = consume_envelopes(&app, 31).await;
    let mut sequences: Vec<(i64, i64)> = envelopes
        .iter()
        .map(|(_, offset, e)| (*offset, e.sequence))
        .collect();
    sequences.sort_unstable();
    assert_eq!(
        sequences.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        (1..=31).collect::<Vec<_>>(),
        "one partition holds the account's events once each, in sequence order"
    );
    shutdown.cancel();
    running.await.unwrap();
    let (published, position): (i64, i64) = sqlx::query_as(
        "SELECT published, global_position FROM relay_checkpoints WHERE name = 'default'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let last: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((published, position), (31, last));
}

/// The relay asks "is anything after my checkpoint?" after every look. As a prepared
/// statement it is planned once for any checkpoint; that generic plan must walk the
/// commit-order index, not scan `events` from its start (it did, as an `EXISTS`, and
/// grew with the store).
#[tokio::test]
async fn the_held_back_check_walks_the_commit_order_index_in_its_generic_plan() {
    let app = spawn_app().await;
    let account = Uuid::new_v4();
    let mut tx = app.pool.begin().await.unwrap();
    insert_event(&mut tx, account, 1, "AccountOpened", "2", opened(account)).await;
    insert_deposits(&mut tx, account, 2..=20_000).await;
    tx.commit().await.unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    for statement in [
        "ANALYZE events".to_owned(),
        "SET plan_cache_mode = force_generic_plan".to_owned(),
        format!("PREPARE next_after(text, bigint) AS {SELECT_NEXT_AFTER}"),
    ] {
        sqlx::query(&statement).execute(&mut *conn).await.unwrap();
    }
    let plan: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE next_after('1', 1)")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index")
            && plan.contains("events_commit_order")
            && !plan.contains("Seq Scan"),
        "{plan}"
    );
    // The session's settings must not follow the connection back into the pool.
    conn.close_on_drop();
}

#[tokio::test]
async fn topics_are_created_with_the_configured_retention() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;

    let app = spawn_app().await;
    let mut kafka = app.settings.kafka.clone();
    kafka.topic_prefix = format!("retention-{}.", Uuid::new_v4().simple());
    kafka.retention = std::time::Duration::from_secs(5 * 3600);
    ensure_topics(&kafka).await.unwrap();
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config("retention-test").create().unwrap();
    let topic = kafka.topics()[0].clone();
    let options = AdminOptions::new().request_timeout(Some(std::time::Duration::from_secs(10)));
    let described = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        admin.describe_configs(&[ResourceSpecifier::Topic(&topic)], &options),
    )
    .await
    .expect("the broker answers DescribeConfigs")
    .unwrap();
    let resource = described[0].as_ref().expect("the topic's configuration");
    let retention = resource
        .get("retention.ms")
        .and_then(|entry| entry.value.clone());
    assert_eq!(retention.as_deref(), Some("18000000"));
    let policy = resource
        .get("cleanup.policy")
        .and_then(|entry| entry.value.clone());
    assert_eq!(policy.as_deref(), Some("delete"));
}
