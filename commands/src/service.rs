//! The command service: one `CqrsFramework` per aggregate over postgres-es's repository.

use std::time::Duration;

use chronicle_domain::{Account, Booking, DomainError, Issued, Payment};
use chronicle_eventstore::error::is_unavailable;
use chronicle_eventstore::stream::{self, StreamPoint};
use chronicle_eventstore::{AppendRejection, PostgresCqrs, PostgresEventRepository};
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, EventStore};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::CommandError;
use crate::locks::StripedLocks;
use crate::metadata::CommandMetadata;

/// Tunables of the write side.
#[derive(Clone, Debug)]
pub struct CommandSettings {
    /// `CHRONICLE_SNAPSHOT_EVERY`: a snapshot is stored every this many events of a
    /// stream, so loading an aggregate reads at most this many events.
    pub snapshot_every: usize,
    /// How many times a command is tried against concurrent writers before giving up.
    pub max_attempts: u32,
}

impl Default for CommandSettings {
    fn default() -> Self {
        Self {
            snapshot_every: 50,
            max_attempts: 20,
        }
    }
}

/// Where a command left its aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandOutcome {
    pub aggregate_id: Uuid,
    /// The aggregate's version (its last sequence) after the command.
    pub version: i64,
    /// The global position of the command's last event, or of the stream's newest event
    /// when the command was a no-op.
    pub position: i64,
    /// Whether the command appended anything.
    pub appended: bool,
}

type Store<A> = PersistedEventStore<PostgresEventRepository, A>;

struct Handle<A: Aggregate> {
    cqrs: PostgresCqrs<A>,
    store: Store<A>,
}

impl<A: Aggregate<Services = ()>> Handle<A> {
    fn new(pool: &PgPool, settings: &CommandSettings) -> Self {
        let store = || {
            PersistedEventStore::new_snapshot_store(
                PostgresEventRepository::new(pool.clone()),
                settings.snapshot_every.max(1),
            )
            .with_upcasters(chronicle_domain::upcast::upcasters())
        };
        Self {
            cqrs: CqrsFramework::new(store(), vec![Box::new(crate::metrics::CountAppended)], ()),
            store: store(),
        }
    }
}

/// Executes commands on the three aggregates.
pub struct CommandService {
    pool: PgPool,
    accounts: Handle<Account>,
    bookings: Handle<Booking>,
    payments: Handle<Payment>,
    locks: StripedLocks,
    settings: CommandSettings,
}

impl CommandService {
    /// A service appending through `pool`.
    pub fn new(pool: PgPool, settings: CommandSettings) -> Self {
        Self {
            accounts: Handle::new(&pool, &settings),
            bookings: Handle::new(&pool, &settings),
            payments: Handle::new(&pool, &settings),
            locks: StripedLocks::new(1024),
            pool,
            settings,
        }
    }

    /// The pool commands append through.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Executes a command on account `id`.
    pub async fn account(
        &self,
        id: Uuid,
        command: <Account as Aggregate>::Command,
        metadata: &CommandMetadata,
    ) -> Result<CommandOutcome, CommandError> {
        self.execute(&self.accounts, id, command, metadata).await
    }

    /// Executes a command on booking `id`.
    pub async fn booking(
        &self,
        id: Uuid,
        command: <Booking as Aggregate>::Command,
        metadata: &CommandMetadata,
    ) -> Result<CommandOutcome, CommandError> {
        self.execute(&self.bookings, id, command, metadata).await
    }

    /// Executes a command on payment `id`.
    pub async fn payment(
        &self,
        id: Uuid,
        command: <Payment as Aggregate>::Command,
        metadata: &CommandMetadata,
    ) -> Result<CommandOutcome, CommandError> {
        self.execute(&self.payments, id, command, metadata).await
    }

    /// The current state of account `id` (default when it does not exist), for checks a
    /// command needs before it can be built.
    pub async fn load_account(&self, id: Uuid) -> Result<Account, CommandError> {
        load(&self.accounts.store, id).await
    }

    /// The current state of booking `id`.
    pub async fn load_booking(&self, id: Uuid) -> Result<Booking, CommandError> {
        load(&self.bookings.store, id).await
    }

    /// The current state of payment `id`.
    pub async fn load_payment(&self, id: Uuid) -> Result<Payment, CommandError> {
        load(&self.payments.store, id).await
    }

    #[tracing::instrument(skip_all, fields(aggregate = A::TYPE, aggregate_id = %id))]
    async fn execute<A, C>(
        &self,
        handle: &Handle<A>,
        id: Uuid,
        command: Issued<C>,
        metadata: &CommandMetadata,
    ) -> Result<CommandOutcome, CommandError>
    where
        A: Aggregate<Command = Issued<C>, Error = DomainError>,
        C: Clone,
    {
        let aggregate_id = id.to_string();
        let _queued = self.locks.lock(A::TYPE, &aggregate_id).await;
        let map = metadata.to_map();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = handle
                .cqrs
                .execute_with_metadata(&aggregate_id, command.clone(), map.clone())
                .await;
            match classify(result) {
                Ok(()) => break,
                Err(Failure::Final(error)) => {
                    crate::metrics::COMMANDS
                        .with_label_values(&[A::TYPE, error.code()])
                        .inc();
                    return Err(error);
                }
                Err(Failure::Retry) if attempt < self.settings.max_attempts => {
                    tracing::debug!(attempt, "lost a race for the aggregate; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(Failure::Retry) => {
                    let error = CommandError::Contention { attempts: attempt };
                    crate::metrics::COMMANDS
                        .with_label_values(&[A::TYPE, error.code()])
                        .inc();
                    return Err(error);
                }
            }
        }
        let request_id = metadata.request_id.to_string();
        let point =
            match stream::appended_by(&self.pool, A::TYPE, &aggregate_id, &request_id).await? {
                Some(point) => Some((point, true)),
                None => stream::head(&self.pool, A::TYPE, &aggregate_id)
                    .await?
                    .map(|point| (point, false)),
            };
        let (
            StreamPoint {
                sequence,
                global_position,
            },
            appended,
        ) = point.unwrap_or((
            StreamPoint {
                sequence: 0,
                global_position: 0,
            },
            false,
        ));
        tracing::debug!(
            version = sequence,
            position = global_position,
            appended,
            "command executed"
        );
        let outcome = if appended { "appended" } else { "no_op" };
        crate::metrics::COMMANDS
            .with_label_values(&[A::TYPE, outcome])
            .inc();
        Ok(CommandOutcome {
            aggregate_id: id,
            version: sequence,
            position: global_position,
            appended,
        })
    }
}

async fn load<A: Aggregate<Error = DomainError>>(
    store: &Store<A>,
    id: Uuid,
) -> Result<A, CommandError> {
    match store.load_aggregate(&id.to_string()).await {
        Ok(context) => Ok(context.aggregate),
        Err(error) => Err(match classify(Err(error)) {
            Err(Failure::Final(error)) => error,
            _ => CommandError::Unavailable("could not load the aggregate".into()),
        }),
    }
}

enum Failure {
    Retry,
    Final(CommandError),
}

fn classify<E>(result: Result<(), AggregateError<E>>) -> Result<(), Failure>
where
    E: std::error::Error + Into<DomainError>,
{
    let error = match result {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    Err(match error {
        AggregateError::UserError(e) => Failure::Final(CommandError::Rejected(e.into())),
        AggregateError::AggregateConflict => Failure::Retry,
        AggregateError::DatabaseConnectionError(e) => Failure::Final(CommandError::Unavailable(e)),
        AggregateError::DeserializationError(e) => Failure::Final(CommandError::Internal(e)),
        AggregateError::UnexpectedError(e) => match AppendRejection::find(e.as_ref()) {
            Some(AppendRejection::SeatTaken) => Failure::Final(CommandError::SeatTaken),
            Some(AppendRejection::IdempotencyKeyUsed) => {
                Failure::Final(CommandError::IdempotencyKeyUsed)
            }
            Some(AppendRejection::Transient) => Failure::Retry,
            _ if e.downcast_ref::<sqlx::Error>().is_some_and(is_unavailable) => {
                Failure::Final(CommandError::Unavailable(e))
            }
            _ => Failure::Final(CommandError::Internal(e)),
        },
    })
}

/// Exponential backoff from 2 ms, capped at 100 ms, with full jitter so that retrying
/// writers spread out.
fn backoff(attempt: u32) -> Duration {
    let cap = 2u64.saturating_pow(attempt.min(16)).min(100);
    let jitter = (Uuid::new_v4().as_u128() % u128::from(cap.max(1))) as u64;
    Duration::from_millis(1 + jitter)
}
