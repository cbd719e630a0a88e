//! Why a command did not take effect.

use chronicle_domain::DomainError;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A command's failure: the domain's rejection, a refusal the database made in the
/// append transaction, or a technical failure.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Another live booking holds a requested seat for an overlapping time.
    #[error("a requested seat is already taken for an overlapping time")]
    SeatTaken,
    /// The idempotency key is already recorded; the caller answers from that record.
    #[error("the idempotency key is already recorded")]
    IdempotencyKeyUsed,
    /// Concurrent writers kept winning the race for this aggregate.
    #[error("gave up after {attempts} attempts against concurrent writers")]
    Contention { attempts: u32 },
    /// The event store could not be reached.
    #[error("event store unavailable: {0}")]
    Unavailable(BoxError),
    /// Anything else; details go to the log, not to the client.
    #[error("internal error: {0}")]
    Internal(BoxError),
}

impl CommandError {
    /// The stable machine code of this failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rejected(e) => e.code(),
            Self::SeatTaken => "seat_taken",
            Self::IdempotencyKeyUsed => "idempotency_key_reused",
            Self::Contention { .. } => "version_conflict",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<chronicle_eventstore::StoreError> for CommandError {
    fn from(error: chronicle_eventstore::StoreError) -> Self {
        match error {
            chronicle_eventstore::StoreError::Unavailable(e) => Self::Unavailable(Box::new(e)),
            other => Self::Internal(Box::new(other)),
        }
    }
}
