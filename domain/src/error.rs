//! Domain rejections. Each variant has a stable machine `code()`; mapping codes to
//! transport statuses is the edge's business, not the domain's.

use crate::money::Currency;

/// Why an aggregate refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A value in the command is malformed or out of range.
    #[error("{field}: {reason}")]
    Validation { field: &'static str, reason: String },
    /// The aggregate does not exist, or the actor may not see it.
    #[error("not found")]
    NotFound,
    /// A create command named an id that is already taken.
    #[error("already exists")]
    AlreadyExists,
    /// `If-Match` named a version that is not the current one.
    #[error("expected version {expected}, current version is {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    /// A withdrawal would take the balance below `-overdraft_limit`.
    #[error(
        "insufficient funds: balance {balance}, overdraft limit {overdraft_limit}, requested {requested}"
    )]
    InsufficientFunds {
        balance: i64,
        overdraft_limit: i64,
        requested: i64,
    },
    /// The command's currency is not the aggregate's.
    #[error("currency mismatch: expected {expected}, got {actual}")]
    CurrencyMismatch {
        expected: Currency,
        actual: Currency,
    },
    /// The account is closed; nothing more may happen to it.
    #[error("account is closed")]
    AccountClosed,
    /// An account can only be closed at a zero balance.
    #[error("balance is {balance}, not zero")]
    BalanceNotZero { balance: i64 },
    /// The command is not allowed in the aggregate's current status.
    #[error("cannot {action} when {status}")]
    InvalidTransition {
        status: &'static str,
        action: &'static str,
    },
    /// A booking can only be cancelled before it starts.
    #[error("the booking has already started")]
    BookingStarted,
    /// A refund may not exceed what was captured and not yet refunded.
    #[error("refund of {requested} exceeds the refundable {refundable}")]
    RefundExceedsCaptured { refundable: i64, requested: i64 },
    /// An arithmetic result would leave the representable range.
    #[error("amount out of range")]
    AmountOutOfRange,
}

impl DomainError {
    /// The stable machine code of this rejection.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation { .. } => "validation_failed",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::VersionConflict { .. } => "version_conflict",
            Self::InsufficientFunds { .. } => "insufficient_funds",
            Self::CurrencyMismatch { .. } => "currency_mismatch",
            Self::AccountClosed => "account_closed",
            Self::BalanceNotZero { .. } => "balance_not_zero",
            Self::InvalidTransition { .. } => "invalid_transition",
            Self::BookingStarted => "booking_started",
            Self::RefundExceedsCaptured { .. } => "refund_exceeds_captured",
            Self::AmountOutOfRange => "amount_out_of_range",
        }
    }

    /// A validation failure of `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Validation {
            field,
            reason: reason.into(),
        }
    }
}
