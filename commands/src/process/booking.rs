//! The booking flows: charge a requested booking, refund a cancelled one, and charge a
//! one-time payment a client initiated.

use chronicle_domain::account::Movement;
use chronicle_domain::payment::PaymentRequest;
use chronicle_domain::values::{Note, Reference};
use chronicle_domain::{
    AccountCommand, Amount, BookingCommand, BookingEvent, BookingStatus, DomainError, Issued,
    Money, PaymentCommand, PaymentEvent, PaymentKind, PaymentStatus,
};
use chronicle_eventstore::envelope::Envelope;
use chrono::Utc;
use uuid::Uuid;

use super::ProcessManager;
use super::flow::{Flow, ProcessError, Step};

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
    Issued::new(ProcessManager::actor(), Utc::now(), command)
}

fn reference(id: Uuid) -> Option<Reference> {
    Reference::parse(&id.to_string()).ok()
}

/// A refusal the flow did not expect: it ends the flow, loudly.
fn unexpected(flow: &Flow<'_>, step: &str, refusal: &DomainError) -> Option<String> {
    tracing::error!(flow = %flow.id, step, code = refusal.code(), %refusal, "unexpected refusal");
    Some(format!("{step}: {refusal}"))
}

impl ProcessManager {
    /// BookingRequested → initiate payment → withdraw → capture → confirm; or fail and
    /// reject when the account cannot pay.
    pub(crate) async fn charge_booking(&self, envelope: &Envelope) -> Result<(), ProcessError> {
        let Ok(BookingEvent::BookingRequested {
            booking_id,
            account_id,
            owner,
            price,
            ..
        }) = serde_json::from_value(envelope.payload.clone())
        else {
            return Ok(());
        };
        let flow = self
            .flow(envelope.event_id, "booking-charge", booking_id)
            .await?;
        let booking = self.commands.load_booking(booking_id).await?;
        if booking
            .state()
            .is_none_or(|b| b.status != BookingStatus::Pending)
        {
            return flow
                .finish("skipped", Some("the booking is no longer pending".into()))
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
        if let Step::Refused(refusal) = self.capture(&flow, payment_id).await? {
            return flow
                .finish("stuck", unexpected(&flow, "capture", &refusal))
                .await;
        }
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
            Step::Done => flow.finish("confirmed", None).await,
            // Cancelled or expired while it was being charged: give the money back.
            Step::Refused(DomainError::InvalidTransition { status, .. }) => {
                match self
                    .refund(&flow, payment_id, account_id, "compensation")
                    .await?
                {
                    Refund::Stuck(detail) => flow.finish("stuck", Some(detail)).await,
                    _ => {
                        flow.finish(
                            "compensated",
                            Some(format!("the booking was {status} meanwhile")),
                        )
                        .await
                    }
                }
            }
            Step::Refused(refusal) => {
                flow.finish("stuck", unexpected(&flow, "confirm-booking", &refusal))
                    .await
            }
        }
    }

    /// BookingCancelled of a confirmed booking → refund the payment → credit the account.
    pub(crate) async fn refund_booking(&self, envelope: &Envelope) -> Result<(), ProcessError> {
        let Ok(booking_id) = Uuid::parse_str(&envelope.aggregate_id) else {
            return Ok(());
        };
        let flow = self
            .flow(envelope.event_id, "booking-refund", booking_id)
            .await?;
        let booking = self.commands.load_booking(booking_id).await?;
        let Some((payment_id, account_id)) = booking
            .state()
            .and_then(|b| b.payment_id.map(|p| (p, b.account_id)))
        else {
            return flow
                .finish("skipped", Some("the booking was never paid".into()))
                .await;
        };
        match self.refund(&flow, payment_id, account_id, "refund").await? {
            Refund::Done => flow.finish("refunded", None).await,
            Refund::Nothing => {
                flow.finish("skipped", Some("nothing was captured".into()))
                    .await
            }
            Refund::Stuck(detail) => flow.finish("stuck", Some(detail)).await,
        }
    }

    /// A one-time payment a client initiated → withdraw → capture, or fail.
    pub(crate) async fn charge_client_payment(
        &self,
        envelope: &Envelope,
    ) -> Result<(), ProcessError> {
        if envelope.metadata.actor.as_deref() == Some(&ProcessManager::actor().subject) {
            return Ok(()); // its own, charged within the booking flow
        }
        let Ok(PaymentEvent::PaymentInitiated {
            payment_id,
            account_id,
            amount,
            kind: PaymentKind::OneTime,
            ..
        }) = serde_json::from_value(envelope.payload.clone())
        else {
            return Ok(());
        };
        let flow = self
            .flow(envelope.event_id, "payment-charge", payment_id)
            .await?;
        let payment = self.commands.load_payment(payment_id).await?;
        if payment
            .state()
            .is_none_or(|p| p.status != PaymentStatus::Pending)
        {
            return flow
                .finish("skipped", Some("the payment is no longer pending".into()))
                .await;
        }
        if let Step::Refused(refusal) = self
            .debit(&flow, account_id, amount, payment_id, "withdraw")
            .await?
        {
            self.fail_payment(&flow, payment_id, &refusal).await?;
            return flow.finish("failed", Some(refusal.code().into())).await;
        }
        match self.capture(&flow, payment_id).await? {
            Step::Done => flow.finish("captured", None).await,
            Step::Refused(refusal) => {
                flow.finish("stuck", unexpected(&flow, "capture", &refusal))
                    .await
            }
        }
    }

    pub(crate) async fn debit(
        &self,
        flow: &Flow<'_>,
        account_id: Uuid,
        amount: Money,
        reference_id: Uuid,
        step: &str,
    ) -> Result<Step, ProcessError> {
        let movement = Movement {
            amount: Amount::new("amount", amount.amount).map_err(crate::CommandError::from)?,
            currency: Some(amount.currency),
            reference: reference(reference_id),
        };
        flow.step(step, |m| async move {
            self.commands
                .account(
                    account_id,
                    issued(AccountCommand::WithdrawFunds(movement)),
                    &m,
                )
                .await
        })
        .await
    }

    async fn capture(&self, flow: &Flow<'_>, payment_id: Uuid) -> Result<Step, ProcessError> {
        flow.step("capture", |m| async move {
            self.commands
                .payment(
                    payment_id,
                    issued(PaymentCommand::CapturePayment { charge: 1 }),
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
            Step::Done => flow.finish("rejected", Some(refusal.code().into())).await,
            Step::Refused(other) => {
                flow.finish("stuck", unexpected(flow, "reject-booking", &other))
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
        let movement = Movement {
            amount: value,
            currency: Some(currency),
            reference: reference(refund_id),
        };
        let credited = flow
            .step(&format!("{purpose}-deposit"), |m| async move {
                self.commands
                    .account(
                        account_id,
                        issued(AccountCommand::DepositFunds(movement)),
                        &m,
                    )
                    .await
            })
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
