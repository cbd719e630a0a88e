//! Crypto-shredding end to end (issue 16, ADR 0035), on the real database and broker:
//! a guest's personal data is ciphertext everywhere it is stored or sent, readable
//! where it is meant to be, and after erasure nowhere, while the audit trail verifies,
//! the read models equal a replay, and the money and seats are untouched.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

mod common;

use chronicle_domain::Role;
use chronicle_tests::{AppOptions, TestApp, eventually, spawn_app_with};
use common::{replay, replay_with, text};
use reqwest::StatusCode;
use serde_json::{Value, json};

const NAME: &str = "Ingrid Vasquez-Larsen";
const EMAIL: &str = "ingrid.vl@example.org";
const NOTES: &str = "needs a quiet room near the lift";
/// What must never be found in plain text once sealed.
const SECRETS: [&str; 4] = ["Vasquez", "Ingrid", "ingrid.vl@example.org", "quiet room"];

fn assert_no_secrets(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} holds {secret:?} in plain text"
        );
    }
}

/// Runs `replay` and expects success.
async fn replay_ok(url: &str, args: &[&str]) -> String {
    let output = replay(url, args).await;
    assert!(output.status.success(), "{args:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The bookings search for `q` finds, by id.
async fn found(app: &TestApp, token: &str, q: &str) -> Vec<String> {
    let reply = app
        .get_query("/v1/search/bookings", token, &[("q", q.to_owned())])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["booking_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn confirmed(app: &TestApp, token: &str, id: &str) -> Value {
    eventually("the booking confirmed", || async {
        let reply = app.get(&format!("/v1/bookings/{id}"), token).await;
        if reply.status == StatusCode::OK && reply.body["status"] == "confirmed" {
            Ok(reply.body)
        } else {
            Err(format!("{reply:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_guest_is_gone_from_every_view_while_the_trail_verifies() {
    let app = spawn_app_with(AppOptions::with_process_manager()).await;
    let url = app.db.url();
    let alice = app.client_token("alice");
    let dpo = app.token("dpo", &[Role::Privacy]);
    let auditor = app.token("audit", &[Role::Auditor]);
    let account = app.open_account(&alice, "EUR", 0).await;
    app.deposit(&alice, account, 20_000).await;
    let mut body = TestApp::booking_body(account, "spa", &["1", "2"], 4, 0);
    body["guest"] = json!({ "name": NAME, "email": EMAIL });
    body["notes"] = json!(NOTES);
    let booked = app.post("/v1/bookings", Some(&alice), &[], &body).await;
    assert_eq!(booked.status, StatusCode::CREATED, "{booked:?}");
    let id = booked.id("booking_id").to_string();
    // Another guest's booking, which the erasure must leave alone.
    let other = TestApp::booking_body(account, "spa", &["3"], 4, 0);
    let other = app.post("/v1/bookings", Some(&alice), &[], &other).await;
    assert_eq!(other.status, StatusCode::CREATED, "{other:?}");
    let other_id = other.id("booking_id").to_string();

    let before = confirmed(&app, &alice, &id).await;
    confirmed(&app, &alice, &other_id).await;
    assert_eq!(before["guest"]["name"], NAME);
    assert_eq!(before["notes"], NOTES);
    app.wait_until_projected().await;
    let balance = app
        .get(&format!("/v1/accounts/{account}"), &alice)
        .await
        .body["balance"]
        .clone();

    // Stored and sent as ciphertext: a dump of the whole database, every topic.
    let dump = tokio::process::Command::new("pg_dump")
        .arg(&url)
        .output()
        .await
        .unwrap();
    assert!(dump.status.success(), "pg_dump: {}", text(&dump));
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(dump.contains(&id), "the dump holds the booking");
    assert!(
        dump.contains("[sealed]"),
        "the read table keeps the guest sealed"
    );
    assert_no_secrets("pg_dump", &dump);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let python = std::env::var("CHRONICLE_TEST_PYTHON")
        .expect("CHRONICLE_TEST_PYTHON is not set: run the suite with scripts/test.sh");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/topic_text.py");
    let topics = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&app.settings.kafka.brokers)
        .arg(app.settings.kafka.topics().join(","))
        .arg(events.to_string())
        .output()
        .await
        .unwrap();
    assert!(topics.status.success(), "kafka-python: {}", text(&topics));
    let topics = String::from_utf8_lossy(&topics.stdout).into_owned();
    assert!(
        topics.contains("\"personal\""),
        "the topics carry the sealed fields"
    );
    assert_no_secrets("the topics", &topics);
    let exported = replay_ok(&url, &["export"]).await;
    assert_no_secrets("an export", &exported);

    // Readable where meant: search by name, access for the privacy officer.
    eventually("search finding the guest by name", || async {
        let hits = found(&app, &alice, "Vasquez").await;
        if hits == [id.clone()] {
            Ok(())
        } else {
            Err(format!("{hits:?}"))
        }
    })
    .await;
    let index = chronicle_projections::search::SearchIndex::open(&app.settings.search_dir).unwrap();
    for word in ["Vasquez", "ingrid.vl", "quiet"] {
        assert!(index.stored_postings(word).unwrap() > 0, "{word} indexed");
    }
    let access = app
        .get_query(
            "/v1/subjects/personal-data",
            &dpo,
            &[("email", " Ingrid.VL@example.org".to_owned())],
        )
        .await;
    assert_eq!(access.status, StatusCode::OK, "{access:?}");
    assert_eq!(access.body["status"], "held");
    let holding = &access.body["holdings"][0];
    assert_eq!(holding["aggregate_id"], id.as_str());
    assert_eq!(holding["event_type"], "BookingRequested");
    assert_eq!(holding["data"]["guest"]["name"], NAME);
    assert_eq!(holding["data"]["notes"], NOTES);

    // Who may erase, and whom.
    let refused = app
        .post(
            "/v1/subjects/erasure",
            Some(&alice),
            &[],
            &json!({ "email": EMAIL }),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let unknown = app
        .post(
            "/v1/subjects/erasure",
            Some(&dpo),
            &[],
            &json!({ "email": "nobody@example.org" }),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{unknown:?}");

    let erased = app
        .post(
            "/v1/subjects/erasure",
            Some(&dpo),
            &[],
            &json!({ "email": EMAIL }),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{erased:?}");
    assert_eq!(erased.body["read_models"], "erased", "{erased:?}");
    assert_eq!(
        erased.body["streams"],
        json!([{ "aggregate_type": "Booking", "aggregate_id": id }])
    );
    let again = app
        .post(
            "/v1/subjects/erasure",
            Some(&dpo),
            &[],
            &json!({ "email": EMAIL.to_uppercase() }),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    for field in ["erased_at", "position", "subject_id", "key_versions"] {
        assert_eq!(again.body[field], erased.body[field], "{field}");
    }

    // The read model: fields erased, money and seats as they were.
    let after = app.get(&format!("/v1/bookings/{id}"), &alice).await.body;
    assert_eq!(
        after["guest"],
        json!({ "name": null, "email": null, "erased": true }),
        "as API.md has erased fields"
    );
    assert_eq!(after["notes"], Value::Null);
    for field in ["status", "seats", "price", "version", "resource_id"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    let untouched = app
        .get(&format!("/v1/bookings/{other_id}"), &alice)
        .await
        .body;
    assert_eq!(untouched["guest"]["name"], "Zoë Adams");
    assert_eq!(
        app.get(&format!("/v1/accounts/{account}"), &alice)
            .await
            .body["balance"],
        balance
    );
    // Search no longer finds the guest by name, e-mail or notes; the other still is.
    eventually("search forgetting the guest", || async {
        let hits = [
            found(&app, &alice, "Vasquez").await,
            found(&app, &alice, "ingrid").await,
            found(&app, &alice, "quiet").await,
        ];
        if hits.iter().all(Vec::is_empty) {
            Ok(())
        } else {
            Err(format!("{hits:?}"))
        }
    })
    .await;
    assert_eq!(found(&app, &alice, "Adams").await, [other_id]);
    // Not even the deleted copies are left in the index's files: the erasure's commit
    // merged them away.
    eventually("the index's files forgetting the guest", || async {
        index.refresh().unwrap();
        let left: Vec<u64> = ["Vasquez", "Larsen", "ingrid.vl", "quiet"]
            .iter()
            .map(|w| index.stored_postings(w).unwrap())
            .collect();
        if left.iter().all(|n| *n == 0) {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    // Access says what was erased and when; the audit trail shows the fields erased.
    let access = app
        .get_query(
            "/v1/subjects/personal-data",
            &dpo,
            &[("email", EMAIL.to_owned())],
        )
        .await;
    assert_eq!(access.body["status"], "erased", "{access:?}");
    assert_eq!(access.body["holdings"][0]["data"], Value::Null);
    assert_eq!(
        access.body["holdings"][0]["erased_at"],
        erased.body["erased_at"]
    );
    let audit = app
        .get(&format!("/v1/audit/booking/{id}/events"), &auditor)
        .await;
    assert_eq!(audit.status, StatusCode::OK, "{audit:?}");
    assert_eq!(
        audit.body["items"][0]["payload"]["guest"],
        json!({ "name": null, "email": null, "erased": true })
    );
    assert_no_secrets("the audit endpoint", &audit.body.to_string());

    // The auditor's tool: the chain verifies, replays agree, nothing shows the guest.
    app.wait_until_projected().await;
    replay_ok(&url, &["verify"]).await;
    replay_ok(&url, &["diff", "read-models"]).await;
    let search_dir = app.settings.search_dir.to_string_lossy().into_owned();
    eventually("the search index agreeing with the store", || async {
        let diff = replay(&url, &["diff", "search", "--search-dir", &search_dir]).await;
        if diff.status.success() {
            Ok(())
        } else {
            Err(text(&diff))
        }
    })
    .await;
    let history = replay_ok(&url, &["history", "booking", &id, "--json"]).await;
    assert!(history.contains("[erased]"), "{history}");
    assert_no_secrets("history", &history);
    let state = replay_ok(&url, &["state", "booking", &id]).await;
    assert!(state.contains("[erased]"), "{state}");
    let opened = replay_ok(&url, &["export", "--open", "--type", "booking"]).await;
    assert!(
        opened.contains("[erased]") && opened.contains("Zoë Adams"),
        "{opened}"
    );
    assert_no_secrets("an opened export", &opened);

    // A rebuild of every read model from the store still shows them erased.
    replay_ok(&url, &["rebuild", "read-models"]).await;
    replay_ok(&url, &["diff", "read-models"]).await;
    let rebuilt = app.get(&format!("/v1/bookings/{id}"), &alice).await.body;
    assert_eq!(rebuilt["guest"]["erased"], true);
    assert_eq!(rebuilt["guest"]["name"], Value::Null);
    assert_eq!(rebuilt["status"], before["status"]);
    let events_after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        events_after,
        events + 1,
        "nothing removed; one erasure added"
    );

    // The guest books again: new data under a new key, readable until erased again.
    let mut again = TestApp::booking_body(account, "spa", &["4"], 5, 0);
    again["guest"] = json!({ "name": NAME, "email": EMAIL });
    let rebooked = app.post("/v1/bookings", Some(&alice), &[], &again).await;
    assert_eq!(rebooked.status, StatusCode::CREATED, "{rebooked:?}");
    let access = app
        .get_query(
            "/v1/subjects/personal-data",
            &dpo,
            &[("email", EMAIL.to_owned())],
        )
        .await;
    assert_eq!(access.body["status"], "held", "{access:?}");
    assert_eq!(access.body["holdings"][1]["data"]["guest"]["name"], NAME);

    // The search index rebuilt from the store (its projector stopped first, as the swap
    // requires): the erased booking erased, the new one findable. The process manager
    // confirms the new booking after its request is projected; stopping before that
    // event is stored would let it land between the rebuild and the diff.
    confirmed(&app, &alice, &rebooked.id("booking_id").to_string()).await;
    app.wait_until_projected().await;
    app.shutdown.cancel();
    drop(index);
    let rebuild = eventually("the search index rebuilt", || async {
        let output = replay(&url, &["rebuild", "search", "--search-dir", &search_dir]).await;
        if output.status.success() {
            Ok(())
        } else {
            Err(text(&output))
        }
    });
    rebuild.await;
    replay_ok(&url, &["diff", "search", "--search-dir", &search_dir]).await;
    let index = chronicle_projections::search::SearchIndex::open(&app.settings.search_dir).unwrap();
    let erased_doc = index.get(id.parse().unwrap()).unwrap().unwrap();
    assert_eq!(erased_doc.guest.name, "[erased]");
    assert_eq!(erased_doc.notes, None);
    assert_eq!(
        index.stored_postings("Vasquez").unwrap(),
        1,
        "the new booking only"
    );
    assert_eq!(index.stored_postings("quiet").unwrap(), 0);
}

/// Key material of master keys `ids` (each key's bytes follow from its id) and a pepper.
fn material(ids: &[&str]) -> String {
    use base64::Engine as _;
    let encode = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    let mut entries = vec![format!("pepper:{}", encode(0))];
    entries.extend(
        ids.iter()
            .map(|id| format!("{id}:{}", encode(id.as_bytes()[1]))),
    );
    entries.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_master_key_rewraps_every_key_and_the_old_master_key_can_go() {
    use chronicle_eventstore::personal::{KeyStore, MasterKeys};
    use std::sync::Arc;

    let db = chronicle_tests::TestDb::create().await;
    let pool = db.pool(4).await;
    let old = Arc::new(MasterKeys::parse(&material(&["k1"])).unwrap());
    let store = KeyStore::new(pool.clone(), old.clone());
    let mut subjects = Vec::new();
    for n in 0..12 {
        let subject = old.subject_id(&format!("guest{n}@example.org"));
        store.ensure(&subject).await.unwrap();
        subjects.push(subject);
    }
    let material_k2_k1 = material(&["k2", "k1"]);
    let rotated = replay_with(
        &db.url(),
        &["rotate-master-key", "--batch", "5"],
        &[("CHRONICLE_MASTER_KEY", &material_k2_k1)],
    )
    .await;
    assert!(rotated.status.success(), "{}", text(&rotated));
    assert!(
        text(&rotated).contains("re-wrapped 12 data keys under master key \"k2\""),
        "{}",
        text(&rotated)
    );
    assert!(
        !text(&rotated).contains(&material(&["k2"])[..20]),
        "no key material printed"
    );
    let k2_only = KeyStore::new(
        pool.clone(),
        Arc::new(MasterKeys::parse(&material(&["k2"])).unwrap()),
    );
    for subject in &subjects {
        assert!(k2_only.for_reading(subject, 1).await.unwrap().is_some());
    }
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM subject_keys WHERE master_key_id <> 'k2'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(left, 0);
}
