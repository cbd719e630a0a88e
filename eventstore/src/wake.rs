//! The relay's wake-up, sent by the writer after its commit.
//!
//! A `NOTIFY` inside the append transaction takes a cluster-wide lock at commit and
//! holds it through the commit's WAL flush, so every appending transaction queued
//! behind every other (ADR 0011). Instead, the writing process sends
//! `pg_notify('chronicle_events', '')` on a connection of its own once its append has
//! committed, coalescing: while one notification is on its way, any number of further
//! commits ask for just one more, sent at least [`MIN_GAP`] later. The relay still polls
//! (`CHRONICLE_RELAY_POLL_MS`), so a writer that dies between its commit and its
//! notification, or a writer that is not Chronicle, delays publication by at most one
//! poll and loses nothing.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;

use crate::relay::NOTIFY_CHANNEL;

/// Shortest time between two notifications from one process: under load the relay is
/// busy anyway, and this bounds the notifications to a thousand a second.
const MIN_GAP: Duration = Duration::from_millis(1);

/// How long to wait after the database could not be reached before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Sends the relay's wake-up after commits; cheap to clone and to call.
#[derive(Clone, Debug)]
pub struct RelayWake {
    pending: mpsc::Sender<()>,
}

impl RelayWake {
    /// Starts the task that notifies through its own connection to `options`'s
    /// database. The task ends when the last clone is dropped.
    pub fn start(options: PgConnectOptions) -> Self {
        // One slot: a commit that finds it taken is covered by the notification pending.
        let (pending, requests) = mpsc::channel(1);
        tokio::spawn(notify_on_request(options, requests));
        Self { pending }
    }

    /// Records that events committed; the relay hears of it soon.
    pub fn committed(&self) {
        // Full means a notification is already pending; closed cannot happen while a
        // clone exists, and would only cost a poll interval.
        let _ = self.pending.try_send(());
    }
}

async fn notify_on_request(options: PgConnectOptions, mut requests: mpsc::Receiver<()>) {
    let mut connection: Option<PgConnection> = None;
    while requests.recv().await.is_some() {
        let sent = match connection.as_mut() {
            Some(conn) => notify(conn).await,
            None => match PgConnection::connect_with(&options).await {
                Ok(mut conn) => {
                    let sent = notify(&mut conn).await;
                    connection = Some(conn);
                    sent
                }
                Err(error) => Err(error),
            },
        };
        let pause = match sent {
            Ok(()) => MIN_GAP,
            Err(error) => {
                tracing::debug!(%error, "cannot notify the relay; it will poll");
                connection = None;
                RETRY_AFTER_FAILURE
            }
        };
        tokio::time::sleep(pause).await;
    }
    if let Some(connection) = connection {
        connection.close().await.ok();
    }
}

async fn notify(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(connection)
        .await
        .map(drop)
}
