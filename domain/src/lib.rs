//! Chronicle's domain: the `Account`, `Booking`, `Payment` and `Subscription` aggregates, their commands,
//! versioned events and typed errors.
//!
//! Everything here is pure. Each aggregate decides with a synchronous function of
//! (state, command) → events or a [`DomainError`], and `apply` folds an event into state.
//! The `cqrs_es::Aggregate` implementations are thin wrappers around those functions.
//! Anything that needs I/O (the owner of an account, the current time) is looked up by
//! the caller and carried in the command.

pub mod account;
pub mod actor;
pub mod billing;
pub mod booking;
mod currency;
pub mod error;
pub mod issued;
pub mod money;
pub mod payment;
pub mod subject;
pub mod subscription;
pub mod upcast;
pub mod values;
mod worded;

pub use worded::checked_words;

pub use account::{Account, AccountCommand, AccountEvent, AccountStatus};
pub use actor::{Actor, Role};
pub use booking::{
    Booking, BookingChange, BookingCommand, BookingEvent, BookingStatus, StatusChange,
};
pub use error::DomainError;
pub use issued::Issued;
pub use money::{Amount, Currency, MAX_AMOUNT, Money};
pub use payment::{Payment, PaymentCommand, PaymentEvent, PaymentKind, PaymentStatus, Schedule};
