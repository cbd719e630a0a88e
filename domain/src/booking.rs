//! The Booking aggregate: one reservation of seats on a resource for a future time range.
//!
//! That no two live bookings hold the same seat at overlapping times is a rule over the
//! set of all bookings; the event store enforces it in the append transaction (seat
//! claims), not this aggregate.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;
use crate::issued::{Issued, guard_existing, guard_new};
use crate::money::Money;
use crate::values::{Guest, Note, ResourceId, Seats};

/// The longest a single booking may last.
pub const MAX_DURATION_DAYS: i64 = 366;

/// What may be asked of a booking.
#[derive(Clone, Debug)]
pub enum BookingCommand {
    RequestBooking(Box<BookingRequest>),
    ConfirmBooking { payment_id: Uuid },
    RejectBooking { reason: Note },
    CancelBooking { reason: Option<Note> },
    ExpireBooking,
}

/// A new booking. `owner` is the owner of `account_id`, looked up by the caller.
#[derive(Clone, Debug)]
pub struct BookingRequest {
    pub booking_id: Uuid,
    pub account_id: Uuid,
    pub owner: String,
    pub resource_id: ResourceId,
    pub seats: Seats,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub price: Money,
    pub guest: Guest,
    pub notes: Option<Note>,
}

/// What happened to a booking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum BookingEvent {
    BookingRequested {
        booking_id: Uuid,
        account_id: Uuid,
        owner: String,
        resource_id: String,
        seats: Vec<String>,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        price: Money,
        guest: Guest,
        notes: Option<String>,
        requested_at: DateTime<Utc>,
    },
    BookingConfirmed {
        payment_id: Uuid,
        confirmed_at: DateTime<Utc>,
    },
    BookingRejected {
        reason: String,
        rejected_at: DateTime<Utc>,
    },
    BookingCancelled {
        reason: Option<String>,
        cancelled_at: DateTime<Utc>,
    },
    BookingExpired {
        expired_at: DateTime<Utc>,
    },
}

impl DomainEvent for BookingEvent {
    fn event_type(&self) -> String {
        match self {
            Self::BookingRequested { .. } => "BookingRequested",
            Self::BookingConfirmed { .. } => "BookingConfirmed",
            Self::BookingRejected { .. } => "BookingRejected",
            Self::BookingCancelled { .. } => "BookingCancelled",
            Self::BookingExpired { .. } => "BookingExpired",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

crate::worded! {
    /// Where a booking stands.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum BookingStatus {
        Pending = "pending",
        Confirmed = "confirmed",
        Rejected = "rejected",
        Cancelled = "cancelled",
        Expired = "expired",
    }
}

/// A booking as its events have shaped it. `Default` is the booking before its request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    pub version: u64,
    pub state: Option<BookingState>,
}

/// A requested booking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingState {
    pub booking_id: Uuid,
    pub account_id: Uuid,
    pub owner: String,
    pub resource_id: String,
    pub seats: Vec<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub price: Money,
    pub guest: Guest,
    pub notes: Option<String>,
    pub status: BookingStatus,
    pub payment_id: Option<Uuid>,
}

impl BookingState {
    fn transition(
        &self,
        action: &'static str,
        allowed: &[BookingStatus],
    ) -> Result<(), DomainError> {
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(DomainError::InvalidTransition {
                status: self.status.as_str(),
                action,
            })
        }
    }

    fn decide(&self, issued: &Issued<BookingCommand>) -> Result<Vec<BookingEvent>, DomainError> {
        use BookingStatus::{Confirmed, Expired, Pending, Rejected};
        let at = issued.at;
        match &issued.command {
            BookingCommand::RequestBooking(_) => Err(DomainError::AlreadyExists),
            BookingCommand::ConfirmBooking { payment_id } => {
                if self.status == Confirmed && self.payment_id == Some(*payment_id) {
                    return Ok(vec![]);
                }
                self.transition("confirm", &[Pending])?;
                Ok(vec![BookingEvent::BookingConfirmed {
                    payment_id: *payment_id,
                    confirmed_at: at,
                }])
            }
            BookingCommand::RejectBooking { reason } => {
                if self.status == Rejected {
                    return Ok(vec![]);
                }
                self.transition("reject", &[Pending])?;
                Ok(vec![BookingEvent::BookingRejected {
                    reason: reason.as_str().to_owned(),
                    rejected_at: at,
                }])
            }
            BookingCommand::CancelBooking { reason } => {
                if self.status == BookingStatus::Cancelled {
                    return Ok(vec![]);
                }
                self.transition("cancel", &[Pending, Confirmed])?;
                if at >= self.starts_at {
                    return Err(DomainError::BookingStarted);
                }
                Ok(vec![BookingEvent::BookingCancelled {
                    reason: reason.as_ref().map(|r| r.as_str().to_owned()),
                    cancelled_at: at,
                }])
            }
            BookingCommand::ExpireBooking => {
                if self.status == Expired {
                    return Ok(vec![]);
                }
                self.transition("expire", &[Pending])?;
                Ok(vec![BookingEvent::BookingExpired { expired_at: at }])
            }
        }
    }
}

impl Booking {
    /// Decides what `issued` causes, without changing the booking.
    ///
    /// Asking for the state a booking is already in (confirming with the same payment,
    /// rejecting, cancelling or expiring twice) is a no-op, so redelivered commands are
    /// harmless.
    pub fn decide(
        &self,
        issued: &Issued<BookingCommand>,
    ) -> Result<Vec<BookingEvent>, DomainError> {
        if let BookingCommand::RequestBooking(request) = &issued.command {
            guard_new(issued, self.state.is_some(), &request.owner)?;
            return Ok(vec![request_booking(request, issued.at)?]);
        }
        let state = self.state.as_ref();
        guard_existing(issued, state.map(|s| s.owner.as_str()), self.version)?;
        state.ok_or(DomainError::NotFound)?.decide(issued)
    }

    /// The requested booking, if any.
    pub fn state(&self) -> Option<&BookingState> {
        self.state.as_ref()
    }
}

fn request_booking(
    request: &BookingRequest,
    at: DateTime<Utc>,
) -> Result<BookingEvent, DomainError> {
    if request.starts_at <= at {
        return Err(DomainError::invalid("starts_at", "must be in the future"));
    }
    if request.ends_at <= request.starts_at {
        return Err(DomainError::invalid("ends_at", "must be after starts_at"));
    }
    if request.ends_at - request.starts_at > Duration::days(MAX_DURATION_DAYS) {
        return Err(DomainError::invalid(
            "ends_at",
            format!("a booking lasts at most {MAX_DURATION_DAYS} days"),
        ));
    }
    Ok(BookingEvent::BookingRequested {
        booking_id: request.booking_id,
        account_id: request.account_id,
        owner: request.owner.clone(),
        resource_id: request.resource_id.as_str().to_owned(),
        seats: request.seats.as_slice().to_vec(),
        starts_at: request.starts_at,
        ends_at: request.ends_at,
        price: request.price,
        guest: request.guest.clone(),
        notes: request.notes.as_ref().map(|n| n.as_str().to_owned()),
        requested_at: at,
    })
}

impl Aggregate for Booking {
    const TYPE: &'static str = "Booking";
    type Command = Issued<BookingCommand>;
    type Event = BookingEvent;
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
        match event.change() {
            BookingChange::Requested(state) => self.state = Some(*state),
            BookingChange::Status(change) => {
                if let Some(state) = self.state.as_mut() {
                    state.follow(&change);
                }
            }
        }
    }
}

/// What an event does to a booking: the one reading of booking events, shared by the
/// aggregate and by every projection of bookings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookingChange {
    /// The booking as requested (pending).
    Requested(Box<BookingState>),
    /// A later move to another status.
    Status(StatusChange),
}

/// A booking's move to another status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub status: BookingStatus,
    /// Why, where the event says: a rejection's or a cancellation's reason.
    pub reason: Option<String>,
    /// The payment that confirmed the booking.
    pub payment_id: Option<Uuid>,
}

impl BookingEvent {
    /// What this event does to its booking.
    pub fn change(&self) -> BookingChange {
        let status = |status, reason: Option<&String>, payment_id| {
            BookingChange::Status(StatusChange {
                status,
                reason: reason.cloned(),
                payment_id,
            })
        };
        match self {
            Self::BookingRequested {
                booking_id,
                account_id,
                owner,
                resource_id,
                seats,
                starts_at,
                ends_at,
                price,
                guest,
                notes,
                ..
            } => BookingChange::Requested(Box::new(BookingState {
                booking_id: *booking_id,
                account_id: *account_id,
                owner: owner.clone(),
                resource_id: resource_id.clone(),
                seats: seats.clone(),
                starts_at: *starts_at,
                ends_at: *ends_at,
                price: *price,
                guest: guest.clone(),
                notes: notes.clone(),
                status: BookingStatus::Pending,
                payment_id: None,
            })),
            Self::BookingConfirmed { payment_id, .. } => {
                status(BookingStatus::Confirmed, None, Some(*payment_id))
            }
            Self::BookingRejected { reason, .. } => {
                status(BookingStatus::Rejected, Some(reason), None)
            }
            Self::BookingCancelled { reason, .. } => {
                status(BookingStatus::Cancelled, reason.as_ref(), None)
            }
            Self::BookingExpired { .. } => status(BookingStatus::Expired, None, None),
        }
    }
}

impl BookingState {
    /// The booking after `change`: its status, and the payment once one confirmed it.
    pub fn follow(&mut self, change: &StatusChange) {
        self.status = change.status;
        self.payment_id = change.payment_id.or(self.payment_id);
    }
}

#[cfg(test)]
#[path = "booking_tests.rs"]
mod tests;
