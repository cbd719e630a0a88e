//! Settings of the `chronicle` process, composed from each crate's own settings and read
//! from `CHRONICLE_*` environment variables with local defaults. Invalid values fail
//! fast, naming the variable; secrets are never printed.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use chronicle_commands::CommandSettings;
use chronicle_eventstore::DatabaseSettings;

use crate::HttpLimits;

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub reason: String,
}

/// The development signing key used when `CHRONICLE_JWT_SECRET` is unset.
pub const DEV_JWT_SECRET: &str = "chronicle-local-development-key-not-for-production";

/// A secret that prints as `<redacted>`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything the process needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `CHRONICLE_HTTP_ADDR`.
    pub http_addr: SocketAddr,
    pub database: DatabaseSettings,
    pub commands: CommandSettings,
    pub limits: HttpLimits,
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

impl Settings {
    /// Reads the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut database = DatabaseSettings::new(
            var("CHRONICLE_DATABASE_URL")
                .unwrap_or_else(|| DatabaseSettings::DEFAULT_URL.to_owned()),
        );
        database.max_connections =
            parsed("CHRONICLE_DB_MAX_CONNECTIONS", database.max_connections)?;
        if database.max_connections == 0 {
            return Err(ConfigError {
                name: "CHRONICLE_DB_MAX_CONNECTIONS",
                reason: "must be at least 1".into(),
            });
        }
        if !database.url.starts_with("postgres://") && !database.url.starts_with("postgresql://") {
            return Err(ConfigError {
                name: "CHRONICLE_DATABASE_URL",
                reason: "must be a postgres:// URL".into(),
            });
        }
        let defaults = CommandSettings::default();
        let commands = CommandSettings {
            snapshot_every: parsed("CHRONICLE_SNAPSHOT_EVERY", defaults.snapshot_every)?,
            max_attempts: parsed("CHRONICLE_COMMAND_MAX_ATTEMPTS", defaults.max_attempts)?,
        };
        if commands.snapshot_every == 0 {
            return Err(ConfigError {
                name: "CHRONICLE_SNAPSHOT_EVERY",
                reason: "must be at least 1".into(),
            });
        }
        let limits = HttpLimits {
            body_limit: parsed(
                "CHRONICLE_BODY_LIMIT_BYTES",
                HttpLimits::default().body_limit,
            )?,
        };
        let (jwt_secret, jwt_secret_is_default) = match var("CHRONICLE_JWT_SECRET") {
            Some(secret) if secret.len() < 16 => {
                return Err(ConfigError {
                    name: "CHRONICLE_JWT_SECRET",
                    reason: "must be at least 16 bytes (32 or more recommended)".into(),
                });
            }
            Some(secret) => (secret, false),
            None => (DEV_JWT_SECRET.to_owned(), true),
        };
        Ok(Self {
            http_addr: parsed(
                "CHRONICLE_HTTP_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            )?,
            database,
            commands,
            limits,
            jwt_secret: Secret(jwt_secret),
            jwt_secret_is_default,
        })
    }
}
