//! A bound on how long one piece of work waits for pooled connections in all.
//!
//! The pool bounds each wait (`acquire_timeout`), but a client's command may take
//! several connections in turn (a booking reads the account it charges, then loads and
//! appends the booking). When the pool is exhausted each of those waits may last the
//! whole timeout, and the client gives up before any answer. Work run [`within`] a
//! deadline instead shares one budget: every [`acquire`] inside it waits at most until
//! the deadline, then fails as the pool's own timeout does (`PoolTimedOut`, answered 503
//! with `Retry-After`). Only waits for a connection are cut short; a statement once
//! started runs to its known outcome (ADR 0030).

use std::future::Future;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `work` with every [`acquire`] in it waiting at most until `deadline`.
pub async fn within<F: Future>(deadline: Instant, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// A connection from `pool`, waiting no later than the deadline of the work this runs
/// within (if any), nor longer than the pool's own `acquire_timeout`.
pub async fn acquire(pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    match DEADLINE.try_with(|deadline| *deadline) {
        Ok(deadline) => tokio::time::timeout_at(deadline, pool.acquire())
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut)),
        Err(_) => pool.acquire().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::postgres::PgPoolOptions;

    use super::*;

    /// A pool that never connects: every acquire waits for its own timeout.
    fn unreachable_pool(timeout: Duration) -> PgPool {
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_lazy("postgres://nobody@127.0.0.1:9/none")
            .expect("a lazy pool")
    }

    #[tokio::test]
    async fn waits_inside_a_deadline_share_it() {
        let pool = unreachable_pool(Duration::from_secs(600));
        let start = Instant::now();
        let deadline = start + Duration::from_millis(300);
        let (first, second) = within(deadline, async {
            (acquire(&pool).await.err(), acquire(&pool).await.err())
        })
        .await;
        assert!(matches!(first, Some(sqlx::Error::PoolTimedOut)));
        assert!(matches!(second, Some(sqlx::Error::PoolTimedOut)));
        // Both gave up at the shared deadline, long before the pool's own timeout.
        assert!(start.elapsed() < Duration::from_secs(60));
    }
}
