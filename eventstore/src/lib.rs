//! Chronicle's event store: the postgres-es schema extended with a global position, the
//! appending transaction's id, transaction time and a per-stream hash chain; guards that
//! make `events` append-only for every role; and what the append transaction writes
//! besides events (seat claims, idempotency records), enforced by the database.
//!
//! Commands load and append through [`repository::EventRepository`], two statements a
//! command, on postgres-es's tables (`docs/adr/0011`); the database enforces the rest
//! whoever writes (`docs/adr/0001`). The relay publishes the store to Kafka in commit
//! order; see `docs/adr/0005`.

pub mod chain;
pub mod clock;
pub mod consumer;
pub mod db;
pub mod deadline;
pub mod envelope;
pub mod error;
pub mod feed;
pub mod idempotency;
pub mod kafka;
pub mod merkle;
pub mod metrics;
pub mod notary;
pub mod personal;
pub mod relay;
pub mod repository;
pub mod wake;

pub use db::{DatabaseSettings, connect, ensure_database};
pub use error::{AppendRejection, StoreError};
/// postgres-es's repository: the reference [`repository::EventRepository`] is tested
/// against (ADR 0011).
pub use postgres_es::{PostgresCqrs, PostgresEventRepository};
