//! Settings of the `chronicle` process, composed from each crate's own settings and read
//! from `CHRONICLE_*` environment variables with local defaults. Invalid values fail
//! fast, naming the variable; secrets are never printed.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chronicle_commands::CommandSettings;
use chronicle_commands::process::ProcessSettings;
use chronicle_eventstore::DatabaseSettings;
use chronicle_eventstore::kafka::KafkaSettings;
use chronicle_eventstore::relay::RelaySettings;
use chronicle_projections::monitor::LagBounds;
use chronicle_projections::search::SearchSettings;
use chronicle_projections::{Assignment, ProjectorSettings};

use crate::HttpLimits;

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
    /// `CHRONICLE_JWT_SECRET`.
    pub jwt_secret: Secret,
    /// Whether the development key is in use (and a warning is due).
    pub jwt_secret_is_default: bool,
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parsed<T: FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(text) => text.trim().parse().map_err(|e| ConfigError {
            name,
            reason: format!("cannot parse {text:?}: {e}"),
        }),
    }
}

fn millis(name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    let ms: u64 = parsed(name, default.as_millis() as u64)?;
    Ok(Duration::from_millis(ms))
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
        let (jwt_secret, jwt_secret_is_default) = jwt_secret()?;
        let data_dir = PathBuf::from(var("CHRONICLE_DATA_DIR").unwrap_or_else(|| "./data".into()));
        Ok(Self {
            http_addr: parsed(
                "CHRONICLE_HTTP_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            )?,
            search_dir: var("CHRONICLE_SEARCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| data_dir.join("search")),
            search: search()?,
            process: process()?,
            data_dir,
            database: database()?,
            commands: commands()?,
            limits: HttpLimits {
                body_limit: positive(
                    "CHRONICLE_BODY_LIMIT_BYTES",
                    parsed(
                        "CHRONICLE_BODY_LIMIT_BYTES",
                        HttpLimits::default().body_limit,
                    )?,
                )?,
            },
            reads: ReadSettings {
                min_position_timeout: millis(
                    "CHRONICLE_MIN_POSITION_TIMEOUT_MS",
                    ReadSettings::default().min_position_timeout,
                )?,
            },
            kafka: kafka()?,
            relay: relay()?,
            projector: projector()?,
            ready: ready()?,
            lag_interval: millis("CHRONICLE_LAG_INTERVAL_MS", Duration::from_secs(5))?,
            jwt_secret: Secret(jwt_secret),
            jwt_secret_is_default,
        })
    }
}

fn database() -> Result<DatabaseSettings, ConfigError> {
    let mut database = DatabaseSettings::new(
        var("CHRONICLE_DATABASE_URL").unwrap_or_else(|| DatabaseSettings::DEFAULT_URL.to_owned()),
    );
    if !database.url.starts_with("postgres://") && !database.url.starts_with("postgresql://") {
        return Err(invalid(
            "CHRONICLE_DATABASE_URL",
            "must be a postgres:// URL",
        ));
    }
    database.max_connections = positive(
        "CHRONICLE_DB_MAX_CONNECTIONS",
        parsed("CHRONICLE_DB_MAX_CONNECTIONS", database.max_connections)?,
    )?;
    Ok(database)
}

fn commands() -> Result<CommandSettings, ConfigError> {
    let defaults = CommandSettings::default();
    Ok(CommandSettings {
        snapshot_every: positive(
            "CHRONICLE_SNAPSHOT_EVERY",
            parsed("CHRONICLE_SNAPSHOT_EVERY", defaults.snapshot_every)?,
        )?,
        max_attempts: positive(
            "CHRONICLE_COMMAND_MAX_ATTEMPTS",
            parsed("CHRONICLE_COMMAND_MAX_ATTEMPTS", defaults.max_attempts)?,
        )?,
    })
}

fn kafka() -> Result<KafkaSettings, ConfigError> {
    let mut kafka = KafkaSettings::new(
        var("CHRONICLE_KAFKA_BROKERS").unwrap_or_else(|| KafkaSettings::DEFAULT_BROKERS.to_owned()),
    );
    kafka.topic_prefix = var("CHRONICLE_TOPIC_PREFIX").unwrap_or_default();
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
        parsed("CHRONICLE_KAFKA_PARTITIONS", kafka.partitions)?,
    )?;
    kafka.replication = positive(
        "CHRONICLE_KAFKA_REPLICATION",
        parsed("CHRONICLE_KAFKA_REPLICATION", kafka.replication)?,
    )?;
    Ok(kafka)
}

fn relay() -> Result<RelaySettings, ConfigError> {
    let defaults = RelaySettings::default();
    Ok(RelaySettings {
        batch_size: positive(
            "CHRONICLE_RELAY_BATCH",
            parsed("CHRONICLE_RELAY_BATCH", defaults.batch_size)?,
        )?,
        poll_interval: millis("CHRONICLE_RELAY_POLL_MS", defaults.poll_interval)?,
        ..defaults
    })
}

fn projector() -> Result<ProjectorSettings, ConfigError> {
    let defaults = ProjectorSettings::default();
    let instances: Option<u32> = var("CHRONICLE_PROJECTOR_INSTANCES")
        .map(|_| parsed("CHRONICLE_PROJECTOR_INSTANCES", 1))
        .transpose()?;
    let assignment = match instances {
        None => Assignment::Group,
        Some(instances) => {
            let instances = positive("CHRONICLE_PROJECTOR_INSTANCES", instances)?;
            let instance: u32 = parsed("CHRONICLE_PROJECTOR_INSTANCE", 0)?;
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
            parsed("CHRONICLE_PROJECTOR_BATCH", defaults.batch_max)?,
        )?,
        batch_wait: millis("CHRONICLE_PROJECTOR_BATCH_WAIT_MS", defaults.batch_wait)?,
        assignment,
    })
}

fn search() -> Result<SearchSettings, ConfigError> {
    let defaults = SearchSettings::default();
    Ok(SearchSettings {
        commit_docs: positive(
            "CHRONICLE_SEARCH_COMMIT_DOCS",
            parsed("CHRONICLE_SEARCH_COMMIT_DOCS", defaults.commit_docs)?,
        )?,
        commit_interval: millis("CHRONICLE_SEARCH_COMMIT_MS", defaults.commit_interval)?,
        ..defaults
    })
}

fn process() -> Result<ProcessSettings, ConfigError> {
    let defaults = ProcessSettings::default();
    let seconds = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        let value: u64 = parsed(name, default.as_secs())?;
        Ok(Duration::from_secs(value))
    };
    Ok(ProcessSettings {
        booking_hold: seconds("CHRONICLE_BOOKING_HOLD_SECONDS", defaults.booking_hold)?,
        charge_max_attempts: positive(
            "CHRONICLE_CHARGE_MAX_ATTEMPTS",
            parsed(
                "CHRONICLE_CHARGE_MAX_ATTEMPTS",
                defaults.charge_max_attempts,
            )?,
        )?,
        charge_retry: seconds("CHRONICLE_CHARGE_RETRY_SECONDS", defaults.charge_retry)?,
        tick: millis("CHRONICLE_SCHEDULER_TICK_MS", defaults.tick)?,
    })
}

fn ready() -> Result<LagBounds, ConfigError> {
    let defaults = LagBounds::default();
    Ok(LagBounds {
        relay_events: parsed("CHRONICLE_READY_MAX_RELAY_LAG", defaults.relay_events)?,
        projector_messages: parsed(
            "CHRONICLE_READY_MAX_PROJECTOR_LAG",
            defaults.projector_messages,
        )?,
        held_back_seconds: parsed(
            "CHRONICLE_READY_MAX_HELD_BACK_SECONDS",
            defaults.held_back_seconds,
        )?,
    })
}

fn jwt_secret() -> Result<(String, bool), ConfigError> {
    match var("CHRONICLE_JWT_SECRET") {
        Some(secret) if secret.len() < 16 => Err(invalid(
            "CHRONICLE_JWT_SECRET",
            "must be at least 16 bytes (32 or more recommended)",
        )),
        Some(secret) => Ok((secret, false)),
        None => Ok((DEV_JWT_SECRET.to_owned(), true)),
    }
}
