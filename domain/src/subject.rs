//! A data subject's stream (ADR 0035): the person whose personal data Chronicle holds,
//! named by a keyed hash of their e-mail address. Its one event says the subject's data
//! keys were destroyed; every projection applies it by showing that person's fields as
//! erased. It is appended by the erasure itself (in the transaction that destroys the
//! keys), not decided by an aggregate: there is no rule to decide.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The aggregate type of subject streams.
pub const SUBJECT: &str = "Subject";

/// What an erased personal field reads as.
pub const ERASED: &str = "[erased]";

/// A stream holding sealed data of the subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRef {
    pub aggregate_type: String,
    pub aggregate_id: String,
}

/// The events of a subject stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SubjectEvent {
    /// The subject's data keys `key_versions` were destroyed at `erased_at`: what they
    /// sealed in `streams` can no longer be read by anyone.
    PersonalDataErased {
        subject_id: String,
        erased_at: DateTime<Utc>,
        key_versions: Vec<i32>,
        streams: Vec<StreamRef>,
    },
}

impl SubjectEvent {
    /// The event's type as stored.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::PersonalDataErased { .. } => "PersonalDataErased",
        }
    }

    /// The ids of the erased streams of `aggregate_type`.
    pub fn streams_of<'a>(&'a self, aggregate_type: &'a str) -> impl Iterator<Item = &'a str> {
        let Self::PersonalDataErased { streams, .. } = self;
        streams
            .iter()
            .filter(move |s| s.aggregate_type == aggregate_type)
            .map(|s| s.aggregate_id.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_erasure_reads_back_and_names_its_streams_by_type() {
        let event = SubjectEvent::PersonalDataErased {
            subject_id: "ab".into(),
            erased_at: "2026-12-06T10:00:00Z".parse().unwrap(),
            key_versions: vec![1],
            streams: vec![
                StreamRef {
                    aggregate_type: "Booking".into(),
                    aggregate_id: "b1".into(),
                },
                StreamRef {
                    aggregate_type: "Payment".into(),
                    aggregate_id: "p1".into(),
                },
            ],
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "PersonalDataErased");
        assert_eq!(serde_json::from_value::<SubjectEvent>(json).unwrap(), event);
        assert_eq!(event.streams_of("Booking").collect::<Vec<_>>(), ["b1"]);
    }
}
