//! The broker's own floor for command → visible: how long a message takes from a raw
//! rdkafka producer to a raw rdkafka consumer on the same broker, at the same rate.
//!
//! The producer has the relay's settings (idempotent, `acks=all`, the relay's linger) and
//! the consumer the projectors' (`fetch.wait.max.ms`, explicit assignment of every
//! partition), so what Chronicle adds on top of this is its own: the append, the relay's
//! read of the store, the projector's transaction and the query.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chronicle_eventstore::envelope::topic_for;
use chronicle_eventstore::kafka::{KafkaSettings, ensure_topics};
use chronicle_eventstore::relay::RelaySettings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

/// Longest wait for a first message to make the whole trip.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Round trips of messages produced at `rate` per second for `seconds` to a fresh topic
/// of `partitions` partitions on `brokers`, each timed from the send to its receipt.
pub async fn round_trips(
    brokers: &str,
    partitions: i32,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<Vec<Duration>> {
    let mut kafka = KafkaSettings::new(brokers);
    kafka.partitions = partitions;
    kafka.topic_prefix = format!("bench-floor-{}.", Uuid::new_v4().simple());
    ensure_topics(&kafka)
        .await
        .with_context(|| format!("cannot create topics on {brokers}"))?;
    let topic = topic_for(&kafka.topic_prefix, "Account");
    let producer: FutureProducer = kafka
        .client_config("chronicle-bench-floor")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "linger.ms",
            RelaySettings::default().linger.as_millis().to_string(),
        )
        .set("message.timeout.ms", "30000")
        .create()?;
    let consumer = Arc::new(consumer(&kafka, &topic)?);
    let origin = Instant::now();
    let receiver = tokio::spawn(receive(consumer.clone(), origin));

    warm_up(&producer, &topic, origin, &consumer).await?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = tokio::time::Instant::now();
    let count = u64::from(rate) * seconds;
    for i in 0..count {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        send(&producer, &topic, origin, 1).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let samples = loop {
        if receiver.is_finished() || tokio::time::Instant::now() > deadline {
            receiver.abort();
            bail!("the floor's consumer stopped or fell behind");
        }
        let received = consumer_count(&consumer);
        if received >= count {
            receiver.abort();
            break take_samples(&consumer);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Ok(samples)
}

/// A consumer with the projectors' fetch settings, assigned every partition of `topic`.
fn consumer(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<Measuring> {
    let consumer: StreamConsumer = kafka
        .consumer_config(
            "chronicle-bench-floor",
            &format!("bench-floor-{}", Uuid::new_v4()),
        )
        .create()?;
    consumer
        .fetch_metadata(Some(topic), kafka.admin_timeout)
        .with_context(|| format!("metadata of {topic}"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    Ok(Measuring {
        consumer,
        samples: Mutex::new(Vec::new()),
        warm_up_received: AtomicU64::new(0),
    })
}

/// The consumer and the round trips it measured.
struct Measuring {
    consumer: StreamConsumer,
    samples: Mutex<Vec<Duration>>,
    /// Warm-up messages received (they are not measured).
    warm_up_received: AtomicU64,
}

fn consumer_count(measuring: &Measuring) -> u64 {
    measuring.samples.lock().map_or(0, |s| s.len() as u64)
}

fn take_samples(measuring: &Measuring) -> Vec<Duration> {
    measuring
        .samples
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default()
}

/// The payload: `measured` (0 or 1), a space, the send time in nanoseconds after
/// `origin`.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    origin: Instant,
    measured: u8,
) -> anyhow::Result<()> {
    let payload = format!("{measured} {}", origin.elapsed().as_nanos());
    let key = Uuid::new_v4().to_string();
    let record = FutureRecord::to(topic).key(&key).payload(&payload);
    // Not awaited: the round trip is timed by the consumer, and the next send must not
    // wait for this acknowledgement (the relay does not either).
    producer
        .send_result(record)
        .map_err(|(error, _)| error)
        .context("floor produce")?;
    Ok(())
}

/// Sends unmeasured messages until the consumer has seen one: partitions assigned,
/// connections open.
async fn warm_up(
    producer: &FutureProducer,
    topic: &str,
    origin: Instant,
    measuring: &Measuring,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + WARM_UP_TIMEOUT;
    while measuring.warm_up_received.load(Ordering::SeqCst) == 0 {
        if Instant::now() > deadline {
            bail!("no message made the round trip within {WARM_UP_TIMEOUT:?}");
        }
        send(producer, topic, origin, 0).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the warm-up tail drain before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

async fn receive(measuring: Arc<Measuring>, origin: Instant) {
    loop {
        let Ok(message) = measuring.consumer.recv().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let now = origin.elapsed();
        let text = message
            .payload()
            .and_then(|p| std::str::from_utf8(p).ok())
            .unwrap_or("");
        let Some((measured, sent)) = text.split_once(' ') else {
            continue;
        };
        let Ok(sent) = sent.parse::<u64>() else {
            continue;
        };
        if measured == "1" {
            if let Ok(mut samples) = measuring.samples.lock() {
                samples.push(now.saturating_sub(Duration::from_nanos(sent)));
            }
        } else {
            measuring.warm_up_received.fetch_add(1, Ordering::SeqCst);
        }
    }
}
