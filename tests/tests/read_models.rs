//! The read models are applied a batch at a time, folded in memory and written with one
//! statement per table. However the events are cut into batches, delivered twice or
//! delivered again newest first, the tables must come out the same, and right.

#![allow(clippy::unwrap_used)] // helpers of a test may unwrap like the test itself

use chronicle_eventstore::envelope::{Envelope, EnvelopeMetadata};
use chronicle_projections::read_models::apply_envelopes;
use chronicle_tests::TestDb;
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const DAY: i64 = 86_400;

/// (booking_id, status, status_reason, payment_id, seats)
type BookingRow = (Uuid, String, Option<String>, Option<Uuid>, Vec<String>);
/// (payment_id, next_charge, next_due_at, attempts, status, version)
type ScheduleRow = (Uuid, i32, Option<DateTime<Utc>>, i32, String, i64);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 3, 1, 9, 0, 0).unwrap()
}

/// One aggregate's events, in sequence order.
struct Stream {
    aggregate_type: &'static str,
    id: Uuid,
    events: Vec<Value>,
}

fn stream(aggregate_type: &'static str, n: u128, events: Vec<Value>) -> Stream {
    Stream {
        aggregate_type,
        id: Uuid::from_u128(n),
        events,
    }
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// Every event type, including recurring schedules that fail, retry, complete and get
/// suspended; a booking confirmed, one rejected, one cancelled, one expired.
fn streams() -> Vec<Stream> {
    let at = t0();
    let money = |amount: i64| json!({"amount": amount, "currency": "EUR"});
    let request = |booking: u128, seat: &str| {
        json!({"type": "BookingRequested", "booking_id": id(booking), "account_id": id(1),
               "owner": "alice", "resource_id": "room-1", "seats": [seat, format!("{seat}b")],
               "starts_at": at + Duration::days(10), "ends_at": at + Duration::days(11),
               "price": money(700), "guest": {"name": "Ann", "email": "ann@example.org"},
               "notes": if booking == 10 { json!("window seat") } else { Value::Null },
               "requested_at": at})
    };
    let initiated = |payment: u128, kind: &str, schedule: Value| {
        json!({"type": "PaymentInitiated", "payment_id": id(payment), "account_id": id(1),
               "owner": "alice", "amount": money(250), "kind": kind, "schedule": schedule,
               "booking_id": if payment == 20 { json!(id(10)) } else { Value::Null },
               "initiated_at": at})
    };
    let captured = |charge: u32| {
        json!({"type": "PaymentCaptured", "charge": charge, "amount": 250,
               "captured_at": at + Duration::days(i64::from(charge))})
    };
    let charge_failed = |charge: u32, attempt: u32, retry: Option<i64>| {
        json!({"type": "ChargeFailed", "charge": charge, "attempt": attempt, "reason": "declined",
               "retry_at": retry.map(|s| at + Duration::seconds(s)), "failed_at": at})
    };
    let every_day = |count: u32| json!({"interval_seconds": DAY, "count": count, "until": null});
    let movement = |kind: &str, amount: i64, after: i64| {
        json!({"type": kind, "amount": amount, "reference": format!("{kind}-{after}"),
               "balance_after": after, "occurred_at": at})
    };
    vec![
        stream(
            "Account",
            1,
            vec![
                json!({"type": "AccountOpened", "account_id": id(1), "owner": "alice", "currency": "EUR",
                   "overdraft_limit": 100, "opened_at": at}),
                movement("FundsDeposited", 1_000, 1_000),
                movement("FundsWithdrawn", 300, 700),
                movement("FundsDeposited", 50, 750),
            ],
        ),
        stream(
            "Account",
            2,
            vec![
                json!({"type": "AccountOpened", "account_id": id(2), "owner": "bob", "currency": "USD",
                   "overdraft_limit": 0, "opened_at": at}),
                movement("FundsDeposited", 10, 10),
                movement("FundsWithdrawn", 10, 0),
                json!({"type": "AccountClosed", "closed_at": at + Duration::days(2)}),
            ],
        ),
        stream(
            "Booking",
            10,
            vec![
                request(10, "1"),
                json!({"type": "BookingConfirmed", "payment_id": id(20), "confirmed_at": at}),
                json!({"type": "BookingCancelled", "reason": "plans changed", "cancelled_at": at}),
            ],
        ),
        stream(
            "Booking",
            11,
            vec![
                request(11, "2"),
                json!({"type": "BookingRejected", "reason": "insufficient funds", "rejected_at": at}),
            ],
        ),
        stream(
            "Booking",
            12,
            vec![
                request(12, "3"),
                json!({"type": "BookingExpired", "expired_at": at}),
            ],
        ),
        stream("Booking", 13, vec![request(13, "4")]),
        stream(
            "Payment",
            20,
            vec![
                initiated(20, "one_time", Value::Null),
                captured(1),
                json!({"type": "PaymentRefunded", "refund_id": id(90), "amount": 100, "refunded_at": at}),
                json!({"type": "PaymentRefunded", "refund_id": id(91), "amount": 150, "refunded_at": at}),
            ],
        ),
        stream(
            "Payment",
            21,
            vec![
                initiated(21, "one_time", Value::Null),
                json!({"type": "PaymentFailed", "reason": "card expired", "failed_at": at}),
            ],
        ),
        stream(
            "Payment",
            22,
            vec![
                initiated(22, "recurring", every_day(3)),
                captured(1),
                charge_failed(2, 1, Some(2 * DAY + 3_600)),
                captured(2),
                charge_failed(3, 1, Some(3 * DAY + 3_600)),
                json!({"type": "PaymentSuspended", "reason": "declined twice", "suspended_at": at}),
            ],
        ),
        stream(
            "Payment",
            23,
            vec![
                initiated(23, "recurring", every_day(3)),
                captured(1),
                captured(2),
                captured(3),
            ],
        ),
        stream(
            "Payment",
            24,
            vec![
                initiated(24, "recurring", every_day(5)),
                captured(1),
                charge_failed(2, 1, Some(2 * DAY + 600)),
            ],
        ),
    ]
}

/// The streams interleaved round-robin, as one partition-ordered delivery would mix them.
fn envelopes() -> Vec<Envelope> {
    let streams = streams();
    let mut out = Vec::new();
    let longest = streams.iter().map(|s| s.events.len()).max().unwrap();
    for index in 0..longest {
        for stream in &streams {
            let Some(payload) = stream.events.get(index) else {
                continue;
            };
            let position = out.len() as i64 + 1;
            out.push(Envelope {
                event_id: Uuid::new_v5(&stream.id, &position.to_be_bytes()),
                global_position: position,
                aggregate_type: stream.aggregate_type.to_owned(),
                aggregate_id: stream.id.to_string(),
                sequence: index as i64 + 1,
                event_type: payload["type"].as_str().unwrap().to_owned(),
                event_version: "1".to_owned(),
                recorded_at: t0() + Duration::seconds(position),
                payload: payload.clone(),
                metadata: EnvelopeMetadata::default(),
            });
        }
    }
    out
}

async fn apply_in_batches(pool: &PgPool, batches: impl IntoIterator<Item = Vec<Envelope>>) {
    for batch in batches {
        let mut tx = pool.begin().await.unwrap();
        let outcome = apply_envelopes(&mut tx, &batch).await.unwrap();
        assert!(outcome.unreadable.is_empty(), "{:?}", outcome.unreadable);
        tx.commit().await.unwrap();
    }
}

/// Every read-model table, rows in key order.
async fn tables(pool: &PgPool) -> Value {
    let mut snapshot = serde_json::Map::new();
    for chronicle_projections::read_models::ReadTable { name: table, key } in
        chronicle_projections::read_models::TABLES
    {
        let rows: Value = sqlx::query_scalar(&format!(
            "SELECT coalesce(json_agg(to_jsonb(t) - 'applied_at' ORDER BY {key}), '[]'::json) \
               FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        snapshot.insert(table.to_owned(), rows);
    }
    Value::Object(snapshot)
}

#[tokio::test]
async fn batching_and_redelivery_do_not_change_the_read_models() {
    let events = envelopes();
    let one_by_one = TestDb::create().await;
    let one_by_one_pool = one_by_one.pool(2).await;
    apply_in_batches(&one_by_one_pool, events.iter().map(|e| vec![e.clone()])).await;
    let expected = tables(&one_by_one_pool).await;

    let all_at_once = TestDb::create().await;
    let all_at_once_pool = all_at_once.pool(2).await;
    apply_in_batches(&all_at_once_pool, [events.clone()]).await;
    assert_eq!(tables(&all_at_once_pool).await, expected, "one batch");

    // Batches of three, each event twice within its batch; then everything again,
    // newest first, four at a time.
    let messy = TestDb::create().await;
    let messy_pool = messy.pool(2).await;
    let doubled = events
        .chunks(3)
        .map(|chunk| chunk.iter().flat_map(|e| [e.clone(), e.clone()]).collect());
    apply_in_batches(&messy_pool, doubled).await;
    let reversed: Vec<Envelope> = events.iter().rev().cloned().collect();
    apply_in_batches(&messy_pool, reversed.chunks(4).map(<[Envelope]>::to_vec)).await;
    assert_eq!(
        tables(&messy_pool).await,
        expected,
        "duplicated and redelivered"
    );
}

/// After a failed delivery the relay publishes again from its checkpoint, with a new
/// producer; messages the old one had in flight may still land, and before the resent
/// ones. So a partition can hold an aggregate's event N+1 before N (then N+1 again). The
/// early copy must wait for its resend, not be applied over the gap.
#[tokio::test]
async fn an_event_that_arrives_before_its_predecessor_waits_for_the_resend() {
    let events = envelopes();
    let in_order = TestDb::create().await;
    let in_order_pool = in_order.pool(2).await;
    apply_in_batches(&in_order_pool, [events.clone()]).await;
    let expected = tables(&in_order_pool).await;

    for (checkpoint, late, batch) in [(4, 3, 2), (10, 8, 3), (1, 20, 5), (15, 6, 1)] {
        let late_end = (checkpoint + 3 + late).min(events.len());
        let mut partition: Vec<Envelope> = events[..checkpoint].to_vec();
        partition.extend_from_slice(&events[(checkpoint + 3).min(late_end)..late_end]);
        partition.extend_from_slice(&events[checkpoint..]);
        let db = TestDb::create().await;
        let pool = db.pool(2).await;
        apply_in_batches(&pool, partition.chunks(batch).map(<[Envelope]>::to_vec)).await;
        assert_eq!(
            tables(&pool).await,
            expected,
            "checkpoint {checkpoint}, {late} late events, batches of {batch}"
        );
    }
}

#[tokio::test]
async fn the_folded_state_is_what_the_events_say() {
    let db = TestDb::create().await;
    let pool = db.pool(2).await;
    let events = envelopes();
    let mut tx = pool.begin().await.unwrap();
    let outcome = apply_envelopes(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((outcome.applied, outcome.duplicates), (events.len(), 0));

    let accounts: Vec<(Uuid, i64, String, i64)> = sqlx::query_as(
        "SELECT account_id, balance, status, version FROM accounts ORDER BY account_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        accounts,
        vec![
            (id(1), 750, "open".to_owned(), 4),
            (id(2), 0, "closed".to_owned(), 4)
        ]
    );
    let bookings: Vec<BookingRow> = sqlx::query_as(
        "SELECT booking_id, status, status_reason, payment_id, seats FROM bookings ORDER BY booking_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let seats = |s: &str| vec![s.to_owned(), format!("{s}b")];
    assert_eq!(
        bookings,
        vec![
            (
                id(10),
                "cancelled".into(),
                Some("plans changed".into()),
                Some(id(20)),
                seats("1")
            ),
            (
                id(11),
                "rejected".into(),
                Some("insufficient funds".into()),
                None,
                seats("2")
            ),
            (id(12), "expired".into(), None, None, seats("3")),
            (id(13), "pending".into(), None, None, seats("4")),
        ]
    );
    let payments: Vec<(Uuid, String, i32, i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT payment_id, status, charges_captured, captured_total, refunded_total, failure_reason \
           FROM payments ORDER BY payment_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        payments,
        vec![
            (id(20), "refunded".into(), 1, 250, 250, None),
            (
                id(21),
                "failed".into(),
                0,
                0,
                0,
                Some("card expired".into())
            ),
            (
                id(22),
                "suspended".into(),
                2,
                500,
                0,
                Some("declined twice".into())
            ),
            (id(23), "completed".into(), 3, 750, 0, None),
            (id(24), "active".into(), 1, 250, 0, Some("declined".into())),
        ]
    );
    let schedules: Vec<ScheduleRow> = sqlx::query_as(
        "SELECT payment_id, next_charge, next_due_at, attempts, status, version \
           FROM payment_schedules ORDER BY payment_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        schedules,
        vec![
            (id(22), 3, None, 1, "suspended".into(), 6),
            (id(23), 4, None, 0, "completed".into(), 4),
            (
                id(24),
                2,
                Some(t0() + Duration::seconds(2 * DAY + 600)),
                1,
                "active".into(),
                3
            ),
        ]
    );
    // Each history version is valid until the next one; only the last is open.
    let open: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT booking_id, sequence FROM booking_status_history WHERE valid_to IS NULL \
         ORDER BY booking_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        open,
        vec![(id(10), 3), (id(11), 2), (id(12), 2), (id(13), 1)]
    );
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM account_balance_history h \
           JOIN account_balance_history n ON n.account_id = h.account_id AND n.sequence = h.sequence + 1 \
          WHERE h.valid_to IS DISTINCT FROM n.valid_from",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(gaps, 0);
    let money: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT payment_id, kind, amount FROM payment_ledger WHERE payment_id = $1 ORDER BY sequence",
    )
    .bind(id(20))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        money,
        vec![
            (id(20), "capture".into(), 250),
            (id(20), "refund".into(), 100),
            (id(20), "refund".into(), 150)
        ]
    );
}
