//! Group commit (ADR 0012): commands that arrive together share one transaction, and
//! each still gets the answer it would have had alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chronicle_commands::{
    CommandError, CommandMetadata, CommandOutcome, CommandService, CommandSettings,
    IdempotencyClaim,
};
use chronicle_domain::booking::BookingRequest;
use chronicle_domain::values::{Guest, ResourceId, Seats};
use chronicle_domain::{Actor, Amount, BookingCommand, Currency, Issued, Money, Role};
use chronicle_eventstore::chain::verify_stream;
use chronicle_eventstore::metrics::{APPEND_GROUP_SIZE, APPEND_QUEUE};
use chronicle_eventstore::repository::GroupCommitSettings;
use chronicle_tests::TestDb;
use chrono::{TimeZone, Utc};
use futures::future::join_all;
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

fn booking(id: Uuid, resource: &str, seat: &str) -> Issued<BookingCommand> {
    let starts_at = Utc.with_ymd_and_hms(2031, 3, 1, 10, 0, 0).unwrap();
    let request = BookingRequest {
        booking_id: id,
        account_id: Uuid::from_u128(0xacc),
        owner: "alice".to_owned(),
        resource_id: ResourceId::parse(resource).unwrap(),
        seats: Seats::parse(&[seat.to_owned()]).unwrap(),
        starts_at,
        ends_at: starts_at + chrono::Duration::hours(2),
        price: Money::new(
            Amount::new("amount", 1_200).unwrap(),
            Currency::parse("EUR").unwrap(),
        ),
        guest: Guest::parse("Zoë Adams", "zoe@example.org").unwrap(),
        notes: None,
    };
    Issued::new(
        Actor::new("alice", [Role::Client]),
        Utc::now(),
        BookingCommand::RequestBooking(Box::new(request)),
    )
}

fn metadata(key: Option<(&str, &str)>) -> CommandMetadata {
    CommandMetadata::for_request("alice".to_owned(), Uuid::new_v4(), None).with_idempotency(
        key.map(|(key, hash)| IdempotencyClaim {
            key: key.to_owned(),
            request_hash: hash.to_owned(),
        }),
    )
}

/// What a command is sent with, and what it must come back with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// One of several bookings of the same seat at the same time.
    Race,
    /// A booking of a seat nobody else wants.
    Free,
    /// One of two different requests under the same idempotency key.
    KeyPair,
    /// A request sent twice with the same key: once appended, once answered from the
    /// record.
    Retried,
}

async fn last_position(pool: &PgPool, id: Uuid) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT max(global_position) FROM events \
          WHERE aggregate_type = 'Booking' AND aggregate_id = $1",
    )
    .bind(id.to_string())
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn commands_committed_together_each_get_their_own_answer() {
    let db = TestDb::create().await;
    let pool = db.pool(48).await;
    let service = CommandService::new(
        pool.clone(),
        CommandSettings {
            group_commit: GroupCommitSettings {
                writers: 1,
                max_group: 32,
            },
            ..CommandSettings::default()
        },
    );
    // Every booking is for one guest, known already (a first booking's new key would
    // make the others of this process wait for it: ADR 0035).
    let keys = service.key_store().unwrap();
    keys.ensure(&keys.master_keys().subject_id("zoe@example.org"))
        .await
        .unwrap();

    let mut sends: Vec<(Kind, Uuid, Issued<BookingCommand>, CommandMetadata)> = Vec::new();
    for _ in 0..10 {
        let race = booking(Uuid::nil(), "room-race", "1");
        sends.push((Kind::Race, Uuid::new_v4(), race, metadata(None)));
    }
    for seat in 1..=10 {
        let free = booking(Uuid::nil(), "room-free", &seat.to_string());
        sends.push((Kind::Free, Uuid::new_v4(), free, metadata(None)));
    }
    for i in 0..4 {
        let key = format!("pair-{i}");
        for side in ["a", "b"] {
            let seat = format!("{i}{side}");
            sends.push((
                Kind::KeyPair,
                Uuid::new_v4(),
                booking(Uuid::nil(), "room-pairs", &seat),
                metadata(Some((&key, &format!("hash-{i}-{side}")))),
            ));
        }
    }
    for i in 0..4 {
        let id = Uuid::new_v4();
        let key = format!("retried-{i}");
        let seat = format!("{i}");
        for _ in 0..2 {
            sends.push((
                Kind::Retried,
                id,
                booking(Uuid::nil(), "room-retried", &seat),
                metadata(Some((&key, "same-request"))),
            ));
        }
    }
    // The aggregate id goes into the command too.
    for (_, id, issued, _) in &mut sends {
        if let BookingCommand::RequestBooking(request) = &mut issued.command {
            request.booking_id = *id;
        }
    }
    // Distinct aggregates: the retried requests queue once each (the second waits for
    // the first behind the aggregate's lock, then finds its record).
    let distinct = sends.len() - 4;
    // A domain refusal never reaches the writer.
    let no_key = metadata(None);
    let refused_early = service.booking(
        Uuid::new_v4(),
        Issued::new(
            Actor::new("alice", [Role::Client]),
            Utc::now(),
            BookingCommand::ConfirmBooking {
                payment_id: Uuid::new_v4(),
            },
        ),
        &no_key,
    );

    // Hold the appends back until at least `QUEUED` of them wait behind the first: the
    // writer's first append waits for this lock, and those behind it then go as one
    // group. Not all of them can queue: the service serialises commands whose aggregates
    // share one of its 1,024 lock stripes, and a command behind a blocked neighbour's
    // stripe only queues once that neighbour has committed (random ids collide in about
    // a third of runs with 32 aggregates).
    const QUEUED: i64 = 16;
    let mut blocker = PgConnection::connect_with(&db.options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let groups_before = APPEND_GROUP_SIZE.get_sample_count();
    let members_before = APPEND_GROUP_SIZE.get_sample_sum();

    let running = join_all(
        sends
            .iter()
            .map(|(_, id, issued, metadata)| service.booking(*id, issued.clone(), metadata)),
    );
    let release = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while APPEND_QUEUE.get() < QUEUED {
            assert!(
                Instant::now() < deadline,
                "only {} of {distinct} appends queued behind the first",
                APPEND_QUEUE.get(),
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    };
    let (answers, (), early) = tokio::join!(running, release, refused_early);

    assert!(matches!(early, Err(CommandError::Rejected(_))), "{early:?}");
    let groups = APPEND_GROUP_SIZE.get_sample_count() - groups_before;
    let members = APPEND_GROUP_SIZE.get_sample_sum() - members_before;
    // Every append goes through a writer at most once (no retries here). A key pair's
    // second request can be answered at its load instead, when a lock stripe made it
    // wait until its twin had committed.
    assert!(
        (distinct - 4..=distinct).contains(&(members as usize)),
        "{members} appends through the writers for {distinct} aggregates"
    );
    assert!(
        members - groups as f64 >= (QUEUED - 1) as f64,
        "{QUEUED} appends queued together should share a transaction: {distinct} went in {groups} groups"
    );

    let by_kind = |kind: Kind| {
        sends
            .iter()
            .zip(&answers)
            .filter(move |((k, ..), _)| *k == kind)
            .map(|((_, id, ..), answer)| (*id, answer))
    };

    // Exactly one booking of the raced seat; the others are told the seat is taken.
    let race: Vec<_> = by_kind(Kind::Race).collect();
    let won: Vec<_> = race.iter().filter(|(_, a)| a.is_ok()).collect();
    assert_eq!(won.len(), 1, "{race:?}");
    for (id, answer) in &race {
        match answer {
            Ok(outcome) => check_appended(&pool, *id, outcome).await,
            Err(error) => {
                assert!(matches!(error, CommandError::SeatTaken), "{error:?}");
                assert_eq!(last_position(&pool, *id).await, None, "{id}");
            }
        }
    }
    // Their neighbours commit as if alone.
    for (id, answer) in by_kind(Kind::Free) {
        check_appended(&pool, id, answer.as_ref().unwrap()).await;
    }
    // One request per key; the other is told the key is used, and left nothing behind.
    let pairs: Vec<_> = by_kind(Kind::KeyPair).collect();
    for pair in pairs.chunks(2) {
        let ok: Vec<_> = pair.iter().filter(|(_, a)| a.is_ok()).collect();
        assert_eq!(ok.len(), 1, "{pair:?}");
        for (id, answer) in pair {
            match answer {
                Ok(outcome) => check_appended(&pool, *id, outcome).await,
                Err(error) => {
                    assert!(
                        matches!(error, CommandError::IdempotencyKeyUsed),
                        "{error:?}"
                    );
                    assert_eq!(last_position(&pool, *id).await, None, "{id}");
                }
            }
        }
    }
    // A request sent twice is appended once and answered twice alike.
    let retried: Vec<_> = by_kind(Kind::Retried).collect();
    for pair in retried.chunks(2) {
        let (first, second) = (pair[0].1.as_ref().unwrap(), pair[1].1.as_ref().unwrap());
        assert_eq!(first.position, second.position, "{pair:?}");
        assert_eq!(first.version, second.version, "{pair:?}");
        assert_eq!(
            u8::from(first.appended) + u8::from(second.appended),
            1,
            "{pair:?}"
        );
        assert_eq!(last_position(&pool, pair[0].0).await, Some(first.position));
    }

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1 + 10 + 4 + 4, "one event per appended booking");
    let streams: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT aggregate_id FROM events ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    for id in streams {
        let breaks = verify_stream(&pool, "Booking", &id).await.unwrap();
        assert!(breaks.is_empty(), "{id}: {breaks:?}");
    }
}

async fn check_appended(pool: &PgPool, id: Uuid, outcome: &CommandOutcome) {
    assert!(outcome.appended, "{id}: {outcome:?}");
    assert_eq!(outcome.version, 1, "{id}");
    assert_eq!(
        last_position(pool, id).await,
        Some(outcome.position),
        "{id}: the answered position is where the event is"
    );
}

/// One row of `chronicle_append_batch`'s answer.
type BatchRow = (
    i32,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn event_metadata(key: Option<(&str, &str)>) -> serde_json::Value {
    match key {
        Some((key, hash)) => json!({
            "actor": "alice", "request_id": Uuid::new_v4().to_string(),
            "idempotency_key": key, "request_hash": hash,
        }),
        None => json!({ "actor": "alice", "request_id": Uuid::new_v4().to_string() }),
    }
}

#[tokio::test]
async fn a_member_the_database_refuses_is_rolled_back_alone() {
    let db = TestDb::create().await;
    let pool = db.pool(2).await;
    let deposit = json!({ "FundsDeposited": { "amount": 5, "currency": "EUR" } });
    // Members: 1 appends two events; 2 leaves a gap; 3 repeats member 1's first
    // sequence; 4 reuses member 1's key for another request; 5 appends after them all,
    // with its stream's first snapshot.
    let members = [
        ("s1", vec![1i64, 2], Some(("k", "h"))),
        ("s2", vec![2], None),
        ("s1", vec![1], None),
        ("s4", vec![1], Some(("k", "other"))),
        ("s5", vec![1], None),
    ];
    let mut member_type = Vec::new();
    let mut member_id = Vec::new();
    let mut member_of = Vec::new();
    let mut sequence = Vec::new();
    let mut metadata = Vec::new();
    for (m, (id, sequences, key)) in members.iter().enumerate() {
        member_type.push("Account");
        member_id.push(*id);
        for s in sequences {
            member_of.push(m as i32 + 1);
            sequence.push(*s);
            metadata.push(event_metadata(*key));
        }
    }
    let n = member_of.len();
    let snapshot_mode = ["none", "none", "none", "none", "first"];
    let rows: Vec<BatchRow> = sqlx::query_as(
        "SELECT member, sequence, global_position, error_state, error_constraint \
           FROM chronicle_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                                       $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)",
    )
    .bind(&member_type)
    .bind(&member_id)
    .bind(snapshot_mode)
    .bind([0i64, 0, 0, 0, 1])
    .bind([0i64, 0, 0, 0, 1])
    .bind([None, None, None, None, Some(json!({ "balance": 5 }))])
    .bind(&member_of)
    .bind(&sequence)
    .bind(vec!["FundsDeposited"; n])
    .bind(vec!["1"; n])
    .bind(vec![deposit.clone(); n])
    .bind(&metadata)
    // No data keys held or made for these events: every member's ranges are empty.
    .bind([1i32; 5])
    .bind([0i32; 5])
    .bind(Vec::<String>::new())
    .bind(Vec::<i32>::new())
    .bind([1i32; 5])
    .bind([0i32; 5])
    .bind(Vec::<String>::new())
    .bind(Vec::<i32>::new())
    .bind(Vec::<String>::new())
    .bind(Vec::<Vec<u8>>::new())
    .fetch_all(&pool)
    .await
    .unwrap();

    let ok: Vec<(i32, i64)> = rows
        .iter()
        .filter(|r| r.3.is_none())
        .map(|r| (r.0, r.1.unwrap()))
        .collect();
    assert_eq!(ok, vec![(1, 1), (1, 2), (5, 1)], "{rows:?}");
    let refused: Vec<(i32, &str)> = rows
        .iter()
        .filter_map(|r| r.3.as_deref().map(|state| (r.0, state)))
        .collect();
    assert_eq!(
        refused,
        vec![(2, "CH002"), (3, "23505"), (4, "CH001")],
        "{rows:?}"
    );

    let stored: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_id, sequence, global_position FROM events ORDER BY global_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let answered: Vec<(String, i64, i64)> = rows
        .iter()
        .filter(|r| r.3.is_none())
        .map(|r| {
            let id = if r.0 == 1 { "s1" } else { "s5" };
            (id.to_owned(), r.1.unwrap(), r.2.unwrap())
        })
        .collect();
    assert_eq!(stored, answered, "what was answered is what is stored");
    let record: (String, String, i64) = sqlx::query_as(
        "SELECT request_hash, aggregate_id, last_sequence FROM idempotency_keys \
          WHERE actor = 'alice' AND idempotency_key = 'k'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(record, ("h".to_owned(), "s1".to_owned(), 2));
    let snapshots: Vec<(String, i64)> =
        sqlx::query_as("SELECT aggregate_id, last_sequence FROM snapshots")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(snapshots, vec![("s5".to_owned(), 1)]);
    for id in ["s1", "s2", "s4", "s5"] {
        let breaks = verify_stream(&pool, "Account", id).await.unwrap();
        assert!(breaks.is_empty(), "{id}: {breaks:?}");
    }
}

/// The seal guard inside a group (ADR 0035): each member holds the keys it sealed under
/// without making them and stores the keys it made; a member whose held key was erased
/// (or never made) is refused alone with CH003, and the others commit.
#[tokio::test]
async fn each_member_holds_its_own_keys_and_an_erased_one_refuses_it_alone() {
    let db = TestDb::create().await;
    let pool = db.pool(2).await;
    sqlx::query(
        "INSERT INTO subject_keys (subject_id, key_version, master_key_id, wrapped, erased_at) \
         VALUES ('live', 1, 'k1', '\\x01', NULL), ('gone', 1, NULL, NULL, now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let deposit = json!({ "FundsDeposited": { "amount": 5, "currency": "EUR" } });
    // Members: 1 holds the live key; 2 the erased one; 3 makes a new key; 4 holds a key
    // nobody made; 5 holds the live key and makes another subject's key.
    let held = [
        vec![("live", 1)],
        vec![("gone", 1)],
        vec![],
        vec![("nobody", 1)],
        vec![("live", 1)],
    ];
    let made = [vec![], vec![], vec!["new3"], vec![], vec!["new5"]];
    let (mut held_from, mut held_upto, mut held_subject, mut held_version) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut key_from, mut key_upto, mut key_subject) = (Vec::new(), Vec::new(), Vec::new());
    for (keys, new) in held.iter().zip(&made) {
        held_from.push(held_subject.len() as i32 + 1);
        for (subject, version) in keys {
            held_subject.push(*subject);
            held_version.push(*version);
        }
        held_upto.push(held_subject.len() as i32);
        key_from.push(key_subject.len() as i32 + 1);
        key_subject.extend(new.iter().copied());
        key_upto.push(key_subject.len() as i32);
    }
    let n = key_subject.len();
    let rows: Vec<BatchRow> = sqlx::query_as(
        "SELECT member, sequence, global_position, error_state, error_constraint \
           FROM chronicle_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                                       $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)",
    )
    .bind(["Account"; 5])
    .bind(["a1", "a2", "a3", "a4", "a5"])
    .bind(["none"; 5])
    .bind([0i64; 5])
    .bind([0i64; 5])
    .bind([None::<serde_json::Value>, None, None, None, None])
    .bind([1i32, 2, 3, 4, 5])
    .bind([1i64; 5])
    .bind(["FundsDeposited"; 5])
    .bind(["1"; 5])
    .bind(vec![deposit; 5])
    .bind(vec![event_metadata(None); 5])
    .bind(&held_from)
    .bind(&held_upto)
    .bind(&held_subject)
    .bind(&held_version)
    .bind(&key_from)
    .bind(&key_upto)
    .bind(&key_subject)
    .bind(vec![1i32; n])
    .bind(vec!["k1"; n])
    .bind(vec![vec![2u8]; n])
    .fetch_all(&pool)
    .await
    .unwrap();
    let answers: Vec<(i32, Option<&str>)> = rows.iter().map(|r| (r.0, r.3.as_deref())).collect();
    assert_eq!(
        answers,
        [
            (1, None),
            (2, Some("CH003")),
            (3, None),
            (4, Some("CH003")),
            (5, None)
        ],
        "{rows:?}"
    );
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT aggregate_id FROM events ORDER BY global_position")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored, ["a1", "a3", "a5"]);
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT subject_id FROM subject_keys ORDER BY subject_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(keys, ["gone", "live", "new3", "new5"]);
}
