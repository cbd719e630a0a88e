//! The wire form of an event on Kafka: one JSON envelope per message, keyed by
//! aggregate id, on one topic per aggregate type.

use chrono::{DateTime, Utc};
use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
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
pub const AGGREGATE_TYPES: [&str; 3] = ["Account", "Booking", "Payment"];

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

/// One event as published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub global_position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    pub payload: Value,
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

/// The next commit-safe events after the point `($1` tx id as text`, $2` global
/// position`)`, at most `$3`, in commit order: only rows whose transaction can no longer
/// be in flight anywhere in the cluster, ordered by `(tx_id, global_position)` on the
/// `events_commit_order` index. The relay publishes by it and a rebuild replays by it.
pub const SELECT_COMMIT_SAFE_AFTER: &str = "\
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
       global_position, tx_id::text AS tx_id, recorded_at
  FROM events
 WHERE (events.tx_id, events.global_position) > ($1::text::xid8, $2)
   AND events.tx_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY events.tx_id, events.global_position
 LIMIT $3";

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
        assert_eq!(all_topics("").len(), 3);
    }
}
