//! The `cqrs_es::EventStore` one command runs against.

use std::collections::HashMap;
use std::sync::Mutex;

use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use sqlx::Postgres;
use sqlx::pool::PoolConnection;

use super::{EventRepository, RepositoryError, Stream};

/// What a command's commit did to its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The stream's version after the command.
    pub version: i64,
    /// The global position of the command's last event, or of the stream's newest event
    /// when the command appended nothing (0 for an empty stream).
    pub position: i64,
    /// Whether anything was appended.
    pub appended: bool,
}

/// A `cqrs_es::EventStore` for one command: `CqrsFramework` loads from it, lets the
/// aggregate decide, and commits through it.
///
/// cqrs-es's `execute` returns `()`; the store keeps what the commit did in
/// [`CommandStore::committed`] for the caller to read. It can also start from a stream
/// the caller already loaded (together with the request's idempotency record), so that
/// the load costs one statement in all.
pub struct CommandStore<'a, A: Aggregate> {
    repository: &'a EventRepository,
    /// The command's connection, between its statements.
    connection: Mutex<Option<PoolConnection<Postgres>>>,
    preloaded: Mutex<Option<Stream<A>>>,
    committed: Mutex<Option<Committed>>,
}

impl<'a, A: Aggregate> CommandStore<'a, A> {
    /// A store that loads `preloaded` (when given) the first time it is asked to, and
    /// works on `connection` (the one `preloaded` was read on) when given.
    pub fn new(
        repository: &'a EventRepository,
        preloaded: Option<Stream<A>>,
        connection: Option<PoolConnection<Postgres>>,
    ) -> Self {
        Self {
            repository,
            connection: Mutex::new(connection),
            preloaded: Mutex::new(preloaded),
            committed: Mutex::new(None),
        }
    }

    /// The command's connection, taken out while a statement runs on it.
    async fn take_connection(&self) -> Result<PoolConnection<Postgres>, RepositoryError> {
        let held = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match held {
            Some(connection) => Ok(connection),
            None => self.repository.connection().await,
        }
    }

    fn put_back(&self, connection: PoolConnection<Postgres>) {
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection);
    }

    /// What the last commit did; `None` before a commit (or when it failed).
    pub fn committed(&self) -> Option<Committed> {
        *self.committed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, committed: Committed) {
        *self.committed.lock().unwrap_or_else(|e| e.into_inner()) = Some(committed);
    }
}

/// Implemented for a reference, so the caller keeps the store (and what it committed)
/// after `CqrsFramework` is done with it.
impl<A: Aggregate> EventStore<A> for &CommandStore<'_, A> {
    type AC = Stream<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let mut connection = self.take_connection().await?;
        let events = self
            .repository
            .all_events::<A>(&mut connection, aggregate_id)
            .await?;
        self.put_back(connection);
        Ok(events)
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<Stream<A>, AggregateError<A::Error>> {
        let preloaded = self
            .preloaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|stream| stream.aggregate_id == aggregate_id);
        if let Some(stream) = preloaded {
            return Ok(stream);
        }
        let mut connection = self.take_connection().await?;
        let loaded = self
            .repository
            .load::<A>(&mut connection, aggregate_id, None)
            .await?;
        self.put_back(connection);
        Ok(loaded.stream)
    }

    /// `stream.aggregate` already holds `events`: cqrs-es's `EventSink` applied each
    /// one as the aggregate wrote it. So it is the snapshot, as it is.
    async fn commit(
        &self,
        events: Vec<A::Event>,
        stream: Stream<A>,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        if events.is_empty() {
            self.record(Committed {
                version: stream.version as i64,
                position: stream.head_position,
                appended: false,
            });
            return Ok(Vec::new());
        }
        let envelopes: Vec<EventEnvelope<A>> = events
            .into_iter()
            .zip(stream.version + 1..)
            .map(|(payload, sequence)| EventEnvelope {
                aggregate_id: stream.aggregate_id.clone(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
            .collect();
        let snapshot = self
            .repository
            .snapshot_due(&stream, envelopes.len())
            .then_some(&stream.aggregate);
        // With group commit the group's writer appends on its own connection: this one
        // goes back to the pool first.
        let mut connection = if self.repository.groups_commits() {
            drop(
                self.connection
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
            );
            None
        } else {
            Some(self.take_connection().await?)
        };
        let positions = self
            .repository
            .append(connection.as_deref_mut(), &stream, &envelopes, snapshot)
            .await?;
        if let Some(connection) = connection {
            self.put_back(connection);
        }
        if let Some(last) = positions.last() {
            self.record(Committed {
                version: last.sequence,
                position: last.global_position,
                appended: true,
            });
        }
        Ok(envelopes)
    }
}
