//! Opening stored payloads on the read side (projectors, the replay tool, the access
//! endpoint). Keys are read as they are now, never from a cache: a reader must not
//! show data erased a moment ago (ADR 0035).

use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgConnection;

use super::keys::{MasterKeys, SubjectId};
use super::seal::{open, place, sealed_part};
use super::store::{KeyRow, current_keys, unwrap_rows};
use crate::envelope::Envelope;
use crate::error::StoreError;

/// Opens each `(place, payload)` with the keys as they are now: `Some(opened)` for a
/// sealed payload (its fields in plain text, or as erased when the key is gone), `None`
/// for one with nothing sealed.
pub async fn open_payloads(
    connection: &mut PgConnection,
    keys: &MasterKeys,
    payloads: &[(Vec<u8>, &Value)],
) -> Result<Vec<Option<Value>>, StoreError> {
    let sealed: Vec<_> = payloads.iter().map(|(_, p)| sealed_part(p)).collect();
    let mut wanted: Vec<(SubjectId, i32)> = sealed
        .iter()
        .flatten()
        .map(|s| (SubjectId(s.subject.clone()), s.key_version))
        .collect();
    if wanted.is_empty() {
        return Ok(vec![None; payloads.len()]);
    }
    wanted.sort();
    wanted.dedup();
    let found = current_keys(connection, keys, &wanted).await?;
    let mut opened = Vec::with_capacity(payloads.len());
    for ((here, payload), sealed) in payloads.iter().zip(sealed) {
        let Some(sealed) = sealed else {
            opened.push(None);
            continue;
        };
        let key = found.get(&(SubjectId(sealed.subject), sealed.key_version));
        let mut payload = (*payload).clone();
        open(&mut payload, key, here).map_err(|e| StoreError::Keys(e.to_string()))?;
        opened.push(Some(payload));
    }
    Ok(opened)
}

/// The opened payloads of the sealed ones among `envelopes`, by global position.
pub async fn open_envelopes(
    connection: &mut PgConnection,
    keys: &MasterKeys,
    envelopes: &[Envelope],
) -> Result<HashMap<i64, Value>, StoreError> {
    let sealed: Vec<&Envelope> = envelopes
        .iter()
        .filter(|e| sealed_part(&e.payload).is_some())
        .collect();
    if sealed.is_empty() {
        return Ok(HashMap::new());
    }
    let payloads: Vec<(Vec<u8>, &Value)> = sealed
        .iter()
        .map(|e| {
            let here = place(
                &e.aggregate_type,
                &e.aggregate_id,
                e.sequence,
                &e.event_type,
            );
            (here, &e.payload)
        })
        .collect();
    let opened = open_payloads(connection, keys, &payloads).await?;
    Ok(sealed
        .iter()
        .zip(opened)
        .filter_map(|(e, opened)| Some((e.global_position, opened?)))
        .collect())
}

/// Every key not erased, unwrapped, as one snapshot of `subject_keys` holds them: for a
/// tool that reads the whole store in one snapshot (`chronicle-replay diff`), where a
/// lookup per event would not do and the keys cannot change under it.
#[derive(Default)]
pub struct KeyRing {
    keys: HashMap<(SubjectId, i32), super::keys::DataKey>,
}

impl KeyRing {
    /// Loads the ring on `connection` (in the transaction the store is read in).
    pub async fn load(
        connection: &mut PgConnection,
        keys: &MasterKeys,
    ) -> Result<Self, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT subject_id, key_version, master_key_id, wrapped FROM subject_keys \
              WHERE wrapped IS NOT NULL",
        )
        .fetch_all(connection)
        .await?;
        let ring = unwrap_rows(keys, rows)?;
        Ok(Self { keys: ring })
    }

    /// Opens `payload` (stored at `here`) in place: plain text with a key of the ring,
    /// erased without. A payload with nothing sealed is left alone.
    pub fn open(&self, payload: &mut Value, here: &[u8]) -> Result<(), StoreError> {
        let Some(sealed) = sealed_part(payload) else {
            return Ok(());
        };
        let key = self
            .keys
            .get(&(SubjectId(sealed.subject), sealed.key_version));
        open(payload, key, here).map_err(|e| StoreError::Keys(e.to_string()))
    }
}
