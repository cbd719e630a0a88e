//! Search through HTTP against the real broker: partial, accent-folded and misspelled
//! words, filters, orders, cursors, snippets, visibility; and the index surviving a
//! projector killed mid-way and a deleted directory.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::collections::BTreeSet;
use std::time::Duration;

use chronicle_domain::Role;
use chronicle_projections::search::SearchIndex;
use chronicle_tests::{AppOptions, TestApp, spawn_app_with, spawn_full_app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

struct Guest {
    name: &'static str,
    email: &'static str,
    notes: &'static str,
    resource: &'static str,
    days: i64,
}

const GUESTS: [Guest; 5] = [
    Guest {
        name: "Zoë Adams",
        email: "zoe@example.org",
        notes: "window seat please",
        resource: "hall-a",
        days: 3,
    },
    Guest {
        name: "Zoey Adamson",
        email: "zadamson@example.com",
        notes: "",
        resource: "hall-b",
        days: 5,
    },
    Guest {
        name: "Björn Ångström",
        email: "bjorn@example.se",
        notes: "arrives late",
        resource: "hall-a",
        days: 4,
    },
    Guest {
        name: "Chloé Dubois",
        email: "chloe@example.fr",
        notes: "needs wheelchair access",
        resource: "hall-c",
        days: 6,
    },
    Guest {
        name: "Marcus Reed",
        email: "m.reed@example.com",
        notes: "vegetarian dinner",
        resource: "hall-b",
        days: 7,
    },
];

async fn book(
    app: &TestApp,
    token: &str,
    account: Uuid,
    guest: &Guest,
    seat: &str,
) -> chronicle_tests::Reply {
    let mut body = TestApp::booking_body(account, guest.resource, &[seat], guest.days, 0);
    body["guest"] = json!({ "name": guest.name, "email": guest.email });
    body["notes"] = json!(guest.notes);
    let reply = app.post("/v1/bookings", Some(token), &[], &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    reply
}

async fn search(app: &TestApp, token: &str, query: &str) -> Value {
    let reply = app
        .get(&format!("/v1/search/bookings?{query}"), token)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{query}: {reply:?}");
    reply.body
}

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["guest"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bookings_are_found_by_partial_folded_and_misspelled_words_and_filters() {
    let app = spawn_full_app().await;
    let alice = app.client_token("alice");
    let account = app.open_account(&alice, "EUR", 0).await;
    let mut ids = Vec::new();
    let mut positions = Vec::new();
    for (n, guest) in GUESTS.iter().enumerate() {
        let reply = book(&app, &alice, account, guest, &format!("S{n}")).await;
        ids.push(reply.id("booking_id"));
        positions.push(reply.body["position"].as_i64().unwrap());
    }
    // `min_position` promises that event, not every earlier one: the bookings sit in
    // different partitions, which the projector consumes independently.
    let mut everything = Value::Null;
    for position in positions {
        everything = search(&app, &alice, &format!("min_position={position}")).await;
    }
    assert_eq!(
        everything["items"].as_array().unwrap().len(),
        5,
        "{everything}"
    );

    // Type-ahead on names, accents folded both ways.
    assert_eq!(
        names(&search(&app, &alice, "q=zo").await),
        vec!["Zoë Adams", "Zoey Adamson"]
    );
    let zoe = search(&app, &alice, "q=ZOE").await;
    assert_eq!(
        names(&zoe)[0],
        "Zoë Adams",
        "the exact (folded) match ranks first: {zoe}"
    );
    assert!(
        zoe["items"][0]["score"].as_f64().unwrap() > zoe["items"][1]["score"].as_f64().unwrap()
    );
    assert_eq!(
        names(&search(&app, &alice, "q=angstrom").await),
        vec!["Björn Ångström"]
    );
    assert_eq!(
        names(&search(&app, &alice, "q=Bj%C3%B6rn").await),
        vec!["Björn Ångström"]
    );
    // One typo in a word of five letters or more.
    assert_eq!(
        names(&search(&app, &alice, "q=wheelchiar").await),
        vec!["Chloé Dubois"]
    );
    assert_eq!(
        names(&search(&app, &alice, "q=vegetarain%20dinner").await),
        vec!["Marcus Reed"]
    );
    assert!(names(&search(&app, &alice, "q=xylophone").await).is_empty());
    // Email and resource are searchable too; a snippet highlights the match.
    assert_eq!(
        names(&search(&app, &alice, "q=chloe%40example.fr").await),
        vec!["Chloé Dubois"]
    );
    let window = search(&app, &alice, "q=window").await;
    assert!(
        window["items"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("<b>window</b>"),
        "{window}"
    );

    // Filters and the starts_at order.
    assert_eq!(
        names(&search(&app, &alice, "q=adams&resource_id=hall-a").await),
        vec!["Zoë Adams"]
    );
    let by_start = search(&app, &alice, "resource_id=hall-a&sort=starts_at").await;
    assert_eq!(names(&by_start), vec!["Zoë Adams", "Björn Ångström"]);
    let from =
        (chrono::Utc::now() + chrono::Duration::days(5) - chrono::Duration::hours(1)).to_rfc3339();
    let upcoming = search(
        &app,
        &alice,
        &format!("sort=starts_at&from={}", urlencode(&from)),
    )
    .await;
    assert_eq!(
        names(&upcoming),
        vec!["Zoey Adamson", "Chloé Dubois", "Marcus Reed"]
    );
    assert_eq!(
        names(&search(&app, &alice, &format!("account_id={account}&q=reed")).await),
        vec!["Marcus Reed"]
    );

    // Keyset pages: every hit once, in order.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = search(&app, &alice, &format!("sort=starts_at&limit=2{cursor}")).await;
        seen.extend(names(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 5);

    // A cancellation shows in the index (read-your-writes through min_position).
    let cancel = app
        .post(
            &format!("/v1/bookings/{}/cancel", ids[3]),
            Some(&alice),
            &[],
            &json!({}),
        )
        .await;
    let position = cancel.body["position"].as_i64().unwrap();
    let chloe = search(&app, &alice, &format!("q=chloe&min_position={position}")).await;
    assert_eq!(chloe["items"][0]["status"], "cancelled", "{chloe}");
    assert_eq!(
        names(&search(&app, &alice, "status=cancelled").await),
        vec!["Chloé Dubois"]
    );
    assert_eq!(
        search(&app, &alice, "q=chloe").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "updated, not duplicated"
    );

    // Visibility: bob finds none of alice's bookings; an admin finds them all.
    let bob = app.client_token("bob");
    assert!(names(&search(&app, &bob, "q=zoe").await).is_empty());
    let admin = app.token("root", &[Role::Admin]);
    assert_eq!(names(&search(&app, &admin, "q=zoe").await).len(), 2);
    // Bad parameters.
    assert_eq!(
        app.get("/v1/search/bookings?sort=price", &alice)
            .await
            .code(),
        "validation_failed"
    );
    assert_eq!(
        app.get("/v1/search/bookings?cursor=bogus", &alice)
            .await
            .code(),
        "invalid_cursor"
    );
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

async fn bookings_table(app: &TestApp) -> Vec<(Uuid, String)> {
    sqlx::query_as("SELECT booking_id, status FROM bookings ORDER BY booking_id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn wait_until_indexed(index: &SearchIndex, expected: &[(Uuid, String)]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        index.refresh().unwrap();
        let agrees = expected.iter().all(|(id, status)| {
            index.copies(*id).unwrap() == 1
                && index.get(*id).unwrap().is_some_and(|b| &b.status == status)
        });
        if agrees && index.len() == expected.len() as u64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "index holds {} docs, expected {}",
            index.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes the index directory of a projector just aborted. Dropping tantivy's
/// `IndexWriter` stops its indexing threads but not a merge in progress
/// (`IndexWriter::drop` kills the segment updater without waiting for merging threads),
/// which may still write the merged segment's files while the directory is being
/// removed: the removal then fails with "directory not empty". (This test failed once
/// under the full suite's load, 6.1 s in, where the removal falls in a 7.5 s run; its
/// output was lost, so this is the likely cause, not a certain one.) The removal is
/// tried again until the merge has ended.
async fn remove_index(dir: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "cannot remove {}: {error}",
                dir.display()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_search_projector_resumes_with_each_booking_exactly_once() {
    let mut options = AppOptions::default();
    options.projector.batch_max = 4;
    let mut app = spawn_app_with(options).await;
    app.settings.search.commit_docs = 3;
    app.start_relay();
    app.start_projector_only_read_models();
    let token = app.client_token("alice");
    let account = app.open_account(&token, "EUR", 0).await;
    for n in 0..40 {
        let guest = &GUESTS[n % GUESTS.len()];
        let reply = book(&app, &token, account, guest, &format!("K{n}")).await;
        if n % 4 == 0 {
            let cancel = format!("/v1/bookings/{}/cancel", reply.id("booking_id"));
            assert_eq!(
                app.post(&cancel, Some(&token), &[], &json!({}))
                    .await
                    .status,
                StatusCode::OK
            );
        }
    }
    app.wait_until_projected().await;
    let expected = bookings_table(&app).await;
    assert_eq!(expected.len(), 40);

    let index = SearchIndex::open(&app.settings.search_dir).unwrap();
    let doomed = app.start_search_projector().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        index.refresh().unwrap();
        if index.len() >= 6 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the search projector made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    doomed.abort();
    let _ = doomed.await;
    index.refresh().unwrap();
    assert!(
        index.len() < 40,
        "killed before the end ({} indexed)",
        index.len()
    );

    let resumed = app.start_search_projector().await;
    wait_until_indexed(&index, &expected).await;

    // Deleting the index and restarting rebuilds it from the topics.
    resumed.abort();
    let _ = resumed.await;
    drop(index);
    remove_index(&app.settings.search_dir).await;
    let _rebuilt = app.start_search_projector().await;
    let index = SearchIndex::open(&app.settings.search_dir).unwrap();
    wait_until_indexed(&index, &expected).await;
}
