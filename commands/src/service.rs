//! The command service: cqrs-es's `CqrsFramework` over Chronicle's event repository,
//! two statements a command (ADR 0011).

use std::sync::Arc;
use std::time::Duration;

use chronicle_domain::subscription::Subscription;
use chronicle_domain::{Account, Actor, Booking, Currency, DomainError, Issued, Payment};
use chronicle_eventstore::AppendRejection;
use chronicle_eventstore::error::is_unavailable;
use chronicle_eventstore::idempotency::IdempotencyRecord;
use chronicle_eventstore::personal::{KeyStore, MasterKeys};
use chronicle_eventstore::repository::{
    CommandStore, Committed, EventRepository, GroupCommit, GroupCommitSettings,
};
use chronicle_eventstore::wake::RelayWake;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::CommandError;
use crate::locks::StripedLocks;
use crate::metadata::CommandMetadata;
use crate::metrics::CountAppended;

/// Tunables of the write side.
#[derive(Clone, Debug)]
pub struct CommandSettings {
    /// `CHRONICLE_SNAPSHOT_EVERY`: a snapshot is stored every this many events of a
    /// stream, so loading an aggregate reads at most this many events.
    pub snapshot_every: usize,
    /// How many times a command is tried against concurrent writers before giving up.
    pub max_attempts: u32,
    /// `CHRONICLE_GROUP_COMMIT_*`: appends of commands arriving together share a
    /// transaction (ADR 0012).
    pub group_commit: GroupCommitSettings,
    /// `CHRONICLE_IDEMPOTENCY_RETENTION_HOURS`: how long an `Idempotency-Key` is
    /// honoured. The process manager's commands carry keys too, guarding the moment
    /// between a command and the record of its step, so keep this longer than any
    /// outage of the process manager.
    pub idempotency_retention: Duration,
    /// The keys personal fields are sealed with on append and opened with on load
    /// (ADR 0035). `None` stores them in plain text, as before sealing: only for the
    /// command benchmark's comparison.
    pub sealing: Option<Arc<MasterKeys>>,
}

impl Default for CommandSettings {
    fn default() -> Self {
        Self {
            snapshot_every: 50,
            max_attempts: 20,
            group_commit: GroupCommitSettings::default(),
            idempotency_retention: Duration::from_secs(7 * 24 * 3600),
            sealing: Some(Arc::new(MasterKeys::development())),
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

/// Executes commands on the three aggregates.
pub struct CommandService {
    repository: EventRepository,
    locks: StripedLocks,
    settings: CommandSettings,
}

impl CommandService {
    /// A service appending through `pool`; after each append it wakes the relay. It
    /// seals with a key store of its own when `settings.sealing` names master keys.
    pub fn new(pool: PgPool, settings: CommandSettings) -> Self {
        let keys = settings
            .sealing
            .as_ref()
            .map(|keys| KeyStore::new(pool.clone(), keys.clone()));
        Self::sealing_with(pool, settings, keys)
    }

    /// [`new`](Self::new), sealing with `keys` (`None`: in plain text), which another
    /// service of the process may share: one cache of unwrapped keys, and the one an
    /// erasure in this process empties (ADR 0035).
    pub fn sealing_with(pool: PgPool, settings: CommandSettings, keys: Option<KeyStore>) -> Self {
        let options = pool.connect_options().as_ref().clone();
        let mut repository = EventRepository::new(
            pool.clone(),
            settings.snapshot_every,
            chronicle_domain::upcast::upcasters(),
        )
        .with_wake(RelayWake::start(options.clone()));
        if let Some(keys) = keys {
            repository = repository.with_sealing(keys);
        }
        if let Some(group) = GroupCommit::start(options, settings.group_commit) {
            repository = repository.with_group_commit(group);
        }
        Self {
            repository,
            locks: StripedLocks::new(1024),
            settings,
        }
    }

    /// The data subjects' keys as this service seals with them (its cache is the one an
    /// erasure here must empty).
    pub fn key_store(&self) -> Option<&KeyStore> {
        self.repository.key_store()
    }

    /// The pool commands append through.
    pub fn pool(&self) -> &PgPool {
        self.repository.pool()
    }

    /// The event store's sweeps, at once and then every twenty-fourth of the idempotency
    /// retention (at most hourly), until `shutdown`: idempotency records older than the
    /// retention, and seat claims of bookings that ended more than a day ago.
    pub async fn sweep_expired_records(&self, shutdown: CancellationToken) {
        let retention = self.settings.idempotency_retention;
        let every = (retention / 24).min(Duration::from_secs(3600));
        loop {
            let expired = chronicle_eventstore::idempotency::expire(self.pool(), retention).await;
            report_sweep("idempotency records past retention", expired);
            let claims = chronicle_eventstore::db::forget_ended_claims(
                self.pool(),
                Duration::from_secs(24 * 3600),
            )
            .await;
            report_sweep("seat claims of ended bookings", claims);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Executes a command on account `id`.
    pub async fn account(
        &self,
        id: Uuid,
        command: <Account as Aggregate>::Command,
        metadata: &CommandMetadata,
    ) -> Result<CommandOutcome, CommandError> {
        self.execute::<Account, _>(id, command, metadata).await
    }

    /// Executes a command on booking `id`.
    pub async fn booking(
        &self,
        id: Uuid,
        command: <Booking as Aggregate>::Command,
        metadata: &CommandMetadata,
    ) -> Result<CommandOutcome, CommandError> {
        self.execute::<Booking, _>(id, command, metadata).await
    }

    /// Executes a command on payment `id`.
    pub async fn payment(
        &self,
        id: Uuid,
        command: <Payment as Aggregate>::Command,
        metadata: &CommandMetadata,
    ) -> Result<CommandOutcome, CommandError> {
        self.execute::<Payment, _>(id, command, metadata).await
    }

    /// Executes a command on subscription `id`.
    pub async fn subscription(
        &self,
        id: Uuid,
        command: <Subscription as Aggregate>::Command,
        metadata: &CommandMetadata,
    ) -> Result<CommandOutcome, CommandError> {
        self.execute::<Subscription, _>(id, command, metadata).await
    }

    /// The current state of subscription `id`.
    pub async fn load_subscription(&self, id: Uuid) -> Result<Subscription, CommandError> {
        self.load(id).await
    }

    /// The current state of account `id` (default when it does not exist), for checks a
    /// command needs before it can be built.
    pub async fn load_account(&self, id: Uuid) -> Result<Account, CommandError> {
        self.load(id).await
    }

    /// The owner of the account a booking or payment in `currency` is charged to: it
    /// must exist and be one `actor` may act for (`not_found` otherwise, as for any
    /// aggregate of someone else), be open, and hold `currency`.
    pub async fn chargeable_account(
        &self,
        actor: &Actor,
        account_id: Uuid,
        currency: Currency,
    ) -> Result<String, CommandError> {
        let account = self.load_account(account_id).await?;
        let account = account
            .state()
            .filter(|a| actor.may_act_for(&a.owner))
            .ok_or(DomainError::NotFound)?;
        account.chargeable_in(currency)?;
        Ok(account.owner.clone())
    }

    /// The current state of booking `id`.
    pub async fn load_booking(&self, id: Uuid) -> Result<Booking, CommandError> {
        self.load(id).await
    }

    /// The current state of payment `id`.
    pub async fn load_payment(&self, id: Uuid) -> Result<Payment, CommandError> {
        self.load(id).await
    }

    async fn load<A: Aggregate<Error = DomainError>>(&self, id: Uuid) -> Result<A, CommandError> {
        let loaded = async {
            let mut connection = self.repository.connection().await?;
            self.repository
                .load::<A>(&mut connection, &id.to_string(), None)
                .await
        };
        match loaded.await {
            Ok(loaded) => Ok(loaded.stream.aggregate),
            Err(error) => Err(failure(AggregateError::<DomainError>::from(error))),
        }
    }

    /// Runs `command` on aggregate `id`: loads it with the request's idempotency record
    /// (one statement), answers from the record when the request ran before, otherwise
    /// lets `CqrsFramework` decide and commit (one statement), retrying lost races.
    #[tracing::instrument(skip_all, fields(aggregate = A::TYPE, aggregate_id = %id))]
    async fn execute<A, C>(
        &self,
        id: Uuid,
        command: Issued<C>,
        metadata: &CommandMetadata,
    ) -> Result<CommandOutcome, CommandError>
    where
        A: Aggregate<Command = Issued<C>, Error = DomainError, Services = ()>,
        C: Clone,
    {
        let aggregate_id = id.to_string();
        let _queued = self.locks.lock(A::TYPE, &aggregate_id).await;
        let result = self
            .attempts::<A, C>(id, &aggregate_id, command, metadata)
            .await;
        let outcome = match &result {
            Ok(Executed::Replayed(_)) => "replayed",
            Ok(Executed::Committed(c)) if c.appended => "appended",
            Ok(Executed::Committed(_)) => "no_op",
            Err(error) => error.code(),
        };
        crate::metrics::COMMANDS
            .with_label_values(&[A::TYPE, outcome])
            .inc();
        let outcome = match result? {
            Executed::Replayed(outcome) => outcome,
            Executed::Committed(c) => CommandOutcome {
                aggregate_id: id,
                version: c.version,
                position: c.position,
                appended: c.appended,
            },
        };
        tracing::debug!(
            version = outcome.version,
            position = outcome.position,
            appended = outcome.appended,
            "command executed"
        );
        Ok(outcome)
    }

    async fn attempts<A, C>(
        &self,
        id: Uuid,
        aggregate_id: &str,
        command: Issued<C>,
        metadata: &CommandMetadata,
    ) -> Result<Executed, CommandError>
    where
        A: Aggregate<Command = Issued<C>, Error = DomainError, Services = ()>,
        C: Clone,
    {
        let map = metadata.to_map();
        let claim = metadata
            .idempotency
            .as_ref()
            .map(|claim| (metadata.actor.as_str(), claim.key.as_str()));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut connection = self
                .repository
                .connection()
                .await
                .map_err(|e| failure(e.into()))?;
            let loaded = self
                .repository
                .load::<A>(&mut connection, aggregate_id, claim)
                .await
                .map_err(|e| failure(e.into()))?;
            if let Some(record) = loaded.idempotency {
                return replayed(metadata, &record).map(Executed::Replayed);
            }
            let store = CommandStore::new(&self.repository, Some(loaded.stream), Some(connection));
            let result = CqrsFramework::new(&store, vec![Box::new(CountAppended)], ())
                .execute_with_metadata(aggregate_id, command.clone(), map.clone())
                .await;
            match classify(result) {
                Ok(()) => {
                    let committed = store.committed().unwrap_or(Committed {
                        version: 0,
                        position: 0,
                        appended: false,
                    });
                    return Ok(Executed::Committed(committed));
                }
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Retry) if attempt < self.settings.max_attempts => {
                    tracing::debug!(attempt, %id, "lost a race for the aggregate; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(Failure::Retry) => return Err(CommandError::Contention { attempts: attempt }),
            }
        }
    }
}

/// How a command ended well.
enum Executed {
    /// The request ran before; this is its recorded answer.
    Replayed(CommandOutcome),
    Committed(Committed),
}

/// The recorded answer of a request that ran before, if `metadata` is the same request.
fn replayed(
    metadata: &CommandMetadata,
    record: &IdempotencyRecord,
) -> Result<CommandOutcome, CommandError> {
    let same = metadata
        .idempotency
        .as_ref()
        .is_some_and(|claim| claim.request_hash == record.request_hash);
    if !same {
        return Err(CommandError::IdempotencyKeyUsed);
    }
    let aggregate_id = Uuid::parse_str(&record.aggregate_id).map_err(|e| {
        CommandError::Internal(format!("stored aggregate id is not a uuid: {e}").into())
    })?;
    Ok(CommandOutcome {
        aggregate_id,
        version: record.last_sequence,
        position: record.last_position,
        appended: false,
    })
}

/// The typed error of a failure that is not worth retrying.
fn failure(error: AggregateError<DomainError>) -> CommandError {
    match classify(Err(error)) {
        Err(Failure::Final(error)) => error,
        _ => CommandError::Unavailable("could not load the aggregate".into()),
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

/// Logs what a sweep forgot, or why it failed (it is tried again at the next sweep).
fn report_sweep<E: std::fmt::Display>(what: &str, result: Result<u64, E>) {
    match result {
        Ok(0) => {}
        Ok(forgotten) => tracing::info!(forgotten, "{what} forgotten"),
        Err(error) => tracing::warn!(%error, "forgetting {what} failed; retrying later"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_between_one_and_a_hundred_milliseconds() {
        assert_eq!(backoff(0), Duration::from_millis(1));
        for attempt in 0..40 {
            for _ in 0..50 {
                let wait = backoff(attempt);
                let cap = 2u64.saturating_pow(attempt.min(16)).min(100);
                assert!(
                    wait >= Duration::from_millis(1) && wait <= Duration::from_millis(cap),
                    "attempt {attempt}: {wait:?}"
                );
            }
        }
    }

    #[test]
    fn conflicts_are_retried_and_refusals_are_final() {
        assert!(matches!(classify::<DomainError>(Ok(())), Ok(())));
        assert!(matches!(
            classify::<DomainError>(Err(AggregateError::AggregateConflict)),
            Err(Failure::Retry)
        ));
        assert!(matches!(
            classify(Err(AggregateError::UserError(DomainError::NotFound))),
            Err(Failure::Final(CommandError::Rejected(
                DomainError::NotFound
            )))
        ));
        assert!(matches!(
            classify::<DomainError>(Err(AggregateError::DeserializationError("bad".into()))),
            Err(Failure::Final(CommandError::Internal(_)))
        ));
        assert!(matches!(
            classify::<DomainError>(Err(AggregateError::UnexpectedError("odd".into()))),
            Err(Failure::Final(CommandError::Internal(_)))
        ));
        assert!(matches!(
            classify::<DomainError>(Err(AggregateError::DatabaseConnectionError("down".into()))),
            Err(Failure::Final(CommandError::Unavailable(_)))
        ));
    }
}
