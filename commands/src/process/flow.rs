//! One run of a workflow: its row in `pm_flows`, its steps in `pm_steps`, and the
//! metadata and ids of the commands it issues, all derived from the event that started
//! it.

use std::future::Future;

use chronicle_domain::{Actor, DomainError};
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
}

impl ProcessManager {
    /// Opens (or resumes) the flow started by event `id` about `subject`.
    pub(crate) async fn flow(
        &self,
        id: Uuid,
        kind: &str,
        subject: Uuid,
    ) -> Result<Flow<'_>, ProcessError> {
        sqlx::query(
            "INSERT INTO pm_flows (flow_id, kind, subject_id, status) VALUES ($1, $2, $3, 'running') \
             ON CONFLICT (flow_id) DO NOTHING",
        )
        .bind(id)
        .bind(kind)
        .bind(subject)
        .execute(&self.pool)
        .await?;
        Ok(Flow {
            pm: self,
            id,
            subject,
        })
    }

    /// The actor of every command the process manager issues.
    pub(crate) fn actor() -> Actor {
        Actor::system(PROCESS_MANAGER)
    }
}

impl Flow<'_> {
    /// An id for `purpose` within this flow, the same every time the flow runs.
    pub fn derive(&self, purpose: &str) -> Uuid {
        Uuid::new_v5(&self.id, purpose.as_bytes())
    }

    /// Runs step `name` unless it already completed: `run` gets the command's metadata
    /// (request id and idempotency key derived from the flow and the step, causation the
    /// triggering event, correlation the subject).
    pub async fn step<F, Fut>(&self, name: &str, run: F) -> Result<Step, ProcessError>
    where
        F: FnOnce(CommandMetadata) -> Fut,
        Fut: Future<Output = Result<CommandOutcome, CommandError>>,
    {
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pm_steps WHERE flow_id = $1 AND step = $2)",
        )
        .bind(self.id)
        .bind(name)
        .fetch_one(&self.pm.pool)
        .await?;
        if done {
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
        sqlx::query(
            "INSERT INTO pm_steps (flow_id, step, command_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(self.id)
        .bind(name)
        .bind(command_id)
        .execute(&self.pm.pool)
        .await?;
        tracing::debug!(flow = %self.id, step = name, "step done");
        if let Some(observer) = &self.pm.observer {
            observer.after_step(name).await;
        }
        Ok(step)
    }

    /// Records how the flow ended.
    pub async fn finish(&self, status: &str, detail: Option<String>) -> Result<(), ProcessError> {
        tracing::info!(flow = %self.id, subject = %self.subject, status, detail = detail.as_deref().unwrap_or(""), "flow finished");
        sqlx::query(
            "UPDATE pm_flows SET status = $2, detail = $3, updated_at = now() WHERE flow_id = $1",
        )
        .bind(self.id)
        .bind(status)
        .bind(detail)
        .execute(&self.pm.pool)
        .await?;
        Ok(())
    }
}
