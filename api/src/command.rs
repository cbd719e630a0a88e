//! The path every command request takes: idempotency replay, metadata, execution, and
//! the answer built the same way whether the command ran now or earlier.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use chronicle_commands::{CommandError, CommandMetadata, CommandOutcome, IdempotencyClaim};
use chronicle_domain::{Actor, Issued};
use chronicle_eventstore::idempotency::{self, IdempotencyRecord};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{JwtKeys, Principal};
use crate::extract::CommandHeaders;
use crate::problem::{AppError, idempotency_key_reused};

/// Who issues a command and the headers that shape it: what every command handler
/// takes. Its [`Commander::execute`] runs the command the one way commands run.
pub struct Commander {
    pub principal: Principal,
    pub headers: CommandHeaders,
}

impl<S> FromRequestParts<S> for Commander
where
    S: Send + Sync,
    Arc<JwtKeys>: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let headers = CommandHeaders::from_request_parts(parts, state).await?;
        Ok(Self { principal, headers })
    }
}

impl Commander {
    /// The actor, when they may issue commands (a client or an admin); 403 otherwise.
    pub fn actor(&self) -> Result<&Actor, AppError> {
        self.principal.require_commander()?;
        Ok(&self.principal.0)
    }

    /// `command` as the actor issues it now.
    pub fn issue<C>(&self, command: C) -> Issued<C> {
        Issued::new(
            self.principal.0.clone(),
            chronicle_eventstore::clock::now(),
            command,
        )
    }

    /// `command` as the actor issues it now, for the version `If-Match` names, if any.
    pub fn issue_at_version<C>(&self, command: C) -> Issued<C> {
        self.issue(command).expecting(self.headers.expected_version)
    }

    /// Checks the actor may issue commands, then executes one, once per
    /// `Idempotency-Key`, waiting for pooled connections no longer in all than the pool
    /// lets one wait (`chronicle_eventstore::deadline`).
    ///
    /// `request_line` ("POST /v1/accounts/…") and `body` identify the request; the same key
    /// with the same request answers from the stored record, with another request 422.
    /// The command service finds the record in the same statement that loads the aggregate
    /// and then does not run the command. `run` builds the command (validation included)
    /// and executes it; when building fails for a request that has a key (the clock moved
    /// on, or the account it read has changed since), the record still answers.
    pub async fn execute<B, F, Fut>(
        &self,
        state: &AppState,
        request_line: &str,
        body: &B,
        run: F,
    ) -> Result<Accepted, AppError>
    where
        B: Serialize,
        F: FnOnce(CommandMetadata) -> Fut,
        Fut: Future<Output = Result<CommandOutcome, CommandError>>,
    {
        self.actor()?;
        let actor = self.principal.0.subject.as_str();
        let claim = self
            .headers
            .idempotency_key
            .as_ref()
            .map(|key| IdempotencyClaim {
                key: key.clone(),
                request_hash: request_hash(request_line, body),
            });
        let metadata = CommandMetadata::for_request(
            actor,
            self.headers.request_id,
            self.headers.correlation_id,
        )
        .with_idempotency(claim.clone());
        // However many connections the command takes in turn, it waits for them no longer
        // in all than the pool lets one wait, so an exhausted pool is answered 503 in time.
        let deadline = tokio::time::Instant::now() + state.pool.options().get_acquire_timeout();
        let outcome = chronicle_eventstore::deadline::within(deadline, run(metadata)).await;
        match (outcome, &claim) {
            (Ok(outcome), _) => Ok(outcome.into()),
            // Another request with this key committed: the same request (a concurrent
            // retry) answers from its record, another one 422.
            (Err(CommandError::IdempotencyKeyUsed), Some(claim)) => replay(state, actor, claim)
                .await?
                .ok_or_else(idempotency_key_reused),
            (Err(CommandError::IdempotencyKeyUsed), None) => Err(idempotency_key_reused()),
            (Err(error), Some(claim)) if !matches!(error, CommandError::Unavailable(_)) => {
                match replay(state, actor, claim).await? {
                    Some(accepted) => Ok(accepted),
                    None => Err(error.into()),
                }
            }
            (Err(error), _) => Err(error.into()),
        }
    }

    /// An id derived from the request's idempotency key (see [`derived_id`]).
    pub fn derived_id(&self, purpose: &str) -> Uuid {
        derived_id(&self.principal.0.subject, &self.headers, purpose)
    }
}

/// What a command did, as the client sees it.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    pub aggregate_id: Uuid,
    pub version: i64,
    pub position: i64,
}

impl From<CommandOutcome> for Accepted {
    fn from(outcome: CommandOutcome) -> Self {
        Self {
            aggregate_id: outcome.aggregate_id,
            version: outcome.version,
            position: outcome.position,
        }
    }
}

async fn replay(
    state: &AppState,
    actor: &str,
    claim: &IdempotencyClaim,
) -> Result<Option<Accepted>, AppError> {
    let Some(record) = idempotency::find(&state.pool, actor, &claim.key).await? else {
        return Ok(None);
    };
    if record.request_hash != claim.request_hash {
        return Err(idempotency_key_reused());
    }
    accepted_from(&record).map(Some)
}

fn accepted_from(record: &IdempotencyRecord) -> Result<Accepted, AppError> {
    let aggregate_id = Uuid::parse_str(&record.aggregate_id)
        .map_err(|e| AppError::internal(&format!("stored aggregate id is not a uuid: {e}")))?;
    Ok(Accepted {
        aggregate_id,
        version: record.last_sequence,
        position: record.last_position,
    })
}

/// A request's identity for idempotency: its method, path and body, the body in its
/// parsed and re-serialized form so that formatting does not matter.
fn request_hash(request_line: &str, body: &impl Serialize) -> String {
    let canonical = serde_json::to_string(body).unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(request_line.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

/// An id derived from a request's idempotency key, so a replayed request names the same
/// id as the original; a fresh one when there is no key.
pub fn derived_id(actor: &str, headers: &CommandHeaders, purpose: &str) -> Uuid {
    match &headers.idempotency_key {
        Some(key) => Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("chronicle/{purpose}/{actor}/{key}").as_bytes(),
        ),
        None => Uuid::new_v4(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_depends_on_route_and_body_not_on_formatting() {
        let a = serde_json::json!({"amount": 5, "reference": "x"});
        let b: serde_json::Value =
            serde_json::from_str("{ \"reference\":\"x\",  \"amount\":5 }").unwrap();
        assert_eq!(request_hash("POST /a", &a), request_hash("POST /a", &b));
        assert_ne!(request_hash("POST /a", &a), request_hash("POST /b", &a));
        assert_ne!(
            request_hash("POST /a", &a),
            request_hash(
                "POST /a",
                &serde_json::json!({"amount": 6, "reference": "x"})
            )
        );
    }
}
