//! Pipeline benchmark: how fast events move from the store through Kafka into the read
//! models, each stage next to a baseline measured in the same run on the same data.
//!
//! `CHRONICLE_KAFKA_BROKERS=HOST:PORT cargo run --release -p chronicle-bench --bin pipeline -- [EVENTS]`
//! (default 200,000). It needs PostgreSQL (as the tests do: `CHRONICLE_TEST_DATABASE_URL`,
//! default the local server) and a Kafka-protocol broker; for a local one,
//! `source scripts/lib.sh; start_tansu 127.0.0.1:29092 target/bench-broker` and
//! `export CHRONICLE_KAFKA_BROKERS=127.0.0.1:29092`. A fresh database is seeded with
//! EVENTS valid events (`chronicle_tests::seed`); every run uses fresh topics
//! (`bench-<uuid>.`, the default shape: 6 partitions, replication 1).
//!
//! The figures (events/s; ratio = ours / baseline, so 1.0 means "as fast as the raw
//! client", lower is slower):
//!
//! 1. **Relay**: the real `Relay` with `RelaySettings::default()` (what `chronicle relay`
//!    runs with when `CHRONICLE_RELAY_*` is unset), from its start until `relay_lag`
//!    reports nothing unpublished. Baseline: the same envelopes, read and serialized as
//!    the relay does before the clock starts, produced with the relay's own producer
//!    (`Relay::producer`: idempotent, `acks=all`, same linger; key = aggregate id, the
//!    default partitioner) to fresh topics of the same shape, all in flight at once, from
//!    the first send to the last acknowledgement.
//! 2. **Read-model projector**: the real `Projector<ReadModels>` with
//!    `ProjectorSettings::default()` on the topics the relay filled, from its start until
//!    its stored offsets reach the partition ends. Baselines: (a) a plain consumer with the
//!    projector's fetch settings and explicit assignment of every partition from the
//!    beginning, doing nothing with the messages; (b) the rows the projector wrote, read
//!    back into memory and written into empty copies of the same tables (same indexes,
//!    `LIKE … INCLUDING ALL`) with one 1,000-row `INSERT … SELECT FROM unnest(…) ON
//!    CONFLICT DO NOTHING` per transaction, reported as N / time: the physical cost of
//!    what the projector writes, without Kafka, parsing or folding.
//! 3. **Search projector**: the real `SearchProjection` (a fresh index directory,
//!    `SearchSettings::default()`) under the real `Projector`, from its start until its
//!    committed offsets reach the ends of the booking topic, the only topic it reads.
//!    Events/s counts booking-topic messages; bookings indexed/s is shown too. Ratios
//!    against 2a and against a plain consumer of the booking topic alone (the same
//!    messages, the same fixed start-up costs).
//!
//! Every timed stage also prints when its first item was done ("first after"): start-up
//! (connections, metadata, offsets) is inside every figure, ours and baselines alike, and
//! weighs more the smaller EVENTS is. Figures are printed, never asserted. Run it on a
//! quiet machine: broker, database and program share the cores, and an open transaction
//! anywhere in the PostgreSQL cluster holds the relay back (ADR 0005).
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chronicle_bench::machine;
use chronicle_eventstore::envelope::{OutgoingRow, SELECT_OUTGOING_AFTER, topic_for};
use chronicle_eventstore::kafka::{KafkaSettings, ensure_topics};
use chronicle_eventstore::relay::{Relay, RelaySettings, relay_lag};
use chronicle_projections::consumer::PartitionKey;
use chronicle_projections::read_models::ReadModels;
use chronicle_projections::search::{SearchIndex, SearchProjection, SearchSettings};
use chronicle_projections::{OffsetStoringConsumer, Projector, ProjectorSettings};
use chronicle_tests::TestDb;
use chronicle_tests::seed::seed;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

/// How often a wait looks at progress.
const POLL: Duration = Duration::from_millis(10);
/// Longest silence from the broker a plain consumer accepts.
const SILENCE: Duration = Duration::from_secs(30);
/// How long a stopped task may take to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows per statement (and per transaction) of the raw write baseline.
const WRITE_BATCH: usize = 1_000;
/// Schema of the empty table copies the raw write baseline fills.
const COPY_SCHEMA: &str = "bench_copy";
/// Every table the read-model projector writes.
fn read_tables_names() -> impl Iterator<Item = &'static str> {
    chronicle_projections::read_models::TABLES
        .iter()
        .map(|table| table.name)
}

/// The offset after the last message of each partition.
type Ends = HashMap<PartitionKey, i64>;

/// Upper bound on any one wait: a minute plus 500 items/s, far below any sane rate.
fn patience(items: u64) -> Duration {
    Duration::from_secs(60 + items / 500)
}

fn per_second(count: u64, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64().max(1e-9)
}

/// 12345.6 → "12,346".
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One timed stage: how many items, the time to the last and to the first.
struct Run {
    count: u64,
    took: Duration,
    first: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        per_second(self.count, self.took)
    }

    /// "N events in T s = R events/s (first after F ms)".
    fn line(&self, what: &str) -> String {
        format!(
            "{} {what} in {:.3} s = {} {what}/s (first after {} ms)",
            self.count,
            self.took.as_secs_f64(),
            grouped(self.rate()),
            self.first.as_millis()
        )
    }
}

/// A background task that is stopped (its token cancelled) when this is stopped or
/// dropped, also on an early return with an error.
struct Running {
    name: &'static str,
    guard: DropGuard,
    handle: JoinHandle<()>,
}

impl Running {
    fn spawn<F>(name: &'static str, task: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(task(stop.clone()));
        Self {
            name,
            guard: stop.drop_guard(),
            handle,
        }
    }

    /// Cancels the task and waits (bounded) until it has flushed and ended.
    async fn stop(self) -> anyhow::Result<()> {
        drop(self.guard);
        tokio::time::timeout(STOP_TIMEOUT, self.handle)
            .await
            .map_err(|_| anyhow::anyhow!("{} did not stop within {STOP_TIMEOUT:?}", self.name))?
            .with_context(|| format!("{} panicked", self.name))
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// How far a stage has got.
struct Progress {
    done: u64,
    of: u64,
}

/// Polls `check` until it reports everything done; the times are counted from
/// `started`. Fails after `timeout`, naming `what` and the last progress.
async fn wait_until_done<F, Fut>(
    what: &str,
    started: Instant,
    timeout: Duration,
    mut check: F,
) -> anyhow::Result<Run>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Progress>>,
{
    let deadline = Instant::now() + timeout;
    let mut first = None;
    loop {
        let progress = check().await?;
        if progress.done > 0 {
            first.get_or_insert_with(|| started.elapsed());
        }
        if progress.done >= progress.of {
            let took = started.elapsed();
            return Ok(Run {
                count: progress.of,
                took,
                first: first.unwrap_or(took),
            });
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what}: {} of {} done",
                progress.done,
                progress.of
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Kafka settings for fresh topics of the default shape under a unique prefix; creates
/// them (bounded by the admin timeout).
async fn fresh_topics(brokers: &str, tag: &str) -> anyhow::Result<KafkaSettings> {
    let mut kafka = KafkaSettings::new(brokers);
    kafka.topic_prefix = format!("bench-{}{tag}.", Uuid::new_v4().simple());
    ensure_topics(&kafka)
        .await
        .with_context(|| format!("cannot create topics {:?} on {brokers}", kafka.topics()))?;
    Ok(kafka)
}

// ---------------------------------------------------------------------------------------
// 1. Relay
// ---------------------------------------------------------------------------------------

/// Runs the real relay until it has published all `events`.
async fn relay_run(pool: &PgPool, kafka: &KafkaSettings, events: u64) -> anyhow::Result<Run> {
    let settings = RelaySettings::default();
    let name = settings.name.clone();
    let relay = Relay::new(pool.clone(), kafka.clone(), settings);
    let started = Instant::now();
    let running = Running::spawn("relay", |stop| async move { relay.run(stop).await });
    let run = wait_until_done("the relay", started, patience(events), || {
        relay_progress(pool, &name, events)
    })
    .await
    .context("is the broker up? (the relay logs and retries its errors)")?;
    running.stop().await?;
    Ok(run)
}

/// What the checkpoint counts as published (a cheap look); once that is everything,
/// `relay_lag` must confirm that nothing is unpublished.
async fn relay_progress(pool: &PgPool, name: &str, events: u64) -> anyhow::Result<Progress> {
    let published: Option<i64> =
        sqlx::query_scalar("SELECT published FROM relay_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    let mut done = published.unwrap_or(0).max(0) as u64;
    if done >= events {
        let unpublished = relay_lag(pool, name).await?.unpublished.max(0) as u64;
        done = events.saturating_sub(unpublished);
    }
    Ok(Progress { done, of: events })
}

/// A message as the relay would send it.
struct Outgoing {
    topic: String,
    key: String,
    payload: Vec<u8>,
}

/// Every event of the store in the relay's order, serialized as the relay does, for the
/// topics under `prefix`.
async fn relay_messages(pool: &PgPool, prefix: &str) -> anyhow::Result<Vec<Outgoing>> {
    let rows: Vec<OutgoingRow> = sqlx::query_as(SELECT_OUTGOING_AFTER)
        .bind("0")
        .bind(0_i64)
        .bind(i64::MAX)
        .fetch_all(pool)
        .await?;
    let upcasters = chronicle_domain::upcast::upcasters();
    rows.into_iter()
        .map(|row| {
            Ok(Outgoing {
                topic: topic_for(prefix, &row.aggregate_type),
                key: row.aggregate_id.clone(),
                payload: row.encode(&upcasters)?,
            })
        })
        .collect()
}

/// Produces `messages` with the relay's producer, all in flight at once, from the first
/// send to the last acknowledgement.
async fn raw_produce(
    pool: &PgPool,
    kafka: &KafkaSettings,
    messages: &[Outgoing],
) -> anyhow::Result<Run> {
    let producer = Relay::new(pool.clone(), kafka.clone(), RelaySettings::default()).producer()?;
    let deadline = tokio::time::Instant::now() + patience(messages.len() as u64);
    let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(messages.len());
    let started = Instant::now();
    for message in messages {
        loop {
            let record = FutureRecord::to(&message.topic)
                .key(message.key.as_bytes())
                .payload(&message.payload);
            match producer.send_result(record) {
                Ok(delivery) => break deliveries.push(delivery),
                // The relay's own handling of a full queue.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(error).context("raw produce"),
            }
        }
    }
    let count = deliveries.len() as u64;
    let mut first = None;
    for (acknowledged, delivery) in deliveries.into_iter().enumerate() {
        match tokio::time::timeout_at(deadline, delivery).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err((error, _)))) => return Err(error).context("raw produce delivery"),
            Ok(Err(_)) => bail!("raw produce: the producer dropped a delivery"),
            Err(_) => bail!("raw produce: only {acknowledged} of {count} acknowledged in time"),
        }
        first.get_or_insert_with(|| started.elapsed());
    }
    let took = started.elapsed();
    Ok(Run {
        count,
        took,
        first: first.unwrap_or(took),
    })
}

// ---------------------------------------------------------------------------------------
// Partition ends, projectors, plain consumers
// ---------------------------------------------------------------------------------------

/// The high watermark of every partition of `kafka`'s topics (each request bounded by
/// the admin timeout, the whole by twice that).
async fn partition_ends(kafka: &KafkaSettings) -> anyhow::Result<Ends> {
    let kafka = kafka.clone();
    let bound = kafka.admin_timeout * 2;
    let lookup = tokio::task::spawn_blocking(move || -> anyhow::Result<Ends> {
        let consumer: BaseConsumer = kafka
            .client_config("chronicle-bench-watermarks")
            .set("group.id", format!("bench-watermarks-{}", Uuid::new_v4()))
            .create()?;
        let mut ends = Ends::new();
        for topic in kafka.topics() {
            for partition in 0..kafka.partitions {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition, kafka.admin_timeout)
                    .with_context(|| format!("watermarks of {topic}/{partition}"))?;
                ends.insert((topic.clone(), partition), high);
            }
        }
        Ok(ends)
    });
    tokio::time::timeout(bound, lookup)
        .await
        .map_err(|_| anyhow::anyhow!("partition watermarks not answered within {bound:?}"))??
}

fn total(ends: &Ends) -> u64 {
    ends.values().map(|end| (*end).max(0) as u64).sum()
}

fn ends_of(ends: &Ends, topic: &str) -> Ends {
    ends.iter()
        .filter(|((t, _), _)| t == topic)
        .map(|(key, end)| (key.clone(), *end))
        .collect()
}

/// Runs `projection` under the real projector with default settings until its stored
/// offsets reach `ends`.
async fn project_until<P: OffsetStoringConsumer>(
    projection: Arc<P>,
    kafka: &KafkaSettings,
    ends: &Ends,
) -> anyhow::Result<Run> {
    let what = format!("the {} projector", projection.name());
    let projector = Projector::new(
        projection.clone(),
        kafka.clone(),
        ProjectorSettings::default(),
    );
    let started = Instant::now();
    let running = Running::spawn("projector", |stop| async move { projector.run(stop).await });
    let run = wait_until_done(&what, started, patience(total(ends)), || {
        stored_progress(projection.as_ref(), ends)
    })
    .await?;
    running.stop().await?;
    Ok(run)
}

/// Messages up to `ends` that the projection has stored as applied.
async fn stored_progress<P: OffsetStoringConsumer>(
    projection: &P,
    ends: &Ends,
) -> anyhow::Result<Progress> {
    let stored = projection
        .stored_offsets()
        .await
        .map_err(|e| anyhow::anyhow!("stored offsets of {}: {e}", projection.name()))?;
    let done = ends
        .iter()
        .map(|(key, end)| stored.get(key).copied().unwrap_or(0).min(*end).max(0) as u64)
        .sum();
    Ok(Progress {
        done,
        of: total(ends),
    })
}

/// A plain consumer with the projector's fetch settings, explicitly assigned every
/// partition of `ends` from the beginning as the projector does, counting messages (not
/// copying them), from its creation to the last message.
async fn raw_consume(kafka: &KafkaSettings, ends: &Ends) -> anyhow::Result<Run> {
    let expected = total(ends);
    let started = Instant::now();
    let consumer: StreamConsumer = kafka
        .consumer_config(
            "chronicle-bench-raw",
            &format!("bench-raw-{}", Uuid::new_v4()),
        )
        .create()?;
    // Like the projector's explicit assignment: each topic's metadata first (bounded),
    // then every partition from the beginning.
    let mut topics: Vec<&str> = ends.keys().map(|(topic, _)| topic.as_str()).collect();
    topics.sort_unstable();
    topics.dedup();
    for topic in topics {
        consumer
            .fetch_metadata(Some(topic), kafka.admin_timeout)
            .with_context(|| format!("metadata of {topic}"))?;
    }
    let mut assignment = TopicPartitionList::new();
    for (topic, partition) in ends.keys() {
        assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = tokio::time::Instant::now() + patience(expected);
    let (mut received, mut bytes, mut first) = (0u64, 0usize, None);
    while received < expected {
        let next = tokio::time::timeout(SILENCE, consumer.recv());
        let message = match tokio::time::timeout_at(deadline, next).await {
            Ok(Ok(message)) => message.context("plain consumer")?,
            _ => bail!("plain consumer received {received} of {expected} messages, then nothing"),
        };
        bytes += message.payload().map_or(0, <[u8]>::len);
        received += 1;
        first.get_or_insert_with(|| started.elapsed());
    }
    let took = started.elapsed();
    std::hint::black_box(bytes);
    Ok(Run {
        count: received,
        took,
        first: first.unwrap_or(took),
    })
}

// ---------------------------------------------------------------------------------------
// 2b. Raw batched writes of the read tables
// ---------------------------------------------------------------------------------------

/// Every row of every read table, in PostgreSQL's text form of a row.
async fn read_tables(pool: &PgPool) -> anyhow::Result<Vec<(&'static str, Vec<String>)>> {
    let mut tables = Vec::new();
    for table in read_tables_names() {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM public.{table} t"))
                .fetch_all(pool)
                .await?;
        tables.push((table, rows));
    }
    Ok(tables)
}

/// Empty copies of the read tables, with the same columns, indexes and constraints.
async fn create_copies(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(&format!("CREATE SCHEMA {COPY_SCHEMA}"))
        .execute(pool)
        .await?;
    for table in read_tables_names() {
        sqlx::query(&format!(
            "CREATE TABLE {COPY_SCHEMA}.{table} (LIKE public.{table} INCLUDING ALL)"
        ))
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Writes the rows into the copies, one statement of `WRITE_BATCH` rows per
/// transaction. The count is `events`, so that the rate compares with the projector's.
async fn raw_write(
    pool: &PgPool,
    tables: &[(&'static str, Vec<String>)],
    events: u64,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut first = None;
    for (table, rows) in tables {
        let insert = format!(
            "INSERT INTO {COPY_SCHEMA}.{table} \
             SELECT * FROM unnest($1::text[]::{COPY_SCHEMA}.{table}[]) ON CONFLICT DO NOTHING"
        );
        for batch in rows.chunks(WRITE_BATCH) {
            let mut tx = pool.begin().await?;
            sqlx::query(&insert).bind(batch).execute(&mut *tx).await?;
            tx.commit().await?;
            first.get_or_insert_with(|| started.elapsed());
        }
    }
    let took = started.elapsed();
    Ok(Run {
        count: events,
        took,
        first: first.unwrap_or(took),
    })
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

// ---------------------------------------------------------------------------------------
// The scenarios and the summary
// ---------------------------------------------------------------------------------------

/// One row of the summary.
struct Figure {
    scenario: &'static str,
    ours: f64,
    baselines: Vec<(&'static str, f64)>,
}

impl Figure {
    fn print_ratios(&self) {
        for (name, baseline) in &self.baselines {
            println!("   ratio ours / {name}: {:.2}", self.ours / baseline);
        }
    }
}

fn print_summary(figures: &[Figure]) {
    println!();
    println!("| scenario | ours (events/s) | baseline(s) (events/s) | ratio(s) |");
    println!("|---|---:|---|---|");
    for figure in figures {
        let baselines: Vec<String> = figure
            .baselines
            .iter()
            .map(|(name, value)| format!("{name} {}", grouped(*value)))
            .collect();
        let ratios: Vec<String> = figure
            .baselines
            .iter()
            .map(|(_, value)| format!("{:.2}", figure.ours / value))
            .collect();
        println!(
            "| {} | {} | {} | {} |",
            figure.scenario,
            grouped(figure.ours),
            baselines.join("; "),
            ratios.join(" / ")
        );
    }
}

/// Scenario 1; returns the figure and the topics the relay filled.
async fn relay_scenario(
    pool: &PgPool,
    brokers: &str,
    events: u64,
) -> anyhow::Result<(Figure, KafkaSettings)> {
    // The baseline's topics and messages are prepared before anything is timed.
    let raw = fresh_topics(brokers, "-raw").await?;
    let messages = relay_messages(pool, &raw.topic_prefix).await?;
    let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
    println!(
        "envelopes: {} read and serialized as the relay does, {:.1} MiB of JSON",
        messages.len(),
        bytes as f64 / f64::from(1 << 20)
    );
    let settings = RelaySettings::default();
    println!(
        "\n1. relay (RelaySettings::default(): batches of {}, {} in flight, poll {:?}, linger {:?}; idempotent, acks=all)",
        settings.batch_size, settings.in_flight, settings.poll_interval, settings.linger
    );
    let kafka = fresh_topics(brokers, "").await?;
    let ours = relay_run(pool, &kafka, events).await?;
    println!(
        "   ours, Relay until relay_lag reports 0: {}",
        ours.line("events")
    );
    let baseline = raw_produce(pool, &raw, &messages).await?;
    println!(
        "   baseline, raw produce (the relay's producer, all in flight): {}",
        baseline.line("events")
    );
    let figure = Figure {
        scenario: "1. relay: store → Kafka",
        ours: ours.rate(),
        baselines: vec![("raw produce", baseline.rate())],
    };
    figure.print_ratios();
    Ok((figure, kafka))
}

/// Scenario 2.
async fn read_model_scenario(
    pool: &PgPool,
    kafka: &KafkaSettings,
    ends: &Ends,
    events: u64,
) -> anyhow::Result<Figure> {
    let settings = ProjectorSettings::default();
    println!(
        "\n2. read-model projector (ProjectorSettings::default(): batches of {}, batch wait {:?}, {:?}; fetch.wait.max.ms {})",
        settings.batch_max,
        settings.batch_wait,
        settings.assignment,
        kafka.fetch_wait.as_millis()
    );
    let ours = project_until(Arc::new(ReadModels::new(pool.clone())), kafka, ends).await?;
    let applied = count(pool, "SELECT count(*) FROM rm_applied_events").await?;
    let dead = count(pool, "SELECT count(*) FROM projector_dead_letters").await?;
    println!(
        "   ours, Projector<ReadModels> until its offsets reach the ends: {} [rm_applied_events {applied}, dead letters {dead}]",
        ours.line("events")
    );

    let consumed = raw_consume(kafka, ends).await?;
    println!(
        "   baseline (a), plain consumer of all partitions: {}",
        consumed.line("messages")
    );

    let tables = read_tables(pool).await?;
    let rows: usize = tables.iter().map(|(_, rows)| rows.len()).sum();
    let per_table: Vec<String> = tables
        .iter()
        .map(|(table, rows)| format!("{table} {}", rows.len()))
        .collect();
    create_copies(pool).await?;
    let written = raw_write(pool, &tables, events).await?;
    println!(
        "   baseline (b), raw batched writes of the projector's {rows} rows ({}): {}; {} rows/s",
        per_table.join(", "),
        written.line("events"),
        grouped(per_second(rows as u64, written.took))
    );
    let figure = Figure {
        scenario: "2. read-model projector",
        ours: ours.rate(),
        baselines: vec![
            ("raw consume", consumed.rate()),
            ("raw batched writes", written.rate()),
        ],
    };
    figure.print_ratios();
    Ok(figure)
}

/// Scenario 3; `consume_all` is the plain consumer's rate of 2a.
async fn search_scenario(
    pool: &PgPool,
    kafka: &KafkaSettings,
    ends: &Ends,
    consume_all: f64,
) -> anyhow::Result<Figure> {
    let settings = SearchSettings::default();
    println!(
        "\n3. search projector (SearchSettings::default(): commit every {} bookings or {:?})",
        settings.commit_docs, settings.commit_interval
    );
    let booking_ends = ends_of(ends, &topic_for(&kafka.topic_prefix, "Booking"));
    let dir = TempDir(std::env::temp_dir().join(format!(
        "chronicle-bench-pipeline-{}",
        Uuid::new_v4().simple()
    )));
    let index = Arc::new(SearchIndex::open(&dir.0)?);
    let projection = Arc::new(SearchProjection::new(index.clone(), settings)?);
    let ours = project_until(projection, kafka, &booking_ends).await?;
    index.refresh()?;
    let indexed = index.len();
    let bookings = count(
        pool,
        "SELECT count(*) FROM events WHERE event_type = 'BookingRequested'",
    )
    .await?;
    println!(
        "   ours, Projector<SearchProjection> until its commits reach the booking topic's ends: {}; {} bookings/s [{indexed} of {bookings} bookings in the index]",
        ours.line("booking events"),
        grouped(per_second(indexed, ours.took))
    );
    drop(index);
    drop(dir);

    let consumed = raw_consume(kafka, &booking_ends).await?;
    println!(
        "   baseline, plain consumer of the booking topic alone: {}",
        consumed.line("messages")
    );
    println!(
        "   baseline, plain consumer of all topics (2a): {} messages/s",
        grouped(consume_all)
    );
    let figure = Figure {
        scenario: "3. search projector (booking topic)",
        ours: ours.rate(),
        baselines: vec![
            ("raw consume, all topics (2a)", consume_all),
            ("raw consume, booking topic", consumed.rate()),
        ],
    };
    figure.print_ratios();
    Ok(figure)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("EVENTS must be a number")?
        .unwrap_or(200_000);
    let brokers = std::env::var("CHRONICLE_KAFKA_BROKERS").map_err(|_| {
        anyhow::anyhow!(
            "CHRONICLE_KAFKA_BROKERS is not set: point it at a Kafka-protocol broker, e.g. \
             `source scripts/lib.sh; start_tansu 127.0.0.1:29092 target/bench-broker` and \
             `export CHRONICLE_KAFKA_BROKERS=127.0.0.1:29092`"
        )
    })?;
    println!("machine: {}", machine());
    let shape = KafkaSettings::new(brokers.as_str());
    println!(
        "broker: {brokers}; fresh topics of {} partitions, replication {}",
        shape.partitions, shape.replication
    );

    let db = TestDb::create().await;
    let pool = db.pool(16).await;
    let started = Instant::now();
    let seeded = seed(&pool, events, 0).await?;
    let took = started.elapsed();
    println!(
        "seed: {seeded} events in {:.2} s ({} events/s)",
        took.as_secs_f64(),
        grouped(per_second(seeded, took))
    );

    let (relay, kafka) = relay_scenario(&pool, &brokers, seeded).await?;
    let ends = partition_ends(&kafka).await?;
    if total(&ends) != seeded {
        println!(
            "   note: the relay's partitions hold {} messages for {seeded} events",
            total(&ends)
        );
    }
    let read_models = read_model_scenario(&pool, &kafka, &ends, seeded).await?;
    let consume_all = read_models.baselines[0].1;
    let search = search_scenario(&pool, &kafka, &ends, consume_all).await?;
    print_summary(&[relay, read_models, search]);
    pool.close().await;
    Ok(())
}
