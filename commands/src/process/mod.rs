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
mod subscription;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chronicle_eventstore::consumer::{
    ConsumerError, Delivered, OffsetStoringConsumer, PartitionKey, Projector, ProjectorSettings,
    dead_letter, load_offsets, store_offsets,
};
use chronicle_eventstore::envelope::topic_for;
use chronicle_eventstore::kafka::KafkaSettings;
use futures::StreamExt;
use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
    /// `CHRONICLE_PROCESS_CONCURRENCY`: flows of different aggregates run at once. The
    /// flows of one aggregate always run one after another, in the order of its events.
    pub concurrency: usize,
    /// `CHRONICLE_PROCESS_DB_CONNECTIONS`: the process manager's own pool, beside the one
    /// the HTTP API and projectors share, so its lanes cannot take the connections
    /// clients' commands need (a lock held on `events` makes every lane wait on one).
    pub connections: u32,
    /// `CHRONICLE_SUBSCRIPTION_RETRY_HOURS`: the waits before each retry of a refused
    /// subscription charge; when the last retry is refused too, the subscription is
    /// cancelled as unpaid.
    pub subscription_retries: RetryDelays,
}

/// The waits before each retry of a refused charge: at most [`RetryDelays::MAX`], kept
/// in place so the settings stay `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryDelays {
    delays: [Duration; RetryDelays::MAX],
    len: usize,
}

impl RetryDelays {
    pub const MAX: usize = 8;

    /// `delays` in order, or `None` when there are more than [`Self::MAX`].
    pub fn new(delays: &[Duration]) -> Option<Self> {
        if delays.len() > Self::MAX {
            return None;
        }
        let mut kept = [Duration::ZERO; Self::MAX];
        kept[..delays.len()].copy_from_slice(delays);
        Some(Self {
            delays: kept,
            len: delays.len(),
        })
    }

    /// The wait after refused attempt `attempt` (from 1), or `None` when it was the last.
    pub fn after(&self, attempt: u32) -> Option<Duration> {
        let index = usize::try_from(attempt.checked_sub(1)?).ok()?;
        self.as_slice().get(index).copied()
    }

    pub fn as_slice(&self) -> &[Duration] {
        &self.delays[..self.len]
    }
}

impl Default for ProcessSettings {
    fn default() -> Self {
        Self {
            booking_hold: Duration::from_secs(15 * 60),
            charge_max_attempts: 3,
            charge_retry: Duration::from_secs(60),
            tick: Duration::from_millis(500),
            flow_retention: Duration::from_secs(30 * 24 * 3600),
            // Measured by `bench --bin process` (ADR 0033): flows are a chain of short
            // statements, so one at a time leaves the database mostly waiting.
            concurrency: 16,
            connections: 8,
            // Three attempts: the first, then a day and three days later.
            subscription_retries: RetryDelays::new(&[
                Duration::from_secs(24 * 3600),
                Duration::from_secs(72 * 3600),
            ])
            .unwrap_or(RetryDelays {
                delays: [Duration::ZERO; RetryDelays::MAX],
                len: 0,
            }),
        }
    }
}

/// Watches the steps of flows; tests use it to stop the process manager between two.
pub trait StepObserver: Send + Sync {
    /// Called after `step` of a flow completed.
    fn after_step(&self, step: &str) -> BoxFuture<'_, ()>;
}

/// The process manager.
pub struct ProcessManager {
    pub(crate) commands: Arc<CommandService>,
    pub(crate) pool: PgPool,
    pub(crate) settings: ProcessSettings,
    pub(crate) observer: Option<Arc<dyn StepObserver>>,
}

impl ProcessManager {
    /// The aggregate types whose topics it reads.
    pub const AGGREGATES: [&'static str; 3] = ["Booking", "Payment", "Subscription"];

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

    /// Runs the flow that event `event_id` starts.
    async fn run_flow(&self, event_id: Uuid, start: Start) -> Result<(), ProcessError> {
        match start {
            Start::ChargeBooking {
                booking_id,
                account_id,
                owner,
                price,
            } => {
                self.charge_booking(event_id, booking_id, account_id, owner, price)
                    .await
            }
            Start::RefundBooking { booking_id } => self.refund_booking(event_id, booking_id).await,
            Start::ChargeClientPayment {
                payment_id,
                account_id,
                amount,
            } => {
                self.charge_client_payment(event_id, payment_id, account_id, amount)
                    .await
            }
            Start::ProrateSubscription {
                subscription_id,
                net,
            } => {
                self.prorate_subscription(event_id, subscription_id, net)
                    .await
            }
            Start::RefundSubscription {
                subscription_id,
                refund,
            } => {
                self.refund_subscription(event_id, subscription_id, refund)
                    .await
            }
        }
    }

    /// Runs the flows of one lane in order; on failure, the index (in the batch) of the
    /// first message whose flow did not finish, and the error.
    async fn run_lane(&self, lane: Vec<Started>) -> Result<(), (usize, ProcessError)> {
        for started in lane {
            self.run_flow(started.event_id, started.start)
                .await
                .map_err(|error| (started.index, error))?;
        }
        Ok(())
    }
}

/// A message of a batch that starts a flow.
struct Started {
    /// Its place in the batch.
    index: usize,
    event_id: Uuid,
    start: Start,
}

/// The messages of a batch sorted for the process manager: lanes of flows, one per
/// aggregate, each in the order of the aggregate's events; and what cannot be read.
#[derive(Default)]
struct Sorted {
    lanes: HashMap<String, Vec<Started>>,
    unreadable: Vec<(usize, String)>,
}

impl Sorted {
    fn of(batch: &[Delivered]) -> Self {
        let mut sorted = Self::default();
        for (index, delivered) in batch.iter().enumerate() {
            let envelope = match delivered.envelope() {
                Ok(envelope) => envelope,
                Err(reason) => {
                    sorted.unreadable.push((index, reason));
                    continue;
                }
            };
            match Start::read(&envelope) {
                Ok(Some(start)) => {
                    sorted
                        .lanes
                        .entry(envelope.aggregate_id)
                        .or_default()
                        .push(Started {
                            index,
                            event_id: envelope.event_id,
                            start,
                        })
                }
                Ok(None) => {}
                Err(reason) => sorted.unreadable.push((index, reason)),
            }
        }
        sorted
    }
}

/// The next offset to store per partition of `batch`: past its last message, or, where
/// a flow did not finish, that flow's message (the earliest such in the partition).
fn next_offsets<'a>(batch: &'a [Delivered], unfinished: &[usize]) -> HashMap<(&'a str, i32), i64> {
    let mut next = HashMap::new();
    for delivered in batch {
        next.insert(
            (delivered.topic.as_str(), delivered.partition),
            delivered.offset + 1,
        );
    }
    for &index in unfinished {
        let delivered = &batch[index];
        let stored = next
            .entry((delivered.topic.as_str(), delivered.partition))
            .or_insert(delivered.offset);
        *stored = (*stored).min(delivered.offset);
    }
    next
}

impl OffsetStoringConsumer for ProcessManager {
    fn name(&self) -> &str {
        PROCESS_MANAGER
    }

    fn topics(&self, kafka: &KafkaSettings) -> Vec<String> {
        Self::AGGREGATES
            .iter()
            .map(|aggregate| topic_for(&kafka.topic_prefix, aggregate))
            .collect()
    }

    async fn stored_offsets(&self) -> Result<HashMap<PartitionKey, i64>, ConsumerError> {
        Ok(load_offsets(&self.pool, PROCESS_MANAGER).await?)
    }

    /// The flows a batch starts run in lanes, one per aggregate: a lane runs its flows
    /// one after another in the order of the aggregate's events, and up to
    /// `concurrency` lanes run at once (ADR 0033). Offsets are stored once, when every
    /// lane has ended: past the batch, or, in a partition where a flow failed, up to that
    /// flow's message, so it runs again on the restart. A crash re-runs the flows of the
    /// batch that were in flight; a flow that already finished is not run again
    /// (`event_flow`), and every step of the others is idempotent.
    async fn apply_batch(&self, batch: &[Delivered]) -> Result<(), ConsumerError> {
        let Sorted { lanes, unreadable } = Sorted::of(batch);
        let results: Vec<_> = futures::stream::iter(lanes.into_values())
            .map(|lane| self.run_lane(lane))
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        for (index, reason) in &unreadable {
            // Recorded with its offset: a re-read message is not recorded twice.
            dead_letter(&self.pool, PROCESS_MANAGER, &batch[*index], reason).await?;
        }
        let mut unfinished = Vec::new();
        let mut first_error = None;
        for (index, error) in results.into_iter().filter_map(Result::err) {
            unfinished.push(index);
            first_error.get_or_insert(error);
        }
        store_offsets(
            &self.pool,
            PROCESS_MANAGER,
            &next_offsets(batch, &unfinished),
        )
        .await?;
        match first_error {
            None => Ok(()),
            Some(error) => Err(ConsumerError::Other(error.to_string())),
        }
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn each_refused_attempt_but_the_last_has_a_wait() {
        let hour = Duration::from_secs(3600);
        let delays = RetryDelays::new(&[hour, 3 * hour]).unwrap();
        assert_eq!(delays.after(1), Some(hour));
        assert_eq!(delays.after(2), Some(3 * hour));
        assert_eq!(delays.after(3), None);
        assert_eq!(delays.after(0), None);
        assert!(RetryDelays::new(&[hour; 9]).is_none());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::booking::tests::{envelope, requested};
    use super::*;

    fn delivered(partition: i32, offset: i64, payload: &[u8]) -> Delivered {
        Delivered {
            topic: "booking".into(),
            partition,
            offset,
            payload: Some(payload.to_vec()),
            sent_at_ms: None,
        }
    }

    fn booking_event(aggregate_id: &str, event_type: &str, payload: serde_json::Value) -> Vec<u8> {
        let mut envelope = envelope("Booking", event_type, payload);
        envelope.aggregate_id = aggregate_id.into();
        envelope.event_id = Uuid::new_v4();
        serde_json::to_vec(&envelope).unwrap()
    }

    #[test]
    fn flows_are_laned_by_aggregate_in_the_order_of_its_events() {
        let cancelled = json!({"type": "BookingCancelled", "reason": null, "cancelled_at": "2030-01-01T00:00:00Z"});
        let (a, b) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
        let batch = [
            delivered(0, 10, &booking_event(&a, "BookingRequested", requested())),
            delivered(0, 11, &booking_event(&b, "BookingRequested", requested())),
            delivered(0, 12, &booking_event(&a, "BookingConfirmed", json!({}))),
            delivered(0, 13, b"not json"),
            delivered(0, 14, &booking_event(&a, "BookingCancelled", cancelled)),
        ];
        let sorted = Sorted::of(&batch);
        let indexes =
            |lane: &String| -> Vec<usize> { sorted.lanes[lane].iter().map(|s| s.index).collect() };
        assert_eq!(sorted.lanes.len(), 2);
        assert_eq!(indexes(&a), [0, 4], "a confirmation starts nothing");
        assert_eq!(indexes(&b), [1]);
        assert!(matches!(
            sorted.lanes[&a][1].start,
            Start::RefundBooking { .. }
        ));
        assert_eq!(
            sorted
                .unreadable
                .iter()
                .map(|(i, _)| *i)
                .collect::<Vec<_>>(),
            [3]
        );
    }

    #[test]
    fn offsets_stop_at_the_earliest_unfinished_flow_of_each_partition() {
        let batch = [
            delivered(0, 10, b""),
            delivered(1, 5, b""),
            delivered(0, 11, b""),
            delivered(1, 6, b""),
            delivered(0, 12, b""),
        ];
        let all = next_offsets(&batch, &[]);
        assert_eq!(all[&("booking", 0)], 13);
        assert_eq!(all[&("booking", 1)], 7);
        let failed = next_offsets(&batch, &[4, 2, 3]);
        assert_eq!(failed[&("booking", 0)], 11, "flow 11 failed: it runs again");
        assert_eq!(failed[&("booking", 1)], 6);
    }
}
