//! The workload's two aggregates on esrs's `Aggregate` trait. They make the decisions
//! Chronicle's domain makes for the same commands: an account is opened once, a deposit
//! needs an opened account, a positive amount in its currency and skips a reference it
//! has already applied (the workload never closes an account, so closing is left out); a booking request needs valid seats, a positive price and a time
//! range in the future of at most a year.
//!
//! esrs keeps `handle_command` synchronous and free of side effects, so the current time
//! travels in the command, as in Chronicle's `Issued<C>`.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use esrs::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a command can be refused for.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("the aggregate already exists")]
    AlreadyExists,
    #[error("no such account")]
    NotFound,
    #[error("currency {actual} does not match the account's {expected}")]
    CurrencyMismatch { expected: String, actual: String },
    #[error("the balance would leave the representable range")]
    AmountOutOfRange,
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

fn invalid(field: &'static str, reason: &'static str) -> DomainError {
    DomainError::Invalid { field, reason }
}

/// A customer's wallet.
pub struct Account;

#[derive(Debug, Default)]
pub struct AccountState {
    opened: bool,
    currency: String,
    balance: i64,
    references: HashSet<String>,
}

pub enum AccountCommand {
    Open {
        owner: String,
        currency: String,
        at: DateTime<Utc>,
    },
    Deposit {
        amount: i64,
        currency: Option<String>,
        reference: Option<String>,
        at: DateTime<Utc>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AccountEvent {
    AccountOpened {
        owner: String,
        currency: String,
        overdraft_limit: i64,
        opened_at: DateTime<Utc>,
    },
    FundsDeposited {
        amount: i64,
        reference: Option<String>,
        balance_after: i64,
        occurred_at: DateTime<Utc>,
    },
}

impl Aggregate for Account {
    const NAME: &'static str = "account";
    type State = AccountState;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = DomainError;

    fn handle_command(
        state: &AccountState,
        command: AccountCommand,
    ) -> Result<Vec<AccountEvent>, DomainError> {
        match command {
            AccountCommand::Open { .. } if state.opened => Err(DomainError::AlreadyExists),
            AccountCommand::Open {
                owner,
                currency,
                at,
            } => Ok(vec![AccountEvent::AccountOpened {
                owner,
                currency,
                overdraft_limit: 0,
                opened_at: at,
            }]),
            AccountCommand::Deposit {
                amount,
                currency,
                reference,
                at,
            } => state.deposit(amount, currency, reference, at),
        }
    }

    fn apply_event(mut state: AccountState, event: AccountEvent) -> AccountState {
        match event {
            AccountEvent::AccountOpened { currency, .. } => {
                state.opened = true;
                state.currency = currency;
            }
            AccountEvent::FundsDeposited {
                reference,
                balance_after,
                ..
            } => {
                state.balance = balance_after;
                state.references.extend(reference);
            }
        }
        state
    }
}

impl AccountState {
    fn deposit(
        &self,
        amount: i64,
        currency: Option<String>,
        reference: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<Vec<AccountEvent>, DomainError> {
        if !self.opened {
            return Err(DomainError::NotFound);
        }
        if reference
            .as_ref()
            .is_some_and(|r| self.references.contains(r))
        {
            return Ok(vec![]);
        }
        if amount <= 0 {
            return Err(invalid("amount", "must be positive"));
        }
        if let Some(actual) = currency.filter(|c| *c != self.currency) {
            return Err(DomainError::CurrencyMismatch {
                expected: self.currency.clone(),
                actual,
            });
        }
        let balance_after = self
            .balance
            .checked_add(amount)
            .ok_or(DomainError::AmountOutOfRange)?;
        Ok(vec![AccountEvent::FundsDeposited {
            amount,
            reference,
            balance_after,
            occurred_at: at,
        }])
    }
}

/// One reservation of seats on a resource.
pub struct Booking;

#[derive(Debug, Default)]
pub struct BookingState {
    requested: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Money {
    pub amount: i64,
    pub currency: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Guest {
    pub name: String,
    pub email: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BookingRequest {
    pub account_id: Uuid,
    pub resource_id: String,
    pub seats: Vec<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub price: Money,
    pub guest: Guest,
    pub notes: Option<String>,
}

pub struct RequestBooking {
    pub request: BookingRequest,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum BookingEvent {
    BookingRequested {
        #[serde(flatten)]
        request: BookingRequest,
        requested_at: DateTime<Utc>,
    },
}

/// The longest booking Chronicle accepts.
const MAX_DURATION_DAYS: i64 = 366;
const MAX_SEATS: usize = 100;

impl Aggregate for Booking {
    const NAME: &'static str = "booking";
    type State = BookingState;
    type Command = RequestBooking;
    type Event = BookingEvent;
    type Error = DomainError;

    fn handle_command(
        state: &BookingState,
        command: RequestBooking,
    ) -> Result<Vec<BookingEvent>, DomainError> {
        if state.requested {
            return Err(DomainError::AlreadyExists);
        }
        let RequestBooking { request, at } = command;
        check_request(&request, at)?;
        Ok(vec![BookingEvent::BookingRequested {
            request,
            requested_at: at,
        }])
    }

    fn apply_event(_state: BookingState, event: BookingEvent) -> BookingState {
        match event {
            BookingEvent::BookingRequested { .. } => BookingState { requested: true },
        }
    }
}

fn check_request(request: &BookingRequest, at: DateTime<Utc>) -> Result<(), DomainError> {
    if request.resource_id.is_empty() {
        return Err(invalid("resource_id", "is required"));
    }
    if request.seats.is_empty() || request.seats.len() > MAX_SEATS {
        return Err(invalid("seats", "between 1 and 100 seats per booking"));
    }
    let distinct: HashSet<&String> = request.seats.iter().collect();
    if distinct.len() != request.seats.len() {
        return Err(invalid("seats", "a seat is listed twice"));
    }
    if request.price.amount <= 0 {
        return Err(invalid("price", "must be positive"));
    }
    if request.starts_at <= at {
        return Err(invalid("starts_at", "must be in the future"));
    }
    if request.ends_at <= request.starts_at {
        return Err(invalid("ends_at", "must be after starts_at"));
    }
    if request.ends_at - request.starts_at > Duration::days(MAX_DURATION_DAYS) {
        return Err(invalid("ends_at", "a booking lasts at most 366 days"));
    }
    Ok(())
}
