//! `accounts`, `account_ledger` and `account_balance_history`.

use std::collections::HashMap;

use chronicle_domain::AccountEvent;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Tx;
use super::apply::{Fresh, Order, Tally};
use super::history::Versions;

#[derive(sqlx::FromRow)]
struct Row {
    account_id: Uuid,
    owner: String,
    currency: String,
    balance: i64,
    overdraft_limit: i64,
    status: String,
    version: i64,
    opened_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_position: i64,
}

/// A ledger line: money in or out.
struct Movement {
    id: Uuid,
    sequence: i64,
    kind: &'static str,
    amount: i64,
    balance_after: i64,
    reference: Option<String>,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    position: i64,
}

/// The account's state after a change, as the history records it.
struct Balance {
    balance: i64,
    status: String,
    effective_at: DateTime<Utc>,
}

pub(crate) async fn apply(
    tx: &mut Tx<'_>,
    events: &[Fresh<'_, AccountEvent>],
) -> Result<Tally, sqlx::Error> {
    if events.is_empty() {
        return Ok(Tally::default());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let mut rows: HashMap<Uuid, Row> = sqlx::query_as::<_, Row>(
        "SELECT account_id, owner, currency, balance, overdraft_limit, status, version, opened_at, \
         updated_at, last_position FROM accounts WHERE account_id = ANY($1) \
         ORDER BY account_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|row| (row.account_id, row))
    .collect();
    let mut tally = Tally::default();
    let mut ledger = Vec::new();
    let mut history = Versions::new();
    let mut dirty = Vec::new();
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
        if !Order::of(rows.get(id).map(|row| row.version), seq).admits(&mut tally, pos) {
            continue;
        }
        let effective_at = match event.clone() {
            AccountEvent::AccountOpened {
                owner,
                currency,
                overdraft_limit,
                opened_at,
                ..
            } => {
                if rows.contains_key(id) {
                    tally.stale += 1;
                    continue;
                }
                rows.insert(
                    *id,
                    Row {
                        account_id: *id,
                        owner,
                        currency: currency.as_str().to_owned(),
                        balance: 0,
                        overdraft_limit,
                        status: "open".to_owned(),
                        version: seq,
                        opened_at,
                        updated_at: at,
                        last_position: pos,
                    },
                );
                opened_at
            }
            change => {
                let Some(row) = rows.get_mut(id).filter(|row| row.version < seq) else {
                    tally.stale += 1;
                    continue;
                };
                (row.version, row.updated_at, row.last_position) = (seq, at, pos);
                match change {
                    AccountEvent::FundsDeposited {
                        amount,
                        reference,
                        balance_after,
                        occurred_at,
                    }
                    | AccountEvent::FundsWithdrawn {
                        amount,
                        reference,
                        balance_after,
                        occurred_at,
                    } => {
                        row.balance = balance_after;
                        ledger.push(Movement {
                            id: *id,
                            sequence: seq,
                            kind: match event {
                                AccountEvent::FundsDeposited { .. } => "deposit",
                                _ => "withdrawal",
                            },
                            amount,
                            balance_after,
                            reference,
                            occurred_at,
                            recorded_at: at,
                            position: pos,
                        });
                        occurred_at
                    }
                    AccountEvent::AccountClosed { closed_at } => {
                        row.status = "closed".to_owned();
                        closed_at
                    }
                    AccountEvent::AccountOpened { opened_at, .. } => opened_at,
                }
            }
        };
        let row = &rows[id];
        history.push(
            *id,
            seq,
            at,
            Balance {
                balance: row.balance,
                status: row.status.clone(),
                effective_at,
            },
        );
        dirty.push(*id);
        tally.applied += 1;
    }
    dirty.sort();
    dirty.dedup();
    let changed: Vec<&Row> = dirty.iter().map(|id| &rows[id]).collect();
    upsert(tx, &changed).await?;
    record_movements(tx, &ledger).await?;
    record_history(tx, &history).await?;
    Ok(tally)
}

/// Writes the accounts' new states; an account's row only ever moves forward.
async fn upsert(tx: &mut Tx<'_>, rows: &[&Row]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let column = |field: fn(&Row) -> String| rows.iter().map(|r| field(r)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO accounts (account_id, owner, currency, balance, overdraft_limit, status, \
         version, opened_at, updated_at, last_position) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], \
                              $6::text[], $7::bigint[], $8::timestamptz[], $9::timestamptz[], \
                              $10::bigint[]) \
         ON CONFLICT (account_id) DO UPDATE SET balance = EXCLUDED.balance, \
             status = EXCLUDED.status, version = EXCLUDED.version, \
             updated_at = EXCLUDED.updated_at, last_position = EXCLUDED.last_position \
         WHERE accounts.version < EXCLUDED.version",
    )
    .bind(rows.iter().map(|r| r.account_id).collect::<Vec<_>>())
    .bind(column(|r| r.owner.clone()))
    .bind(column(|r| r.currency.clone()))
    .bind(rows.iter().map(|r| r.balance).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.overdraft_limit).collect::<Vec<_>>())
    .bind(column(|r| r.status.clone()))
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.opened_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.last_position).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn record_movements(tx: &mut Tx<'_>, ledger: &[Movement]) -> Result<(), sqlx::Error> {
    if ledger.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO account_ledger (account_id, sequence, kind, amount, balance_after, reference, \
         occurred_at, recorded_at, global_position) \
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], \
                              $6::text[], $7::timestamptz[], $8::timestamptz[], $9::bigint[]) \
         ON CONFLICT (account_id, sequence) DO NOTHING",
    )
    .bind(ledger.iter().map(|m| m.id).collect::<Vec<_>>())
    .bind(ledger.iter().map(|m| m.sequence).collect::<Vec<_>>())
    .bind(ledger.iter().map(|m| m.kind).collect::<Vec<_>>())
    .bind(ledger.iter().map(|m| m.amount).collect::<Vec<_>>())
    .bind(ledger.iter().map(|m| m.balance_after).collect::<Vec<_>>())
    .bind(
        ledger
            .iter()
            .map(|m| m.reference.clone())
            .collect::<Vec<_>>(),
    )
    .bind(ledger.iter().map(|m| m.occurred_at).collect::<Vec<_>>())
    .bind(ledger.iter().map(|m| m.recorded_at).collect::<Vec<_>>())
    .bind(ledger.iter().map(|m| m.position).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn record_history(tx: &mut Tx<'_>, history: &Versions<Balance>) -> Result<(), sqlx::Error> {
    if history.rows.is_empty() {
        return Ok(());
    }
    history
        .close_current(tx, "account_balance_history", "account_id")
        .await?;
    sqlx::query(
        "INSERT INTO account_balance_history (account_id, sequence, balance, status, effective_at, \
         valid_from, valid_to) \
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], \
                              $5::timestamptz[], $6::timestamptz[], $7::timestamptz[]) \
         ON CONFLICT (account_id, sequence) DO NOTHING",
    )
    .bind(history.ids())
    .bind(history.sequences())
    .bind(history.column(|b| b.balance))
    .bind(history.column(|b| b.status.clone()))
    .bind(history.column(|b| b.effective_at))
    .bind(history.valid_froms())
    .bind(history.valid_to())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
