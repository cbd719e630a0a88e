//! Signed checkpoints of the log for auditors (ADR 0036): the checkpoints the notary
//! signed, and the public key they verify with.

use axum::Json;
use axum::extract::State;
use chronicle_domain::Role;
use chronicle_eventstore::notary::checkpoint::SignedCheckpoint;
use chronicle_eventstore::notary::proofs;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Principal;
use crate::extract::ApiQuery;
use crate::problem::AppError;
use crate::routes::reads::{database, invalid_cursor, limit};

/// `?limit=&cursor=`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CheckpointParams {
    /// 1 to 500; 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A signed checkpoint: the tree of `tree_size` leaves (events in commit order) has root
/// `root_hash`. `signature` is Ed25519 over the text docs/audit.md gives.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointView {
    pub tree_size: u64,
    /// SHA-256, hex.
    pub root_hash: String,
    pub origin: String,
    /// RFC 3339, exactly as signed.
    pub signed_at: String,
    /// The first 8 bytes of SHA-256 of the public key, hex.
    pub key_id: String,
    /// Base64 of the 64-byte signature.
    pub signature: String,
}

impl From<SignedCheckpoint> for CheckpointView {
    fn from(signed: SignedCheckpoint) -> Self {
        Self {
            tree_size: signed.checkpoint.tree_size,
            root_hash: signed.checkpoint.root_hash,
            origin: signed.checkpoint.origin,
            signed_at: signed.checkpoint.signed_at,
            key_id: signed.key_id,
            signature: signed.signature,
        }
    }
}

/// A page of checkpoints, smallest tree first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointPage {
    pub items: Vec<CheckpointView>,
    pub next_cursor: Option<String>,
}

/// The key checkpoints verify with.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublicKeyView {
    /// Always `ed25519`.
    pub algorithm: &'static str,
    /// Base64 of the 32-byte public key.
    pub public_key: String,
    pub key_id: String,
}

/// Signed checkpoints, paged (auditor or admin).
#[utoipa::path(get, path = "/v1/audit/checkpoints", tag = "audit", params(CheckpointParams),
    responses((status = 200, body = CheckpointPage), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn checkpoints(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<CheckpointParams>,
) -> Result<Json<CheckpointPage>, AppError> {
    principal.require_any(&[Role::Auditor, Role::Admin])?;
    let limit = limit(params.limit)?;
    let after = match params.cursor.as_deref() {
        None => 0,
        Some(cursor) => cursor.parse::<u64>().map_err(|_| invalid_cursor())?,
    };
    let mut connection = state.pool.acquire().await.map_err(database)?;
    let items = proofs::checkpoints_after(&mut connection, after, limit)
        .await
        .map_err(database)?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|c| c.checkpoint.tree_size.to_string()))
        .flatten();
    Ok(Json(CheckpointPage {
        items: items.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// The Ed25519 public key checkpoints verify with (anyone may ask).
#[utoipa::path(get, path = "/v1/audit/public-key", tag = "audit",
    responses((status = 200, body = PublicKeyView)))]
pub async fn public_key(State(state): State<AppState>) -> Json<PublicKeyView> {
    Json(PublicKeyView {
        algorithm: "ed25519",
        public_key: state.checkpoint_key.to_base64(),
        key_id: state.checkpoint_key.key_id(),
    })
}
