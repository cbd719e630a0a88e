//! `bookings`.

use chronicle_domain::BookingEvent;
use chronicle_eventstore::envelope::Envelope;
use uuid::Uuid;

use super::{Applied, ApplyResult, Tx, changed, event_of, history};

pub(crate) async fn apply(tx: &mut Tx<'_>, envelope: &Envelope) -> ApplyResult {
    let event: BookingEvent = event_of(envelope)?;
    let id = Uuid::parse_str(&envelope.aggregate_id).unwrap_or_default();
    let applied = apply_event(tx, envelope, id, event).await;
    if let Ok(Applied::Changed) = applied
        && let Err(error) = history::booking(tx, id, envelope.sequence, envelope.recorded_at).await
    {
        return Ok(Err(error));
    }
    Ok(applied)
}

async fn apply_event(
    tx: &mut Tx<'_>,
    envelope: &Envelope,
    id: Uuid,
    event: BookingEvent,
) -> Result<Applied, sqlx::Error> {
    let (seq, at, pos) = (
        envelope.sequence,
        envelope.recorded_at,
        envelope.global_position,
    );
    let (status, reason, payment_id) = match event {
        BookingEvent::BookingRequested {
            account_id,
            owner,
            resource_id,
            seats,
            starts_at,
            ends_at,
            price,
            guest,
            notes,
            ..
        } => {
            return sqlx::query(
                "INSERT INTO bookings (booking_id, account_id, owner, resource_id, seats, starts_at, \
                 ends_at, price_amount, price_currency, guest_name, guest_email, notes, status, version, \
                 created_at, updated_at, created_position, last_position) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', $13, $14, $14, $15, $15) \
                 ON CONFLICT (booking_id) DO NOTHING",
            )
            .bind(id)
            .bind(account_id)
            .bind(owner)
            .bind(resource_id)
            .bind(seats)
            .bind(starts_at)
            .bind(ends_at)
            .bind(price.amount)
            .bind(price.currency.as_str())
            .bind(guest.name)
            .bind(guest.email)
            .bind(notes)
            .bind(seq)
            .bind(at)
            .bind(pos)
            .execute(&mut **tx)
            .await
            .map(changed);
        }
        BookingEvent::BookingConfirmed { payment_id, .. } => ("confirmed", None, Some(payment_id)),
        BookingEvent::BookingRejected { reason, .. } => ("rejected", Some(reason), None),
        BookingEvent::BookingCancelled { reason, .. } => ("cancelled", reason, None),
        BookingEvent::BookingExpired { .. } => ("expired", None, None),
    };
    sqlx::query(
        "UPDATE bookings SET status = $2, status_reason = coalesce($3, status_reason), \
         payment_id = coalesce($4, payment_id), version = $5, updated_at = $6, last_position = $7 \
         WHERE booking_id = $1 AND version < $5",
    )
    .bind(id)
    .bind(status)
    .bind(reason)
    .bind(payment_id)
    .bind(seq)
    .bind(at)
    .bind(pos)
    .execute(&mut **tx)
    .await
    .map(changed)
}
