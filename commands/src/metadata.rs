//! The metadata every event carries: who, why, and as part of what.

use std::collections::HashMap;

use chronicle_eventstore::idempotency::{HASH_METADATA, KEY_METADATA};
use chronicle_eventstore::repository::REQUEST_ID_METADATA;
use uuid::Uuid;

/// An `Idempotency-Key` and the hash of the request it was sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub key: String,
    pub request_hash: String,
}

/// Metadata attached to each event a command appends.
#[derive(Clone, Debug)]
pub struct CommandMetadata {
    /// The subject of the principal who issued the command.
    pub actor: String,
    /// The request (HTTP request, or process-manager step) that issued it.
    pub request_id: Uuid,
    /// The business flow it belongs to (a booking's flow carries the booking id).
    pub correlation_id: Uuid,
    /// What directly caused it: the HTTP request, or the event a process reacted to.
    pub causation_id: Uuid,
    pub idempotency: Option<IdempotencyClaim>,
}

impl CommandMetadata {
    /// Metadata for a command issued directly by a request: the request is its own
    /// cause, and starts a flow unless one is named.
    pub fn for_request(
        actor: impl Into<String>,
        request_id: Uuid,
        correlation_id: Option<Uuid>,
    ) -> Self {
        Self {
            actor: actor.into(),
            request_id,
            correlation_id: correlation_id.unwrap_or(request_id),
            causation_id: request_id,
            idempotency: None,
        }
    }

    /// The same, with an idempotency claim.
    #[must_use]
    pub fn with_idempotency(mut self, claim: Option<IdempotencyClaim>) -> Self {
        self.idempotency = claim;
        self
    }

    /// The metadata as cqrs-es carries it, and as every event of the command stores it.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("actor".to_owned(), self.actor.clone()),
            (REQUEST_ID_METADATA.to_owned(), self.request_id.to_string()),
            ("correlation_id".to_owned(), self.correlation_id.to_string()),
            ("causation_id".to_owned(), self.causation_id.to_string()),
        ]);
        if let Some(claim) = &self.idempotency {
            map.insert(KEY_METADATA.to_owned(), claim.key.clone());
            map.insert(HASH_METADATA.to_owned(), claim.request_hash.clone());
        }
        map
    }
}
