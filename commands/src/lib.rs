//! Chronicle's application services: a `CqrsFramework` per aggregate over postgres-es's
//! repository, with snapshots and upcasters; command metadata (actor, correlation,
//! causation, request); server-side retries of optimistic-lock conflicts; and the
//! translation of the database's refusals into typed errors; and the process manager
//! that ties bookings, payments and accounts together.

mod error;
mod locks;
mod metadata;
mod metrics;
pub mod process;
pub mod schema;
mod service;

pub use error::CommandError;
pub use metadata::{CommandMetadata, IdempotencyClaim};
pub use service::{CommandOutcome, CommandService, CommandSettings};
