//! The live feed (issue 18) against the real PostgreSQL and the real broker: a client
//! sees its booking confirmed and nobody else's; a subscriber killed mid-stream resumes
//! with `Last-Event-ID`, on another instance too, and gets exactly what it missed while
//! writers commit out of position order and the projector restarts; a slow subscriber
//! is cut with its resume point; a ticket opens one stream.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chronicle_domain::Role;
use chronicle_eventstore::feed::FeedPosition;
use chronicle_projections::feed::applied_by_read_models;
use chronicle_tests::{
    AppOptions, TestApp, TestDb, spawn_app_with, spawn_with_settings, test_settings,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Postgres, Transaction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// One Server-Sent Event.
#[derive(Clone, Debug)]
struct Event {
    id: Option<String>,
    event: String,
    data: Value,
}

/// A feed stream read as a browser's `EventSource` would: events, and the last id seen
/// (from events and from id-only frames such as heartbeats).
struct Sse {
    response: reqwest::Response,
    buffer: String,
    last_id: Option<String>,
    ended: bool,
}

impl Sse {
    async fn open(
        app: &TestApp,
        token: &str,
        query: &[(&str, &str)],
        last_id: Option<&str>,
    ) -> Sse {
        let mut request = app
            .client
            .get(format!("{}/v1/feed", app.base))
            .query(query)
            .bearer_auth(token);
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{:?}",
            response.text().await
        );
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "the feed is an event stream"
        );
        Sse {
            response,
            buffer: String::new(),
            last_id: None,
            ended: false,
        }
    }

    /// The next event within `bound`; `None` when none came (or the stream ended).
    async fn next(&mut self, bound: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id: ") {
                        id = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("event: ") {
                        event = Some(value.to_owned());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(value).unwrap());
                    }
                }
                if id.is_some() {
                    self.last_id = id.clone();
                }
                if let (Some(event), Some(data)) = (event, data) {
                    return Some(Event { id, event, data });
                }
                continue;
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    /// The `id` of the opening block: the point this stream starts from.
    async fn opening_id(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                return self.buffer[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("id: "))
                    .expect("the opening block names its point")
                    .to_owned();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("the stream opens")
                .unwrap()
                .expect("the stream opens");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events until `count` came (panics after `bound` without them).
    async fn take(&mut self, count: usize, bound: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + bound;
        let mut events = Vec::new();
        while events.len() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(event) => events.push(event),
                None => panic!(
                    "only {} of {count} events came: {:?}",
                    events.len(),
                    events.iter().map(|e| &e.event).collect::<Vec<_>>()
                ),
            }
        }
        events
    }
}

fn event_id(event: &Event) -> String {
    event.data["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sees_its_booking_confirmed_and_nobody_else_does() {
    let app = spawn_app_with(AppOptions::with_process_manager()).await;
    let alice = app.client_token("alice");
    let bob = app.client_token("bob");
    let auditor = app.token("eve", &[Role::Auditor]);
    let account = app.open_account(&alice, "EUR", 0).await;
    app.deposit(&alice, account, 10_000).await;
    app.wait_until_projected().await;

    let mut mine = Sse::open(&app, &alice, &[], None).await;
    let mut theirs = Sse::open(&app, &bob, &[], None).await;
    let mut everything = Sse::open(&app, &auditor, &[], None).await;
    let body = TestApp::booking_body(account, "hall", &["A1"], 10, 0);
    let booked = app.post("/v1/bookings", Some(&alice), &[], &body).await;
    assert_eq!(booked.status, StatusCode::CREATED, "{booked:?}");
    let booking = booked.id("booking_id");

    // Alice's stream: the request, the debit, the confirmation, and the payment's events
    // (an aggregate's events in order; different aggregates' in no fixed order).
    let mut seen = Vec::new();
    let has = |seen: &[Event], what: &dyn Fn(&Event) -> bool| seen.iter().any(what);
    while !(has(&seen, &|e| e.event == "BookingConfirmed")
        && has(&seen, &|e| e.data["aggregate_type"] == "Payment"))
    {
        let event = mine
            .next(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("no confirmation and payment; saw {seen:?}"));
        seen.push(event);
    }
    let types: Vec<&str> = seen.iter().map(|e| e.event.as_str()).collect();
    let at = |name: &str| types.iter().position(|t| *t == name).unwrap();
    assert!(at("BookingRequested") < at("BookingConfirmed"), "{types:?}");
    let confirmed = &seen[at("BookingConfirmed")];
    assert_eq!(confirmed.data["aggregate_id"], booking.to_string());
    assert_eq!(confirmed.data["event_type"], "BookingConfirmed");
    assert!(confirmed.data["payload"].is_object(), "payload included");
    assert!(confirmed.id.as_deref().unwrap().starts_with("v1."));
    // Sent after the read models applied it: a query with its position answers at once.
    let position = confirmed.data["global_position"].as_i64().unwrap();
    let started = std::time::Instant::now();
    let read = app
        .get_query(
            &format!("/v1/bookings/{booking}"),
            &alice,
            &[("min_position", position.to_string())],
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    assert_eq!(read.body["status"], "confirmed");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The auditor saw the same events (and others'); Bob saw none.
    let mine: BTreeSet<String> = seen.iter().map(event_id).collect();
    let mut audited = BTreeSet::new();
    while !mine.is_subset(&audited) {
        let event = everything.next(Duration::from_secs(30)).await.unwrap();
        audited.insert(event_id(&event));
    }
    assert!(
        theirs.next(Duration::from_secs(1)).await.is_none(),
        "another client's stream stays quiet"
    );
}

/// Appends, in a transaction held open for `hold`, a new account of `owner` with
/// `deposits` deposits: held transactions make commits land out of position order.
async fn slow_writer(tx: &mut Transaction<'_, Postgres>, owner: &str, deposits: i64) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('Account', $1, 1, 'AccountOpened', '2', $2, '{\"actor\": \"writer\"}')",
    )
    .bind(id.to_string())
    .bind(json!({
        "type": "AccountOpened", "account_id": id, "owner": owner, "currency": "EUR",
        "overdraft_limit": 0, "opened_at": "2030-01-01T00:00:00Z"
    }))
    .execute(&mut **tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'Account', $1, n + 1, 'FundsDeposited', '1', \
                jsonb_build_object('type', 'FundsDeposited', 'amount', 1, 'reference', 'd' || n, \
                                   'balance_after', n, 'occurred_at', '2030-01-01T00:00:00Z'), \
                '{\"actor\": \"writer\"}' \
           FROM generate_series(1::bigint, $2::bigint) AS n",
    )
    .bind(id.to_string())
    .bind(deposits)
    .execute(&mut **tx)
    .await
    .unwrap();
    id
}

/// Another Chronicle serving the same database and topics (no read side of its own).
async fn another_instance(app: &TestApp) -> TestApp {
    let mut settings = app.settings.clone();
    settings.search_dir =
        std::env::temp_dir().join(format!("chronicle-test-search-{}", Uuid::new_v4().simple()));
    spawn_with_settings(app.db.clone(), settings, false).await
}

/// Waits until the feed of `app` released everything the read models applied: the
/// point a new stream starts from (the feed's head) is behind none of the read-model
/// projector's offsets.
async fn wait_until_released(app: &TestApp, token: &str) {
    let topics = app.settings.kafka.topics();
    let partitions = app.settings.kafka.partitions.max(1) as usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let applied = applied_by_read_models(&app.pool, &topics, partitions)
            .await
            .unwrap();
        let id = Sse::open(app, token, &[], None).await.opening_id().await;
        let head = FeedPosition::decode(&id, topics.len(), partitions).unwrap();
        if !head.is_behind(&applied) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed did not release what the read models applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event of `owner`'s accounts in the store.
async fn owned_events(app: &TestApp, owner: &str) -> BTreeSet<String> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT e.aggregate_id, e.sequence FROM events e \
           JOIN events o ON o.aggregate_type = 'Account' AND o.aggregate_id = e.aggregate_id \
                        AND o.sequence = 1 AND o.payload->>'owner' = $1 \
          WHERE e.aggregate_type = 'Account'",
    )
    .bind(owner)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, sequence)| {
            chronicle_eventstore::envelope::event_id("Account", &id, sequence).to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_subscriber_resumes_exactly_while_commits_land_out_of_order() {
    let app = Arc::new(spawn_app_with(AppOptions::default()).await);
    app.start_relay();
    let projector = app.start_projector();
    let alice = app.client_token("alice");
    let first = app.open_account(&alice, "EUR", 0).await;
    app.wait_until_projected().await;
    let earlier = owned_events(&app, "alice").await;
    let mut stream = Sse::open(&app, &alice, &[], None).await;

    // Writers: each holds a transaction open a while (positions taken early, committed
    // late) while others commit, and deposits go through the API meanwhile.
    let writers: Vec<_> = (0..6)
        .map(|round| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut held = Vec::new();
                for step in 0..4 {
                    let mut tx = app.pool.begin().await.unwrap();
                    slow_writer(&mut tx, if step % 2 == 0 { "alice" } else { "bob" }, 5).await;
                    held.push(tx);
                    tokio::time::sleep(Duration::from_millis(30 + 20 * round)).await;
                    if held.len() == 2 {
                        // The later transaction commits first.
                        held.pop().unwrap().commit().await.unwrap();
                        held.pop().unwrap().commit().await.unwrap();
                    }
                }
                for tx in held {
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    let depositing = {
        let (app, alice) = (app.clone(), alice.clone());
        tokio::spawn(async move {
            for _ in 0..20 {
                app.deposit(&alice, first, 5).await;
            }
        })
    };

    // Killed after a few events.
    let before = stream.take(15, Duration::from_secs(60)).await;
    let resume = before.last().unwrap().id.clone().unwrap();
    drop(stream);

    // The projector dies mid-work while the subscriber is away, and starts again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    projector.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.start_projector();
    for writer in writers {
        writer.await.unwrap();
    }
    depositing.await.unwrap();
    app.wait_until_projected().await;

    // Everything of alice's since the stream opened.
    let expected: BTreeSet<String> = owned_events(&app, "alice")
        .await
        .difference(&earlier)
        .cloned()
        .collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for event in &before {
        *seen.entry(event_id(event)).or_default() += 1;
    }
    // Resumed on another instance (its buffer starts after the point: read from Kafka).
    let other = another_instance(&app).await;
    let mut resumed = Sse::open(&other, &alice, &[], Some(&resume)).await;
    while seen.len() < expected.len() {
        let Some(event) = resumed.next(Duration::from_secs(30)).await else {
            break;
        };
        assert_eq!(event.data["aggregate_type"], "Account");
        *seen.entry(event_id(&event)).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "delivered twice: {doubled:?}");
    let got: BTreeSet<String> = seen.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    let foreign: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty(),
        "missed {} of {} events, e.g. {:?}",
        missing.len(),
        expected.len(),
        missing.iter().take(3).collect::<Vec<_>>()
    );
    assert!(foreign.is_empty(), "not alice's: {} events", foreign.len());
    assert!(
        resumed.next(Duration::from_millis(500)).await.is_none(),
        "nothing more"
    );
}

/// Reads a raw HTTP/1.0 response (the body runs to the connection's end) until it ends.
async fn read_to_end(connection: &mut tokio::net::TcpStream, bound: Duration) -> String {
    let mut bytes = Vec::new();
    tokio::time::timeout(bound, connection.read_to_end(&mut bytes))
        .await
        .expect("the stream ended")
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_cut_with_the_point_to_resume_from() {
    let mut settings = test_settings(&AppOptions::with_read_side());
    settings.feed.buffer_events = 200;
    let app = spawn_with_settings(Arc::new(TestDb::create().await), settings, true).await;
    let alice = app.client_token("alice");
    app.open_account(&alice, "EUR", 0).await;
    app.wait_until_projected().await;
    let earlier = owned_events(&app, "alice").await;

    // A subscriber that reads nothing, behind a small receive window.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = app.base.trim_start_matches("http://").parse().unwrap();
    let mut connection = socket.connect(address).await.unwrap();
    connection
        .write_all(
            format!("GET /v1/feed HTTP/1.0\r\nAuthorization: Bearer {alice}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut head = [0u8; 12];
    connection.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.0 200");

    // Far more than the buffer and the sockets hold.
    let mut tx = app.pool.begin().await.unwrap();
    for _ in 0..4 {
        slow_writer(&mut tx, "alice", 5_000).await;
    }
    tx.commit().await.unwrap();
    app.wait_until_projected().await;
    // Cut it is, once the ring moved past what the stalled stream could take while it
    // was not read: only then does it read again (earlier, a stream that had stalled
    // but was still within the ring would rightly read on).
    wait_until_released(&app, &alice).await;

    let text = read_to_end(&mut connection, Duration::from_secs(60)).await;
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let blocks: Vec<&str> = body.split("\n\n").filter(|b| !b.is_empty()).collect();
    let last = blocks.last().unwrap();
    assert!(
        last.starts_with("event: resume\n"),
        "ended with a resume event: {last}"
    );
    let resume = last
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .to_owned();
    let notice: Value =
        serde_json::from_str(last.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert_eq!(notice["reason"], "slow");
    assert_eq!(notice["after"], resume);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for block in &blocks[..blocks.len() - 1] {
        if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
            let data: Value = serde_json::from_str(data).unwrap();
            *seen
                .entry(data["event_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let expected: BTreeSet<String> = owned_events(&app, "alice")
        .await
        .difference(&earlier)
        .cloned()
        .collect();
    assert!(seen.len() < expected.len(), "it was cut before the end");

    // From the resume point (older than the buffer: read from Kafka) comes the rest.
    let mut resumed = Sse::open(&app, &alice, &[], Some(&resume)).await;
    while seen.len() < expected.len() {
        let Some(event) = resumed.next(Duration::from_secs(30)).await else {
            break;
        };
        *seen.entry(event_id(&event)).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "none twice");
    let got: BTreeSet<String> = seen.into_keys().collect();
    assert_eq!(
        (
            got.len(),
            got.difference(&expected).count(),
            expected.difference(&got).count()
        ),
        (expected.len(), 0, 0),
        "(seen, not alice's, missed)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_one_stream_and_positions_and_limits_are_checked() {
    let mut settings = test_settings(&AppOptions::with_read_side());
    settings.feed.per_principal = 2;
    let app = spawn_with_settings(Arc::new(TestDb::create().await), settings, true).await;
    let alice = app.client_token("alice");
    let account = app.open_account(&alice, "EUR", 0).await;
    app.wait_until_projected().await;

    let issued = app
        .post("/v1/feed/tickets", Some(&alice), &[], &json!({}))
        .await;
    assert_eq!(issued.status, StatusCode::CREATED, "{issued:?}");
    let ticket = issued.body["ticket"].as_str().unwrap().to_owned();
    assert!(issued.body["expires_at"].is_string());
    let url = format!("{}/v1/feed", app.base);
    let with_ticket = |ticket: &str| app.client.get(&url).query(&[("ticket", ticket)]).send();
    let mut response = with_ticket(&ticket).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.deposit(&alice, account, 7).await;
    let mut text = String::new();
    while !text.contains("event: FundsDeposited") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .expect("the deposit arrives")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.starts_with("retry: "), "{text}");
    // Used once.
    let again = with_ticket(&ticket).await.unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    let forged = with_ticket("nope").await.unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let anonymous = app.client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // A point that is not one answers 400; one of another layout 410.
    let bad = app
        .get_query("/v1/feed", &alice, &[("after", "v1.zz".into())])
        .await;
    assert_eq!(
        (bad.status, bad.code()),
        (StatusCode::BAD_REQUEST, "invalid_feed_position")
    );
    let other = chronicle_eventstore::feed::FeedPosition::start(2, 2).encode();
    let gone = app.get_query("/v1/feed", &alice, &[("after", other)]).await;
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::GONE, "feed_position_expired")
    );

    // Two streams per principal here (the ticket's is one of them).
    let _second = Sse::open(&app, &alice, &[], None).await;
    let as_alice = || app.client.get(&url).bearer_auth(&alice).send();
    let third = as_alice().await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key("retry-after"));
    drop(response);
    chronicle_tests::eventually("a closed stream frees its place", || async {
        let reply = as_alice().await.unwrap();
        match reply.status() {
            StatusCode::OK => Ok(()),
            status => Err(format!("{status}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_the_point_and_a_shutdown_ends_the_stream_with_it() {
    let mut settings = test_settings(&AppOptions::with_read_side());
    settings.feed.heartbeat = Duration::from_secs(1);
    let app = spawn_with_settings(Arc::new(TestDb::create().await), settings, true).await;
    let alice = app.client_token("alice");
    let mut stream = Sse::open(&app, &alice, &[], None).await;
    let opened = {
        assert!(stream.next(Duration::from_millis(1500)).await.is_none());
        stream
            .last_id
            .clone()
            .expect("the opening frame and heartbeats carry an id")
    };
    // Bob's account moves the feed on; alice's point follows at her next heartbeat.
    let bob = app.client_token("bob");
    app.open_account(&bob, "EUR", 0).await;
    app.wait_until_projected().await;
    assert!(stream.next(Duration::from_millis(2500)).await.is_none());
    let moved = stream.last_id.clone().unwrap();
    assert_ne!(
        moved, opened,
        "a quiet subscriber's point moves with the feed"
    );
    assert!(stream.buffer.is_empty() || !stream.buffer.contains("event:"));

    app.shutdown.cancel();
    let last = stream
        .next(Duration::from_secs(10))
        .await
        .expect("a last event at shutdown");
    assert_eq!(last.event, "resume");
    assert_eq!(last.data["reason"], "shutdown");
    assert_eq!(last.id.as_deref(), Some(moved.as_str()));
    assert!(stream.next(Duration::from_secs(5)).await.is_none());
    assert!(stream.ended, "the stream ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_older_than_the_retention_answers_410() {
    let mut settings = test_settings(&AppOptions::with_read_side());
    settings.feed.buffer_events = 5;
    settings.feed.retention = Duration::from_secs(2);
    let app = spawn_with_settings(Arc::new(TestDb::create().await), settings, true).await;
    let alice = app.client_token("alice");
    let mut stream = Sse::open(&app, &alice, &[], None).await;
    let account = app.open_account(&alice, "EUR", 0).await;
    let opened = stream.take(1, Duration::from_secs(30)).await;
    let old = opened[0].id.clone().unwrap();
    drop(stream);
    // Far more than the buffer holds since; the first of them then ages past the
    // retention: the point is read from Kafka, and is too old.
    for _ in 0..10 {
        app.deposit(&alice, account, 1).await;
    }
    app.wait_until_projected().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gone = tokio::time::timeout(
        Duration::from_secs(30),
        app.get_query("/v1/feed", &alice, &[("after", old.clone())]),
    )
    .await
    .expect("answered at once, not streamed");
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::GONE, "feed_position_expired"),
        "{gone:?}"
    );
    assert!(gone.body["detail"].as_str().unwrap().contains("retention"));
}
