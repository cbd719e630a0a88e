//! Group commit: the appends of commands that arrive together share one transaction
//! (ADR 0012).
//!
//! Appends queue for a few writer tasks, each with a connection of its own. A writer
//! takes whatever has queued while it was busy (up to the group's limit) and appends it
//! with one call of `chronicle_append_batch`, which runs each command's append in a
//! subtransaction: a command the database refuses (a seat taken, a key already used, a
//! lost race) is rolled back alone and answers with its own error, and the others
//! commit. Nothing waits to fill a group: a lone append goes at once, as one statement,
//! so group commit costs nothing at low load and amortises the commit as load grows.

use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::append::{Append, HeldColumns, KeyColumns};
use super::{Position, RepositoryError};
use crate::error::{Refusal, is_connection_lost, is_unavailable};
use crate::metrics;

/// `CHRONICLE_GROUP_COMMIT_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommitSettings {
    /// Writer tasks (and connections) appending groups concurrently; 0 turns group
    /// commit off (every command appends on its own connection).
    pub writers: usize,
    /// The most commands in one group. PostgreSQL keeps up to 64 subtransactions of a
    /// transaction in shared memory; beyond that every snapshot gets slower.
    pub max_group: usize,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        Self {
            writers: 2,
            max_group: 32,
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Position>, RepositoryError>>;

struct Queued {
    append: Append,
    reply: Reply,
}

/// The queue to the writers; cheap to clone. The writers stop when the last clone is
/// dropped.
#[derive(Clone, Debug)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Queued>,
}

impl GroupCommit {
    /// Starts `settings.writers` writers connecting with `options`; `None` when group
    /// commit is off.
    pub fn start(options: PgConnectOptions, settings: GroupCommitSettings) -> Option<Self> {
        if settings.writers == 0 {
            return None;
        }
        // Unbounded: what can queue is bounded by the commands in flight, which the API
        // bounds (`CHRONICLE_MAX_INFLIGHT_COMMANDS`).
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..settings.writers {
            tokio::spawn(writer(
                options.clone(),
                receiver.clone(),
                settings.max_group.max(1),
            ));
        }
        Some(Self { queue })
    }

    /// Appends as part of the next group and waits for that group's commit.
    pub(super) async fn append(&self, append: Append) -> Result<Vec<Position>, RepositoryError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || RepositoryError::Group {
            unavailable: true,
            reason: "the group commit writers have stopped".to_owned(),
        };
        // Counted before it is sent, so that a writer taking it never counts below zero.
        metrics::APPEND_QUEUE.inc();
        if self.queue.send(Queued { append, reply }).is_err() {
            metrics::APPEND_QUEUE.dec();
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }
}

async fn writer(
    options: PgConnectOptions,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Queued>>>,
    max_group: usize,
) {
    let mut connection: Option<PgConnection> = None;
    loop {
        let group = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                break;
            };
            let mut group = vec![first];
            while group.len() < max_group {
                match receiver.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            group
        };
        metrics::APPEND_QUEUE.sub(group.len() as i64);
        metrics::APPEND_GROUP_SIZE.observe(group.len() as f64);
        if connection.is_none() {
            match PgConnection::connect_with(&options).await {
                Ok(fresh) => connection = Some(fresh),
                Err(error) => {
                    fail_all(group, is_unavailable(&error), &error.to_string());
                    continue;
                }
            }
        }
        let Some(conn) = connection.as_mut() else {
            continue;
        };
        if !commit(conn, group).await {
            tracing::warn!("group commit lost its connection; reconnecting");
            connection = None;
        }
    }
    if let Some(connection) = connection {
        connection.close().await.ok();
    }
}

/// Appends `group` and answers each member; false when the connection is no longer
/// usable.
async fn commit(connection: &mut PgConnection, group: Vec<Queued>) -> bool {
    if group.len() == 1 {
        let Some(Queued { append, reply }) = group.into_iter().next() else {
            return true;
        };
        let result = append.execute(connection).await;
        let usable = !matches!(&result, Err(RepositoryError::Database(e)) if is_connection_lost(e));
        let _ = reply.send(result);
        return usable;
    }
    match append_group(connection, &group).await {
        Ok(results) => {
            for (queued, result) in group.into_iter().zip(results) {
                let _ = queued.reply.send(result);
            }
            true
        }
        Err(error) => {
            fail_all(group, is_unavailable(&error), &error.to_string());
            !is_connection_lost(&error)
        }
    }
}

fn fail_all(group: Vec<Queued>, unavailable: bool, reason: &str) {
    for queued in group {
        let _ = queued.reply.send(Err(RepositoryError::Group {
            unavailable,
            reason: reason.to_owned(),
        }));
    }
}

/// One row of `chronicle_append_batch`.
#[derive(sqlx::FromRow)]
struct GroupRow {
    member: i32,
    sequence: Option<i64>,
    global_position: Option<i64>,
    error_state: Option<String>,
    error_constraint: Option<String>,
    error_message: Option<String>,
}

/// Appends every member in one call, one result per member.
async fn append_group(
    connection: &mut PgConnection,
    group: &[Queued],
) -> Result<Vec<Result<Vec<Position>, RepositoryError>>, sqlx::Error> {
    let mut columns = Columns::default();
    for (index, queued) in group.iter().enumerate() {
        columns.push(index as i32 + 1, &queued.append);
    }
    let rows: Vec<GroupRow> = sqlx::query_as(
        "SELECT member, sequence, global_position, error_state, error_constraint, error_message \
           FROM chronicle_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                                       $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)",
    )
    .bind(&columns.member_type)
    .bind(&columns.member_id)
    .bind(&columns.snapshot_mode)
    .bind(&columns.snapshot_seq)
    .bind(&columns.snapshot_number)
    .bind(&columns.snapshot_payload)
    .bind(&columns.member_of)
    .bind(&columns.sequence)
    .bind(&columns.event_type)
    .bind(&columns.event_version)
    .bind(&columns.payload)
    .bind(&columns.metadata)
    .bind(&columns.held_from)
    .bind(&columns.held_upto)
    .bind(&columns.held_subject)
    .bind(&columns.held_version)
    .bind(&columns.key_from)
    .bind(&columns.key_upto)
    .bind(&columns.key_subject)
    .bind(&columns.key_version)
    .bind(&columns.key_master)
    .bind(&columns.key_wrapped)
    .fetch_all(connection)
    .await?;
    let mut results: Vec<Result<Vec<Position>, RepositoryError>> =
        group.iter().map(|_| Ok(Vec::new())).collect();
    for row in rows {
        let Some(result) = usize::try_from(row.member - 1)
            .ok()
            .and_then(|i| results.get_mut(i))
        else {
            continue;
        };
        match (row.error_state, row.sequence, row.global_position) {
            (Some(state), _, _) => {
                *result = Err(refused(state, row.error_constraint, row.error_message));
            }
            (None, Some(sequence), Some(global_position)) => {
                if let Ok(positions) = result {
                    positions.push(Position {
                        sequence,
                        global_position,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(results)
}

fn refused(state: String, constraint: Option<String>, message: Option<String>) -> RepositoryError {
    if state == "23505" {
        return RepositoryError::Conflict;
    }
    RepositoryError::Refused(Refusal {
        sqlstate: state,
        constraint,
        message: message.unwrap_or_default(),
    })
}

/// The parameters of `chronicle_append_batch`, column by column.
#[derive(Default)]
struct Columns<'a> {
    member_type: Vec<&'static str>,
    member_id: Vec<&'a str>,
    snapshot_mode: Vec<&'static str>,
    snapshot_seq: Vec<i64>,
    snapshot_number: Vec<i64>,
    snapshot_payload: Vec<Option<&'a serde_json::Value>>,
    member_of: Vec<i32>,
    sequence: Vec<i64>,
    event_type: Vec<&'a str>,
    event_version: Vec<&'a str>,
    payload: Vec<&'a serde_json::Value>,
    metadata: Vec<&'a serde_json::Value>,
    /// Each member's held keys are `held_subject[held_from[m]..=held_upto[m]]` (1-based,
    /// as in SQL; empty when from > upto), its new keys likewise.
    held_from: Vec<i32>,
    held_upto: Vec<i32>,
    held_subject: Vec<&'a str>,
    held_version: Vec<i32>,
    key_from: Vec<i32>,
    key_upto: Vec<i32>,
    key_subject: Vec<&'a str>,
    key_version: Vec<i32>,
    key_master: Vec<&'a str>,
    key_wrapped: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, member: i32, append: &'a Append) {
        self.member_type.push(append.aggregate_type);
        self.member_id.push(&append.aggregate_id);
        match &append.snapshot {
            Some(snapshot) => {
                self.snapshot_mode
                    .push(if snapshot.first { "first" } else { "next" });
                self.snapshot_seq.push(snapshot.sequence);
                self.snapshot_number.push(snapshot.number);
                self.snapshot_payload.push(Some(&snapshot.payload));
            }
            None => {
                self.snapshot_mode.push("none");
                self.snapshot_seq.push(0);
                self.snapshot_number.push(0);
                self.snapshot_payload.push(None);
            }
        }
        self.member_of
            .extend(std::iter::repeat_n(member, append.sequences.len()));
        self.sequence.extend_from_slice(&append.sequences);
        self.event_type
            .extend(append.types.iter().map(String::as_str));
        self.event_version
            .extend(append.versions.iter().map(String::as_str));
        self.payload.extend(&append.payloads);
        self.metadata.extend(std::iter::repeat_n(
            &append.metadata,
            append.sequences.len(),
        ));
        let held = HeldColumns::of(&append.keys.held);
        push_range(
            &mut self.held_from,
            &mut self.held_upto,
            self.held_subject.len(),
            held.subject.len(),
        );
        self.held_subject.extend(held.subject);
        self.held_version.extend(held.version);
        let keys = KeyColumns::of(&append.keys.new);
        push_range(
            &mut self.key_from,
            &mut self.key_upto,
            self.key_subject.len(),
            keys.subject.len(),
        );
        self.key_subject.extend(keys.subject);
        self.key_version.extend(keys.version);
        self.key_master.extend(keys.master);
        self.key_wrapped.extend(keys.wrapped);
    }
}

/// Notes that a member's `count` entries follow the `before` already in its arrays, as
/// an SQL array range (1-based, inclusive; empty when from > upto).
fn push_range(from: &mut Vec<i32>, upto: &mut Vec<i32>, before: usize, count: usize) {
    from.push(before as i32 + 1);
    upto.push((before + count) as i32);
}
