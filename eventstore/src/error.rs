//! Errors of the event store, and the database's own refusals recognised by SQLSTATE.

/// A technical failure of the event store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the pool had no connection to give.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database answered with an error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// The schema could not be migrated.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A key in the store does not open with the configured master keys (the key
    /// material is wrong or incomplete, or the row was altered).
    #[error("key store: {0}")]
    Keys(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(error)
        } else {
            Self::Database(error)
        }
    }
}

/// Whether `error` means the database cannot serve now rather than that it refused:
/// it is out of reach, or a lock held elsewhere outlasted the lock timeout.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    is_lock_timeout(error) || is_connection_lost(error)
}

/// Whether a statement gave up waiting for a lock (`lock_not_available`, after
/// `lock_timeout`). Its transaction is rolled back; the connection remains usable.
pub fn is_lock_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("55P03"))
}

/// Whether the database is out of reach: a connection that failed this way is not
/// worth keeping.
pub fn is_connection_lost(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    ) || matches!(error, sqlx::Error::Database(e)
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
        if matches!(e.code().as_deref(), Some("57P01" | "57P02" | "57P03" | "53300")))
}

/// A refusal the database made for one command inside a group commit (ADR 0012), as
/// the database reported it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (SQLSTATE {sqlstate})")]
pub struct Refusal {
    pub sqlstate: String,
    pub constraint: Option<String>,
    pub message: String,
}

/// A refusal the database makes inside the append transaction. The transaction is rolled
/// back, so nothing of the command remains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendRejection {
    /// Another live booking holds one of the seats for an overlapping range.
    SeatTaken,
    /// The request's idempotency key is already recorded (by a concurrent retry of the
    /// same request, or by another request).
    IdempotencyKeyUsed,
    /// The event does not follow the stored stream directly.
    StreamGap,
    /// Someone tried to change history.
    AppendOnly,
    /// A serialization failure or deadlock: the same command may simply be retried.
    Transient,
}

impl AppendRejection {
    /// Recognises a rejection anywhere in `error`'s source chain (the driver's error,
    /// or a group commit's [`Refusal`], boxed by cqrs-es; this looks through the boxes).
    pub fn find(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
                return Self::from_sqlstate(db.code().as_deref()?, db.constraint());
            }
            if let Some(refusal) = e.downcast_ref::<Refusal>() {
                return Self::from_sqlstate(&refusal.sqlstate, refusal.constraint.as_deref());
            }
            current = e.source();
        }
        None
    }

    fn from_sqlstate(code: &str, constraint: Option<&str>) -> Option<Self> {
        match (code, constraint) {
            ("23P01", Some("seat_claims_no_overlap")) => Some(Self::SeatTaken),
            ("CH001", _) => Some(Self::IdempotencyKeyUsed),
            ("CH002", _) => Some(Self::StreamGap),
            ("CH000", _) => Some(Self::AppendOnly),
            ("40001" | "40P01", _) => Some(Self::Transient),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AppendRejection;

    #[test]
    fn sqlstates_map_to_rejections() {
        assert_eq!(
            AppendRejection::from_sqlstate("23P01", Some("seat_claims_no_overlap")),
            Some(AppendRejection::SeatTaken)
        );
        assert_eq!(AppendRejection::from_sqlstate("23P01", Some("other")), None);
        assert_eq!(
            AppendRejection::from_sqlstate("CH001", None),
            Some(AppendRejection::IdempotencyKeyUsed)
        );
        assert_eq!(
            AppendRejection::from_sqlstate("40P01", None),
            Some(AppendRejection::Transient)
        );
        assert_eq!(AppendRejection::from_sqlstate("23505", None), None);
    }
}
