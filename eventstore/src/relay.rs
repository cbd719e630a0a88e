//! The relay: publishes the event store to Kafka in commit order, without ever skipping
//! an event that commits late.
//!
//! It reads only rows whose transaction can no longer be in flight
//! (`tx_id < pg_snapshot_xmin(pg_current_snapshot())`), in `(tx_id, global_position)`
//! order after its checkpoint, and moves the checkpoint only once Kafka acknowledged
//! every message of a batch. One relay is active per name (a Postgres advisory lock);
//! others wait as hot standbys. A crash re-publishes at most the unacknowledged tail.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use cqrs_es::persist::EventUpcaster;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::envelope::{OutgoingRow, SELECT_OUTGOING_AFTER, topic_for};
use crate::kafka::{KafkaSettings, ensure_topics};
use crate::metrics;

/// A batch handed to the producer, its acknowledgements outstanding.
struct InFlight {
    /// Where the checkpoint moves once every delivery is acknowledged.
    last: Checkpoint,
    events: usize,
    /// Resolves once every delivery of the batch is acknowledged, in order. Polled
    /// through `&mut`, so a `select!` that picks another branch loses no progress.
    acknowledgements: Pin<Box<dyn Future<Output = Result<(), RelayError>> + Send>>,
    started: Instant,
}

/// Consecutive acknowledged batches, the checkpoint not yet past them.
struct Acknowledged {
    last: Checkpoint,
    events: usize,
    /// When the oldest of them was read.
    started: Instant,
}

/// What the relay has sent and not yet checkpointed: batches in send order.
struct Pipeline {
    /// The last event handed to the producer (the checkpoint when nothing is in flight).
    sent_up_to: Checkpoint,
    in_flight: VecDeque<InFlight>,
}

impl Pipeline {
    fn after(checkpoint: &Checkpoint) -> Self {
        Self {
            sent_up_to: checkpoint.clone(),
            in_flight: VecDeque::new(),
        }
    }

    /// `oldest`, just taken off the front and acknowledged, together with every batch
    /// after it whose acknowledgements are in too: the checkpoint moves past all of them
    /// with one write.
    fn acknowledged_from(&mut self, oldest: InFlight) -> Result<Acknowledged, RelayError> {
        let mut done = Acknowledged {
            last: oldest.last,
            events: oldest.events,
            started: oldest.started,
        };
        let mut look = Context::from_waker(Waker::noop());
        while let Some(next) = self.in_flight.front_mut() {
            let Poll::Ready(result) = next.acknowledgements.as_mut().poll(&mut look) else {
                break;
            };
            result?;
            let next = self.in_flight.pop_front().expect("the batch just polled");
            done.last = next.last;
            done.events += next.events;
        }
        Ok(done)
    }

    /// Waits until the oldest batch is acknowledged (never, when nothing is in flight).
    async fn oldest_acknowledged(&mut self) -> Result<(), RelayError> {
        match self.in_flight.front_mut() {
            Some(batch) => batch.acknowledgements.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

/// First wait before looking again at events held back by an open transaction.
const HELD_BACK_RETRY: Duration = Duration::from_millis(2);

/// The first event after the point `($1` tx id as text`, $2` global position`)` in
/// commit order, committed or not yet commit-safe: what [`ActiveRelay`] asks after each
/// look to know whether an open transaction holds events back.
pub const SELECT_NEXT_AFTER: &str = "SELECT global_position FROM events \
     WHERE (tx_id, global_position) > ($1::text::xid8, $2) \
     ORDER BY tx_id, global_position LIMIT 1";

/// The channel the append transaction notifies on commit.
pub const NOTIFY_CHANNEL: &str = "chronicle_events";

/// Tunables of the relay.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// Names the checkpoint and the advisory lock; relays of one name take turns.
    pub name: String,
    /// `CHRONICLE_RELAY_BATCH`: events read and published per round trip.
    pub batch_size: i64,
    /// `CHRONICLE_RELAY_POLL_MS`: how often to look without a notification (a long
    /// transaction that ends without appending sends none).
    pub poll_interval: Duration,
    /// How often a standby tries to take over.
    pub standby_retry: Duration,
    /// `linger.ms` of the producer.
    pub linger: Duration,
    /// `CHRONICLE_RELAY_IN_FLIGHT`: batches handed to the producer before the oldest must
    /// be acknowledged.
    pub in_flight: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            batch_size: 5_000,
            poll_interval: Duration::from_millis(500),
            standby_retry: Duration::from_secs(1),
            linger: Duration::from_millis(2),
            in_flight: 16,
        }
    }
}

/// Why a relay stopped publishing.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("event {position} cannot be published: {reason}")]
    Unpublishable { position: i64, reason: String },
}

/// Where the relay has got to: the last `(tx_id, global_position)` acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub tx_id: String,
    pub global_position: i64,
}

/// The relay process.
pub struct Relay {
    pool: PgPool,
    kafka: KafkaSettings,
    settings: RelaySettings,
    upcasters: Vec<Box<dyn EventUpcaster>>,
}

impl Relay {
    pub fn new(pool: PgPool, kafka: KafkaSettings, settings: RelaySettings) -> Self {
        Self {
            pool,
            kafka,
            settings,
            upcasters: chronicle_domain::upcast::upcasters(),
        }
    }

    /// The producer the relay publishes with (public so that a benchmark can produce
    /// with exactly these settings).
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        self.kafka
            .client_config("chronicle-relay")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.settings.linger.as_millis().to_string())
            .set("message.timeout.ms", "30000")
            .set("queue.buffering.max.messages", "200000")
            .create()
    }

    /// Takes the relay's advisory lock if it is free, and loads the checkpoint.
    /// `None` means another relay of this name is active.
    pub async fn try_activate(&self) -> Result<Option<ActiveRelay<'_>>, RelayError> {
        let mut lock = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let acquired: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(format!("chronicle.relay/{}", self.settings.name))
                .fetch_one(&mut lock)
                .await?;
        if !acquired {
            lock.close().await.ok();
            return Ok(None);
        }
        // A checkpoint lost in a database crash only re-publishes what follows the one
        // before it, which consumers drop as duplicates: its writes need not wait for
        // the WAL flush (one per acknowledged batch was the relay's main serial cost).
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut lock)
            .await?;
        sqlx::query(
            "INSERT INTO relay_checkpoints (name, tx_id, global_position) \
             VALUES ($1, '0', 0) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&self.settings.name)
        .execute(&mut lock)
        .await?;
        let (tx_id, global_position): (String, i64) = sqlx::query_as(
            "SELECT tx_id::text, global_position FROM relay_checkpoints WHERE name = $1",
        )
        .bind(&self.settings.name)
        .fetch_one(&mut lock)
        .await?;
        tracing::info!(name = %self.settings.name, %tx_id, global_position, "relay active");
        Ok(Some(ActiveRelay {
            relay: self,
            lock,
            producer: self.producer()?,
            checkpoint: Checkpoint {
                tx_id,
                global_position,
            },
        }))
    }

    /// Runs until `shutdown`: creates the topics, waits to become the active relay, then
    /// publishes whatever commits. Errors are logged and retried; only shutdown ends it.
    pub async fn run(&self, shutdown: CancellationToken) {
        while let Err(error) = ensure_topics(&self.kafka).await {
            tracing::warn!(%error, "cannot create topics yet; retrying");
            if sleep_or_shutdown(Duration::from_secs(2), &shutdown).await {
                return;
            }
        }
        let mut backoff = Duration::from_millis(200);
        loop {
            metrics::RELAY_ACTIVE.set(0);
            let standby = self.settings.standby_retry;
            let Some(active) =
                until_active("relay", standby, backoff, &shutdown, || self.try_activate()).await
            else {
                return;
            };
            metrics::RELAY_ACTIVE.set(1);
            match active.serve(&shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(%error, "relay stopped; will retry from its checkpoint");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    if sleep_or_shutdown(backoff, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Waits as a hot standby until `try_activate` takes a role's lock (`Some`), retrying
/// every `standby_retry` while another process holds it and after `backoff` when it
/// fails; `None` once `shutdown` comes. The relay's and the notary's one loop.
pub(crate) async fn until_active<A, E, F, Fut>(
    role: &str,
    standby_retry: Duration,
    backoff: Duration,
    shutdown: &CancellationToken,
    mut try_activate: F,
) -> Option<A>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<A>, E>>,
{
    loop {
        let wait = match try_activate().await {
            Ok(Some(active)) => return Some(active),
            Ok(None) => standby_retry,
            Err(error) => {
                tracing::warn!(%error, role, "cannot activate");
                backoff
            }
        };
        if sleep_or_shutdown(wait, shutdown).await {
            return None;
        }
    }
}

/// Sleeps for `duration` unless `shutdown` comes first; true when it did.
pub(crate) async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

/// The relay while it holds the lock.
pub struct ActiveRelay<'a> {
    relay: &'a Relay,
    /// Holds the advisory lock; checkpoints are written through it, so a relay that lost
    /// its lock (its connection) cannot move the checkpoint either.
    lock: PgConnection,
    producer: FutureProducer,
    checkpoint: Checkpoint,
}

impl ActiveRelay<'_> {
    /// The current checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Publishes until `shutdown`. Sending never waits for acknowledgements while there
    /// is room in flight: a batch committed while the previous one is still on its way to
    /// the broker goes out at once, and checkpoints follow the acknowledgements in order.
    async fn serve(mut self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        let mut listener = PgListener::connect_with(&self.relay.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let mut pipeline = Pipeline::after(&self.checkpoint);
        let mut retry = HELD_BACK_RETRY;
        let mut wait = self.relay.settings.poll_interval;
        let mut look = true;
        loop {
            if look {
                if self.fill(&mut pipeline).await? {
                    // No room left and more to send: make room.
                    self.settle_oldest(&mut pipeline).await?;
                    continue;
                }
                // Events committed behind an older, still open transaction are not safe
                // to publish yet, and that transaction's end sends no notification: look
                // again soon (backing off) rather than only at the next poll.
                wait = if self.held_back(&pipeline.sent_up_to).await? {
                    retry = (retry * 2).min(self.relay.settings.poll_interval);
                    retry
                } else {
                    retry = HELD_BACK_RETRY;
                    self.relay.settings.poll_interval
                };
            }
            look = true;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                notification = listener.recv() => { notification?; }
                acknowledged = pipeline.oldest_acknowledged() => {
                    acknowledged?;
                    let oldest = pipeline.in_flight.pop_front().expect("the batch just acknowledged");
                    self.advance(pipeline.acknowledged_from(oldest)?).await?;
                    // Room again, but nothing new committed said so: keep waiting.
                    look = false;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.producer
            .flush(Duration::from_secs(10))
            .map_err(RelayError::Kafka)?;
        while !pipeline.in_flight.is_empty() {
            self.settle_oldest(&mut pipeline).await?;
        }
        tracing::info!(checkpoint = ?self.checkpoint, "relay stopped");
        Ok(())
    }

    /// Whether committed events wait behind an open transaction.
    ///
    /// Asked as "the first event after `after` in commit order", not as `EXISTS`: the
    /// planner strips an `ORDER BY` inside `EXISTS`, and the generic plan of a prepared
    /// `EXISTS` over a row comparison is a sequential scan from the start of `events`,
    /// which reads every event ever published before it finds one after the checkpoint.
    /// This query runs after every look; as an `EXISTS` it took 2.4 ms on average over
    /// a one-minute benchmark and grew with the store (ADR 0016).
    async fn held_back(&self, after: &Checkpoint) -> Result<bool, sqlx::Error> {
        let next: Option<i64> = sqlx::query_scalar(SELECT_NEXT_AFTER)
            .bind(&after.tx_id)
            .bind(after.global_position)
            .fetch_optional(&self.relay.pool)
            .await?;
        Ok(next.is_some())
    }

    /// Publishes every event that is committed and commit-safe now, and waits until all
    /// of it is acknowledged and checkpointed; returns how many.
    ///
    /// Up to [`RelaySettings::in_flight`] batches are sent before the oldest must be
    /// acknowledged, so reading the store and Kafka's round trips overlap. The checkpoint
    /// only ever moves past a batch whose every delivery was acknowledged, in order; a
    /// failure leaves it there and the next attempt sends from it again (duplicates are
    /// dropped downstream by event id and position).
    pub async fn publish_available(&mut self) -> Result<usize, RelayError> {
        let mut pipeline = Pipeline::after(&self.checkpoint);
        let mut total = 0;
        loop {
            let more = self.fill(&mut pipeline).await?;
            if more {
                total += self.settle_oldest(&mut pipeline).await?;
                continue;
            }
            while !pipeline.in_flight.is_empty() {
                total += self.settle_oldest(&mut pipeline).await?;
            }
            return Ok(total);
        }
    }

    /// Publishes at most one batch and, once all of it is acknowledged, moves the
    /// checkpoint past it.
    pub async fn publish_batch(&mut self) -> Result<usize, RelayError> {
        let from = self.checkpoint.clone();
        let mut pipeline = Pipeline::after(&from);
        match self.send_batch(&from).await? {
            Some(batch) => {
                pipeline.in_flight.push_back(batch);
                self.settle_oldest(&mut pipeline).await
            }
            None => Ok(0),
        }
    }

    /// Sends batches after `pipeline.sent_up_to` while there is room in flight. True when
    /// it stopped for lack of room with a full batch just sent (more may be waiting).
    async fn fill(&self, pipeline: &mut Pipeline) -> Result<bool, RelayError> {
        while pipeline.in_flight.len() < self.relay.settings.in_flight.max(1) {
            let Some(batch) = self.send_batch(&pipeline.sent_up_to).await? else {
                return Ok(false);
            };
            let full = batch.events == self.relay.settings.batch_size as usize;
            pipeline.sent_up_to = batch.last.clone();
            pipeline.in_flight.push_back(batch);
            if !full {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Reads the next commit-safe batch after `after` and hands it to the producer.
    async fn send_batch(&self, after: &Checkpoint) -> Result<Option<InFlight>, RelayError> {
        let started = Instant::now();
        let rows: Vec<OutgoingRow> = sqlx::query_as(SELECT_OUTGOING_AFTER)
            .bind(&after.tx_id)
            .bind(after.global_position)
            .bind(self.relay.settings.batch_size)
            .fetch_all(&self.relay.pool)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        let last = Checkpoint {
            tx_id: last.tx_id.clone(),
            global_position: last.global_position,
        };
        let events = rows.len();
        let mut deliveries = Vec::with_capacity(events);
        for row in rows {
            deliveries.push((row.global_position, self.send(row).await?));
        }
        let acknowledgements = Box::pin(async move {
            for (position, delivery) in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((error, _))) => return Err(error.into()),
                    Err(_) => {
                        return Err(RelayError::Unpublishable {
                            position,
                            reason: "the producer dropped the delivery".to_owned(),
                        });
                    }
                }
            }
            Ok(())
        });
        Ok(Some(InFlight {
            last,
            events,
            acknowledgements,
            started,
        }))
    }

    /// Waits until the oldest batch in flight is acknowledged, then moves the checkpoint
    /// past it and every acknowledged batch after it; returns how many events that was.
    async fn settle_oldest(&mut self, pipeline: &mut Pipeline) -> Result<usize, RelayError> {
        let Some(mut oldest) = pipeline.in_flight.pop_front() else {
            return Ok(0);
        };
        oldest.acknowledgements.as_mut().await?;
        let done = pipeline.acknowledged_from(oldest)?;
        self.advance(done).await
    }

    /// Moves the checkpoint past `batch`, whose every delivery is acknowledged.
    async fn advance(&mut self, batch: Acknowledged) -> Result<usize, RelayError> {
        sqlx::query(
            "UPDATE relay_checkpoints SET tx_id = $2::text::xid8, global_position = $3, \
             published = published + $4, updated_at = now() WHERE name = $1",
        )
        .bind(&self.relay.settings.name)
        .bind(&batch.last.tx_id)
        .bind(batch.last.global_position)
        .bind(batch.events as i64)
        .execute(&mut self.lock)
        .await?;
        self.checkpoint = batch.last;
        metrics::RELAY_PUBLISHED.inc_by(batch.events as u64);
        metrics::RELAY_BATCH_SECONDS.observe(batch.started.elapsed().as_secs_f64());
        tracing::debug!(events = batch.events, checkpoint = ?self.checkpoint, "published");
        Ok(batch.events)
    }

    async fn send(&self, row: OutgoingRow) -> Result<DeliveryFuture, RelayError> {
        let position = row.global_position;
        let topic = topic_for(&self.relay.kafka.topic_prefix, &row.aggregate_type);
        let key = row.aggregate_id.clone();
        let waited = crate::clock::now() - row.recorded_at;
        metrics::RELAY_EVENT_DELAY.observe(waited.as_seconds_f64().max(0.0));
        let payload = row
            .encode(&self.relay.upcasters)
            .map_err(|e| RelayError::Unpublishable {
                position,
                reason: e.to_string(),
            })?;
        loop {
            let record = FutureRecord::to(&topic)
                .key(key.as_bytes())
                .payload(&payload);
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }
}

/// How far behind the relay is.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RelayLag {
    /// Committed events after the checkpoint (counted up to a cap).
    pub unpublished: i64,
    /// Of those, events that may not be published yet because an older transaction is
    /// still running somewhere in the cluster.
    pub held_back: i64,
    /// Age of the oldest transaction holding an xid, in seconds.
    pub oldest_transaction_seconds: f64,
}

/// The most unpublished events [`relay_lag`] counts.
pub const LAG_COUNT_CAP: i64 = 100_000;

/// Measures the relay's lag from the database (any process can): the events after the
/// checkpoint, counted up to [`LAG_COUNT_CAP`] along `events_commit_order`. The planner
/// has no statistics for `xid8`, so it guesses a third of the table follows any
/// checkpoint; under a cap of a million it chose a parallel scan of all of `events` once
/// the table had grown (105,000 blocks and 0.6–2.3 s a call at 2.5 GB, in the soak's
/// statement report; issue 14). Under this cap, walking the index and stopping is
/// cheaper by its own estimate: an index-only scan of what is pending (34 ms for 10,000
/// pending events on the same table).
pub async fn relay_lag(pool: &PgPool, name: &str) -> Result<RelayLag, sqlx::Error> {
    let (unpublished, held_back): (i64, i64) = sqlx::query_as(
        "WITH cp AS (
             SELECT coalesce((SELECT tx_id FROM relay_checkpoints WHERE name = $1), '0'::xid8) AS tx_id,
                    coalesce((SELECT global_position FROM relay_checkpoints WHERE name = $1), 0) AS pos),
         pending AS (
             SELECT e.tx_id FROM events e, cp
              WHERE (e.tx_id, e.global_position) > (cp.tx_id, cp.pos)
              ORDER BY e.tx_id, e.global_position
              LIMIT $2)
         SELECT count(*),
                count(*) FILTER (WHERE tx_id >= pg_snapshot_xmin(pg_current_snapshot()))
           FROM pending",
    )
    .bind(name)
    .bind(LAG_COUNT_CAP)
    .fetch_one(pool)
    .await?;
    let oldest: f64 = sqlx::query_scalar(
        "SELECT coalesce(extract(epoch FROM max(now() - xact_start)), 0)::float8 \
           FROM pg_stat_activity WHERE backend_xid IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(RelayLag {
        unpublished,
        held_back,
        oldest_transaction_seconds: oldest,
    })
}
