//! Idempotency records: what a request with an `Idempotency-Key` produced. They are
//! written by the append transaction itself (a trigger on `events`), read here.

use sqlx::PgPool;

use crate::error::StoreError;

/// The event-metadata keys the append transaction reads the record from.
pub const KEY_METADATA: &str = "idempotency_key";
pub const HASH_METADATA: &str = "request_hash";

/// A committed request: which stream it wrote to and how far.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub last_sequence: i64,
    pub last_position: i64,
}

/// The record of `actor`'s request with `key`, if one committed.
pub async fn find(
    pool: &PgPool,
    actor: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT request_hash, aggregate_type, aggregate_id, last_sequence, last_position \
           FROM idempotency_keys WHERE actor = $1 AND idempotency_key = $2",
    )
    .bind(actor)
    .bind(key)
    .fetch_optional(pool)
    .await?)
}

/// Forgets the records older than `max_age`, a bounded batch per transaction; returns
/// how many went.
pub async fn expire(pool: &PgPool, max_age: std::time::Duration) -> Result<u64, StoreError> {
    Ok(crate::db::delete_in_batches(
        pool,
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY( \
           SELECT ctid FROM idempotency_keys \
            WHERE created_at < now() - make_interval(secs => $1) LIMIT $2))",
        max_age,
    )
    .await?)
}
