//! The Subscription aggregate: a plan billed per calendar period on an account, with a
//! trial, pauses, plan changes with proration, dunning and cancellation (issue 15,
//! ADR 0034). Clients address it as the third kind of payment.
//!
//! Money does not move here: the process manager debits and credits the account and
//! tells the subscription what happened (`RecordCharge`, `FailCharge`), as it does for
//! payments. What this aggregate decides is what is owed and when.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::billing::{Interval, proration, share, unused};
use crate::error::DomainError;
use crate::issued::{Issued, guard_existing, guard_new};
use crate::money::Money;
use crate::values::Note;

/// The longest trial.
pub const MAX_TRIAL_DAYS: u32 = 366;

/// What a subscriber pays, how often.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub price: Money,
    pub interval: Interval,
}

impl Plan {
    fn validate(&self) -> Result<(), DomainError> {
        if self.name.trim().is_empty() || self.name.chars().count() > 200 {
            return Err(DomainError::invalid("plan.name", "1 to 200 characters"));
        }
        if self.price.amount <= 0 {
            return Err(DomainError::invalid("plan.amount", "must be positive"));
        }
        Ok(())
    }
}

/// What may be asked of a subscription.
#[derive(Clone, Debug)]
pub enum SubscriptionCommand {
    Start(SubscriptionRequest),
    /// The process manager captured period `period`'s charge: `amount` for the period
    /// and `carried` of the balance due.
    RecordCharge {
        period: u32,
        amount: i64,
        carried: i64,
    },
    /// The account refused a plan change's net of `amount`: it is owed with the next
    /// period's charge.
    CarryBalance {
        amount: i64,
        reason: Note,
    },
    /// Attempt `attempt` of period `period`'s charge was refused; with `retry_at` it is
    /// tried again then, without it the subscription is cancelled as unpaid.
    FailCharge {
        period: u32,
        attempt: u32,
        reason: Note,
        retry_at: Option<DateTime<Utc>>,
    },
    ChangePlan {
        plan: Plan,
        at_period_end: bool,
        reason: Option<Note>,
    },
    Cancel {
        at_period_end: bool,
        reason: Option<Note>,
    },
    Pause {
        reason: Option<Note>,
    },
    Resume {
        reason: Option<Note>,
    },
    /// Ends a subscription whose scheduled end has come, and applies a plan change
    /// scheduled for the period that starts; issued by the scheduler.
    Renew,
}

/// A new subscription. `owner` is the owner of `account_id`, looked up by the caller.
#[derive(Clone, Debug)]
pub struct SubscriptionRequest {
    pub subscription_id: Uuid,
    pub account_id: Uuid,
    pub owner: String,
    pub plan: Plan,
    pub trial_days: u32,
    /// When billing starts (after the trial, if any); `None`: now.
    pub starts_at: Option<DateTime<Utc>>,
}

crate::worded! {
    /// Where a subscription stands.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum SubscriptionStatus {
        /// In its trial: nothing is charged before it ends.
        Trialing = "trialing",
        /// Billing each period.
        Active = "active",
        /// A charge was refused and is being retried.
        PastDue = "past_due",
        /// Paused: no charges; the periods shift by the time paused.
        Paused = "paused",
        /// Stopped before its time: by the subscriber, or unpaid.
        Cancelled = "cancelled",
        /// Ran to the end of the period in which it was cancelled.
        Ended = "ended",
    }
}

impl SubscriptionStatus {
    /// No more charges or changes.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Cancelled | Self::Ended)
    }
}

/// What happened to a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SubscriptionEvent {
    SubscriptionStarted {
        subscription_id: Uuid,
        account_id: Uuid,
        owner: String,
        plan: Plan,
        /// The start of period 0; the trial, if any, runs until then.
        anchor: DateTime<Utc>,
        trial: bool,
        started_at: DateTime<Utc>,
    },
    /// Period `period` was charged `amount`, and `carried` of the balance due with it.
    PeriodCharged {
        period: u32,
        amount: i64,
        #[serde(default)]
        carried: i64,
        charged_at: DateTime<Utc>,
    },
    /// A plan change's net the account refused, owed from now on with the next charge.
    BalanceCarried {
        amount: i64,
        reason: String,
        carried_at: DateTime<Utc>,
    },
    ChargeFailed {
        period: u32,
        attempt: u32,
        reason: String,
        retry_at: Option<DateTime<Utc>>,
        failed_at: DateTime<Utc>,
    },
    /// A plan change in mid-period: the old plan's unused share is credited and the new
    /// plan's charged (`billing::proration`). The process manager moves the net.
    PlanChanged {
        from: Plan,
        to: Plan,
        period: u32,
        credit: i64,
        charge: i64,
        reason: Option<String>,
        changed_at: DateTime<Utc>,
    },
    /// A plan change that takes effect when period `period` starts.
    PlanChangeScheduled {
        to: Plan,
        period: u32,
        reason: Option<String>,
        scheduled_at: DateTime<Utc>,
    },
    SubscriptionPaused {
        reason: Option<String>,
        paused_at: DateTime<Utc>,
    },
    /// Resumed; the anchor moved by the time paused.
    SubscriptionResumed {
        anchor: DateTime<Utc>,
        reason: Option<String>,
        resumed_at: DateTime<Utc>,
    },
    /// Will end when the current period does.
    CancellationScheduled {
        ends_at: DateTime<Utc>,
        reason: Option<String>,
        scheduled_at: DateTime<Utc>,
    },
    /// Stopped now; `refund` (the unused share of the last charged period, less the
    /// balance due it `settled`) is to be credited to the account by the process manager.
    SubscriptionCancelled {
        refund: i64,
        #[serde(default)]
        settled: i64,
        unpaid: bool,
        reason: Option<String>,
        cancelled_at: DateTime<Utc>,
    },
    SubscriptionEnded {
        ended_at: DateTime<Utc>,
    },
}

impl DomainEvent for SubscriptionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SubscriptionStarted { .. } => "SubscriptionStarted",
            Self::PeriodCharged { .. } => "PeriodCharged",
            Self::ChargeFailed { .. } => "ChargeFailed",
            Self::BalanceCarried { .. } => "BalanceCarried",
            Self::PlanChanged { .. } => "PlanChanged",
            Self::PlanChangeScheduled { .. } => "PlanChangeScheduled",
            Self::SubscriptionPaused { .. } => "SubscriptionPaused",
            Self::SubscriptionResumed { .. } => "SubscriptionResumed",
            Self::CancellationScheduled { .. } => "CancellationScheduled",
            Self::SubscriptionCancelled { .. } => "SubscriptionCancelled",
            Self::SubscriptionEnded { .. } => "SubscriptionEnded",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A subscription as its events have shaped it. `Default` is before it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub version: u64,
    pub state: Option<SubscriptionState>,
}

/// A period's charge: what the process manager takes for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub period: u32,
    /// The price of the plan the period is billed on.
    pub amount: i64,
    /// The balance due collected with it.
    pub carried: i64,
}

impl Charge {
    /// What the account is debited.
    pub fn total(&self) -> Option<i64> {
        self.amount.checked_add(self.carried)
    }
}

/// A started subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionState {
    pub subscription_id: Uuid,
    pub account_id: Uuid,
    pub owner: String,
    pub plan: Plan,
    /// The start of period 0, moved by pauses.
    pub anchor: DateTime<Utc>,
    pub status: SubscriptionStatus,
    /// Periods charged so far (period `n` is charged as the `n + 1`-th charge).
    pub periods_charged: u32,
    /// What the last charged period cost (its plan's price then).
    pub last_charge: i64,
    /// Owed and not yet collected: plan changes' nets the account refused. The next
    /// charge collects it; a cancellation's refund settles it first.
    #[serde(default)]
    pub balance_due: i64,
    /// Failed attempts of the period now due.
    pub failed_attempts: BTreeMap<u32, u32>,
    /// When the refused charge of the period now due is tried again.
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
    pub paused_at: Option<DateTime<Utc>>,
    /// The status to return to on resume.
    pub paused_from: Option<SubscriptionStatus>,
    pub scheduled_plan: Option<(u32, Plan)>,
    pub ends_at: Option<DateTime<Utc>>,
}

impl SubscriptionState {
    /// Start and end of period `n`.
    pub fn period(&self, n: u32) -> Result<(DateTime<Utc>, DateTime<Utc>), DomainError> {
        let bound = |k| {
            self.plan
                .interval
                .period_start(self.anchor, k)
                .ok_or(DomainError::AmountOutOfRange)
        };
        Ok((bound(n)?, bound(n + 1)?))
    }

    /// The plan period `n` is billed on: a change scheduled for it or earlier, or the
    /// current plan.
    pub fn plan_for(&self, n: u32) -> &Plan {
        match &self.scheduled_plan {
            Some((from, plan)) if *from <= n => plan,
            _ => &self.plan,
        }
    }

    /// The period due next: the first not charged.
    pub fn next_period(&self) -> u32 {
        self.periods_charged
    }

    /// What the next charge takes: the period's price and the balance due.
    pub fn next_charge(&self) -> Charge {
        Charge {
            period: self.next_period(),
            amount: self.plan_for(self.next_period()).price.amount,
            carried: self.balance_due,
        }
    }

    /// When the next charge falls due (its retry, if one was refused), or `None` when no
    /// charge is to come.
    pub fn next_charge_at(&self) -> Option<DateTime<Utc>> {
        if self.status.is_final() || self.status == SubscriptionStatus::Paused {
            return None;
        }
        let (start, _) = self.period(self.next_period()).ok()?;
        if self.ends_at.is_some_and(|end| start >= end) {
            return None;
        }
        Some(self.retry_at.map_or(start, |retry| retry.max(start)))
    }

    /// The period `at` falls in, counting a time before the anchor as period 0.
    fn current_period(&self, at: DateTime<Utc>) -> Result<u32, DomainError> {
        self.plan
            .interval
            .period_at(self.anchor, at)
            .map(|(n, _, _)| n)
            .ok_or(DomainError::AmountOutOfRange)
    }

    fn refuse(&self, action: &'static str) -> DomainError {
        DomainError::InvalidTransition {
            status: self.status.as_str(),
            action,
        }
    }

    fn decide(
        &self,
        issued: &Issued<SubscriptionCommand>,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        let at = issued.at;
        let text = |note: &Option<Note>| note.as_ref().map(|n| n.as_str().to_owned());
        match &issued.command {
            SubscriptionCommand::Start(_) => Err(DomainError::AlreadyExists),
            SubscriptionCommand::RecordCharge {
                period,
                amount,
                carried,
            } => {
                if *period < self.periods_charged {
                    return Ok(vec![]);
                }
                // A charge taken for a period due before a pause is still recorded: the
                // money moved (the process manager looked before the pause came).
                if self.status.is_final() {
                    return Err(self.refuse("charge"));
                }
                if *period != self.periods_charged {
                    return Err(DomainError::invalid(
                        "period",
                        format!("the next period to charge is {}", self.periods_charged),
                    ));
                }
                if *carried < 0 || *carried > self.balance_due {
                    return Err(DomainError::invalid(
                        "carried",
                        format!("the balance due is {}", self.balance_due),
                    ));
                }
                Ok(vec![SubscriptionEvent::PeriodCharged {
                    period: *period,
                    amount: *amount,
                    carried: *carried,
                    charged_at: at,
                }])
            }
            // Recorded whatever the status: the amount is owed even by a subscription
            // cancelled since the plan change (an operator collects it then).
            SubscriptionCommand::CarryBalance { amount, reason } => {
                if *amount <= 0 {
                    return Err(DomainError::invalid("amount", "must be positive"));
                }
                Ok(vec![SubscriptionEvent::BalanceCarried {
                    amount: *amount,
                    reason: reason.as_str().to_owned(),
                    carried_at: at,
                }])
            }
            SubscriptionCommand::FailCharge {
                period,
                attempt,
                reason,
                retry_at,
            } => {
                let recorded = self.failed_attempts.get(period).copied().unwrap_or(0);
                if *period < self.periods_charged || *attempt <= recorded {
                    return Ok(vec![]);
                }
                if self.status.is_final() || self.status == SubscriptionStatus::Paused {
                    return Err(self.refuse("fail a charge"));
                }
                let mut events = vec![SubscriptionEvent::ChargeFailed {
                    period: *period,
                    attempt: *attempt,
                    reason: reason.as_str().to_owned(),
                    retry_at: *retry_at,
                    failed_at: at,
                }];
                if retry_at.is_none() {
                    events.push(SubscriptionEvent::SubscriptionCancelled {
                        refund: 0,
                        settled: 0,
                        unpaid: true,
                        reason: Some(format!(
                            "unpaid: period {period} refused {attempt} times ({})",
                            reason.as_str()
                        )),
                        cancelled_at: at,
                    });
                }
                Ok(events)
            }
            SubscriptionCommand::ChangePlan {
                plan,
                at_period_end,
                reason,
            } => self.change_plan(plan, *at_period_end, text(reason), at),
            SubscriptionCommand::Cancel {
                at_period_end,
                reason,
            } => self.cancel(*at_period_end, text(reason), at),
            SubscriptionCommand::Pause { reason } => {
                if self.status == SubscriptionStatus::Paused {
                    return Ok(vec![]);
                }
                if self.status.is_final() || self.ends_at.is_some() {
                    return Err(self.refuse("pause"));
                }
                Ok(vec![SubscriptionEvent::SubscriptionPaused {
                    reason: text(reason),
                    paused_at: at,
                }])
            }
            SubscriptionCommand::Resume { reason } => {
                let Some(paused_at) = self.paused_at.filter(|_| !self.status.is_final()) else {
                    return Err(self.refuse("resume"));
                };
                let paused = (at - paused_at).max(Duration::zero());
                Ok(vec![SubscriptionEvent::SubscriptionResumed {
                    anchor: self.anchor + paused,
                    reason: text(reason),
                    resumed_at: at,
                }])
            }
            SubscriptionCommand::Renew => {
                if self.status.is_final() {
                    return Ok(vec![]);
                }
                if let Some(ends_at) = self.ends_at
                    && at >= ends_at
                {
                    return Ok(vec![SubscriptionEvent::SubscriptionEnded { ended_at: at }]);
                }
                Ok(vec![])
            }
        }
    }

    fn change_plan(
        &self,
        plan: &Plan,
        at_period_end: bool,
        reason: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        plan.validate()?;
        if *plan == self.plan {
            return Ok(vec![]);
        }
        if self.status.is_final() || self.status == SubscriptionStatus::Paused {
            return Err(self.refuse("change the plan"));
        }
        if plan.price.currency != self.plan.price.currency {
            return Err(DomainError::CurrencyMismatch {
                expected: self.plan.price.currency,
                actual: plan.price.currency,
            });
        }
        if plan.interval != self.plan.interval {
            return Err(DomainError::invalid(
                "plan.interval",
                "a plan change keeps the interval (start a new subscription for another)",
            ));
        }
        let current = self.current_period(at)?;
        // Nothing charged for the current period (a trial, or before the anchor): the
        // new plan simply applies from now on.
        let charged = at >= self.anchor && current < self.periods_charged;
        if at_period_end && charged {
            return Ok(vec![SubscriptionEvent::PlanChangeScheduled {
                to: plan.clone(),
                period: current + 1,
                reason,
                scheduled_at: at,
            }]);
        }
        let (credit, charge) = if charged {
            let (start, end) = self.period(current)?;
            let lines = proration(self.last_charge, plan.price.amount, start, end, at);
            (lines.credit, lines.charge)
        } else {
            (0, 0)
        };
        Ok(vec![SubscriptionEvent::PlanChanged {
            from: self.plan.clone(),
            to: plan.clone(),
            period: current,
            credit,
            charge,
            reason,
            changed_at: at,
        }])
    }

    fn cancel(
        &self,
        at_period_end: bool,
        reason: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        if self.status.is_final() {
            return Ok(vec![]);
        }
        // While paused, the period in progress is the one the pause stopped.
        let effective = self.paused_at.unwrap_or(at);
        let current = self.current_period(effective)?;
        let charged = effective >= self.anchor && current < self.periods_charged;
        if at_period_end && charged && self.status != SubscriptionStatus::Paused {
            let (_, end) = self.period(current)?;
            if self.ends_at == Some(end) {
                return Ok(vec![]);
            }
            return Ok(vec![SubscriptionEvent::CancellationScheduled {
                ends_at: end,
                reason,
                scheduled_at: at,
            }]);
        }
        // Now: a trial or an unbilled period ends with nothing to give back; a charged
        // one gives back its unused share (a paused one, what was left when paused), less
        // the balance due, which it settles.
        let unused_share = if charged {
            let (start, end) = self.period(current)?;
            let (remaining, length) = unused(start, end, effective);
            share(self.last_charge, remaining, length)
        } else {
            0
        };
        let settled = unused_share.min(self.balance_due);
        Ok(vec![SubscriptionEvent::SubscriptionCancelled {
            refund: unused_share - settled,
            settled,
            unpaid: false,
            reason,
            cancelled_at: at,
        }])
    }

    fn apply(&mut self, event: SubscriptionEvent) {
        match event {
            SubscriptionEvent::SubscriptionStarted { .. } => {}
            SubscriptionEvent::PeriodCharged {
                period,
                amount,
                carried,
                ..
            } => {
                self.periods_charged = period + 1;
                self.last_charge = amount;
                self.balance_due -= carried;
                self.failed_attempts.clear();
                self.retry_at = None;
                if let Some((from, plan)) = self.scheduled_plan.take() {
                    if from <= period {
                        self.plan = plan;
                    } else {
                        self.scheduled_plan = Some((from, plan));
                    }
                }
                if self.status != SubscriptionStatus::Paused {
                    self.status = SubscriptionStatus::Active;
                }
            }
            SubscriptionEvent::ChargeFailed {
                period,
                attempt,
                retry_at,
                ..
            } => {
                self.failed_attempts.insert(period, attempt);
                self.retry_at = retry_at;
                self.status = SubscriptionStatus::PastDue;
            }
            SubscriptionEvent::BalanceCarried { amount, .. } => {
                self.balance_due += amount;
            }
            SubscriptionEvent::PlanChanged { to, charge, .. } => {
                self.plan = to;
                if charge > 0 {
                    // What the rest of this period is charged on, for a later change
                    // or refund: the new plan's full price.
                    self.last_charge = self.plan.price.amount;
                }
                self.scheduled_plan = None;
            }
            SubscriptionEvent::PlanChangeScheduled { to, period, .. } => {
                self.scheduled_plan = Some((period, to));
            }
            SubscriptionEvent::SubscriptionPaused { paused_at, .. } => {
                self.paused_from = Some(self.status);
                self.paused_at = Some(paused_at);
                self.status = SubscriptionStatus::Paused;
            }
            SubscriptionEvent::SubscriptionResumed { anchor, .. } => {
                self.anchor = anchor;
                self.paused_at = None;
                self.status = self
                    .paused_from
                    .take()
                    .unwrap_or(SubscriptionStatus::Active);
            }
            SubscriptionEvent::CancellationScheduled { ends_at, .. } => {
                self.ends_at = Some(ends_at);
            }
            SubscriptionEvent::SubscriptionCancelled { settled, .. } => {
                self.balance_due -= settled;
                self.status = SubscriptionStatus::Cancelled;
                self.paused_at = None;
                self.paused_from = None;
            }
            SubscriptionEvent::SubscriptionEnded { .. } => {
                self.status = SubscriptionStatus::Ended;
            }
        }
    }
}

impl Subscription {
    /// Decides what `issued` causes, without changing the subscription. Repeated
    /// charges, failures, pauses and cancellations are no-ops, so redelivered commands
    /// are harmless.
    pub fn decide(
        &self,
        issued: &Issued<SubscriptionCommand>,
    ) -> Result<Vec<SubscriptionEvent>, DomainError> {
        if let SubscriptionCommand::Start(request) = &issued.command {
            guard_new(issued, self.state.is_some(), &request.owner)?;
            return Ok(vec![start(request, issued.at)?]);
        }
        let state = self.state.as_ref();
        guard_existing(issued, state.map(|s| s.owner.as_str()), self.version)?;
        state.ok_or(DomainError::NotFound)?.decide(issued)
    }

    /// The started subscription, if any.
    pub fn state(&self) -> Option<&SubscriptionState> {
        self.state.as_ref()
    }

    /// Folds `event` in exactly as the aggregate does: read models keep a subscription's
    /// state this way, so they cannot disagree with it about periods, plans or status.
    pub fn fold(&mut self, event: SubscriptionEvent) {
        <Self as Aggregate>::apply(self, event);
    }
}

fn start(
    request: &SubscriptionRequest,
    at: DateTime<Utc>,
) -> Result<SubscriptionEvent, DomainError> {
    request.plan.validate()?;
    if request.trial_days > MAX_TRIAL_DAYS {
        return Err(DomainError::invalid(
            "trial_days",
            format!("at most {MAX_TRIAL_DAYS}"),
        ));
    }
    let begins = request.starts_at.unwrap_or(at);
    if begins < at - Duration::days(1) || begins > at + Duration::days(366) {
        return Err(DomainError::invalid(
            "starts_at",
            "may lie at most a day in the past and a year ahead",
        ));
    }
    Ok(SubscriptionEvent::SubscriptionStarted {
        subscription_id: request.subscription_id,
        account_id: request.account_id,
        owner: request.owner.clone(),
        plan: request.plan.clone(),
        anchor: begins + Duration::days(i64::from(request.trial_days)),
        trial: request.trial_days > 0,
        started_at: at,
    })
}

impl Aggregate for Subscription {
    const TYPE: &'static str = "Subscription";
    type Command = Issued<SubscriptionCommand>;
    type Event = SubscriptionEvent;
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
        if let SubscriptionEvent::SubscriptionStarted {
            subscription_id,
            account_id,
            owner,
            plan,
            anchor,
            trial,
            ..
        } = event
        {
            self.state = Some(SubscriptionState {
                subscription_id,
                account_id,
                owner,
                plan,
                anchor,
                status: if trial {
                    SubscriptionStatus::Trialing
                } else {
                    SubscriptionStatus::Active
                },
                periods_charged: 0,
                last_charge: 0,
                balance_due: 0,
                failed_attempts: BTreeMap::new(),
                retry_at: None,
                paused_at: None,
                paused_from: None,
                scheduled_plan: None,
                ends_at: None,
            });
            return;
        }
        if let Some(state) = self.state.as_mut() {
            state.apply(event);
        }
    }
}

#[cfg(test)]
#[path = "subscription_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "subscription_model_tests.rs"]
mod model_tests;
