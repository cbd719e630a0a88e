//! Read-your-writes: wait, bounded, until the read models have applied a position.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::read_models::PROJECTED_CHANNEL;

/// Wakes waiters whenever a projector commits a batch (any process, via NOTIFY), and
/// answers whether a position has been applied.
#[derive(Clone)]
pub struct ProjectionWatch {
    pool: PgPool,
    /// Batches committed, as notified: a receiver never misses one (read-your-writes
    /// waiters and the live feed's tail wake on it).
    commits: watch::Sender<u64>,
}

impl ProjectionWatch {
    /// Starts listening; the listener reconnects on its own and stops with `shutdown`.
    pub fn start(pool: PgPool, shutdown: CancellationToken) -> Self {
        let commits = watch::channel(0).0;
        let watch = Self {
            pool: pool.clone(),
            commits: commits.clone(),
        };
        tokio::spawn(async move {
            loop {
                if let Err(error) = listen(&pool, &commits, &shutdown).await {
                    tracing::warn!(%error, "projection listener failed; polling until it reconnects");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        watch
    }

    /// Changes whenever the read models commit a batch (in any process).
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Whether the read models have applied the event at `position`.
    pub async fn applied(&self, position: i64) -> Result<bool, sqlx::Error> {
        if position <= 0 {
            return Ok(true);
        }
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM rm_applied_events WHERE global_position = $1)",
        )
        .bind(position)
        .fetch_one(&self.pool)
        .await
    }

    /// Whether any event was ever given `position` (positions are handed out by the
    /// store's identity sequence; a larger one cannot be waited for).
    pub async fn exists(&self, position: i64) -> Result<bool, sqlx::Error> {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT pg_sequence_last_value(pg_get_serial_sequence('events', 'global_position'))",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(position <= last.unwrap_or(0))
    }

    /// Waits up to `timeout` for `position` to be applied; false when it was not.
    pub async fn wait_for(&self, position: i64, timeout: Duration) -> Result<bool, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut commits = self.commits();
        loop {
            commits.borrow_and_update();
            if self.applied(position).await? {
                return Ok(true);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            // The notification usually comes first; the poll covers a lost listener.
            let poll = (now + Duration::from_millis(250)).min(deadline);
            tokio::select! {
                _ = commits.changed() => {}
                _ = tokio::time::sleep_until(poll) => {}
            }
        }
    }
}

async fn listen(
    pool: &PgPool,
    commits: &watch::Sender<u64>,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(PROJECTED_CHANNEL).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            notification = listener.recv() => {
                notification?;
                commits.send_modify(|n| *n += 1);
            }
        }
    }
}
