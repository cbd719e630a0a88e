//! The PostgreSQL read models: `accounts`, `account_ledger`, `bookings`, `payments`.
//!
//! Each batch is one transaction: the changes, a row per applied event in
//! `rm_applied_events` (what `min_position` waits on, and a duplicate guard), and the
//! next offset of each partition. Every change is also guarded by the aggregate's
//! version, so a duplicate or stale event is a no-op.

mod account;
mod booking;
mod history;
mod payment;

use std::collections::HashMap;
use std::sync::Arc;

use chronicle_eventstore::envelope::Envelope;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::consumer::{Delivered, PartitionKey, Projection, ProjectionError};
use crate::metrics;

/// The channel a batch commit notifies, for read-your-writes waiters.
pub const PROJECTED_CHANNEL: &str = "chronicle_projected";

/// The read-model projector's name (offsets, consumer group, metrics).
pub const READ_MODELS: &str = "read-models";

/// A transaction on the read models' database.
pub type Tx<'a> = Transaction<'a, Postgres>;

/// Observes a batch being applied; tests use it to stop a projector mid-batch.
pub trait ApplyObserver: Send + Sync {
    /// Called after event `index` of batch `batch` was applied, before the commit.
    fn after_event(&self, batch: u64, index: usize) -> futures::future::BoxFuture<'_, ()>;
}

/// The read-model projection.
pub struct ReadModels {
    pool: PgPool,
    name: String,
    observer: Option<Arc<dyn ApplyObserver>>,
    batches: std::sync::atomic::AtomicU64,
}

impl ReadModels {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            name: READ_MODELS.to_owned(),
            observer: None,
            batches: Default::default(),
        }
    }

    /// Lets `observer` watch each batch.
    #[must_use]
    pub fn observed_by(mut self, observer: Arc<dyn ApplyObserver>) -> Self {
        self.observer = Some(observer);
        self
    }
}

/// What applying one event did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    Changed,
    /// The aggregate's row was already at or past this event.
    Stale,
}

impl Projection for ReadModels {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stored_offsets(&self) -> Result<HashMap<PartitionKey, i64>, ProjectionError> {
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(
            "SELECT topic, partition, next_offset FROM projector_offsets WHERE projector = $1",
        )
        .bind(&self.name)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
    }

    async fn apply_batch(&self, batch: &[Delivered]) -> Result<(), ProjectionError> {
        let number = self
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let mut tx = self.pool.begin().await?;
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for (index, delivered) in batch.iter().enumerate() {
            self.apply_one(&mut tx, delivered).await?;
            next.insert(
                (&delivered.topic, delivered.partition),
                delivered.offset + 1,
            );
            if let Some(observer) = &self.observer {
                observer.after_event(number, index).await;
            }
        }
        for ((topic, partition), offset) in next {
            sqlx::query(
                "INSERT INTO projector_offsets (projector, topic, partition, next_offset) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (projector, topic, partition) DO UPDATE \
                 SET next_offset = greatest(projector_offsets.next_offset, EXCLUDED.next_offset), \
                     updated_at = now()",
            )
            .bind(&self.name)
            .bind(topic)
            .bind(partition)
            .bind(offset)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(PROJECTED_CHANNEL)
            .bind(&self.name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// What applying one envelope did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The read models changed.
    Applied,
    /// The event was applied before (journal or version guard): nothing changed.
    Duplicate,
}

/// Why an envelope could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Not an event these read models can read; nothing was changed.
    #[error("unreadable event: {0}")]
    Unreadable(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Applies one event to the read models inside `tx`: the journal row, the tables and
/// the temporal history. Shared by the projector and by `chronicle-replay rebuild`,
/// which runs it against fresh tables.
pub async fn apply_envelope(tx: &mut Tx<'_>, envelope: &Envelope) -> Result<Outcome, ApplyError> {
    let aggregate_id = Uuid::parse_str(&envelope.aggregate_id).map_err(|e| {
        ApplyError::Unreadable(format!("aggregate id {:?}: {e}", envelope.aggregate_id))
    })?;
    let first_time = sqlx::query(
        "INSERT INTO rm_applied_events \
         (global_position, aggregate_type, aggregate_id, sequence, event_type, recorded_at, \
          event_version, payload, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (global_position) DO NOTHING",
    )
    .bind(envelope.global_position)
    .bind(&envelope.aggregate_type)
    .bind(aggregate_id)
    .bind(envelope.sequence)
    .bind(&envelope.event_type)
    .bind(envelope.recorded_at)
    .bind(&envelope.event_version)
    .bind(&envelope.payload)
    .bind(serde_json::to_value(&envelope.metadata).unwrap_or_default())
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if !first_time {
        return Ok(Outcome::Duplicate);
    }
    let applied = match envelope.aggregate_type.as_str() {
        "Account" => account::apply(tx, envelope).await,
        "Booking" => booking::apply(tx, envelope).await,
        "Payment" => payment::apply(tx, envelope).await,
        other => Err(Unreadable(format!("unknown aggregate type {other:?}"))),
    };
    match applied {
        Ok(Ok(Applied::Changed)) => Ok(Outcome::Applied),
        Ok(Ok(Applied::Stale)) => Ok(Outcome::Duplicate),
        Ok(Err(error)) => Err(ApplyError::Database(error)),
        Err(Unreadable(reason)) => Err(ApplyError::Unreadable(reason)),
    }
}

impl ReadModels {
    async fn apply_one(
        &self,
        tx: &mut Tx<'_>,
        delivered: &Delivered,
    ) -> Result<(), ProjectionError> {
        let envelope = match parse(delivered) {
            Ok(envelope) => envelope,
            Err(reason) => return self.dead_letter(tx, delivered, &reason).await,
        };
        match apply_envelope(tx, &envelope).await {
            Ok(Outcome::Applied) => Ok(()),
            Ok(Outcome::Duplicate) => {
                metrics::PROJECTOR_DUPLICATE_EVENTS
                    .with_label_values(&[&self.name])
                    .inc();
                Ok(())
            }
            Err(ApplyError::Database(error)) => Err(error.into()),
            Err(ApplyError::Unreadable(reason)) => self.dead_letter(tx, delivered, &reason).await,
        }
    }

    async fn dead_letter(
        &self,
        tx: &mut Tx<'_>,
        delivered: &Delivered,
        reason: &str,
    ) -> Result<(), ProjectionError> {
        tracing::error!(projector = %self.name, topic = %delivered.topic, partition = delivered.partition, offset = delivered.offset, %reason, "unreadable message set aside");
        metrics::PROJECTOR_DEAD_LETTERS
            .with_label_values(&[&self.name])
            .inc();
        sqlx::query(
            "INSERT INTO projector_dead_letters (projector, topic, partition, \"offset\", error, message) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&self.name)
        .bind(&delivered.topic)
        .bind(delivered.partition)
        .bind(delivered.offset)
        .bind(reason)
        .bind(delivered.payload.as_deref())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// A message that is not an event this projection can read.
pub(crate) struct Unreadable(pub String);

/// The outcome of applying one event: unreadable (set aside), or the database's answer.
pub(crate) type ApplyResult = Result<Result<Applied, sqlx::Error>, Unreadable>;

fn parse(delivered: &Delivered) -> Result<Envelope, String> {
    let payload = delivered.payload.as_deref().ok_or("empty message")?;
    serde_json::from_slice(payload).map_err(|e| format!("not an event envelope: {e}"))
}

/// Reads an envelope's payload as the aggregate's event type.
pub(crate) fn event_of<E: serde::de::DeserializeOwned>(
    envelope: &Envelope,
) -> Result<E, Unreadable> {
    serde_json::from_value(envelope.payload.clone()).map_err(|e| {
        Unreadable(format!(
            "{} {}: {e}",
            envelope.aggregate_type, envelope.event_type
        ))
    })
}

/// `Changed` when a guarded statement touched a row, `Stale` when the guard held it back.
pub(crate) fn changed(result: sqlx::postgres::PgQueryResult) -> Applied {
    if result.rows_affected() > 0 {
        Applied::Changed
    } else {
        Applied::Stale
    }
}
