//! Upcasters: how events stored under an older schema version are read as the current
//! one. Each is a pure function of the stored payload; the event store applies them when
//! loading, so aggregates and projections only ever see current versions.

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster};
use serde_json::Value;

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
    vec![Box::new(SemanticVersionEventUpcaster::new(
        "AccountOpened",
        "2",
        Box::new(account_opened_v1_to_v2),
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
        let event: AccountEvent = serde_json::from_value(account_opened_v1_to_v2(v1)).unwrap();
        let AccountEvent::AccountOpened {
            overdraft_limit, ..
        } = event
        else {
            panic!("expected AccountOpened, got {event:?}");
        };
        assert_eq!(overdraft_limit, 0);
    }
}
