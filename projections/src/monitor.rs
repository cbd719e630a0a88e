//! Lag of the relay and of the projectors, measured off the hot path: a background task
//! refreshes it, `/metrics` and `/readyz` read the last measurement. Every broker call is
//! bounded, so a broker that does not answer delays a measurement, never a projector.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_eventstore::kafka::KafkaSettings;
use chronicle_eventstore::metrics as relay_metrics;
use chronicle_eventstore::relay::{RelayLag, relay_lag};
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::PROJECTOR_LAG;
use crate::search::{SEARCH, SearchIndex};
use chronicle_eventstore::envelope::topic_for;

/// Bounds beyond which the process reports itself not ready.
#[derive(Clone, Copy, Debug)]
pub struct LagBounds {
    /// `CHRONICLE_READY_MAX_RELAY_LAG`: unpublished events.
    pub relay_events: i64,
    /// `CHRONICLE_READY_MAX_PROJECTOR_LAG`: unapplied messages in any partition.
    pub projector_messages: i64,
    /// `CHRONICLE_READY_MAX_HELD_BACK_SECONDS`: how long an open transaction may hold the
    /// relay back.
    pub held_back_seconds: f64,
}

impl Default for LagBounds {
    fn default() -> Self {
        Self {
            relay_events: 10_000,
            projector_messages: 10_000,
            held_back_seconds: 30.0,
        }
    }
}

/// One measurement.
#[derive(Clone, Debug, Default)]
pub struct LagReport {
    pub relay: Option<RelayLag>,
    /// (projector, topic, partition) → unapplied messages.
    pub projectors: HashMap<(String, String, i32), i64>,
    /// What could not be measured.
    pub errors: Vec<String>,
    pub measured_at: Option<Instant>,
}

/// A consumer whose lag is measured: where its stored offsets are kept, and the topics it
/// reads.
#[derive(Clone)]
pub enum OffsetSource {
    /// The `projector_offsets` table, under this name; it reads the topics of these
    /// aggregate types (all of Chronicle's when empty).
    Table {
        name: String,
        aggregates: Vec<&'static str>,
    },
    /// The commit payload of the search index (it reads the booking topic).
    Search(Arc<SearchIndex>),
}

impl OffsetSource {
    /// A consumer of every topic whose offsets are in the table under `name`.
    pub fn table(name: &str) -> Self {
        Self::Table {
            name: name.to_owned(),
            aggregates: Vec::new(),
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Table { name, .. } => name,
            Self::Search(_) => SEARCH,
        }
    }

    /// Whether it reads `topic`.
    fn reads(&self, kafka: &KafkaSettings, topic: &str) -> bool {
        let aggregates: &[&str] = match self {
            Self::Table { aggregates, .. } => aggregates,
            Self::Search(_) => &["Booking"],
        };
        aggregates.is_empty()
            || aggregates
                .iter()
                .any(|aggregate| topic_for(&kafka.topic_prefix, aggregate) == topic)
    }
}

/// Measures lag every `interval`.
pub struct LagMonitor {
    latest: Mutex<LagReport>,
    bounds: LagBounds,
}

impl LagMonitor {
    /// Starts measuring in the background.
    pub fn start(
        pool: PgPool,
        kafka: Option<KafkaSettings>,
        projectors: Vec<OffsetSource>,
        relay_name: String,
        bounds: LagBounds,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let monitor = Arc::new(Self {
            latest: Mutex::new(LagReport::default()),
            bounds,
        });
        let task = monitor.clone();
        tokio::spawn(async move {
            let consumer: Option<Arc<BaseConsumer>> = kafka.as_ref().and_then(|k| {
                k.client_config("chronicle-lag-monitor")
                    .set(
                        "group.id",
                        format!("{}chronicle.lag-monitor", k.topic_prefix),
                    )
                    .create()
                    .map(Arc::new)
                    .map_err(|e| tracing::warn!(error = %e, "lag monitor has no Kafka client"))
                    .ok()
            });
            loop {
                let report = measure(
                    &pool,
                    kafka.as_ref(),
                    consumer.clone(),
                    &projectors,
                    &relay_name,
                )
                .await;
                if let Ok(mut latest) = task.latest.lock() {
                    *latest = report;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
        monitor
    }

    /// The latest measurement.
    pub fn report(&self) -> LagReport {
        self.latest.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Why the process should not receive traffic, if it should not.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let report = self.report();
        let mut reasons = report.errors.clone();
        if let Some(relay) = report.relay {
            if relay.unpublished > self.bounds.relay_events {
                reasons.push(format!(
                    "relay lag: {} events unpublished (bound {})",
                    relay.unpublished, self.bounds.relay_events
                ));
            }
            if relay.held_back > 0
                && relay.oldest_transaction_seconds > self.bounds.held_back_seconds
            {
                reasons.push(format!(
                    "relay held back: {} committed events wait behind a transaction open for {:.0} s",
                    relay.held_back, relay.oldest_transaction_seconds
                ));
            }
        }
        for ((projector, topic, partition), lag) in &report.projectors {
            if *lag > self.bounds.projector_messages {
                reasons.push(format!(
                    "projector {projector} lag: {lag} messages on {topic}[{partition}] (bound {})",
                    self.bounds.projector_messages
                ));
            }
        }
        reasons.sort();
        reasons
    }
}

/// A readiness reason for a failed check: the error itself goes to the log only, since
/// `/readyz` answers anonymous callers and a driver's message can name hosts, users or
/// databases.
pub fn unreachable(what: &str, error: &dyn std::fmt::Display) -> String {
    tracing::warn!(%error, "readiness check of the {what} failed");
    format!("{what}: check failed (details in the log)")
}

async fn measure(
    pool: &PgPool,
    kafka: Option<&KafkaSettings>,
    consumer: Option<Arc<BaseConsumer>>,
    projectors: &[OffsetSource],
    relay_name: &str,
) -> LagReport {
    let mut report = LagReport {
        measured_at: Some(Instant::now()),
        ..LagReport::default()
    };
    match relay_lag(pool, relay_name).await {
        Ok(lag) => {
            relay_metrics::RELAY_LAG.set(lag.unpublished);
            relay_metrics::RELAY_HELD_BACK.set(lag.held_back);
            relay_metrics::OLDEST_TRANSACTION_SECONDS.set(lag.oldest_transaction_seconds);
            report.relay = Some(lag);
        }
        Err(error) => report.errors.push(unreachable("database", &error)),
    }
    let (Some(kafka), Some(consumer)) = (kafka, consumer) else {
        return report;
    };
    sample_index_size(projectors).await;
    let ends = async {
        let stored = stored_offsets(pool, projectors).await?;
        let timeout = kafka.admin_timeout.min(Duration::from_secs(3));
        let topics = kafka.topics();
        let ends =
            tokio::task::spawn_blocking(move || high_watermarks(&consumer, &topics, timeout))
                .await
                .map_err(|error| unreachable("broker", &error))?
                .map_err(|error| unreachable("broker", &error))?;
        Ok::<_, String>((stored, ends))
    };
    match ends.await {
        Ok((stored, ends)) => {
            report.projectors = projector_lags(kafka, projectors, &stored, &ends);
        }
        Err(error) => report.errors.push(error),
    }
    report
}

/// Sets the search index's size on disk, if one of `projectors` is the search index.
async fn sample_index_size(projectors: &[OffsetSource]) {
    for source in projectors {
        if let OffsetSource::Search(index) = source {
            let dir = index.dir().to_owned();
            if let Ok(bytes) = tokio::task::spawn_blocking(move || directory_bytes(&dir)).await {
                crate::metrics::SEARCH_INDEX_BYTES.set(bytes as i64);
            }
        }
    }
}

/// Each projector's lag per partition, from its stored offsets and the partitions' ends;
/// also set on the lag gauge.
fn projector_lags(
    kafka: &KafkaSettings,
    projectors: &[OffsetSource],
    stored: &HashMap<(String, String, i32), i64>,
    ends: &HashMap<(String, i32), i64>,
) -> HashMap<(String, String, i32), i64> {
    let mut lags = HashMap::new();
    for source in projectors {
        let projector = source.name().to_owned();
        for ((topic, partition), end) in ends {
            if !source.reads(kafka, topic) {
                continue;
            }
            let key = (projector.clone(), topic.clone(), *partition);
            let lag = (end - stored.get(&key).copied().unwrap_or(0)).max(0);
            PROJECTOR_LAG
                .with_label_values(&[&projector, topic, &partition.to_string()])
                .set(lag);
            lags.insert(key, lag);
        }
    }
    lags
}

/// The bytes of the files in `dir` (one level: Tantivy keeps its segments flat).
fn directory_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

async fn stored_offsets(
    pool: &PgPool,
    sources: &[OffsetSource],
) -> Result<HashMap<(String, String, i32), i64>, String> {
    let names: Vec<String> = sources
        .iter()
        .filter_map(|s| match s {
            OffsetSource::Table { name, .. } => Some(name.clone()),
            OffsetSource::Search(_) => None,
        })
        .collect();
    let rows: Vec<(String, String, i32, i64)> = sqlx::query_as(
        "SELECT projector, topic, partition, next_offset FROM projector_offsets WHERE projector = ANY($1)",
    )
    .bind(&names)
    .fetch_all(pool)
    .await
    .map_err(|e| unreachable("database", &e))?;
    let mut stored: HashMap<_, _> = rows
        .into_iter()
        .map(|(p, t, n, o)| ((p, t, n), o))
        .collect();
    for source in sources {
        if let OffsetSource::Search(index) = source {
            let offsets = index
                .committed_offsets()
                .map_err(|e| format!("search index: {e}"))?;
            stored.extend(
                offsets
                    .into_iter()
                    .map(|((t, n), o)| ((SEARCH.to_owned(), t, n), o)),
            );
        }
    }
    Ok(stored)
}

fn high_watermarks(
    consumer: &BaseConsumer,
    topics: &[String],
    timeout: Duration,
) -> Result<HashMap<(String, i32), i64>, rdkafka::error::KafkaError> {
    let mut ends = HashMap::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        for partition in 0..partitions as i32 {
            let (_, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
            ends.insert((topic.clone(), partition), high);
        }
    }
    Ok(ends)
}

#[cfg(test)]
mod tests {
    use super::unreachable;

    #[test]
    fn a_failed_check_names_what_failed_and_not_the_error() {
        let error = "password authentication failed for user \"chronicle\" at db.internal:5432";
        let reason = unreachable("database", &error);
        assert_eq!(reason, "database: check failed (details in the log)");
        assert!(!reason.contains("chronicle") && !reason.contains("db.internal"));
    }
}
