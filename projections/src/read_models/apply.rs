//! Set-based application of a batch of events to the read models.
//!
//! Per batch, not per event: one journal insert tells which events are new; each table
//! module loads the rows those events touch (locked), folds the events into them in
//! order, each guarded by the row's version, and writes every table with one statement
//! over arrays (`unnest`). A batch of hundreds of events costs about fifteen round
//! trips instead of three per event.

use std::collections::{HashMap, HashSet};

use chronicle_domain::subject::{ERASED, SubjectEvent};
use chronicle_domain::subscription::SubscriptionEvent;
use chronicle_domain::{AccountEvent, BookingEvent, PaymentEvent};
use chronicle_eventstore::envelope::Envelope;
use chronicle_eventstore::personal::seal::{SEALED_FIELD, mask};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Tx;
use super::account::Accounts;
use super::booking::Bookings;
use super::fold::{self, At};
use super::payment::Payments;
use super::subscription::Subscriptions;
use super::unnest::Unnest;

/// An event the read models can read, with its envelope and aggregate id.
pub(crate) struct Fresh<'a, E> {
    pub envelope: &'a Envelope,
    pub id: Uuid,
    pub event: E,
}

impl<E> Fresh<'_, E> {
    /// The aggregate, the event and where it stands, as a fold takes them.
    pub fn parts(&self) -> (Uuid, &E, At) {
        let at = At {
            sequence: self.envelope.sequence,
            recorded_at: self.envelope.recorded_at,
            position: self.envelope.global_position,
        };
        (self.id, &self.event, at)
    }
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
///
/// Sealed personal fields stay sealed (ADR 0035): the tables read `"[sealed]"` and
/// keep the sealed value beside (`bookings.personal`), which the query that shows a
/// booking opens with the subject's key. No key is needed here, and an erasure takes
/// effect on the read side the moment the key is gone.
pub async fn apply_envelopes(
    tx: &mut Tx<'_>,
    envelopes: &[Envelope],
) -> Result<BatchOutcome, sqlx::Error> {
    apply_from(tx, envelopes, &HashMap::new()).await
}

/// Where a consumed event came from: its Kafka partition and offset.
pub type Source = (i32, i64);

/// [`apply_envelopes`] for events consumed from Kafka: the journal also records, per
/// event, the message (`sources`, by global position) it was applied from, which the
/// live feed delivers it at (ADR 0037). A position sent twice in one batch counts from
/// its first message, the one applied.
pub async fn apply_delivered(
    tx: &mut Tx<'_>,
    envelopes: &[Envelope],
    sources: &HashMap<i64, Source>,
) -> Result<BatchOutcome, sqlx::Error> {
    apply_from(tx, envelopes, sources).await
}

async fn apply_from(
    tx: &mut Tx<'_>,
    envelopes: &[Envelope],
    sources: &HashMap<i64, Source>,
) -> Result<BatchOutcome, sqlx::Error> {
    // Plan every statement for this batch's arrays and the tables' current size. A plan
    // cached while the tables were small (a fresh rebuild, a new deployment) is a
    // sequential scan per lookup, and it stays cached while the tables grow: every batch
    // then reads whole tables (see docs/adr/0010). Planning costs far less than that.
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(&mut **tx)
        .await?;
    let mut outcome = BatchOutcome::default();
    let readable = readable_in_order(envelopes, &mut outcome);
    let journaled: Vec<(&Envelope, Uuid)> = readable.iter().map(|(e, r)| (*e, r.id())).collect();
    let new = journal(tx, &journaled, sources).await?;
    let mut fresh = ByAggregate::default();
    for (envelope, event) in readable {
        if new.contains(&envelope.global_position) {
            fresh.push(envelope, event);
        } else {
            outcome.duplicates += 1;
        }
    }
    let mut early = Vec::new();
    for tally in [
        fold::apply::<Accounts>(tx, &fresh.accounts).await?,
        fold::apply_from(
            Bookings::keeping(sealed(&fresh.bookings)),
            tx,
            &fresh.bookings,
        )
        .await?,
        fold::apply::<Payments>(tx, &fresh.payments).await?,
        fold::apply::<Subscriptions>(tx, &fresh.subscriptions).await?,
    ] {
        outcome.applied += tally.applied;
        outcome.duplicates += tally.stale;
        early.extend(tally.early);
    }
    outcome.applied += erase(tx, &fresh.subjects).await?;
    if !early.is_empty() {
        outcome.early = early.len();
        sqlx::query("DELETE FROM rm_applied_events WHERE global_position = ANY($1)")
            .bind(&early)
            .execute(&mut **tx)
            .await?;
    }
    Ok(outcome)
}

/// The envelopes' events, read, without repeats, each aggregate's in sequence order;
/// repeats and unreadable ones are counted in `outcome`.
fn readable_in_order<'a>(
    envelopes: &'a [Envelope],
    outcome: &mut BatchOutcome,
) -> Vec<(&'a Envelope, Readable)> {
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
    // All of an aggregate's messages come from one partition, and a redelivery can put
    // a copy of a later event before an earlier one within a batch.
    readable.sort_by(|(a, _), (b, _)| {
        (&a.aggregate_type, &a.aggregate_id, a.sequence).cmp(&(
            &b.aggregate_type,
            &b.aggregate_id,
            b.sequence,
        ))
    });
    readable
}

/// A batch's new events, by aggregate type.
#[derive(Default)]
struct ByAggregate<'a> {
    accounts: Vec<Fresh<'a, AccountEvent>>,
    bookings: Vec<Fresh<'a, BookingEvent>>,
    payments: Vec<Fresh<'a, PaymentEvent>>,
    subscriptions: Vec<Fresh<'a, SubscriptionEvent>>,
    subjects: Vec<SubjectEvent>,
}

impl<'a> ByAggregate<'a> {
    fn push(&mut self, envelope: &'a Envelope, event: Readable) {
        match event {
            Readable::Account(id, event) => self.accounts.push(Fresh {
                envelope,
                id,
                event,
            }),
            Readable::Booking(id, event) => self.bookings.push(Fresh {
                envelope,
                id,
                event,
            }),
            Readable::Payment(id, event) => self.payments.push(Fresh {
                envelope,
                id,
                event,
            }),
            Readable::Subscription(id, event) => self.subscriptions.push(Fresh {
                envelope,
                id,
                event,
            }),
            Readable::Subject(_, event) => self.subjects.push(event),
        }
    }
}

enum Readable {
    Account(Uuid, AccountEvent),
    Booking(Uuid, BookingEvent),
    Payment(Uuid, PaymentEvent),
    Subscription(Uuid, SubscriptionEvent),
    Subject(Uuid, SubjectEvent),
}

impl Readable {
    fn id(&self) -> Uuid {
        match self {
            Self::Account(id, _)
            | Self::Booking(id, _)
            | Self::Payment(id, _)
            | Self::Subscription(id, _)
            | Self::Subject(id, _) => *id,
        }
    }
}

/// Reads the envelope's aggregate id and payload (its sealed fields masked) as its
/// aggregate's event type.
fn read(envelope: &Envelope) -> Result<Readable, String> {
    let id = Uuid::parse_str(&envelope.aggregate_id)
        .map_err(|e| format!("aggregate id {:?}: {e}", envelope.aggregate_id))?;
    let payload = || mask(&envelope.payload).unwrap_or_else(|| envelope.payload.clone());
    let unreadable =
        |e: serde_json::Error| format!("{} {}: {e}", envelope.aggregate_type, envelope.event_type);
    match envelope.aggregate_type.as_str() {
        "Account" => serde_json::from_value(payload()).map(|e| Readable::Account(id, e)),
        "Booking" => serde_json::from_value(payload()).map(|e| Readable::Booking(id, e)),
        "Payment" => serde_json::from_value(payload()).map(|e| Readable::Payment(id, e)),
        "Subscription" => serde_json::from_value(payload()).map(|e| Readable::Subscription(id, e)),
        "Subject" => serde_json::from_value(payload()).map(|e| Readable::Subject(id, e)),
        other => return Err(format!("unknown aggregate type {other:?}")),
    }
    .map_err(unreadable)
}

/// The sealed personal fields of the applied booking events, with where they were
/// sealed (what opens them), by booking: kept beside their rows (`bookings.personal`).
fn sealed(bookings: &[Fresh<'_, BookingEvent>]) -> HashMap<Uuid, Value> {
    bookings
        .iter()
        .filter_map(|fresh| {
            let envelope = fresh.envelope;
            let sealed = envelope.payload.get(SEALED_FIELD)?.clone();
            let kept = json!({
                "sealed": sealed,
                "sequence": envelope.sequence,
                "event_type": envelope.event_type,
            });
            Some((fresh.id, kept))
        })
        .collect()
}

/// Applies erasures: the bookings of each erased subject show their guest as erased,
/// lose their notes and the sealed value kept beside. Idempotent, so a redelivery or a
/// replay changes nothing more. Returns how many erasures it applied.
async fn erase(tx: &mut Tx<'_>, erasures: &[SubjectEvent]) -> Result<usize, sqlx::Error> {
    let bookings: Vec<Uuid> = erasures
        .iter()
        .flat_map(|e| e.streams_of("Booking"))
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    if !bookings.is_empty() {
        sqlx::query(
            "UPDATE bookings SET guest_name = $2, guest_email = $2, notes = NULL, personal = NULL \
              WHERE booking_id = ANY($1)",
        )
        .bind(&bookings)
        .bind(ERASED)
        .execute(&mut **tx)
        .await?;
    }
    Ok(erasures.len())
}

/// Records the events in the journal; returns the positions that were not there yet.
async fn journal(
    tx: &mut Tx<'_>,
    events: &[(&Envelope, Uuid)],
    sources: &HashMap<i64, Source>,
) -> Result<HashSet<i64>, sqlx::Error> {
    let source = |e: &Envelope| sources.get(&e.global_position).copied();
    let new: Vec<i64> = Unnest::of(events)
        .column("global_position", |(e, _)| e.global_position)
        .column("event_id", |(e, _)| e.event_id)
        .column("aggregate_type", |(e, _)| e.aggregate_type.as_str())
        .column("aggregate_id", |(_, id)| *id)
        .column("sequence", |(e, _)| e.sequence)
        .column("event_type", |(e, _)| e.event_type.as_str())
        .column("recorded_at", |(e, _)| e.recorded_at)
        .column("event_version", |(e, _)| e.event_version.as_str())
        .column("payload", |(e, _)| &e.payload)
        .column("metadata", |(e, _)| {
            serde_json::to_value(&e.metadata).unwrap_or_default()
        })
        .column("kafka_partition", |(e, _)| source(e).map(|(p, _)| p))
        .column("kafka_offset", |(e, _)| source(e).map(|(_, o)| o))
        .insert(
            "rm_applied_events",
            "ON CONFLICT (global_position) DO NOTHING RETURNING global_position",
        )
        .returning(tx)
        .await?;
    Ok(new.into_iter().collect())
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
