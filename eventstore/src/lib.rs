//! Chronicle's event store: the postgres-es schema extended with a global position, the
//! appending transaction's id, transaction time and a per-stream hash chain; guards that
//! make `events` append-only for every role; and what the append transaction writes
//! besides events (seat claims, idempotency records), enforced by the database.
//!
//! Writes go through postgres-es's repository unchanged; see `docs/adr/0001`. The
//! relay publishes the store to Kafka in commit order; see `docs/adr/0005`.

pub mod chain;
pub mod consumer;
pub mod db;
pub mod envelope;
pub mod error;
pub mod idempotency;
pub mod kafka;
pub mod metrics;
pub mod relay;
pub mod stream;

pub use db::{DatabaseSettings, connect, ensure_database, migrate};
pub use error::{AppendRejection, StoreError};
pub use postgres_es::{PostgresCqrs, PostgresEventRepository};
