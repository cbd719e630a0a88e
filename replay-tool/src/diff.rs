//! `diff`: replay the event store in memory through the domain's `apply` and compare
//! the result with the live read models (or search index). Memory grows with the number
//! of aggregates, not of events.

use std::collections::BTreeMap;
use std::fmt;

use chronicle_domain::account::AccountState;
use chronicle_domain::booking::BookingState;
use chronicle_domain::payment::PaymentState;
use chronicle_domain::subscription::SubscriptionState;
use chronicle_eventstore::envelope::{STORED_COLUMNS, StoredEvent};
use chronicle_projections::search::SearchIndex;
use futures::TryStreamExt;
use uuid::Uuid;

use chronicle_domain::subject::SUBJECT;
use chronicle_eventstore::personal::MasterKeys;
use chronicle_eventstore::personal::open::KeyRing;
use chronicle_eventstore::personal::seal::{SEALED_FIELD, place};

use crate::fold::{Kind, Replayer, State};
use crate::personal::place_of;
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
    /// Each subscription's state, version, and invoice lines its events make.
    pub subscriptions: BTreeMap<Uuid, (SubscriptionState, u64, i64)>,
    /// The data subjects' keys the replay opened with, to open the read rows alike.
    pub ring: KeyRing,
}

/// Replays every stream of the store.
pub async fn replay_store(
    conn: &mut sqlx::PgConnection,
    keys: &MasterKeys,
    show_progress: bool,
) -> anyhow::Result<Expected> {
    // The keys as of the same snapshot as the events: what a projection would open.
    let mut expected = Expected {
        ring: KeyRing::load(&mut *conn, keys).await?,
        ..Expected::default()
    };
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    let mut progress = Progress::new("replay", total as u64, show_progress);
    let replayer = Replayer::default();
    let query = format!(
        "SELECT {STORED_COLUMNS} FROM events ORDER BY aggregate_type COLLATE \"C\", aggregate_id COLLATE \"C\", sequence"
    );
    let mut rows = sqlx::query_as::<_, StoredEvent>(&query).fetch(&mut *conn);
    let mut current: Option<(String, String, State, i64)> = None;
    while let Some(mut event) = rows.try_next().await? {
        expected.events += 1;
        progress.advance(1);
        // Subject streams hold erasures, which the bookings' opened fields reflect.
        if event.aggregate_type == SUBJECT {
            continue;
        }
        let here = place_of(&event);
        expected.ring.open(&mut event.payload, &here)?;
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
            *moved += lines_made(&event);
        }
    }
    if let Some(done) = current.take() {
        expected.record(done);
    }
    progress.finish();
    Ok(expected)
}

/// The ledger or invoice lines `event` makes in its aggregate's read model.
fn lines_made(event: &StoredEvent) -> i64 {
    let amount = |field: &str| event.payload[field].as_i64().unwrap_or(0);
    let positive = |field: &str| i64::from(amount(field) != 0);
    match event.event_type.as_str() {
        "FundsDeposited" | "FundsWithdrawn" | "PaymentCaptured" | "PaymentRefunded" => 1,
        "PeriodCharged" => positive("amount"),
        "PlanChanged" => positive("credit") + positive("charge"),
        // One line for the unused share, refunded or settling the balance due.
        "SubscriptionCancelled" => i64::from(amount("refund") + amount("settled") != 0),
        _ => 0,
    }
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
            State::Subscription(sub) => {
                if let Some(s) = sub.state {
                    self.subscriptions.insert(id, (s, sub.version, moved));
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

/// A live `accounts` row with the counts of its ledger lines and balance versions.
type AccountRow = (Uuid, String, String, i64, i64, String, i64, i64, i64);
/// A live `bookings` row with the count of its status versions.
type BookingRow = (
    Uuid,
    String,
    i64,
    Option<Uuid>,
    String,
    i64,
    String,
    String,
    Option<String>,
    Option<serde_json::Value>,
);
/// A live `payments` row with the count of its ledger lines.
type PaymentRow = (Uuid, String, i64, i64, i32, i64, i64);

/// Reads every [`AccountRow`].
const ACCOUNT_ROWS: &str = "SELECT a.account_id, a.owner, a.currency, a.balance, a.overdraft_limit, a.status, a.version, \
                (SELECT count(*) FROM account_ledger l WHERE l.account_id = a.account_id), \
                (SELECT count(*) FROM account_balance_history h WHERE h.account_id = a.account_id) \
           FROM accounts a";
/// Reads every [`BookingRow`].
const BOOKING_ROWS: &str = "SELECT b.booking_id, b.status, b.version, b.payment_id, b.resource_id, \
                (SELECT count(*) FROM booking_status_history h WHERE h.booking_id = b.booking_id), \
                b.guest_name, b.guest_email, b.notes, b.personal \
           FROM bookings b";
/// Reads every [`PaymentRow`].
const PAYMENT_ROWS: &str = "SELECT p.payment_id, p.status, p.captured_total, p.refunded_total, p.charges_captured, p.version, \
                (SELECT count(*) FROM payment_ledger l WHERE l.payment_id = p.payment_id) \
           FROM payments p";

/// A live `subscriptions` row with the counts of its invoice lines and history versions.
type SubscriptionRow = (Uuid, String, i32, i64, i64, i64);

/// Reads every [`SubscriptionRow`].
const SUBSCRIPTION_ROWS: &str = "SELECT s.subscription_id, s.status, s.periods_charged, s.version, \
                (SELECT count(*) FROM subscription_invoices i WHERE i.subscription_id = s.subscription_id), \
                (SELECT count(*) FROM subscription_history h WHERE h.subscription_id = s.subscription_id) \
           FROM subscriptions s";

/// Opens the sealed guest and notes kept beside a booking row, as the query that shows
/// the booking does.
fn open_row(ring: &KeyRing, row: &mut BookingRow) -> anyhow::Result<()> {
    let Some(kept) = row.9.take() else {
        return Ok(());
    };
    let here = place(
        "Booking",
        &row.0.to_string(),
        kept["sequence"].as_i64().unwrap_or(1),
        kept["event_type"].as_str().unwrap_or_default(),
    );
    let mut payload = serde_json::json!({ SEALED_FIELD: kept["sealed"] });
    ring.open(&mut payload, &here)?;
    row.6 = payload["guest"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    row.7 = payload["guest"]["email"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    row.8 = payload["notes"].as_str().map(str::to_owned);
    Ok(())
}

/// Reads all rows of one read-model query, keyed by the aggregate id `key` picks out.
async fn load_rows<R>(
    conn: &mut sqlx::PgConnection,
    query: &str,
    key: impl Fn(&R) -> Uuid,
) -> anyhow::Result<BTreeMap<Uuid, R>>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    Ok(sqlx::query_as::<_, R>(query)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| (key(&row), row))
        .collect())
}

impl Differ {
    /// Checks that `live` holds exactly the aggregates of `expected`, then compares each
    /// row present in both with `row`.
    fn compare<R, E>(
        &mut self,
        model: &'static str,
        live: &BTreeMap<Uuid, R>,
        expected: &BTreeMap<Uuid, E>,
        row: impl Fn(&mut Self, &Uuid, &R, &E),
    ) {
        self.presence(model, live, expected.keys().copied());
        for (id, want) in expected {
            if let Some(found) = live.get(id) {
                row(self, id, found, want);
            }
        }
    }

    /// Compares one account with its ledger and balance history.
    fn account(
        &mut self,
        id: &Uuid,
        row: &AccountRow,
        (state, version, moved): &(AccountState, u64, i64),
    ) {
        let status = state.status().as_str();
        self.check(
            "accounts",
            id,
            "owner",
            row.1.as_str(),
            state.owner.as_str(),
        );
        self.check(
            "accounts",
            id,
            "currency",
            row.2.as_str(),
            state.currency.as_str(),
        );
        self.check("accounts", id, "balance", row.3, state.balance);
        self.check(
            "accounts",
            id,
            "overdraft_limit",
            row.4,
            state.overdraft_limit,
        );
        self.check("accounts", id, "status", row.5.as_str(), status);
        self.check("accounts", id, "version", row.6, *version as i64);
        self.check("account_ledger", id, "lines", row.7, *moved);
        self.check(
            "account_balance_history",
            id,
            "versions",
            row.8,
            *version as i64,
        );
    }

    /// Compares one booking with its status history.
    fn booking(&mut self, id: &Uuid, row: &BookingRow, (state, version): &(BookingState, u64)) {
        self.check(
            "bookings",
            id,
            "status",
            row.1.as_str(),
            state.status.as_str(),
        );
        self.check("bookings", id, "version", row.2, *version as i64);
        self.check("bookings", id, "payment_id", row.3, state.payment_id);
        self.check(
            "bookings",
            id,
            "resource_id",
            row.4.as_str(),
            state.resource_id.as_str(),
        );
        self.check(
            "booking_status_history",
            id,
            "versions",
            row.5,
            *version as i64,
        );
        // The personal fields as the keys open them now: erased ones erased.
        self.check(
            "bookings",
            id,
            "guest_name",
            row.6.as_str(),
            state.guest.name.as_str(),
        );
        self.check(
            "bookings",
            id,
            "guest_email",
            row.7.as_str(),
            state.guest.email.as_str(),
        );
        self.check(
            "bookings",
            id,
            "notes",
            row.8.as_deref(),
            state.notes.as_deref(),
        );
    }

    /// Compares one payment with its ledger.
    fn payment(
        &mut self,
        id: &Uuid,
        row: &PaymentRow,
        (state, version, moved): &(PaymentState, u64, i64),
    ) {
        self.check(
            "payments",
            id,
            "status",
            row.1.as_str(),
            state.status.as_str(),
        );
        self.check(
            "payments",
            id,
            "captured_total",
            row.2,
            state.captured_total,
        );
        self.check(
            "payments",
            id,
            "refunded_total",
            row.3,
            state.refunded_total,
        );
        self.check(
            "payments",
            id,
            "charges_captured",
            row.4,
            state.charges_captured as i32,
        );
        self.check("payments", id, "version", row.5, *version as i64);
        self.check("payment_ledger", id, "lines", row.6, *moved);
    }

    /// Compares one subscription with its invoices and history.
    fn subscription(
        &mut self,
        id: &Uuid,
        row: &SubscriptionRow,
        (state, version, lines): &(SubscriptionState, u64, i64),
    ) {
        let model = "subscriptions";
        self.check(model, id, "status", row.1.as_str(), state.status.as_str());
        self.check(
            model,
            id,
            "periods_charged",
            row.2,
            state.periods_charged as i32,
        );
        self.check(model, id, "version", row.3, *version as i64);
        self.check("subscription_invoices", id, "lines", row.4, *lines);
        self.check(
            "subscription_history",
            id,
            "versions",
            row.5,
            *version as i64,
        );
    }
}

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
    let accounts = load_rows(conn, ACCOUNT_ROWS, |row: &AccountRow| row.0).await?;
    differ.compare("accounts", &accounts, &expected.accounts, Differ::account);
    let mut bookings = load_rows(conn, BOOKING_ROWS, |row: &BookingRow| row.0).await?;
    for row in bookings.values_mut() {
        open_row(&expected.ring, row)?;
    }
    differ.compare("bookings", &bookings, &expected.bookings, Differ::booking);
    let payments = load_rows(conn, PAYMENT_ROWS, |row: &PaymentRow| row.0).await?;
    differ.compare("payments", &payments, &expected.payments, Differ::payment);
    let subscriptions = load_rows(conn, SUBSCRIPTION_ROWS, |row: &SubscriptionRow| row.0).await?;
    differ.compare(
        "subscriptions",
        &subscriptions,
        &expected.subscriptions,
        Differ::subscription,
    );
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
            differ.check(
                "search",
                id,
                "guest_name",
                doc.guest.name.as_str(),
                state.guest.name.as_str(),
            );
            differ.check(
                "search",
                id,
                "guest_email",
                doc.guest.email.as_str(),
                state.guest.email.as_str(),
            );
            differ.check(
                "search",
                id,
                "notes",
                doc.notes.as_deref(),
                state.notes.as_deref(),
            );
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
