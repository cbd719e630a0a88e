//! `bookings` and `booking_status_history`. What an event does to a booking is the
//! domain's reading ([`BookingEvent::change`]), the same the aggregate and the search
//! index follow.

use std::collections::HashMap;

use chronicle_domain::booking::BookingState;
use chronicle_domain::{BookingChange, BookingEvent, BookingStatus};
use serde_json::Value;
use uuid::Uuid;

use super::Tx;
use super::fold::{At, Fold, Folded, Stamp, Table, stored_word};
use super::history::Versions;
use super::unnest::Unnest;

/// What changes in a booking's row after its request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    booking_id: Uuid,
    status: BookingStatus,
    status_reason: Option<String>,
    payment_id: Option<Uuid>,
    stamp: Stamp,
}

#[derive(sqlx::FromRow)]
struct Stored {
    booking_id: Uuid,
    status: String,
    status_reason: Option<String>,
    payment_id: Option<Uuid>,
    #[sqlx(flatten)]
    stamp: Stamp,
}

/// A status as the history records it.
#[derive(Debug, PartialEq)]
pub(crate) struct Recorded {
    status: BookingStatus,
    status_reason: Option<String>,
    payment_id: Option<Uuid>,
}

/// What a batch of booking events writes besides the rows' changes.
#[derive(Default)]
pub(crate) struct Bookings {
    /// Bookings first requested in this batch: what never changes afterwards, and when.
    requested: HashMap<Uuid, (Box<BookingState>, At)>,
    history: Versions<Recorded>,
    /// The sealed personal fields the batch's events carry, kept beside their rows
    /// (`bookings.personal`, ADR 0035), by booking.
    sealed: HashMap<Uuid, Value>,
}

impl Bookings {
    /// A fold whose rows keep `sealed` (by booking) beside them.
    pub(crate) fn keeping(sealed: HashMap<Uuid, Value>) -> Self {
        Self {
            sealed,
            ..Self::default()
        }
    }
}

impl Fold for Bookings {
    type Event = BookingEvent;
    type State = Row;

    fn stamp(row: &mut Row) -> &mut Stamp {
        &mut row.stamp
    }

    fn open(&mut self, id: Uuid, event: &BookingEvent, at: At) -> Option<Row> {
        let BookingChange::Requested(booking) = event.change() else {
            return None;
        };
        let row = Row {
            booking_id: id,
            status: booking.status,
            status_reason: None,
            payment_id: booking.payment_id,
            stamp: Stamp::from(at),
        };
        self.requested.insert(id, (booking, at));
        Some(row)
    }

    fn change(&mut self, _id: Uuid, row: &mut Row, event: &BookingEvent, _at: At) -> bool {
        let BookingChange::Status(change) = event.change() else {
            return false;
        };
        row.status = change.status;
        row.status_reason = change.reason.or(row.status_reason.take());
        row.payment_id = change.payment_id.or(row.payment_id);
        true
    }

    fn applied(&mut self, id: Uuid, row: &Row, at: At) {
        let recorded = Recorded {
            status: row.status,
            status_reason: row.status_reason.clone(),
            payment_id: row.payment_id,
        };
        self.history.push(id, at.sequence, at.recorded_at, recorded);
    }
}

impl Table for Bookings {
    async fn load(tx: &mut Tx<'_>, ids: &[Uuid]) -> Result<HashMap<Uuid, Row>, sqlx::Error> {
        let stored: Vec<Stored> = sqlx::query_as(
            "SELECT booking_id, version, status, status_reason, payment_id, updated_at, \
             last_position FROM bookings WHERE booking_id = ANY($1) \
             ORDER BY booking_id FOR UPDATE",
        )
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
        stored
            .into_iter()
            .map(|row| {
                let status = stored_word(
                    BookingStatus::parse,
                    &row.status,
                    format_args!("booking {} status", row.booking_id),
                )?;
                let row = Row {
                    booking_id: row.booking_id,
                    status,
                    status_reason: row.status_reason,
                    payment_id: row.payment_id,
                    stamp: row.stamp,
                };
                Ok((row.booking_id, row))
            })
            .collect()
    }

    async fn write(tx: &mut Tx<'_>, folded: &Folded<Self>) -> Result<(), sqlx::Error> {
        insert(tx, folded).await?;
        keep_sealed(tx, folded).await?;
        let changed: Vec<&Row> = folded.states_of(&folded.changed).collect();
        Unnest::of(&changed)
            .column("booking_id", |r| r.booking_id)
            .column("status", |r| r.status.as_str())
            .column("status_reason", |r| r.status_reason.as_deref())
            .column("payment_id", |r| r.payment_id)
            .column("version", |r| r.stamp.version)
            .column("updated_at", |r| r.stamp.updated_at)
            .column("last_position", |r| r.stamp.last_position)
            .update("bookings", "booking_id", "t.version < v.version")
            .execute(tx)
            .await?;
        folded
            .effects
            .history
            .write(tx, "booking_status_history", "booking_id", |rows| {
                rows.column("status", |v| v.state.status.as_str())
                    .column("status_reason", |v| v.state.status_reason.as_deref())
                    .column("payment_id", |v| v.state.payment_id)
            })
            .await
    }
}

/// Inserts the bookings requested in this batch, as the batch left them.
async fn insert(tx: &mut Tx<'_>, folded: &Folded<Bookings>) -> Result<(), sqlx::Error> {
    let created: Vec<(&BookingState, &At, &Row)> = folded
        .created
        .iter()
        .map(|id| {
            let (booking, at) = &folded.effects.requested[id];
            (booking.as_ref(), at, &folded.states[id])
        })
        .collect();
    Unnest::of(&created)
        .column("booking_id", |(_, _, r)| r.booking_id)
        .column("account_id", |(b, _, _)| b.account_id)
        .column("owner", |(b, _, _)| b.owner.as_str())
        .column("resource_id", |(b, _, _)| b.resource_id.as_str())
        .column_as(
            "seats",
            "ARRAY(SELECT jsonb_array_elements_text(v.seats))",
            |(b, _, _)| Value::from(b.seats.clone()),
        )
        .column("starts_at", |(b, _, _)| b.starts_at)
        .column("ends_at", |(b, _, _)| b.ends_at)
        .column("price_amount", |(b, _, _)| b.price.amount)
        .column("price_currency", |(b, _, _)| b.price.currency.as_str())
        .column("guest_name", |(b, _, _)| b.guest.name.as_str())
        .column("guest_email", |(b, _, _)| b.guest.email.as_str())
        .column("notes", |(b, _, _)| b.notes.as_deref())
        .column("status", |(_, _, r)| r.status.as_str())
        .column("status_reason", |(_, _, r)| r.status_reason.as_deref())
        .column("payment_id", |(_, _, r)| r.payment_id)
        .column("version", |(_, _, r)| r.stamp.version)
        .column("created_at", |(_, at, _)| at.recorded_at)
        .column("updated_at", |(_, _, r)| r.stamp.updated_at)
        .column("created_position", |(_, at, _)| at.position)
        .column("last_position", |(_, _, r)| r.stamp.last_position)
        .column("personal", |(_, _, r)| {
            folded.effects.sealed.get(&r.booking_id)
        })
        .insert("bookings", "ON CONFLICT (booking_id) DO NOTHING")
        .execute(tx)
        .await
}

/// Keeps sealed fields of bookings not created by this batch (their rows were inserted
/// with theirs): none while only the request carries personal fields, but a later event
/// that did would not lose them.
async fn keep_sealed(tx: &mut Tx<'_>, folded: &Folded<Bookings>) -> Result<(), sqlx::Error> {
    let (ids, values): (Vec<Uuid>, Vec<&Value>) = folded
        .effects
        .sealed
        .iter()
        .filter(|(id, _)| folded.created.binary_search(id).is_err())
        .map(|(id, value)| (*id, value))
        .unzip();
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE bookings b SET personal = s.personal \
           FROM unnest($1::uuid[], $2::jsonb[]) AS s(booking_id, personal) \
          WHERE b.booking_id = s.booking_id",
    )
    .bind(&ids)
    .bind(&values)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use chronicle_domain::booking::BookingEvent as E;
    use chronicle_domain::values::Guest;
    use chronicle_domain::{Currency, Money};
    use chrono::{DateTime, Utc};

    use super::super::fold::fold;
    use super::super::fold::tests::at;
    use super::*;

    const ID: Uuid = Uuid::from_u128(11);
    const PAYMENT: Uuid = Uuid::from_u128(12);

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap_or_default()
    }

    fn requested() -> E {
        E::BookingRequested {
            booking_id: ID,
            account_id: Uuid::from_u128(1),
            owner: "alice".into(),
            resource_id: "hall-1".into(),
            seats: vec!["A1".into()],
            starts_at: t(1_000),
            ends_at: t(2_000),
            price: Money {
                amount: 2_500,
                currency: Currency::parse("EUR").unwrap(),
            },
            guest: Guest::parse("Zoë Adams", "zoe@example.org").unwrap(),
            notes: None,
            requested_at: t(10),
        }
    }

    #[test]
    fn a_booking_folds_into_its_row_and_status_history() {
        let events = [
            requested(),
            E::BookingConfirmed {
                payment_id: PAYMENT,
                confirmed_at: t(20),
            },
            E::BookingCancelled {
                reason: Some("plans changed".into()),
                cancelled_at: t(30),
            },
        ];
        let folded = fold::<Bookings>(
            HashMap::new(),
            events.iter().zip(1..).map(|(e, n)| (ID, e, at(n))),
        );
        assert_eq!(folded.created, vec![ID]);
        let (booking, created) = &folded.effects.requested[&ID];
        assert_eq!((booking.resource_id.as_str(), *created), ("hall-1", at(1)));
        assert_eq!(
            folded.states[&ID],
            Row {
                booking_id: ID,
                status: BookingStatus::Cancelled,
                status_reason: Some("plans changed".into()),
                payment_id: Some(PAYMENT),
                stamp: Stamp::from(at(3)),
            }
        );
        let history: Vec<_> = folded
            .effects
            .history
            .rows
            .iter()
            .map(|v| (v.sequence, v.state.status, v.state.payment_id, v.valid_to))
            .collect();
        assert_eq!(
            history,
            vec![
                (1, BookingStatus::Pending, None, Some(at(2).recorded_at)),
                (
                    2,
                    BookingStatus::Confirmed,
                    Some(PAYMENT),
                    Some(at(3).recorded_at)
                ),
                (3, BookingStatus::Cancelled, Some(PAYMENT), None),
            ]
        );
    }

    #[test]
    fn a_change_to_a_stored_booking_keeps_its_earlier_reason() {
        let stored = Row {
            booking_id: ID,
            status: BookingStatus::Rejected,
            status_reason: Some("no seats".into()),
            payment_id: None,
            stamp: Stamp::from(at(2)),
        };
        let expired = E::BookingExpired { expired_at: t(40) };
        let folded = fold::<Bookings>(HashMap::from([(ID, stored)]), [(ID, &expired, at(3))]);
        assert_eq!(folded.changed, vec![ID]);
        let row = &folded.states[&ID];
        assert_eq!(row.status, BookingStatus::Expired);
        assert_eq!(row.status_reason.as_deref(), Some("no seats"));
    }
}
