//! Where a command's events landed: the stream version and global position.

use sqlx::PgPool;

use crate::error::StoreError;

/// The metadata key carrying the id of the request that caused an event.
pub const REQUEST_ID_METADATA: &str = "request_id";

/// A point in a stream: its version (last sequence) and that event's global position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StreamPoint {
    pub sequence: i64,
    pub global_position: i64,
}

/// The last event of a stream appended by request `request_id`, if any.
///
/// Walks the stream backwards on its primary key and stops at the first match, which is
/// the newest event unless others were appended since.
pub async fn appended_by(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    request_id: &str,
) -> Result<Option<StreamPoint>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT sequence, global_position FROM events \
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND metadata ->> 'request_id' = $3 \
          ORDER BY sequence DESC LIMIT 1",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(request_id)
    .fetch_optional(pool)
    .await?)
}

/// The newest event of a stream, if it has any.
pub async fn head(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Option<StreamPoint>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT sequence, global_position FROM events \
          WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence DESC LIMIT 1",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(pool)
    .await?)
}
