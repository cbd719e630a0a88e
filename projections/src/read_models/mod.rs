//! The PostgreSQL read models, twelve tables: `accounts`, `account_ledger` and
//! `account_balance_history` (account.rs); `bookings` and `booking_status_history`
//! (booking.rs); `payments`, `payment_ledger` and `payment_schedules` (payment.rs);
//! `subscriptions`, `subscription_invoices` and `subscription_history`
//! (subscription.rs); and `rm_applied_events`, the journal of applied events (apply.rs). The projector also
//! writes its offsets (`projector_offsets`) and what it cannot read
//! (`projector_dead_letters`).
//!
//! Each batch is one transaction: the changes, a row per applied event in
//! `rm_applied_events` (what `min_position` waits on, and a duplicate guard), and the
//! next offset of each partition. Every change is also guarded by the aggregate's
//! version: a duplicate or stale event is a no-op, and an event whose predecessor is not
//! applied yet waits for its resend (see `apply::Order`).

mod account;
mod apply;
mod booking;
mod fold;
mod history;
mod payment;
mod subscription;
mod unnest;

pub use apply::{BatchOutcome, Source, apply_delivered, apply_envelopes};
pub use payment::ScheduleStatus;
pub use subscription::mrr;

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{PgPool, Postgres, Transaction};

use crate::consumer::{
    ConsumerError, Delivered, OffsetStoringConsumer, PartitionKey, dead_letter, load_offsets,
    store_offsets,
};
use crate::metrics;

/// A table the read-model projector writes, with the columns its rows are keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTable {
    pub name: &'static str,
    pub key: &'static str,
}

/// Every table the read-model projector writes: the one list that rebuilds, tests and
/// benchmarks use.
pub const TABLES: [ReadTable; 12] = [
    ReadTable {
        name: "accounts",
        key: "account_id",
    },
    ReadTable {
        name: "account_ledger",
        key: "account_id, sequence",
    },
    ReadTable {
        name: "account_balance_history",
        key: "account_id, sequence",
    },
    ReadTable {
        name: "bookings",
        key: "booking_id",
    },
    ReadTable {
        name: "booking_status_history",
        key: "booking_id, sequence",
    },
    ReadTable {
        name: "payments",
        key: "payment_id",
    },
    ReadTable {
        name: "payment_schedules",
        key: "payment_id",
    },
    ReadTable {
        name: "payment_ledger",
        key: "payment_id, sequence",
    },
    ReadTable {
        name: "subscriptions",
        key: "subscription_id",
    },
    ReadTable {
        name: "subscription_invoices",
        key: "subscription_id, sequence, line",
    },
    ReadTable {
        name: "subscription_history",
        key: "subscription_id, sequence",
    },
    ReadTable {
        name: "rm_applied_events",
        key: "global_position",
    },
];

/// The channel a batch commit notifies, for read-your-writes waiters.
pub const PROJECTED_CHANNEL: &str = "chronicle_projected";

/// The read-model projector's name (offsets, consumer group, metrics).
pub const READ_MODELS: &str = "read-models";

/// A transaction on the read models' database.
pub type Tx<'a> = Transaction<'a, Postgres>;

/// Observes a batch being applied; tests use it to stop a projector mid-batch.
pub trait ApplyObserver: Send + Sync {
    /// Called once batch number `batch` (from 1) is applied, before it commits.
    fn before_commit(&self, batch: u64) -> futures::future::BoxFuture<'_, ()>;
}

/// The read-model projection.
pub struct ReadModels {
    pool: PgPool,
    name: String,
    observer: Option<Arc<dyn ApplyObserver>>,
    batches: std::sync::atomic::AtomicU64,
}

impl ReadModels {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            name: READ_MODELS.to_owned(),
            observer: None,
            batches: Default::default(),
        }
    }

    /// Lets `observer` watch each batch.
    #[must_use]
    pub fn observed_by(mut self, observer: Arc<dyn ApplyObserver>) -> Self {
        self.observer = Some(observer);
        self
    }
}

impl OffsetStoringConsumer for ReadModels {
    fn name(&self) -> &str {
        &self.name
    }

    async fn stored_offsets(&self) -> Result<HashMap<PartitionKey, i64>, ConsumerError> {
        Ok(load_offsets(&self.pool, &self.name).await?)
    }

    async fn apply_batch(&self, batch: &[Delivered]) -> Result<(), ConsumerError> {
        let number = self
            .batches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let mut tx = self.pool.begin().await?;
        let mut envelopes = Vec::with_capacity(batch.len());
        let mut sources = Vec::with_capacity(batch.len());
        let mut offsets = HashMap::with_capacity(batch.len());
        for delivered in batch {
            match delivered.envelope() {
                Ok(envelope) => {
                    offsets
                        .entry(envelope.global_position)
                        .or_insert((delivered.partition, delivered.offset));
                    envelopes.push(envelope);
                    sources.push(delivered);
                }
                Err(reason) => dead_letter(&mut *tx, &self.name, delivered, &reason).await?,
            }
        }
        let outcome = apply_delivered(&mut tx, &envelopes, &offsets).await?;
        for (index, reason) in &outcome.unreadable {
            dead_letter(&mut *tx, &self.name, sources[*index], reason).await?;
        }
        metrics::PROJECTOR_DUPLICATE_EVENTS
            .with_label_values(&[&self.name])
            .inc_by(outcome.duplicates as u64);
        if outcome.early > 0 {
            tracing::info!(
                projector = %self.name,
                early = outcome.early,
                "events ahead of their predecessor set aside until their resend"
            );
            metrics::PROJECTOR_EARLY_EVENTS
                .with_label_values(&[&self.name])
                .inc_by(outcome.early as u64);
        }
        // The next offset of every partition in the batch, with the batch's effects.
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for delivered in batch {
            let offset = next
                .entry((&delivered.topic, delivered.partition))
                .or_default();
            *offset = (*offset).max(delivered.offset + 1);
        }
        store_offsets(&mut *tx, &self.name, &next).await?;
        if let Some(observer) = &self.observer {
            observer.before_commit(number).await;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(PROJECTED_CHANNEL)
            .bind(&self.name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chronicle_domain::{
        AccountStatus, BookingStatus, PaymentKind, PaymentStatus, checked_words,
    };

    use super::ScheduleStatus;

    const WORDS: &str = include_str!("../../migrations/20261206000001_read_model_words.sql");

    fn words<T: Copy>(all: &[T], word: fn(T) -> &'static str) -> Vec<String> {
        all.iter().map(|v| word(*v).to_owned()).collect()
    }

    #[test]
    fn each_status_column_allows_exactly_its_enums_words() {
        let accounts = words(AccountStatus::ALL, AccountStatus::as_str);
        let bookings = words(BookingStatus::ALL, BookingStatus::as_str);
        for (constraint, expected) in [
            ("accounts_status_words", accounts.clone()),
            ("account_balance_history_status_words", accounts),
            ("bookings_status_words", bookings.clone()),
            ("booking_status_history_status_words", bookings),
            (
                "payments_status_words",
                words(PaymentStatus::ALL, PaymentStatus::as_str),
            ),
            (
                "payments_kind_words",
                words(PaymentKind::ALL, PaymentKind::as_str),
            ),
            (
                "payment_schedules_status_words",
                words(ScheduleStatus::ALL, ScheduleStatus::as_str),
            ),
        ] {
            assert_eq!(checked_words(WORDS, constraint), expected, "{constraint}");
        }
    }
}
