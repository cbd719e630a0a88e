//! `subscriptions`, `subscription_invoices` and `subscription_history` (ADR 0034). A
//! subscription's row keeps the aggregate's own state, folded by the domain
//! (`Subscription::fold`), so the read model cannot disagree with the aggregate about
//! periods, plans or status; the row's other columns are read off that state.

use std::collections::HashMap;

use chronicle_domain::subscription::{
    Subscription, SubscriptionEvent, SubscriptionState, SubscriptionStatus,
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Tx;
use super::fold::{At, Fold, Folded, Stamp, Table};
use super::history::Versions;
use super::unnest::Unnest;

/// A subscription's row as the fold needs it.
#[derive(Clone, Debug)]
pub(crate) struct State {
    aggregate: Subscription,
    created_at: DateTime<Utc>,
    stamp: Stamp,
}

impl State {
    /// The started subscription (every stored row has one).
    fn started(&self) -> Option<&SubscriptionState> {
        self.aggregate.state()
    }
}

#[derive(sqlx::FromRow)]
struct Stored {
    subscription_id: Uuid,
    state: serde_json::Value,
    created_at: DateTime<Utc>,
    #[sqlx(flatten)]
    stamp: Stamp,
}

impl TryFrom<Stored> for State {
    type Error = sqlx::Error;

    fn try_from(row: Stored) -> Result<Self, Self::Error> {
        let id = row.subscription_id;
        let aggregate: Subscription = serde_json::from_value(row.state)
            .map_err(|e| sqlx::Error::Decode(format!("subscription {id} state: {e}").into()))?;
        Ok(Self {
            aggregate,
            created_at: row.created_at,
            stamp: row.stamp,
        })
    }
}

/// One line of an invoice.
#[derive(Debug, PartialEq)]
pub(crate) struct Line {
    id: Uuid,
    line: i32,
    kind: &'static str,
    period: u32,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    /// Positive: owed by the subscriber; negative: credited to them.
    amount: i64,
    currency: String,
    plan_name: String,
    at: At,
}

/// A subscription as the history records it.
#[derive(Debug, PartialEq)]
pub(crate) struct Counted {
    status: SubscriptionStatus,
    currency: String,
    mrr: i64,
}

/// What a subscription counts for in monthly recurring revenue: its plan's monthly
/// amount while it bills (active, or past due while its charge is retried), else zero.
pub fn mrr(state: &SubscriptionState) -> i64 {
    match state.status {
        SubscriptionStatus::Active | SubscriptionStatus::PastDue => {
            state.plan.interval.monthly(state.plan.price.amount)
        }
        _ => 0,
    }
}

/// What a batch of subscription events writes besides the subscriptions' rows.
#[derive(Default)]
pub(crate) struct Subscriptions {
    lines: Vec<Line>,
    history: Versions<Counted>,
}

impl Subscriptions {
    /// The invoice lines `event` adds to subscription `id`, now in `state`.
    fn invoice(&mut self, id: Uuid, state: &SubscriptionState, event: &SubscriptionEvent, at: At) {
        let mut line = |n: i32, kind: &'static str, period: u32, amount: i64| {
            if amount == 0 {
                return;
            }
            let Ok((period_start, period_end)) = state.period(period) else {
                return;
            };
            self.lines.push(Line {
                id,
                line: n,
                kind,
                period,
                period_start,
                period_end,
                amount,
                currency: state.plan.price.currency.as_str().to_owned(),
                plan_name: state.plan.name.clone(),
                at,
            });
        };
        match event {
            SubscriptionEvent::PeriodCharged { period, amount, .. } => {
                line(0, "period_charge", *period, *amount);
            }
            SubscriptionEvent::PlanChanged {
                period,
                credit,
                charge,
                ..
            } => {
                line(0, "proration_credit", *period, -*credit);
                line(1, "proration_charge", *period, *charge);
            }
            // The unused share given back: refunded, or settling the balance due.
            SubscriptionEvent::SubscriptionCancelled {
                refund, settled, ..
            } => {
                let period = state.periods_charged.saturating_sub(1);
                line(0, "refund", period, -(*refund + *settled));
            }
            _ => {}
        }
    }
}

impl Fold for Subscriptions {
    type Event = SubscriptionEvent;
    type State = State;

    fn stamp(state: &mut State) -> &mut Stamp {
        &mut state.stamp
    }

    fn open(&mut self, _id: Uuid, event: &SubscriptionEvent, at: At) -> Option<State> {
        if !matches!(event, SubscriptionEvent::SubscriptionStarted { .. }) {
            return None;
        }
        let mut aggregate = Subscription::default();
        aggregate.fold(event.clone());
        Some(State {
            aggregate,
            created_at: at.recorded_at,
            stamp: Stamp::from(at),
        })
    }

    fn change(&mut self, id: Uuid, state: &mut State, event: &SubscriptionEvent, at: At) -> bool {
        if matches!(event, SubscriptionEvent::SubscriptionStarted { .. }) {
            return false;
        }
        state.aggregate.fold(event.clone());
        if let Some(started) = state.aggregate.state() {
            self.invoice(id, started, event, at);
        }
        true
    }

    fn applied(&mut self, id: Uuid, state: &State, at: At) {
        if let Some(started) = state.started() {
            let counted = Counted {
                status: started.status,
                currency: started.plan.price.currency.as_str().to_owned(),
                mrr: mrr(started),
            };
            self.history.push(id, at.sequence, at.recorded_at, counted);
        }
    }
}

/// A subscription's row: its state and the columns read off it.
struct Row<'a> {
    id: Uuid,
    state: &'a State,
    started: &'a SubscriptionState,
}

impl<'a> Row<'a> {
    fn of(id: Uuid, state: &'a State) -> Option<Self> {
        Some(Self {
            id,
            state,
            started: state.started()?,
        })
    }
}

impl Table for Subscriptions {
    async fn load(tx: &mut Tx<'_>, ids: &[Uuid]) -> Result<HashMap<Uuid, State>, sqlx::Error> {
        let stored: Vec<Stored> = sqlx::query_as(
            "SELECT subscription_id, state, created_at, version, updated_at, last_position \
               FROM subscriptions WHERE subscription_id = ANY($1) \
              ORDER BY subscription_id FOR UPDATE",
        )
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
        stored
            .into_iter()
            .map(|row| Ok((row.subscription_id, State::try_from(row)?)))
            .collect()
    }

    async fn write(tx: &mut Tx<'_>, folded: &Folded<Self>) -> Result<(), sqlx::Error> {
        let rows: Vec<Row<'_>> = folded
            .created
            .iter()
            .chain(&folded.changed)
            .filter_map(|id| Row::of(*id, &folded.states[id]))
            .collect();
        Unnest::of(&rows)
            .column("subscription_id", |r| r.id)
            .column("account_id", |r| r.started.account_id)
            .column("owner", |r| r.started.owner.as_str())
            .column("status", |r| r.started.status.as_str())
            .column("plan_name", |r| r.started.plan.name.as_str())
            .column("amount", |r| r.started.plan.price.amount)
            .column("currency", |r| r.started.plan.price.currency.as_str())
            .column("interval", |r| r.started.plan.interval.as_str())
            .column("anchor", |r| r.started.anchor)
            .column("periods_charged", |r| r.started.periods_charged as i32)
            .column("next_charge_at", |r| r.started.next_charge_at())
            .column("failed_attempts", |r| {
                r.started
                    .failed_attempts
                    .get(&r.started.next_period())
                    .copied()
                    .unwrap_or(0) as i32
            })
            .column("ends_at", |r| r.started.ends_at)
            .column("state", |r| {
                serde_json::to_value(&r.state.aggregate).unwrap_or_default()
            })
            .column("version", |r| r.state.stamp.version)
            .column("created_at", |r| r.state.created_at)
            .column("updated_at", |r| r.state.stamp.updated_at)
            .column("last_position", |r| r.state.stamp.last_position)
            .insert(
                "subscriptions",
                "ON CONFLICT (subscription_id) DO UPDATE SET \
                 status = EXCLUDED.status, plan_name = EXCLUDED.plan_name, \
                 amount = EXCLUDED.amount, anchor = EXCLUDED.anchor, \
                 periods_charged = EXCLUDED.periods_charged, \
                 next_charge_at = EXCLUDED.next_charge_at, \
                 failed_attempts = EXCLUDED.failed_attempts, ends_at = EXCLUDED.ends_at, \
                 state = EXCLUDED.state, version = EXCLUDED.version, \
                 updated_at = EXCLUDED.updated_at, last_position = EXCLUDED.last_position",
            )
            .execute(tx)
            .await?;
        let lines = &folded.effects.lines;
        Unnest::of(lines)
            .column("subscription_id", |l| l.id)
            .column("sequence", |l| l.at.sequence)
            .column("line", |l| l.line)
            .column("kind", |l| l.kind)
            .column("period", |l| l.period as i32)
            .column("period_start", |l| l.period_start)
            .column("period_end", |l| l.period_end)
            .column("amount", |l| l.amount)
            .column("currency", |l| l.currency.as_str())
            .column("plan_name", |l| l.plan_name.as_str())
            .column("recorded_at", |l| l.at.recorded_at)
            .insert(
                "subscription_invoices",
                "ON CONFLICT (subscription_id, sequence, line) DO NOTHING",
            )
            .execute(tx)
            .await?;
        folded
            .effects
            .history
            .write(tx, "subscription_history", "subscription_id", |rows| {
                rows.column("status", |v| v.state.status.as_str())
                    .column("currency", |v| v.state.currency.as_str())
                    .column("mrr", |v| v.state.mrr)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use chronicle_domain::billing::Interval;
    use chronicle_domain::subscription::Plan;
    use chronicle_domain::{Currency, Money};

    use super::super::fold::fold;
    use super::super::fold::tests::at;
    use super::*;

    fn started(id: Uuid) -> SubscriptionEvent {
        SubscriptionEvent::SubscriptionStarted {
            subscription_id: id,
            account_id: Uuid::from_u128(9),
            owner: "alice".into(),
            plan: Plan {
                name: "monthly".into(),
                price: Money {
                    amount: 3_000,
                    currency: Currency::parse("EUR").unwrap(),
                },
                interval: Interval::Month,
            },
            anchor: DateTime::from_timestamp(0, 0).unwrap(),
            trial: false,
            started_at: DateTime::from_timestamp(0, 0).unwrap(),
        }
    }

    #[test]
    fn charges_and_a_cancellation_make_invoice_lines_and_history_versions() {
        let id = Uuid::from_u128(1);
        let t = DateTime::from_timestamp(5, 0).unwrap();
        let events = [
            started(id),
            SubscriptionEvent::PeriodCharged {
                period: 0,
                amount: 3_000,
                carried: 0,
                charged_at: t,
            },
            SubscriptionEvent::SubscriptionCancelled {
                refund: 600,
                settled: 400,
                unpaid: false,
                reason: None,
                cancelled_at: t,
            },
        ];
        let folded = fold::<Subscriptions>(
            HashMap::new(),
            events
                .iter()
                .enumerate()
                .map(|(i, e)| (id, e, at(i as i64 + 1))),
        );
        let lines: Vec<(&str, i64)> = folded
            .effects
            .lines
            .iter()
            .map(|l| (l.kind, l.amount))
            .collect();
        assert_eq!(lines, vec![("period_charge", 3_000), ("refund", -1_000)]);
        let history: Vec<(SubscriptionStatus, i64)> = folded
            .effects
            .history
            .rows
            .iter()
            .map(|v| (v.state.status, v.state.mrr))
            .collect();
        assert_eq!(
            history,
            vec![
                (SubscriptionStatus::Active, 3_000),
                (SubscriptionStatus::Active, 3_000),
                (SubscriptionStatus::Cancelled, 0),
            ]
        );
        let state = folded.states[&id].started().unwrap();
        assert_eq!(state.periods_charged, 1);
        assert_eq!(folded.states[&id].stamp.version, 3);
    }
}
