//! `payments`, `payment_ledger` and, for recurring payments, `payment_schedules` (what
//! the scheduler reads to find due charges). Status follows from the totals exactly as
//! in the aggregate (`PaymentStatus::derive`), so the two cannot disagree.

use std::collections::HashMap;

use chronicle_domain::payment::PaymentTotals;
use chronicle_domain::{PaymentEvent, PaymentKind, PaymentStatus, Schedule};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Tx;
use super::apply::{Fresh, Order, Tally};

/// A payment as the fold needs it.
struct State {
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
    version: i64,
    updated_at: DateTime<Utc>,
    last_position: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
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
    version: i64,
    initiated_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_position: i64,
}

impl TryFrom<Row> for State {
    type Error = sqlx::Error;

    fn try_from(row: Row) -> Result<Self, Self::Error> {
        // A row this projector did not write is an error, never a guess.
        let corrupt = |what: String| {
            sqlx::Error::Decode(format!("payment {}: {what}", row.payment_id).into())
        };
        let status = PaymentStatus::parse(&row.status)
            .ok_or_else(|| corrupt(format!("status {:?}", row.status)))?;
        let kind =
            PaymentKind::parse(&row.kind).ok_or_else(|| corrupt(format!("kind {:?}", row.kind)))?;
        let schedule = row
            .schedule
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| corrupt(format!("schedule: {e}")))?;
        Ok(Self {
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
            version: row.version,
            updated_at: row.updated_at,
            last_position: row.last_position,
        })
    }
}

/// A payment first initiated in this batch: what never changes afterwards.
struct Initiated {
    amount: i64,
    booking_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    /// The initiating event's sequence: where the schedule row starts.
    version: i64,
}

/// A capture or a refund, for the payment ledger.
struct Money {
    id: Uuid,
    sequence: i64,
    kind: &'static str,
    amount: i64,
    recorded_at: DateTime<Utc>,
}

/// What the batch changed in a recurring payment's schedule; `None` keeps the stored
/// value.
struct Reschedule {
    next_charge: Option<i32>,
    next_due_at: Option<DateTime<Utc>>,
    attempts: Option<i32>,
    status: &'static str,
    version: i64,
}

pub(crate) async fn apply(
    tx: &mut Tx<'_>,
    events: &[Fresh<'_, PaymentEvent>],
) -> Result<Tally, sqlx::Error> {
    if events.is_empty() {
        return Ok(Tally::default());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT payment_id, account_id, owner, currency, kind, schedule, status, charges_captured, \
         captured_total, refunded_total, version, initiated_at, created_at, updated_at, \
         last_position FROM payments WHERE payment_id = ANY($1) ORDER BY payment_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut states = HashMap::with_capacity(rows.len());
    for row in rows {
        states.insert(row.payment_id, State::try_from(row)?);
    }
    let mut initiated: HashMap<Uuid, Initiated> = HashMap::new();
    let mut reschedules: HashMap<Uuid, Reschedule> = HashMap::new();
    let mut ledger = Vec::new();
    let mut dirty = Vec::new();
    let mut tally = Tally::default();
    for Fresh {
        envelope,
        id,
        event,
    } in events
    {
        let (seq, at, pos) = (
            envelope.sequence,
            envelope.recorded_at,
            envelope.global_position,
        );
        if !Order::of(states.get(id).map(|s| s.version), seq).admits(&mut tally, pos) {
            continue;
        }
        if let PaymentEvent::PaymentInitiated {
            account_id,
            owner,
            amount,
            kind,
            schedule,
            booking_id,
            initiated_at,
            ..
        } = event
        {
            if states.contains_key(id) {
                tally.stale += 1;
                continue;
            }
            initiated.insert(
                *id,
                Initiated {
                    amount: amount.amount,
                    booking_id: *booking_id,
                    created_at: at,
                    version: seq,
                },
            );
            states.insert(
                *id,
                State {
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
                    version: seq,
                    updated_at: at,
                    last_position: pos,
                },
            );
            dirty.push(*id);
            tally.applied += 1;
            continue;
        }
        let Some(state) = states.get_mut(id).filter(|s| s.version < seq) else {
            tally.stale += 1;
            continue;
        };
        let next = fold(state, event);
        state.status = PaymentStatus::derive(&PaymentTotals {
            kind: state.kind,
            status: state.status,
            schedule: state.schedule.as_ref(),
            initiated_at: state.started,
            charges_captured: state.charges,
            captured_total: state.captured,
            refunded_total: state.refunded,
        });
        (state.version, state.updated_at, state.last_position) = (seq, at, pos);
        if let Some((kind, amount)) = next.money {
            ledger.push(Money {
                id: *id,
                sequence: seq,
                kind,
                amount,
                recorded_at: at,
            });
        }
        if let (Some(due), Some(schedule)) = (next.due, &state.schedule) {
            let change = due.reschedule(schedule, state.started, seq);
            reschedules
                .entry(*id)
                .and_modify(|earlier| earlier.then(&change))
                .or_insert(change);
        }
        dirty.push(*id);
        tally.applied += 1;
    }
    dirty.sort();
    dirty.dedup();
    let (created, changed): (Vec<Uuid>, Vec<Uuid>) =
        dirty.into_iter().partition(|id| initiated.contains_key(id));
    insert(tx, &created, &states, &initiated).await?;
    update(tx, &changed, &states).await?;
    record_money(tx, &ledger, &states).await?;
    write_schedules(tx, &reschedules).await?;
    Ok(tally)
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
                let status = if due.is_some() { "active" } else { "completed" };
                (Some(charge as i32 + 1), due, Some(0), status)
            }
            NextDue::Retry { attempt, retry_at } => {
                (None, retry_at, Some(attempt as i32), "active")
            }
            NextDue::Suspended => (None, None, None, "suspended"),
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

async fn insert(
    tx: &mut Tx<'_>,
    created: &[Uuid],
    states: &HashMap<Uuid, State>,
    initiated: &HashMap<Uuid, Initiated>,
) -> Result<(), sqlx::Error> {
    if created.is_empty() {
        return Ok(());
    }
    let s = |f: fn(&State) -> String| created.iter().map(|id| f(&states[id])).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO payments (payment_id, account_id, owner, amount, currency, kind, schedule, \
         booking_id, status, charges_captured, captured_total, refunded_total, failure_reason, \
         version, created_at, updated_at, last_position, initiated_at) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], \
                              $6::text[], $7::jsonb[], $8::uuid[], $9::text[], $10::int[], \
                              $11::bigint[], $12::bigint[], $13::text[], $14::bigint[], \
                              $15::timestamptz[], $16::timestamptz[], $17::bigint[], \
                              $18::timestamptz[]) \
         ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(created)
    .bind(
        created
            .iter()
            .map(|id| states[id].account_id)
            .collect::<Vec<_>>(),
    )
    .bind(s(|p| p.owner.clone()))
    .bind(
        created
            .iter()
            .map(|id| initiated[id].amount)
            .collect::<Vec<_>>(),
    )
    .bind(s(|p| p.currency.clone()))
    .bind(s(|p| p.kind.as_str().to_owned()))
    .bind(
        created
            .iter()
            .map(|id| {
                states[id]
                    .schedule
                    .as_ref()
                    .map(|s| serde_json::to_value(s).unwrap_or_default())
            })
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|id| initiated[id].booking_id)
            .collect::<Vec<_>>(),
    )
    .bind(s(|p| p.status.as_str().to_owned()))
    .bind(
        created
            .iter()
            .map(|id| states[id].charges as i32)
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|id| states[id].captured)
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|id| states[id].refunded)
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|id| states[id].failure.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|id| states[id].version)
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|id| initiated[id].created_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|id| states[id].updated_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|id| states[id].last_position)
            .collect::<Vec<_>>(),
    )
    .bind(
        created
            .iter()
            .map(|id| states[id].started)
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    let recurring: Vec<(&Uuid, &State, &Schedule)> = created
        .iter()
        .filter_map(|id| {
            let state = &states[id];
            state
                .schedule
                .as_ref()
                .map(|schedule| (id, state, schedule))
        })
        .collect();
    if recurring.is_empty() {
        return Ok(());
    }
    // The schedule as initiated; later events of this batch arrive as reschedules.
    sqlx::query(
        "INSERT INTO payment_schedules (payment_id, account_id, owner, amount, currency, \
         interval_seconds, charge_count, until, starts_at, next_charge, next_due_at, attempts, \
         status, version) \
         SELECT id, account_id, owner, amount, currency, interval_seconds, charge_count, until, \
                starts_at, 1, next_due_at, 0, 'active', version \
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::int[], \
                       $7::int[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], \
                       $11::bigint[]) \
             AS s(id, account_id, owner, amount, currency, interval_seconds, charge_count, until, \
                  starts_at, next_due_at, version) \
         ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(recurring.iter().map(|r| *r.0).collect::<Vec<_>>())
    .bind(recurring.iter().map(|r| r.1.account_id).collect::<Vec<_>>())
    .bind(
        recurring
            .iter()
            .map(|r| r.1.owner.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        recurring
            .iter()
            .map(|r| initiated[r.0].amount)
            .collect::<Vec<_>>(),
    )
    .bind(
        recurring
            .iter()
            .map(|r| r.1.currency.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        recurring
            .iter()
            .map(|r| r.2.interval_seconds as i32)
            .collect::<Vec<_>>(),
    )
    .bind(
        recurring
            .iter()
            .map(|r| r.2.count.map(|c| c as i32))
            .collect::<Vec<_>>(),
    )
    .bind(recurring.iter().map(|r| r.2.until).collect::<Vec<_>>())
    .bind(recurring.iter().map(|r| r.1.started).collect::<Vec<_>>())
    .bind(
        recurring
            .iter()
            .map(|r| r.2.due_at(r.1.started, 1))
            .collect::<Vec<_>>(),
    )
    .bind(
        recurring
            .iter()
            .map(|r| initiated[r.0].version)
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the new totals of payments that existed before the batch.
async fn update(
    tx: &mut Tx<'_>,
    changed: &[Uuid],
    states: &HashMap<Uuid, State>,
) -> Result<(), sqlx::Error> {
    if changed.is_empty() {
        return Ok(());
    }
    let finals: Vec<&State> = changed.iter().map(|id| &states[id]).collect();
    sqlx::query(
        "UPDATE payments p SET status = v.status, charges_captured = v.charges, \
                captured_total = v.captured, refunded_total = v.refunded, \
                failure_reason = coalesce(v.failure, p.failure_reason), version = v.version, \
                updated_at = v.updated_at, last_position = v.last_position \
           FROM unnest($1::uuid[], $2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::text[], \
                       $7::bigint[], $8::timestamptz[], $9::bigint[]) \
             AS v(id, status, charges, captured, refunded, failure, version, updated_at, \
                  last_position) \
          WHERE p.payment_id = v.id AND p.version < v.version",
    )
    .bind(changed)
    .bind(finals.iter().map(|s| s.status.as_str()).collect::<Vec<_>>())
    .bind(finals.iter().map(|s| s.charges as i32).collect::<Vec<_>>())
    .bind(finals.iter().map(|s| s.captured).collect::<Vec<_>>())
    .bind(finals.iter().map(|s| s.refunded).collect::<Vec<_>>())
    .bind(finals.iter().map(|s| s.failure.clone()).collect::<Vec<_>>())
    .bind(finals.iter().map(|s| s.version).collect::<Vec<_>>())
    .bind(finals.iter().map(|s| s.updated_at).collect::<Vec<_>>())
    .bind(finals.iter().map(|s| s.last_position).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn record_money(
    tx: &mut Tx<'_>,
    ledger: &[Money],
    states: &HashMap<Uuid, State>,
) -> Result<(), sqlx::Error> {
    if ledger.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO payment_ledger (payment_id, sequence, kind, amount, currency, account_id, \
         owner, recorded_at) \
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], \
                              $6::uuid[], $7::text[], $8::timestamptz[]) \
         ON CONFLICT (payment_id, sequence) DO NOTHING",
    )
    .bind(ledger.iter().map(|m| m.id).collect::<Vec<_>>())
    .bind(ledger.iter().map(|m| m.sequence).collect::<Vec<_>>())
    .bind(ledger.iter().map(|m| m.kind).collect::<Vec<_>>())
    .bind(ledger.iter().map(|m| m.amount).collect::<Vec<_>>())
    .bind(
        ledger
            .iter()
            .map(|m| states[&m.id].currency.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        ledger
            .iter()
            .map(|m| states[&m.id].account_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        ledger
            .iter()
            .map(|m| states[&m.id].owner.clone())
            .collect::<Vec<_>>(),
    )
    .bind(ledger.iter().map(|m| m.recorded_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_schedules(
    tx: &mut Tx<'_>,
    reschedules: &HashMap<Uuid, Reschedule>,
) -> Result<(), sqlx::Error> {
    if reschedules.is_empty() {
        return Ok(());
    }
    let (ids, changes): (Vec<Uuid>, Vec<&Reschedule>) =
        reschedules.iter().map(|(id, r)| (*id, r)).unzip();
    sqlx::query(
        "UPDATE payment_schedules s SET next_charge = coalesce(v.next_charge, s.next_charge), \
                next_due_at = v.next_due_at, attempts = coalesce(v.attempts, s.attempts), \
                status = v.status, version = v.version \
           FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::int[], $5::text[], \
                       $6::bigint[]) \
             AS v(id, next_charge, next_due_at, attempts, status, version) \
          WHERE s.payment_id = v.id AND s.version < v.version",
    )
    .bind(ids)
    .bind(changes.iter().map(|c| c.next_charge).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.next_due_at).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.attempts).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.status).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.version).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
