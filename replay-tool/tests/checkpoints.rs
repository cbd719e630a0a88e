//! Signed checkpoints against a database administrator (issue 17, ADR 0036): an edit
//! with every chain and head recomputed passes plain `verify` and fails `verify
//! --checkpoints`, which names the first checkpoint that no longer matches and the
//! stream; a deletion and a reordering are caught the same way; an inclusion proof
//! checks with a third party's Python verifier and fails after the edit; a checkpoint
//! signed by another key is rejected.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chronicle_domain::Role;
use chronicle_eventstore::notary::checkpoint::{Checkpoint, CheckpointKey};
use chronicle_eventstore::notary::{Notary, NotarySettings};
use chronicle_tests::{TestApp, eventually, spawn_app, spawn_full_app};
use reqwest::StatusCode;
use sqlx::Connection;
use uuid::Uuid;

use common::{guards_off, replay, stdout, text};

fn key() -> Arc<CheckpointKey> {
    Arc::new(CheckpointKey::from_base64(&BASE64.encode([11u8; 32])).unwrap())
}

/// Extends the tree over every event stored and signs a checkpoint of it.
///
/// The notary only takes events no open transaction can precede (the relay's rule), and
/// the horizon is the whole server's: a transaction open in another database (a test
/// beside this one) holds it back for a moment. So it builds until the tree has every
/// event, as the role would on its next polls.
async fn notarise(app: &TestApp) -> u64 {
    let notary = Notary::new(app.pool.clone(), None, NotarySettings::default(), key());
    let mut active = notary
        .try_activate()
        .await
        .unwrap()
        .expect("no other notary");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while active.tree_size() < stored as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the notary took {} of {stored} events in 30 s",
            active.tree_size()
        );
        if active.build_available().await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let signed = active.checkpoint().await.unwrap().expect("the tree grew");
    active.stop().await;
    signed.checkpoint.tree_size
}

/// Runs `statement` as a superuser who switched the guards off, then recomputes the
/// chain and head of stream `id` as an administrator covering their tracks would.
async fn rewrite(app: &TestApp, statement: &str, id: Uuid) {
    let mut conn = guards_off(app).await;
    sqlx::query(statement)
        .bind(id.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    let recompute = format!(
        "DO $$
         DECLARE prev bytea := '\\x{zero}'::bytea; e events; last bigint := 0;
         BEGIN
           FOR e IN SELECT * FROM events WHERE aggregate_id = '{id}' ORDER BY sequence LOOP
             last := last + 1;
             UPDATE events SET sequence = last WHERE global_position = e.global_position;
             e.sequence := last;
             UPDATE events SET hash = chronicle_chain_hash(prev, e)
              WHERE global_position = e.global_position RETURNING hash INTO prev;
           END LOOP;
           UPDATE stream_heads SET last_sequence = last, last_hash = prev WHERE aggregate_id = '{id}';
         END $$",
        zero = "00".repeat(32)
    );
    sqlx::raw_sql(&recompute).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

fn public_key() -> String {
    key().public().to_base64()
}

async fn export(app: &TestApp, dir: &std::path::Path) -> std::path::PathBuf {
    let exported = replay(&app.db.url(), &["checkpoints", "export"]).await;
    assert!(exported.status.success(), "{}", text(&exported));
    let file = dir.join("kept.jsonl");
    std::fs::write(&file, &exported.stdout).unwrap();
    file
}

async fn verify_kept(app: &TestApp, file: &std::path::Path) -> std::process::Output {
    replay(
        &app.db.url(),
        &[
            "verify",
            "--checkpoints",
            file.to_str().unwrap(),
            "--public-key",
            &public_key(),
        ],
    )
    .await
}

/// `verify --checkpoints` must find the change: exit 1, naming the checkpoint of `first`
/// leaves as the first that no longer matches. Returns what it printed.
async fn caught(app: &TestApp, kept: &std::path::Path, first: u64) -> String {
    let caught = verify_kept(app, kept).await;
    assert_eq!(caught.status.code(), Some(1), "{}", text(&caught));
    let found = stdout(&caught);
    assert!(
        found.contains(&format!("MISMATCH checkpoint of {first} leaves")),
        "names the first checkpoint: {found}"
    );
    found
}

fn python_verifies(proof: &str) -> (bool, String) {
    let python = std::env::var("CHRONICLE_TEST_PYTHON")
        .expect("CHRONICLE_TEST_PYTHON is not set: run the suite with scripts/test.sh");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/verify_proof.py"
    );
    let dir = tempdir();
    let file = dir.join("proof.json");
    std::fs::write(&file, proof).unwrap();
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&file)
        .arg(public_key())
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chronicle-checkpoints-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Three accounts with a few deposits each; two checkpoints with more deposits between.
async fn history(app: &TestApp) -> (Vec<Uuid>, u64, u64) {
    let token = app.client_token("alice");
    let mut accounts = Vec::new();
    for _ in 0..3 {
        let account = app.open_account(&token, "EUR", 0).await;
        for amount in [100, 200] {
            app.deposit(&token, account, amount).await;
        }
        accounts.push(account);
    }
    let first = notarise(app).await;
    for account in &accounts {
        app.deposit(&token, *account, 300).await;
    }
    let second = notarise(app).await;
    (accounts, first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_with_chains_recomputed_is_caught_by_the_kept_checkpoints() {
    let app = spawn_app().await;
    let url = app.db.url();
    let (accounts, first, second) = history(&app).await;
    assert_eq!((first, second), (9, 12));
    let dir = tempdir();
    let kept = export(&app, &dir).await;
    assert_eq!(std::fs::read_to_string(&kept).unwrap().lines().count(), 2);

    let clean = verify_kept(&app, &kept).await;
    assert!(clean.status.success(), "{}", text(&clean));

    let target = accounts[1];
    let id = target.to_string();
    let proof = replay(&url, &["prove", "account", &id, "2"]).await;
    assert!(proof.status.success(), "{}", text(&proof));
    let (valid, said) = python_verifies(&stdout(&proof));
    assert!(valid, "{said}");

    rewrite(
        &app,
        "UPDATE events SET payload = jsonb_set(payload, '{amount}', '1000000') WHERE aggregate_id = $1 AND sequence = 2",
        target,
    )
    .await;
    let plain = replay(&url, &["verify"]).await;
    assert!(
        plain.status.success(),
        "the recomputed chains pass plain verify: {}",
        text(&plain)
    );
    let found = caught(&app, &kept, first).await;
    assert!(
        found.contains(&format!("Account {id} event 2")) && found.contains("edited"),
        "names the stream and event: {found}"
    );

    let after = replay(&url, &["prove", "account", &id, "2"]).await;
    assert!(after.status.success(), "{}", text(&after));
    let (valid, said) = python_verifies(&stdout(&after));
    assert!(!valid, "the edited event's proof must fail: {said}");
    assert!(said.contains("not in the tree"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_moved_event_and_a_forged_checkpoint_are_caught() {
    let app = spawn_app().await;
    let (accounts, first, _) = history(&app).await;
    let dir = tempdir();
    let kept = export(&app, &dir).await;

    // A checkpoint of the same tree signed by another key.
    let mut lines: Vec<String> = std::fs::read_to_string(&kept)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let genuine: chronicle_eventstore::notary::checkpoint::SignedCheckpoint =
        serde_json::from_str(&lines[0]).unwrap();
    let forged = CheckpointKey::development().sign(Checkpoint {
        signed_at: "2026-12-07T00:00:00.000000Z".into(),
        ..genuine.checkpoint.clone()
    });
    let mut relabelled = forged.clone();
    relabelled.key_id = genuine.key_id.clone();
    lines.push(serde_json::to_string(&relabelled).unwrap());
    let with_forgery = dir.join("with-forgery.jsonl");
    std::fs::write(&with_forgery, lines.join("\n")).unwrap();
    let rejected = verify_kept(&app, &with_forgery).await;
    assert_eq!(rejected.status.code(), Some(1), "{}", text(&rejected));
    assert!(
        stdout(&rejected).contains("FORGED checkpoint"),
        "{}",
        text(&rejected)
    );

    // A deleted event, its stream renumbered and rechained.
    let deleted = accounts[0];
    rewrite(
        &app,
        "DELETE FROM events WHERE aggregate_id = $1 AND sequence = 2",
        deleted,
    )
    .await;
    let found = caught(&app, &kept, first).await;
    assert!(found.contains(&format!("Account {deleted}")), "{found}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reordered_log_is_caught() {
    let app = spawn_app().await;
    let (accounts, first, _) = history(&app).await;
    let dir = tempdir();
    let kept = export(&app, &dir).await;
    // Move an account's opening into the last transaction, near the end of the log.
    let moved = accounts[2];
    rewrite(
        &app,
        "UPDATE events SET tx_id = (SELECT max(tx_id) FROM events) WHERE aggregate_id = $1 AND sequence = 1",
        moved,
    )
    .await;
    // The moved account's next event now stands where its opening was notarised.
    let found = caught(&app, &kept, first).await;
    assert!(
        found.contains(&format!("Account {moved} event 2")) && found.contains("was leaf"),
        "{found}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notary_role_signs_publishes_and_serves_checkpoints() {
    let app = spawn_app().await;
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    app.deposit(&token, account, 100).await;
    let settings = NotarySettings {
        poll_interval: Duration::from_millis(50),
        checkpoint_interval: Duration::from_millis(200),
        ..NotarySettings::default()
    };
    let notary = Notary::new(
        app.pool.clone(),
        Some(app.settings.kafka.clone()),
        settings,
        app.settings.signing_key.clone(),
    );
    let stop = app.shutdown.clone();
    tokio::spawn(async move { notary.run(stop).await });
    eventually(
        "a checkpoint of both events, acknowledged by the topic",
        || async {
            let published: Option<bool> =
                sqlx::query_scalar("SELECT published FROM merkle_checkpoints WHERE tree_size = 2")
                    .fetch_optional(&app.pool)
                    .await
                    .unwrap();
            match published {
                Some(true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    let auditor = app.token("audrey", &[Role::Auditor]);
    let page = app.get("/v1/audit/checkpoints", &auditor).await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    let items = page.body["items"].as_array().unwrap();
    assert_eq!(items[0]["tree_size"], 2);
    assert_eq!(items[0]["root_hash"].as_str().unwrap().len(), 64);
    assert!(items[0]["signature"].is_string() && items[0]["signed_at"].is_string());
    let client = app.get("/v1/audit/checkpoints", &token).await;
    assert_eq!(client.status, StatusCode::FORBIDDEN);
    let public = app.get("/v1/audit/public-key", &token).await;
    assert_eq!(public.status, StatusCode::OK);
    assert_eq!(
        public.body["public_key"].as_str(),
        Some(app.settings.signing_key.public().to_base64().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_leaves_every_checkpoint_and_proof_valid() {
    // An erasure answers once the read models forgot the guest: the read side runs.
    let app = spawn_full_app().await;
    let url = app.db.url();
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    let requested = app
        .post(
            "/v1/bookings",
            Some(&token),
            &[],
            &TestApp::booking_body(account, "room-7", &["A1"], 3, 0),
        )
        .await;
    assert!(requested.status.is_success(), "{requested:?}");
    let booking = requested.body["booking_id"].as_str().unwrap().to_owned();
    notarise(&app).await;
    let dir = tempdir();
    let kept = export(&app, &dir).await;
    let before = replay(&url, &["prove", "booking", &booking, "1"]).await;
    assert!(before.status.success(), "{}", text(&before));

    // The guest's key is destroyed; the ciphertext stays where it was.
    let dpo = app.token("dpo", &[Role::Privacy]);
    let erased = app
        .post(
            "/v1/subjects/erasure",
            Some(&dpo),
            &[],
            &serde_json::json!({ "email": "zoe@example.org" }),
        )
        .await;
    assert!(erased.status.is_success(), "{erased:?}");

    let still = verify_kept(&app, &kept).await;
    assert!(still.status.success(), "{}", text(&still));
    let after = replay(&url, &["prove", "booking", &booking, "1"]).await;
    assert!(after.status.success(), "{}", text(&after));
    assert_eq!(
        stdout(&after),
        stdout(&before),
        "the same proof after erasure"
    );
    let (valid, said) = python_verifies(&stdout(&after));
    assert!(valid, "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_tree_cannot_prove_the_kept_checkpoints_consistent() {
    let app = spawn_app().await;
    let (_, first, second) = history(&app).await;
    let dir = tempdir();
    let kept = export(&app, &dir).await;
    // The subtree of the first 8 leaves is part of the proof that 12 extends 9.
    sqlx::query("UPDATE merkle_nodes SET hash = sha256(hash) WHERE level = 3 AND node_index = 0")
        .execute(&app.pool)
        .await
        .unwrap();
    let found = verify_kept(&app, &kept).await;
    assert_eq!(found.status.code(), Some(1), "{}", text(&found));
    let found = stdout(&found);
    assert!(
        found.contains(&format!(
            "INCONSISTENT checkpoints of {first} and {second} leaves"
        )),
        "{found}"
    );
    assert!(
        !found.contains("MISMATCH"),
        "the events themselves are intact: {found}"
    );
}
