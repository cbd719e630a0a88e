//! Seeds a store with many valid events fast: whole streams of accounts, bookings and
//! payments written with multi-row inserts, through the event store's own triggers
//! (hash chain, heads, seat claims). For rebuild, diff, export and benchmark runs.

use chrono::{Duration, TimeZone, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// One event to insert.
struct Row {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: &'static str,
    payload: Value,
}

/// A deterministic generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn account_stream(rng: &mut Rng, n: u64, rows: &mut Vec<Row>) {
    let id = Uuid::from_u128(0xacc0_0000_0000_0000_0000_0000_0000_0000 | u128::from(n));
    let at = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(n as i64);
    let mut push = |sequence: i64, event_type: &'static str, payload: Value| {
        rows.push(Row {
            aggregate_type: "Account",
            aggregate_id: id.to_string(),
            sequence,
            event_type,
            payload,
        });
    };
    push(
        1,
        "AccountOpened",
        json!({"type": "AccountOpened", "account_id": id, "owner": format!("seed-{}", n % 1000),
        "currency": "EUR", "overdraft_limit": 0, "opened_at": at}),
    );
    let mut balance = 0i64;
    for sequence in 2..(7 + rng.below(20) as i64) {
        let amount = 1 + rng.below(10_000) as i64;
        let (event_type, balance_after) = if rng.below(3) == 0 && balance >= amount {
            ("FundsWithdrawn", balance - amount)
        } else {
            ("FundsDeposited", balance + amount)
        };
        balance = balance_after;
        push(
            sequence,
            event_type,
            json!({"type": event_type, "amount": amount, "reference": format!("seed-{n}-{sequence}"),
            "balance_after": balance_after, "occurred_at": at}),
        );
    }
}

fn booking_and_payment(rng: &mut Rng, n: u64, rows: &mut Vec<Row>) {
    let booking = Uuid::from_u128(0xb00c_0000_0000_0000_0000_0000_0000_0000 | u128::from(n));
    let payment = Uuid::from_u128(0xa1a1_0000_0000_0000_0000_0000_0000_0000 | u128::from(n));
    let account = Uuid::from_u128(0xacc0_0000_0000_0000_0000_0000_0000_0000 | u128::from(n));
    let starts = Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0).unwrap()
        + Duration::hours(rng.below(8_000) as i64);
    let price = 1_000 + rng.below(9_000) as i64;
    rows.push(Row { aggregate_type: "Booking", aggregate_id: booking.to_string(), sequence: 1, event_type: "BookingRequested",
        payload: json!({"type": "BookingRequested", "booking_id": booking, "account_id": account, "owner": format!("seed-{}", n % 1000),
            "resource_id": format!("seed-room-{}", n % 500), "seats": [format!("S{n}")], "starts_at": starts,
            "ends_at": starts + Duration::hours(2), "price": {"amount": price, "currency": "EUR"},
            "guest": {"name": "Seed Guest", "email": "seed@example.org"}, "notes": null, "requested_at": starts - Duration::days(30)}) });
    rows.push(Row { aggregate_type: "Payment", aggregate_id: payment.to_string(), sequence: 1, event_type: "PaymentInitiated",
        payload: json!({"type": "PaymentInitiated", "payment_id": payment, "account_id": account, "owner": format!("seed-{}", n % 1000),
            "amount": {"amount": price, "currency": "EUR"}, "kind": "one_time", "schedule": null, "booking_id": booking,
            "initiated_at": starts - Duration::days(30)}) });
    rows.push(Row { aggregate_type: "Payment", aggregate_id: payment.to_string(), sequence: 2, event_type: "PaymentCaptured",
        payload: json!({"type": "PaymentCaptured", "charge": 1, "amount": price, "captured_at": starts - Duration::days(30)}) });
    rows.push(Row { aggregate_type: "Booking", aggregate_id: booking.to_string(), sequence: 2, event_type: "BookingConfirmed",
        payload: json!({"type": "BookingConfirmed", "payment_id": payment, "confirmed_at": starts - Duration::days(30)}) });
    if rng.below(5) == 0 {
        rows.push(Row { aggregate_type: "Booking", aggregate_id: booking.to_string(), sequence: 3, event_type: "BookingCancelled",
            payload: json!({"type": "BookingCancelled", "reason": "seeded", "cancelled_at": starts - Duration::days(1)}) });
        rows.push(Row { aggregate_type: "Payment", aggregate_id: payment.to_string(), sequence: 3, event_type: "PaymentRefunded",
            payload: json!({"type": "PaymentRefunded", "refund_id": Uuid::new_v5(&payment, b"refund"), "amount": price,
                "refunded_at": starts - Duration::days(1)}) });
    }
}

async fn insert(pool: &PgPool, rows: &[Row]) -> Result<(), sqlx::Error> {
    let metadata =
        json!({"actor": "seed", "correlation_id": Uuid::nil(), "causation_id": Uuid::nil()});
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT t, i, s, e, '1', p, $6 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::jsonb[]) \
           AS r(t, i, s, e, p)",
    )
    .bind(rows.iter().map(|r| r.aggregate_type).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.aggregate_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.sequence).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.event_type).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payload.clone()).collect::<Vec<_>>())
    .bind(metadata)
    .execute(pool)
    .await?;
    Ok(())
}

/// Appends at least `events` events (whole streams), in batches of about `batch`.
/// Returns how many were appended. Streams are numbered from `first`, so several calls
/// on one store do not collide.
pub async fn seed(pool: &PgPool, events: u64, first: u64) -> Result<u64, sqlx::Error> {
    let mut rng = Rng(0x5eed_0000 + first + 1);
    let mut rows = Vec::with_capacity(6_000);
    let mut written = 0;
    let mut n = first;
    while written + (rows.len() as u64) < events {
        account_stream(&mut rng, n, &mut rows);
        booking_and_payment(&mut rng, n, &mut rows);
        n += 1;
        if rows.len() >= 5_000 {
            insert(pool, &rows).await?;
            written += rows.len() as u64;
            rows.clear();
        }
    }
    if !rows.is_empty() {
        insert(pool, &rows).await?;
        written += rows.len() as u64;
    }
    Ok(written)
}
