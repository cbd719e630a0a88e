//! `accounts`, `account_ledger` and `account_balance_history`.

use std::collections::HashMap;

use chronicle_domain::{AccountEvent, AccountStatus};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Tx;
use super::fold::{At, Fold, Folded, Stamp, Table, stored_word};
use super::history::Versions;
use super::unnest::Unnest;

/// An account's row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    account_id: Uuid,
    owner: String,
    currency: String,
    balance: i64,
    overdraft_limit: i64,
    status: AccountStatus,
    opened_at: DateTime<Utc>,
    stamp: Stamp,
}

#[derive(sqlx::FromRow)]
struct Stored {
    account_id: Uuid,
    owner: String,
    currency: String,
    balance: i64,
    overdraft_limit: i64,
    status: String,
    opened_at: DateTime<Utc>,
    #[sqlx(flatten)]
    stamp: Stamp,
}

/// A ledger line: money in or out.
#[derive(Debug, PartialEq)]
pub(crate) struct Movement {
    id: Uuid,
    sequence: i64,
    kind: &'static str,
    amount: i64,
    balance_after: i64,
    reference: Option<String>,
    occurred_at: DateTime<Utc>,
    at: At,
}

/// The account's state after a change, as the history records it.
#[derive(Debug, PartialEq)]
pub(crate) struct Balance {
    balance: i64,
    status: AccountStatus,
    effective_at: DateTime<Utc>,
}

/// What a batch of account events writes besides the accounts' rows.
#[derive(Default)]
pub(crate) struct Accounts {
    ledger: Vec<Movement>,
    history: Versions<Balance>,
    /// When the latest change took effect in the world (not when it was recorded).
    effective_at: Option<DateTime<Utc>>,
}

impl Fold for Accounts {
    type Event = AccountEvent;
    type State = Row;

    fn stamp(row: &mut Row) -> &mut Stamp {
        &mut row.stamp
    }

    fn open(&mut self, id: Uuid, event: &AccountEvent, at: At) -> Option<Row> {
        let AccountEvent::AccountOpened {
            owner,
            currency,
            overdraft_limit,
            opened_at,
            ..
        } = event
        else {
            return None;
        };
        self.effective_at = Some(*opened_at);
        Some(Row {
            account_id: id,
            owner: owner.clone(),
            currency: currency.as_str().to_owned(),
            balance: 0,
            overdraft_limit: *overdraft_limit,
            status: AccountStatus::Open,
            opened_at: *opened_at,
            stamp: Stamp::from(at),
        })
    }

    fn change(&mut self, id: Uuid, row: &mut Row, event: &AccountEvent, at: At) -> bool {
        let (kind, amount, reference, balance_after, occurred_at) = match event {
            AccountEvent::AccountOpened { .. } => return false,
            AccountEvent::AccountClosed { closed_at } => {
                row.status = AccountStatus::Closed;
                self.effective_at = Some(*closed_at);
                return true;
            }
            AccountEvent::FundsDeposited {
                amount,
                reference,
                balance_after,
                occurred_at,
            } => ("deposit", amount, reference, balance_after, occurred_at),
            AccountEvent::FundsWithdrawn {
                amount,
                reference,
                balance_after,
                occurred_at,
            } => ("withdrawal", amount, reference, balance_after, occurred_at),
        };
        row.balance = *balance_after;
        self.effective_at = Some(*occurred_at);
        self.ledger.push(Movement {
            id,
            sequence: at.sequence,
            kind,
            amount: *amount,
            balance_after: *balance_after,
            reference: reference.clone(),
            occurred_at: *occurred_at,
            at,
        });
        true
    }

    fn applied(&mut self, id: Uuid, row: &Row, at: At) {
        let balance = Balance {
            balance: row.balance,
            status: row.status,
            effective_at: self.effective_at.take().unwrap_or(at.recorded_at),
        };
        self.history.push(id, at.sequence, at.recorded_at, balance);
    }
}

impl Table for Accounts {
    async fn load(tx: &mut Tx<'_>, ids: &[Uuid]) -> Result<HashMap<Uuid, Row>, sqlx::Error> {
        let stored: Vec<Stored> = sqlx::query_as(
            "SELECT account_id, owner, currency, balance, overdraft_limit, status, opened_at, \
             version, updated_at, last_position FROM accounts WHERE account_id = ANY($1) \
             ORDER BY account_id FOR UPDATE",
        )
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
        stored
            .into_iter()
            .map(|row| {
                let status = stored_word(
                    AccountStatus::parse,
                    &row.status,
                    format_args!("account {} status", row.account_id),
                )?;
                let row = Row {
                    account_id: row.account_id,
                    owner: row.owner,
                    currency: row.currency,
                    balance: row.balance,
                    overdraft_limit: row.overdraft_limit,
                    status,
                    opened_at: row.opened_at,
                    stamp: row.stamp,
                };
                Ok((row.account_id, row))
            })
            .collect()
    }

    async fn write(tx: &mut Tx<'_>, folded: &Folded<Self>) -> Result<(), sqlx::Error> {
        let mut touched: Vec<&Row> = folded.states_of(&folded.created).collect();
        touched.extend(folded.states_of(&folded.changed));
        touched.sort_by_key(|row| row.account_id);
        // An account's row only ever moves forward.
        Unnest::of(&touched)
            .column("account_id", |r| r.account_id)
            .column("owner", |r| r.owner.as_str())
            .column("currency", |r| r.currency.as_str())
            .column("balance", |r| r.balance)
            .column("overdraft_limit", |r| r.overdraft_limit)
            .column("status", |r| r.status.as_str())
            .column("version", |r| r.stamp.version)
            .column("opened_at", |r| r.opened_at)
            .column("updated_at", |r| r.stamp.updated_at)
            .column("last_position", |r| r.stamp.last_position)
            .insert(
                "accounts",
                "ON CONFLICT (account_id) DO UPDATE SET balance = EXCLUDED.balance, \
                     status = EXCLUDED.status, version = EXCLUDED.version, \
                     updated_at = EXCLUDED.updated_at, last_position = EXCLUDED.last_position \
                 WHERE t.version < EXCLUDED.version",
            )
            .execute(tx)
            .await?;
        let ledger = &folded.effects.ledger;
        Unnest::of(ledger)
            .column("account_id", |m| m.id)
            .column("sequence", |m| m.sequence)
            .column("kind", |m| m.kind)
            .column("amount", |m| m.amount)
            .column("balance_after", |m| m.balance_after)
            .column("reference", |m| m.reference.as_deref())
            .column("occurred_at", |m| m.occurred_at)
            .column("recorded_at", |m| m.at.recorded_at)
            .column("global_position", |m| m.at.position)
            .insert(
                "account_ledger",
                "ON CONFLICT (account_id, sequence) DO NOTHING",
            )
            .execute(tx)
            .await?;
        folded
            .effects
            .history
            .write(tx, "account_balance_history", "account_id", |rows| {
                rows.column("balance", |v| v.state.balance)
                    .column("status", |v| v.state.status.as_str())
                    .column("effective_at", |v| v.state.effective_at)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use chronicle_domain::Currency;

    use super::super::fold::fold;
    use super::super::fold::tests::at;
    use super::*;

    const ID: Uuid = Uuid::from_u128(7);

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap_or_default()
    }

    fn events() -> Vec<AccountEvent> {
        vec![
            AccountEvent::AccountOpened {
                account_id: ID,
                owner: "alice".into(),
                currency: Currency::parse("EUR").unwrap(),
                overdraft_limit: 500,
                opened_at: t(100),
            },
            AccountEvent::FundsDeposited {
                amount: 1_000,
                reference: Some("salary".into()),
                balance_after: 1_000,
                occurred_at: t(200),
            },
            AccountEvent::FundsWithdrawn {
                amount: 300,
                reference: None,
                balance_after: 700,
                occurred_at: t(300),
            },
            AccountEvent::AccountClosed { closed_at: t(400) },
        ]
    }

    #[test]
    fn an_account_folds_into_its_row_ledger_and_balance_history() {
        let events = events();
        let folded = fold::<Accounts>(
            HashMap::new(),
            events.iter().zip(1..).map(|(e, n)| (ID, e, at(n))),
        );
        assert_eq!(folded.created, vec![ID]);
        let row = &folded.states[&ID];
        assert_eq!((row.balance, row.status), (700, AccountStatus::Closed));
        assert_eq!(row.stamp, Stamp::from(at(4)));
        assert_eq!(row.opened_at, t(100));
        let ledger: Vec<_> = folded
            .effects
            .ledger
            .iter()
            .map(|m| (m.kind, m.amount, m.balance_after, m.reference.as_deref()))
            .collect();
        assert_eq!(
            ledger,
            vec![
                ("deposit", 1_000, 1_000, Some("salary")),
                ("withdrawal", 300, 700, None)
            ]
        );
        let history: Vec<_> = folded
            .effects
            .history
            .rows
            .iter()
            .map(|v| {
                (
                    v.sequence,
                    v.state.balance,
                    v.state.status,
                    v.state.effective_at,
                )
            })
            .collect();
        assert_eq!(
            history,
            vec![
                (1, 0, AccountStatus::Open, t(100)),
                (2, 1_000, AccountStatus::Open, t(200)),
                (3, 700, AccountStatus::Open, t(300)),
                (4, 700, AccountStatus::Closed, t(400)),
            ]
        );
    }

    #[test]
    fn a_second_opening_is_not_applied() {
        let events = events();
        let mut opened = fold::<Accounts>(HashMap::new(), [(ID, &events[0], at(1))]).states;
        let again = fold::<Accounts>(std::mem::take(&mut opened), [(ID, &events[0], at(2))]);
        assert_eq!(again.tally.stale, 1);
        assert!(again.changed.is_empty());
        assert!(again.effects.history.rows.is_empty());
    }
}
