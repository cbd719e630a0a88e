//! Upcasters: how events stored under an older schema version are read as the current
//! one. Each is a pure function of the stored payload; the event store applies them when
//! loading, so aggregates and projections only ever see current versions.

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde_json::Value;

/// Reads `event_type` stored under an older version as version `to`. Versions are
/// whole numbers written as text ("1", "2"), the form `DomainEvent::event_version`
/// writes; an upcast event carries exactly that form. (cqrs-es's
/// `SemanticVersionEventUpcaster` would write "2.0.0" for the same event read through
/// an upcaster and "2" for one written new.)
pub struct VersionUpcaster {
    event_type: &'static str,
    to: u32,
    upcast: fn(Value) -> Value,
}

impl VersionUpcaster {
    pub fn new(event_type: &'static str, to: u32, upcast: fn(Value) -> Value) -> Self {
        Self {
            event_type,
            to,
            upcast,
        }
    }
}

/// The major number of a stored version ("1", or "1.0.0" as other tools write it).
fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

impl EventUpcaster for VersionUpcaster {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_type == self.event_type && major(event_version).is_some_and(|v| v < self.to)
    }

    fn upcast(&self, event: SerializedEvent) -> SerializedEvent {
        SerializedEvent {
            payload: (self.upcast)(event.payload),
            event_version: self.to.to_string(),
            ..event
        }
    }
}

/// `AccountOpened` v1 predates overdrafts; such accounts have a limit of zero.
pub fn account_opened_v1_to_v2(mut payload: Value) -> Value {
    if let Value::Object(fields) = &mut payload {
        fields
            .entry("overdraft_limit")
            .or_insert_with(|| Value::from(0));
    }
    payload
}

/// Every upcaster, in the order they apply.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(VersionUpcaster::new(
        "AccountOpened",
        2,
        account_opened_v1_to_v2,
    ))]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::AccountEvent;

    #[test]
    fn a_v1_account_opened_reads_as_v2_with_no_overdraft() {
        let v1 = json!({
            "type": "AccountOpened",
            "account_id": "00000000-0000-0000-0000-00000000acc0",
            "owner": "alice",
            "currency": "EUR",
            "opened_at": "2020-01-01T00:00:00Z"
        });
        assert!(serde_json::from_value::<AccountEvent>(v1.clone()).is_err());
        let upcast = upcasters();
        assert!(upcast[0].can_upcast("AccountOpened", "1"));
        assert!(!upcast[0].can_upcast("AccountOpened", "2"));
        assert!(upcast[0].can_upcast("AccountOpened", "1.0.0"));
        assert!(!upcast[0].can_upcast("AccountClosed", "1"));
        assert!(!upcast[0].can_upcast("AccountOpened", "one"));
        let event: AccountEvent = serde_json::from_value(account_opened_v1_to_v2(v1)).unwrap();
        let AccountEvent::AccountOpened {
            overdraft_limit, ..
        } = event
        else {
            panic!("expected AccountOpened, got {event:?}");
        };
        assert_eq!(overdraft_limit, 0);
    }

    #[test]
    fn an_upcast_event_carries_the_version_a_new_one_is_written_with() {
        let stored = SerializedEvent {
            aggregate_id: "a-1".into(),
            sequence: 1,
            aggregate_type: "Account".into(),
            event_type: "AccountOpened".into(),
            event_version: "1".into(),
            payload: json!({"type": "AccountOpened"}),
            metadata: json!({}),
        };
        let upcast = upcasters()[0].upcast(stored);
        assert_eq!(upcast.event_version, "2");
        assert_eq!(upcast.payload["overdraft_limit"], 0);
        assert_eq!(upcast.aggregate_id, "a-1");
    }
}
