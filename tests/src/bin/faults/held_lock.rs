//! The connection pool exhausted by held transactions: a session of the suite's own
//! locks `events` in an open transaction, so that every statement of Chronicle that
//! reads or appends events waits behind it, while more clients than the pool has
//! connections send commands. Chronicle must answer them promptly (503 with
//! `Retry-After`), not leave them hanging until the client gives up.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

/// How long the lock is held.
pub const HOLD: Duration = Duration::from_secs(15);

/// Clients sending commands during the hold, besides the load's own: with them the
/// commands in flight outnumber the pool's 16 connections.
pub const EXTRA_CLIENTS: u64 = 24;

/// Holds `events` in ACCESS EXCLUSIVE mode for `hold`: a command's load (a read) waits
/// as well as its append, so each command in flight holds a pooled connection in a
/// waiting statement. Returns once it is taken; the lock goes when the returned task
/// ends.
pub async fn lock_events(
    options: &PgConnectOptions,
    hold: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut connection = PgConnection::connect_with(options).await.unwrap();
    sqlx::query("BEGIN").execute(&mut connection).await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut connection)
        .await
        .unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        sqlx::query("ROLLBACK")
            .execute(&mut connection)
            .await
            .unwrap();
        connection.close().await.ok();
    })
}
