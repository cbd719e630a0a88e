//! Temporal queries: what was true at an instant, and money over time buckets. All are
//! indexed lookups or range scans on read models; none reads the event store.
//!
//! Time semantics: `as_of` is **transaction time** (when Chronicle recorded a change:
//! `recorded_at`) for balances, booking states and revenue. Occupancy asks about
//! **business time** (the instant on the resource's timeline a booking covers), as known
//! at a transaction time (`known_at`, default now).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::queries::{self, BookingView, InvalidCursor, Page};

/// An account's balance as of an instant.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct BalanceAsOf {
    pub account_id: Uuid,
    pub owner: String,
    pub currency: String,
    pub balance: i64,
    pub status: String,
    /// The account's version at that instant.
    pub version: i64,
    /// The version was recorded at `valid_from` and replaced at `valid_to` (null: it is
    /// still current).
    pub valid_from: DateTime<Utc>,
    pub valid_to: Option<DateTime<Utc>>,
}

/// The balance of `account_id` as of transaction time `at`; `None` when the account did
/// not exist yet.
pub async fn balance_as_of(
    pool: &PgPool,
    account_id: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<BalanceAsOf>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.account_id, a.owner, a.currency, h.balance, h.status, h.sequence AS version, \
                h.valid_from, h.valid_to \
           FROM account_balance_history h JOIN accounts a USING (account_id) \
          WHERE h.account_id = $1 AND h.valid_from <= $2 \
          ORDER BY h.valid_from DESC, h.sequence DESC LIMIT 1",
    )
    .bind(account_id)
    .bind(at)
    .fetch_optional(pool)
    .await
}

#[derive(sqlx::FromRow)]
struct StatusAt {
    sequence: i64,
    status: String,
    status_reason: Option<String>,
    payment_id: Option<Uuid>,
    valid_from: DateTime<Utc>,
}

/// A booking as of transaction time `at`; `None` when it was not requested yet.
pub async fn booking_as_of(
    pool: &PgPool,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<BookingView>, sqlx::Error> {
    let state: Option<StatusAt> = sqlx::query_as(
        "SELECT sequence, status, status_reason, payment_id, valid_from FROM booking_status_history \
          WHERE booking_id = $1 AND valid_from <= $2 ORDER BY valid_from DESC, sequence DESC LIMIT 1",
    )
    .bind(id)
    .bind(at)
    .fetch_optional(pool)
    .await?;
    let Some(state) = state else {
        return Ok(None);
    };
    Ok(queries::booking(pool, id).await?.map(|mut booking| {
        booking.status = state.status;
        booking.status_reason = state.status_reason;
        booking.payment_id = state.payment_id;
        booking.version = state.sequence;
        booking.updated_at = state.valid_from;
        booking
    }))
}

/// The width of a revenue bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Hour,
    Day,
    Month,
}

impl Bucket {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

/// Money captured and refunded in one bucket, in one currency.
#[derive(Debug, Serialize, sqlx::FromRow, PartialEq, Eq, utoipa::ToSchema)]
pub struct RevenueBucket {
    /// The bucket's start (UTC).
    pub bucket: DateTime<Utc>,
    pub currency: String,
    pub captured: i64,
    pub refunded: i64,
    /// Captured minus refunded.
    pub revenue: i64,
}

/// Revenue per bucket and currency for transaction times in `[from, to)`.
pub async fn revenue(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket: Bucket,
) -> Result<Vec<RevenueBucket>, sqlx::Error> {
    sqlx::query_as(
        "SELECT date_trunc($3, recorded_at, 'UTC') AS bucket, currency, \
                coalesce(sum(amount) FILTER (WHERE kind = 'capture'), 0)::bigint AS captured, \
                coalesce(sum(amount) FILTER (WHERE kind = 'refund'), 0)::bigint AS refunded, \
                coalesce(sum(CASE kind WHEN 'capture' THEN amount ELSE -amount END), 0)::bigint AS revenue \
           FROM payment_ledger WHERE recorded_at >= $1 AND recorded_at < $2 \
          GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(from)
    .bind(to)
    .bind(bucket.as_str())
    .fetch_all(pool)
    .await
}

/// One seat held at an instant.
#[derive(Debug, Serialize, sqlx::FromRow, PartialEq, Eq, PartialOrd, Ord, utoipa::ToSchema)]
pub struct HeldSeat {
    pub seat: String,
    pub booking_id: Uuid,
    pub status: String,
}

/// The seats of a resource held at a business instant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Occupancy {
    pub resource_id: String,
    /// The business instant asked about.
    pub as_of: DateTime<Utc>,
    /// What Chronicle knew at this transaction time.
    pub known_at: DateTime<Utc>,
    pub seats_held: usize,
    pub seats: Vec<HeldSeat>,
}

/// Seats of `resource_id` held (by pending or confirmed bookings, as known at
/// `known_at`) at business instant `at`.
pub async fn occupancy(
    pool: &PgPool,
    resource_id: &str,
    at: DateTime<Utc>,
    known_at: DateTime<Utc>,
) -> Result<Occupancy, sqlx::Error> {
    let seats: Vec<HeldSeat> = sqlx::query_as(
        "SELECT seat, b.booking_id, h.status \
           FROM bookings b \
           JOIN LATERAL (SELECT status FROM booking_status_history s \
                          WHERE s.booking_id = b.booking_id AND s.valid_from <= $3 \
                          ORDER BY s.valid_from DESC, s.sequence DESC LIMIT 1) h ON true \
           CROSS JOIN LATERAL unnest(b.seats) AS seat \
          WHERE b.resource_id = $1 AND b.starts_at <= $2 AND b.ends_at > $2 \
            AND h.status IN ('pending', 'confirmed') \
          ORDER BY seat, b.booking_id",
    )
    .bind(resource_id)
    .bind(at)
    .bind(known_at)
    .fetch_all(pool)
    .await?;
    Ok(Occupancy {
        resource_id: resource_id.to_owned(),
        as_of: at,
        known_at,
        seats_held: seats.len(),
        seats,
    })
}

/// One event of a stream, as the audit read model keeps it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEvent {
    pub event_id: Uuid,
    pub global_position: i64,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: Option<String>,
    pub recorded_at: DateTime<Utc>,
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// The events of one stream in order, `limit` after `cursor`.
pub async fn audit_events(
    pool: &PgPool,
    aggregate_type: &str,
    id: Uuid,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Result<Page<AuditEvent>, InvalidCursor>, sqlx::Error> {
    let after = match queries::decode_cursor(cursor) {
        Ok(after) => after.unwrap_or(0),
        Err(e) => return Ok(Err(e)),
    };
    let rows: Vec<AuditEvent> = sqlx::query_as(&format!(
        "{SELECT_AUDIT} WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 \
          ORDER BY sequence LIMIT $4"
    ))
    .bind(aggregate_type)
    .bind(id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Ok(queries::page(rows, limit, |e| e.sequence)))
}

const SELECT_AUDIT: &str = "SELECT event_id, global_position, aggregate_type, aggregate_id, \
     sequence, event_type, event_version, recorded_at, payload, metadata FROM rm_applied_events";

/// The event with id `event_id`, wherever it is.
pub async fn audit_event(pool: &PgPool, event_id: Uuid) -> Result<Option<AuditEvent>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_AUDIT} WHERE event_id = $1"))
        .bind(event_id)
        .fetch_optional(pool)
        .await
}

/// The events that name `event_id` as their cause (a process reacting to it), in the
/// order they were appended, `limit` after `cursor`.
pub async fn caused_by(
    pool: &PgPool,
    event_id: Uuid,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Result<Page<AuditEvent>, InvalidCursor>, sqlx::Error> {
    let after = match queries::decode_cursor(cursor) {
        Ok(after) => after.unwrap_or(0),
        Err(e) => return Ok(Err(e)),
    };
    let rows: Vec<AuditEvent> = sqlx::query_as(&format!(
        "{SELECT_AUDIT} WHERE metadata ->> 'causation_id' = $1 AND global_position > $2 \
          ORDER BY global_position LIMIT $3"
    ))
    .bind(event_id.to_string())
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Ok(queries::page(rows, limit, |e| e.global_position)))
}
