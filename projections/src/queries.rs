//! What queries read: the read tables only, with keyset cursors.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chronicle_domain::subject::ERASED;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

/// A page of a list, with the cursor of the next page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A cursor that was not issued by this server.
#[derive(Debug, thiserror::Error)]
#[error("the cursor is not valid")]
pub struct InvalidCursor;

/// Opaque cursors: a keyset position, base64url-encoded.
fn encode_cursor(key: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("k{key}"))
}

pub(crate) fn decode_cursor(cursor: Option<&str>) -> Result<Option<i64>, InvalidCursor> {
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| InvalidCursor)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| InvalidCursor)?;
    text.strip_prefix('k')
        .and_then(|k| k.parse().ok())
        .map(Some)
        .ok_or(InvalidCursor)
}

/// Builds a page from `limit + 1` rows fetched in keyset order.
pub(crate) fn page<T>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> i64) -> Page<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| encode_cursor(key(r)))
    } else {
        None
    };
    Page {
        items: rows,
        next_cursor,
    }
}

/// An account as `GET /v1/accounts/{id}` shows it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AccountView {
    pub account_id: Uuid,
    pub owner: String,
    pub currency: String,
    pub balance: i64,
    pub overdraft_limit: i64,
    pub status: String,
    pub version: i64,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn account(pool: &PgPool, id: Uuid) -> Result<Option<AccountView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, owner, currency, balance, overdraft_limit, status, version, opened_at, \
         updated_at FROM accounts WHERE account_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// One line of an account's ledger.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LedgerLine {
    pub sequence: i64,
    pub kind: String,
    pub amount: i64,
    pub balance_after: i64,
    pub reference: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub global_position: i64,
}

/// An account's ledger in order, `limit` lines after `cursor`.
pub async fn ledger(
    pool: &PgPool,
    account_id: Uuid,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Result<Page<LedgerLine>, InvalidCursor>, sqlx::Error> {
    let after = match decode_cursor(cursor) {
        Ok(after) => after.unwrap_or(0),
        Err(e) => return Ok(Err(e)),
    };
    let rows: Vec<LedgerLine> = sqlx::query_as(
        "SELECT sequence, kind, amount, balance_after, reference, occurred_at, recorded_at, \
         global_position FROM account_ledger WHERE account_id = $1 AND sequence > $2 \
         ORDER BY sequence LIMIT $3",
    )
    .bind(account_id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(Ok(page(rows, limit, |line| line.sequence)))
}

#[derive(sqlx::FromRow)]
struct BookingRow {
    booking_id: Uuid,
    account_id: Uuid,
    owner: String,
    resource_id: String,
    seats: Vec<String>,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    price_amount: i64,
    price_currency: String,
    guest_name: String,
    guest_email: String,
    notes: Option<String>,
    status: String,
    status_reason: Option<String>,
    payment_id: Option<Uuid>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    created_position: i64,
    personal: Option<serde_json::Value>,
}

/// An amount in a currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MoneyView {
    pub amount: i64,
    pub currency: String,
}

/// A booking's guest. Once the guest's personal data was erased, both fields hold the
/// store's placeholder ([`ERASED`]) here and read, in JSON, as API.md has them: `null`,
/// with `"erased": true` beside them. Either form reads back (search documents written
/// before kept the placeholder).
#[derive(Clone, Debug, PartialEq, Eq, utoipa::ToSchema)]
pub struct GuestView {
    /// `null` once erased (then `"erased": true` is beside it).
    #[schema(value_type = Option<String>)]
    pub name: String,
    /// `null` once erased.
    #[schema(value_type = Option<String>)]
    pub email: String,
}

impl GuestView {
    pub fn is_erased(&self) -> bool {
        self.name == ERASED && self.email == ERASED
    }
}

/// The JSON form of a guest, erased or not.
#[derive(Serialize, serde::Deserialize)]
struct GuestJson {
    name: Option<String>,
    email: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    erased: bool,
}

impl Serialize for GuestView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let erased = self.is_erased();
        GuestJson {
            name: (!erased).then(|| self.name.clone()),
            email: (!erased).then(|| self.email.clone()),
            erased,
        }
        .serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for GuestView {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = GuestJson::deserialize(deserializer)?;
        let field = |value: Option<String>| match value {
            Some(value) if !json.erased => value,
            _ => ERASED.to_owned(),
        };
        Ok(Self {
            name: field(json.name.clone()),
            email: field(json.email.clone()),
        })
    }
}

/// In an event's payload as the API shows it (the audit trail): an erased guest written
/// as API.md has it, `null` fields with `"erased": true`.
pub fn show_erased_guest(payload: &mut serde_json::Value) {
    let Some(guest) = payload.get_mut("guest") else {
        return;
    };
    if let Ok(view) = serde_json::from_value::<GuestView>(guest.clone())
        && view.is_erased()
        && let Ok(shown) = serde_json::to_value(&view)
    {
        *guest = shown;
    }
}

/// A booking as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BookingView {
    pub booking_id: Uuid,
    pub account_id: Uuid,
    pub owner: String,
    pub resource_id: String,
    pub seats: Vec<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub price: MoneyView,
    pub guest: GuestView,
    pub notes: Option<String>,
    pub status: String,
    pub status_reason: Option<String>,
    pub payment_id: Option<Uuid>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    #[schema(ignore)]
    created_position: i64,
    /// The sealed personal fields kept beside the row (ADR 0035), until opened.
    #[serde(skip)]
    #[schema(ignore)]
    pub sealed: Option<serde_json::Value>,
}

impl BookingView {
    /// Opens the sealed guest and notes in place with `key` (`None`: the subject was
    /// erased, and they read as erased).
    pub fn open_with(
        &mut self,
        key: Option<&chronicle_eventstore::personal::DataKey>,
    ) -> Result<(), chronicle_eventstore::personal::KeyError> {
        use chronicle_eventstore::personal::seal::{SEALED_FIELD, open, place};
        let Some(kept) = self.sealed.take() else {
            return Ok(());
        };
        let here = place(
            "Booking",
            &self.booking_id.to_string(),
            kept["sequence"].as_i64().unwrap_or(1),
            kept["event_type"].as_str().unwrap_or("BookingRequested"),
        );
        let mut payload = serde_json::json!({ SEALED_FIELD: kept["sealed"] });
        open(&mut payload, key, &here)?;
        if let Ok(guest) = serde_json::from_value::<GuestView>(payload["guest"].clone()) {
            self.guest = guest;
        }
        self.notes = payload["notes"].as_str().map(str::to_owned);
        Ok(())
    }

    /// The subject and key version its sealed fields are under, if it has any.
    pub fn sealed_under(&self) -> Option<(String, i32)> {
        let sealed = self.sealed.as_ref()?.get("sealed")?;
        Some((
            sealed.get("subject")?.as_str()?.to_owned(),
            i32::try_from(sealed.get("key_version")?.as_i64()?).ok()?,
        ))
    }
}

impl From<BookingRow> for BookingView {
    fn from(r: BookingRow) -> Self {
        Self {
            booking_id: r.booking_id,
            account_id: r.account_id,
            owner: r.owner,
            resource_id: r.resource_id,
            seats: r.seats,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            price: MoneyView {
                amount: r.price_amount,
                currency: r.price_currency,
            },
            guest: GuestView {
                name: r.guest_name,
                email: r.guest_email,
            },
            notes: r.notes,
            status: r.status,
            status_reason: r.status_reason,
            payment_id: r.payment_id,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            created_position: r.created_position,
            sealed: r.personal,
        }
    }
}

const BOOKING_COLUMNS: &str = "booking_id, account_id, owner, resource_id, seats, starts_at, \
     ends_at, price_amount, price_currency, guest_name, guest_email, notes, status, status_reason, \
     payment_id, version, created_at, updated_at, created_position, personal";

pub async fn booking(pool: &PgPool, id: Uuid) -> Result<Option<BookingView>, sqlx::Error> {
    let row: Option<BookingRow> = sqlx::query_as(&format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings WHERE booking_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(BookingView::from))
}

/// Filters of the booking list.
#[derive(Debug, Default)]
pub struct BookingFilter {
    /// Only this owner's bookings (always set for clients).
    pub owner: Option<String>,
    pub account_id: Option<Uuid>,
    pub status: Option<String>,
    pub resource_id: Option<String>,
}

/// Bookings matching `filter`, newest first.
pub async fn bookings(
    pool: &PgPool,
    filter: &BookingFilter,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Result<Page<BookingView>, InvalidCursor>, sqlx::Error> {
    let before = match decode_cursor(cursor) {
        Ok(before) => before,
        Err(e) => return Ok(Err(e)),
    };
    let mut query: QueryBuilder<'_, Postgres> =
        QueryBuilder::new(format!("SELECT {BOOKING_COLUMNS} FROM bookings WHERE true"));
    if let Some(owner) = &filter.owner {
        query.push(" AND owner = ").push_bind(owner);
    }
    if let Some(account_id) = filter.account_id {
        query.push(" AND account_id = ").push_bind(account_id);
    }
    if let Some(status) = &filter.status {
        query.push(" AND status = ").push_bind(status);
    }
    if let Some(resource_id) = &filter.resource_id {
        query.push(" AND resource_id = ").push_bind(resource_id);
    }
    if let Some(before) = before {
        query.push(" AND created_position < ").push_bind(before);
    }
    query
        .push(" ORDER BY created_position DESC LIMIT ")
        .push_bind(limit + 1);
    let rows: Vec<BookingRow> = query.build_query_as().fetch_all(pool).await?;
    let views = rows.into_iter().map(BookingView::from).collect();
    Ok(Ok(page(views, limit, |b: &BookingView| b.created_position)))
}

/// A payment as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PaymentView {
    pub payment_id: Uuid,
    pub account_id: Uuid,
    pub owner: String,
    pub amount: i64,
    pub currency: String,
    pub kind: String,
    #[schema(value_type = Option<Object>)]
    pub schedule: Option<serde_json::Value>,
    pub booking_id: Option<Uuid>,
    pub status: String,
    pub charges_captured: i32,
    pub captured_total: i64,
    pub refunded_total: i64,
    pub failure_reason: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn payment(pool: &PgPool, id: Uuid) -> Result<Option<PaymentView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT payment_id, account_id, owner, amount, currency, kind, schedule, booking_id, status, \
         charges_captured, captured_total, refunded_total, failure_reason, version, created_at, \
         updated_at FROM payments WHERE payment_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_erased_guest_reads_as_null_fields_marked_erased_and_back() {
        use serde_json::json;
        let erased = GuestView {
            name: ERASED.into(),
            email: ERASED.into(),
        };
        let shown = serde_json::to_value(&erased).unwrap();
        assert_eq!(shown, json!({"name": null, "email": null, "erased": true}));
        assert_eq!(serde_json::from_value::<GuestView>(shown).unwrap(), erased);
        let kept = json!({"name": ERASED, "email": ERASED});
        assert_eq!(serde_json::from_value::<GuestView>(kept).unwrap(), erased);
        let ada = json!({"name": "Ada", "email": "ada@example.org"});
        let read: GuestView = serde_json::from_value(ada.clone()).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), ada);

        let mut payload =
            json!({"type": "BookingRequested", "guest": {"name": ERASED, "email": ERASED}});
        show_erased_guest(&mut payload);
        assert_eq!(
            payload["guest"],
            json!({"name": null, "email": null, "erased": true})
        );
    }

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        let cursor = encode_cursor(42);
        assert_eq!(decode_cursor(Some(&cursor)).unwrap(), Some(42));
        assert_eq!(decode_cursor(None).unwrap(), None);
        assert!(decode_cursor(Some("not base64!")).is_err());
        assert!(decode_cursor(Some(&URL_SAFE_NO_PAD.encode("x1"))).is_err());
    }

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_exist() {
        let full = page(vec![5, 4, 3], 2, |n| *n);
        assert_eq!(full.items, vec![5, 4]);
        assert_eq!(decode_cursor(full.next_cursor.as_deref()).unwrap(), Some(4));
        let last = page(vec![2, 1], 2, |n| *n);
        assert!(last.next_cursor.is_none());
    }
}

/// A recurring payment's next charge, due now (`payment_schedules`).
#[derive(Debug, sqlx::FromRow)]
pub struct DueCharge {
    pub payment_id: Uuid,
    pub account_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub next_charge: i32,
    pub attempts: i32,
}

/// Up to `limit` recurring charges that are due, the longest due first.
pub async fn due_charges(pool: &PgPool, limit: i64) -> Result<Vec<DueCharge>, sqlx::Error> {
    sqlx::query_as(
        "SELECT payment_id, account_id, amount, currency, next_charge, attempts \
           FROM payment_schedules \
          WHERE status = 'active' AND next_due_at <= now() \
          ORDER BY next_due_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Up to `limit` bookings still pending longer than `hold` after they were requested,
/// the oldest first.
pub async fn bookings_pending_longer_than(
    pool: &PgPool,
    hold: std::time::Duration,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT booking_id FROM bookings \
          WHERE status = 'pending' AND created_at < now() - make_interval(secs => $1) \
          ORDER BY created_at LIMIT $2",
    )
    .bind(hold.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Which event the read models applied at a global position.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppliedEvent {
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub sequence: i64,
}

/// The event the read models applied at `position`; `None` if they have not (yet).
pub async fn applied_event(
    pool: &PgPool,
    position: i64,
) -> Result<Option<AppliedEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence FROM rm_applied_events \
          WHERE global_position = $1",
    )
    .bind(position)
    .fetch_optional(pool)
    .await
}
