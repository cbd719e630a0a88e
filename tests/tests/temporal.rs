//! A property test of the temporal endpoints: random commands at random moments (and
//! bookings at random business times); then, for random instants T, every temporal
//! endpoint must answer what replaying the events recorded up to T gives.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chronicle_commands::CommandMetadata;
use chronicle_domain::account::Movement;
use chronicle_domain::booking::BookingRequest;
use chronicle_domain::payment::PaymentRequest;
use chronicle_domain::values::{Guest, Owner, Reference, ResourceId, Seats};
use chronicle_domain::{
    Account, AccountCommand, Actor, Amount, Booking, BookingCommand, BookingStatus, Currency,
    Issued, Money, Payment, PaymentCommand, PaymentEvent, PaymentKind, Role,
};
use chronicle_eventstore::personal::MasterKeys;
use chronicle_eventstore::personal::open::KeyRing;
use chronicle_eventstore::personal::seal::place;
use chronicle_tests::{TestApp, spawn_full_app};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use reqwest::StatusCode;
use uuid::Uuid;

/// A small deterministic generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn meta() -> CommandMetadata {
    CommandMetadata::for_request("alice", Uuid::new_v4(), None)
}

fn admin() -> Actor {
    Actor::new("root", [Role::Admin])
}

fn issued<C>(command: C) -> Issued<C> {
    Issued::new(admin(), Utc::now(), command)
}

fn eur(amount: i64) -> Money {
    Money::new(
        Amount::new("amount", amount).unwrap(),
        Currency::parse("EUR").unwrap(),
    )
}

/// Issues random commands straight to the command service; failures are part of the game.
async fn random_history(app: &TestApp, rng: &mut Rng) -> (Vec<Uuid>, Vec<Uuid>, Vec<Uuid>) {
    let (mut accounts, mut bookings, mut payments) = (Vec::new(), Vec::new(), Vec::new());
    let now = Utc::now();
    for step in 0..160 {
        let c = &app.commands;
        match (rng.below(8), accounts.len()) {
            (_, 0) | (0, _) => {
                let id = Uuid::new_v4();
                let open = AccountCommand::OpenAccount {
                    account_id: id,
                    owner: Owner::parse("alice").unwrap(),
                    currency: Currency::parse("EUR").unwrap(),
                    overdraft_limit: 0,
                };
                c.account(id, issued(open), &meta()).await.unwrap();
                accounts.push(id);
            }
            (1 | 2, n) => {
                let id = accounts[rng.below(n as u64) as usize];
                let amount = Amount::new("amount", 1 + rng.below(5_000) as i64).unwrap();
                let movement = Movement {
                    amount,
                    currency: None,
                    reference: Reference::parse(&format!("r{step}")).ok(),
                };
                let command = if rng.below(3) == 0 {
                    AccountCommand::WithdrawFunds(movement)
                } else {
                    AccountCommand::DepositFunds(movement)
                };
                let _ = c.account(id, issued(command), &meta()).await;
            }
            (3 | 4, n) => {
                let id = Uuid::new_v4();
                let starts = now + chrono::Duration::hours(1 + rng.below(72) as i64);
                let request = BookingRequest {
                    booking_id: id,
                    account_id: accounts[rng.below(n as u64) as usize],
                    owner: "alice".into(),
                    resource_id: ResourceId::parse(&format!("room-{}", rng.below(3))).unwrap(),
                    seats: Seats::parse(&[format!("S{}", rng.below(6))]).unwrap(),
                    starts_at: starts,
                    ends_at: starts + chrono::Duration::hours(1 + rng.below(6) as i64),
                    price: eur(1_000),
                    guest: Guest::parse("Zoë", "zoe@example.org").unwrap(),
                    notes: None,
                };
                if c.booking(
                    id,
                    issued(BookingCommand::RequestBooking(Box::new(request))),
                    &meta(),
                )
                .await
                .is_ok()
                {
                    bookings.push(id);
                }
            }
            (5, _) if !bookings.is_empty() => {
                let id = bookings[rng.below(bookings.len() as u64) as usize];
                let command = match rng.below(3) {
                    0 => BookingCommand::CancelBooking { reason: None },
                    1 => BookingCommand::ConfirmBooking {
                        payment_id: Uuid::new_v4(),
                    },
                    _ => BookingCommand::ExpireBooking,
                };
                let _ = c.booking(id, issued(command), &meta()).await;
            }
            (6, n) => {
                let id = Uuid::new_v4();
                let request = PaymentRequest {
                    payment_id: id,
                    account_id: accounts[rng.below(n as u64) as usize],
                    owner: "alice".into(),
                    amount: eur(100 + rng.below(900) as i64),
                    kind: PaymentKind::OneTime,
                    schedule: None,
                    booking_id: None,
                };
                c.payment(
                    id,
                    issued(PaymentCommand::InitiatePayment(request)),
                    &meta(),
                )
                .await
                .unwrap();
                c.payment(
                    id,
                    issued(PaymentCommand::CapturePayment { charge: 1 }),
                    &meta(),
                )
                .await
                .unwrap();
                payments.push(id);
            }
            (_, _) if !payments.is_empty() => {
                let id = payments[rng.below(payments.len() as u64) as usize];
                let refund = PaymentCommand::RefundPayment {
                    refund_id: Uuid::new_v4(),
                    amount: Amount::new("amount", 1 + rng.below(400) as i64).unwrap(),
                };
                let _ = c.payment(id, issued(refund), &meta()).await;
            }
            _ => {}
        }
        // Random clocks: commands land at uneven moments.
        tokio::time::sleep(Duration::from_millis(rng.below(8))).await;
    }
    (accounts, bookings, payments)
}

#[derive(sqlx::FromRow, Clone)]
struct Row {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    payload: serde_json::Value,
    recorded_at: DateTime<Utc>,
}

/// Replays the events recorded at or before `at` into aggregates, by stream.
fn replay<A: Aggregate>(events: &[Row], kind: &str, at: DateTime<Utc>) -> BTreeMap<String, A>
where
    A::Event: serde::de::DeserializeOwned,
{
    let mut out: BTreeMap<String, A> = BTreeMap::new();
    for row in events
        .iter()
        .filter(|r| r.aggregate_type == kind && r.recorded_at <= at)
    {
        let event: A::Event = serde_json::from_value(row.payload.clone()).unwrap();
        out.entry(row.aggregate_id.clone())
            .or_default()
            .apply(event);
    }
    out
}

fn instant(text: DateTime<Utc>) -> String {
    text.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn temporal_endpoints_equal_a_replay_of_what_was_recorded_up_to_any_instant() {
    let app = spawn_full_app().await;
    let mut rng = Rng(0x5eed_cafe);
    let (accounts, bookings, _) = random_history(&app, &mut rng).await;
    app.wait_until_projected().await;
    let mut events: Vec<Row> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, payload, recorded_at \
           FROM events ORDER BY global_position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // The guests' fields are sealed in the store (ADR 0035): open them as the read side
    // does, with the service's (development) keys.
    let mut connection = app.pool.acquire().await.unwrap();
    let ring = KeyRing::load(&mut connection, &MasterKeys::development())
        .await
        .unwrap();
    for row in &mut events {
        let here = place(
            &row.aggregate_type,
            &row.aggregate_id,
            row.sequence,
            &row.event_type,
        );
        ring.open(&mut row.payload, &here).unwrap();
    }
    let token = app.token("ann", &[Role::Analyst, Role::Admin]);
    let first = events.first().unwrap().recorded_at;
    let last = events.last().unwrap().recorded_at;
    let mut instants: Vec<DateTime<Utc>> = vec![
        first - chrono::Duration::milliseconds(1),
        last,
        last + chrono::Duration::seconds(1),
    ];
    for _ in 0..14 {
        let row = &events[rng.below(events.len() as u64) as usize];
        instants.push(row.recorded_at);
        instants.push(row.recorded_at - chrono::Duration::microseconds(1));
        let span = (last - first).num_microseconds().unwrap().max(1) as u64;
        instants.push(first + chrono::Duration::microseconds(rng.below(span) as i64));
    }

    for at in instants {
        let as_of = instant(at);
        let expected_accounts = replay::<Account>(&events, "Account", at);
        for id in &accounts {
            let reply = app
                .get_query(
                    &format!("/v1/accounts/{id}/balance"),
                    &token,
                    &[("as_of", as_of.clone())],
                )
                .await;
            match expected_accounts
                .get(&id.to_string())
                .and_then(|a| a.state().map(|s| (a.version, s.balance)))
            {
                None => assert_eq!(
                    reply.status,
                    StatusCode::NOT_FOUND,
                    "account {id} at {as_of}: {reply:?}"
                ),
                Some((version, balance)) => {
                    assert_eq!(
                        reply.body["balance"].as_i64(),
                        Some(balance),
                        "account {id} at {as_of}"
                    );
                    assert_eq!(
                        reply.body["version"].as_u64(),
                        Some(version),
                        "account {id} at {as_of}"
                    );
                }
            }
        }
        let expected_bookings = replay::<Booking>(&events, "Booking", at);
        for id in &bookings {
            let reply = app
                .get_query(
                    &format!("/v1/bookings/{id}"),
                    &token,
                    &[("as_of", as_of.clone())],
                )
                .await;
            match expected_bookings
                .get(&id.to_string())
                .and_then(|b| b.state().map(|s| (b.version, s.status)))
            {
                None => assert_eq!(
                    reply.status,
                    StatusCode::NOT_FOUND,
                    "booking {id} at {as_of}"
                ),
                Some((version, status)) => {
                    assert_eq!(
                        reply.body["status"].as_str(),
                        Some(status.as_str()),
                        "booking {id} at {as_of}"
                    );
                    assert_eq!(
                        reply.body["version"].as_u64(),
                        Some(version),
                        "booking {id} at {as_of}"
                    );
                }
            }
        }

        // Revenue recorded before T: captures minus refunds.
        let mut expected_revenue = 0;
        for row in events
            .iter()
            .filter(|r| r.aggregate_type == "Payment" && r.recorded_at < at)
        {
            match serde_json::from_value::<PaymentEvent>(row.payload.clone()).unwrap() {
                PaymentEvent::PaymentCaptured { amount, .. } => expected_revenue += amount,
                PaymentEvent::PaymentRefunded { amount, .. } => expected_revenue -= amount,
                _ => {}
            }
        }
        let from = instant(first - chrono::Duration::hours(2));
        let revenue = app
            .get_query(
                "/v1/analytics/revenue",
                &token,
                &[
                    ("from", from),
                    ("to", as_of.clone()),
                    ("bucket", "hour".into()),
                ],
            )
            .await;
        assert_eq!(revenue.status, StatusCode::OK, "{revenue:?}");
        let total: i64 = revenue.body["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["revenue"].as_i64().unwrap())
            .sum();
        assert_eq!(total, expected_revenue, "revenue before {as_of}");

        // Occupancy at a random business instant, as known at T.
        let business = Utc::now() + chrono::Duration::hours(1 + rng.below(80) as i64);
        for room in 0..3 {
            let resource = format!("room-{room}");
            let mut held: BTreeSet<(String, String)> = BTreeSet::new();
            for (id, booking) in &expected_bookings {
                if let Some(s) = booking.state()
                    && s.resource_id == resource
                    && s.starts_at <= business
                    && s.ends_at > business
                    && matches!(s.status, BookingStatus::Pending | BookingStatus::Confirmed)
                {
                    held.extend(s.seats.iter().map(|seat| (seat.clone(), id.clone())));
                }
            }
            let reply = app
                .get_query(
                    "/v1/analytics/occupancy",
                    &token,
                    &[
                        ("resource_id", resource.clone()),
                        ("as_of", instant(business)),
                        ("known_at", as_of.clone()),
                    ],
                )
                .await;
            let seats: BTreeSet<(String, String)> = reply.body["seats"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["seat"].as_str().unwrap().to_owned(),
                        s["booking_id"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            assert_eq!(
                seats, held,
                "occupancy of {resource} at {business} known at {as_of}"
            );
        }
    }
    // A payment with captures stays consistent with the aggregate now as well.
    let payments = replay::<Payment>(&events, "Payment", Utc::now());
    assert!(!payments.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyst_and_auditor_endpoints_need_their_roles() {
    let app = spawn_full_app().await;
    let alice = app.client_token("alice");
    let account = app.open_account(&alice, "EUR", 0).await;
    app.deposit(&alice, account, 10).await;
    app.wait_until_projected().await;
    let window = [
        ("from", "2020-01-01T00:00:00Z".to_owned()),
        ("to", "2100-01-01T00:00:00Z".to_owned()),
        ("bucket", "month".to_owned()),
    ];
    assert_eq!(
        app.get_query("/v1/analytics/revenue", &alice, &window)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let analyst = app.token("ann", &[Role::Analyst]);
    assert_eq!(
        app.get_query("/v1/analytics/revenue", &analyst, &window)
            .await
            .status,
        StatusCode::OK
    );
    let audit = format!("/v1/audit/account/{account}/events");
    assert_eq!(
        app.get(&audit, &analyst).await.status,
        StatusCode::FORBIDDEN
    );
    let auditor = app.token("aud", &[Role::Auditor]);
    let trail = app.get(&audit, &auditor).await;
    assert_eq!(trail.status, StatusCode::OK, "{trail:?}");
    let items = trail.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1]["payload"]["type"], "FundsDeposited");
    assert_eq!(items[1]["metadata"]["actor"], "alice");
    assert_eq!(
        app.get(
            &format!("/v1/audit/account/{}/events", Uuid::new_v4()),
            &auditor
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    // A client reads its own balance as of now; bob cannot.
    assert_eq!(
        app.get(&format!("/v1/accounts/{account}/balance"), &alice)
            .await
            .body["balance"],
        10
    );
    assert_eq!(
        app.get(
            &format!("/v1/accounts/{account}/balance"),
            &app.client_token("bob")
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}
