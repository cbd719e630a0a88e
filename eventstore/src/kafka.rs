//! Kafka connection settings, client configuration, and topic creation through the
//! admin API (every call bounded by a timeout: a broker that does not answer must not
//! hang Chronicle).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::envelope::all_topics;

/// How to reach Kafka and how Chronicle's topics look.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `CHRONICLE_KAFKA_BROKERS`: bootstrap servers.
    pub brokers: String,
    /// `CHRONICLE_TOPIC_PREFIX`: prepended to every topic name.
    pub topic_prefix: String,
    /// `CHRONICLE_KAFKA_PARTITIONS`: partitions of each topic Chronicle creates.
    pub partitions: i32,
    /// `CHRONICLE_KAFKA_REPLICATION`: replication factor of those topics.
    pub replication: i32,
    /// `CHRONICLE_KAFKA_RETENTION_HOURS`: how long those topics keep a message
    /// (`retention.ms`, set when Chronicle creates them). The event store is the source
    /// of truth: a projector further behind than this is rebuilt from the store
    /// (`chronicle-replay rebuild`), not from Kafka (ADR 0019).
    pub retention: Duration,
    /// Bound on every admin and metadata call.
    pub admin_timeout: Duration,
    /// `CHRONICLE_KAFKA_FETCH_WAIT_MS`: consumers' `fetch.wait.max.ms`. Apache Kafka
    /// answers a fetch as soon as data arrives, so this only bounds idle polling there;
    /// tansu 0.6 holds every fetch for the whole wait, so there it is added latency.
    pub fetch_wait: Duration,
}

impl KafkaSettings {
    /// The local default: the broker the run command starts.
    pub const DEFAULT_BROKERS: &'static str = "127.0.0.1:9092";

    /// Settings for `brokers` with local defaults otherwise.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: String::new(),
            partitions: 6,
            replication: 1,
            retention: Duration::from_secs(7 * 24 * 3600),
            admin_timeout: Duration::from_secs(10),
            fetch_wait: Duration::from_millis(5),
        }
    }

    /// A client configuration with the bootstrap servers and a client id.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            .set("socket.timeout.ms", "10000");
        config
    }

    /// The configuration of a projector's consumer (and of the benchmarks' raw consumers
    /// that stand in for one): offsets are ours, not the group's; reading starts at the
    /// beginning; fetches wait at most `fetch_wait`.
    pub fn consumer_config(&self, client_id: &str, group_id: &str) -> ClientConfig {
        let mut config = self.client_config(client_id);
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.wait.max.ms",
                self.fetch_wait.as_millis().max(1).to_string(),
            )
            .set("enable.partition.eof", "false")
            // librdkafka prefetches up to 64 MiB per consumer by default. A projector
            // that falls behind needs a few batches ahead, not that much (issue 14).
            .set("queued.max.messages.kbytes", "16384");
        config
    }

    /// Chronicle's topics under this prefix.
    pub fn topics(&self) -> Vec<String> {
        all_topics(&self.topic_prefix)
    }
}

/// Creates Chronicle's topics when they do not exist. Existing topics are left as they
/// are.
pub async fn ensure_topics(settings: &KafkaSettings) -> Result<(), KafkaError> {
    let topics = settings.topics();
    let retention_ms = settings.retention.as_millis().to_string();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                settings.partitions,
                TopicReplication::Fixed(settings.replication),
            )
            .set("retention.ms", &retention_ms)
            // Kafka's default, said out loud: brokers that apply retention only to
            // topics that name their policy (tansu 0.6) would otherwise keep everything.
            .set("cleanup.policy", "delete")
        })
        .collect();
    create_topics(settings, &new).await
}

/// The topic signed checkpoints are published to (ADR 0036).
pub fn checkpoints_topic(settings: &KafkaSettings) -> String {
    format!("{}checkpoints", settings.topic_prefix)
}

/// Creates the checkpoints topic when it does not exist: one partition (checkpoints in
/// order), kept forever (`retention.ms` -1): they are small, and a copy outside the
/// database is what they are for.
pub async fn ensure_checkpoints_topic(settings: &KafkaSettings) -> Result<(), KafkaError> {
    let topic = checkpoints_topic(settings);
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(settings.replication))
        .set("retention.ms", "-1")
        .set("cleanup.policy", "delete");
    create_topics(settings, &[new]).await
}

async fn create_topics(settings: &KafkaSettings, new: &[NewTopic<'_>]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        settings.client_config("chronicle-admin").create()?;
    let options = AdminOptions::new()
        .operation_timeout(Some(settings.admin_timeout))
        .request_timeout(Some(settings.admin_timeout));
    let results = tokio::time::timeout(
        settings.admin_timeout + Duration::from_secs(1),
        admin.create_topics(new, &options),
    )
    .await
    .map_err(|_| KafkaError::AdminOp(RDKafkaErrorCode::RequestTimedOut))??;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(%topic, ?code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}
