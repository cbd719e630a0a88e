//! Erasure and access (GDPR Art. 17 and 15, ADR 0035).
//!
//! An erasure is one transaction: the subject's live data keys are emptied and a
//! `PersonalDataErased` event naming every stream they sealed is appended to the
//! subject's stream. Both happen or neither; a second erasure finds no live key and
//! answers with the first. Access lists what the store holds on a subject, opened.

use chronicle_domain::subject::{SUBJECT, StreamRef, SubjectEvent};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use super::open::open_payloads;
use super::seal::{PERSONAL_FIELDS, place};
use super::store::KeyStore;
use crate::error::StoreError;

/// The version written with `PersonalDataErased` events.
const EVENT_VERSION: &str = "1.0";

/// What an erasure did, or what an earlier one did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Erasure {
    pub subject_id: String,
    pub erased_at: DateTime<Utc>,
    /// The key versions destroyed.
    pub key_versions: Vec<i32>,
    /// The streams whose sealed data no longer opens.
    pub streams: Vec<StreamRef>,
    /// Where the `PersonalDataErased` event stands in the log.
    pub position: i64,
    /// False when nothing was left to erase and this is the earlier erasure.
    #[serde(skip)]
    pub fresh: bool,
}

impl Erasure {
    fn from_event(position: i64, payload: Value, fresh: bool) -> Result<Self, StoreError> {
        let SubjectEvent::PersonalDataErased {
            subject_id,
            erased_at,
            key_versions,
            streams,
        } = serde_json::from_value(payload)
            .map_err(|e| StoreError::Keys(format!("a PersonalDataErased event: {e}")))?;
        Ok(Self {
            subject_id,
            erased_at,
            key_versions,
            streams,
            position,
            fresh,
        })
    }
}

/// Erases the data subject `email` names: `None` when Chronicle never held data of
/// theirs. `metadata` is stored with the event (who asked, the request).
pub async fn erase(
    pool: &PgPool,
    keys: &KeyStore,
    email: &str,
    metadata: &Value,
) -> Result<Option<Erasure>, StoreError> {
    let subject = keys.master_keys().subject_id(email);
    let stream = subject.stream_id().to_string();
    let mut tx = pool.begin().await?;
    // Takes the key rows' locks first: an append sealing under one of them (it holds
    // the row FOR SHARE) commits before this goes on, so its stream is named below.
    let erased: Vec<(i32, DateTime<Utc>)> = sqlx::query_as(
        "UPDATE subject_keys SET wrapped = NULL, master_key_id = NULL, erased_at = now() \
          WHERE subject_id = $1 AND wrapped IS NOT NULL \
         RETURNING key_version, erased_at",
    )
    .bind(subject.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let Some((_, erased_at)) = erased.first().copied() else {
        tx.rollback().await?;
        return earlier(pool, &stream).await;
    };
    let mut key_versions: Vec<i32> = erased.iter().map(|(v, _)| *v).collect();
    key_versions.sort_unstable();
    // The events that hold the subject's data, by `events_by_subject`.
    let streams: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT aggregate_type, aggregate_id FROM events \
          WHERE payload ? 'personal' AND payload -> 'personal' ->> 'subject' = $1 \
            AND (payload -> 'personal' ->> 'key_version')::int = ANY($2) \
          ORDER BY 1, 2",
    )
    .bind(subject.as_str())
    .bind(&key_versions)
    .fetch_all(&mut *tx)
    .await?;
    let event = SubjectEvent::PersonalDataErased {
        subject_id: subject.as_str().to_owned(),
        erased_at,
        key_versions,
        streams: streams
            .into_iter()
            .map(|(aggregate_type, aggregate_id)| StreamRef {
                aggregate_type,
                aggregate_id,
            })
            .collect(),
    };
    let payload =
        serde_json::to_value(&event).map_err(|e| StoreError::Keys(format!("erasure: {e}")))?;
    let (position,): (i64,) = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, \
                             payload, metadata) \
         SELECT $1, $2, coalesce(max(sequence), 0) + 1, $3, $4, $5, $6 \
           FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 \
         RETURNING global_position",
    )
    .bind(SUBJECT)
    .bind(&stream)
    .bind(event.event_type())
    .bind(EVENT_VERSION)
    .bind(&payload)
    .bind(metadata)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    keys.forget(&subject);
    Erasure::from_event(position, payload, true).map(Some)
}

/// The subject's last erasure, if it has one.
async fn earlier(pool: &PgPool, stream: &str) -> Result<Option<Erasure>, StoreError> {
    let last: Option<(i64, Value)> = sqlx::query_as(
        "SELECT global_position, payload FROM events \
          WHERE aggregate_type = $1 AND aggregate_id = $2 \
          ORDER BY sequence DESC LIMIT 1",
    )
    .bind(SUBJECT)
    .bind(stream)
    .fetch_optional(pool)
    .await?;
    last.map(|(position, payload)| Erasure::from_event(position, payload, false))
        .transpose()
}

/// One stored event holding a subject's personal data.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Holding {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    pub global_position: i64,
    pub key_version: i32,
    /// The personal fields, in plain text; `None` when their key was erased.
    pub data: Option<Value>,
}

/// A stored event of a subject's stream.
#[derive(sqlx::FromRow)]
struct HeldRow {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    recorded_at: DateTime<Utc>,
    global_position: i64,
    payload: Value,
}

/// What Chronicle holds on a subject.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PersonalData {
    pub subject_id: String,
    pub holdings: Vec<Holding>,
    pub erasures: Vec<Erasure>,
}

/// Everything the store holds on the subject `email` names, opened where the key still
/// exists, with the subject's erasures; `None` when it holds nothing and never did.
pub async fn personal_data(
    pool: &PgPool,
    keys: &KeyStore,
    email: &str,
) -> Result<Option<PersonalData>, StoreError> {
    let subject = keys.master_keys().subject_id(email);
    let stream = subject.stream_id().to_string();
    let mut connection = pool.acquire().await?;
    let rows: Vec<HeldRow> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, recorded_at, \
                global_position, payload \
           FROM events \
          WHERE payload ? 'personal' AND payload -> 'personal' ->> 'subject' = $1 \
          ORDER BY global_position",
    )
    .bind(subject.as_str())
    .fetch_all(&mut *connection)
    .await?;
    let erasures: Vec<(i64, Value)> = sqlx::query_as(
        "SELECT global_position, payload FROM events \
          WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
    )
    .bind(SUBJECT)
    .bind(&stream)
    .fetch_all(&mut *connection)
    .await?;
    if rows.is_empty() && erasures.is_empty() {
        return Ok(None);
    }
    let payloads: Vec<(Vec<u8>, &Value)> = rows
        .iter()
        .map(|r| {
            let here = place(
                &r.aggregate_type,
                &r.aggregate_id,
                r.sequence,
                &r.event_type,
            );
            (here, &r.payload)
        })
        .collect();
    let opened = open_payloads(&mut connection, keys.master_keys(), &payloads).await?;
    let erasures = erasures
        .into_iter()
        .map(|(position, payload)| Erasure::from_event(position, payload, false))
        .collect::<Result<Vec<_>, _>>()?;
    let holdings = rows
        .iter()
        .zip(opened)
        .map(|(row, opened)| {
            let key_version = row.payload["personal"]["key_version"].as_i64().unwrap_or(0) as i32;
            let erased = erasures
                .iter()
                .any(|e| e.key_versions.contains(&key_version));
            let data = (!erased)
                .then(|| personal_fields(opened.as_ref()))
                .flatten();
            Holding {
                aggregate_type: row.aggregate_type.clone(),
                aggregate_id: row.aggregate_id.clone(),
                sequence: row.sequence,
                event_type: row.event_type.clone(),
                recorded_at: row.recorded_at,
                global_position: row.global_position,
                key_version,
                data,
            }
        })
        .collect();
    Ok(Some(PersonalData {
        subject_id: subject.as_str().to_owned(),
        holdings,
        erasures,
    }))
}

/// The personal fields of an opened payload.
fn personal_fields(opened: Option<&Value>) -> Option<Value> {
    let opened = opened?;
    let fields: serde_json::Map<String, Value> = PERSONAL_FIELDS
        .iter()
        .filter_map(|f| Some(((*f).to_owned(), opened.get(*f)?.clone())))
        .collect();
    Some(Value::Object(fields))
}
