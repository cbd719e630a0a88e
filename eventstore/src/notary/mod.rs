//! The notary: builds the Merkle tree over the log, in commit order, and signs
//! checkpoints of it (ADR 0036). Off the append path: it follows the store as the relay
//! does, with the same commit-safe rule, so the tree only ever grows at its right edge.
//!
//! One notary is active at a time (an advisory lock, as for the relay); its writes go
//! through the connection that holds the lock, so a notary that lost the lock cannot
//! write either. Each batch stores its leaves, the perfect subtrees it completes and the
//! notary's position in one transaction; checkpoints are signed after a batch and
//! published to the checkpoints topic from the table, so none is lost when the broker is
//! away.

pub mod checkpoint;
pub mod proofs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::chain::{ChainedEvent, leaf_entry};
use crate::envelope::commit_safe_after;
use crate::kafka::{KafkaSettings, checkpoints_topic, ensure_checkpoints_topic};
use crate::merkle::{Frontier, Hash, Subtree, leaf_hash};
use crate::metrics;
use crate::relay::{sleep_or_shutdown, until_active};
use checkpoint::{Checkpoint, CheckpointKey, SignedCheckpoint};

/// The next commit-safe events with what their leaves cover.
const SELECT_LEAVES_AFTER: &str = commit_safe_after!(
    "aggregate_type, aggregate_id, sequence, event_type, event_version,
       (extract(epoch FROM recorded_at) * 1000000)::bigint AS recorded_micros,
       payload::text AS payload, metadata::text AS metadata, hash,
       global_position, tx_id::text AS tx_id"
);

/// The advisory lock only the active notary holds.
const LOCK: &str = "chronicle.notary";

/// Tunables of the notary.
#[derive(Clone, Debug)]
pub struct NotarySettings {
    /// `CHRONICLE_NOTARY_BATCH`: events read and stored per transaction.
    pub batch_size: i64,
    /// `CHRONICLE_NOTARY_POLL_MS`: how often to look for new events when idle.
    pub poll_interval: Duration,
    /// `CHRONICLE_CHECKPOINT_EVERY`: sign a checkpoint once the tree grew by this many
    /// leaves since the last one…
    pub checkpoint_leaves: u64,
    /// `CHRONICLE_CHECKPOINT_SECONDS`: …or this long after the last one, if it grew.
    pub checkpoint_interval: Duration,
    /// `CHRONICLE_CHECKPOINT_ORIGIN`: names this log in every checkpoint.
    pub origin: String,
    /// How often a standby notary tries to take over.
    pub standby_retry: Duration,
}

impl Default for NotarySettings {
    fn default() -> Self {
        Self {
            batch_size: 2_000,
            poll_interval: Duration::from_millis(500),
            checkpoint_leaves: 10_000,
            checkpoint_interval: Duration::from_secs(60),
            origin: "chronicle".to_owned(),
            standby_retry: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotaryError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the stored tree is inconsistent: {0}")]
    Inconsistent(String),
}

/// The notary role.
pub struct Notary {
    pool: PgPool,
    kafka: Option<KafkaSettings>,
    settings: NotarySettings,
    key: Arc<CheckpointKey>,
}

impl Notary {
    /// A notary of `pool`'s store, publishing checkpoints to `kafka` when given.
    pub fn new(
        pool: PgPool,
        kafka: Option<KafkaSettings>,
        settings: NotarySettings,
        key: Arc<CheckpointKey>,
    ) -> Self {
        Self {
            pool,
            kafka,
            settings,
            key,
        }
    }

    /// Takes the notary's lock if it is free and resumes the tree where it was stored.
    /// `None` while another notary is active.
    pub async fn try_activate(&self) -> Result<Option<ActiveNotary<'_>>, NotaryError> {
        let mut lock = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let acquired: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(LOCK)
                .fetch_one(&mut lock)
                .await?;
        if !acquired {
            lock.close().await.ok();
            return Ok(None);
        }
        sqlx::query(
            "INSERT INTO merkle_builder (tree_size, tx_id, global_position) \
             VALUES (0, '0', 0) ON CONFLICT (id) DO NOTHING",
        )
        .execute(&mut lock)
        .await?;
        let (size, tx_id, global_position): (i64, String, i64) =
            sqlx::query_as("SELECT tree_size, tx_id::text, global_position FROM merkle_builder")
                .fetch_one(&mut lock)
                .await?;
        let size = u64::try_from(size)
            .map_err(|_| NotaryError::Inconsistent(format!("tree size {size}")))?;
        let peaks = proofs::subtree_hashes(&mut lock, &Frontier::peaks_of(size)).await?;
        let frontier = Frontier::resume(size, &peaks).ok_or_else(|| {
            NotaryError::Inconsistent(format!("the right edge of the tree of {size} is missing"))
        })?;
        let last: Option<i64> = sqlx::query_scalar("SELECT max(tree_size) FROM merkle_checkpoints")
            .fetch_one(&mut lock)
            .await?;
        let producer = match &self.kafka {
            Some(kafka) => Some(
                kafka
                    .client_config("chronicle-notary")
                    .set("message.timeout.ms", "10000")
                    .set("enable.idempotence", "false")
                    .create::<FutureProducer>()?,
            ),
            None => None,
        };
        metrics::NOTARY_TREE_SIZE.set(size as i64);
        tracing::info!(tree_size = size, "notary active");
        Ok(Some(ActiveNotary {
            notary: self,
            lock,
            frontier,
            after: (tx_id, global_position),
            last_checkpoint: (last.unwrap_or(0) as u64, Instant::now()),
            producer,
        }))
    }

    /// Runs until `shutdown`: waits to become the active notary, then extends the tree
    /// as events commit and signs checkpoints. Errors are logged and retried from what
    /// was stored; only shutdown ends it.
    pub async fn run(&self, shutdown: CancellationToken) {
        if let Some(kafka) = &self.kafka {
            while let Err(error) = ensure_checkpoints_topic(kafka).await {
                tracing::warn!(%error, "cannot create the checkpoints topic yet; retrying");
                if sleep_or_shutdown(Duration::from_secs(2), &shutdown).await {
                    return;
                }
            }
        }
        let mut backoff = Duration::from_millis(200);
        loop {
            let standby = self.settings.standby_retry;
            let Some(active) = until_active("notary", standby, backoff, &shutdown, || {
                self.try_activate()
            })
            .await
            else {
                return;
            };
            match active.serve(&shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(%error, "notary stopped; will resume from the stored tree");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    if sleep_or_shutdown(backoff, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

#[derive(sqlx::FromRow)]
struct LeafRow {
    #[sqlx(flatten)]
    event: ChainedEvent,
    global_position: i64,
    tx_id: String,
}

/// The notary while it holds the lock.
pub struct ActiveNotary<'a> {
    notary: &'a Notary,
    lock: PgConnection,
    frontier: Frontier,
    /// The last event in the tree: `(tx_id, global_position)`.
    after: (String, i64),
    /// The last checkpoint's tree size, and when it was signed (or this notary started).
    last_checkpoint: (u64, Instant),
    producer: Option<FutureProducer>,
}

impl ActiveNotary<'_> {
    /// Gives the notary's lock back and closes its connection.
    pub async fn stop(mut self) {
        sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(LOCK)
            .execute(&mut self.lock)
            .await
            .ok();
        self.lock.close().await.ok();
    }

    /// Leaves in the tree.
    pub fn tree_size(&self) -> u64 {
        self.frontier.size()
    }

    async fn serve(mut self, shutdown: &CancellationToken) -> Result<(), NotaryError> {
        loop {
            let built = self.build_batch().await?;
            if self.checkpoint_due() {
                self.checkpoint().await?;
            }
            if built < self.notary.settings.batch_size as usize {
                self.publish_pending().await;
                if sleep_or_shutdown(self.notary.settings.poll_interval, shutdown).await {
                    break;
                }
            } else if shutdown.is_cancelled() {
                break;
            }
        }
        tracing::info!(tree_size = self.tree_size(), "notary stopped");
        self.stop().await;
        Ok(())
    }

    /// Adds the next batch of commit-safe events to the tree; returns how many.
    pub async fn build_batch(&mut self) -> Result<usize, NotaryError> {
        let rows: Vec<LeafRow> = sqlx::query_as(SELECT_LEAVES_AFTER)
            .bind(&self.after.0)
            .bind(self.after.1)
            .bind(self.notary.settings.batch_size)
            .fetch_all(&mut self.lock)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(0);
        };
        let after = (last.tx_id.clone(), last.global_position);
        let from = self.frontier.size();
        let mut grown = self.frontier.clone();
        let mut nodes: Vec<(Subtree, Hash)> = Vec::with_capacity(rows.len() * 2);
        for row in &rows {
            nodes.extend(grown.push(leaf_hash(&leaf_entry(&row.event))));
        }
        let mut tx = self.lock.begin().await?;
        sqlx::query(
            "INSERT INTO merkle_leaves (leaf_index, global_position, aggregate_type, aggregate_id, sequence) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])",
        )
        .bind((from..grown.size()).map(|i| i as i64).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.global_position).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event.aggregate_type.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event.aggregate_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event.sequence).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO merkle_nodes (level, node_index, hash) \
             SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
        )
        .bind(
            nodes
                .iter()
                .map(|(s, _)| i16::from(s.level))
                .collect::<Vec<_>>(),
        )
        .bind(
            nodes
                .iter()
                .map(|(s, _)| s.index as i64)
                .collect::<Vec<_>>(),
        )
        .bind(nodes.iter().map(|(_, h)| h.to_vec()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        let moved = sqlx::query(
            "UPDATE merkle_builder SET tree_size = $1, tx_id = $2::text::xid8, \
                    global_position = $3, updated_at = now() \
              WHERE tree_size = $4",
        )
        .bind(grown.size() as i64)
        .bind(&after.0)
        .bind(after.1)
        .bind(from as i64)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Err(NotaryError::Inconsistent(format!(
                "the stored tree is no longer {from} leaves"
            )));
        }
        tx.commit().await?;
        self.frontier = grown;
        self.after = after;
        metrics::NOTARY_TREE_SIZE.set(self.frontier.size() as i64);
        Ok(rows.len())
    }

    /// Adds every commit-safe event to the tree; returns how many.
    pub async fn build_available(&mut self) -> Result<u64, NotaryError> {
        let mut total = 0;
        loop {
            let built = self.build_batch().await?;
            total += built as u64;
            if built < self.notary.settings.batch_size as usize {
                return Ok(total);
            }
        }
    }

    fn checkpoint_due(&self) -> bool {
        let (size, at) = self.last_checkpoint;
        let grown = self.frontier.size().saturating_sub(size);
        grown > 0
            && (grown >= self.notary.settings.checkpoint_leaves
                || at.elapsed() >= self.notary.settings.checkpoint_interval)
    }

    /// Signs and stores a checkpoint of the tree as it is now (none when it has not
    /// grown since the last one), then tries to publish what is unpublished.
    pub async fn checkpoint(&mut self) -> Result<Option<SignedCheckpoint>, NotaryError> {
        let size = self.frontier.size();
        if size == 0 || size == self.last_checkpoint.0 {
            return Ok(None);
        }
        let root = self.frontier.root();
        let signed = self.notary.key.sign(Checkpoint::new(
            &self.notary.settings.origin,
            size,
            &root,
            Utc::now(),
        ));
        sqlx::query(
            "INSERT INTO merkle_checkpoints (tree_size, root, origin, signed_at, key_id, signature) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tree_size) DO NOTHING",
        )
        .bind(size as i64)
        .bind(root.to_vec())
        .bind(&signed.checkpoint.origin)
        .bind(&signed.checkpoint.signed_at)
        .bind(&signed.key_id)
        .bind(&signed.signature)
        .execute(&mut self.lock)
        .await?;
        self.last_checkpoint = (size, Instant::now());
        metrics::NOTARY_CHECKPOINT_SIZE.set(size as i64);
        tracing::info!(tree_size = size, root = %signed.checkpoint.root_hash, "checkpoint signed");
        self.publish_pending().await;
        Ok(Some(signed))
    }

    /// Publishes stored checkpoints the topic has not acknowledged, oldest first. A
    /// broker that is away only delays them: they stay marked unpublished.
    pub async fn publish_pending(&mut self) {
        if let Err(error) = self.try_publish_pending().await {
            tracing::warn!(%error, "cannot publish checkpoints yet");
        }
    }

    async fn try_publish_pending(&mut self) -> Result<(), NotaryError> {
        let (Some(producer), Some(kafka)) = (&self.producer, &self.notary.kafka) else {
            return Ok(());
        };
        let pending = proofs::unpublished(&mut self.lock, 100).await?;
        let topic = checkpoints_topic(kafka);
        for signed in pending {
            let payload = serde_json::to_string(&signed)
                .map_err(|e| NotaryError::Inconsistent(e.to_string()))?;
            let key = signed.checkpoint.tree_size.to_string();
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(error, _)| error)?;
            sqlx::query("UPDATE merkle_checkpoints SET published = true WHERE tree_size = $1")
                .bind(signed.checkpoint.tree_size as i64)
                .execute(&mut self.lock)
                .await?;
        }
        Ok(())
    }
}
