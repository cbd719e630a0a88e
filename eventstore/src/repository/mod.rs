//! Chronicle's event repository under cqrs-es: a command costs two statements, one to
//! load and one to append (ADR 0011).
//!
//! postgres-es loads a snapshot and the events after it in two statements, appends in
//! a transaction of its own (`BEGIN`, one `INSERT` per event, snapshot, `COMMIT`) and
//! returns nothing, so the command's position had to be looked up afterwards; with the
//! idempotency lookup before it, a deposit took seven round trips. Here:
//! - [`EventRepository::load`] reads the snapshot, the events after it, the stream's
//!   head and the request's idempotency record in one statement;
//! - [`EventRepository::append`] inserts the events and writes the snapshot in one
//!   statement (its own transaction), and returns every event's global position.
//!
//! The tables are postgres-es's, used the same way, so a stream written by either loads
//! through the other; `tests/tests/repository.rs` drives both with the same random
//! commands and compares what they store and load.

mod append;
mod group;
mod snapshot;
mod sql;
mod store;

use std::fmt;

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope};
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::error::{Refusal, StoreError, is_unavailable};
use crate::idempotency::IdempotencyRecord;
use crate::personal::KeyStore;
use crate::personal::SubjectId;
use crate::personal::seal::{open, place, sealed_part};
use crate::wake::RelayWake;

use append::Append;
pub use group::{GroupCommit, GroupCommitSettings};
pub use store::{CommandStore, Committed};

/// The metadata key carrying the id of the request that caused an event.
pub const REQUEST_ID_METADATA: &str = "request_id";

/// What a snapshot's sealed fields are bound to, in place of an event type.
pub const SNAPSHOT_PLACE: &str = "snapshot";

/// A stream as loaded: the aggregate and where its stream stands. This is the
/// `AggregateContext` cqrs-es hands from `load_aggregate` to `commit`.
#[derive(Debug)]
pub struct Stream<A> {
    pub aggregate_id: String,
    pub aggregate: A,
    /// The last sequence applied to `aggregate` (0 for a stream with no events).
    pub version: usize,
    /// The number of the stored snapshot this load started from, if one could be used.
    pub snapshot: Option<usize>,
    /// The last sequence that snapshot holds (0 without one).
    pub snapshot_sequence: usize,
    /// The global position of the stream's newest event (0 for none).
    pub head_position: i64,
}

impl<A: Aggregate> cqrs_es::AggregateContext<A> for Stream<A> {
    fn aggregate(&mut self) -> &mut A {
        &mut self.aggregate
    }
}

/// What [`EventRepository::load`] read.
#[derive(Debug)]
pub struct Loaded<A> {
    pub stream: Stream<A>,
    /// The committed record of the request's idempotency key, when one was asked for
    /// and exists: the request was executed before and must not run again.
    pub idempotency: Option<IdempotencyRecord>,
}

/// Where an appended event landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Position {
    pub sequence: i64,
    pub global_position: i64,
}

/// Why a load or an append failed.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// Another writer appended to the stream (or replaced its snapshot) first.
    #[error("the stream was appended to concurrently")]
    Conflict,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A stored event or snapshot does not decode as the aggregate's types.
    #[error("stored {what} does not decode: {reason}")]
    Decode { what: String, reason: String },
    /// An event or aggregate does not encode as JSON.
    #[error("cannot encode for storage: {0}")]
    Encode(#[from] serde_json::Error),
    /// A data subject's key could not be had (ADR 0035).
    #[error(transparent)]
    Keys(#[from] StoreError),
    /// The database refused this command's append inside a group commit; the others in
    /// the group were not affected.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A group commit's transaction as a whole failed; `unavailable` when the database
    /// could not be reached (whether it committed is then unknown, as for any append
    /// whose answer is lost).
    #[error("group commit failed: {reason}")]
    Group { unavailable: bool, reason: String },
}

impl<E: std::error::Error> From<RepositoryError> for AggregateError<E> {
    fn from(error: RepositoryError) -> Self {
        match error {
            RepositoryError::Conflict => Self::AggregateConflict,
            RepositoryError::Database(e) if is_unavailable(&e) => {
                Self::DatabaseConnectionError(Box::new(e))
            }
            // Kept as the driver's error, so `AppendRejection::find` sees its SQLSTATE.
            RepositoryError::Database(e) => Self::UnexpectedError(Box::new(e)),
            e @ RepositoryError::Decode { .. } => Self::DeserializationError(Box::new(e)),
            RepositoryError::Encode(e) => Self::UnexpectedError(Box::new(e)),
            RepositoryError::Keys(StoreError::Unavailable(e)) => {
                Self::DatabaseConnectionError(Box::new(e))
            }
            RepositoryError::Keys(e) => Self::UnexpectedError(Box::new(e)),
            RepositoryError::Refused(e) => Self::UnexpectedError(Box::new(e)),
            e @ RepositoryError::Group {
                unavailable: true, ..
            } => Self::DatabaseConnectionError(Box::new(e)),
            e @ RepositoryError::Group { .. } => Self::UnexpectedError(Box::new(e)),
        }
    }
}

/// Maps the driver's error, recognising an optimistic-lock conflict (a duplicate
/// `(aggregate_type, aggregate_id, sequence)`, or a replaced snapshot) by SQLSTATE 23505.
/// Whether the append guard refused `error`'s append for a key erased (CH003).
fn sealed_under_erased_key(error: &RepositoryError) -> bool {
    match error {
        RepositoryError::Database(sqlx::Error::Database(e)) => e.code().as_deref() == Some("CH003"),
        RepositoryError::Refused(refusal) => refusal.sqlstate == "CH003",
        _ => false,
    }
}

fn database_error(error: sqlx::Error) -> RepositoryError {
    match &error {
        sqlx::Error::Database(e) if e.code().as_deref() == Some("23505") => {
            RepositoryError::Conflict
        }
        _ => RepositoryError::Database(error),
    }
}

/// Loads and appends streams of any aggregate type.
pub struct EventRepository {
    pool: PgPool,
    snapshot_every: usize,
    upcasters: Vec<Box<dyn EventUpcaster>>,
    wake: Option<RelayWake>,
    group: Option<GroupCommit>,
    /// Seals personal fields on append and opens them on load (ADR 0035).
    sealing: Option<KeyStore>,
}

impl fmt::Debug for EventRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRepository")
            .field("snapshot_every", &self.snapshot_every)
            .field("upcasters", &self.upcasters.len())
            .finish()
    }
}

/// Where a load started its fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restored {
    /// From the snapshot: the events after it follow.
    FromSnapshot,
    /// From the first event: the whole stream was replayed.
    Replayed,
}

impl Restored {
    fn is_replayed(self) -> bool {
        self == Self::Replayed
    }
}

/// One row of [`sql::LOAD`].
#[derive(sqlx::FromRow)]
struct LoadRow {
    part: String,
    sequence: Option<i64>,
    position: Option<i64>,
    event_type: Option<String>,
    event_version: Option<String>,
    payload: Option<Value>,
    request_hash: Option<String>,
    record_type: Option<String>,
    record_id: Option<String>,
}

/// One stored event as the aggregate needs it.
#[derive(sqlx::FromRow)]
struct EventRow {
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Value,
    metadata: Value,
}

impl EventRepository {
    /// A repository over `pool` storing a snapshot every `snapshot_every` events of a
    /// stream and reading stored events through `upcasters`.
    pub fn new(
        pool: PgPool,
        snapshot_every: usize,
        upcasters: Vec<Box<dyn EventUpcaster>>,
    ) -> Self {
        Self {
            pool,
            snapshot_every: snapshot_every.max(1),
            upcasters,
            wake: None,
            group: None,
            sealing: None,
        }
    }

    /// Seals personal fields under each data subject's key from `keys` on append, and
    /// opens them on load (ADR 0035).
    #[must_use]
    pub fn with_sealing(mut self, keys: KeyStore) -> Self {
        self.sealing = Some(keys);
        self
    }

    /// The key store it seals with, if it seals.
    pub fn key_store(&self) -> Option<&KeyStore> {
        self.sealing.as_ref()
    }

    /// Puts `payload`'s sealed fields back in plain text, or as erased when the subject's
    /// key is gone; `here` names the event or snapshot's place. The key is read on
    /// `connection`, the one the load holds.
    async fn open_sealed(
        &self,
        connection: &mut PgConnection,
        payload: &mut Value,
        here: &[u8],
    ) -> Result<(), RepositoryError> {
        let (Some(keys), Some(sealed)) = (&self.sealing, sealed_part(payload)) else {
            return Ok(());
        };
        let subject = SubjectId(sealed.subject);
        let key = keys
            .for_reading_on(&subject, sealed.key_version, connection)
            .await?;
        open(payload, key.as_ref(), here)
            .map_err(|e| RepositoryError::Keys(StoreError::Keys(e.to_string())))
    }

    /// Appends through `group`, sharing transactions with other commands' appends.
    #[must_use]
    pub fn with_group_commit(mut self, group: GroupCommit) -> Self {
        self.group = Some(group);
        self
    }

    /// Tells `wake` after every append that committed.
    #[must_use]
    pub fn with_wake(mut self, wake: RelayWake) -> Self {
        self.wake = Some(wake);
        self
    }

    /// The pool it works through.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection from the pool, within the deadline of the work asking (see
    /// [`crate::deadline`]). A command loads and appends on one connection: each use of
    /// the pool costs sqlx a health check on the way out and on the way in.
    pub async fn connection(&self) -> Result<PoolConnection<Postgres>, RepositoryError> {
        Ok(crate::deadline::acquire(&self.pool).await?)
    }

    /// Loads the stream `aggregate_id` of `A` and, when `idempotency` names an
    /// `(actor, key)`, that request's record, in one statement.
    pub async fn load<A: Aggregate>(
        &self,
        connection: &mut PgConnection,
        aggregate_id: &str,
        idempotency: Option<(&str, &str)>,
    ) -> Result<Loaded<A>, RepositoryError> {
        let rows: Vec<LoadRow> = sqlx::query_as(sql::LOAD)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(idempotency.map(|(actor, _)| actor))
            .bind(idempotency.map(|(_, key)| key))
            .fetch_all(&mut *connection)
            .await
            .map_err(database_error)?;
        let mut snapshot = None;
        let mut events = Vec::new();
        let mut head_position = 0;
        let mut record = None;
        for row in rows {
            match row.part.as_str() {
                "snapshot" => snapshot = Some(row),
                "event" => events.push(row),
                "head" => head_position = row.position.unwrap_or(0),
                _ => record = idempotency_record(row),
            }
        }
        events.sort_by_key(|row| row.sequence);
        let mut stream = Stream {
            aggregate_id: aggregate_id.to_owned(),
            aggregate: A::default(),
            version: 0,
            snapshot: None,
            snapshot_sequence: 0,
            head_position,
        };
        if let Some(mut row) = snapshot {
            if let Some(payload) = row.payload.as_mut() {
                let number = row.position.unwrap_or(0);
                let here = place(A::TYPE, aggregate_id, number, SNAPSHOT_PLACE);
                if let Err(error) = self.open_sealed(connection, payload, &here).await {
                    // Replayed from the events instead, as a snapshot that no longer
                    // decodes is.
                    tracing::warn!(aggregate = A::TYPE, %aggregate_id, %error, "snapshot does not open");
                    row.payload = None;
                }
            }
            if self
                .restore_snapshot(connection, &mut stream, row)
                .await?
                .is_replayed()
            {
                events.clear();
            }
        }
        for mut row in events {
            let sequence = to_usize(row.sequence.unwrap_or(0));
            if let Some(payload) = row.payload.as_mut() {
                let event_type = row.event_type.as_deref().unwrap_or_default();
                let here = place(A::TYPE, aggregate_id, sequence as i64, event_type);
                self.open_sealed(connection, payload, &here).await?;
            }
            let event = self.decode::<A>(serialized(aggregate_id, A::TYPE, row))?;
            stream.aggregate.apply(event);
            stream.version = sequence;
        }
        Ok(Loaded {
            stream,
            idempotency: record,
        })
    }

    /// Starts `stream` from its snapshot; if the snapshot no longer decodes (the
    /// aggregate changed shape since it was taken), replays the whole stream instead, and
    /// the next snapshot replaces the stale one.
    async fn restore_snapshot<A: Aggregate>(
        &self,
        connection: &mut PgConnection,
        stream: &mut Stream<A>,
        row: LoadRow,
    ) -> Result<Restored, RepositoryError> {
        match serde_json::from_value::<A>(row.payload.unwrap_or(Value::Null)) {
            Ok(aggregate) => {
                stream.aggregate = aggregate;
                stream.version = to_usize(row.sequence.unwrap_or(0));
                stream.snapshot_sequence = stream.version;
                stream.snapshot = Some(to_usize(row.position.unwrap_or(0)));
                Ok(Restored::FromSnapshot)
            }
            Err(error) => {
                let aggregate_id = stream.aggregate_id.clone();
                tracing::info!(aggregate = A::TYPE, %aggregate_id, %error, "snapshot no longer decodes; replaying the stream");
                for event in self.all_events::<A>(connection, &aggregate_id).await? {
                    stream.version = event.sequence;
                    stream.aggregate.apply(event.payload);
                }
                Ok(Restored::Replayed)
            }
        }
    }

    /// Every event of a stream as envelopes, metadata included.
    pub async fn all_events<A: Aggregate>(
        &self,
        connection: &mut PgConnection,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, RepositoryError> {
        let mut rows: Vec<EventRow> = sqlx::query_as(sql::ALL_EVENTS)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .fetch_all(&mut *connection)
            .await
            .map_err(database_error)?;
        for row in &mut rows {
            let here = place(A::TYPE, aggregate_id, row.sequence, &row.event_type);
            self.open_sealed(connection, &mut row.payload, &here)
                .await?;
        }
        rows.into_iter()
            .map(|row| {
                let sequence = to_usize(row.sequence);
                let metadata = serde_json::from_value(row.metadata.clone()).map_err(|e| {
                    RepositoryError::Decode {
                        what: format!("metadata of {} {aggregate_id} #{sequence}", A::TYPE),
                        reason: e.to_string(),
                    }
                })?;
                let event = SerializedEvent::new(
                    aggregate_id.to_owned(),
                    sequence,
                    A::TYPE.to_owned(),
                    row.event_type,
                    row.event_version,
                    row.payload,
                    Value::Null,
                );
                Ok(EventEnvelope {
                    aggregate_id: aggregate_id.to_owned(),
                    sequence,
                    payload: self.decode::<A>(event)?,
                    metadata,
                })
            })
            .collect()
    }

    /// Appends `events` (already numbered after `stream.version`) in one statement,
    /// storing `snapshot` (the aggregate after them) when one is due, and returns where
    /// each landed. With group commit on, the statement is shared with other commands'
    /// appends (ADR 0012); otherwise it runs on `connection` (or one from the pool).
    pub async fn append<A: Aggregate>(
        &self,
        mut connection: Option<&mut PgConnection>,
        stream: &Stream<A>,
        events: &[EventEnvelope<A>],
        snapshot: Option<&A>,
    ) -> Result<Vec<Position>, RepositoryError> {
        let Some(mut append) = Append::encode(stream, events, snapshot)? else {
            return Ok(Vec::new());
        };
        if let Some(keys) = &self.sealing {
            // On the command's own connection: a writer waiting for another's new key
            // holds one, and the pool may have no other to give (ADR 0035).
            append.seal(keys, connection.as_deref_mut()).await?;
        }
        let subjects = std::mem::take(&mut append.subjects);
        // Keys made for this append, remembered once it has stored them.
        let made: Vec<_> = append
            .keys
            .new
            .iter()
            .map(|k| (k.subject.clone(), k.version, k.key.clone()))
            .collect();
        let appended = match (&self.group, connection) {
            (Some(group), _) => group.append(append).await,
            (None, Some(connection)) => append.execute(connection).await,
            (None, None) => append.execute(&mut *self.connection().await?).await,
        };
        let positions = match (appended, &self.sealing) {
            (Ok(positions), Some(keys)) => {
                for (subject, version, key) in &made {
                    keys.adopt(subject, *version, key);
                }
                positions
            }
            (Ok(positions), None) => positions,
            // Sealed under a key erased meanwhile (elsewhere: the cache here still had
            // it). Forget it and let the command run again, as after a lost race; the
            // next seal makes a new key.
            (Err(error), Some(keys)) if sealed_under_erased_key(&error) => {
                tracing::info!(
                    "an append sealed under an erased key was refused; retrying with a new key"
                );
                for subject in &subjects {
                    keys.forget(subject);
                }
                return Err(RepositoryError::Conflict);
            }
            (Err(error), _) => return Err(error),
        };
        if let Some(wake) = &self.wake {
            wake.committed();
        }
        Ok(positions)
    }

    /// Whether appends go through group commit.
    pub fn groups_commits(&self) -> bool {
        self.group.is_some()
    }

    /// Whether a commit of `appended` events to `stream` stores a snapshot.
    pub fn snapshot_due<A>(&self, stream: &Stream<A>, appended: usize) -> bool {
        let since = stream.version.saturating_sub(stream.snapshot_sequence);
        snapshot::due(since, appended, self.snapshot_every)
    }

    fn decode<A: Aggregate>(&self, event: SerializedEvent) -> Result<A::Event, RepositoryError> {
        let event = self.upcasters.iter().fold(event, |event, upcaster| {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                upcaster.upcast(event)
            } else {
                event
            }
        });
        serde_json::from_value(event.payload).map_err(|e| RepositoryError::Decode {
            what: format!(
                "event {} {} #{} ({} v{})",
                event.aggregate_type,
                event.aggregate_id,
                event.sequence,
                event.event_type,
                event.event_version
            ),
            reason: e.to_string(),
        })
    }
}

fn serialized(aggregate_id: &str, aggregate_type: &str, row: LoadRow) -> SerializedEvent {
    SerializedEvent::new(
        aggregate_id.to_owned(),
        to_usize(row.sequence.unwrap_or(0)),
        aggregate_type.to_owned(),
        row.event_type.unwrap_or_default(),
        row.event_version.unwrap_or_default(),
        row.payload.unwrap_or(Value::Null),
        Value::Null,
    )
}

fn idempotency_record(row: LoadRow) -> Option<IdempotencyRecord> {
    Some(IdempotencyRecord {
        request_hash: row.request_hash?,
        aggregate_type: row.record_type?,
        aggregate_id: row.record_id?,
        last_sequence: row.sequence?,
        last_position: row.position?,
    })
}

/// Sequences and snapshot numbers are non-negative bigints by the schema's CHECKs.
fn to_usize(value: i64) -> usize {
    usize::try_from(value).unwrap_or(0)
}
