//! `payments`. Status follows from the totals exactly as in the aggregate
//! (`PaymentStatus::derive`), so the two cannot disagree.

use chronicle_domain::payment::PaymentTotals;
use chronicle_domain::{PaymentEvent, PaymentKind, PaymentStatus, Schedule};
use chronicle_eventstore::envelope::Envelope;
use uuid::Uuid;

use super::{Applied, ApplyResult, Tx, Unreadable, changed, event_of};

#[derive(sqlx::FromRow)]
struct Row {
    kind: String,
    schedule: Option<serde_json::Value>,
    status: String,
    charges_captured: i32,
    captured_total: i64,
    refunded_total: i64,
    version: i64,
}

pub(crate) async fn apply(tx: &mut Tx<'_>, envelope: &Envelope) -> ApplyResult {
    let event: PaymentEvent = event_of(envelope)?;
    let id = Uuid::parse_str(&envelope.aggregate_id).unwrap_or_default();
    if let PaymentEvent::PaymentInitiated {
        account_id,
        owner,
        amount,
        kind,
        schedule,
        booking_id,
        ..
    } = event
    {
        let status = match kind {
            PaymentKind::OneTime => PaymentStatus::Pending,
            PaymentKind::Recurring => PaymentStatus::Active,
        };
        return Ok(sqlx::query(
            "INSERT INTO payments (payment_id, account_id, owner, amount, currency, kind, schedule, \
             booking_id, status, charges_captured, captured_total, refunded_total, version, \
             created_at, updated_at, last_position) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 0, 0, $10, $11, $11, $12) \
             ON CONFLICT (payment_id) DO NOTHING",
        )
        .bind(id)
        .bind(account_id)
        .bind(owner)
        .bind(amount.amount)
        .bind(amount.currency.as_str())
        .bind(kind.as_str())
        .bind(schedule.map(|s| serde_json::to_value(s).unwrap_or_default()))
        .bind(booking_id)
        .bind(status.as_str())
        .bind(envelope.sequence)
        .bind(envelope.recorded_at)
        .bind(envelope.global_position)
        .execute(&mut **tx)
        .await
        .map(changed));
    }
    let row: Option<Row> = match sqlx::query_as(
        "SELECT kind, schedule, status, charges_captured, captured_total, refunded_total, version \
         FROM payments WHERE payment_id = $1 FOR UPDATE",
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

async fn update(
    tx: &mut Tx<'_>,
    envelope: &Envelope,
    id: Uuid,
    row: Row,
    event: PaymentEvent,
) -> Result<Result<Applied, sqlx::Error>, Unreadable> {
    let kind = match row.kind.as_str() {
        "recurring" => PaymentKind::Recurring,
        _ => PaymentKind::OneTime,
    };
    let schedule: Option<Schedule> = row.schedule.and_then(|s| serde_json::from_value(s).ok());
    let status = PaymentStatus::parse(&row.status)
        .ok_or_else(|| Unreadable(format!("stored payment status {:?}", row.status)))?;
    let (mut charges, mut captured, mut refunded) = (
        row.charges_captured as u32,
        row.captured_total,
        row.refunded_total,
    );
    let mut failure = None;
    let status = match event {
        PaymentEvent::PaymentInitiated { .. } => return Ok(Ok(Applied::Stale)),
        PaymentEvent::PaymentFailed { reason, .. } => {
            failure = Some(reason);
            PaymentStatus::Failed
        }
        PaymentEvent::PaymentCaptured { charge, amount, .. } => {
            charges = charge;
            captured += amount;
            status
        }
        PaymentEvent::PaymentRefunded { amount, .. } => {
            refunded += amount;
            status
        }
    };
    let status = PaymentStatus::derive(&PaymentTotals {
        kind,
        status,
        schedule: schedule.as_ref(),
        charges_captured: charges,
        captured_total: captured,
        refunded_total: refunded,
    });
    Ok(sqlx::query(
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
    .map(changed))
}
