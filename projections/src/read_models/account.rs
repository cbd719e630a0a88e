//! `accounts` and `account_ledger`.

use chronicle_domain::AccountEvent;
use chronicle_eventstore::envelope::Envelope;
use uuid::Uuid;

use super::{ApplyResult, Tx, changed, event_of, history};

pub(crate) async fn apply(tx: &mut Tx<'_>, envelope: &Envelope) -> ApplyResult {
    let event: AccountEvent = event_of(envelope)?;
    let id = Uuid::parse_str(&envelope.aggregate_id).unwrap_or_default();
    let effective_at = match &event {
        AccountEvent::AccountOpened { opened_at, .. } => *opened_at,
        AccountEvent::FundsDeposited { occurred_at, .. }
        | AccountEvent::FundsWithdrawn { occurred_at, .. } => *occurred_at,
        AccountEvent::AccountClosed { closed_at } => *closed_at,
    };
    let applied = apply_event(tx, envelope, id, event).await;
    if let Ok(super::Applied::Changed) = applied
        && let Err(error) = history::account(
            tx,
            id,
            envelope.sequence,
            effective_at,
            envelope.recorded_at,
        )
        .await
    {
        return Ok(Err(error));
    }
    Ok(applied)
}

async fn apply_event(
    tx: &mut Tx<'_>,
    envelope: &Envelope,
    id: Uuid,
    event: AccountEvent,
) -> Result<super::Applied, sqlx::Error> {
    let (seq, at, pos) = (
        envelope.sequence,
        envelope.recorded_at,
        envelope.global_position,
    );
    match event {
        AccountEvent::AccountOpened {
            owner,
            currency,
            overdraft_limit,
            opened_at,
            ..
        } => sqlx::query(
            "INSERT INTO accounts (account_id, owner, currency, balance, overdraft_limit, status, \
             version, opened_at, updated_at, last_position) \
             VALUES ($1, $2, $3, 0, $4, 'open', $5, $6, $7, $8) ON CONFLICT (account_id) DO NOTHING",
        )
        .bind(id)
        .bind(owner)
        .bind(currency.as_str())
        .bind(overdraft_limit)
        .bind(seq)
        .bind(opened_at)
        .bind(at)
        .bind(pos)
        .execute(&mut **tx)
        .await
        .map(changed),
        AccountEvent::FundsDeposited {
            amount,
            reference,
            balance_after,
            occurred_at,
        } => movement(tx, envelope, id, "deposit", amount, reference, balance_after, occurred_at).await,
        AccountEvent::FundsWithdrawn {
            amount,
            reference,
            balance_after,
            occurred_at,
        } => movement(tx, envelope, id, "withdrawal", amount, reference, balance_after, occurred_at).await,
        AccountEvent::AccountClosed { .. } => sqlx::query(
            "UPDATE accounts SET status = 'closed', version = $2, updated_at = $3, last_position = $4 \
             WHERE account_id = $1 AND version < $2",
        )
        .bind(id)
        .bind(seq)
        .bind(at)
        .bind(pos)
        .execute(&mut **tx)
        .await
        .map(changed),
    }
}

#[allow(clippy::too_many_arguments)]
async fn movement(
    tx: &mut Tx<'_>,
    envelope: &Envelope,
    id: Uuid,
    kind: &str,
    amount: i64,
    reference: Option<String>,
    balance_after: i64,
    occurred_at: chrono::DateTime<chrono::Utc>,
) -> Result<super::Applied, sqlx::Error> {
    let (seq, at, pos) = (
        envelope.sequence,
        envelope.recorded_at,
        envelope.global_position,
    );
    let applied = sqlx::query(
        "UPDATE accounts SET balance = $2, version = $3, updated_at = $4, last_position = $5 \
         WHERE account_id = $1 AND version < $3",
    )
    .bind(id)
    .bind(balance_after)
    .bind(seq)
    .bind(at)
    .bind(pos)
    .execute(&mut **tx)
    .await
    .map(changed)?;
    sqlx::query(
        "INSERT INTO account_ledger (account_id, sequence, kind, amount, balance_after, reference, \
         occurred_at, recorded_at, global_position) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (account_id, sequence) DO NOTHING",
    )
    .bind(id)
    .bind(seq)
    .bind(kind)
    .bind(amount)
    .bind(balance_after)
    .bind(reference)
    .bind(occurred_at)
    .bind(at)
    .bind(pos)
    .execute(&mut **tx)
    .await?;
    Ok(applied)
}
