//! The event store itself: append-only for every role, the hash chain, seat claims'
//! release, snapshots, upcasting, and the metadata every event carries.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use chronicle_commands::CommandSettings;
use chronicle_eventstore::chain::{ChainBreak, verify_stream};
use chronicle_tests::{AppOptions, TestApp, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

#[tokio::test]
async fn history_cannot_be_changed_by_the_application_role_or_the_owner() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 100).await;

    for statement in [
        "UPDATE events SET payload = '{}'::jsonb",
        "UPDATE events SET recorded_at = now() WHERE false",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let error = sqlx::query(statement).execute(&app.pool).await.unwrap_err();
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("CH000"),
            "{statement}: {error}"
        );
    }
    // The owner cannot switch the guard off or drop the table either.
    for statement in [
        "ALTER TABLE events DISABLE TRIGGER events_append_only",
        "ALTER TABLE events DISABLE TRIGGER ALL",
        "DROP TRIGGER events_append_only ON events",
        "DROP TABLE events CASCADE",
    ] {
        let error = sqlx::query(statement).execute(&app.pool).await.unwrap_err();
        assert_eq!(
            sqlstate(&error).as_deref(),
            Some("CH000"),
            "{statement}: {error}"
        );
    }

    // A role with every table privilege granted is refused the same way.
    let role = format!("chronicle_writer_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"
    ))
    .execute(&app.pool)
    .await
    .unwrap();
    let mut conn = sqlx::PgConnection::connect_with(&app.db.options)
        .await
        .unwrap();
    sqlx::query(&format!("SET ROLE {role}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let error = sqlx::query("UPDATE events SET event_type = 'X'")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error).as_deref(), Some("CH000"));
    sqlx::query("RESET ROLE").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    sqlx::query(&format!("DROP OWNED BY {role}"))
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&app.pool)
        .await
        .unwrap();

    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 2);
}

#[tokio::test]
async fn the_hash_chain_recomputes_and_shows_tampering() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    for amount in [100, 250, 400] {
        app.deposit(&token, account, amount).await;
    }
    let id = account.to_string();
    assert_eq!(
        verify_stream(&app.pool, "Account", &id).await.unwrap(),
        vec![]
    );

    // Only a deliberate superuser bypass gets past the guard.
    app.as_superuser(
        "UPDATE events SET payload = jsonb_set(payload, '{amount}', '9999') \
          WHERE aggregate_id = $1 AND sequence = 3",
        &id,
    )
    .await;
    assert_eq!(
        verify_stream(&app.pool, "Account", &id).await.unwrap(),
        vec![ChainBreak::HashMismatch { sequence: 3 }]
    );
}

#[tokio::test]
async fn removing_events_is_caught_in_the_middle_and_at_the_end() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    for amount in [1, 2, 3] {
        app.deposit(&token, account, amount).await;
    }
    let id = account.to_string();
    app.as_superuser(
        "DELETE FROM events WHERE aggregate_id = $1 AND sequence IN (2, 4)",
        &id,
    )
    .await;
    let breaks = verify_stream(&app.pool, "Account", &id).await.unwrap();
    assert!(
        breaks.contains(&ChainBreak::SequenceGap {
            expected: 2,
            found: 3
        }),
        "{breaks:?}"
    );
    assert!(
        breaks.contains(&ChainBreak::HeadMismatch {
            head_sequence: 4,
            last_sequence: 3
        }),
        "{breaks:?}"
    );
}

#[tokio::test]
async fn a_cancelled_booking_releases_its_seats() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    let body = TestApp::booking_body(account, "stage", &["A1", "A2"], 10, 0);
    let first = app.post("/v1/bookings", Some(&token), &[], &body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let overlapping = TestApp::booking_body(account, "stage", &["A2", "A3"], 10, 30);
    let refused = app
        .post("/v1/bookings", Some(&token), &[], &overlapping)
        .await;
    assert_eq!(refused.code(), "seat_taken");
    // The same seats at a time that does not overlap are free.
    let later = TestApp::booking_body(account, "stage", &["A1", "A2"], 11, 0);
    assert_eq!(
        app.post("/v1/bookings", Some(&token), &[], &later)
            .await
            .status,
        StatusCode::CREATED
    );

    let cancel = app
        .post(
            &format!("/v1/bookings/{}/cancel", first.id("booking_id")),
            Some(&token),
            &[],
            &json!({ "reason": "ill" }),
        )
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{cancel:?}");
    assert_eq!(cancel.body["status"], "cancelled");
    assert_eq!(
        app.post("/v1/bookings", Some(&token), &[], &overlapping)
            .await
            .status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn snapshots_bound_what_a_load_reads_and_a_bad_one_is_replaced() {
    let app = spawn_app_with(AppOptions {
        commands: CommandSettings {
            snapshot_every: 10,
            ..CommandSettings::default()
        },
        ..AppOptions::default()
    })
    .await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    for _ in 0..24 {
        app.deposit(&token, account, 5).await;
    }
    let id = account.to_string();
    let last: i64 =
        sqlx::query_scalar("SELECT last_sequence FROM snapshots WHERE aggregate_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(last, 20);
    assert_eq!(
        app.commands
            .load_account(account)
            .await
            .unwrap()
            .state()
            .unwrap()
            .balance,
        120
    );

    // A snapshot that no longer deserializes (the aggregate changed shape) is ignored,
    // the stream replayed, and a fresh snapshot replaces it at the next commit.
    sqlx::query("UPDATE snapshots SET payload = '{\"shape\": \"old\"}' WHERE aggregate_id = $1")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    app.deposit(&token, account, 5).await;
    let (last, payload): (i64, serde_json::Value) =
        sqlx::query_as("SELECT last_sequence, payload FROM snapshots WHERE aggregate_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(last, 26);
    // Opened, then 25 deposits of 5 up to sequence 26.
    assert_eq!(payload["state"]["balance"], 125);
    assert_eq!(payload["version"], 26);
    // And from there, one every ten events again.
    for _ in 0..10 {
        app.deposit(&token, account, 5).await;
    }
    let last: i64 =
        sqlx::query_scalar("SELECT last_sequence FROM snapshots WHERE aggregate_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(last, 36);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshots")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn if_match_holds_across_a_snapshot() {
    // cqrs-es 0.5's PersistedEventStore applied a command's events twice into the
    // snapshot (its EventSink had applied them already), so after a snapshot the
    // aggregate's version ran one ahead and a correct If-Match answered 412 (ADR 0011).
    let app = spawn_app_with(AppOptions {
        commands: CommandSettings {
            snapshot_every: 4,
            ..CommandSettings::default()
        },
        ..AppOptions::default()
    })
    .await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    for version in 1..=9 {
        let reply = app
            .post(
                &format!("/v1/accounts/{account}/deposits"),
                Some(&token),
                &[("If-Match", &format!("\"{version}\""))],
                &json!({ "amount": 10 }),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "at version {version}: {reply:?}"
        );
        assert_eq!(reply.body["version"], version + 1);
    }
    let payload: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM snapshots WHERE aggregate_id = $1")
            .bind(account.to_string())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(payload["version"], 8);
    assert_eq!(payload["state"]["balance"], 70);
}

#[tokio::test]
async fn a_command_of_two_events_across_a_snapshot_keeps_both() {
    // ChargeFailed and PaymentSuspended come from one command that crosses a snapshot
    // boundary: the snapshot is taken at the end of the commit and holds both (a
    // snapshot of the boundary recorded at the commit's last sequence would lose the
    // suspension; ADR 0011).
    use chronicle_commands::CommandMetadata;
    use chronicle_domain::payment::PaymentRequest;
    use chronicle_domain::values::{Note, Owner};
    use chronicle_domain::{
        AccountCommand, Actor, Amount, Currency, Issued, Money, PaymentCommand, PaymentKind,
        PaymentStatus, Role, Schedule,
    };
    let app = spawn_app_with(AppOptions {
        commands: CommandSettings {
            snapshot_every: 3,
            ..CommandSettings::default()
        },
        ..AppOptions::default()
    })
    .await;
    let alice = Actor::new("alice", [Role::Client]);
    let system = Actor::system("process-manager");
    let now = chrono::Utc::now();
    let metadata = || CommandMetadata::for_request("alice", uuid::Uuid::new_v4(), None);
    let (account, payment) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let eur = Currency::parse("EUR").unwrap();
    let open = AccountCommand::OpenAccount {
        account_id: account,
        owner: Owner::parse("alice").unwrap(),
        currency: eur,
        overdraft_limit: 0,
    };
    app.commands
        .account(account, Issued::new(alice.clone(), now, open), &metadata())
        .await
        .unwrap();
    let initiate = PaymentCommand::InitiatePayment(PaymentRequest {
        payment_id: payment,
        account_id: account,
        owner: "alice".to_owned(),
        amount: Money::new(Amount::new("amount", 500).unwrap(), eur),
        kind: PaymentKind::Recurring,
        schedule: Some(Schedule {
            interval_seconds: 3_600,
            count: Some(3),
            until: None,
        }),
        booking_id: None,
    });
    for command in [
        initiate,
        PaymentCommand::CapturePayment { charge: 1 },
        PaymentCommand::FailCharge {
            charge: 2,
            attempt: 3,
            reason: Note::reason("declined"),
            retry_at: None,
        },
    ] {
        let issued = Issued::new(system.clone(), now, command);
        app.commands
            .payment(payment, issued, &metadata())
            .await
            .unwrap();
    }
    let snapshot: i64 =
        sqlx::query_scalar("SELECT last_sequence FROM snapshots WHERE aggregate_id = $1")
            .bind(payment.to_string())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(snapshot, 4, "one snapshot, at the end of the commit");
    let loaded = app.commands.load_payment(payment).await.unwrap();
    assert_eq!(loaded.state().unwrap().status, PaymentStatus::Suspended);
}

#[tokio::test]
async fn the_chain_hashes_as_before_the_trigger_was_inlined() {
    // A store written under the first migrations' trigger (hash through the SQL helper
    // functions), then migrated to the inlined trigger and appended to: one chain, and
    // every link equal to the helper's own definition.
    let db = chronicle_tests::TestDb::create().await;
    let pool = db.pool(2).await;
    let fresh = format!("{}_old", db.name);
    let mut admin = sqlx::PgConnection::connect_with(&chronicle_tests::admin_options())
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{fresh}\" TEMPLATE template0"))
        .execute(&mut admin)
        .await
        .unwrap();
    let old = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(db.options.clone().database(&fresh))
        .await
        .unwrap();
    let mut before = sqlx::migrate::Migrator {
        migrations: chronicle_commands::schema::migrator().migrations,
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let inlined = before
        .migrations
        .iter()
        .position(|m| m.description.contains("cheaper append"))
        .expect("the migration that inlines the chain");
    before.migrations = before.migrations[..inlined].to_vec().into();
    before.run(&old).await.unwrap();
    let stream = uuid::Uuid::new_v4().to_string();
    let append = |sequence: i64| {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) VALUES ('Account', $1, $2, 'Noted', '1', \
             $3, '{\"actor\": \"zoë\"}')",
        )
        .bind(stream.clone())
        .bind(sequence)
        .bind(json!({"n": sequence, "text": "Zoë — ünïcode ✓", "nested": {"a": [1, 2.5, null]}}))
    };
    for sequence in 1..=3 {
        append(sequence).execute(&old).await.unwrap();
    }
    chronicle_commands::schema::migrate(&old).await.unwrap();
    for sequence in 4..=6 {
        append(sequence).execute(&old).await.unwrap();
    }
    assert_eq!(
        verify_stream(&old, "Account", &stream).await.unwrap(),
        vec![]
    );
    let differing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e \
           LEFT JOIN events p ON p.aggregate_type = e.aggregate_type \
                AND p.aggregate_id = e.aggregate_id AND p.sequence = e.sequence - 1 \
          WHERE e.hash <> chronicle_chain_hash(coalesce(p.hash, decode(repeat('00', 32), 'hex')), e)",
    )
    .fetch_one(&old)
    .await
    .unwrap();
    assert_eq!(differing, 0);
    old.close().await;
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE \"{fresh}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stored_v1_event_loads_as_v2() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4();
    // AccountOpened v1 had no overdraft_limit.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('Account', $1, 1, 'AccountOpened', '1', $2, '{}')",
    )
    .bind(id.to_string())
    .bind(json!({
        "type": "AccountOpened",
        "account_id": id,
        "owner": "alice",
        "currency": "EUR",
        "opened_at": "2021-06-01T00:00:00Z"
    }))
    .execute(&app.pool)
    .await
    .unwrap();
    let account = app.commands.load_account(id).await.unwrap();
    let state = account.state().unwrap();
    assert_eq!(
        (state.overdraft_limit, state.balance, state.owner.as_str()),
        (0, 0, "alice")
    );
    let token = app.client_token("alice");
    app.deposit(&token, id, 10).await;
    let withdrawal = app
        .post(
            &format!("/v1/accounts/{id}/withdrawals"),
            Some(&token),
            &[],
            &json!({ "amount": 11 }),
        )
        .await;
    assert_eq!(withdrawal.code(), "insufficient_funds");
}

#[tokio::test]
async fn events_carry_actor_correlation_causation_and_request_ids() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let request_id = uuid::Uuid::new_v4();
    let correlation_id = uuid::Uuid::new_v4();
    let reply = app
        .post(
            "/v1/accounts",
            Some(&token),
            &[
                ("X-Request-Id", &request_id.to_string()),
                ("X-Correlation-Id", &correlation_id.to_string()),
            ],
            &json!({ "currency": "EUR" }),
        )
        .await;
    assert_eq!(
        reply.headers["x-request-id"].to_str().unwrap(),
        request_id.to_string()
    );
    let (metadata, position, version): (serde_json::Value, i64, i64) = sqlx::query_as(
        "SELECT metadata, global_position, sequence FROM events WHERE aggregate_id = $1",
    )
    .bind(reply.id("account_id").to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(metadata["actor"], "alice");
    assert_eq!(metadata["request_id"], request_id.to_string());
    assert_eq!(metadata["causation_id"], request_id.to_string());
    assert_eq!(metadata["correlation_id"], correlation_id.to_string());
    assert_eq!(reply.body["position"], position);
    assert_eq!(reply.body["version"], version);
    assert_eq!(reply.headers["etag"].to_str().unwrap(), "\"1\"");
}

/// The relay and a rebuild read the store by `SELECT_COMMIT_SAFE_AFTER`. It must walk the
/// `(tx_id, global_position)` index in order. It selects `tx_id::text AS tx_id`, and an
/// unqualified `ORDER BY tx_id` there sorted by that text: "10" before "9", so a batch
/// cut by its LIMIT could set the checkpoint past events it never read, and every batch
/// sorted the whole backlog (the relay ran at a quarter of the broker's rate).
#[tokio::test]
async fn commit_safe_reads_walk_the_commit_order_index_by_transaction_id() {
    use chronicle_eventstore::envelope::SELECT_COMMIT_SAFE_AFTER;
    use sqlx::Executor;

    let app = spawn_app().await;
    let mut conn = app.pool.acquire().await.unwrap();
    conn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .await
        .unwrap();
    let plan: serde_json::Value =
        sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {SELECT_COMMIT_SAFE_AFTER}"))
            .bind("0")
            .bind(0_i64)
            .bind(1000_i64)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    let plan = plan.to_string();
    assert!(
        plan.contains("\"Index Name\":\"events_commit_order\""),
        "{plan}"
    );
    assert!(!plan.contains("\"Node Type\":\"Sort\""), "{plan}");

    // And it returns rows in numeric transaction order.
    let token = app.client_token("alice");
    for _ in 0..3 {
        app.open_account(&token, "EUR", 0).await;
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT tx_id, global_position FROM ({SELECT_COMMIT_SAFE_AFTER}) AS batch"
    ))
    .bind("0")
    .bind(0_i64)
    .bind(1000_i64)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let numeric: Vec<(u64, i64)> = rows
        .iter()
        .map(|(tx, position)| (tx.parse().unwrap(), *position))
        .collect();
    let mut sorted = numeric.clone();
    sorted.sort_unstable();
    assert_eq!(numeric, sorted);
}

#[tokio::test]
async fn claims_of_bookings_that_ended_are_forgotten_and_others_kept() {
    let db = chronicle_tests::TestDb::create().await;
    let pool = db.pool(2).await;
    // (booking, from, to) in hours from now.
    for (booking, from, to) in [("ended", -72, -48), ("ending", -3, -2), ("coming", 48, 72)] {
        sqlx::query(
            "INSERT INTO seat_claims (resource_id, seat, during, booking_id) \
             VALUES ('hall', '1', tstzrange(now() + make_interval(hours => $2), \
                                            now() + make_interval(hours => $3)), $1)",
        )
        .bind(booking)
        .bind(from)
        .bind(to)
        .execute(&pool)
        .await
        .unwrap();
    }
    let forgotten = chronicle_eventstore::db::forget_ended_claims(
        &pool,
        std::time::Duration::from_secs(86_400),
    )
    .await
    .unwrap();
    assert_eq!(forgotten, 1);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT booking_id FROM seat_claims ORDER BY booking_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(left, ["coming", "ending"]);
}
