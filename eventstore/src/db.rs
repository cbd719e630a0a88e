//! Connecting to PostgreSQL, creating the database if missing, and migrating it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::error::StoreError;

/// The event store's own tables (and, as history, the first read-model and process
/// tables), embedded at compile time. Only part of the schema: `chronicle_commands::schema`
/// applies it together with the other crates' migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How to reach the event store's database.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// `CHRONICLE_DATABASE_URL`.
    pub url: String,
    /// `CHRONICLE_DB_MAX_CONNECTIONS`: the pool's size.
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before failing.
    pub acquire_timeout: Duration,
    /// `CHRONICLE_DB_LOCK_TIMEOUT_MS`: the longest any statement of Chronicle's
    /// connections waits for a lock (PostgreSQL's `lock_timeout`). A lock held elsewhere
    /// (a long transaction, a migration, a manual `LOCK TABLE`) then fails the statement
    /// with a known outcome, answered 503, instead of every connection waiting behind it
    /// until clients give up. Migrations wait without it; zero turns it off.
    pub lock_timeout: Duration,
}

impl DatabaseSettings {
    /// The local default: a `chronicle` database on the local server.
    pub const DEFAULT_URL: &'static str = "postgres://postgres@127.0.0.1:5432/chronicle";

    /// Settings for `url` with default pool limits.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(2),
        }
    }

    /// The URL with any password replaced, fit for logs.
    pub fn redacted_url(&self) -> String {
        match PgConnectOptions::from_str(&self.url) {
            Ok(options) => format!(
                "postgres://{}@{}:{}/{}",
                options.get_username(),
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default()
            ),
            Err(_) => "<unparseable database url>".to_owned(),
        }
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.redacted_url())
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("lock_timeout", &self.lock_timeout)
            .finish()
    }
}

/// Opens a pool on the event store's database. Its connections (and those opened with
/// its connect options, such as the group commit writers') wait at most
/// `settings.lock_timeout` for a lock.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, StoreError> {
    let mut options = PgConnectOptions::from_str(&settings.url)?.application_name("chronicle");
    if !settings.lock_timeout.is_zero() {
        options = options.options([("lock_timeout", settings.lock_timeout.as_millis())]);
    }
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(options)
        .await?)
}

/// A second pool on `pool`'s database, with its connection options (the lock timeout
/// included) and acquire timeout, of at most `max_connections`, connecting on first use.
/// A bulkhead: work given its own pool cannot take the connections of the rest.
pub fn pool_beside(pool: &PgPool, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with(pool.connect_options().as_ref().clone())
}

/// One connection without a lock timeout, for migrating: migrators take turns on an
/// advisory lock, and a second process starting must wait for the first to finish.
pub async fn connect_for_migrations(
    settings: &DatabaseSettings,
) -> Result<PgConnection, StoreError> {
    let options = PgConnectOptions::from_str(&settings.url)?.application_name("chronicle");
    Ok(PgConnection::connect_with(&options).await?)
}

/// Creates the database named in `url` if it does not exist, connecting to the server's
/// `postgres` database to do so. Harmless when it exists or is being created concurrently.
pub async fn ensure_database(url: &str) -> Result<(), StoreError> {
    let options = PgConnectOptions::from_str(url)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let create = format!(
            "CREATE DATABASE \"{}\" ENCODING 'UTF8' TEMPLATE template0",
            name.replace('"', "\"\"")
        );
        match sqlx::query(&create).execute(&mut admin).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // 42P04 duplicate_database, 23505 when two creators race on the catalog.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

/// Whether the database answers a query.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// Runs `delete` (whose `$1` is an age in seconds and `$2` a batch size) until a batch
/// deletes fewer rows than the batch size: a sweep of a large backlog never holds one
/// long transaction. Returns the rows deleted.
pub async fn delete_in_batches(
    pool: &PgPool,
    delete: &str,
    age: Duration,
) -> Result<u64, sqlx::Error> {
    const BATCH: i64 = 10_000;
    let mut deleted = 0;
    loop {
        let batch = sqlx::query(delete)
            .bind(age.as_secs_f64())
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        deleted += batch;
        if batch < BATCH as u64 {
            return Ok(deleted);
        }
    }
}

/// Forgets the seat claims of bookings that ended more than `age` ago: a new booking
/// must start in the future, so such a claim can never conflict again. Returns how many
/// went.
pub async fn forget_ended_claims(pool: &PgPool, age: Duration) -> Result<u64, sqlx::Error> {
    delete_in_batches(
        pool,
        "DELETE FROM seat_claims WHERE ctid = ANY(ARRAY( \
           SELECT ctid FROM seat_claims \
            WHERE upper(during) < now() - make_interval(secs => $1) LIMIT $2))",
        age,
    )
    .await
}
