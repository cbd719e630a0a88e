//! The booking flows: charge a requested booking, refund a cancelled one, and charge a
//! one-time payment a client initiated.

use chronicle_domain::account::Movement;
use chronicle_domain::payment::PaymentRequest;
use chronicle_domain::values::{Note, Reference};
use chronicle_domain::{
    AccountCommand, Amount, BookingCommand, BookingEvent, BookingStatus, DomainError, Issued,
    Money, PaymentCommand, PaymentEvent, PaymentKind, PaymentStatus,
};
use chronicle_eventstore::clock;
use chronicle_eventstore::envelope::Envelope;
use chronicle_eventstore::personal::seal::mask;
use cqrs_es::DomainEvent;
use uuid::Uuid;

use super::ProcessManager;
use super::flow::{Flow, FlowKind, FlowStatus, ProcessError, Step};

/// The reason recorded on a payment or booking when a charge is refused.
fn reason(refusal: &DomainError) -> Note {
    Note::reason(refusal.code())
}

/// How a refund ended.
pub(crate) enum Refund {
    Done,
    Nothing,
    Stuck(String),
}

fn issued<C>(command: C) -> Issued<C> {
    Issued::new(ProcessManager::actor(), clock::now(), command)
}

/// What an event that starts a flow says, read before the flow runs.
#[derive(Debug, PartialEq)]
pub(crate) enum Start {
    ChargeBooking {
        booking_id: Uuid,
        account_id: Uuid,
        owner: String,
        price: Money,
    },
    RefundBooking {
        booking_id: Uuid,
    },
    ChargeClientPayment {
        payment_id: Uuid,
        account_id: Uuid,
        amount: Money,
    },
    /// A mid-period plan change's net: charged when positive, paid back when negative.
    ProrateSubscription {
        subscription_id: Uuid,
        net: i64,
    },
    /// A cancellation now's refund of the unused part of the period.
    RefundSubscription {
        subscription_id: Uuid,
        refund: i64,
    },
}

impl Start {
    /// The flow `envelope` starts: `None` when it starts none, an error (the reason)
    /// when it should start one and cannot be read. Only the types that start flows are
    /// read at all.
    pub(crate) fn read(envelope: &Envelope) -> Result<Option<Self>, String> {
        match (
            envelope.aggregate_type.as_str(),
            envelope.event_type.as_str(),
        ) {
            ("Booking", "BookingRequested" | "BookingCancelled") => {
                Self::of_booking_event(envelope, payload(envelope)?)
            }
            ("Payment", "PaymentInitiated") => Self::of_payment_event(envelope, payload(envelope)?),
            ("Subscription", "PlanChanged" | "SubscriptionCancelled") => {
                super::subscription::start(envelope)
            }
            _ => Ok(None),
        }
    }

    /// The flow a booking's request or cancellation starts.
    fn of_booking_event(envelope: &Envelope, event: BookingEvent) -> Result<Option<Self>, String> {
        match event {
            BookingEvent::BookingRequested {
                booking_id,
                account_id,
                owner,
                price,
                ..
            } if envelope.event_type == "BookingRequested" => Ok(Some(Self::ChargeBooking {
                booking_id,
                account_id,
                owner,
                price,
            })),
            BookingEvent::BookingCancelled { .. } if envelope.event_type == "BookingCancelled" => {
                let booking_id = Uuid::parse_str(&envelope.aggregate_id)
                    .map_err(|e| format!("aggregate id {:?}: {e}", envelope.aggregate_id))?;
                Ok(Some(Self::RefundBooking { booking_id }))
            }
            other => Err(mismatch(envelope, other.event_type())),
        }
    }

    /// The flow a client's one-time payment starts.
    fn of_payment_event(envelope: &Envelope, event: PaymentEvent) -> Result<Option<Self>, String> {
        match event {
            // Its own are charged within the booking flow.
            PaymentEvent::PaymentInitiated { .. }
                if envelope.metadata.actor.as_deref() == Some(&ProcessManager::actor().subject) =>
            {
                Ok(None)
            }
            PaymentEvent::PaymentInitiated {
                payment_id,
                account_id,
                amount,
                kind: PaymentKind::OneTime,
                ..
            } => Ok(Some(Self::ChargeClientPayment {
                payment_id,
                account_id,
                amount,
            })),
            // Recurring payments are charged by the scheduler when due.
            PaymentEvent::PaymentInitiated { .. } => Ok(None),
            other => Err(mismatch(envelope, other.event_type())),
        }
    }
}

/// An envelope whose event type names one event and whose payload is another.
fn mismatch(envelope: &Envelope, payload_type: String) -> String {
    format!(
        "event type {} with a {payload_type} payload",
        envelope.event_type
    )
}

/// The envelope's payload as `E`; sealed personal fields (ADR 0035) read masked, since
/// no process needs them.
fn payload<E: serde::de::DeserializeOwned>(envelope: &Envelope) -> Result<E, String> {
    let payload = mask(&envelope.payload).unwrap_or_else(|| envelope.payload.clone());
    serde_json::from_value(payload)
        .map_err(|e| format!("{} {}: {e}", envelope.aggregate_type, envelope.event_type))
}

/// A movement of `amount` on an account, with `reference_id` as its reference.
fn movement(amount: Money, reference_id: Uuid) -> Result<Movement, ProcessError> {
    Ok(Movement {
        amount: Amount::new("amount", amount.amount).map_err(crate::CommandError::from)?,
        currency: Some(amount.currency),
        reference: Some(Reference::of_id(reference_id)),
    })
}

/// A refusal the flow did not expect: it ends the flow, loudly.
fn unexpected(flow: &Flow<'_>, step: &str, refusal: &DomainError) -> Option<String> {
    tracing::error!(flow = %flow.id, step, code = refusal.code(), %refusal, "unexpected refusal");
    Some(format!("{step}: {refusal}"))
}

impl ProcessManager {
    /// BookingRequested → initiate payment → withdraw → capture → confirm; or fail and
    /// reject when the account cannot pay.
    pub(crate) async fn charge_booking(
        &self,
        event_id: Uuid,
        booking_id: Uuid,
        account_id: Uuid,
        owner: String,
        price: Money,
    ) -> Result<(), ProcessError> {
        let Some(flow) = self
            .event_flow(event_id, FlowKind::BookingCharge, booking_id)
            .await?
        else {
            return Ok(());
        };
        let booking = self.commands.load_booking(booking_id).await?;
        if booking
            .state()
            .is_none_or(|b| b.status != BookingStatus::Pending)
        {
            return flow
                .finish(
                    FlowStatus::Skipped,
                    Some("the booking is no longer pending".into()),
                )
                .await;
        }
        let payment_id = flow.derive("payment");
        let request = PaymentRequest {
            payment_id,
            account_id,
            owner,
            amount: price,
            kind: PaymentKind::OneTime,
            schedule: None,
            booking_id: Some(booking_id),
        };
        let initiated = flow
            .step("initiate-payment", |m| async move {
                self.commands
                    .payment(
                        payment_id,
                        issued(PaymentCommand::InitiatePayment(request)),
                        &m,
                    )
                    .await
            })
            .await?;
        if let Step::Refused(refusal) = initiated
            && refusal != DomainError::AlreadyExists
        {
            return self.reject_booking(&flow, booking_id, &refusal).await;
        }
        if let Step::Refused(refusal) = self
            .debit(&flow, account_id, price, payment_id, "withdraw")
            .await?
        {
            self.fail_payment(&flow, payment_id, &refusal).await?;
            return self.reject_booking(&flow, booking_id, &refusal).await;
        }
        if let Step::Refused(refusal) = self.capture(&flow, payment_id, 1).await? {
            return flow
                .finish(FlowStatus::Stuck, unexpected(&flow, "capture", &refusal))
                .await;
        }
        self.confirm_paid_booking(&flow, booking_id, payment_id, account_id)
            .await
    }

    /// Confirms a booking its payment has captured; if it was cancelled or expired
    /// meanwhile, gives the money back instead.
    async fn confirm_paid_booking(
        &self,
        flow: &Flow<'_>,
        booking_id: Uuid,
        payment_id: Uuid,
        account_id: Uuid,
    ) -> Result<(), ProcessError> {
        let confirmed = flow
            .step("confirm-booking", |m| async move {
                self.commands
                    .booking(
                        booking_id,
                        issued(BookingCommand::ConfirmBooking { payment_id }),
                        &m,
                    )
                    .await
            })
            .await?;
        match confirmed {
            Step::Done => flow.finish(FlowStatus::Confirmed, None).await,
            // Cancelled or expired while it was being charged: give the money back.
            Step::Refused(DomainError::InvalidTransition { status, .. }) => {
                match self
                    .refund(flow, payment_id, account_id, "compensation")
                    .await?
                {
                    Refund::Stuck(detail) => flow.finish(FlowStatus::Stuck, Some(detail)).await,
                    _ => {
                        flow.finish(
                            FlowStatus::Compensated,
                            Some(format!("the booking was {status} meanwhile")),
                        )
                        .await
                    }
                }
            }
            Step::Refused(refusal) => {
                flow.finish(
                    FlowStatus::Stuck,
                    unexpected(flow, "confirm-booking", &refusal),
                )
                .await
            }
        }
    }

    /// BookingCancelled of a confirmed booking → refund the payment → credit the account.
    pub(crate) async fn refund_booking(
        &self,
        event_id: Uuid,
        booking_id: Uuid,
    ) -> Result<(), ProcessError> {
        let Some(flow) = self
            .event_flow(event_id, FlowKind::BookingRefund, booking_id)
            .await?
        else {
            return Ok(());
        };
        let booking = self.commands.load_booking(booking_id).await?;
        let Some((payment_id, account_id)) = booking
            .state()
            .and_then(|b| b.payment_id.map(|p| (p, b.account_id)))
        else {
            return flow
                .finish(
                    FlowStatus::Skipped,
                    Some("the booking was never paid".into()),
                )
                .await;
        };
        match self.refund(&flow, payment_id, account_id, "refund").await? {
            Refund::Done => flow.finish(FlowStatus::Refunded, None).await,
            Refund::Nothing => {
                flow.finish(FlowStatus::Skipped, Some("nothing was captured".into()))
                    .await
            }
            Refund::Stuck(detail) => flow.finish(FlowStatus::Stuck, Some(detail)).await,
        }
    }

    /// A one-time payment a client initiated → withdraw → capture, or fail.
    pub(crate) async fn charge_client_payment(
        &self,
        event_id: Uuid,
        payment_id: Uuid,
        account_id: Uuid,
        amount: Money,
    ) -> Result<(), ProcessError> {
        let Some(flow) = self
            .event_flow(event_id, FlowKind::PaymentCharge, payment_id)
            .await?
        else {
            return Ok(());
        };
        let payment = self.commands.load_payment(payment_id).await?;
        if payment
            .state()
            .is_none_or(|p| p.status != PaymentStatus::Pending)
        {
            return flow
                .finish(
                    FlowStatus::Skipped,
                    Some("the payment is no longer pending".into()),
                )
                .await;
        }
        if let Step::Refused(refusal) = self
            .debit(&flow, account_id, amount, payment_id, "withdraw")
            .await?
        {
            self.fail_payment(&flow, payment_id, &refusal).await?;
            return flow
                .finish(FlowStatus::Failed, Some(refusal.code().into()))
                .await;
        }
        match self.capture(&flow, payment_id, 1).await? {
            Step::Done => flow.finish(FlowStatus::Captured, None).await,
            Step::Refused(refusal) => {
                flow.finish(FlowStatus::Stuck, unexpected(&flow, "capture", &refusal))
                    .await
            }
        }
    }

    /// Withdraws `amount` from `account_id`, with `reference_id` as reference.
    pub(crate) async fn debit(
        &self,
        flow: &Flow<'_>,
        account_id: Uuid,
        amount: Money,
        reference_id: Uuid,
        step: &str,
    ) -> Result<Step, ProcessError> {
        let movement = movement(amount, reference_id)?;
        self.on_account(
            flow,
            step,
            account_id,
            AccountCommand::WithdrawFunds(movement),
        )
        .await
    }

    /// Deposits `amount` to `account_id`, with `reference_id` as reference.
    pub(crate) async fn credit(
        &self,
        flow: &Flow<'_>,
        account_id: Uuid,
        amount: Money,
        reference_id: Uuid,
        step: &str,
    ) -> Result<Step, ProcessError> {
        let movement = movement(amount, reference_id)?;
        self.on_account(
            flow,
            step,
            account_id,
            AccountCommand::DepositFunds(movement),
        )
        .await
    }

    async fn on_account(
        &self,
        flow: &Flow<'_>,
        step: &str,
        account_id: Uuid,
        command: AccountCommand,
    ) -> Result<Step, ProcessError> {
        flow.step(step, |m| async move {
            self.commands.account(account_id, issued(command), &m).await
        })
        .await
    }

    /// Captures charge `charge` of a payment whose money was withdrawn.
    pub(super) async fn capture(
        &self,
        flow: &Flow<'_>,
        payment_id: Uuid,
        charge: u32,
    ) -> Result<Step, ProcessError> {
        flow.step("capture", |m| async move {
            self.commands
                .payment(
                    payment_id,
                    issued(PaymentCommand::CapturePayment { charge }),
                    &m,
                )
                .await
        })
        .await
    }

    async fn fail_payment(
        &self,
        flow: &Flow<'_>,
        payment_id: Uuid,
        refusal: &DomainError,
    ) -> Result<(), ProcessError> {
        let reason = reason(refusal);
        flow.step("fail-payment", |m| async move {
            self.commands
                .payment(
                    payment_id,
                    issued(PaymentCommand::FailPayment { reason }),
                    &m,
                )
                .await
        })
        .await?;
        Ok(())
    }

    async fn reject_booking(
        &self,
        flow: &Flow<'_>,
        booking_id: Uuid,
        refusal: &DomainError,
    ) -> Result<(), ProcessError> {
        let reason = reason(refusal);
        let rejected = flow
            .step("reject-booking", |m| async move {
                self.commands
                    .booking(
                        booking_id,
                        issued(BookingCommand::RejectBooking { reason }),
                        &m,
                    )
                    .await
            })
            .await?;
        match rejected {
            Step::Done => {
                flow.finish(FlowStatus::Rejected, Some(refusal.code().into()))
                    .await
            }
            Step::Refused(other) => {
                flow.finish(
                    FlowStatus::Stuck,
                    unexpected(flow, "reject-booking", &other),
                )
                .await
            }
        }
    }

    /// Refunds what is left of `payment_id` (or the amount this flow's refund recorded,
    /// when it is run again) and credits the account with the refund id as reference.
    async fn refund(
        &self,
        flow: &Flow<'_>,
        payment_id: Uuid,
        account_id: Uuid,
        purpose: &str,
    ) -> Result<Refund, ProcessError> {
        let payment = self.commands.load_payment(payment_id).await?;
        let Some(state) = payment.state() else {
            return Ok(Refund::Nothing);
        };
        let refund_id = flow.derive(purpose);
        let amount = match state.refund_amount(refund_id) {
            Some(amount) => amount,
            None if state.refundable_amount() > 0 => state.refundable_amount(),
            None => return Ok(Refund::Nothing),
        };
        let currency = state.amount.currency;
        let value = Amount::new("amount", amount).map_err(crate::CommandError::from)?;
        let refunded = flow
            .step(&format!("{purpose}-payment"), |m| async move {
                self.commands
                    .payment(
                        payment_id,
                        issued(PaymentCommand::RefundPayment {
                            refund_id,
                            amount: value,
                        }),
                        &m,
                    )
                    .await
            })
            .await?;
        if let Step::Refused(refusal) = refunded {
            return Ok(Refund::Stuck(
                unexpected(flow, "refund-payment", &refusal).unwrap_or_default(),
            ));
        }
        let money = Money { amount, currency };
        let credited = self
            .credit(
                flow,
                account_id,
                money,
                refund_id,
                &format!("{purpose}-deposit"),
            )
            .await?;
        match credited {
            Step::Done => Ok(Refund::Done),
            // A closed account cannot take the money back: an operator must.
            Step::Refused(refusal) => Ok(Refund::Stuck(
                unexpected(flow, "deposit", &refusal).unwrap_or_default(),
            )),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use chronicle_eventstore::envelope::EnvelopeMetadata;
    use serde_json::{Value, json};

    use super::*;

    const BOOKING: &str = "3f0c2a52-7c55-4d8e-9a7e-1a0b2c3d4e5f";
    const ACCOUNT: &str = "0b9d8c7e-6f5a-4b3c-8d2e-1f0a9b8c7d6e";

    pub(crate) fn envelope(aggregate_type: &str, event_type: &str, payload: Value) -> Envelope {
        Envelope {
            event_id: Uuid::nil(),
            global_position: 1,
            aggregate_type: aggregate_type.into(),
            aggregate_id: BOOKING.into(),
            sequence: 1,
            event_type: event_type.into(),
            event_version: "1".into(),
            recorded_at: clock::now(),
            payload,
            metadata: EnvelopeMetadata::default(),
        }
    }

    pub(crate) fn requested() -> Value {
        json!({
            "type": "BookingRequested", "booking_id": BOOKING, "account_id": ACCOUNT,
            "owner": "ada", "resource_id": "hall-1", "seats": ["A1"],
            "starts_at": "2030-01-01T10:00:00Z", "ends_at": "2030-01-01T12:00:00Z",
            "price": {"amount": 1500, "currency": "EUR"},
            "guest": {"name": "Ada Lovelace", "email": "ada@example.org"},
            "notes": null, "requested_at": "2029-12-01T00:00:00Z"
        })
    }

    fn initiated(kind: &str) -> Value {
        json!({
            "type": "PaymentInitiated", "payment_id": BOOKING, "account_id": ACCOUNT,
            "owner": "ada", "amount": {"amount": 700, "currency": "EUR"}, "kind": kind,
            "schedule": null, "booking_id": null, "initiated_at": "2029-12-01T00:00:00Z"
        })
    }

    #[test]
    fn a_requested_booking_starts_its_charge() {
        let start = Start::read(&envelope("Booking", "BookingRequested", requested())).unwrap();
        let Some(Start::ChargeBooking {
            booking_id,
            account_id,
            owner,
            price,
        }) = start
        else {
            panic!("expected a charge, got {start:?}");
        };
        assert_eq!(booking_id.to_string(), BOOKING);
        assert_eq!(account_id.to_string(), ACCOUNT);
        assert_eq!(owner, "ada");
        assert_eq!(price.amount, 1500);
    }

    #[test]
    fn a_cancelled_booking_starts_its_refund() {
        let cancelled = json!({"type": "BookingCancelled", "reason": null, "cancelled_at": "2029-12-02T00:00:00Z"});
        let start = Start::read(&envelope("Booking", "BookingCancelled", cancelled)).unwrap();
        assert_eq!(
            start,
            Some(Start::RefundBooking {
                booking_id: Uuid::parse_str(BOOKING).unwrap()
            })
        );
    }

    #[test]
    fn a_flow_starter_that_cannot_be_read_is_an_error_with_the_reason() {
        let garbled = Start::read(&envelope(
            "Booking",
            "BookingRequested",
            json!({"type": "BookingRequested", "booking_id": "not a uuid"}),
        ))
        .unwrap_err();
        assert!(
            garbled.starts_with("Booking BookingRequested: "),
            "{garbled}"
        );
        let mislabelled =
            Start::read(&envelope("Booking", "BookingCancelled", requested())).unwrap_err();
        assert_eq!(
            mislabelled,
            "event type BookingCancelled with a BookingRequested payload"
        );
        let mut bad_id = envelope(
            "Booking",
            "BookingCancelled",
            json!({"type": "BookingCancelled", "reason": null, "cancelled_at": "2029-12-02T00:00:00Z"}),
        );
        bad_id.aggregate_id = "b-1".into();
        assert!(
            Start::read(&bad_id)
                .unwrap_err()
                .starts_with("aggregate id \"b-1\"")
        );
    }

    #[test]
    fn only_one_time_payments_of_clients_start_a_charge() {
        let one_time = Start::read(&envelope(
            "Payment",
            "PaymentInitiated",
            initiated("one_time"),
        ));
        assert!(matches!(
            one_time,
            Ok(Some(Start::ChargeClientPayment { .. }))
        ));
        let recurring = Start::read(&envelope(
            "Payment",
            "PaymentInitiated",
            initiated("recurring"),
        ));
        assert_eq!(recurring, Ok(None));
        let mut own = envelope("Payment", "PaymentInitiated", initiated("one_time"));
        own.metadata.actor = Some(ProcessManager::actor().subject);
        assert_eq!(Start::read(&own), Ok(None));
        let unknown_kind = Start::read(&envelope(
            "Payment",
            "PaymentInitiated",
            initiated("weekly"),
        ));
        assert!(unknown_kind.is_err(), "{unknown_kind:?}");
    }

    #[test]
    fn events_that_start_no_flow_are_not_read_at_all() {
        for (aggregate, event_type) in [
            ("Booking", "BookingConfirmed"),
            ("Payment", "PaymentCaptured"),
            ("Account", "FundsDeposited"),
        ] {
            let start = Start::read(&envelope(aggregate, event_type, json!("garbage")));
            assert_eq!(start, Ok(None), "{aggregate} {event_type}");
        }
    }

    #[test]
    fn a_reference_names_the_whole_id() {
        let id = Uuid::parse_str(BOOKING).unwrap();
        assert_eq!(Reference::of_id(id).as_str(), BOOKING);
        assert_eq!(Reference::parse(BOOKING).unwrap(), Reference::of_id(id));
    }
}
