//! Set-based application of a batch of events to the read models.
//!
//! Per batch, not per event: one journal insert tells which events are new; each table
//! module loads the rows those events touch (locked), folds the events into them in
//! order, each guarded by the row's version, and writes every table with one statement
//! over arrays (`unnest`). A batch of hundreds of events costs about fifteen round
//! trips instead of three per event.

use std::collections::HashSet;

use chronicle_domain::{AccountEvent, BookingEvent, PaymentEvent};
use chronicle_eventstore::envelope::Envelope;
use uuid::Uuid;

use super::{Tx, account, booking, payment};

/// An event the read models can read, with its envelope and aggregate id.
pub(crate) struct Fresh<'a, E> {
    pub envelope: &'a Envelope,
    pub id: Uuid,
    pub event: E,
}

/// What applying a batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events that changed the read models.
    pub applied: usize,
    /// Events recognised as already applied (by the journal or a version guard).
    pub duplicates: usize,
    /// Events these read models cannot read, by index in the batch, with the reason.
    /// Nothing of them was applied and the journal does not list them.
    pub unreadable: Vec<(usize, String)>,
    /// Events that came before their predecessor (see [`Order::Early`]); not applied,
    /// not in the journal, applied when they come again.
    pub early: usize,
}

/// What one table module did with its events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    pub applied: usize,
    pub stale: usize,
    /// Positions of events that came before their predecessor was applied.
    pub early: Vec<i64>,
}

/// Where an event stands against the version its aggregate's row is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// The next event: apply it.
    Next,
    /// Already applied (a redelivery): skip it.
    Stale,
    /// Its predecessor is not applied yet. It happens when the relay publishes again
    /// after a failure: messages its old producer still had in flight can land before
    /// the resent ones. Skip it and take it out of the journal; its resend follows its
    /// predecessor.
    Early,
}

impl Order {
    /// `version`: the row's version (`None` when there is no row); `sequence`: the
    /// event's.
    pub(crate) fn of(version: Option<i64>, sequence: i64) -> Self {
        match version {
            Some(version) if sequence <= version => Self::Stale,
            Some(version) if sequence == version + 1 => Self::Next,
            None if sequence == 1 => Self::Next,
            _ => Self::Early,
        }
    }

    /// Counts a skipped event in `tally`; true when the event is to be applied.
    pub(crate) fn admits(self, tally: &mut Tally, position: i64) -> bool {
        match self {
            Self::Next => true,
            Self::Stale => {
                tally.stale += 1;
                false
            }
            Self::Early => {
                tally.early.push(position);
                false
            }
        }
    }
}

/// Applies `envelopes` (each aggregate's events in sequence order) to the read models
/// inside `tx`: the journal, the tables and the temporal history. Shared by the
/// projector and by `chronicle-replay rebuild`, which runs it against fresh tables.
pub async fn apply_envelopes(
    tx: &mut Tx<'_>,
    envelopes: &[Envelope],
) -> Result<BatchOutcome, sqlx::Error> {
    // Plan every statement for this batch's arrays and the tables' current size. A plan
    // cached while the tables were small (a fresh rebuild, a new deployment) is a
    // sequential scan per lookup, and it stays cached while the tables grow: every batch
    // then reads whole tables (see docs/adr/0010). Planning costs far less than that.
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(&mut **tx)
        .await?;
    let mut outcome = BatchOutcome::default();
    let mut accounts = Vec::new();
    let mut bookings = Vec::new();
    let mut payments = Vec::new();
    let mut seen = HashSet::new();
    let mut readable = Vec::with_capacity(envelopes.len());
    for (index, envelope) in envelopes.iter().enumerate() {
        if !seen.insert(envelope.global_position) {
            outcome.duplicates += 1;
            continue;
        }
        match read(envelope) {
            Ok(event) => readable.push((envelope, event)),
            Err(reason) => outcome.unreadable.push((index, reason)),
        }
    }
    // Each aggregate's events in sequence order: all of an aggregate's messages come
    // from one partition, and a redelivery can put a copy of a later event before an
    // earlier one within a batch.
    readable.sort_by(|(a, _), (b, _)| {
        (&a.aggregate_type, &a.aggregate_id, a.sequence).cmp(&(
            &b.aggregate_type,
            &b.aggregate_id,
            b.sequence,
        ))
    });
    let new = journal(tx, readable.iter().map(|(e, r)| (*e, r.id()))).await?;
    for (envelope, event) in readable {
        if !new.contains(&envelope.global_position) {
            outcome.duplicates += 1;
            continue;
        }
        match event {
            Readable::Account(id, event) => accounts.push(Fresh {
                envelope,
                id,
                event,
            }),
            Readable::Booking(id, event) => bookings.push(Fresh {
                envelope,
                id,
                event,
            }),
            Readable::Payment(id, event) => payments.push(Fresh {
                envelope,
                id,
                event,
            }),
        }
    }
    let mut early = Vec::new();
    for tally in [
        account::apply(tx, &accounts).await?,
        booking::apply(tx, &bookings).await?,
        payment::apply(tx, &payments).await?,
    ] {
        outcome.applied += tally.applied;
        outcome.duplicates += tally.stale;
        early.extend(tally.early);
    }
    if !early.is_empty() {
        outcome.early = early.len();
        sqlx::query("DELETE FROM rm_applied_events WHERE global_position = ANY($1)")
            .bind(&early)
            .execute(&mut **tx)
            .await?;
    }
    Ok(outcome)
}

enum Readable {
    Account(Uuid, AccountEvent),
    Booking(Uuid, BookingEvent),
    Payment(Uuid, PaymentEvent),
}

impl Readable {
    fn id(&self) -> Uuid {
        match self {
            Self::Account(id, _) | Self::Booking(id, _) | Self::Payment(id, _) => *id,
        }
    }
}

/// Reads the envelope's aggregate id and payload as its aggregate's event type.
fn read(envelope: &Envelope) -> Result<Readable, String> {
    let id = Uuid::parse_str(&envelope.aggregate_id)
        .map_err(|e| format!("aggregate id {:?}: {e}", envelope.aggregate_id))?;
    let payload = || envelope.payload.clone();
    let unreadable =
        |e: serde_json::Error| format!("{} {}: {e}", envelope.aggregate_type, envelope.event_type);
    match envelope.aggregate_type.as_str() {
        "Account" => serde_json::from_value(payload()).map(|e| Readable::Account(id, e)),
        "Booking" => serde_json::from_value(payload()).map(|e| Readable::Booking(id, e)),
        "Payment" => serde_json::from_value(payload()).map(|e| Readable::Payment(id, e)),
        other => return Err(format!("unknown aggregate type {other:?}")),
    }
    .map_err(unreadable)
}

/// Records the events in the journal; returns the positions that were not there yet.
async fn journal<'a>(
    tx: &mut Tx<'_>,
    events: impl Iterator<Item = (&'a Envelope, Uuid)>,
) -> Result<HashSet<i64>, sqlx::Error> {
    let mut columns = JournalColumns::default();
    for (envelope, id) in events {
        columns.push(envelope, id);
    }
    if columns.positions.is_empty() {
        return Ok(HashSet::new());
    }
    let JournalColumns {
        positions,
        types,
        ids,
        sequences,
        event_types,
        recorded,
        versions,
        payloads,
        metadata,
    } = columns;
    let new: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO rm_applied_events (global_position, aggregate_type, aggregate_id, sequence, \
         event_type, recorded_at, event_version, payload, metadata) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], \
                              $6::timestamptz[], $7::text[], $8::jsonb[], $9::jsonb[]) \
         ON CONFLICT (global_position) DO NOTHING RETURNING global_position",
    )
    .bind(positions)
    .bind(types)
    .bind(ids)
    .bind(sequences)
    .bind(event_types)
    .bind(recorded)
    .bind(versions)
    .bind(payloads)
    .bind(metadata)
    .fetch_all(&mut **tx)
    .await?;
    Ok(new.into_iter().collect())
}

#[derive(Default)]
struct JournalColumns {
    positions: Vec<i64>,
    types: Vec<String>,
    ids: Vec<Uuid>,
    sequences: Vec<i64>,
    event_types: Vec<String>,
    recorded: Vec<chrono::DateTime<chrono::Utc>>,
    versions: Vec<String>,
    payloads: Vec<serde_json::Value>,
    metadata: Vec<serde_json::Value>,
}

impl JournalColumns {
    fn push(&mut self, envelope: &Envelope, id: Uuid) {
        self.positions.push(envelope.global_position);
        self.types.push(envelope.aggregate_type.clone());
        self.ids.push(id);
        self.sequences.push(envelope.sequence);
        self.event_types.push(envelope.event_type.clone());
        self.recorded.push(envelope.recorded_at);
        self.versions.push(envelope.event_version.clone());
        self.payloads.push(envelope.payload.clone());
        self.metadata
            .push(serde_json::to_value(&envelope.metadata).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_next_stale_or_early_against_its_row() {
        assert_eq!(Order::of(None, 1), Order::Next);
        assert_eq!(Order::of(None, 2), Order::Early);
        assert_eq!(Order::of(Some(3), 4), Order::Next);
        assert_eq!(Order::of(Some(3), 3), Order::Stale);
        assert_eq!(Order::of(Some(3), 1), Order::Stale);
        assert_eq!(Order::of(Some(3), 5), Order::Early);
    }

    #[test]
    fn only_the_next_event_is_admitted_and_the_others_are_counted() {
        let mut tally = Tally::default();
        assert!(Order::Next.admits(&mut tally, 10));
        assert!(!Order::Stale.admits(&mut tally, 11));
        assert!(!Order::Early.admits(&mut tally, 12));
        assert_eq!(
            tally,
            Tally {
                applied: 0,
                stale: 1,
                early: vec![12]
            }
        );
    }
}
