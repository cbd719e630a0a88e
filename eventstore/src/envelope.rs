//! The wire form of an event on Kafka: one JSON envelope per message, keyed by
//! aggregate id, on one topic per aggregate type.

use chrono::{DateTime, Utc};
use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::types::Json;
use uuid::Uuid;

/// Namespace of deterministic event ids.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6368_726f_6e69_636c_6576_656e_7469_6473);

/// An event's id: a name-based UUID of its stream and sequence, so the same event has
/// the same id wherever and however often it is published.
pub fn event_id(aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Uuid {
    Uuid::new_v5(
        &EVENT_ID_NAMESPACE,
        format!("{aggregate_type}/{aggregate_id}/{sequence}").as_bytes(),
    )
}

/// The topic of an aggregate type: `{prefix}chronicle.{type in lower case}`.
pub fn topic_for(prefix: &str, aggregate_type: &str) -> String {
    format!("{prefix}chronicle.{}", aggregate_type.to_ascii_lowercase())
}

/// The aggregate types, in the order their topics are listed.
pub const AGGREGATE_TYPES: [&str; 5] = ["Account", "Booking", "Payment", "Subscription", "Subject"];

/// Every topic under `prefix`.
pub fn all_topics(prefix: &str) -> Vec<String> {
    AGGREGATE_TYPES
        .iter()
        .map(|t| topic_for(prefix, t))
        .collect()
}

/// Who caused an event and as part of what.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeMetadata {
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl EnvelopeMetadata {
    /// The public part of stored metadata (idempotency details stay in the store).
    pub fn from_stored(metadata: &Value) -> Self {
        let field = |name: &str| {
            metadata
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Self {
            actor: field("actor"),
            correlation_id: field("correlation_id"),
            causation_id: field("causation_id"),
            request_id: field("request_id"),
        }
    }
}

/// One event as published. Consumers read the payload as a [`Value`]; the relay writes
/// it as the stored JSON text when no upcaster applies (see [`OutgoingRow::encode`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P = Value> {
    pub event_id: Uuid,
    pub global_position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    pub payload: P,
    pub metadata: EnvelopeMetadata,
}

/// An event row as stored, with the columns the relay and the replay tool read.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StoredEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub global_position: i64,
    /// The appending transaction's id (`xid8`, as text).
    pub tx_id: String,
    pub recorded_at: DateTime<Utc>,
}

/// The columns of [`StoredEvent`]; append `FROM events` and conditions.
///
/// `tx_id` comes out as text under its own name, so an `ORDER BY tx_id` in a query
/// selecting these columns would sort by that text ("10" before "9"): qualify it as
/// `events.tx_id` to order by the transaction id itself.
pub const STORED_COLUMNS: &str = "aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata, global_position, tx_id::text AS tx_id, recorded_at";

/// `SELECT $columns` of the next commit-safe events after the point `($1` tx id as text`,
/// $2` global position`)`, at most `$3`, in commit order: only rows whose transaction can
/// no longer be in flight anywhere in the cluster, ordered by `(tx_id, global_position)`
/// on the `events_commit_order` index. One definition for every reader of that order.
macro_rules! commit_safe_after {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            "
  FROM events
 WHERE (events.tx_id, events.global_position) > ($1::text::xid8, $2)
   AND events.tx_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY events.tx_id, events.global_position
 LIMIT $3"
        )
    };
}
pub(crate) use commit_safe_after;

/// The next commit-safe events as [`StoredEvent`]s (see `commit_safe_after!`): what a
/// rebuild replays by.
pub const SELECT_COMMIT_SAFE_AFTER: &str = commit_safe_after!(
    "aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
       global_position, tx_id::text AS tx_id, recorded_at"
);

/// The same events as the relay reads them ([`OutgoingRow`]): the payload as the stored
/// JSON text (not parsed into a tree), the metadata as its public fields only.
pub const SELECT_OUTGOING_AFTER: &str = commit_safe_after!(
    "aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
       metadata->>'actor' AS actor, metadata->>'correlation_id' AS correlation_id,
       metadata->>'causation_id' AS causation_id, metadata->>'request_id' AS request_id,
       global_position, tx_id::text AS tx_id, recorded_at"
);

/// An event row as the relay reads it ([`SELECT_OUTGOING_AFTER`]).
#[derive(Debug, sqlx::FromRow)]
pub struct OutgoingRow {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Json<Box<RawValue>>,
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub request_id: Option<String>,
    pub global_position: i64,
    /// The appending transaction's id (`xid8`, as text).
    pub tx_id: String,
    pub recorded_at: DateTime<Utc>,
}

impl OutgoingRow {
    /// The message the relay publishes: the same envelope as [`StoredEvent::to_envelope`]
    /// gives. A payload no upcaster applies to is copied as stored, never parsed into a
    /// tree and written again (the relay's main cost per event before).
    pub fn encode(self, upcasters: &[Box<dyn EventUpcaster>]) -> serde_json::Result<Vec<u8>> {
        let metadata = EnvelopeMetadata {
            actor: self.actor,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            request_id: self.request_id,
        };
        let event_id = event_id(&self.aggregate_type, &self.aggregate_id, self.sequence);
        if !upcasters
            .iter()
            .any(|u| u.can_upcast(&self.event_type, &self.event_version))
        {
            return serde_json::to_vec(&Envelope {
                event_id,
                global_position: self.global_position,
                aggregate_type: self.aggregate_type,
                aggregate_id: self.aggregate_id,
                sequence: self.sequence,
                event_type: self.event_type,
                event_version: self.event_version,
                recorded_at: self.recorded_at,
                payload: self.payload.0,
                metadata,
            });
        }
        let stored = StoredEvent {
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: serde_json::from_str(self.payload.0.get())?,
            metadata: Value::Null,
            global_position: self.global_position,
            tx_id: self.tx_id,
            recorded_at: self.recorded_at,
        };
        let mut envelope = stored.to_envelope(upcasters);
        envelope.metadata = metadata;
        serde_json::to_vec(&envelope)
    }
}

impl StoredEvent {
    /// The event upcast to its current version (the stored row is never changed).
    pub fn upcast(&self, upcasters: &[Box<dyn EventUpcaster>]) -> SerializedEvent {
        let stored = SerializedEvent::new(
            self.aggregate_id.clone(),
            usize::try_from(self.sequence).unwrap_or_default(),
            self.aggregate_type.clone(),
            self.event_type.clone(),
            self.event_version.clone(),
            self.payload.clone(),
            self.metadata.clone(),
        );
        upcasters.iter().fold(stored, |event, upcaster| {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                upcaster.upcast(event)
            } else {
                event
            }
        })
    }

    /// The envelope published for this event: current version, deterministic id, the
    /// public part of the metadata.
    pub fn to_envelope(&self, upcasters: &[Box<dyn EventUpcaster>]) -> Envelope {
        let current = self.upcast(upcasters);
        Envelope {
            event_id: event_id(&self.aggregate_type, &self.aggregate_id, self.sequence),
            global_position: self.global_position,
            aggregate_type: current.aggregate_type,
            aggregate_id: current.aggregate_id,
            sequence: self.sequence,
            event_type: current.event_type,
            event_version: current.event_version,
            recorded_at: self.recorded_at,
            payload: current.payload,
            metadata: EnvelopeMetadata::from_stored(&self.metadata),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_stable_and_distinct() {
        assert_eq!(event_id("Account", "a", 1), event_id("Account", "a", 1));
        assert_ne!(event_id("Account", "a", 1), event_id("Account", "a", 2));
        assert_ne!(event_id("Account", "a", 1), event_id("Booking", "a", 1));
    }

    #[test]
    fn topics_are_prefixed_per_aggregate_type() {
        assert_eq!(topic_for("", "Booking"), "chronicle.booking");
        assert_eq!(
            topic_for("staging.", "Account"),
            "staging.chronicle.account"
        );
        assert_eq!(all_topics("").len(), 5);
    }

    fn stored(event_type: &str, version: &str, payload: Value) -> StoredEvent {
        StoredEvent {
            aggregate_type: "Account".to_owned(),
            aggregate_id: "00000000-0000-0000-0000-00000000acc0".to_owned(),
            sequence: 3,
            event_type: event_type.to_owned(),
            event_version: version.to_owned(),
            payload,
            metadata: serde_json::json!({
                "actor": "alice",
                "correlation_id": "c-1",
                "idempotency_key": "kept in the store",
            }),
            global_position: 42,
            tx_id: "777".to_owned(),
            recorded_at: "2026-12-05T10:00:00Z".parse().unwrap(),
        }
    }

    /// What the relay reads for `stored`: the payload as stored JSON text, whitespace
    /// and all (PostgreSQL prints `jsonb` with spaces; pretty-printing stands in here).
    fn outgoing(stored: &StoredEvent) -> OutgoingRow {
        let text = serde_json::to_string_pretty(&stored.payload).unwrap();
        let field = |name: &str| {
            stored
                .metadata
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        OutgoingRow {
            aggregate_type: stored.aggregate_type.clone(),
            aggregate_id: stored.aggregate_id.clone(),
            sequence: stored.sequence,
            event_type: stored.event_type.clone(),
            event_version: stored.event_version.clone(),
            payload: Json(RawValue::from_string(text).unwrap()),
            actor: field("actor"),
            correlation_id: field("correlation_id"),
            causation_id: field("causation_id"),
            request_id: field("request_id"),
            global_position: stored.global_position,
            tx_id: stored.tx_id.clone(),
            recorded_at: stored.recorded_at,
        }
    }

    #[test]
    fn the_relay_publishes_what_to_envelope_gives() {
        let upcasters = chronicle_domain::upcast::upcasters();
        let current = stored(
            "AccountCredited",
            "2",
            serde_json::json!({"type": "AccountCredited", "amount": 500, "reference": null}),
        );
        let v1 = stored(
            "AccountOpened",
            "1",
            serde_json::json!({"type": "AccountOpened", "owner": "alice", "currency": "EUR"}),
        );
        for event in [current, v1] {
            let published: Envelope =
                serde_json::from_slice(&outgoing(&event).encode(&upcasters).unwrap()).unwrap();
            assert_eq!(published, event.to_envelope(&upcasters));
        }
    }
}
