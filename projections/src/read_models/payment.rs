//! `payments`, `payment_ledger` and, for recurring payments, `payment_schedules` (what
//! the scheduler reads to find due charges). Status follows from the totals exactly as
//! in the aggregate (`PaymentStatus::derive`), so the two cannot disagree.

use std::collections::HashMap;

use chronicle_domain::payment::PaymentTotals;
use chronicle_domain::{PaymentEvent, PaymentKind, PaymentStatus, Schedule};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Tx;
use super::fold::{At, Fold, Folded, Stamp, Table, stored_word};
use super::unnest::Unnest;

/// A payment's row as the fold needs it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct State {
    payment_id: Uuid,
    account_id: Uuid,
    owner: String,
    currency: String,
    kind: PaymentKind,
    schedule: Option<Schedule>,
    started: DateTime<Utc>,
    status: PaymentStatus,
    charges: u32,
    captured: i64,
    refunded: i64,
    /// The latest failure reason this batch saw (the row keeps its own otherwise).
    failure: Option<String>,
    stamp: Stamp,
}

#[derive(sqlx::FromRow)]
struct Stored {
    payment_id: Uuid,
    account_id: Uuid,
    owner: String,
    currency: String,
    kind: String,
    schedule: Option<serde_json::Value>,
    status: String,
    charges_captured: i32,
    captured_total: i64,
    refunded_total: i64,
    initiated_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    #[sqlx(flatten)]
    stamp: Stamp,
}

impl TryFrom<Stored> for State {
    type Error = sqlx::Error;

    fn try_from(row: Stored) -> Result<Self, Self::Error> {
        // A row this projector did not write is an error, never a guess.
        let id = row.payment_id;
        let status = stored_word(
            PaymentStatus::parse,
            &row.status,
            format_args!("payment {id} status"),
        )?;
        let kind = stored_word(
            PaymentKind::parse,
            &row.kind,
            format_args!("payment {id} kind"),
        )?;
        let schedule = row
            .schedule
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| sqlx::Error::Decode(format!("payment {id} schedule: {e}").into()))?;
        Ok(Self {
            payment_id: row.payment_id,
            account_id: row.account_id,
            owner: row.owner,
            currency: row.currency,
            kind,
            schedule,
            started: row.initiated_at.unwrap_or(row.created_at),
            status,
            charges: row.charges_captured as u32,
            captured: row.captured_total,
            refunded: row.refunded_total,
            failure: None,
            stamp: row.stamp,
        })
    }
}

impl State {
    fn totals(&self) -> PaymentTotals<'_> {
        PaymentTotals {
            kind: self.kind,
            status: self.status,
            schedule: self.schedule.as_ref(),
            initiated_at: self.started,
            charges_captured: self.charges,
            captured_total: self.captured,
            refunded_total: self.refunded,
        }
    }
}

/// A payment first initiated in this batch: what never changes afterwards.
#[derive(Debug, PartialEq)]
struct Initiated {
    amount: i64,
    booking_id: Option<Uuid>,
    at: At,
}

/// A capture or a refund, for the payment ledger.
#[derive(Debug, PartialEq)]
struct Money {
    id: Uuid,
    kind: &'static str,
    amount: i64,
    at: At,
}

chronicle_domain::worded! {
    /// Whether a recurring payment's schedule has charges to come.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum ScheduleStatus {
        /// A charge is due at `next_due_at`.
        Active = "active",
        /// Every charge of the schedule was captured.
        Completed = "completed",
        /// Charges kept failing; no more are tried.
        Suspended = "suspended",
    }
}

/// What the batch changed in a recurring payment's schedule; `None` keeps the stored
/// value.
#[derive(Debug, PartialEq)]
struct Reschedule {
    next_charge: Option<i32>,
    next_due_at: Option<DateTime<Utc>>,
    attempts: Option<i32>,
    status: ScheduleStatus,
    version: i64,
}

/// What a batch of payment events writes besides the payments' rows.
#[derive(Default)]
pub(crate) struct Payments {
    initiated: HashMap<Uuid, Initiated>,
    ledger: Vec<Money>,
    reschedules: HashMap<Uuid, Reschedule>,
}

impl Fold for Payments {
    type Event = PaymentEvent;
    type State = State;

    fn stamp(state: &mut State) -> &mut Stamp {
        &mut state.stamp
    }

    fn open(&mut self, id: Uuid, event: &PaymentEvent, at: At) -> Option<State> {
        let PaymentEvent::PaymentInitiated {
            account_id,
            owner,
            amount,
            kind,
            schedule,
            booking_id,
            initiated_at,
            ..
        } = event
        else {
            return None;
        };
        let initiated = Initiated {
            amount: amount.amount,
            booking_id: *booking_id,
            at,
        };
        self.initiated.insert(id, initiated);
        Some(State {
            payment_id: id,
            account_id: *account_id,
            owner: owner.clone(),
            currency: amount.currency.as_str().to_owned(),
            kind: *kind,
            schedule: schedule.clone(),
            started: *initiated_at,
            status: match kind {
                PaymentKind::OneTime => PaymentStatus::Pending,
                PaymentKind::Recurring => PaymentStatus::Active,
            },
            charges: 0,
            captured: 0,
            refunded: 0,
            failure: None,
            stamp: Stamp::from(at),
        })
    }

    fn change(&mut self, id: Uuid, state: &mut State, event: &PaymentEvent, at: At) -> bool {
        if matches!(event, PaymentEvent::PaymentInitiated { .. }) {
            return false;
        }
        let next = fold(state, event);
        state.status = PaymentStatus::derive(&state.totals());
        if let Some((kind, amount)) = next.money {
            self.ledger.push(Money {
                id,
                kind,
                amount,
                at,
            });
        }
        if let (Some(due), Some(schedule)) = (next.due, &state.schedule) {
            let change = due.reschedule(schedule, state.started, at.sequence);
            self.reschedules
                .entry(id)
                .and_modify(|earlier| earlier.then(&change))
                .or_insert(change);
        }
        true
    }
}

impl Table for Payments {
    async fn load(tx: &mut Tx<'_>, ids: &[Uuid]) -> Result<HashMap<Uuid, State>, sqlx::Error> {
        let stored: Vec<Stored> = sqlx::query_as(
            "SELECT payment_id, account_id, owner, currency, kind, schedule, status, \
             charges_captured, captured_total, refunded_total, version, initiated_at, created_at, \
             updated_at, last_position FROM payments WHERE payment_id = ANY($1) \
             ORDER BY payment_id FOR UPDATE",
        )
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
        stored
            .into_iter()
            .map(|row| Ok((row.payment_id, State::try_from(row)?)))
            .collect()
    }

    async fn write(tx: &mut Tx<'_>, folded: &Folded<Self>) -> Result<(), sqlx::Error> {
        insert(tx, folded).await?;
        insert_schedules(tx, folded).await?;
        update(tx, folded).await?;
        let ledger = &folded.effects.ledger;
        Unnest::of(ledger)
            .column("payment_id", |m| m.id)
            .column("sequence", |m| m.at.sequence)
            .column("kind", |m| m.kind)
            .column("amount", |m| m.amount)
            .column("currency", |m| folded.states[&m.id].currency.as_str())
            .column("account_id", |m| folded.states[&m.id].account_id)
            .column("owner", |m| folded.states[&m.id].owner.as_str())
            .column("recorded_at", |m| m.at.recorded_at)
            .insert(
                "payment_ledger",
                "ON CONFLICT (payment_id, sequence) DO NOTHING",
            )
            .execute(tx)
            .await?;
        write_schedules(tx, &folded.effects.reschedules).await
    }
}

/// What an event means beyond the payment's totals.
#[derive(Default)]
struct Consequences {
    money: Option<(&'static str, i64)>,
    due: Option<NextDue>,
}

/// Applies a (non-initiating) event to the totals; the status is derived afterwards.
fn fold(state: &mut State, event: &PaymentEvent) -> Consequences {
    match event {
        PaymentEvent::PaymentInitiated { .. } => Consequences::default(),
        PaymentEvent::PaymentFailed { reason, .. } => {
            state.failure = Some(reason.clone());
            state.status = PaymentStatus::Failed;
            Consequences::default()
        }
        PaymentEvent::PaymentCaptured { charge, amount, .. } => {
            state.charges = *charge;
            state.captured += amount;
            Consequences {
                money: Some(("capture", *amount)),
                due: Some(NextDue::After(*charge)),
            }
        }
        PaymentEvent::PaymentRefunded { amount, .. } => {
            state.refunded += amount;
            Consequences {
                money: Some(("refund", *amount)),
                due: None,
            }
        }
        PaymentEvent::ChargeFailed {
            attempt,
            retry_at,
            reason,
            ..
        } => {
            state.failure = Some(reason.clone());
            Consequences {
                money: None,
                due: Some(NextDue::Retry {
                    attempt: *attempt,
                    retry_at: *retry_at,
                }),
            }
        }
        PaymentEvent::PaymentSuspended { reason, .. } => {
            state.failure = Some(reason.clone());
            state.status = PaymentStatus::Suspended;
            Consequences {
                money: None,
                due: Some(NextDue::Suspended),
            }
        }
    }
}

/// What a payment event means for the next charge.
enum NextDue {
    /// Charge `n` was captured: the next is due on schedule.
    After(u32),
    /// An attempt failed: try again at `retry_at`, if at all.
    Retry {
        attempt: u32,
        retry_at: Option<DateTime<Utc>>,
    },
    Suspended,
}

impl NextDue {
    fn reschedule(self, schedule: &Schedule, started: DateTime<Utc>, version: i64) -> Reschedule {
        let (next_charge, next_due_at, attempts, status) = match self {
            NextDue::After(charge) => {
                let due = schedule.due_at(started, charge + 1);
                let status = match due {
                    Some(_) => ScheduleStatus::Active,
                    None => ScheduleStatus::Completed,
                };
                (Some(charge as i32 + 1), due, Some(0), status)
            }
            NextDue::Retry { attempt, retry_at } => {
                (None, retry_at, Some(attempt as i32), ScheduleStatus::Active)
            }
            NextDue::Suspended => (None, None, None, ScheduleStatus::Suspended),
        };
        Reschedule {
            next_charge,
            next_due_at,
            attempts,
            status,
            version,
        }
    }
}

impl Reschedule {
    /// This change followed by `later`.
    fn then(&mut self, later: &Reschedule) {
        self.next_charge = later.next_charge.or(self.next_charge);
        self.next_due_at = later.next_due_at;
        self.attempts = later.attempts.or(self.attempts);
        self.status = later.status;
        self.version = later.version;
    }
}

/// Inserts the payments initiated in this batch, as the batch left them.
async fn insert(tx: &mut Tx<'_>, folded: &Folded<Payments>) -> Result<(), sqlx::Error> {
    let created: Vec<(&State, &Initiated)> = folded
        .created
        .iter()
        .map(|id| (&folded.states[id], &folded.effects.initiated[id]))
        .collect();
    Unnest::of(&created)
        .column("payment_id", |(s, _)| s.payment_id)
        .column("account_id", |(s, _)| s.account_id)
        .column("owner", |(s, _)| s.owner.as_str())
        .column("amount", |(_, i)| i.amount)
        .column("currency", |(s, _)| s.currency.as_str())
        .column("kind", |(s, _)| s.kind.as_str())
        .column("schedule", |(s, _)| {
            s.schedule
                .as_ref()
                .map(|s| serde_json::to_value(s).unwrap_or_default())
        })
        .column("booking_id", |(_, i)| i.booking_id)
        .column("status", |(s, _)| s.status.as_str())
        .column("charges_captured", |(s, _)| s.charges as i32)
        .column("captured_total", |(s, _)| s.captured)
        .column("refunded_total", |(s, _)| s.refunded)
        .column("failure_reason", |(s, _)| s.failure.as_deref())
        .column("version", |(s, _)| s.stamp.version)
        .column("created_at", |(_, i)| i.at.recorded_at)
        .column("updated_at", |(s, _)| s.stamp.updated_at)
        .column("last_position", |(s, _)| s.stamp.last_position)
        .column("initiated_at", |(s, _)| s.started)
        .insert("payments", "ON CONFLICT (payment_id) DO NOTHING")
        .execute(tx)
        .await
}

/// Inserts the schedules of recurring payments initiated in this batch, as initiated;
/// the batch's later events arrive as reschedules.
async fn insert_schedules(tx: &mut Tx<'_>, folded: &Folded<Payments>) -> Result<(), sqlx::Error> {
    let recurring: Vec<(&State, &Schedule, &Initiated)> = folded
        .created
        .iter()
        .filter_map(|id| {
            let state = &folded.states[id];
            let schedule = state.schedule.as_ref()?;
            Some((state, schedule, &folded.effects.initiated[id]))
        })
        .collect();
    Unnest::of(&recurring)
        .column("payment_id", |(s, _, _)| s.payment_id)
        .column("account_id", |(s, _, _)| s.account_id)
        .column("owner", |(s, _, _)| s.owner.as_str())
        .column("amount", |(_, _, i)| i.amount)
        .column("currency", |(s, _, _)| s.currency.as_str())
        .column("interval_seconds", |(_, p, _)| p.interval_seconds as i32)
        .column("charge_count", |(_, p, _)| p.count.map(|c| c as i32))
        .column("until", |(_, p, _)| p.until)
        .column("starts_at", |(s, _, _)| s.started)
        .column("next_charge", |_| 1_i32)
        .column("next_due_at", |(s, p, _)| p.due_at(s.started, 1))
        .column("attempts", |_| 0_i32)
        .column("status", |_| ScheduleStatus::Active.as_str())
        .column("version", |(_, _, i)| i.at.sequence)
        .insert("payment_schedules", "ON CONFLICT (payment_id) DO NOTHING")
        .execute(tx)
        .await
}

/// Writes the new totals of payments that existed before the batch.
async fn update(tx: &mut Tx<'_>, folded: &Folded<Payments>) -> Result<(), sqlx::Error> {
    let changed: Vec<&State> = folded.states_of(&folded.changed).collect();
    Unnest::of(&changed)
        .column("payment_id", |s| s.payment_id)
        .column("status", |s| s.status.as_str())
        .column("charges_captured", |s| s.charges as i32)
        .column("captured_total", |s| s.captured)
        .column("refunded_total", |s| s.refunded)
        .column_as(
            "failure_reason",
            "coalesce(v.failure_reason, t.failure_reason)",
            |s| s.failure.as_deref(),
        )
        .column("version", |s| s.stamp.version)
        .column("updated_at", |s| s.stamp.updated_at)
        .column("last_position", |s| s.stamp.last_position)
        .update("payments", "payment_id", "t.version < v.version")
        .execute(tx)
        .await
}

async fn write_schedules(
    tx: &mut Tx<'_>,
    reschedules: &HashMap<Uuid, Reschedule>,
) -> Result<(), sqlx::Error> {
    let changes: Vec<(&Uuid, &Reschedule)> = reschedules.iter().collect();
    Unnest::of(&changes)
        .column("payment_id", |(id, _)| **id)
        .column_as(
            "next_charge",
            "coalesce(v.next_charge, t.next_charge)",
            |(_, c)| c.next_charge,
        )
        .column("next_due_at", |(_, c)| c.next_due_at)
        .column_as("attempts", "coalesce(v.attempts, t.attempts)", |(_, c)| {
            c.attempts
        })
        .column("status", |(_, c)| c.status.as_str())
        .column("version", |(_, c)| c.version)
        .update("payment_schedules", "payment_id", "t.version < v.version")
        .execute(tx)
        .await
}

#[cfg(test)]
mod tests {
    use chronicle_domain::Currency;

    use super::super::fold::fold;
    use super::super::fold::tests::at;
    use super::*;

    const ID: Uuid = Uuid::from_u128(21);

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap_or_default()
    }

    fn initiated(kind: PaymentKind, schedule: Option<Schedule>) -> PaymentEvent {
        PaymentEvent::PaymentInitiated {
            payment_id: ID,
            account_id: Uuid::from_u128(1),
            owner: "alice".into(),
            amount: chronicle_domain::Money {
                amount: 1_000,
                currency: Currency::parse("EUR").unwrap(),
            },
            kind,
            schedule,
            booking_id: None,
            initiated_at: t(0),
        }
    }

    fn captured(charge: u32) -> PaymentEvent {
        PaymentEvent::PaymentCaptured {
            charge,
            amount: 1_000,
            captured_at: t(charge as i64 * 60),
        }
    }

    fn run(events: &[PaymentEvent]) -> Folded<Payments> {
        fold::<Payments>(
            HashMap::new(),
            events.iter().zip(1..).map(|(e, n)| (ID, e, at(n))),
        )
    }

    #[test]
    fn a_one_time_payment_folds_into_totals_status_and_ledger() {
        let folded = run(&[
            initiated(PaymentKind::OneTime, None),
            captured(1),
            PaymentEvent::PaymentRefunded {
                refund_id: Uuid::from_u128(5),
                amount: 1_000,
                refunded_at: t(90),
            },
        ]);
        assert_eq!(folded.created, vec![ID]);
        let state = &folded.states[&ID];
        assert_eq!(
            (state.status, state.charges, state.captured, state.refunded),
            (PaymentStatus::Refunded, 1, 1_000, 1_000)
        );
        let ledger: Vec<_> = folded
            .effects
            .ledger
            .iter()
            .map(|m| (m.kind, m.amount, m.at.sequence))
            .collect();
        assert_eq!(ledger, vec![("capture", 1_000, 2), ("refund", 1_000, 3)]);
        assert!(folded.effects.reschedules.is_empty(), "no schedule");
    }

    #[test]
    fn a_recurring_payment_reschedules_after_each_charge_and_completes_after_the_last() {
        let schedule = Schedule {
            interval_seconds: 60,
            count: Some(2),
            until: None,
        };
        let folded = run(&[
            initiated(PaymentKind::Recurring, Some(schedule.clone())),
            captured(1),
            PaymentEvent::ChargeFailed {
                charge: 2,
                attempt: 1,
                reason: "declined".into(),
                retry_at: Some(t(200)),
                failed_at: t(150),
            },
            captured(2),
        ]);
        let state = &folded.states[&ID];
        assert_eq!(state.status, PaymentStatus::Completed);
        assert_eq!(state.failure.as_deref(), Some("declined"));
        assert_eq!(
            folded.effects.reschedules[&ID],
            Reschedule {
                next_charge: Some(3),
                next_due_at: None,
                attempts: Some(0),
                status: ScheduleStatus::Completed,
                version: 4,
            }
        );
    }

    #[test]
    fn a_suspension_keeps_the_schedules_counters_and_stops_it() {
        let schedule = Schedule {
            interval_seconds: 60,
            count: Some(5),
            until: None,
        };
        let mut states = run(&[initiated(PaymentKind::Recurring, Some(schedule))]).states;
        let suspended = PaymentEvent::PaymentSuspended {
            reason: "three failures".into(),
            suspended_at: t(500),
        };
        let folded = fold::<Payments>(std::mem::take(&mut states), [(ID, &suspended, at(2))]);
        assert_eq!(folded.changed, vec![ID]);
        assert_eq!(folded.states[&ID].status, PaymentStatus::Suspended);
        assert_eq!(
            folded.effects.reschedules[&ID],
            Reschedule {
                next_charge: None,
                next_due_at: None,
                attempts: None,
                status: ScheduleStatus::Suspended,
                version: 2,
            }
        );
    }
}
