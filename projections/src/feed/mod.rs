//! The live feed (issue 18, ADR 0037): every event, once the read models applied it, to
//! the subscribers who may see it, in Kafka's order, resumable from a
//! [`FeedPosition`] on any instance.
//!
//! - [`hub`]: the ring of released messages and the subscribers' cursors over it.
//! - [`Feed`] (here): one Kafka tail per process that releases messages as the
//!   read-model projector's stored offsets pass them, and the reads of Kafka that bring
//!   a subscriber whose point is older than the ring up to it ([`CatchUp`]).
//!
//! Which message delivers an event is decided by the read models' journal: the one it
//! was applied from (`rm_applied_events.kafka_partition/kafka_offset`). A second copy
//! sent by a relay retry, or a copy the read models set aside because it came before its
//! predecessor, delivers nothing, on every instance and every resume alike.

pub mod hub;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chronicle_eventstore::consumer::load_offsets;
use chronicle_eventstore::feed::FeedPosition;
use chronicle_eventstore::kafka::KafkaSettings;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

pub use hub::{FeedEvent, Filter, Frame, Hub, NotReady, Ready, Released, Subscription, Viewer};

use crate::metrics;
use crate::read_models::READ_MODELS;
use crate::watch::ProjectionWatch;

/// Tunables of the live feed (environment names in the README).
#[derive(Clone, Debug)]
pub struct FeedSettings {
    /// `CHRONICLE_FEED_BUFFER_EVENTS`: released messages held in memory for live
    /// subscribers and quick resumes. A subscriber further behind than this, with events
    /// of its own among the dropped ones, is cut with its resume point.
    pub buffer_events: usize,
    /// `CHRONICLE_FEED_HEARTBEAT_SECONDS`: comment lines that keep proxies from closing
    /// a quiet stream (each also carries the point to resume from).
    pub heartbeat: Duration,
    /// `CHRONICLE_FEED_RETRY_MS`: the reconnection delay advised to clients (`retry:`).
    pub retry: Duration,
    /// `CHRONICLE_FEED_MAX_PER_PRINCIPAL`: streams one principal may hold open on one
    /// process.
    pub per_principal: usize,
    /// `CHRONICLE_FEED_MAX_SUBSCRIBERS`: streams one process holds open at most.
    pub max_subscribers: usize,
    /// `CHRONICLE_FEED_CATCH_UPS`: resumes older than the buffer reading Kafka at once.
    pub catch_ups: usize,
    /// `CHRONICLE_FEED_RETENTION_HOURS`: how far back a resume may reach; an older point
    /// answers `410 feed_position_expired` (so does one Kafka no longer holds).
    pub retention: Duration,
    /// `CHRONICLE_FEED_TICKET_SECONDS`: how long a stream ticket may wait to be used.
    pub ticket_ttl: Duration,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            buffer_events: 10_000,
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(3),
            per_principal: 8,
            max_subscribers: 20_000,
            catch_ups: 4,
            retention: Duration::from_secs(24 * 3600),
            ticket_ttl: Duration::from_secs(60),
        }
    }
}

/// Why a resume cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// The point is older than the feed's retention, or Kafka no longer holds it.
    #[error("{0}")]
    Expired(String),
    /// Too many resumes are reading Kafka now.
    #[error("too many resumes are reading history now")]
    Busy,
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Other(String),
}

/// A message of the events topics as the tail or a catch-up read it.
struct Consumed {
    topic: usize,
    partition: usize,
    offset: u64,
    payload: Option<Vec<u8>>,
    sent_at_ms: Option<i64>,
}

/// The fields of an envelope the feed decides by.
#[derive(Deserialize)]
struct Head {
    global_position: i64,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
}

/// An event's row in the read models' journal, with its aggregate's owner.
#[derive(sqlx::FromRow)]
struct Applied {
    global_position: i64,
    kafka_partition: Option<i32>,
    kafka_offset: Option<i64>,
    owner: Option<String>,
}

/// The live feed of one process.
pub struct Feed {
    pub hub: Arc<Hub>,
    pool: PgPool,
    kafka: KafkaSettings,
    settings: FeedSettings,
    watch: ProjectionWatch,
    topics: Vec<String>,
    started: AtomicBool,
    catch_ups: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// What the read models have applied, as a point of the feed over `topics` (of
/// `partitions` each): the read-model projector's next offset of every partition.
pub async fn applied_by_read_models(
    pool: &PgPool,
    topics: &[String],
    partitions: usize,
) -> Result<FeedPosition, sqlx::Error> {
    let stored = load_offsets(pool, READ_MODELS).await?;
    let mut applied = FeedPosition::start(topics.len(), partitions);
    for ((topic, partition), next) in stored {
        if let Some(index) = topics.iter().position(|t| *t == topic)
            && next > 0
        {
            applied.advance(index, partition as usize, next as u64 - 1);
        }
    }
    Ok(applied)
}

/// Most messages the tail holds that the read models have not passed yet; it stops
/// reading while that many wait (librdkafka's own prefetch is bounded too).
const MAX_PENDING: usize = 20_000;

impl Feed {
    pub fn new(
        pool: PgPool,
        kafka: KafkaSettings,
        settings: FeedSettings,
        watch: ProjectionWatch,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            hub: Hub::new(settings.buffer_events),
            topics: kafka.topics(),
            catch_ups: Arc::new(Semaphore::new(settings.catch_ups.max(1))),
            pool,
            kafka,
            settings,
            watch,
            started: AtomicBool::new(false),
            shutdown,
        })
    }

    pub fn settings(&self) -> &FeedSettings {
        &self.settings
    }

    /// The layout of feed positions: topics, and partitions of each.
    pub fn layout(&self) -> (usize, usize) {
        (self.topics.len(), self.kafka.partitions.max(1) as usize)
    }

    /// Reads a feed position of this layout.
    pub fn decode(
        &self,
        text: &str,
    ) -> Result<FeedPosition, chronicle_eventstore::feed::PositionError> {
        let (topics, partitions) = self.layout();
        FeedPosition::decode(text, topics, partitions)
    }

    /// Starts the tail on first use and waits (bounded) until it has a starting point.
    pub async fn ready(self: &Arc<Self>) -> Result<(), NotReady> {
        if !self.started.swap(true, Ordering::SeqCst) {
            let feed = self.clone();
            tokio::spawn(async move { feed.run_tail().await });
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.hub.head().is_none() {
            if tokio::time::Instant::now() >= deadline || self.shutdown.is_cancelled() {
                return Err(NotReady);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The read-model projector's next offset of every partition: what it has applied.
    async fn gate(&self) -> Result<FeedPosition, sqlx::Error> {
        applied_by_read_models(&self.pool, &self.topics, self.layout().1).await
    }

    fn consumer(&self, name: &str) -> Result<StreamConsumer, KafkaError> {
        self.kafka
            .consumer_config(
                &format!("chronicle-feed-{name}"),
                &format!("{}chronicle.feed", self.kafka.topic_prefix),
            )
            // A point Kafka no longer holds is an answer (410), not a reason to read
            // from elsewhere.
            .set("auto.offset.reset", "error")
            .create()
    }

    fn message(&self, message: &BorrowedMessage<'_>) -> Option<Consumed> {
        let topic = self.topics.iter().position(|t| t == message.topic())?;
        Some(Consumed {
            topic,
            partition: usize::try_from(message.partition()).ok()?,
            offset: u64::try_from(message.offset()).ok()?,
            payload: message.payload().map(<[u8]>::to_vec),
            sent_at_ms: message.timestamp().to_millis(),
        })
    }

    async fn run_tail(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.tail().await {
                Ok(()) => return,
                Err(error) => tracing::warn!(%error, "live feed tail failed; restarting"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Reads every partition from the ring's head and releases what the read models
    /// passed, until shutdown.
    async fn tail(&self) -> Result<(), CatchUpError> {
        let mut commits = self.watch.commits();
        let mut gate = self.gate().await?;
        let start = self.hub.start_at(gate.clone());
        let consumer = self.consumer("tail")?;
        let mut list = TopicPartitionList::new();
        for (topic, partition, next) in start.partitions() {
            list.add_partition_offset(
                &self.topics[topic],
                partition as i32,
                Offset::Offset(next as i64),
            )?;
        }
        consumer.assign(&list)?;
        tracing::info!(position = %start.encode(), "live feed reading");
        let (topics, partitions) = self.layout();
        let mut expected = start;
        let mut pending: Vec<VecDeque<Consumed>> =
            (0..topics * partitions).map(|_| VecDeque::new()).collect();
        let mut waiting = 0usize;
        let mut stale = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                received = consumer.recv(), if waiting < MAX_PENDING => {
                    let mut received = Some(received);
                    // What has arrived already is taken too: one release (and one query)
                    // for many messages when the tail runs behind the read models.
                    while let Some(result) = received.take() {
                        match result {
                            Ok(message) => {
                                if let Some(message) = self.message(&message)
                                    && !expected.is_past(message.topic, message.partition, message.offset)
                                {
                                    expected.advance(message.topic, message.partition, message.offset);
                                    pending[message.topic * partitions + message.partition]
                                        .push_back(message);
                                    waiting += 1;
                                }
                            }
                            Err(error) => {
                                // Broker hiccups are reported here and recovered by librdkafka.
                                tracing::warn!(%error, "live feed consumer error");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                break;
                            }
                        }
                        if waiting < MAX_PENDING {
                            received = consumer.recv().now_or_never();
                        }
                    }
                }
                changed = commits.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    stale = true;
                }
                _ = tick.tick() => stale = true,
            }
            if waiting == 0 {
                continue;
            }
            // Read the projector's offsets again only when it committed since they were
            // read (a commit noticed while nothing waited counts too: the messages it
            // passed may arrive here after its notification).
            if stale {
                gate = self.gate().await?;
                stale = false;
            }
            let mut passed = Vec::new();
            for (slot, queue) in pending.iter_mut().enumerate() {
                let (topic, partition) = (slot / partitions, slot % partitions);
                while let Some(front) = queue.front()
                    && gate.is_past(topic, partition, front.offset)
                {
                    passed.extend(queue.pop_front());
                }
            }
            if passed.is_empty() {
                continue;
            }
            waiting -= passed.len();
            let released = self.decide(passed).await?;
            self.hub.release(released);
            metrics::FEED_BUFFERED.set(self.hub.held() as i64);
        }
    }

    /// What each message delivers: the event the read models applied from it, with the
    /// owner of its aggregate; nothing for any other copy.
    async fn decide(&self, messages: Vec<Consumed>) -> Result<Vec<Released>, sqlx::Error> {
        let heads: Vec<Option<Head>> = messages
            .iter()
            .map(|m| serde_json::from_slice(m.payload.as_deref()?).ok())
            .collect();
        let positions: Vec<i64> = heads.iter().flatten().map(|h| h.global_position).collect();
        let rows: Vec<Applied> = sqlx::query_as(
            "SELECT j.global_position, j.kafka_partition, j.kafka_offset, \
                    CASE j.aggregate_type \
                      WHEN 'Account' THEN (SELECT owner FROM accounts WHERE account_id = j.aggregate_id) \
                      WHEN 'Booking' THEN (SELECT owner FROM bookings WHERE booking_id = j.aggregate_id) \
                      WHEN 'Payment' THEN (SELECT owner FROM payments WHERE payment_id = j.aggregate_id) \
                      WHEN 'Subscription' THEN \
                        (SELECT owner FROM subscriptions WHERE subscription_id = j.aggregate_id) \
                    END AS owner \
               FROM rm_applied_events j WHERE j.global_position = ANY($1)",
        )
        .bind(&positions)
        .fetch_all(&self.pool)
        .await?;
        let applied: HashMap<i64, Applied> = rows
            .into_iter()
            .map(|row| (row.global_position, row))
            .collect();
        Ok(messages
            .into_iter()
            .zip(heads)
            .map(|(message, head)| {
                let event = head.and_then(|head| {
                    let row = applied.get(&head.global_position)?;
                    let here = (Some(message.partition as i32), Some(message.offset as i64));
                    let journaled = (row.kafka_partition, row.kafka_offset);
                    // A journal row without a source was applied before sources were
                    // recorded (or by a rebuild): delivered wherever it is met.
                    if journaled != here && journaled != (None, None) {
                        return None;
                    }
                    Some(Arc::new(FeedEvent {
                        global_position: head.global_position,
                        aggregate_type: head.aggregate_type,
                        aggregate_id: head.aggregate_id,
                        event_type: head.event_type,
                        owner: row.owner.clone(),
                        data: one_line(message.payload.as_deref()?)?,
                        sent_at_ms: message.sent_at_ms,
                    }))
                });
                Released {
                    topic: message.topic,
                    partition: message.partition,
                    offset: message.offset,
                    event,
                    sent_at_ms: message.sent_at_ms,
                }
            })
            .collect())
    }

    /// Reads Kafka from `from` up to `upto` (the ring's start) for a resume older than
    /// the ring. Checks first that the point is still held: each partition's first
    /// message must be the one asked for, and not older than the retention.
    pub async fn catch_up(
        self: &Arc<Self>,
        from: &FeedPosition,
        upto: &FeedPosition,
    ) -> Result<CatchUp, CatchUpError> {
        let permit = self
            .catch_ups
            .clone()
            .try_acquire_owned()
            .map_err(|_| CatchUpError::Busy)?;
        let consumer = self.consumer("resume")?;
        let mut list = TopicPartitionList::new();
        let mut open = HashMap::new();
        for ((topic, partition, next), (_, _, end)) in from.partitions().zip(upto.partitions()) {
            if next < end {
                list.add_partition_offset(
                    &self.topics[topic],
                    partition as i32,
                    Offset::Offset(next as i64),
                )?;
                open.insert((topic, partition), (next, end));
            }
        }
        consumer.assign(&list)?;
        metrics::FEED_CATCH_UPS.inc();
        let mut catch_up = CatchUp {
            feed: self.clone(),
            consumer,
            open,
            buffered: VecDeque::new(),
            _permit: permit,
        };
        catch_up.check_start().await?;
        Ok(catch_up)
    }
}

/// A retention as people say it: `24 h`, or seconds when shorter than an hour.
pub fn hours(retention: Duration) -> String {
    match retention.as_secs() {
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s => format!("{s} s"),
    }
}

/// The envelope as one line of text (SSE `data:` ends at a line break). The relay's
/// JSON has none; anything else is written compactly.
fn one_line(payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    if !text.contains(['\n', '\r']) {
        return Some(text.to_owned());
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    serde_json::to_string(&value).ok()
}

/// A resume's read of Kafka, from its point up to the ring.
pub struct CatchUp {
    feed: Arc<Feed>,
    consumer: StreamConsumer,
    /// Partitions still to read: next offset wanted, and where the ring begins.
    open: HashMap<(usize, usize), (u64, u64)>,
    /// Read while checking the start, not handed out yet.
    buffered: VecDeque<Consumed>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for CatchUp {
    fn drop(&mut self) {
        metrics::FEED_CATCH_UPS.dec();
    }
}

/// Most messages a catch-up hands out at once.
const CATCH_UP_CHUNK: usize = 500;

impl CatchUp {
    /// Reads until every partition gave its first message, and refuses a point Kafka no
    /// longer holds or older than the retention.
    async fn check_start(&mut self) -> Result<(), CatchUpError> {
        let mut unchecked: HashMap<(usize, usize), u64> = self
            .open
            .iter()
            .map(|(slot, (next, _))| (*slot, *next))
            .collect();
        let deadline = tokio::time::Instant::now() + self.feed.kafka.admin_timeout;
        let oldest = chronicle_eventstore::clock::now().timestamp_millis()
            - self.feed.settings.retention.as_millis() as i64;
        while !unchecked.is_empty() {
            let received = tokio::time::timeout_at(deadline, self.consumer.recv())
                .await
                .map_err(|_| CatchUpError::Other("Kafka did not answer in time".into()))?;
            let message = match received {
                Ok(message) => message,
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange)) => {
                    return Err(CatchUpError::Expired(
                        "Kafka no longer holds the events after this point".into(),
                    ));
                }
                Err(error) => return Err(error.into()),
            };
            let Some(message) = self.feed.message(&message) else {
                continue;
            };
            let slot = (message.topic, message.partition);
            if let Some(wanted) = unchecked.remove(&slot) {
                if message.offset > wanted {
                    return Err(CatchUpError::Expired(
                        "Kafka no longer holds the events after this point".into(),
                    ));
                }
                if message.sent_at_ms.is_some_and(|sent| sent < oldest) {
                    return Err(CatchUpError::Expired(format!(
                        "the events after this point are older than the feed's retention ({})",
                        hours(self.feed.settings.retention)
                    )));
                }
            }
            self.buffered.push_back(message);
        }
        Ok(())
    }

    /// The next released messages in order; `None` once the ring's start is reached.
    pub async fn next(&mut self) -> Result<Option<Vec<Released>>, CatchUpError> {
        let mut chunk = Vec::new();
        let deadline = tokio::time::Instant::now() + self.feed.kafka.admin_timeout;
        while !self.open.is_empty() && chunk.len() < CATCH_UP_CHUNK {
            let message = match self.buffered.pop_front() {
                Some(message) => message,
                None if !chunk.is_empty() => {
                    // Hand out what is here unless more is at hand.
                    match tokio::time::timeout(Duration::from_millis(5), self.consumer.recv()).await
                    {
                        Ok(received) => match self.feed.message(&received?) {
                            Some(message) => message,
                            None => continue,
                        },
                        Err(_) => break,
                    }
                }
                None => {
                    let received = tokio::time::timeout_at(deadline, self.consumer.recv())
                        .await
                        .map_err(|_| CatchUpError::Other("Kafka did not answer in time".into()))?;
                    match self.feed.message(&received?) {
                        Some(message) => message,
                        None => continue,
                    }
                }
            };
            let slot = (message.topic, message.partition);
            let Some((next, end)) = self.open.get_mut(&slot) else {
                continue;
            };
            if message.offset < *next {
                continue;
            }
            if message.offset >= *end {
                self.open.remove(&slot);
                continue;
            }
            *next = message.offset + 1;
            if *next >= *end {
                self.open.remove(&slot);
            }
            chunk.push(message);
        }
        if chunk.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.feed.decide(chunk).await?))
    }
}
