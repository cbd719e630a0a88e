//! Signed checkpoints of the log for auditors (ADR 0036): the checkpoints the notary
//! signed, the public key they verify with, and a verification of one stream against the
//! event store itself.

use axum::Json;
use axum::extract::{Path, State};
use chronicle_domain::Role;
use chronicle_eventstore::chain::verify_stream_in;
use chronicle_eventstore::notary::checkpoint::SignedCheckpoint;
use chronicle_eventstore::notary::proofs::{self, StreamCoverage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::extract::ApiQuery;
use crate::problem::AppError;
use crate::routes::reads::{database, invalid_cursor, limit};
use crate::routes::temporal::aggregate_type_of;

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
    /// `asc` (the default): smallest tree first; `desc`: the latest first.
    pub order: Option<Order>,
}

/// The order of a page of checkpoints.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
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

/// A page of checkpoints, smallest tree first (or latest first).
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
    let order = params.order.unwrap_or_default();
    let cursor = params
        .cursor
        .as_deref()
        .map(|cursor| cursor.parse::<u64>().map_err(|_| invalid_cursor()))
        .transpose()?;
    let mut connection = state.pool.acquire().await.map_err(database)?;
    let items = match order {
        Order::Asc => proofs::checkpoints_after(&mut connection, cursor.unwrap_or(0), limit).await,
        Order::Desc => {
            proofs::checkpoints_before(&mut connection, cursor.unwrap_or(u64::MAX), limit).await
        }
    }
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

/// What a verification of one stream found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Verification {
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// No break in the hash chain and every covered event proven in the signed tree.
    pub verified: bool,
    pub events: i64,
    pub last_sequence: i64,
    pub last_position: Option<i64>,
    /// Every problem found, in words.
    pub problems: Vec<String>,
    pub checked_at: DateTime<Utc>,
    /// The stream against the latest signed checkpoint; `null` before the first one.
    pub checkpoint: Option<StreamCoverage>,
}

/// Verifies one stream now, in the event store itself (auditor or admin): its hash chain
/// recomputed from the stored events against its head, and each of its events the latest
/// signed checkpoint covers proven included under the signed root.
#[utoipa::path(get, path = "/v1/audit/{aggregate_type}/{id}/verification", tag = "audit",
    params(("aggregate_type" = String, Path, description = "account, booking, payment or subscription"),
           ("id" = Uuid, Path, description = "The aggregate's id")),
    responses((status = 200, body = Verification), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn verification(
    State(state): State<AppState>,
    principal: Principal,
    Path((aggregate_type, id)): Path<(String, String)>,
) -> Result<Json<Verification>, AppError> {
    principal.require_any(&[Role::Auditor, Role::Admin])?;
    let aggregate_type = aggregate_type_of(&aggregate_type)?;
    let id = Uuid::parse_str(&id).map_err(|_| AppError::not_found())?;
    let stream = id.to_string();
    // One snapshot for every read: a stream appended to meanwhile is not mistaken for a
    // truncated one.
    let mut tx = state.pool.begin().await.map_err(database)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(database)?;
    let (events, last_sequence, last_position): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT count(*), max(sequence), max(global_position) FROM events \
          WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(&stream)
    .fetch_one(&mut *tx)
    .await
    .map_err(database)?;
    let breaks = verify_stream_in(&mut tx, aggregate_type, &stream)
        .await
        .map_err(|e| AppError::internal(&e))?;
    if events == 0 && breaks.is_empty() {
        return Err(AppError::not_found());
    }
    let checkpoint =
        proofs::stream_coverage(&mut tx, &state.checkpoint_key, aggregate_type, &stream)
            .await
            .map_err(|e| AppError::internal(&e))?;
    tx.rollback().await.map_err(database)?;
    let mut problems: Vec<String> = breaks.iter().map(ToString::to_string).collect();
    problems.extend(checkpoint.iter().flat_map(|c| c.problems.iter().cloned()));
    Ok(Json(Verification {
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: id,
        verified: problems.is_empty(),
        events,
        last_sequence: last_sequence.unwrap_or(0),
        last_position,
        problems,
        checked_at: chronicle_eventstore::clock::now(),
        checkpoint,
    }))
}
