//! One run of a workflow: its row in `pm_flows`, its steps in `pm_steps`, and the
//! metadata and ids of the commands it issues, all derived from the event that started
//! it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use chronicle_domain::{Actor, DomainError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{PROCESS_MANAGER, ProcessManager};
use crate::{CommandError, CommandMetadata, CommandOutcome, IdempotencyClaim};

/// A failure that stops handling the current message; it is handled again later, and
/// every step that already took effect is then a no-op.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("command failed: {0}")]
    Command(#[from] CommandError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

chronicle_domain::worded! {
    /// What a flow does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum FlowKind {
        /// Charges a requested booking's account and confirms or rejects the booking.
        BookingCharge = "booking-charge",
        /// Refunds a cancelled booking's payment.
        BookingRefund = "booking-refund",
        /// Captures a one-time payment.
        PaymentCharge = "payment-charge",
        /// Captures one due charge of a recurring payment.
        RecurringCharge = "recurring-charge",
        /// Expires a booking left pending too long.
        BookingExpiry = "booking-expiry",
        /// Charges one period of a subscription (and retries a refused charge).
        SubscriptionCharge = "subscription-charge",
        /// Moves the net of a mid-period plan change.
        SubscriptionProration = "subscription-proration",
        /// Refunds the unused part of a period cancelled now.
        SubscriptionRefund = "subscription-refund",
        /// Ends a subscription whose cancellation at period end took effect.
        SubscriptionEnd = "subscription-end",
    }
}

chronicle_domain::worded! {
    /// Where a flow stands: running, or how it ended.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum FlowStatus {
        Running = "running",
        /// The booking was paid and confirmed.
        Confirmed = "confirmed",
        /// The payment (or the charge) was captured.
        Captured = "captured",
        /// What was captured was refunded.
        Refunded = "refunded",
        /// The booking changed while it was being paid; its payment was given back.
        Compensated = "compensated",
        /// The booking was rejected (its charge was refused).
        Rejected = "rejected",
        /// The booking expired.
        Expired = "expired",
        /// The payment failed.
        Failed = "failed",
        /// A recurring charge failed; the payment's retry will start another flow.
        Retrying = "retrying",
        /// A recurring charge failed for the last time; the payment is suspended.
        Suspended = "suspended",
        /// Nothing was left to do.
        Skipped = "skipped",
        /// A step was refused in a way the flow cannot handle: an operator must look.
        Stuck = "stuck",
        /// A subscription's plan-change net the account refused was carried to its next
        /// charge.
        Carried = "carried",
    }
}

/// How a step ended.
#[derive(Debug)]
pub(crate) enum Step {
    /// The command took effect now or earlier.
    Done,
    /// The aggregate refused it.
    Refused(DomainError),
}

pub(crate) struct Flow<'a> {
    pm: &'a ProcessManager,
    /// The id of the event that started the flow; every id the flow derives comes from it.
    pub id: Uuid,
    /// What the flow is about (a booking, a payment); the correlation id of its commands.
    pub subject: Uuid,
    /// The steps completed so far, as recorded in `pm_steps` when the flow was opened
    /// and by this run since.
    done: Mutex<HashSet<String>>,
    /// Steps this run completed, with their command ids: recorded in `pm_steps` with the
    /// flow's end, in one statement (ADR 0033).
    completed: Mutex<Vec<(String, Uuid)>>,
}

impl ProcessManager {
    /// Opens (or resumes) the flow `id` about `subject`, whatever its status: a scheduled
    /// flow that ended `retrying` runs again under the same id.
    pub(crate) async fn flow(
        &self,
        id: Uuid,
        kind: FlowKind,
        subject: Uuid,
    ) -> Result<Flow<'_>, ProcessError> {
        let (_, fresh) = self.open_flow(id, kind, subject).await?;
        self.resume(id, subject, fresh).await
    }

    /// Opens (or resumes) the flow started by event `id`, or `None` when it already
    /// finished: a redelivered event (the flow ended, its offset was not stored yet when
    /// the process stopped) runs nothing, and the flow keeps the status it ended with.
    pub(crate) async fn event_flow(
        &self,
        id: Uuid,
        kind: FlowKind,
        subject: Uuid,
    ) -> Result<Option<Flow<'_>>, ProcessError> {
        let (status, fresh) = self.open_flow(id, kind, subject).await?;
        if status != FlowStatus::Running.as_str() {
            return Ok(None);
        }
        Ok(Some(self.resume(id, subject, fresh).await?))
    }

    /// Inserts the flow's row unless it exists; its status, and whether it was inserted
    /// now.
    async fn open_flow(
        &self,
        id: Uuid,
        kind: FlowKind,
        subject: Uuid,
    ) -> Result<(String, bool), ProcessError> {
        // Both branches read the snapshot from before the insert, so exactly one of them
        // returns a row.
        Ok(sqlx::query_as(
            "WITH opened AS ( \
               INSERT INTO pm_flows (flow_id, kind, subject_id, status) VALUES ($1, $2, $3, $4) \
               ON CONFLICT (flow_id) DO NOTHING RETURNING status) \
             SELECT status, true FROM opened \
             UNION ALL SELECT status, false FROM pm_flows WHERE flow_id = $1 \
             LIMIT 1",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(subject)
        .bind(FlowStatus::Running.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    /// The flow, with the steps it completed before: none when it is `fresh`, so a new
    /// flow asks the database nothing about its steps (most flows run once, start to
    /// end).
    async fn resume(&self, id: Uuid, subject: Uuid, fresh: bool) -> Result<Flow<'_>, ProcessError> {
        let done: Vec<String> = if fresh {
            Vec::new()
        } else {
            sqlx::query_scalar("SELECT step FROM pm_steps WHERE flow_id = $1")
                .bind(id)
                .fetch_all(&self.pool)
                .await?
        };
        Ok(Flow {
            pm: self,
            id,
            subject,
            done: Mutex::new(done.into_iter().collect()),
            completed: Mutex::new(Vec::new()),
        })
    }

    /// Forgets flows that finished more than the retention ago, with their steps: at
    /// once, then hourly, until `shutdown`. Stuck flows stay for an operator.
    pub(crate) async fn forget_finished_flows(&self, shutdown: CancellationToken) {
        loop {
            match self.forget_flows_before(self.settings.flow_retention).await {
                Ok(0) => {}
                Ok(forgotten) => {
                    tracing::info!(forgotten, "finished flows past retention forgotten")
                }
                Err(error) => {
                    tracing::warn!(%error, "forgetting finished flows failed; retrying later")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
    }

    /// Deletes, a bounded batch at a time, the flows other than running or stuck ones last
    /// changed more than `age` ago, and their steps; returns how many flows went.
    pub async fn forget_flows_before(&self, age: Duration) -> Result<u64, sqlx::Error> {
        const BATCH: i64 = 5_000;
        let mut forgotten = 0;
        loop {
            let flows: i64 = sqlx::query_scalar(
                "WITH gone AS ( \
                   DELETE FROM pm_flows WHERE flow_id IN ( \
                     SELECT flow_id FROM pm_flows \
                      WHERE status NOT IN ($1, $2) \
                        AND updated_at < now() - make_interval(secs => $3) \
                      LIMIT $4) \
                   RETURNING flow_id), \
                 steps AS (DELETE FROM pm_steps WHERE flow_id IN (SELECT flow_id FROM gone)) \
                 SELECT count(*) FROM gone",
            )
            .bind(FlowStatus::Running.as_str())
            .bind(FlowStatus::Stuck.as_str())
            .bind(age.as_secs_f64())
            .bind(BATCH)
            .fetch_one(&self.pool)
            .await?;
            forgotten += flows as u64;
            if flows < BATCH {
                return Ok(forgotten);
            }
        }
    }

    /// The actor of every command the process manager issues.
    pub(crate) fn actor() -> Actor {
        Actor::system(PROCESS_MANAGER)
    }
}

impl Flow<'_> {
    fn is_done(&self, step: &str) -> bool {
        self.done.lock().is_ok_and(|done| done.contains(step))
    }

    /// An id for `purpose` within this flow, the same every time the flow runs.
    pub fn derive(&self, purpose: &str) -> Uuid {
        Uuid::new_v5(&self.id, purpose.as_bytes())
    }

    /// What this flow pinned before, or `value`, pinned now: a decision taken before
    /// money moves (what a charge takes) stays taken when the flow runs again after a
    /// crash, whatever changed meanwhile.
    pub async fn pin<T: Serialize + DeserializeOwned>(&self, value: &T) -> Result<T, ProcessError> {
        let pinned: serde_json::Value = sqlx::query_scalar(
            "UPDATE pm_flows SET pinned = COALESCE(pinned, $2) WHERE flow_id = $1 RETURNING pinned",
        )
        .bind(self.id)
        .bind(sqlx::types::Json(value))
        .fetch_one(&self.pm.pool)
        .await?;
        serde_json::from_value(pinned).map_err(|e| {
            ProcessError::Database(sqlx::Error::Decode(
                format!("flow {} pinned: {e}", self.id).into(),
            ))
        })
    }

    /// Forgets what was pinned: the next run decides afresh (a refused charge is tried
    /// again on what is due then).
    pub async fn unpin(&self) -> Result<(), ProcessError> {
        sqlx::query("UPDATE pm_flows SET pinned = NULL WHERE flow_id = $1")
            .bind(self.id)
            .execute(&self.pm.pool)
            .await?;
        Ok(())
    }

    /// Runs step `name` unless it already completed: `run` gets the command's metadata
    /// (request id and idempotency key derived from the flow and the step, causation the
    /// triggering event, correlation the subject).
    pub async fn step<F, Fut>(&self, name: &str, run: F) -> Result<Step, ProcessError>
    where
        F: FnOnce(CommandMetadata) -> Fut,
        Fut: Future<Output = Result<CommandOutcome, CommandError>>,
    {
        if self.is_done(name) {
            return Ok(Step::Done);
        }
        let command_id = self.derive(name);
        let metadata = CommandMetadata {
            actor: ProcessManager::actor().subject,
            request_id: command_id,
            correlation_id: self.subject,
            causation_id: self.id,
            idempotency: Some(IdempotencyClaim {
                key: command_id.to_string(),
                request_hash: name.to_owned(),
            }),
        };
        let step = match run(metadata).await {
            Ok(_) | Err(CommandError::IdempotencyKeyUsed) => Step::Done,
            Err(CommandError::Rejected(refusal)) => return Ok(Step::Refused(refusal)),
            Err(error) => return Err(error.into()),
        };
        if let Ok(mut done) = self.done.lock() {
            done.insert(name.to_owned());
        }
        if let Ok(mut completed) = self.completed.lock() {
            completed.push((name.to_owned(), command_id));
        }
        tracing::debug!(flow = %self.id, step = name, "step done");
        if let Some(observer) = &self.pm.observer {
            observer.after_step(name).await;
        }
        Ok(step)
    }

    /// Records how the flow ended.
    pub async fn finish(
        &self,
        status: FlowStatus,
        detail: Option<String>,
    ) -> Result<(), ProcessError> {
        tracing::info!(flow = %self.id, subject = %self.subject, %status, detail = detail.as_deref().unwrap_or(""), "flow finished");
        let (steps, commands): (Vec<String>, Vec<Uuid>) = self
            .completed
            .lock()
            .map(|completed| completed.iter().cloned().unzip())
            .unwrap_or_default();
        sqlx::query(
            "WITH steps AS ( \
               INSERT INTO pm_steps (flow_id, step, command_id) \
               SELECT $1, step, command_id FROM unnest($4::text[], $5::uuid[]) AS s (step, command_id) \
               ON CONFLICT DO NOTHING) \
             UPDATE pm_flows SET status = $2, detail = $3, updated_at = now() WHERE flow_id = $1",
        )
        .bind(self.id)
        .bind(status.as_str())
        .bind(detail)
        .bind(&steps)
        .bind(&commands)
        .execute(&self.pm.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chronicle_domain::checked_words;

    use super::*;

    /// The kinds as the subscription flows widened them.
    const KINDS: &str = include_str!("../../migrations/20261207000002_subscription_flows.sql");
    /// The statuses as carried prorations widened them.
    const STATUSES: &str = include_str!("../../migrations/20261207000004_carried_charges.sql");

    #[test]
    fn pm_flows_allows_exactly_the_kinds_and_statuses_flows_write() {
        let kinds: Vec<&str> = FlowKind::ALL.iter().map(|k| k.as_str()).collect();
        let statuses: Vec<&str> = FlowStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(checked_words(KINDS, "pm_flows_kind_words"), kinds);
        assert_eq!(checked_words(STATUSES, "pm_flows_status_words"), statuses);
    }
}
