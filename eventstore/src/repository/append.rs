//! One command's append, encoded for the database.

use cqrs_es::{Aggregate, DomainEvent, EventEnvelope};
use serde_json::Value;
use sqlx::PgConnection;

use super::{Position, RepositoryError, SNAPSHOT_PLACE, Stream, database_error, sql};
use crate::personal::seal::{ERASED, place, seal, subject_email};
use crate::personal::{DataKey, ForWriting, KeyStore, NewKeyClaim, SubjectId};

/// A data key made for this append, stored by it (see [`KeyStore::for_writing`]).
#[derive(Debug)]
pub(super) struct NewKey {
    pub subject: SubjectId,
    pub version: i32,
    pub key: DataKey,
    /// The wrapped key, and this process's claim on making it (released with the
    /// append).
    pub claim: NewKeyClaim,
}

/// The data keys an append seals under.
#[derive(Debug, Default)]
pub(super) struct SealingKeys {
    /// Keys it made, stored by the same statement as its events.
    pub new: Vec<NewKey>,
    /// Keys it did not make (cached, or read), by subject and version: the append holds
    /// them FOR SHARE, and is refused if one was erased meanwhile.
    pub held: Vec<(SubjectId, i32)>,
}

/// Seals `payload`'s personal fields, if it holds any, under its subject's key (made
/// now and pushed to `keys_used.new` when the subject has none, else noted in
/// `keys_used.held`); returns the subject.
async fn seal_with(
    keys: &KeyStore,
    connection: Option<&mut PgConnection>,
    payload: &mut Value,
    here: &[u8],
    keys_used: &mut SealingKeys,
) -> Result<Option<SubjectId>, RepositoryError> {
    let Some(email) = subject_email(payload) else {
        return Ok(None);
    };
    // A stream whose subject was erased carries the erased marks on (in the state a
    // snapshot keeps): nothing personal is left to seal.
    if email == ERASED {
        return Ok(None);
    }
    let subject = keys.master_keys().subject_id(email);
    // A key this append already made (an event and its snapshot share it).
    if let Some(made) = keys_used.new.iter().find(|k| k.subject == subject) {
        seal(payload, &subject, made.version, &made.key, here);
        return Ok(Some(subject));
    }
    let ForWriting { version, key, new } = keys.for_writing(&subject, connection).await?;
    seal(payload, &subject, version, &key, here);
    match new {
        Some(claim) => keys_used.new.push(NewKey {
            subject: subject.clone(),
            version,
            key,
            claim,
        }),
        None => {
            let used = (subject.clone(), version);
            if !keys_used.held.contains(&used) {
                keys_used.held.push(used);
            }
        }
    }
    Ok(Some(subject))
}

/// The snapshot an append stores with its events.
#[derive(Debug)]
pub(super) struct SnapshotWrite {
    /// The stream's first snapshot (an insert), or the next one (a guarded update).
    pub first: bool,
    pub sequence: i64,
    pub number: i64,
    pub payload: Value,
}

/// The events of one command (and maybe its stream's snapshot), as bound parameters.
#[derive(Debug)]
pub(super) struct Append {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub sequences: Vec<i64>,
    pub types: Vec<String>,
    pub versions: Vec<String>,
    pub payloads: Vec<Value>,
    /// The command's metadata, the same for each of its events.
    pub metadata: Value,
    pub snapshot: Option<SnapshotWrite>,
    /// The data subjects whose fields it sealed.
    pub subjects: Vec<SubjectId>,
    /// The data keys it sealed under.
    pub keys: SealingKeys,
}

impl Append {
    /// `events` after `stream`, with `snapshot` (the aggregate after them) if one is
    /// due; `None` when there is nothing to append.
    pub fn encode<A: Aggregate>(
        stream: &Stream<A>,
        events: &[EventEnvelope<A>],
        snapshot: Option<&A>,
    ) -> Result<Option<Self>, RepositoryError> {
        let Some(first) = events.first() else {
            return Ok(None);
        };
        let mut append = Self {
            aggregate_type: A::TYPE,
            aggregate_id: stream.aggregate_id.clone(),
            sequences: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: serde_json::to_value(&first.metadata)?,
            snapshot: None,
            subjects: Vec::new(),
            keys: SealingKeys::default(),
        };
        for event in events {
            append.sequences.push(event.sequence as i64);
            append.types.push(event.payload.event_type());
            append.versions.push(event.payload.event_version());
            append.payloads.push(serde_json::to_value(&event.payload)?);
        }
        if let Some(aggregate) = snapshot {
            append.snapshot = Some(SnapshotWrite {
                first: stream.snapshot.is_none(),
                sequence: append.sequences.last().copied().unwrap_or(0),
                number: stream.snapshot.map_or(1, |n| n + 1) as i64,
                payload: serde_json::to_value(aggregate)?,
            });
        }
        Ok(Some(append))
    }

    /// Seals the personal fields of its events and snapshot under each data subject's
    /// key (ADR 0035), in place.
    pub async fn seal(
        &mut self,
        keys: &KeyStore,
        mut connection: Option<&mut PgConnection>,
    ) -> Result<(), RepositoryError> {
        for (n, payload) in self.payloads.iter_mut().enumerate() {
            let here = place(
                self.aggregate_type,
                &self.aggregate_id,
                self.sequences[n],
                &self.types[n],
            );
            if let Some(subject) = seal_with(
                keys,
                connection.as_deref_mut(),
                payload,
                &here,
                &mut self.keys,
            )
            .await?
            {
                self.subjects.push(subject);
            }
        }
        if let Some(snapshot) = &mut self.snapshot {
            let here = place(
                self.aggregate_type,
                &self.aggregate_id,
                snapshot.number,
                SNAPSHOT_PLACE,
            );
            if let Some(subject) = seal_with(
                keys,
                connection,
                &mut snapshot.payload,
                &here,
                &mut self.keys,
            )
            .await?
            {
                self.subjects.push(subject);
            }
        }
        Ok(())
    }

    /// Appends alone, in one statement (its own transaction).
    pub async fn execute(
        &self,
        connection: &mut PgConnection,
    ) -> Result<Vec<Position>, RepositoryError> {
        let statement = match &self.snapshot {
            None => sql::APPEND,
            Some(snapshot) if snapshot.first => sql::APPEND_FIRST_SNAPSHOT,
            Some(_) => sql::APPEND_NEXT_SNAPSHOT,
        };
        let metadata = vec![&self.metadata; self.sequences.len()];
        let held = HeldColumns::of(&self.keys.held);
        let keys = KeyColumns::of(&self.keys.new);
        let mut query = sqlx::query_as::<_, Position>(statement)
            .bind(self.aggregate_type)
            .bind(&self.aggregate_id)
            .bind(&self.sequences)
            .bind(&self.types)
            .bind(&self.versions)
            .bind(&self.payloads)
            .bind(metadata)
            .bind(held.subject)
            .bind(held.version)
            .bind(keys.subject)
            .bind(keys.version)
            .bind(keys.master)
            .bind(keys.wrapped);
        if let Some(snapshot) = &self.snapshot {
            query = query
                .bind(snapshot.sequence)
                .bind(snapshot.number)
                .bind(&snapshot.payload);
        }
        query.fetch_all(connection).await.map_err(database_error)
    }
}

/// Held data keys as the statements' array parameters.
pub(super) struct HeldColumns<'a> {
    pub subject: Vec<&'a str>,
    pub version: Vec<i32>,
}

impl<'a> HeldColumns<'a> {
    pub fn of(held: &'a [(SubjectId, i32)]) -> Self {
        Self {
            subject: held.iter().map(|(s, _)| s.as_str()).collect(),
            version: held.iter().map(|(_, v)| *v).collect(),
        }
    }
}

/// New data keys as the statements' array parameters.
pub(super) struct KeyColumns<'a> {
    pub subject: Vec<&'a str>,
    pub version: Vec<i32>,
    pub master: Vec<&'a str>,
    pub wrapped: Vec<&'a [u8]>,
}

impl<'a> KeyColumns<'a> {
    pub fn of(keys: &'a [NewKey]) -> Self {
        Self {
            subject: keys.iter().map(|k| k.subject.as_str()).collect(),
            version: keys.iter().map(|k| k.version).collect(),
            master: keys
                .iter()
                .map(|k| k.claim.wrapped.master_key_id.as_str())
                .collect(),
            wrapped: keys
                .iter()
                .map(|k| k.claim.wrapped.bytes.as_slice())
                .collect(),
        }
    }
}
