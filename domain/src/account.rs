//! The Account aggregate: a customer's wallet in one currency.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;
use crate::issued::{Issued, guard_existing, guard_new};
use crate::money::{Amount, Currency, MAX_AMOUNT};
use crate::values::{Owner, Reference};

/// What may be asked of an account.
#[derive(Clone, Debug)]
pub enum AccountCommand {
    OpenAccount {
        account_id: Uuid,
        owner: Owner,
        currency: Currency,
        overdraft_limit: i64,
    },
    DepositFunds(Movement),
    WithdrawFunds(Movement),
    CloseAccount,
}

/// A deposit or a withdrawal. `currency`, when given, must be the account's;
/// `reference`, when given, makes the movement idempotent on this account.
#[derive(Clone, Debug)]
pub struct Movement {
    pub amount: Amount,
    pub currency: Option<Currency>,
    pub reference: Option<Reference>,
}

/// What happened to an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AccountEvent {
    AccountOpened {
        account_id: Uuid,
        owner: String,
        currency: Currency,
        overdraft_limit: i64,
        opened_at: DateTime<Utc>,
    },
    FundsDeposited {
        amount: i64,
        reference: Option<String>,
        balance_after: i64,
        occurred_at: DateTime<Utc>,
    },
    FundsWithdrawn {
        amount: i64,
        reference: Option<String>,
        balance_after: i64,
        occurred_at: DateTime<Utc>,
    },
    AccountClosed {
        closed_at: DateTime<Utc>,
    },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AccountOpened { .. } => "AccountOpened",
            Self::FundsDeposited { .. } => "FundsDeposited",
            Self::FundsWithdrawn { .. } => "FundsWithdrawn",
            Self::AccountClosed { .. } => "AccountClosed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            // v2 added `overdraft_limit`; see `crate::upcast`.
            Self::AccountOpened { .. } => "2",
            _ => "1",
        }
        .to_owned()
    }
}

/// An account as its events have shaped it. `Default` is the account before it opens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub version: u64,
    pub state: Option<AccountState>,
}

/// An opened account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub account_id: Uuid,
    pub owner: String,
    pub currency: Currency,
    pub overdraft_limit: i64,
    pub balance: i64,
    pub closed: bool,
    /// References of applied movements, so a repeated one is recognised.
    pub references: BTreeSet<String>,
}

crate::worded! {
    /// Whether an account takes movements.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum AccountStatus {
        Open = "open",
        Closed = "closed",
    }
}

impl AccountState {
    pub fn status(&self) -> AccountStatus {
        if self.closed {
            AccountStatus::Closed
        } else {
            AccountStatus::Open
        }
    }

    /// Whether a booking or payment in `currency` may be charged to this account: it must
    /// be open and hold that currency.
    pub fn chargeable_in(&self, currency: Currency) -> Result<(), DomainError> {
        if self.closed {
            return Err(DomainError::AccountClosed);
        }
        if self.currency != currency {
            return Err(DomainError::CurrencyMismatch {
                expected: self.currency,
                actual: currency,
            });
        }
        Ok(())
    }

    fn check_movement(&self, movement: &Movement) -> Result<(), DomainError> {
        if self.closed {
            return Err(DomainError::AccountClosed);
        }
        match movement.currency {
            Some(actual) if actual != self.currency => Err(DomainError::CurrencyMismatch {
                expected: self.currency,
                actual,
            }),
            _ => Ok(()),
        }
    }

    fn already_applied(&self, movement: &Movement) -> bool {
        movement
            .reference
            .as_ref()
            .is_some_and(|r| self.references.contains(r.as_str()))
    }

    fn deposit(
        &self,
        movement: &Movement,
        at: DateTime<Utc>,
    ) -> Result<Vec<AccountEvent>, DomainError> {
        if self.already_applied(movement) {
            return Ok(vec![]);
        }
        self.check_movement(movement)?;
        let balance_after = self
            .balance
            .checked_add(movement.amount.get())
            .ok_or(DomainError::AmountOutOfRange)?;
        Ok(vec![AccountEvent::FundsDeposited {
            amount: movement.amount.get(),
            reference: movement.reference.as_ref().map(|r| r.as_str().to_owned()),
            balance_after,
            occurred_at: at,
        }])
    }

    fn withdraw(
        &self,
        movement: &Movement,
        at: DateTime<Utc>,
    ) -> Result<Vec<AccountEvent>, DomainError> {
        if self.already_applied(movement) {
            return Ok(vec![]);
        }
        self.check_movement(movement)?;
        let requested = movement.amount.get();
        let balance_after = self
            .balance
            .checked_sub(requested)
            .filter(|after| *after >= -self.overdraft_limit)
            .ok_or(DomainError::InsufficientFunds {
                balance: self.balance,
                overdraft_limit: self.overdraft_limit,
                requested,
            })?;
        Ok(vec![AccountEvent::FundsWithdrawn {
            amount: requested,
            reference: movement.reference.as_ref().map(|r| r.as_str().to_owned()),
            balance_after,
            occurred_at: at,
        }])
    }

    fn close(&self, at: DateTime<Utc>) -> Result<Vec<AccountEvent>, DomainError> {
        if self.closed {
            return Err(DomainError::AccountClosed);
        }
        if self.balance != 0 {
            return Err(DomainError::BalanceNotZero {
                balance: self.balance,
            });
        }
        Ok(vec![AccountEvent::AccountClosed { closed_at: at }])
    }
}

impl Account {
    /// Decides what `issued` causes, without changing the account.
    pub fn decide(
        &self,
        issued: &Issued<AccountCommand>,
    ) -> Result<Vec<AccountEvent>, DomainError> {
        match &issued.command {
            AccountCommand::OpenAccount {
                account_id,
                owner,
                currency,
                overdraft_limit,
            } => {
                guard_new(issued, self.state.is_some(), owner.as_str())?;
                if !(0..=MAX_AMOUNT).contains(overdraft_limit) {
                    return Err(DomainError::invalid(
                        "overdraft_limit",
                        format!("must be between 0 and {MAX_AMOUNT}"),
                    ));
                }
                Ok(vec![AccountEvent::AccountOpened {
                    account_id: *account_id,
                    owner: owner.as_str().to_owned(),
                    currency: *currency,
                    overdraft_limit: *overdraft_limit,
                    opened_at: issued.at,
                }])
            }
            AccountCommand::DepositFunds(movement) => {
                self.existing(issued)?.deposit(movement, issued.at)
            }
            AccountCommand::WithdrawFunds(movement) => {
                self.existing(issued)?.withdraw(movement, issued.at)
            }
            AccountCommand::CloseAccount => self.existing(issued)?.close(issued.at),
        }
    }

    fn existing(&self, issued: &Issued<AccountCommand>) -> Result<&AccountState, DomainError> {
        let state = self.state.as_ref();
        guard_existing(issued, state.map(|s| s.owner.as_str()), self.version)?;
        state.ok_or(DomainError::NotFound)
    }

    /// The opened account, if it has been opened.
    pub fn state(&self) -> Option<&AccountState> {
        self.state.as_ref()
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type Command = Issued<AccountCommand>;
    type Event = AccountEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(&command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            AccountEvent::AccountOpened {
                account_id,
                owner,
                currency,
                overdraft_limit,
                ..
            } => {
                self.state = Some(AccountState {
                    account_id,
                    owner,
                    currency,
                    overdraft_limit,
                    balance: 0,
                    closed: false,
                    references: BTreeSet::new(),
                });
            }
            AccountEvent::FundsDeposited {
                reference,
                balance_after,
                ..
            }
            | AccountEvent::FundsWithdrawn {
                reference,
                balance_after,
                ..
            } => {
                if let Some(state) = self.state.as_mut() {
                    state.balance = balance_after;
                    state.references.extend(reference);
                }
            }
            AccountEvent::AccountClosed { .. } => {
                if let Some(state) = self.state.as_mut() {
                    state.closed = true;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "account_tests.rs"]
mod tests;
