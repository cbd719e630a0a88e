//! The subscription flows (ADR 0034): each period's charge when it falls due, with
//! dunning; the end of a subscription cancelled at period end; the net of a mid-period
//! plan change; and the refund of a period cancelled now. Money moves through the
//! account with the flow's id as reference, and every step is an idempotent command, so
//! a crash or a second instance never moves it twice (ADR 0007).

use chronicle_domain::subscription::{SubscriptionCommand, SubscriptionEvent, SubscriptionState};
use chronicle_domain::values::Note;
use chronicle_domain::{DomainError, Issued, Money};
use chronicle_eventstore::clock;
use chronicle_eventstore::envelope::Envelope;
use chronicle_projections::subscriptions as reads;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ProcessManager;
use super::booking::Start;
use super::flow::{FlowKind, FlowStatus, ProcessError, Step};
use super::schedule::ChargeLocks;
use crate::CommandError;

fn issued<C>(command: C) -> Issued<C> {
    Issued::new(ProcessManager::actor(), clock::now(), command)
}

/// The flow a subscription's event starts, if any: a plan change with a net to move,
/// or a cancellation with something to refund.
pub(super) fn start(envelope: &Envelope) -> Result<Option<Start>, String> {
    let subscription_id = Uuid::parse_str(&envelope.aggregate_id)
        .map_err(|e| format!("aggregate id {:?}: {e}", envelope.aggregate_id))?;
    let event: SubscriptionEvent = serde_json::from_value(envelope.payload.clone())
        .map_err(|e| format!("{} {}: {e}", envelope.aggregate_type, envelope.event_type))?;
    Ok(match event {
        SubscriptionEvent::PlanChanged { credit, charge, .. } if charge != credit => {
            Some(Start::ProrateSubscription {
                subscription_id,
                net: charge - credit,
            })
        }
        SubscriptionEvent::SubscriptionCancelled { refund, .. } if refund > 0 => {
            Some(Start::RefundSubscription {
                subscription_id,
                refund,
            })
        }
        _ => None,
    })
}

impl ProcessManager {
    /// The started subscription `id`, if there is one.
    async fn subscription_state(
        &self,
        id: Uuid,
    ) -> Result<Option<SubscriptionState>, ProcessError> {
        let subscription = self.commands.load_subscription(id).await?;
        Ok(subscription.state().cloned())
    }

    /// A mid-period plan change: charges the account the net when the new plan's share
    /// of the period exceeds the old one's unused share, pays it back otherwise.
    pub(super) async fn prorate_subscription(
        &self,
        event_id: Uuid,
        subscription_id: Uuid,
        net: i64,
    ) -> Result<(), ProcessError> {
        let Some(flow) = self
            .event_flow(event_id, FlowKind::SubscriptionProration, subscription_id)
            .await?
        else {
            return Ok(());
        };
        let Some(state) = self.subscription_state(subscription_id).await? else {
            return flow
                .finish(FlowStatus::Stuck, Some("no such subscription".into()))
                .await;
        };
        let money = |amount| Money {
            amount,
            currency: state.plan.price.currency,
        };
        let (moved, done) = if net > 0 {
            let step = self
                .debit(&flow, state.account_id, money(net), event_id, "withdraw")
                .await?;
            (step, FlowStatus::Captured)
        } else {
            let step = self
                .credit(&flow, state.account_id, money(-net), event_id, "deposit")
                .await?;
            (step, FlowStatus::Refunded)
        };
        match moved {
            Step::Done => flow.finish(done, None).await,
            // The account refused to pay (not enough money): the net is owed with the next
            // charge.
            Step::Refused(refusal) if net > 0 => {
                let carry = SubscriptionCommand::CarryBalance {
                    amount: net,
                    reason: Note::reason(refusal.code()),
                };
                let carried = flow
                    .step("carry", |m| async move {
                        self.commands
                            .subscription(subscription_id, issued(carry), &m)
                            .await
                    })
                    .await?;
                match carried {
                    Step::Done => {
                        flow.finish(
                            FlowStatus::Carried,
                            Some(format!("proration of {net}: {}", refusal.code())),
                        )
                        .await
                    }
                    Step::Refused(carry_refusal) => {
                        flow.finish(
                            FlowStatus::Stuck,
                            Some(format!("proration of {net} not carried: {carry_refusal}")),
                        )
                        .await
                    }
                }
            }
            // A credit refused (the account closed): an operator settles it.
            Step::Refused(refusal) => {
                flow.finish(
                    FlowStatus::Stuck,
                    Some(format!("proration of {net}: {}", refusal.code())),
                )
                .await
            }
        }
    }

    /// A cancellation now: credits the unused part of the period to the account.
    pub(super) async fn refund_subscription(
        &self,
        event_id: Uuid,
        subscription_id: Uuid,
        refund: i64,
    ) -> Result<(), ProcessError> {
        let Some(flow) = self
            .event_flow(event_id, FlowKind::SubscriptionRefund, subscription_id)
            .await?
        else {
            return Ok(());
        };
        let Some(state) = self.subscription_state(subscription_id).await? else {
            return flow
                .finish(FlowStatus::Stuck, Some("no such subscription".into()))
                .await;
        };
        let money = Money {
            amount: refund,
            currency: state.plan.price.currency,
        };
        match self
            .credit(&flow, state.account_id, money, event_id, "deposit")
            .await?
        {
            Step::Done => flow.finish(FlowStatus::Refunded, None).await,
            Step::Refused(refusal) => {
                flow.finish(
                    FlowStatus::Stuck,
                    Some(format!("refund of {refund}: {}", refusal.code())),
                )
                .await
            }
        }
    }

    /// Charges every subscription whose charge is due and ends those whose cancellation
    /// took effect (up to 50 a tick); returns how many it took on. A subscription another
    /// instance is working on is skipped.
    pub(super) async fn charge_due_subscriptions(&self) -> Result<usize, ProcessError> {
        let now = clock::now();
        let due = reads::due(&self.pool, now, 50).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut locks = ChargeLocks::new(self.pool.acquire().await?);
        let mut taken = 0;
        for id in due {
            if !locks.try_lock(id).await? {
                continue;
            }
            taken += 1;
            self.bill_subscription(id, now).await?;
            locks.unlock(id).await?;
        }
        Ok(taken)
    }

    /// Whatever is due of subscription `id` at `now`, decided on the aggregate (the read
    /// model that listed it may lag behind).
    async fn bill_subscription(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), ProcessError> {
        let Some(state) = self.subscription_state(id).await? else {
            return Ok(());
        };
        if state.status.is_final() {
            return Ok(());
        }
        if state.ends_at.is_some_and(|end| end <= now) {
            return self.end_subscription(id).await;
        }
        match state.next_charge_at() {
            Some(due) if due <= now => self.charge_period(id, &state).await,
            _ => Ok(()),
        }
    }

    /// Ends a subscription whose cancellation at period end has taken effect.
    async fn end_subscription(&self, id: Uuid) -> Result<(), ProcessError> {
        let flow_id = Uuid::new_v5(&id, b"end");
        let flow = self.flow(flow_id, FlowKind::SubscriptionEnd, id).await?;
        let ended = flow
            .step("renew", |m| async move {
                self.commands
                    .subscription(id, issued(SubscriptionCommand::Renew), &m)
                    .await
            })
            .await?;
        match ended {
            Step::Done => flow.finish(FlowStatus::Expired, None).await,
            Step::Refused(refusal) => {
                flow.finish(FlowStatus::Stuck, Some(refusal.to_string()))
                    .await
            }
        }
    }

    /// Charges the period due next, on the plan it is billed on, with the balance due.
    /// The flow is named after the period, and so is the withdrawal's reference: a period
    /// is charged once, however often this runs; what it takes is pinned on the flow
    /// before the withdrawal, so a run after a crash records what was withdrawn. A refusal
    /// is recorded with when to try again; after the last retry the subscription is
    /// cancelled as unpaid.
    async fn charge_period(&self, id: Uuid, state: &SubscriptionState) -> Result<(), ProcessError> {
        let due = state.next_charge();
        let flow_id = Uuid::new_v5(&id, format!("charge/{}", due.period).as_bytes());
        let flow = self.flow(flow_id, FlowKind::SubscriptionCharge, id).await?;
        let charge = flow.pin(&due).await?;
        let period = charge.period;
        let attempt = state.failed_attempts.get(&period).copied().unwrap_or(0) + 1;
        let money = |amount| Money {
            amount,
            currency: state.plan.price.currency,
        };
        let total = charge.total().ok_or_else(|| {
            ProcessError::Command(CommandError::Rejected(DomainError::AmountOutOfRange))
        })?;
        match self
            .debit(&flow, state.account_id, money(total), flow_id, "withdraw")
            .await?
        {
            Step::Done => {
                let record = SubscriptionCommand::RecordCharge {
                    period,
                    amount: charge.amount,
                    carried: charge.carried,
                };
                let recorded = flow
                    .step("record", |m| async move {
                        self.commands.subscription(id, issued(record), &m).await
                    })
                    .await?;
                match recorded {
                    Step::Done => flow.finish(FlowStatus::Captured, None).await,
                    // Cancelled between the look and the charge: the period will not be
                    // recorded, so what was taken for it goes back.
                    Step::Refused(refusal) => {
                        let reference = flow.derive("give-back");
                        let given_back = self
                            .credit(
                                &flow,
                                state.account_id,
                                money(total),
                                reference,
                                "give-back",
                            )
                            .await?;
                        let (status, note) = match given_back {
                            Step::Done => (FlowStatus::Refunded, "given back"),
                            Step::Refused(_) => (FlowStatus::Stuck, "not given back"),
                        };
                        flow.finish(
                            status,
                            Some(format!(
                                "period {period} charged but not recorded ({refusal}): {note}"
                            )),
                        )
                        .await
                    }
                }
            }
            Step::Refused(refusal) => {
                // The next attempt takes what is due then.
                flow.unpin().await?;
                let retry_at = self
                    .settings
                    .subscription_retries
                    .after(attempt)
                    .map(|wait| {
                        clock::now()
                            + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
                    });
                let fail = SubscriptionCommand::FailCharge {
                    period,
                    attempt,
                    reason: Note::reason(refusal.code()),
                    retry_at,
                };
                flow.step(&format!("fail-{attempt}"), |m| async move {
                    self.commands.subscription(id, issued(fail), &m).await
                })
                .await?;
                let status = if retry_at.is_some() {
                    FlowStatus::Retrying
                } else {
                    FlowStatus::Failed
                };
                flow.finish(
                    status,
                    Some(format!(
                        "period {period}, attempt {attempt}: {}",
                        refusal.code()
                    )),
                )
                .await
            }
        }
    }
}
