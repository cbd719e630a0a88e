//! The consumer loop every Kafka consumer of Chronicle shares (projectors and the
//! process manager).
//!
//! Correctness never rests on Kafka's committed offsets or on group balancing (tansu
//! 0.6 hands every member all partitions). Each projection stores, per partition, the
//! next offset to apply, in the same atomic step as its effects. The loop keeps those
//! offsets in memory, drops any message below them (a redelivery), and seeks back when
//! a message arrives above them (a fresh assignment that started elsewhere). Partitions
//! come from the group (`Assignment::Group`) or by explicit assignment, instance `i` of
//! `n` taking partitions `p` with `p % n == i` (`Assignment::Static`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::envelope::Envelope;
use crate::kafka::KafkaSettings;
use prometheus::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// How long without a message before a projection's `idle` is called.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// A (topic, partition) pair.
pub type PartitionKey = (String, i32);

/// One consumed message, owned.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
    /// The message's timestamp (milliseconds since the epoch): when the relay sent it.
    pub sent_at_ms: Option<i64>,
}

impl Delivered {
    /// The event envelope the message carries, or why it carries none (the reason a
    /// consumer dead-letters it with).
    pub fn envelope(&self) -> Result<Envelope, String> {
        let payload = self.payload.as_deref().ok_or("empty message")?;
        serde_json::from_slice(payload).map_err(|e| format!("not an event envelope: {e}"))
    }
}

/// Why a consumer could not apply a batch. The batch is retried from the stored
/// offsets, so nothing of it counts until it succeeds.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Other(String),
}

impl From<crate::error::StoreError> for ConsumerError {
    fn from(error: crate::error::StoreError) -> Self {
        use crate::error::StoreError;
        match error {
            StoreError::Unavailable(e) | StoreError::Database(e) => Self::Database(e),
            other => Self::Other(other.to_string()),
        }
    }
}

/// Sets aside a message `projector` cannot read, the one policy of every consumer: a row
/// in `projector_dead_letters` with the reason and the message as received, a count in
/// `chronicle_projector_dead_letters_total`, an error in the log; then the consumer goes
/// on. A redelivery of the same message adds nothing.
pub async fn dead_letter<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    projector: &str,
    delivered: &Delivered,
    reason: &str,
) -> Result<(), sqlx::Error> {
    tracing::error!(projector, topic = %delivered.topic, partition = delivered.partition, offset = delivered.offset, %reason, "unreadable message set aside");
    metrics::PROJECTOR_DEAD_LETTERS
        .with_label_values(&[projector])
        .inc();
    sqlx::query(
        "INSERT INTO projector_dead_letters (projector, topic, partition, \"offset\", error, message) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(projector)
    .bind(&delivered.topic)
    .bind(delivered.partition)
    .bind(delivered.offset)
    .bind(reason)
    .bind(delivered.payload.as_deref())
    .execute(executor)
    .await?;
    Ok(())
}

/// The next offset of each partition `projector` stored in `projector_offsets` (where
/// the read models and the process manager keep theirs).
pub async fn load_offsets(
    pool: &sqlx::PgPool,
    projector: &str,
) -> Result<HashMap<PartitionKey, i64>, sqlx::Error> {
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT topic, partition, next_offset FROM projector_offsets WHERE projector = $1",
    )
    .bind(projector)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
}

/// Stores `projector`'s next offset of each partition in `next`, in one statement, never
/// moving one back; sorted, so that writers of overlapping partitions lock rows in the
/// same order.
pub async fn store_offsets<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    projector: &str,
    next: &HashMap<(&str, i32), i64>,
) -> Result<(), sqlx::Error> {
    if next.is_empty() {
        return Ok(());
    }
    let mut next: Vec<_> = next.iter().collect();
    next.sort_unstable();
    sqlx::query(
        "INSERT INTO projector_offsets (projector, topic, partition, next_offset) \
         SELECT $1, topic, partition, next_offset \
           FROM unnest($2::text[], $3::int[], $4::bigint[]) AS v(topic, partition, next_offset) \
         ON CONFLICT (projector, topic, partition) DO UPDATE \
         SET next_offset = greatest(projector_offsets.next_offset, EXCLUDED.next_offset), \
             updated_at = now()",
    )
    .bind(projector)
    .bind(
        next.iter()
            .map(|((topic, _), _)| *topic)
            .collect::<Vec<_>>(),
    )
    .bind(
        next.iter()
            .map(|((_, partition), _)| *partition)
            .collect::<Vec<_>>(),
    )
    .bind(next.iter().map(|(_, offset)| **offset).collect::<Vec<_>>())
    .execute(executor)
    .await?;
    Ok(())
}

/// A consumer of the event topics that stores its own offsets, atomically with its
/// effects, instead of committing them to Kafka: the read models, the search index and
/// the process manager. [`Projector`] runs one.
pub trait OffsetStoringConsumer: Send + Sync + 'static {
    /// The projector's name: its offsets and its consumer group are keyed by it.
    fn name(&self) -> &str;

    /// The topics it consumes: all of Chronicle's by default.
    fn topics(&self, kafka: &KafkaSettings) -> Vec<String> {
        kafka.topics()
    }

    /// `fetch.wait.max.ms` of this projection's consumer. tansu 0.6 holds every fetch
    /// for the whole wait and reads every partition of the fetch once per fetch, so each
    /// consumer costs the broker about one query per partition per wait even when idle
    /// (ADR 0014). A projection whose effects only show periodically can wait longer.
    fn fetch_wait(&self, kafka: &KafkaSettings) -> Duration {
        kafka.fetch_wait
    }

    /// The next offset to apply, per partition, as durably stored.
    fn stored_offsets(
        &self,
    ) -> impl Future<Output = Result<HashMap<PartitionKey, i64>, ConsumerError>> + Send;

    /// Applies a batch (in per-partition offset order) and stores, in the same atomic
    /// step, each partition's next offset (`last offset + 1`).
    fn apply_batch(
        &self,
        batch: &[Delivered],
    ) -> impl Future<Output = Result<(), ConsumerError>> + Send;

    /// Called when no message arrived for a while: a projection that buffers work may
    /// store it now.
    fn idle(&self) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        async { Ok(()) }
    }

    /// Called once before the projector stops: store everything applied so far.
    fn flush(&self) -> impl Future<Output = Result<(), ConsumerError>> + Send {
        async { Ok(()) }
    }
}

/// How a projector instance gets its partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignment {
    /// Subscribe as a member of the consumer group.
    Group,
    /// Take partitions `p` with `p % instances == instance`, without group balancing.
    Static { instance: u32, instances: u32 },
}

/// Tunables of a projector.
#[derive(Clone, Debug)]
pub struct ProjectorSettings {
    /// Most messages applied in one batch.
    pub batch_max: usize,
    /// Longest wait to fill a batch once its first message arrived.
    pub batch_wait: Duration,
    pub assignment: Assignment,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        Self {
            // A batch costs about 11 ms besides its events (its statements, planning and
            // commit; measured by the pipeline benchmark: 500 → 0.45 of raw consume, 1,000
            // → 0.58, 2,000 → 0.67, 5,000 → 0.69). Batches only grow this large when a
            // backlog is waiting; under light load they hold what arrived within
            // `batch_wait`.
            batch_max: 2_000,
            // Short: under load, batches fill from what queued up while the previous one
            // was applied; when quiet, every millisecond here is read-your-writes latency.
            batch_wait: Duration::from_millis(2),
            // Explicit assignment by default: every broker honours it. tansu 0.6's
            // group protocol hands every member all partitions, and after a member's
            // kill -9 it left the restarted members with none (ADR 0005).
            assignment: Assignment::Static {
                instance: 0,
                instances: 1,
            },
        }
    }
}

/// Raises a flag when the group hands this member a new assignment.
#[derive(Clone, Default)]
struct RebalanceFlag {
    assigned: Arc<AtomicBool>,
}

impl ClientContext for RebalanceFlag {}

impl ConsumerContext for RebalanceFlag {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(partitions = partitions.count(), "partitions assigned");
            self.assigned.store(true, Ordering::SeqCst);
        }
    }
}

type ProjectorConsumer = StreamConsumer<RebalanceFlag>;

/// Runs a projection over Chronicle's topics.
pub struct Projector<P> {
    projection: Arc<P>,
    kafka: KafkaSettings,
    settings: ProjectorSettings,
    /// `chronicle_projector_event_delay_seconds` of this projection, received / applied,
    /// looked up once rather than per message.
    delay: [Histogram; 2],
}

/// Per-partition bookkeeping of the loop.
struct Positions {
    /// Next offset to apply, per partition.
    next: HashMap<PartitionKey, i64>,
    /// When the loop last asked Kafka to seek a partition back.
    sought: HashMap<PartitionKey, Instant>,
}

impl<P: OffsetStoringConsumer> Projector<P> {
    pub fn new(projection: Arc<P>, kafka: KafkaSettings, settings: ProjectorSettings) -> Self {
        let delay = ["received", "applied"].map(|stage| {
            metrics::PROJECTOR_EVENT_DELAY.with_label_values(&[projection.name(), stage])
        });
        Self {
            projection,
            kafka,
            settings,
            delay,
        }
    }

    /// Runs until `shutdown`, restarting from the stored offsets after any failure.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.run_once(&shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(projector = self.projection.name(), %error, "projector failed; restarting from stored offsets");
                    metrics::PROJECTOR_RESTARTS
                        .with_label_values(&[self.projection.name()])
                        .inc();
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn consumer(&self, flag: RebalanceFlag) -> Result<ProjectorConsumer, KafkaError> {
        let name = self.projection.name();
        let fetch_wait = self.projection.fetch_wait(&self.kafka).as_millis().max(1);
        self.kafka
            .consumer_config(
                &format!("chronicle-{name}"),
                &format!("{}chronicle.{name}", self.kafka.topic_prefix),
            )
            .set("fetch.wait.max.ms", fetch_wait.to_string())
            .create_with_context(flag)
    }

    async fn run_once(&self, shutdown: &CancellationToken) -> Result<(), ConsumerError> {
        let flag = RebalanceFlag::default();
        let assigned = flag.assigned.clone();
        let consumer = self.consumer(flag)?;
        let mut positions = Positions {
            next: self.projection.stored_offsets().await?,
            sought: HashMap::new(),
        };
        let topics = self.projection.topics(&self.kafka);
        match self.settings.assignment {
            Assignment::Group => {
                let names: Vec<&str> = topics.iter().map(String::as_str).collect();
                consumer.subscribe(&names)?;
            }
            Assignment::Static {
                instance,
                instances,
            } => {
                let list = self
                    .static_assignment(&consumer, instance, instances, &positions)
                    .await?;
                consumer.assign(&list)?;
            }
        }
        tracing::info!(projector = self.projection.name(), assignment = ?self.settings.assignment, "projector started");
        loop {
            let Some(batch) = self.next_batch(&consumer, shutdown).await? else {
                return Ok(());
            };
            if assigned.swap(false, Ordering::SeqCst) {
                // Another member may have moved the stored offsets meanwhile.
                positions.next = self.projection.stored_offsets().await?;
                positions.sought.clear();
            }
            let accepted = self.accept(&consumer, &mut positions, batch);
            if accepted.is_empty() {
                continue;
            }
            let started = Instant::now();
            self.projection.apply_batch(&accepted).await?;
            metrics::PROJECTOR_BATCH_SECONDS
                .with_label_values(&[self.projection.name()])
                .observe(started.elapsed().as_secs_f64());
            observe_delay(&self.delay[1], &accepted);
            metrics::PROJECTOR_APPLIED
                .with_label_values(&[self.projection.name()])
                .inc_by(accepted.len() as u64);
            for delivered in &accepted {
                positions.next.insert(
                    (delivered.topic.clone(), delivered.partition),
                    delivered.offset + 1,
                );
            }
        }
    }

    async fn static_assignment(
        &self,
        consumer: &ProjectorConsumer,
        instance: u32,
        instances: u32,
        positions: &Positions,
    ) -> Result<TopicPartitionList, ConsumerError> {
        let mut list = TopicPartitionList::new();
        for topic in self.projection.topics(&self.kafka) {
            let metadata = consumer
                .fetch_metadata(Some(&topic), self.kafka.admin_timeout)
                .map_err(ConsumerError::Kafka)?;
            let partitions = metadata
                .topics()
                .first()
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().len() as i32)
                .unwrap_or(0);
            // A topic the relay has not created yet has no partitions to assign; assigning
            // nothing would leave this projector idle for good. Fail, and `run` retries
            // with backoff until the topic exists.
            if partitions == 0 {
                return Err(ConsumerError::Other(format!(
                    "topic {topic} has no partitions yet (not created?)"
                )));
            }
            for partition in (0..partitions).filter(|p| (*p as u32) % instances.max(1) == instance)
            {
                let offset = match positions.next.get(&(topic.clone(), partition)) {
                    Some(next) => Offset::Offset(*next),
                    None => Offset::Beginning,
                };
                list.add_partition_offset(&topic, partition, offset)?;
            }
        }
        Ok(list)
    }

    /// Waits for a first message (or shutdown, after a flush), then gathers more until
    /// the batch is full or `batch_wait` has passed. Quiet spells call `idle`.
    async fn next_batch(
        &self,
        consumer: &ProjectorConsumer,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<Delivered>>, ConsumerError> {
        let first = loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => {
                    self.projection.flush().await?;
                    return Ok(None);
                }
                _ = tokio::time::sleep(IDLE_TICK) => {
                    self.projection.idle().await?;
                    continue;
                }
                received = consumer.recv() => received,
            };
            match received {
                Ok(message) => break self.received(&message),
                Err(error) => {
                    // Broker hiccups are reported here and recovered by librdkafka.
                    tracing::warn!(projector = self.projection.name(), %error, "consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + self.settings.batch_wait;
        while batch.len() < self.settings.batch_max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(message)) => batch.push(self.received(&message)),
                Ok(Err(error)) => {
                    tracing::warn!(projector = self.projection.name(), %error, "consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(Some(batch))
    }

    /// Takes a received message, timing its way from the relay.
    fn received(&self, message: &rdkafka::message::BorrowedMessage<'_>) -> Delivered {
        let delivered = owned(message);
        observe_delay(&self.delay[0], std::slice::from_ref(&delivered));
        delivered
    }

    /// Keeps the messages that come next per the stored offsets. Redeliveries are
    /// dropped; a partition that runs ahead of its stored offset, or far behind it (a
    /// fresh assignment starting from the beginning), is sought to it.
    fn accept(
        &self,
        consumer: &ProjectorConsumer,
        positions: &mut Positions,
        batch: Vec<Delivered>,
    ) -> Vec<Delivered> {
        let mut next = positions.next.clone();
        let mut reposition: HashSet<PartitionKey> = HashSet::new();
        let mut accepted = Vec::with_capacity(batch.len());
        for delivered in batch {
            let key = (delivered.topic.clone(), delivered.partition);
            let expected = next.get(&key).copied().unwrap_or(0);
            if delivered.offset == expected && !reposition.contains(&key) {
                next.insert(key, expected + 1);
                accepted.push(delivered);
                continue;
            }
            if delivered.offset < expected {
                metrics::PROJECTOR_SKIPPED
                    .with_label_values(&[self.projection.name()])
                    .inc();
            }
            let far_behind = expected - delivered.offset > self.settings.batch_max as i64;
            if delivered.offset > expected || far_behind {
                reposition.insert(key);
            }
        }
        for key in reposition {
            self.seek(consumer, positions, key);
        }
        accepted
    }

    /// Asks Kafka to continue a partition from its stored offset (at most every half
    /// second per partition, while the previous seek takes effect).
    fn seek(&self, consumer: &ProjectorConsumer, positions: &mut Positions, key: PartitionKey) {
        let expected = positions.next.get(&key).copied().unwrap_or(0);
        let due = positions
            .sought
            .get(&key)
            .is_none_or(|at| at.elapsed() > Duration::from_millis(500));
        if !due {
            return;
        }
        tracing::info!(projector = self.projection.name(), topic = %key.0, partition = key.1, offset = expected, "seeking to the stored offset");
        // A zero timeout starts the seek without blocking the runtime.
        if let Err(error) = consumer.seek(&key.0, key.1, Offset::Offset(expected), Duration::ZERO) {
            tracing::warn!(%error, "seek failed; will retry");
        }
        positions.sought.insert(key, Instant::now());
    }
}

/// Observes, per message, the time since the relay sent it (the message timestamp) in
/// `histogram`: the stages of command → visible that happen after the relay.
fn observe_delay(histogram: &Histogram, messages: &[Delivered]) {
    let now = crate::clock::now().timestamp_millis();
    for sent in messages.iter().filter_map(|m| m.sent_at_ms) {
        histogram.observe((now - sent).max(0) as f64 / 1000.0);
    }
}

fn owned(message: &rdkafka::message::BorrowedMessage<'_>) -> Delivered {
    Delivered {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        payload: message.payload().map(<[u8]>::to_vec),
        sent_at_ms: message.timestamp().to_millis(),
    }
}
