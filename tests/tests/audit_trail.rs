//! Walking the audit trail (issue 19's endpoints): an event by its id, the events it
//! caused, and one stream verified against its hash chain and the signed checkpoint.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::time::Duration;

use chronicle_domain::Role;
use chronicle_eventstore::envelope::event_id;
use chronicle_eventstore::notary::Notary;
use chronicle_tests::{AppOptions, TestApp, eventually, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

async fn confirmed_booking(app: &TestApp, token: &str) -> Uuid {
    let account = app.open_account(token, "EUR", 0).await;
    app.deposit(token, account, 10_000).await;
    let body = TestApp::booking_body(account, "hall", &["A1"], 10, 0);
    let booked = app.post("/v1/bookings", Some(token), &[], &body).await;
    assert_eq!(booked.status, StatusCode::CREATED, "{booked:?}");
    let booking = booked.id("booking_id");
    eventually("the booking is confirmed", || async {
        let read = app.get(&format!("/v1/bookings/{booking}"), token).await;
        match read.body["status"].as_str() {
            Some("confirmed") => Ok(()),
            _ => Err(format!("{read:?}")),
        }
    })
    .await;
    app.wait_until_projected().await;
    booking
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causation_id_leads_to_its_event_and_back() {
    let app = spawn_app_with(AppOptions::with_process_manager()).await;
    let alice = app.client_token("alice");
    let auditor = app.token("eve", &[Role::Auditor]);
    let booking = confirmed_booking(&app, &alice).await;

    let history = app
        .get(&format!("/v1/audit/booking/{booking}/events"), &auditor)
        .await;
    assert_eq!(history.status, StatusCode::OK, "{history:?}");
    let events = history.body["items"].as_array().unwrap();
    for event in events {
        assert_eq!(event["aggregate_type"], "Booking");
        assert_eq!(event["aggregate_id"], booking.to_string());
        let sequence = event["sequence"].as_i64().unwrap();
        assert_eq!(
            event["event_id"],
            event_id("Booking", &booking.to_string(), sequence).to_string(),
            "the id the relay publishes"
        );
    }
    let confirmed = events
        .iter()
        .find(|e| e["event_type"] == "BookingConfirmed")
        .expect("confirmed");

    // The process manager confirmed it in reaction to an event: the cause is found by id.
    let cause = confirmed["metadata"]["causation_id"].as_str().unwrap();
    let found = app
        .get(&format!("/v1/audit/events/{cause}"), &auditor)
        .await;
    assert_eq!(found.status, StatusCode::OK, "{found:?}");
    assert_eq!(found.body["event_id"], cause);
    assert!(found.body["payload"].is_object());

    // And back: what the cause caused includes the confirmation, in append order.
    let caused = app
        .get(&format!("/v1/audit/events?caused_by={cause}"), &auditor)
        .await;
    assert_eq!(caused.status, StatusCode::OK, "{caused:?}");
    let caused = caused.body["items"].as_array().unwrap();
    assert!(
        caused
            .iter()
            .any(|e| e["event_id"] == confirmed["event_id"])
    );
    assert!(
        caused
            .iter()
            .all(|e| e["metadata"]["causation_id"] == cause)
    );
    let positions: Vec<i64> = caused
        .iter()
        .map(|e| e["global_position"].as_i64().unwrap())
        .collect();
    assert!(positions.is_sorted(), "{positions:?}");

    // A request's id names no event; clients may not walk the trail.
    let request = app
        .get(&format!("/v1/audit/events/{}", Uuid::new_v4()), &auditor)
        .await;
    assert_eq!(request.status, StatusCode::NOT_FOUND, "{request:?}");
    assert_eq!(
        app.get("/v1/audit/events/not-an-id", &auditor).await.status,
        StatusCode::NOT_FOUND
    );
    for path in [
        format!("/v1/audit/events/{cause}"),
        format!("/v1/audit/events?caused_by={cause}"),
    ] {
        assert_eq!(
            app.get(&path, &alice).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }

    // Journaled before the id was a column, an event got the same id from the migration.
    let computed: Uuid = sqlx::query_scalar(
        "SELECT uuid_generate_v5('6368726f-6e69-636c-6576-656e74696473', 'Booking/' || $1 || '/1')",
    )
    .bind(booking.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(computed, event_id("Booking", &booking.to_string(), 1));
}

fn verification(reply: &chronicle_tests::Reply) -> &Value {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    &reply.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_verifies_against_its_chain_and_the_signed_checkpoint() {
    let app = spawn_app().await;
    let alice = app.client_token("alice");
    let auditor = app.token("eve", &[Role::Auditor]);
    let account = app.open_account(&alice, "EUR", 0).await;
    for amount in [100, 250] {
        app.deposit(&alice, account, amount).await;
    }
    let path = format!("/v1/audit/account/{account}/verification");

    // Nothing signed yet: the chain alone.
    let before = app.get(&path, &auditor).await;
    let before = verification(&before);
    assert_eq!(before["verified"], true, "{before}");
    assert_eq!(before["events"], 3);
    assert_eq!(before["last_sequence"], 3);
    assert!(before["checkpoint"].is_null(), "{before}");

    // The notary signs the log; one more event comes after the checkpoint.
    let notary = Notary::new(
        app.pool.clone(),
        None,
        app.settings.notary.clone(),
        app.settings.signing_key.clone(),
    );
    let mut active = notary
        .try_activate()
        .await
        .unwrap()
        .expect("the only notary");
    // Events are added to the tree once no open transaction can precede them (the horizon
    // is the whole server's: another test's transaction holds it back a while).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while active.tree_size() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the events never entered the tree"
        );
        active.build_available().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    active.checkpoint().await.unwrap().expect("a checkpoint");
    app.deposit(&alice, account, 400).await;
    let signed = app.get(&path, &auditor).await;
    let signed = verification(&signed);
    assert_eq!(signed["verified"], true, "{signed}");
    assert_eq!(signed["checkpoint"]["signature_valid"], true, "{signed}");
    assert_eq!(signed["checkpoint"]["covered"], 3, "{signed}");
    assert_eq!(signed["checkpoint"]["pending"], 1, "{signed}");

    // A second checkpoint covers it; the latest comes first when asked.
    while active.tree_size() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deposit never entered the tree"
        );
        active.build_available().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    active
        .checkpoint()
        .await
        .unwrap()
        .expect("a second checkpoint");
    let sizes = |reply: &chronicle_tests::Reply| -> Vec<i64> {
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["tree_size"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        sizes(&app.get("/v1/audit/checkpoints", &auditor).await),
        [3, 4]
    );
    let latest = app
        .get("/v1/audit/checkpoints?order=desc&limit=1", &auditor)
        .await;
    assert_eq!(sizes(&latest), [4]);
    let cursor = latest.body["next_cursor"].as_str().unwrap();
    let older = app
        .get(
            &format!("/v1/audit/checkpoints?order=desc&limit=1&cursor={cursor}"),
            &auditor,
        )
        .await;
    assert_eq!(sizes(&older), [3]);

    // An administrator of the database edits an event the checkpoint covers.
    app.as_superuser(
        "UPDATE events SET payload = jsonb_set(payload, '{amount}', '9999') \
          WHERE aggregate_id = $1 AND sequence = 2",
        &account.to_string(),
    )
    .await;
    let tampered = app.get(&path, &auditor).await;
    let tampered = verification(&tampered);
    assert_eq!(tampered["verified"], false, "{tampered}");
    let problems: Vec<&str> = tampered["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("event 2") && p.contains("signed tree")),
        "{problems:?}"
    );
    assert!(problems.len() >= 2, "the chain breaks too: {problems:?}");

    // Auditors and admins only; an unknown stream is not found.
    assert_eq!(app.get(&path, &alice).await.status, StatusCode::FORBIDDEN);
    let unknown = format!("/v1/audit/account/{}/verification", Uuid::new_v4());
    assert_eq!(
        app.get(&unknown, &auditor).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_appended_to_while_it_is_verified_is_not_called_broken() {
    let app = spawn_app().await;
    let alice = app.client_token("alice");
    let auditor = app.token("eve", &[Role::Auditor]);
    let account = app.open_account(&alice, "EUR", 0).await;
    let path = format!("/v1/audit/account/{account}/verification");
    let writer = {
        let (base, client, alice) = (app.base.clone(), app.client.clone(), alice.clone());
        tokio::spawn(async move {
            for _ in 0..150 {
                let deposited = client
                    .post(format!("{base}/v1/accounts/{account}/deposits"))
                    .bearer_auth(&alice)
                    .json(&serde_json::json!({"amount": 1}))
                    .send()
                    .await
                    .unwrap();
                assert!(deposited.status().is_success());
            }
        })
    };
    let mut checked = 0;
    while !writer.is_finished() {
        let reply = app.get(&path, &auditor).await;
        let found = verification(&reply);
        assert_eq!(found["verified"], true, "{found}");
        checked += 1;
    }
    writer.await.unwrap();
    assert!(
        checked > 5,
        "only {checked} verifications ran beside the writer"
    );
}
