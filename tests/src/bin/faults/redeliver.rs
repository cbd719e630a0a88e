//! Every message of the topics published again, newest first within each partition.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

/// A consumed message: topic, partition, offset, key, payload.
type Copied = (String, i32, i64, Vec<u8>, Vec<u8>);

/// Publishes every message of the topics again, newest first within each partition;
/// returns how many.
pub async fn duplicate_and_reorder(broker: &str, prefix: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", format!("faults-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .create()
        .unwrap();
    let topics = chronicle_eventstore::envelope::all_topics(prefix);
    let mut list = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in &topics {
        for partition in 0..3 {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(5))
                .unwrap();
            ends.push((topic.clone(), partition, high));
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&list).unwrap();
    let wanted: i64 = ends.iter().map(|(_, _, h)| h).sum();
    let mut messages: Vec<Copied> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (messages.len() as i64) < wanted && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200))
            && ends.iter().any(|(t, p, h)| {
                t == message.topic() && *p == message.partition() && message.offset() < *h
            })
        {
            messages.push((
                message.topic().to_owned(),
                message.partition(),
                message.offset(),
                message.key().unwrap_or_default().to_vec(),
                message.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    messages.sort_by(|a, b| {
        (&a.0, a.1, std::cmp::Reverse(a.2)).cmp(&(&b.0, b.1, std::cmp::Reverse(b.2)))
    });
    for (topic, partition, _, key, payload) in &messages {
        let record = FutureRecord::to(topic)
            .partition(*partition)
            .key(key)
            .payload(payload);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
    messages.len()
}
