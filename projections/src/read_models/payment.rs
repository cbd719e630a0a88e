//! `payments` and, for recurring payments, `payment_schedules` (what the scheduler reads
//! to find due charges). Status follows from the totals exactly as in the aggregate
//! (`PaymentStatus::derive`), so the two cannot disagree.

use chronicle_domain::payment::PaymentTotals;
use chronicle_domain::{PaymentEvent, PaymentKind, PaymentStatus, Schedule};
use chronicle_eventstore::envelope::Envelope;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Applied, ApplyResult, Tx, Unreadable, changed, event_of, history};

#[derive(sqlx::FromRow)]
struct Row {
    kind: String,
    schedule: Option<serde_json::Value>,
    status: String,
    charges_captured: i32,
    captured_total: i64,
    refunded_total: i64,
    version: i64,
    initiated_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

pub(crate) async fn apply(tx: &mut Tx<'_>, envelope: &Envelope) -> ApplyResult {
    let event: PaymentEvent = event_of(envelope)?;
    let id = Uuid::parse_str(&envelope.aggregate_id).unwrap_or_default();
    if let PaymentEvent::PaymentInitiated { .. } = event {
        return Ok(initiate(tx, envelope, id, event).await);
    }
    let row: Option<Row> = match sqlx::query_as(
        "SELECT kind, schedule, status, charges_captured, captured_total, refunded_total, version, \
         initiated_at, created_at FROM payments WHERE payment_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    {
        Ok(row) => row,
        Err(error) => return Ok(Err(error)),
    };
    let Some(row) = row.filter(|r| r.version < envelope.sequence) else {
        return Ok(Ok(Applied::Stale));
    };
    update(tx, envelope, id, row, event).await
}

async fn initiate(
    tx: &mut Tx<'_>,
    envelope: &Envelope,
    id: Uuid,
    event: PaymentEvent,
) -> Result<Applied, sqlx::Error> {
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
        return Ok(Applied::Stale);
    };
    let status = match kind {
        PaymentKind::OneTime => PaymentStatus::Pending,
        PaymentKind::Recurring => PaymentStatus::Active,
    };
    let applied = sqlx::query(
        "INSERT INTO payments (payment_id, account_id, owner, amount, currency, kind, schedule, \
         booking_id, status, charges_captured, captured_total, refunded_total, version, \
         created_at, updated_at, last_position, initiated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 0, 0, $10, $11, $11, $12, $13) \
         ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(id)
    .bind(account_id)
    .bind(&owner)
    .bind(amount.amount)
    .bind(amount.currency.as_str())
    .bind(kind.as_str())
    .bind(
        schedule
            .as_ref()
            .map(|s| serde_json::to_value(s).unwrap_or_default()),
    )
    .bind(booking_id)
    .bind(status.as_str())
    .bind(envelope.sequence)
    .bind(envelope.recorded_at)
    .bind(envelope.global_position)
    .bind(initiated_at)
    .execute(&mut **tx)
    .await
    .map(changed)?;
    if let (Some(schedule), Applied::Changed) = (schedule, &applied) {
        sqlx::query(
            "INSERT INTO payment_schedules (payment_id, account_id, owner, amount, currency, \
             interval_seconds, charge_count, until, starts_at, next_charge, next_due_at, attempts, \
             status, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, 0, 'active', $11) \
             ON CONFLICT (payment_id) DO NOTHING",
        )
        .bind(id)
        .bind(account_id)
        .bind(owner)
        .bind(amount.amount)
        .bind(amount.currency.as_str())
        .bind(schedule.interval_seconds as i32)
        .bind(schedule.count.map(|c| c as i32))
        .bind(schedule.until)
        .bind(initiated_at)
        .bind(schedule.due_at(initiated_at, 1))
        .bind(envelope.sequence)
        .execute(&mut **tx)
        .await?;
    }
    Ok(applied)
}

async fn update(
    tx: &mut Tx<'_>,
    envelope: &Envelope,
    id: Uuid,
    row: Row,
    event: PaymentEvent,
) -> ApplyResult {
    let kind = match row.kind.as_str() {
        "recurring" => PaymentKind::Recurring,
        _ => PaymentKind::OneTime,
    };
    let schedule: Option<Schedule> = row.schedule.and_then(|s| serde_json::from_value(s).ok());
    let started = row.initiated_at.unwrap_or(row.created_at);
    let status = PaymentStatus::parse(&row.status)
        .ok_or_else(|| Unreadable(format!("stored payment status {:?}", row.status)))?;
    let (mut charges, mut captured, mut refunded) = (
        row.charges_captured as u32,
        row.captured_total,
        row.refunded_total,
    );
    let mut failure = None;
    let mut next_due: Option<NextDue> = None;
    let mut money: Option<(&str, i64)> = None;
    let status = match event {
        PaymentEvent::PaymentInitiated { .. } => return Ok(Ok(Applied::Stale)),
        PaymentEvent::PaymentFailed { reason, .. } => {
            failure = Some(reason);
            PaymentStatus::Failed
        }
        PaymentEvent::PaymentCaptured { charge, amount, .. } => {
            charges = charge;
            captured += amount;
            money = Some(("capture", amount));
            next_due = Some(NextDue::After(charge));
            status
        }
        PaymentEvent::PaymentRefunded { amount, .. } => {
            refunded += amount;
            money = Some(("refund", amount));
            status
        }
        PaymentEvent::ChargeFailed {
            attempt,
            retry_at,
            reason,
            ..
        } => {
            failure = Some(reason);
            next_due = Some(NextDue::Retry { attempt, retry_at });
            status
        }
        PaymentEvent::PaymentSuspended { reason, .. } => {
            failure = Some(reason);
            next_due = Some(NextDue::Suspended);
            PaymentStatus::Suspended
        }
    };
    let status = PaymentStatus::derive(&PaymentTotals {
        kind,
        status,
        schedule: schedule.as_ref(),
        initiated_at: started,
        charges_captured: charges,
        captured_total: captured,
        refunded_total: refunded,
    });
    let applied = sqlx::query(
        "UPDATE payments SET status = $2, charges_captured = $3, captured_total = $4, \
         refunded_total = $5, failure_reason = coalesce($6, failure_reason), version = $7, \
         updated_at = $8, last_position = $9 WHERE payment_id = $1 AND version < $7",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(charges as i32)
    .bind(captured)
    .bind(refunded)
    .bind(failure)
    .bind(envelope.sequence)
    .bind(envelope.recorded_at)
    .bind(envelope.global_position)
    .execute(&mut **tx)
    .await
    .map(changed);
    if let (Some((kind, amount)), Ok(Applied::Changed)) = (money, &applied)
        && let Err(error) = history::payment_money(
            tx,
            id,
            envelope.sequence,
            kind,
            amount,
            envelope.recorded_at,
        )
        .await
    {
        return Ok(Err(error));
    }
    if let (Some(next_due), Some(schedule), Ok(Applied::Changed)) = (next_due, &schedule, &applied)
        && let Err(error) = reschedule(tx, id, envelope.sequence, next_due, schedule, started).await
    {
        return Ok(Err(error));
    }
    Ok(applied)
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

async fn reschedule(
    tx: &mut Tx<'_>,
    id: Uuid,
    version: i64,
    next: NextDue,
    schedule: &Schedule,
    started: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let (next_charge, next_due_at, attempts, status): (
        Option<i32>,
        Option<DateTime<Utc>>,
        Option<i32>,
        &str,
    ) = match next {
        NextDue::After(charge) => {
            let due = schedule.due_at(started, charge + 1);
            let status = if due.is_some() { "active" } else { "completed" };
            (Some(charge as i32 + 1), due, Some(0), status)
        }
        NextDue::Retry { attempt, retry_at } => (None, retry_at, Some(attempt as i32), "active"),
        NextDue::Suspended => (None, None, None, "suspended"),
    };
    sqlx::query(
        "UPDATE payment_schedules SET next_charge = coalesce($3, next_charge), next_due_at = $4, \
         attempts = coalesce($5, attempts), status = $6, version = $2 \
         WHERE payment_id = $1 AND version < $2",
    )
    .bind(id)
    .bind(version)
    .bind(next_charge)
    .bind(next_due_at)
    .bind(attempts)
    .bind(status)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
