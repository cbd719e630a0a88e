//! Sealing the personal fields of a stored payload (ADR 0035): `guest` and `notes` are
//! taken out and put back as one `personal` object, `{subject, key_version, sealed}`,
//! `sealed` being the base64 of the nonce and the AES-256-GCM ciphertext of the removed
//! fields' JSON under the subject's data key. The place of the event (stream, sequence,
//! type) is the associated data, so a sealed value opens nowhere else.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::keys::{DataKey, KeyError, SubjectId, open_bytes, seal_bytes};

/// The payload fields that hold personal data.
pub const PERSONAL_FIELDS: [&str; 2] = ["guest", "notes"];

/// The field that holds them sealed.
pub const SEALED_FIELD: &str = "personal";

pub use chronicle_domain::subject::ERASED;

/// What a sealed field reads as where it is kept sealed (the read tables): the
/// query that shows it opens the sealed value kept beside.
pub const SEALED: &str = "[sealed]";

/// The sealed personal fields of one payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub subject: String,
    pub key_version: i32,
    pub sealed: String,
}

/// Where an event is: what its sealed fields are bound to.
pub fn place(aggregate_type: &str, aggregate_id: &str, sequence: i64, event_type: &str) -> Vec<u8> {
    format!("chronicle/personal/{aggregate_type}/{aggregate_id}/{sequence}/{event_type}")
        .into_bytes()
}

/// The object of `value` that holds personal fields: the value itself (an event's
/// payload) or its `state` (a snapshot of an aggregate).
fn holder(value: &mut Value) -> Option<&mut Map<String, Value>> {
    let holds = |v: &Value| {
        PERSONAL_FIELDS
            .iter()
            .chain([&SEALED_FIELD])
            .any(|f| v.get(*f).is_some())
    };
    if holds(value) {
        return value.as_object_mut();
    }
    match value.get_mut("state") {
        Some(state) if holds(state) => state.as_object_mut(),
        _ => None,
    }
}

/// The e-mail address of the data subject whose fields `value` holds in plain text.
pub fn subject_email(value: &Value) -> Option<&str> {
    value
        .get("guest")
        .or_else(|| value.get("state")?.get("guest"))?
        .get("email")?
        .as_str()
}

/// Takes the personal fields out of `payload`, if it has any.
fn take_personal(payload: &mut Map<String, Value>) -> Option<Map<String, Value>> {
    let taken: Map<String, Value> = PERSONAL_FIELDS
        .iter()
        .filter_map(|field| payload.remove(*field).map(|v| ((*field).to_owned(), v)))
        .collect();
    (!taken.is_empty()).then_some(taken)
}

/// Seals `payload`'s personal fields in place under `key`; a payload without any is
/// left alone. Returns whether it sealed.
pub fn seal(
    payload: &mut Value,
    subject: &SubjectId,
    key_version: i32,
    key: &DataKey,
    place: &[u8],
) -> bool {
    let Some(object) = holder(payload) else {
        return false;
    };
    let Some(personal) = take_personal(object) else {
        return false;
    };
    let plaintext = Value::Object(personal).to_string();
    let sealed = seal_bytes(&key.cipher(), place, plaintext.as_bytes());
    let sealed = Sealed {
        subject: subject.as_str().to_owned(),
        key_version,
        sealed: STANDARD.encode(sealed),
    };
    object.insert(
        SEALED_FIELD.to_owned(),
        serde_json::to_value(sealed).unwrap_or(Value::Null),
    );
    true
}

/// `payload` with its sealed fields masked, for a reader that keeps them sealed: the
/// guest reads `"[sealed]"`, no notes, and the `personal` object is gone. `None` when
/// nothing in it is sealed.
pub fn mask(payload: &Value) -> Option<Value> {
    sealed_part(payload)?;
    let mut masked = payload.clone();
    let object = holder(&mut masked)?;
    object.remove(SEALED_FIELD);
    object.insert(
        "guest".to_owned(),
        serde_json::json!({ "name": SEALED, "email": SEALED }),
    );
    Some(masked)
}

/// The sealed fields of `payload` (or of its `state`), if it has them.
pub fn sealed_part(payload: &Value) -> Option<Sealed> {
    let sealed = payload
        .get(SEALED_FIELD)
        .or_else(|| payload.get("state")?.get(SEALED_FIELD))?;
    serde_json::from_value(sealed.clone()).ok()
}

/// Puts `payload`'s personal fields back in place: opened with `key`, or, without a key
/// (the subject was erased), as erased (`guest` name and e-mail `"[erased]"`, no notes).
/// A payload with nothing sealed (plain, from before sealing) is left as it is.
pub fn open(payload: &mut Value, key: Option<&DataKey>, place: &[u8]) -> Result<(), KeyError> {
    let Some(sealed) = sealed_part(payload) else {
        return Ok(());
    };
    let Some(object) = holder(payload) else {
        return Ok(());
    };
    object.remove(SEALED_FIELD);
    let Some(key) = key else {
        object.insert(
            "guest".to_owned(),
            serde_json::json!({ "name": ERASED, "email": ERASED }),
        );
        return Ok(());
    };
    let bytes = STANDARD
        .decode(&sealed.sealed)
        .map_err(|_| KeyError::DoesNotOpen)?;
    let plaintext = open_bytes(&key.cipher(), place, &bytes)?;
    let Ok(Value::Object(fields)) = serde_json::from_slice(&plaintext) else {
        return Err(KeyError::DoesNotOpen);
    };
    object.extend(fields);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::personal::keys::MasterKeys;

    fn requested() -> Value {
        json!({
            "type": "BookingRequested",
            "booking_id": "b1",
            "guest": { "name": "Ada Lovelace", "email": "ada@example.org" },
            "notes": "window seat, vegetarian",
            "price": 100
        })
    }

    #[test]
    fn sealed_fields_leave_no_plaintext_and_open_back_in_their_place_only() {
        let keys = MasterKeys::development();
        let subject = keys.subject_id("ada@example.org");
        let key = DataKey::generate();
        let here = place("Booking", "b1", 1, "BookingRequested");
        let mut payload = requested();
        assert!(seal(&mut payload, &subject, 1, &key, &here));
        let stored = payload.to_string();
        for secret in ["Ada", "ada@example.org", "vegetarian"] {
            assert!(!stored.contains(secret), "{stored}");
        }
        assert_eq!(payload["price"], 100, "nothing else changes");
        assert_eq!(sealed_part(&payload).unwrap().subject, subject.as_str());

        let elsewhere = place("Booking", "b2", 1, "BookingRequested");
        assert_eq!(
            open(&mut payload.clone(), Some(&key), &elsewhere).unwrap_err(),
            KeyError::DoesNotOpen
        );
        assert_eq!(
            open(&mut payload.clone(), Some(&DataKey::generate()), &here).unwrap_err(),
            KeyError::DoesNotOpen
        );
        open(&mut payload, Some(&key), &here).unwrap();
        assert_eq!(payload, requested());
    }

    #[test]
    fn a_snapshot_seals_its_states_fields() {
        let keys = MasterKeys::development();
        let key = DataKey::generate();
        let here = place("Booking", "b1", 3, "snapshot");
        let snapshot = json!({ "version": 3, "state": requested() });
        assert_eq!(subject_email(&snapshot), Some("ada@example.org"));
        let mut sealed = snapshot.clone();
        assert!(seal(
            &mut sealed,
            &keys.subject_id("ada@example.org"),
            1,
            &key,
            &here
        ));
        assert!(!sealed.to_string().contains("Ada"));
        assert_eq!(subject_email(&sealed), None);
        assert!(sealed_part(&sealed).is_some());
        open(&mut sealed, Some(&key), &here).unwrap();
        assert_eq!(sealed, snapshot);
    }

    #[test]
    fn without_the_key_the_fields_read_as_erased_and_plain_payloads_pass() {
        let keys = MasterKeys::development();
        let key = DataKey::generate();
        let here = place("Booking", "b1", 1, "BookingRequested");
        let mut payload = requested();
        seal(
            &mut payload,
            &keys.subject_id("ada@example.org"),
            1,
            &key,
            &here,
        );
        open(&mut payload, None, &here).unwrap();
        assert_eq!(payload["guest"], json!({ "name": ERASED, "email": ERASED }));
        assert!(payload.get("notes").is_none() && payload.get(SEALED_FIELD).is_none());

        let mut plain = requested();
        open(&mut plain, None, &here).unwrap();
        assert_eq!(plain, requested());
        let mut impersonal = json!({ "type": "BookingCancelled", "reason": "x" });
        assert!(!seal(
            &mut impersonal,
            &keys.subject_id("a@b.c"),
            1,
            &key,
            &here
        ));
        assert!(impersonal.get(SEALED_FIELD).is_none());
    }
}
