//! `diff`: replay the event store in memory through the domain's `apply` and compare
//! the result with the live read models (or search index). Memory grows with the number
//! of aggregates, not of events.

use std::collections::BTreeMap;
use std::fmt;

use chronicle_domain::account::AccountState;
use chronicle_domain::booking::BookingState;
use chronicle_domain::payment::PaymentState;
use chronicle_eventstore::envelope::{STORED_COLUMNS, StoredEvent};
use chronicle_projections::search::SearchIndex;
use futures::TryStreamExt;
use uuid::Uuid;

use crate::fold::{Kind, Replayer, State};
use crate::progress::Progress;

/// One difference between what the events say and what a read model holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    pub model: &'static str,
    pub key: String,
    pub detail: String,
}

impl fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.model, self.key, self.detail)
    }
}

/// What replaying the store says the read models must hold.
#[derive(Default)]
pub struct Expected {
    pub events: u64,
    pub accounts: BTreeMap<Uuid, (AccountState, u64, i64)>,
    pub bookings: BTreeMap<Uuid, (BookingState, u64)>,
    pub payments: BTreeMap<Uuid, (PaymentState, u64, i64)>,
}

/// Replays every stream of the store.
pub async fn replay_store(
    conn: &mut sqlx::PgConnection,
    show_progress: bool,
) -> anyhow::Result<Expected> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    let mut progress = Progress::new("replay", total as u64, show_progress);
    let replayer = Replayer::default();
    let query = format!(
        "SELECT {STORED_COLUMNS} FROM events ORDER BY aggregate_type COLLATE \"C\", aggregate_id COLLATE \"C\", sequence"
    );
    let mut rows = sqlx::query_as::<_, StoredEvent>(&query).fetch(&mut *conn);
    let mut expected = Expected::default();
    let mut current: Option<(String, String, State, i64)> = None;
    while let Some(event) = rows.try_next().await? {
        expected.events += 1;
        progress.advance(1);
        let same = current
            .as_ref()
            .is_some_and(|(t, i, _, _)| *t == event.aggregate_type && *i == event.aggregate_id);
        if !same {
            if let Some(done) = current.take() {
                expected.record(done);
            }
            let Some(kind) = Kind::parse(&event.aggregate_type) else {
                anyhow::bail!("unknown aggregate type {:?}", event.aggregate_type);
            };
            current = Some((
                event.aggregate_type.clone(),
                event.aggregate_id.clone(),
                replayer.start(kind),
                0,
            ));
        }
        if let Some((_, _, state, moved)) = current.as_mut() {
            replayer.apply(state, &event).map_err(anyhow::Error::msg)?;
            if matches!(
                event.event_type.as_str(),
                "FundsDeposited" | "FundsWithdrawn" | "PaymentCaptured" | "PaymentRefunded"
            ) {
                *moved += 1;
            }
        }
    }
    if let Some(done) = current.take() {
        expected.record(done);
    }
    progress.finish();
    Ok(expected)
}

impl Expected {
    fn record(&mut self, (_, id, state, moved): (String, String, State, i64)) {
        let Ok(id) = Uuid::parse_str(&id) else {
            return;
        };
        match state {
            State::Account(a) => {
                if let Some(s) = a.state {
                    self.accounts.insert(id, (s, a.version, moved));
                }
            }
            State::Booking(b) => {
                if let Some(s) = b.state {
                    self.bookings.insert(id, (s, b.version));
                }
            }
            State::Payment(p) => {
                if let Some(s) = p.state {
                    self.payments.insert(id, (s, p.version, moved));
                }
            }
        }
    }
}

struct Differ {
    found: Vec<Discrepancy>,
}

impl Differ {
    fn check<T: PartialEq + fmt::Debug>(
        &mut self,
        model: &'static str,
        key: &Uuid,
        field: &str,
        live: T,
        expected: T,
    ) {
        if live != expected {
            self.found.push(Discrepancy {
                model,
                key: key.to_string(),
                detail: format!("{field} is {live:?}, the events say {expected:?}"),
            });
        }
    }

    fn presence<V>(
        &mut self,
        model: &'static str,
        live: &BTreeMap<Uuid, V>,
        expected: impl Iterator<Item = Uuid>,
    ) {
        let mut expected: Vec<Uuid> = expected.collect();
        expected.sort();
        for id in &expected {
            if !live.contains_key(id) {
                self.found.push(Discrepancy {
                    model,
                    key: id.to_string(),
                    detail: "missing from the read model".into(),
                });
            }
        }
        for id in live.keys() {
            if expected.binary_search(id).is_err() {
                self.found.push(Discrepancy {
                    model,
                    key: id.to_string(),
                    detail: "in the read model but not in the events".into(),
                });
            }
        }
    }
}

type AccountRow = (Uuid, String, String, i64, i64, String, i64, i64, i64);
type BookingRow = (Uuid, String, i64, Option<Uuid>, String, i64);
type PaymentRow = (Uuid, String, i64, i64, i32, i64, i64);

/// Compares the PostgreSQL read models with the replayed store.
pub async fn diff_read_models(
    conn: &mut sqlx::PgConnection,
    expected: &Expected,
) -> anyhow::Result<Vec<Discrepancy>> {
    let mut differ = Differ { found: Vec::new() };
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_applied_events")
        .fetch_one(&mut *conn)
        .await?;
    differ.check(
        "rm_applied_events",
        &Uuid::nil(),
        "events applied",
        applied,
        expected.events as i64,
    );

    let accounts: BTreeMap<Uuid, AccountRow> = sqlx::query_as::<_, AccountRow>(
        "SELECT a.account_id, a.owner, a.currency, a.balance, a.overdraft_limit, a.status, a.version, \
                (SELECT count(*) FROM account_ledger l WHERE l.account_id = a.account_id), \
                (SELECT count(*) FROM account_balance_history h WHERE h.account_id = a.account_id) \
           FROM accounts a",
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.0, row))
    .collect();
    differ.presence("accounts", &accounts, expected.accounts.keys().copied());
    for (id, (state, version, moved)) in &expected.accounts {
        if let Some(row) = accounts.get(id) {
            let status = state.status().as_str();
            differ.check(
                "accounts",
                id,
                "owner",
                row.1.as_str(),
                state.owner.as_str(),
            );
            differ.check(
                "accounts",
                id,
                "currency",
                row.2.as_str(),
                state.currency.as_str(),
            );
            differ.check("accounts", id, "balance", row.3, state.balance);
            differ.check(
                "accounts",
                id,
                "overdraft_limit",
                row.4,
                state.overdraft_limit,
            );
            differ.check("accounts", id, "status", row.5.as_str(), status);
            differ.check("accounts", id, "version", row.6, *version as i64);
            differ.check("account_ledger", id, "lines", row.7, *moved);
            differ.check(
                "account_balance_history",
                id,
                "versions",
                row.8,
                *version as i64,
            );
        }
    }

    let bookings: BTreeMap<Uuid, BookingRow> = sqlx::query_as::<_, BookingRow>(
        "SELECT b.booking_id, b.status, b.version, b.payment_id, b.resource_id, \
                (SELECT count(*) FROM booking_status_history h WHERE h.booking_id = b.booking_id) \
           FROM bookings b",
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.0, row))
    .collect();
    differ.presence("bookings", &bookings, expected.bookings.keys().copied());
    for (id, (state, version)) in &expected.bookings {
        if let Some(row) = bookings.get(id) {
            differ.check(
                "bookings",
                id,
                "status",
                row.1.as_str(),
                state.status.as_str(),
            );
            differ.check("bookings", id, "version", row.2, *version as i64);
            differ.check("bookings", id, "payment_id", row.3, state.payment_id);
            differ.check(
                "bookings",
                id,
                "resource_id",
                row.4.as_str(),
                state.resource_id.as_str(),
            );
            differ.check(
                "booking_status_history",
                id,
                "versions",
                row.5,
                *version as i64,
            );
        }
    }

    let payments: BTreeMap<Uuid, PaymentRow> = sqlx::query_as::<_, PaymentRow>(
        "SELECT p.payment_id, p.status, p.captured_total, p.refunded_total, p.charges_captured, p.version, \
                (SELECT count(*) FROM payment_ledger l WHERE l.payment_id = p.payment_id) \
           FROM payments p",
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.0, row))
    .collect();
    differ.presence("payments", &payments, expected.payments.keys().copied());
    for (id, (state, version, moved)) in &expected.payments {
        if let Some(row) = payments.get(id) {
            differ.check(
                "payments",
                id,
                "status",
                row.1.as_str(),
                state.status.as_str(),
            );
            differ.check(
                "payments",
                id,
                "captured_total",
                row.2,
                state.captured_total,
            );
            differ.check(
                "payments",
                id,
                "refunded_total",
                row.3,
                state.refunded_total,
            );
            differ.check(
                "payments",
                id,
                "charges_captured",
                row.4,
                state.charges_captured as i32,
            );
            differ.check("payments", id, "version", row.5, *version as i64);
            differ.check("payment_ledger", id, "lines", row.6, *moved);
        }
    }
    Ok(differ.found)
}

/// Compares the search index with the replayed store: each booking exactly once, at
/// its current status and version, and nothing else.
pub fn diff_search(index: &SearchIndex, expected: &Expected) -> anyhow::Result<Vec<Discrepancy>> {
    let mut differ = Differ { found: Vec::new() };
    index.refresh()?;
    for (id, (state, version)) in &expected.bookings {
        let copies = index.copies(*id)?;
        differ.check("search", id, "documents", copies, 1);
        if let Some(doc) = index.get(*id)? {
            differ.check(
                "search",
                id,
                "status",
                doc.status.as_str(),
                state.status.as_str(),
            );
            differ.check("search", id, "version", doc.version, *version as i64);
        }
    }
    differ.check(
        "search",
        &Uuid::nil(),
        "documents in the index",
        index.len(),
        expected.bookings.len() as u64,
    );
    Ok(differ.found)
}
