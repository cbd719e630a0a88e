//! Chronicle's read side: projectors that consume the event topics and maintain read
//! models, and the readers queries use.
//!
//! - [`consumer`] (from the event store crate): the partition-aware consumer loop. It does
//!   not trust Kafka's committed offsets: each projection stores its own per partition,
//!   atomically with its effects, and the loop seeks to them and drops what they say
//!   was applied already.
//! - [`read_models`]: the PostgreSQL projection (accounts, ledger, bookings, payments,
//!   subscriptions).
//! - [`search`]: the Tantivy projection of bookings and its queries.
//! - [`queries`]: what the API reads, with keyset cursors.
//! - [`temporal`]: as-of lookups and time buckets over the temporal read models.
//! - [`subscriptions`]: a subscription, its invoices, and as-of counts and MRR.
//! - [`watch`]: read-your-writes (`min_position`).
//! - [`feed`]: the live feed (Server-Sent Events) and its resume points.
//! - [`monitor`]: relay and projector lag for `/metrics` and `/readyz`.

pub use chronicle_eventstore::consumer;
pub mod feed;
pub mod metrics;
pub mod monitor;
pub mod queries;
pub mod read_models;
pub mod search;
pub mod subscriptions;
pub mod temporal;
pub mod watch;

pub use consumer::{
    Assignment, ConsumerError, Delivered, OffsetStoringConsumer, Projector, ProjectorSettings,
};

/// The migrations of the read-model tables (the later ones; the first read-model tables
/// were created by migrations the event store crate still holds, see ADR 0018). Applied
/// with every other crate's by `chronicle_commands::schema`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
