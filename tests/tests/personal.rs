//! Personal data sealed per subject (issue 16, ADR 0035): the key store on the real
//! database.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::sync::Arc;

use chronicle_eventstore::personal::seal::{self, place};
use chronicle_eventstore::personal::{DataKey, KeyStore, MasterKeys};
use chronicle_tests::TestDb;
use serde_json::json;

fn material(ids: &[&str]) -> Arc<MasterKeys> {
    use base64::Engine as _;
    let encode = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    let mut entries = vec![format!("pepper:{}", encode(0))];
    entries.extend(
        ids.iter()
            .map(|id| format!("{id}:{}", encode(id.as_bytes()[1]))),
    );
    Arc::new(MasterKeys::parse(&entries.join("\n")).unwrap())
}

/// Whether `a` opens what `b` sealed: the same key.
fn same(a: &DataKey, b: &DataKey) -> bool {
    let keys = MasterKeys::development();
    let here = place("Booking", "b", 1, "BookingRequested");
    let mut payload = json!({ "guest": { "name": "Ada", "email": "ada@example.org" } });
    seal::seal(
        &mut payload,
        &keys.subject_id("ada@example.org"),
        1,
        b,
        &here,
    );
    seal::open(&mut payload, Some(a), &here).is_ok()
}

#[tokio::test]
async fn a_subjects_key_is_made_once_read_back_by_another_process_and_gone_once_erased() {
    let db = TestDb::create().await;
    let pool = db.pool(4).await;
    let keys = material(&["k1"]);
    let ada = keys.subject_id("ada@example.org");
    let writer = KeyStore::new(pool.clone(), keys.clone());
    let (version, key) = writer.ensure(&ada).await.unwrap();
    assert_eq!(version, 1);
    let (again, cached) = writer.ensure(&ada).await.unwrap();
    assert_eq!(again, 1);
    assert!(same(&cached, &key));
    // Another process (no cache) unwraps the same key; the row holds it wrapped only.
    let reader = KeyStore::new(pool.clone(), keys.clone());
    assert!(same(
        &reader.for_reading(&ada, 1).await.unwrap().unwrap(),
        &key
    ));
    let (master, wrapped): (String, Vec<u8>) =
        sqlx::query_as("SELECT master_key_id, wrapped FROM subject_keys WHERE subject_id = $1")
            .bind(ada.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((master.as_str(), wrapped.len()), ("k1", 12 + 32 + 16));

    // Erased: nothing opens version 1 again; new data gets version 2.
    sqlx::query(
        "UPDATE subject_keys SET wrapped = NULL, master_key_id = NULL, erased_at = now() \
          WHERE subject_id = $1",
    )
    .bind(ada.as_str())
    .execute(&pool)
    .await
    .unwrap();
    let fresh = KeyStore::new(pool.clone(), keys.clone());
    assert!(fresh.for_reading(&ada, 1).await.unwrap().is_none());
    let (next, new_key) = fresh.ensure(&ada).await.unwrap();
    assert_eq!(next, 2);
    assert!(!same(&new_key, &key));
    // A row that cannot be half erased.
    let half = sqlx::query("UPDATE subject_keys SET wrapped = NULL WHERE key_version = 2")
        .execute(&pool)
        .await;
    assert!(half.is_err());
}

#[tokio::test]
async fn rotation_rewraps_every_key_under_the_new_master_key_and_the_old_one_can_go() {
    let db = TestDb::create().await;
    let pool = db.pool(4).await;
    let old = material(&["k1"]);
    let store = KeyStore::new(pool.clone(), old.clone());
    let mut made = Vec::new();
    for n in 0..25 {
        let subject = old.subject_id(&format!("guest{n}@example.org"));
        let (_, key) = store.ensure(&subject).await.unwrap();
        made.push((subject, key));
    }
    let rotated = KeyStore::new(pool.clone(), material(&["k2", "k1"]));
    let mut rewrapped = 0;
    loop {
        let done = rotated.rewrap(10).await.unwrap();
        if done == 0 {
            break;
        }
        rewrapped += done;
    }
    assert_eq!(rewrapped, 25);
    let k2_only = KeyStore::new(pool.clone(), material(&["k2"]));
    for (subject, key) in &made {
        let opened = k2_only.for_reading(subject, 1).await.unwrap().unwrap();
        assert!(same(&opened, key));
    }
}

/// A booking's stream appended through a repository that seals: what the database holds
/// has no personal field in plain text, a load sees the plain values, and once the key is
/// erased a load sees them erased, snapshot or not.
#[tokio::test]
async fn the_repository_seals_on_append_and_opens_on_load_until_the_key_is_erased() {
    use chronicle_domain::booking::{Booking, BookingEvent};
    use chronicle_domain::values::Guest;
    use chronicle_domain::{Amount, Currency, Money};
    use chronicle_eventstore::repository::EventRepository;
    use cqrs_es::EventEnvelope;

    let db = TestDb::create().await;
    let pool = db.pool(4).await;
    let keys = material(&["k1"]);
    // A snapshot after every event, so that loads start from a sealed snapshot.
    let repository = EventRepository::new(pool.clone(), 1, Vec::new())
        .with_sealing(KeyStore::new(pool.clone(), keys.clone()));
    let id = uuid::Uuid::new_v4();
    let at = chrono::Utc::now();
    let requested = BookingEvent::BookingRequested {
        booking_id: id,
        account_id: uuid::Uuid::new_v4(),
        owner: "alice".into(),
        resource_id: "room-1".into(),
        seats: vec!["A1".into()],
        starts_at: at,
        ends_at: at + chrono::Duration::hours(1),
        price: Money::new(
            Amount::new("price", 100).unwrap(),
            Currency::parse("EUR").unwrap(),
        ),
        guest: Guest::parse("Ada Lovelace", "Ada@Example.org").unwrap(),
        notes: Some("vegetarian".into()),
        requested_at: at,
    };
    let mut connection = pool.acquire().await.unwrap();
    let loaded = repository
        .load::<Booking>(&mut connection, &id.to_string(), None)
        .await
        .unwrap();
    let mut aggregate = Booking::default();
    cqrs_es::Aggregate::apply(&mut aggregate, requested.clone());
    let envelope = EventEnvelope {
        aggregate_id: id.to_string(),
        sequence: 1,
        payload: requested,
        metadata: Default::default(),
    };
    repository
        .append(
            Some(&mut connection),
            &loaded.stream,
            &[envelope],
            Some(&aggregate),
        )
        .await
        .unwrap();

    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT payload::text FROM events UNION ALL SELECT payload::text FROM snapshots",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 2);
    for text in &stored {
        for secret in ["Ada", "Lovelace", "example.org", "vegetarian"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("room-1"), "the rest is as it was: {text}");
    }

    let guest = |booking: &Booking| booking.state.as_ref().unwrap().guest.clone();
    let reload = |repository: EventRepository| {
        let pool = pool.clone();
        async move {
            let mut connection = pool.acquire().await.unwrap();
            repository
                .load::<Booking>(&mut connection, &id.to_string(), None)
                .await
                .unwrap()
                .stream
                .aggregate
        }
    };
    let fresh = || {
        EventRepository::new(pool.clone(), 1, Vec::new())
            .with_sealing(KeyStore::new(pool.clone(), keys.clone()))
    };
    let plain = reload(fresh()).await;
    assert_eq!(guest(&plain).name, "Ada Lovelace");
    assert_eq!(
        plain.state.as_ref().unwrap().notes.as_deref(),
        Some("vegetarian")
    );

    // A process whose pool has one connection, held by the load itself (as every
    // connection of the process manager's pool was in the soak): the key is read on
    // that connection, never waited for from the pool.
    let single = db.pool(1).await;
    let lone = EventRepository::new(single.clone(), 1, Vec::new())
        .with_sealing(KeyStore::new(single.clone(), keys.clone()));
    let mut only = single.acquire().await.unwrap();
    let loaded = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        lone.load::<Booking>(&mut only, &id.to_string(), None),
    )
    .await
    .expect("the load waited for a second connection of its pool")
    .unwrap();
    assert_eq!(guest(&loaded.stream.aggregate).name, "Ada Lovelace");
    drop(only);

    sqlx::query("UPDATE subject_keys SET wrapped = NULL, master_key_id = NULL, erased_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let erased = reload(fresh()).await;
    assert_eq!(guest(&erased).name, "[erased]");
    assert_eq!(guest(&erased).email, "[erased]");
    assert_eq!(erased.state.as_ref().unwrap().notes, None);
    assert_eq!(erased.state.as_ref().unwrap().resource_id, "room-1");
}

/// A writer whose cache still holds a key erased by another process: the append's
/// guard refuses data sealed under it, and the writer seals again under a new key. The
/// erased booking stays erased; the new one is readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_erased_by_another_process_is_never_sealed_under_again() {
    use chronicle_domain::Role;
    use chronicle_tests::{AppOptions, TestApp, spawn_with_settings, test_settings};
    use reqwest::StatusCode;

    let db = Arc::new(TestDb::create().await);
    let mut settings = test_settings(&AppOptions::default());
    settings.reads.min_position_timeout = std::time::Duration::from_millis(100);
    let writer = spawn_with_settings(db.clone(), settings.clone(), false).await;
    let eraser = spawn_with_settings(db, settings, false).await;
    let token = writer.client_token("alice");
    let account = writer.open_account(&token, "EUR", 0).await;
    writer.deposit(&token, account, 10_000).await;
    let book = |seat: &str| {
        let mut body = TestApp::booking_body(account, "loft", &[seat], 3, 0);
        body["guest"] = json!({ "name": "Ada Lovelace", "email": "ada@example.org" });
        body
    };
    let first = writer
        .post("/v1/bookings", Some(&token), &[], &book("1"))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");

    let privacy = eraser.token("dpo", &[Role::Privacy]);
    let erased = eraser
        .post(
            "/v1/subjects/erasure",
            Some(&privacy),
            &[],
            &json!({ "email": "ada@example.org" }),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{erased:?}");
    assert_eq!(erased.body["key_versions"], json!([1]));

    // The writer's cache still holds version 1.
    let second = writer
        .post("/v1/bookings", Some(&token), &[], &book("2"))
        .await;
    assert_eq!(second.status, StatusCode::CREATED, "{second:?}");
    let versions: Vec<(i32, bool)> = sqlx::query_as(
        "SELECT key_version, wrapped IS NOT NULL FROM subject_keys ORDER BY key_version",
    )
    .fetch_all(&writer.pool)
    .await
    .unwrap();
    assert_eq!(versions, [(1, false), (2, true)]);
    let sealed_under: Vec<i64> = sqlx::query_scalar(
        "SELECT (payload->'personal'->>'key_version')::bigint FROM events \
          WHERE event_type = 'BookingRequested' ORDER BY global_position",
    )
    .fetch_all(&writer.pool)
    .await
    .unwrap();
    assert_eq!(sealed_under, [1, 2]);

    let access = eraser
        .get_query(
            "/v1/subjects/personal-data",
            &privacy,
            &[("email", "ada@example.org".to_owned())],
        )
        .await;
    assert_eq!(access.status, StatusCode::OK, "{access:?}");
    assert_eq!(access.body["status"], "held");
    let holdings = access.body["holdings"].as_array().unwrap();
    assert_eq!(holdings.len(), 2);
    assert_eq!(holdings[0]["data"], serde_json::Value::Null);
    assert_eq!(holdings[0]["erased_at"], erased.body["erased_at"]);
    assert_eq!(holdings[1]["data"]["guest"]["name"], "Ada Lovelace");
}

/// Logs and traces never carry personal fields: everything Chronicle logs, at every
/// level, while a guest books, is read, searched, looked up and erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_at_every_level_never_carry_a_guests_fields() {
    use std::io::Write;
    use std::sync::Mutex;

    use chronicle_domain::Role;
    use chronicle_tests::{TestApp, eventually, spawn_full_app};
    use reqwest::StatusCode;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_writer(move || writer.clone())
        .try_init()
        .unwrap();

    let app = spawn_full_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    let mut body = TestApp::booking_body(account, "logs", &["1"], 3, 0);
    body["guest"] = json!({ "name": "Hedwig Quarrington", "email": "hedwig.q@example.org" });
    body["notes"] = json!("allergic to feathers");
    let booked = app.post("/v1/bookings", Some(&token), &[], &body).await;
    assert_eq!(booked.status, StatusCode::CREATED, "{booked:?}");
    let id = booked.id("booking_id");
    app.wait_until_projected().await;
    let read = app.get(&format!("/v1/bookings/{id}"), &token).await;
    assert_eq!(read.body["guest"]["name"], "Hedwig Quarrington");
    eventually("search finding the guest", || async {
        let hits = app
            .get_query(
                "/v1/search/bookings",
                &token,
                &[("q", "Quarrington".to_owned())],
            )
            .await;
        if hits.body["items"].as_array().is_some_and(|i| i.len() == 1) {
            Ok(())
        } else {
            Err(format!("{hits:?}"))
        }
    })
    .await;
    let privacy = app.token("dpo", &[Role::Privacy]);
    let query = [("email", "hedwig.q@example.org".to_owned())];
    let access = app
        .get_query("/v1/subjects/personal-data", &privacy, &query)
        .await;
    assert_eq!(access.status, StatusCode::OK, "{access:?}");
    let erased = app
        .post(
            "/v1/subjects/erasure",
            Some(&privacy),
            &[],
            &json!({ "email": "hedwig.q@example.org" }),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{erased:?}");
    app.wait_until_projected().await;

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("personal data erased"),
        "the logs were captured"
    );
    for secret in ["Hedwig", "Quarrington", "hedwig.q@example.org", "feathers"] {
        assert!(!logs.contains(secret), "the logs hold {secret:?}");
    }
}

/// A new guest's first bookings arriving together: one key is made and stored with the
/// first append; the others wait for it and seal under it. None fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_guests_bookings_arriving_together_share_one_new_key() {
    use chronicle_tests::{TestApp, spawn_app};
    use reqwest::StatusCode;

    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    let bodies: Vec<_> = (0..8)
        .map(|seat| {
            let mut body = TestApp::booking_body(account, "atrium", &[&seat.to_string()], 3, 0);
            body["guest"] = json!({ "name": "Grace Hopper", "email": "grace@example.org" });
            body
        })
        .collect();
    let replies = futures::future::join_all(
        bodies
            .iter()
            .map(|body| app.post("/v1/bookings", Some(&token), &[], body)),
    )
    .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    }
    let keys: Vec<i32> = sqlx::query_scalar("SELECT key_version FROM subject_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys, [1]);
    let sealed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE (payload->'personal'->>'key_version')::int = 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(sealed, 8);
}
