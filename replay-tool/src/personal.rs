//! Sealed personal fields, as the auditor's tool shows them (ADR 0035): in plain text
//! while the data subject's key exists, as erased after. The key material comes from
//! `CHRONICLE_MASTER_KEY` or `CHRONICLE_MASTER_KEY_FILE`, as for the service.

use chronicle_eventstore::envelope::StoredEvent;
use chronicle_eventstore::personal::MasterKeys;
use chronicle_eventstore::personal::open::open_payloads;
use chronicle_eventstore::personal::seal::place;
use serde_json::Value;
use sqlx::PgPool;

/// The key material the environment names; says so on stderr when it is the
/// development keys.
pub fn master_keys() -> anyhow::Result<MasterKeys> {
    let keys = MasterKeys::from_env()?;
    if keys.is_development() {
        eprintln!(
            "note: CHRONICLE_MASTER_KEY(_FILE) is not set; personal fields open with the development keys"
        );
    }
    Ok(keys)
}

/// Where `event`'s sealed fields are bound to.
pub fn place_of(event: &StoredEvent) -> Vec<u8> {
    place(
        &event.aggregate_type,
        &event.aggregate_id,
        event.sequence,
        &event.event_type,
    )
}

/// Opens the sealed fields of `events` in place, with the keys as they are now.
pub async fn open_events(
    pool: &PgPool,
    keys: &MasterKeys,
    events: &mut [StoredEvent],
) -> anyhow::Result<()> {
    let places: Vec<Vec<u8>> = events.iter().map(place_of).collect();
    let payloads: Vec<(Vec<u8>, &Value)> = places
        .into_iter()
        .zip(events.iter())
        .map(|(here, e)| (here, &e.payload))
        .collect();
    let mut connection = pool.acquire().await?;
    let opened = open_payloads(&mut connection, keys, &payloads).await?;
    for (event, opened) in events.iter_mut().zip(opened) {
        if let Some(payload) = opened {
            event.payload = payload;
        }
    }
    Ok(())
}
