//! Settings of the `chronicle` process, composed from each crate's own settings and read
//! from `CHRONICLE_*` environment variables with local defaults. Invalid values fail
//! fast, naming the variable; secrets are never printed.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chronicle_commands::CommandSettings;
use chronicle_commands::process::{ProcessSettings, RetryDelays};
use chronicle_eventstore::DatabaseSettings;
use chronicle_eventstore::clock::ClockSource;
use chronicle_eventstore::kafka::KafkaSettings;
use chronicle_eventstore::notary::NotarySettings;
use chronicle_eventstore::notary::checkpoint::{
    CheckpointKey, SIGNING_KEY_ENV, SIGNING_KEY_FILE_ENV,
};
use chronicle_eventstore::personal::{MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, MasterKeys};
use chronicle_eventstore::relay::RelaySettings;
use chronicle_eventstore::repository::GroupCommitSettings;
use chronicle_projections::feed::FeedSettings;
use chronicle_projections::monitor::LagBounds;
use chronicle_projections::search::SearchSettings;
use chronicle_projections::{Assignment, ProjectorSettings};

use crate::HttpLimits;
use crate::limits::LimitSettings;

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub reason: String,
}

fn invalid(name: &'static str, reason: &str) -> ConfigError {
    ConfigError {
        name,
        reason: reason.to_owned(),
    }
}

/// The development signing key used when `CHRONICLE_JWT_SECRET` is unset.
pub const DEV_JWT_SECRET: &str = "chronicle-local-development-key-not-for-production";

/// A secret that prints as `<redacted>`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How queries behave.
#[derive(Clone, Copy, Debug)]
pub struct ReadSettings {
    /// `CHRONICLE_MIN_POSITION_TIMEOUT_MS`: the longest a query waits for `min_position`.
    pub min_position_timeout: Duration,
}

impl Default for ReadSettings {
    fn default() -> Self {
        Self {
            min_position_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything the process needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `CHRONICLE_HTTP_ADDR`.
    pub http_addr: SocketAddr,
    /// `CHRONICLE_DATA_DIR`: the search index and local state.
    pub data_dir: PathBuf,
    pub database: DatabaseSettings,
    pub commands: CommandSettings,
    pub limits: HttpLimits,
    pub reads: ReadSettings,
    pub kafka: KafkaSettings,
    pub relay: RelaySettings,
    pub projector: ProjectorSettings,
    /// `CHRONICLE_SEARCH_DIR`: the search index (default `$CHRONICLE_DATA_DIR/search`).
    pub search_dir: PathBuf,
    pub search: SearchSettings,
    pub process: ProcessSettings,
    pub ready: LagBounds,
    /// `CHRONICLE_LAG_INTERVAL_MS`: how often relay and projector lag are measured.
    pub lag_interval: Duration,
    pub protection: LimitSettings,
    /// `CHRONICLE_SHUTDOWN_TIMEOUT_SECONDS`: after SIGTERM, the process exits within this
    /// (non-zero if it had to cut work short).
    pub shutdown_timeout: Duration,
    /// `CHRONICLE_OTLP_ENDPOINT`: export traces over OTLP/HTTP when set.
    pub otlp_endpoint: Option<String>,
    /// `CHRONICLE_CLOCK`: `system` (the default), or `offset-file:PATH` for the fault
    /// suite's clock row (`chronicle_eventstore::clock`).
    pub clock: ClockSource,
    /// `CHRONICLE_JWT_SECRET`.
    pub jwt_secret: Secret,
    /// Whether the development key is in use (and a warning is due).
    pub jwt_secret_is_default: bool,
    /// `CHRONICLE_MASTER_KEY` or `CHRONICLE_MASTER_KEY_FILE`: the master keys that wrap
    /// each data subject's key, and the pepper that names subjects (ADR 0035). The
    /// development keys when neither is set (a warning says so at start).
    pub master_keys: Arc<MasterKeys>,
    /// The notary: batches and how often it signs checkpoints (ADR 0036).
    pub notary: NotarySettings,
    /// `CHRONICLE_SIGNING_KEY` or `CHRONICLE_SIGNING_KEY_FILE`: the Ed25519 key the
    /// notary signs checkpoints with. The development key when neither is set (a warning
    /// says so at start).
    pub signing_key: Arc<CheckpointKey>,
    /// The live feed (`CHRONICLE_FEED_*`, ADR 0037).
    pub feed: FeedSettings,
}

/// Where settings come from: the environment, then an optional file (`CHRONICLE_CONFIG`
/// or `--config`) of the same names, e.g. `CHRONICLE_HTTP_ADDR = "0.0.0.0:8080"`.
#[derive(Default)]
pub struct Source {
    file: HashMap<String, String>,
}

/// Every setting Chronicle reads; a file naming anything else is refused.
pub const KNOWN: &[&str] = &[
    "CHRONICLE_HTTP_ADDR",
    "CHRONICLE_DATA_DIR",
    "CHRONICLE_SEARCH_DIR",
    "CHRONICLE_DATABASE_URL",
    "CHRONICLE_DB_MAX_CONNECTIONS",
    "CHRONICLE_DB_LOCK_TIMEOUT_MS",
    "CHRONICLE_SNAPSHOT_EVERY",
    "CHRONICLE_COMMAND_MAX_ATTEMPTS",
    "CHRONICLE_GROUP_COMMIT_WRITERS",
    "CHRONICLE_GROUP_COMMIT_MAX",
    "CHRONICLE_IDEMPOTENCY_RETENTION_HOURS",
    "CHRONICLE_BODY_LIMIT_BYTES",
    "CHRONICLE_MIN_POSITION_TIMEOUT_MS",
    "CHRONICLE_KAFKA_BROKERS",
    "CHRONICLE_TOPIC_PREFIX",
    "CHRONICLE_KAFKA_PARTITIONS",
    "CHRONICLE_KAFKA_REPLICATION",
    "CHRONICLE_KAFKA_RETENTION_HOURS",
    "CHRONICLE_KAFKA_FETCH_WAIT_MS",
    "CHRONICLE_RELAY_BATCH",
    "CHRONICLE_RELAY_POLL_MS",
    "CHRONICLE_RELAY_IN_FLIGHT",
    "CHRONICLE_PROJECTOR_INSTANCES",
    "CHRONICLE_PROJECTOR_INSTANCE",
    "CHRONICLE_PROJECTOR_GROUP_ASSIGNMENT",
    "CHRONICLE_PROJECTOR_BATCH",
    "CHRONICLE_PROJECTOR_BATCH_WAIT_MS",
    "CHRONICLE_SEARCH_COMMIT_DOCS",
    "CHRONICLE_SEARCH_COMMIT_MS",
    "CHRONICLE_BOOKING_HOLD_SECONDS",
    "CHRONICLE_CHARGE_MAX_ATTEMPTS",
    "CHRONICLE_CHARGE_RETRY_SECONDS",
    "CHRONICLE_SCHEDULER_TICK_MS",
    "CHRONICLE_FLOW_RETENTION_DAYS",
    "CHRONICLE_PROCESS_CONCURRENCY",
    "CHRONICLE_PROCESS_DB_CONNECTIONS",
    "CHRONICLE_SUBSCRIPTION_RETRY_HOURS",
    "CHRONICLE_READY_MAX_RELAY_LAG",
    "CHRONICLE_READY_MAX_PROJECTOR_LAG",
    "CHRONICLE_READY_MAX_HELD_BACK_SECONDS",
    "CHRONICLE_LAG_INTERVAL_MS",
    "CHRONICLE_JWT_SECRET",
    "CHRONICLE_MASTER_KEY",
    "CHRONICLE_MASTER_KEY_FILE",
    "CHRONICLE_RATE_LIMIT_PER_SECOND",
    "CHRONICLE_RATE_LIMIT_BURST",
    "CHRONICLE_REQUEST_TIMEOUT_MS",
    "CHRONICLE_MAX_INFLIGHT_COMMANDS",
    "CHRONICLE_MAX_INFLIGHT_QUERIES",
    "CHRONICLE_ADMISSION_WAIT_MS",
    "CHRONICLE_SHUTDOWN_TIMEOUT_SECONDS",
    "CHRONICLE_OTLP_ENDPOINT",
    "CHRONICLE_CLOCK",
    "CHRONICLE_LOG",
    "CHRONICLE_FEED_BUFFER_EVENTS",
    "CHRONICLE_FEED_HEARTBEAT_SECONDS",
    "CHRONICLE_FEED_RETRY_MS",
    "CHRONICLE_FEED_MAX_PER_PRINCIPAL",
    "CHRONICLE_FEED_MAX_SUBSCRIBERS",
    "CHRONICLE_FEED_CATCH_UPS",
    "CHRONICLE_FEED_RETENTION_HOURS",
    "CHRONICLE_FEED_TICKET_SECONDS",
];

impl Source {
    /// The environment alone.
    pub fn env() -> Self {
        Self::default()
    }

    /// The environment over the TOML file at `path` (flat `NAME = value` pairs).
    pub fn with_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            name: "CHRONICLE_CONFIG",
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        let table: toml::Table = text.parse().map_err(|e| ConfigError {
            name: "CHRONICLE_CONFIG",
            reason: format!("{} is not valid TOML: {e}", path.display()),
        })?;
        let mut file = HashMap::new();
        for (key, value) in table {
            let name = key.to_ascii_uppercase();
            let name = if name.starts_with("CHRONICLE_") {
                name
            } else {
                format!("CHRONICLE_{name}")
            };
            if !KNOWN.contains(&name.as_str()) {
                return Err(ConfigError {
                    name: "CHRONICLE_CONFIG",
                    reason: format!("{} names an unknown setting {key:?}", path.display()),
                });
            }
            let value = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigError {
                        name: "CHRONICLE_CONFIG",
                        reason: format!("{key} must be a string or a number, not {other}"),
                    });
                }
            };
            file.insert(name, value);
        }
        Ok(Self { file })
    }

    fn var(&self, name: &'static str) -> Option<String> {
        std::env::var(name)
            .ok()
            .or_else(|| self.file.get(name).cloned())
            .filter(|v| !v.trim().is_empty())
    }

    fn parsed<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.var(name) {
            None => Ok(default),
            Some(text) => text.trim().parse().map_err(|e| ConfigError {
                name,
                reason: format!("cannot parse {text:?}: {e}"),
            }),
        }
    }

    fn millis(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parsed(name, default.as_millis() as u64)?;
        Ok(Duration::from_millis(ms))
    }
}

fn positive<T: PartialOrd + Default>(name: &'static str, value: T) -> Result<T, ConfigError> {
    if value > T::default() {
        Ok(value)
    } else {
        Err(invalid(name, "must be greater than zero"))
    }
}

impl Settings {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(&Source::env())
    }

    /// Reads `src`.
    pub fn load(src: &Source) -> Result<Self, ConfigError> {
        let (jwt_secret, jwt_secret_is_default) = jwt_secret(src)?;
        let master_keys = master_keys(src)?;
        let data_dir = PathBuf::from(
            src.var("CHRONICLE_DATA_DIR")
                .unwrap_or_else(|| "./data".into()),
        );
        Ok(Self {
            http_addr: src.parsed(
                "CHRONICLE_HTTP_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            )?,
            search_dir: src
                .var("CHRONICLE_SEARCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| data_dir.join("search")),
            search: search(src)?,
            process: process(src)?,
            data_dir,
            database: database(src)?,
            commands: commands(src, &master_keys)?,
            limits: HttpLimits {
                body_limit: positive(
                    "CHRONICLE_BODY_LIMIT_BYTES",
                    src.parsed(
                        "CHRONICLE_BODY_LIMIT_BYTES",
                        HttpLimits::default().body_limit,
                    )?,
                )?,
            },
            reads: ReadSettings {
                min_position_timeout: src.millis(
                    "CHRONICLE_MIN_POSITION_TIMEOUT_MS",
                    ReadSettings::default().min_position_timeout,
                )?,
            },
            kafka: kafka(src)?,
            relay: relay(src)?,
            projector: projector(src)?,
            ready: ready(src)?,
            lag_interval: src.millis("CHRONICLE_LAG_INTERVAL_MS", Duration::from_secs(5))?,
            protection: protection(src)?,
            shutdown_timeout: Duration::from_secs(
                src.parsed("CHRONICLE_SHUTDOWN_TIMEOUT_SECONDS", 30)?,
            ),
            otlp_endpoint: src.var("CHRONICLE_OTLP_ENDPOINT"),
            clock: src.parsed("CHRONICLE_CLOCK", ClockSource::System)?,
            jwt_secret: Secret(jwt_secret),
            jwt_secret_is_default,
            master_keys,
            notary: notary(src)?,
            signing_key: signing_key(src)?,
            feed: feed(src)?,
        })
    }
}

fn database(src: &Source) -> Result<DatabaseSettings, ConfigError> {
    let mut database = DatabaseSettings::new(
        src.var("CHRONICLE_DATABASE_URL")
            .unwrap_or_else(|| DatabaseSettings::DEFAULT_URL.to_owned()),
    );
    if !database.url.starts_with("postgres://") && !database.url.starts_with("postgresql://") {
        return Err(invalid(
            "CHRONICLE_DATABASE_URL",
            "must be a postgres:// URL",
        ));
    }
    database.max_connections = positive(
        "CHRONICLE_DB_MAX_CONNECTIONS",
        src.parsed("CHRONICLE_DB_MAX_CONNECTIONS", database.max_connections)?,
    )?;
    database.lock_timeout = src.millis("CHRONICLE_DB_LOCK_TIMEOUT_MS", database.lock_timeout)?;
    Ok(database)
}

fn commands(src: &Source, keys: &Arc<MasterKeys>) -> Result<CommandSettings, ConfigError> {
    let defaults = CommandSettings::default();
    Ok(CommandSettings {
        sealing: Some(keys.clone()),
        snapshot_every: positive(
            "CHRONICLE_SNAPSHOT_EVERY",
            src.parsed("CHRONICLE_SNAPSHOT_EVERY", defaults.snapshot_every)?,
        )?,
        max_attempts: positive(
            "CHRONICLE_COMMAND_MAX_ATTEMPTS",
            src.parsed("CHRONICLE_COMMAND_MAX_ATTEMPTS", defaults.max_attempts)?,
        )?,
        group_commit: GroupCommitSettings {
            writers: src.parsed(
                "CHRONICLE_GROUP_COMMIT_WRITERS",
                defaults.group_commit.writers,
            )?,
            max_group: positive(
                "CHRONICLE_GROUP_COMMIT_MAX",
                src.parsed(
                    "CHRONICLE_GROUP_COMMIT_MAX",
                    defaults.group_commit.max_group,
                )?,
            )?,
        },
        idempotency_retention: Duration::from_secs(
            3600 * positive(
                "CHRONICLE_IDEMPOTENCY_RETENTION_HOURS",
                src.parsed(
                    "CHRONICLE_IDEMPOTENCY_RETENTION_HOURS",
                    defaults.idempotency_retention.as_secs() / 3600,
                )?,
            )?,
        ),
    })
}

fn kafka(src: &Source) -> Result<KafkaSettings, ConfigError> {
    let mut kafka = KafkaSettings::new(
        src.var("CHRONICLE_KAFKA_BROKERS")
            .unwrap_or_else(|| KafkaSettings::DEFAULT_BROKERS.to_owned()),
    );
    kafka.topic_prefix = src.var("CHRONICLE_TOPIC_PREFIX").unwrap_or_default();
    if !kafka
        .topic_prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "CHRONICLE_TOPIC_PREFIX",
            "may contain only ASCII letters, digits, '.', '_' and '-'",
        ));
    }
    kafka.partitions = positive(
        "CHRONICLE_KAFKA_PARTITIONS",
        src.parsed("CHRONICLE_KAFKA_PARTITIONS", kafka.partitions)?,
    )?;
    kafka.replication = positive(
        "CHRONICLE_KAFKA_REPLICATION",
        src.parsed("CHRONICLE_KAFKA_REPLICATION", kafka.replication)?,
    )?;
    kafka.fetch_wait = src.millis("CHRONICLE_KAFKA_FETCH_WAIT_MS", kafka.fetch_wait)?;
    kafka.retention = Duration::from_secs(
        3600 * positive(
            "CHRONICLE_KAFKA_RETENTION_HOURS",
            src.parsed(
                "CHRONICLE_KAFKA_RETENTION_HOURS",
                kafka.retention.as_secs() / 3600,
            )?,
        )?,
    );
    Ok(kafka)
}

fn relay(src: &Source) -> Result<RelaySettings, ConfigError> {
    let defaults = RelaySettings::default();
    Ok(RelaySettings {
        batch_size: positive(
            "CHRONICLE_RELAY_BATCH",
            src.parsed("CHRONICLE_RELAY_BATCH", defaults.batch_size)?,
        )?,
        poll_interval: src.millis("CHRONICLE_RELAY_POLL_MS", defaults.poll_interval)?,
        in_flight: positive(
            "CHRONICLE_RELAY_IN_FLIGHT",
            src.parsed("CHRONICLE_RELAY_IN_FLIGHT", defaults.in_flight)?,
        )?,
        ..defaults
    })
}

fn projector(src: &Source) -> Result<ProjectorSettings, ConfigError> {
    let defaults = ProjectorSettings::default();
    let instances: Option<u32> = src
        .var("CHRONICLE_PROJECTOR_INSTANCES")
        .map(|_| src.parsed("CHRONICLE_PROJECTOR_INSTANCES", 1))
        .transpose()?;
    let group: bool = src.parsed("CHRONICLE_PROJECTOR_GROUP_ASSIGNMENT", false)?;
    let assignment = match instances {
        None if group => Assignment::Group,
        None => Assignment::Static {
            instance: 0,
            instances: 1,
        },
        Some(_) if group => {
            return Err(invalid(
                "CHRONICLE_PROJECTOR_GROUP_ASSIGNMENT",
                "cannot be combined with CHRONICLE_PROJECTOR_INSTANCES",
            ));
        }
        Some(instances) => {
            let instances = positive("CHRONICLE_PROJECTOR_INSTANCES", instances)?;
            let instance: u32 = src.parsed("CHRONICLE_PROJECTOR_INSTANCE", 0)?;
            if instance >= instances {
                return Err(invalid(
                    "CHRONICLE_PROJECTOR_INSTANCE",
                    "must be below CHRONICLE_PROJECTOR_INSTANCES (instances count from 0)",
                ));
            }
            Assignment::Static {
                instance,
                instances,
            }
        }
    };
    Ok(ProjectorSettings {
        batch_max: positive(
            "CHRONICLE_PROJECTOR_BATCH",
            src.parsed("CHRONICLE_PROJECTOR_BATCH", defaults.batch_max)?,
        )?,
        batch_wait: src.millis("CHRONICLE_PROJECTOR_BATCH_WAIT_MS", defaults.batch_wait)?,
        assignment,
    })
}

fn search(src: &Source) -> Result<SearchSettings, ConfigError> {
    let defaults = SearchSettings::default();
    Ok(SearchSettings {
        commit_docs: positive(
            "CHRONICLE_SEARCH_COMMIT_DOCS",
            src.parsed("CHRONICLE_SEARCH_COMMIT_DOCS", defaults.commit_docs)?,
        )?,
        commit_interval: src.millis("CHRONICLE_SEARCH_COMMIT_MS", defaults.commit_interval)?,
        ..defaults
    })
}

fn process(src: &Source) -> Result<ProcessSettings, ConfigError> {
    let defaults = ProcessSettings::default();
    let seconds = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        let value: u64 = src.parsed(name, default.as_secs())?;
        Ok(Duration::from_secs(value))
    };
    Ok(ProcessSettings {
        booking_hold: seconds("CHRONICLE_BOOKING_HOLD_SECONDS", defaults.booking_hold)?,
        charge_max_attempts: positive(
            "CHRONICLE_CHARGE_MAX_ATTEMPTS",
            src.parsed(
                "CHRONICLE_CHARGE_MAX_ATTEMPTS",
                defaults.charge_max_attempts,
            )?,
        )?,
        charge_retry: seconds("CHRONICLE_CHARGE_RETRY_SECONDS", defaults.charge_retry)?,
        tick: src.millis("CHRONICLE_SCHEDULER_TICK_MS", defaults.tick)?,
        flow_retention: Duration::from_secs(
            24 * 3600
                * positive(
                    "CHRONICLE_FLOW_RETENTION_DAYS",
                    src.parsed(
                        "CHRONICLE_FLOW_RETENTION_DAYS",
                        defaults.flow_retention.as_secs() / (24 * 3600),
                    )?,
                )?,
        ),
        concurrency: positive(
            "CHRONICLE_PROCESS_CONCURRENCY",
            src.parsed("CHRONICLE_PROCESS_CONCURRENCY", defaults.concurrency)?,
        )?,
        connections: positive(
            "CHRONICLE_PROCESS_DB_CONNECTIONS",
            src.parsed("CHRONICLE_PROCESS_DB_CONNECTIONS", defaults.connections)?,
        )?,
        subscription_retries: match src.var("CHRONICLE_SUBSCRIPTION_RETRY_HOURS") {
            None => defaults.subscription_retries,
            Some(text) => retry_hours(&text)?,
        },
    })
}

/// `CHRONICLE_SUBSCRIPTION_RETRY_HOURS`: hours (fractions allowed) before each retry of a
/// refused subscription charge, comma-separated; `none` for no retries.
fn retry_hours(text: &str) -> Result<RetryDelays, ConfigError> {
    const NAME: &str = "CHRONICLE_SUBSCRIPTION_RETRY_HOURS";
    let text = text.trim();
    let delays: Vec<Duration> = if text == "none" {
        Vec::new()
    } else {
        text.split(',')
            .map(|hours| match hours.trim().parse::<f64>() {
                Ok(h) if h > 0.0 && h <= 24.0 * 366.0 => Ok(Duration::from_secs_f64(h * 3600.0)),
                _ => Err(invalid(
                    NAME,
                    "expected hours, each above 0 and at most a year, comma-separated, or `none`",
                )),
            })
            .collect::<Result<_, _>>()?
    };
    RetryDelays::new(&delays)
        .ok_or_else(|| invalid(NAME, &format!("at most {} retries", RetryDelays::MAX)))
}

fn ready(src: &Source) -> Result<LagBounds, ConfigError> {
    let defaults = LagBounds::default();
    Ok(LagBounds {
        relay_events: src.parsed("CHRONICLE_READY_MAX_RELAY_LAG", defaults.relay_events)?,
        projector_messages: src.parsed(
            "CHRONICLE_READY_MAX_PROJECTOR_LAG",
            defaults.projector_messages,
        )?,
        held_back_seconds: src.parsed(
            "CHRONICLE_READY_MAX_HELD_BACK_SECONDS",
            defaults.held_back_seconds,
        )?,
    })
}

fn protection(src: &Source) -> Result<LimitSettings, ConfigError> {
    let defaults = LimitSettings::default();
    let settings = LimitSettings {
        per_second: src.parsed("CHRONICLE_RATE_LIMIT_PER_SECOND", defaults.per_second)?,
        burst: src.parsed("CHRONICLE_RATE_LIMIT_BURST", defaults.burst)?,
        request_timeout: src.millis("CHRONICLE_REQUEST_TIMEOUT_MS", defaults.request_timeout)?,
        max_inflight_commands: positive(
            "CHRONICLE_MAX_INFLIGHT_COMMANDS",
            src.parsed(
                "CHRONICLE_MAX_INFLIGHT_COMMANDS",
                defaults.max_inflight_commands,
            )?,
        )?,
        max_inflight_queries: positive(
            "CHRONICLE_MAX_INFLIGHT_QUERIES",
            src.parsed(
                "CHRONICLE_MAX_INFLIGHT_QUERIES",
                defaults.max_inflight_queries,
            )?,
        )?,
        admission_wait: src.millis("CHRONICLE_ADMISSION_WAIT_MS", defaults.admission_wait)?,
    };
    if !settings.per_second.is_finite() || settings.per_second <= 0.0 {
        return Err(invalid(
            "CHRONICLE_RATE_LIMIT_PER_SECOND",
            "must be greater than zero",
        ));
    }
    if !settings.burst.is_finite() || settings.burst < 1.0 {
        return Err(invalid("CHRONICLE_RATE_LIMIT_BURST", "must be at least 1"));
    }
    Ok(settings)
}

fn master_keys(src: &Source) -> Result<Arc<MasterKeys>, ConfigError> {
    let material = src.var(MASTER_KEY_ENV);
    let file = src.var(MASTER_KEY_FILE_ENV);
    let name = if file.is_some() && material.is_none() {
        MASTER_KEY_FILE_ENV
    } else {
        MASTER_KEY_ENV
    };
    // The reason names entries and files, never key bytes.
    MasterKeys::from_settings(material.as_deref(), file.as_deref())
        .map(Arc::new)
        .map_err(|e| invalid(name, &e.to_string()))
}

fn notary(src: &Source) -> Result<NotarySettings, ConfigError> {
    let defaults = NotarySettings::default();
    Ok(NotarySettings {
        batch_size: positive(
            "CHRONICLE_NOTARY_BATCH",
            src.parsed("CHRONICLE_NOTARY_BATCH", defaults.batch_size)?,
        )?,
        poll_interval: src.millis("CHRONICLE_NOTARY_POLL_MS", defaults.poll_interval)?,
        checkpoint_leaves: positive(
            "CHRONICLE_CHECKPOINT_EVERY",
            src.parsed("CHRONICLE_CHECKPOINT_EVERY", defaults.checkpoint_leaves)?,
        )?,
        checkpoint_interval: Duration::from_secs(positive(
            "CHRONICLE_CHECKPOINT_SECONDS",
            src.parsed(
                "CHRONICLE_CHECKPOINT_SECONDS",
                defaults.checkpoint_interval.as_secs(),
            )?,
        )?),
        origin: src
            .var("CHRONICLE_CHECKPOINT_ORIGIN")
            .unwrap_or(defaults.origin),
        ..defaults
    })
}

fn feed(src: &Source) -> Result<FeedSettings, ConfigError> {
    let defaults = FeedSettings::default();
    let seconds = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(positive(
            name,
            src.parsed(name, default.as_secs())?,
        )?))
    };
    let count = |name: &'static str, default: usize| -> Result<usize, ConfigError> {
        positive(name, src.parsed(name, default)?)
    };
    Ok(FeedSettings {
        buffer_events: count("CHRONICLE_FEED_BUFFER_EVENTS", defaults.buffer_events)?,
        heartbeat: seconds("CHRONICLE_FEED_HEARTBEAT_SECONDS", defaults.heartbeat)?,
        retry: src.millis("CHRONICLE_FEED_RETRY_MS", defaults.retry)?,
        per_principal: count("CHRONICLE_FEED_MAX_PER_PRINCIPAL", defaults.per_principal)?,
        max_subscribers: count("CHRONICLE_FEED_MAX_SUBSCRIBERS", defaults.max_subscribers)?,
        catch_ups: count("CHRONICLE_FEED_CATCH_UPS", defaults.catch_ups)?,
        retention: Duration::from_secs(
            3600 * positive(
                "CHRONICLE_FEED_RETENTION_HOURS",
                src.parsed(
                    "CHRONICLE_FEED_RETENTION_HOURS",
                    defaults.retention.as_secs() / 3600,
                )?,
            )?,
        ),
        ticket_ttl: seconds("CHRONICLE_FEED_TICKET_SECONDS", defaults.ticket_ttl)?,
    })
}

fn signing_key(src: &Source) -> Result<Arc<CheckpointKey>, ConfigError> {
    let material = src.var(SIGNING_KEY_ENV);
    let file = src.var(SIGNING_KEY_FILE_ENV);
    let name = if file.is_some() && material.is_none() {
        SIGNING_KEY_FILE_ENV
    } else {
        SIGNING_KEY_ENV
    };
    // The reason names the setting or file, never key bytes.
    CheckpointKey::from_settings(material.as_deref(), file.as_deref())
        .map(Arc::new)
        .map_err(|e| invalid(name, &e.to_string()))
}

fn jwt_secret(src: &Source) -> Result<(String, bool), ConfigError> {
    match src.var("CHRONICLE_JWT_SECRET") {
        Some(secret) if secret.len() < 16 => Err(invalid(
            "CHRONICLE_JWT_SECRET",
            "must be at least 16 bytes (32 or more recommended)",
        )),
        Some(secret) => Ok((secret, false)),
        None => Ok((DEV_JWT_SECRET.to_owned(), true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("chronicle-settings-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_settings_file_is_read_and_unknown_names_are_refused() {
        let path = file("CHRONICLE_RELAY_BATCH = 77\nscheduler_tick_ms = \"250\"\n");
        let settings = Settings::load(&Source::with_file(&path).unwrap()).unwrap();
        assert_eq!(settings.relay.batch_size, 77);
        assert_eq!(settings.process.tick, Duration::from_millis(250));
        let wrong = file("CHRONICLE_RELAY_BACTH = 1\n");
        let error = Source::with_file(&wrong).err().unwrap();
        assert!(error.to_string().contains("unknown setting"), "{error}");
        let invalid = file("CHRONICLE_KAFKA_PARTITIONS = \"many\"\n");
        let error = Settings::load(&Source::with_file(&invalid).unwrap())
            .err()
            .unwrap();
        assert_eq!(error.name, "CHRONICLE_KAFKA_PARTITIONS");
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(
            format!("{:?}", Secret::new("hunter2-hunter2-hunter2")),
            "<redacted>"
        );
        let database = DatabaseSettings::new("postgres://app:s3cret@db:5432/chronicle");
        assert!(!format!("{database:?}").contains("s3cret"));
    }
}
