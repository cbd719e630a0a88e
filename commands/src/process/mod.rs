//! The process manager: the workflow that ties Booking, Payment and Account together.
//!
//! - A requested booking is charged: a one-time payment is initiated, the account is
//!   debited with the payment id as reference, the payment captured and the booking
//!   confirmed; insufficient funds (or a closed account) fail the payment and reject the
//!   booking, which releases its seats. A booking that left `pending` meanwhile gets its
//!   money back.
//! - A cancelled confirmed booking is refunded and the account credited with the refund
//!   id as reference.
//! - A one-time payment a client initiated is charged the same way.
//! - Recurring payments are charged when due (found in the `payment_schedules` read
//!   model), retried with backoff, and suspended after the last failed attempt.
//! - Pending bookings older than the hold time expire.
//!
//! Every command it issues is idempotent and named after the event that caused it, so a
//! redelivered event, a crash between two steps, or a second instance can never move
//! money twice. Its offsets and the state of its flows live in PostgreSQL.

mod booking;
mod flow;
mod schedule;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chronicle_eventstore::consumer::{
    ConsumerError, Delivered, OffsetStoringConsumer, PartitionKey, Projector, ProjectorSettings,
    dead_letter, load_offsets, store_offsets,
};
use chronicle_eventstore::envelope::{Envelope, topic_for};
use chronicle_eventstore::kafka::KafkaSettings;
use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::CommandService;
use booking::Start;
pub use flow::ProcessError;

/// The process manager's name (offsets, consumer group, actor).
pub const PROCESS_MANAGER: &str = "process-manager";

/// Tunables of the process manager.
#[derive(Clone, Copy, Debug)]
pub struct ProcessSettings {
    /// `CHRONICLE_BOOKING_HOLD_SECONDS`: a booking still pending after this expires.
    pub booking_hold: Duration,
    /// `CHRONICLE_CHARGE_MAX_ATTEMPTS`: attempts of a recurring charge before the payment
    /// is suspended.
    pub charge_max_attempts: u32,
    /// `CHRONICLE_CHARGE_RETRY_SECONDS`: wait before the second attempt; doubled for each
    /// later one.
    pub charge_retry: Duration,
    /// `CHRONICLE_SCHEDULER_TICK_MS`: how often due charges and expired holds are looked
    /// for.
    pub tick: Duration,
    /// `CHRONICLE_FLOW_RETENTION_DAYS`: how long a finished flow (and its steps) is kept
    /// for operators. Stuck flows are kept until an operator deals with them.
    pub flow_retention: Duration,
}

impl Default for ProcessSettings {
    fn default() -> Self {
        Self {
            booking_hold: Duration::from_secs(15 * 60),
            charge_max_attempts: 3,
            charge_retry: Duration::from_secs(60),
            tick: Duration::from_millis(500),
            flow_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Watches the steps of flows; tests use it to stop the process manager between two.
pub trait StepObserver: Send + Sync {
    /// Called after `step` of a flow completed.
    fn after_step(&self, step: &str) -> BoxFuture<'_, ()>;
}

/// What the process manager did with a message.
enum Handled {
    /// It ran the flow the message starts.
    Flow,
    /// The message starts no flow.
    NoFlow,
    /// It should start a flow and cannot be read; the reason.
    Unreadable(String),
}

/// The process manager.
pub struct ProcessManager {
    pub(crate) commands: Arc<CommandService>,
    pub(crate) pool: PgPool,
    pub(crate) settings: ProcessSettings,
    pub(crate) observer: Option<Arc<dyn StepObserver>>,
}

impl ProcessManager {
    pub fn new(commands: Arc<CommandService>, settings: ProcessSettings) -> Self {
        Self {
            pool: commands.pool().clone(),
            commands,
            settings,
            observer: None,
        }
    }

    /// Lets `observer` watch every step.
    #[must_use]
    pub fn observed_by(mut self, observer: Arc<dyn StepObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Runs the event-driven flows (a consumer of the booking and payment topics) and the
    /// timed ones until shutdown.
    pub async fn run(
        self: Arc<Self>,
        kafka: KafkaSettings,
        projector: ProjectorSettings,
        shutdown: CancellationToken,
    ) {
        let consumer = Projector::new(self.clone(), kafka, projector);
        tokio::join!(
            consumer.run(shutdown.clone()),
            self.run_schedules(shutdown.clone()),
            self.forget_finished_flows(shutdown),
        );
    }

    /// Runs the flow `envelope` starts, if any.
    async fn handle(&self, envelope: &Envelope) -> Result<Handled, ProcessError> {
        let start = match Start::read(envelope) {
            Ok(Some(start)) => start,
            Ok(None) => return Ok(Handled::NoFlow),
            Err(reason) => return Ok(Handled::Unreadable(reason)),
        };
        let event_id = envelope.event_id;
        match start {
            Start::ChargeBooking {
                booking_id,
                account_id,
                owner,
                price,
            } => {
                self.charge_booking(event_id, booking_id, account_id, owner, price)
                    .await?;
            }
            Start::RefundBooking { booking_id } => {
                self.refund_booking(event_id, booking_id).await?;
            }
            Start::ChargeClientPayment {
                payment_id,
                account_id,
                amount,
            } => {
                self.charge_client_payment(event_id, payment_id, account_id, amount)
                    .await?;
            }
        }
        Ok(Handled::Flow)
    }
}

impl OffsetStoringConsumer for ProcessManager {
    fn name(&self) -> &str {
        PROCESS_MANAGER
    }

    fn topics(&self, kafka: &KafkaSettings) -> Vec<String> {
        vec![
            topic_for(&kafka.topic_prefix, "Booking"),
            topic_for(&kafka.topic_prefix, "Payment"),
        ]
    }

    async fn stored_offsets(&self) -> Result<HashMap<PartitionKey, i64>, ConsumerError> {
        Ok(load_offsets(&self.pool, PROCESS_MANAGER).await?)
    }

    /// A message's offset is stored as soon as the flow it starts has run, so a crash
    /// re-runs at most that flow (ADR 0007). Messages that start no flow (most of them)
    /// have their offsets stored together at the end of the batch: reading them again
    /// after a crash runs nothing, and one write replaces one per message.
    async fn apply_batch(&self, batch: &[Delivered]) -> Result<(), ConsumerError> {
        let mut quiet: HashMap<(&str, i32), i64> = HashMap::new();
        for delivered in batch {
            let partition = (delivered.topic.as_str(), delivered.partition);
            let next = HashMap::from([(partition, delivered.offset + 1)]);
            let handled = match delivered.envelope() {
                Ok(envelope) => self
                    .handle(&envelope)
                    .await
                    .map_err(|e| ConsumerError::Other(e.to_string()))?,
                Err(reason) => Handled::Unreadable(reason),
            };
            if let Handled::Unreadable(reason) = &handled {
                // Recorded with its offset, like a flow's end: a crash re-reads at most
                // this message, and the record is not written twice.
                dead_letter(&self.pool, PROCESS_MANAGER, delivered, reason).await?;
            }
            if !matches!(handled, Handled::NoFlow) {
                store_offsets(&self.pool, PROCESS_MANAGER, &next).await?;
                quiet.remove(&partition);
            } else {
                quiet.extend(next);
            }
        }
        store_offsets(&self.pool, PROCESS_MANAGER, &quiet).await?;
        Ok(())
    }
}
