//! The Payment aggregate: a one-time or recurring charge on an account, and its refunds.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DomainError;
use crate::issued::{Issued, guard_existing, guard_new};
use crate::money::{Amount, Money};
use crate::values::Note;

/// The most charges a recurring payment may have.
pub const MAX_CHARGES: u32 = 1_000;

/// What may be asked of a payment.
#[derive(Clone, Debug)]
pub enum PaymentCommand {
    InitiatePayment(PaymentRequest),
    /// Captures charge number `charge` (1 for a one-time payment).
    CapturePayment {
        charge: u32,
    },
    FailPayment {
        reason: Note,
    },
    /// Records that attempt `attempt` of recurring charge `charge` failed. With a
    /// `retry_at` the charge will be tried again then; without, the payment is suspended.
    FailCharge {
        charge: u32,
        attempt: u32,
        reason: Note,
        retry_at: Option<DateTime<Utc>>,
    },
    RefundPayment {
        refund_id: Uuid,
        amount: Amount,
    },
}

/// A new payment. `owner` is the owner of `account_id`, looked up by the caller.
#[derive(Clone, Debug)]
pub struct PaymentRequest {
    pub payment_id: Uuid,
    pub account_id: Uuid,
    pub owner: String,
    pub amount: Money,
    pub kind: PaymentKind,
    pub schedule: Option<Schedule>,
    pub booking_id: Option<Uuid>,
}

crate::worded! {
    /// One charge, or a charge per interval.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum PaymentKind {
        OneTime = "one_time",
        Recurring = "recurring",
    }
}

/// When a recurring payment charges: every `interval_seconds`, `count` times and/or
/// until `until`, whichever ends first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub interval_seconds: u32,
    pub count: Option<u32>,
    pub until: Option<DateTime<Utc>>,
}

impl Schedule {
    fn validate(&self, at: DateTime<Utc>) -> Result<(), DomainError> {
        let max_interval = 366 * 24 * 3600;
        if self.interval_seconds == 0 || self.interval_seconds > max_interval {
            return Err(DomainError::invalid(
                "schedule.interval_seconds",
                format!("must be between 1 and {max_interval}"),
            ));
        }
        match (self.count, self.until) {
            (None, None) => Err(DomainError::invalid(
                "schedule",
                "needs a count, an until date, or both",
            )),
            (Some(count), _) if count == 0 || count > MAX_CHARGES => Err(DomainError::invalid(
                "schedule.count",
                format!("must be between 1 and {MAX_CHARGES}"),
            )),
            (_, Some(until)) if until <= at => Err(DomainError::invalid(
                "schedule.until",
                "must be in the future",
            )),
            _ => Ok(()),
        }
    }

    /// When charge number `charge` (from 1) falls due, counting from `start`, if it is
    /// within the schedule.
    pub fn due_at(&self, start: DateTime<Utc>, charge: u32) -> Option<DateTime<Utc>> {
        if charge == 0 || self.count.is_some_and(|count| charge > count) {
            return None;
        }
        let due =
            start + Duration::seconds(i64::from(self.interval_seconds) * i64::from(charge - 1));
        match self.until {
            Some(until) if due > until => None,
            _ => Some(due),
        }
    }
}

/// What happened to a payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PaymentEvent {
    PaymentInitiated {
        payment_id: Uuid,
        account_id: Uuid,
        owner: String,
        amount: Money,
        kind: PaymentKind,
        schedule: Option<Schedule>,
        booking_id: Option<Uuid>,
        initiated_at: DateTime<Utc>,
    },
    PaymentCaptured {
        charge: u32,
        amount: i64,
        captured_at: DateTime<Utc>,
    },
    PaymentFailed {
        reason: String,
        failed_at: DateTime<Utc>,
    },
    PaymentRefunded {
        refund_id: Uuid,
        amount: i64,
        refunded_at: DateTime<Utc>,
    },
    ChargeFailed {
        charge: u32,
        attempt: u32,
        reason: String,
        retry_at: Option<DateTime<Utc>>,
        failed_at: DateTime<Utc>,
    },
    PaymentSuspended {
        reason: String,
        suspended_at: DateTime<Utc>,
    },
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PaymentInitiated { .. } => "PaymentInitiated",
            Self::PaymentCaptured { .. } => "PaymentCaptured",
            Self::PaymentFailed { .. } => "PaymentFailed",
            Self::PaymentRefunded { .. } => "PaymentRefunded",
            Self::ChargeFailed { .. } => "ChargeFailed",
            Self::PaymentSuspended { .. } => "PaymentSuspended",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

crate::worded! {
    /// Where a payment stands.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum PaymentStatus {
        /// Initiated, not yet charged (one-time).
        Pending = "pending",
        /// Charged (one-time), possibly partly refunded.
        Captured = "captured",
        /// The charge did not go through (one-time).
        Failed = "failed",
        /// Everything captured has been refunded.
        Refunded = "refunded",
        /// A recurring payment with charges still to come.
        Active = "active",
        /// A recurring payment whose schedule has run out.
        Completed = "completed",
        /// A recurring payment whose charge kept failing; no more charges are tried.
        Suspended = "suspended",
    }
}

/// A payment as its events have shaped it. `Default` is the payment before initiation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub version: u64,
    pub state: Option<PaymentState>,
}

/// An initiated payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentState {
    pub payment_id: Uuid,
    pub account_id: Uuid,
    pub owner: String,
    pub amount: Money,
    pub kind: PaymentKind,
    pub schedule: Option<Schedule>,
    pub booking_id: Option<Uuid>,
    pub initiated_at: DateTime<Utc>,
    pub status: PaymentStatus,
    pub charges_captured: u32,
    pub captured_total: i64,
    pub refunded_total: i64,
    /// Refunds by id, with their amounts.
    pub refunds: BTreeMap<Uuid, i64>,
    /// Failed attempts per recurring charge.
    pub failed_attempts: BTreeMap<u32, u32>,
}

impl PaymentState {
    fn refundable(&self) -> i64 {
        self.captured_total - self.refunded_total
    }

    fn capture(&self, charge: u32, at: DateTime<Utc>) -> Result<Vec<PaymentEvent>, DomainError> {
        if charge >= 1 && charge <= self.charges_captured {
            return Ok(vec![]);
        }
        let expected = self.charges_captured + 1;
        let open = match self.kind {
            PaymentKind::OneTime => self.status == PaymentStatus::Pending,
            PaymentKind::Recurring => self.status == PaymentStatus::Active,
        };
        if !open {
            return Err(DomainError::InvalidTransition {
                status: self.status.as_str(),
                action: "capture",
            });
        }
        if charge != expected {
            return Err(DomainError::invalid(
                "charge",
                format!("the next charge is number {expected}"),
            ));
        }
        Ok(vec![PaymentEvent::PaymentCaptured {
            charge,
            amount: self.amount.amount,
            captured_at: at,
        }])
    }

    fn fail_charge(
        &self,
        charge: u32,
        attempt: u32,
        reason: &Note,
        retry_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<Vec<PaymentEvent>, DomainError> {
        let recorded = self.failed_attempts.get(&charge).copied().unwrap_or(0);
        if attempt <= recorded || charge <= self.charges_captured {
            return Ok(vec![]);
        }
        if self.kind != PaymentKind::Recurring || self.status != PaymentStatus::Active {
            return Err(DomainError::InvalidTransition {
                status: self.status.as_str(),
                action: "fail a charge",
            });
        }
        if charge != self.charges_captured + 1 {
            return Err(DomainError::invalid(
                "charge",
                format!("the next charge is number {}", self.charges_captured + 1),
            ));
        }
        let mut events = vec![PaymentEvent::ChargeFailed {
            charge,
            attempt,
            reason: reason.as_str().to_owned(),
            retry_at,
            failed_at: at,
        }];
        if retry_at.is_none() {
            events.push(PaymentEvent::PaymentSuspended {
                reason: format!(
                    "charge {charge} failed {attempt} times: {}",
                    reason.as_str()
                ),
                suspended_at: at,
            });
        }
        Ok(events)
    }

    /// How much of refund `refund_id` was recorded, if it was.
    pub fn refund_amount(&self, refund_id: Uuid) -> Option<i64> {
        self.refunds.get(&refund_id).copied()
    }

    /// What may still be refunded.
    pub fn refundable_amount(&self) -> i64 {
        self.refundable()
    }

    fn decide(&self, issued: &Issued<PaymentCommand>) -> Result<Vec<PaymentEvent>, DomainError> {
        let at = issued.at;
        match &issued.command {
            PaymentCommand::InitiatePayment(_) => Err(DomainError::AlreadyExists),
            PaymentCommand::CapturePayment { charge } => self.capture(*charge, at),
            PaymentCommand::FailPayment { reason } => {
                if self.status == PaymentStatus::Failed {
                    return Ok(vec![]);
                }
                if self.status != PaymentStatus::Pending {
                    return Err(DomainError::InvalidTransition {
                        status: self.status.as_str(),
                        action: "fail",
                    });
                }
                Ok(vec![PaymentEvent::PaymentFailed {
                    reason: reason.as_str().to_owned(),
                    failed_at: at,
                }])
            }
            PaymentCommand::FailCharge {
                charge,
                attempt,
                reason,
                retry_at,
            } => self.fail_charge(*charge, *attempt, reason, *retry_at, at),
            PaymentCommand::RefundPayment { refund_id, amount } => {
                if self.refunds.contains_key(refund_id) {
                    return Ok(vec![]);
                }
                if amount.get() > self.refundable() {
                    return Err(DomainError::RefundExceedsCaptured {
                        refundable: self.refundable(),
                        requested: amount.get(),
                    });
                }
                Ok(vec![PaymentEvent::PaymentRefunded {
                    refund_id: *refund_id,
                    amount: amount.get(),
                    refunded_at: at,
                }])
            }
        }
    }

    fn settle_status(&mut self) {
        self.status = PaymentStatus::derive(&PaymentTotals {
            kind: self.kind,
            status: self.status,
            schedule: self.schedule.as_ref(),
            initiated_at: self.initiated_at,
            charges_captured: self.charges_captured,
            captured_total: self.captured_total,
            refunded_total: self.refunded_total,
        });
    }
}

/// What a payment's status follows from.
#[derive(Clone, Copy, Debug)]
pub struct PaymentTotals<'a> {
    pub kind: PaymentKind,
    /// The status before the latest event.
    pub status: PaymentStatus,
    pub schedule: Option<&'a Schedule>,
    /// When the schedule started (the first charge falls due then).
    pub initiated_at: DateTime<Utc>,
    pub charges_captured: u32,
    pub captured_total: i64,
    pub refunded_total: i64,
}

impl PaymentStatus {
    /// The status after a capture or refund, from the totals; shared by the aggregate
    /// and the read model so the two cannot disagree.
    pub fn derive(totals: &PaymentTotals<'_>) -> Self {
        use PaymentStatus::{Active, Captured, Completed, Failed, Refunded, Suspended};
        let fully_refunded =
            totals.captured_total > 0 && totals.refunded_total >= totals.captured_total;
        let schedule_done = totals.schedule.is_some_and(|s| {
            s.due_at(totals.initiated_at, totals.charges_captured + 1)
                .is_none()
        });
        match (totals.kind, totals.status) {
            (_, Failed) => Failed,
            (_, Suspended) => Suspended,
            (PaymentKind::OneTime, _) if fully_refunded => Refunded,
            (PaymentKind::OneTime, _) if totals.charges_captured > 0 => Captured,
            (PaymentKind::Recurring, Active) if schedule_done => Completed,
            (_, status) => status,
        }
    }
}

impl Payment {
    /// Decides what `issued` causes, without changing the payment.
    ///
    /// Capturing a charge already captured, failing twice and repeating a refund id are
    /// no-ops, so redelivered commands are harmless.
    pub fn decide(
        &self,
        issued: &Issued<PaymentCommand>,
    ) -> Result<Vec<PaymentEvent>, DomainError> {
        if let PaymentCommand::InitiatePayment(request) = &issued.command {
            guard_new(issued, self.state.is_some(), &request.owner)?;
            return Ok(vec![initiate(request, issued.at)?]);
        }
        let state = self.state.as_ref();
        guard_existing(issued, state.map(|s| s.owner.as_str()), self.version)?;
        state.ok_or(DomainError::NotFound)?.decide(issued)
    }

    /// The initiated payment, if any.
    pub fn state(&self) -> Option<&PaymentState> {
        self.state.as_ref()
    }
}

fn initiate(request: &PaymentRequest, at: DateTime<Utc>) -> Result<PaymentEvent, DomainError> {
    match (request.kind, &request.schedule) {
        (PaymentKind::OneTime, Some(_)) => {
            return Err(DomainError::invalid(
                "schedule",
                "a one-time payment has no schedule",
            ));
        }
        (PaymentKind::Recurring, None) => {
            return Err(DomainError::invalid(
                "schedule",
                "a recurring payment needs a schedule",
            ));
        }
        (PaymentKind::Recurring, Some(schedule)) => schedule.validate(at)?,
        (PaymentKind::OneTime, None) => {}
    }
    Ok(PaymentEvent::PaymentInitiated {
        payment_id: request.payment_id,
        account_id: request.account_id,
        owner: request.owner.clone(),
        amount: request.amount,
        kind: request.kind,
        schedule: request.schedule.clone(),
        booking_id: request.booking_id,
        initiated_at: at,
    })
}

impl Aggregate for Payment {
    const TYPE: &'static str = "Payment";
    type Command = Issued<PaymentCommand>;
    type Event = PaymentEvent;
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
        if let PaymentEvent::PaymentInitiated {
            payment_id,
            account_id,
            owner,
            amount,
            kind,
            schedule,
            booking_id,
            initiated_at,
        } = event
        {
            self.state = Some(PaymentState {
                payment_id,
                account_id,
                owner,
                amount,
                kind,
                schedule,
                booking_id,
                initiated_at,
                status: match kind {
                    PaymentKind::OneTime => PaymentStatus::Pending,
                    PaymentKind::Recurring => PaymentStatus::Active,
                },
                charges_captured: 0,
                captured_total: 0,
                refunded_total: 0,
                refunds: BTreeMap::new(),
                failed_attempts: BTreeMap::new(),
            });
            return;
        }
        let Some(state) = self.state.as_mut() else {
            return;
        };
        match event {
            PaymentEvent::PaymentInitiated { .. } => {}
            PaymentEvent::PaymentCaptured { charge, amount, .. } => {
                state.charges_captured = charge;
                state.captured_total += amount;
            }
            PaymentEvent::PaymentFailed { .. } => state.status = PaymentStatus::Failed,
            PaymentEvent::PaymentRefunded {
                refund_id, amount, ..
            } => {
                state.refunded_total += amount;
                state.refunds.insert(refund_id, amount);
            }
            PaymentEvent::ChargeFailed {
                charge, attempt, ..
            } => {
                state.failed_attempts.insert(charge, attempt);
            }
            PaymentEvent::PaymentSuspended { .. } => state.status = PaymentStatus::Suspended,
        }
        state.settle_status();
    }
}

#[cfg(test)]
#[path = "payment_tests.rs"]
mod tests;
