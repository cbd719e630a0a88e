//! The temporal read models: each change of an account or a booking closes the current
//! version (its `valid_to`) and opens the next, in transaction time; money moved by
//! payments goes to the payment ledger. Called only after a guarded change took effect,
//! so a redelivered event records nothing twice.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Tx;

/// Records the account's state after event `sequence` (read back from `accounts`).
pub(crate) async fn account(
    tx: &mut Tx<'_>,
    id: Uuid,
    sequence: i64,
    effective_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE account_balance_history SET valid_to = $3 \
         WHERE account_id = $1 AND valid_to IS NULL AND sequence < $2",
    )
    .bind(id)
    .bind(sequence)
    .bind(recorded_at)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO account_balance_history (account_id, sequence, balance, status, effective_at, valid_from) \
         SELECT account_id, $2, balance, status, $3, $4 FROM accounts WHERE account_id = $1 \
         ON CONFLICT (account_id, sequence) DO NOTHING",
    )
    .bind(id)
    .bind(sequence)
    .bind(effective_at)
    .bind(recorded_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records the booking's status after event `sequence` (read back from `bookings`).
pub(crate) async fn booking(
    tx: &mut Tx<'_>,
    id: Uuid,
    sequence: i64,
    recorded_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE booking_status_history SET valid_to = $3 \
         WHERE booking_id = $1 AND valid_to IS NULL AND sequence < $2",
    )
    .bind(id)
    .bind(sequence)
    .bind(recorded_at)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO booking_status_history (booking_id, sequence, status, status_reason, payment_id, valid_from) \
         SELECT booking_id, $2, status, status_reason, payment_id, $3 FROM bookings WHERE booking_id = $1 \
         ON CONFLICT (booking_id, sequence) DO NOTHING",
    )
    .bind(id)
    .bind(sequence)
    .bind(recorded_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records money a payment moved: a capture, or a refund.
pub(crate) async fn payment_money(
    tx: &mut Tx<'_>,
    id: Uuid,
    sequence: i64,
    kind: &str,
    amount: i64,
    recorded_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payment_ledger (payment_id, sequence, kind, amount, currency, account_id, owner, recorded_at) \
         SELECT payment_id, $2, $3, $4, currency, account_id, owner, $5 FROM payments WHERE payment_id = $1 \
         ON CONFLICT (payment_id, sequence) DO NOTHING",
    )
    .bind(id)
    .bind(sequence)
    .bind(kind)
    .bind(amount)
    .bind(recorded_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
