//! Data subjects' rights (GDPR Art. 15 and 17, ADR 0035): what Chronicle holds on a
//! person, and erasure by destroying their data keys. For the `privacy` and `admin`
//! roles. Neither answer nor log ever carries the e-mail address asked about.

use axum::Json;
use axum::extract::State;
use chronicle_domain::Role;
use chronicle_domain::subject::StreamRef;
use chronicle_eventstore::error::StoreError;
use chronicle_eventstore::personal::KeyStore;
use chronicle_eventstore::personal::erase::{self, Erasure, Holding};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::reads::validation;
use crate::AppState;
use crate::auth::Principal;
use crate::extract::{ApiJson, ApiQuery};
use crate::problem::AppError;

/// Body of `POST /v1/subjects/erasure`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureBody {
    /// The data subject's e-mail address (compared trimmed and lower-cased).
    #[schema(example = "ada@example.org")]
    pub email: String,
}

/// `?email=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubjectParams {
    /// The data subject's e-mail address.
    pub email: String,
}

/// What an erasure did (the first one's answer, when asked again).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErasureView {
    /// The subject's id: a keyed hash of the address, not reversible without the server's secret.
    pub subject_id: String,
    pub erased_at: DateTime<Utc>,
    /// The destroyed key versions.
    pub key_versions: Vec<i32>,
    /// The streams whose personal fields no longer open.
    #[schema(value_type = Vec<Object>)]
    pub streams: Vec<StreamRef>,
    /// The `PersonalDataErased` event's position (usable as `min_position`).
    pub position: i64,
    /// `erased` once the read models have applied the erasure, `pending` if they had not
    /// within the read wait (they will: the event is committed).
    pub read_models: &'static str,
}

/// One stored event holding the subject's personal data.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HoldingView {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    pub global_position: i64,
    /// The personal fields (`guest`, `notes`); absent once erased.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// When the key that sealed them was destroyed.
    pub erased_at: Option<DateTime<Utc>>,
}

/// Everything Chronicle holds on a data subject.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PersonalDataView {
    pub subject_id: String,
    /// `held` while any personal data can be read, `erased` when none can.
    pub status: &'static str,
    pub holdings: Vec<HoldingView>,
    #[schema(value_type = Vec<Object>)]
    pub erasures: Vec<Value>,
    /// What else Chronicle derives from these events and where: each is rebuilt from
    /// them and erased with them.
    pub derived: Vec<&'static str>,
}

fn key_store(state: &AppState) -> Result<&KeyStore, AppError> {
    state
        .commands
        .key_store()
        .ok_or_else(|| AppError::internal(&"personal data sealing is off"))
}

fn email(address: &str) -> Result<&str, AppError> {
    let trimmed = address.trim();
    if trimmed.is_empty() || trimmed.len() > 254 || !trimmed.contains('@') {
        return Err(validation("email", "is not an email address".into()));
    }
    Ok(trimmed)
}

fn store_error(error: StoreError) -> AppError {
    match error {
        StoreError::Unavailable(e) => AppError::unavailable(&e),
        other => AppError::internal(&other),
    }
}

/// Erases a data subject's personal data: destroys their data keys and records a
/// `PersonalDataErased` event every projection applies. Erasing again answers the same.
#[utoipa::path(post, path = "/v1/subjects/erasure", tag = "privacy", request_body = ErasureBody,
    responses((status = 200, description = "Erased (now or before)", body = ErasureView),
              crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn erase(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ErasureBody>,
) -> Result<Json<ErasureView>, AppError> {
    principal.require_any(&[Role::Privacy, Role::Admin])?;
    let address = email(&body.email)?;
    let metadata = json!({ "actor": principal.0.subject });
    let erasure = erase::erase(&state.pool, key_store(&state)?, address, &metadata)
        .await
        .map_err(store_error)?
        .ok_or_else(AppError::not_found)?;
    if erasure.fresh {
        tracing::info!(subject_id = %erasure.subject_id, streams = erasure.streams.len(), "personal data erased");
    }
    let applied = state
        .watch
        .wait_for(erasure.position, state.reads.min_position_timeout)
        .await
        .unwrap_or(false);
    let Erasure {
        subject_id,
        erased_at,
        key_versions,
        streams,
        position,
        ..
    } = erasure;
    Ok(Json(ErasureView {
        subject_id,
        erased_at,
        key_versions,
        streams,
        position,
        read_models: if applied { "erased" } else { "pending" },
    }))
}

/// Every piece of personal data Chronicle holds on a data subject, where it came from
/// (aggregate, event, time), and the subject's erasures.
#[utoipa::path(get, path = "/v1/subjects/personal-data", tag = "privacy", params(SubjectParams),
    responses((status = 200, body = PersonalDataView),
              crate::docs::QueryErrors),
    security(("bearer" = [])))]
pub async fn personal_data(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<SubjectParams>,
) -> Result<Json<PersonalDataView>, AppError> {
    principal.require_any(&[Role::Privacy, Role::Admin])?;
    let address = email(&params.email)?;
    let held = erase::personal_data(&state.pool, key_store(&state)?, address)
        .await
        .map_err(store_error)?
        .ok_or_else(AppError::not_found)?;
    let erased_at = |holding: &Holding| {
        held.erasures
            .iter()
            .find(|e| e.key_versions.contains(&holding.key_version))
            .map(|e| e.erased_at)
    };
    let holdings: Vec<HoldingView> = held
        .holdings
        .iter()
        .map(|h| HoldingView {
            aggregate_type: h.aggregate_type.clone(),
            aggregate_id: h.aggregate_id.clone(),
            sequence: h.sequence,
            event_type: h.event_type.clone(),
            recorded_at: h.recorded_at,
            global_position: h.global_position,
            data: h.data.clone(),
            erased_at: erased_at(h),
        })
        .collect();
    let status = if holdings.iter().any(|h| h.data.is_some()) {
        "held"
    } else {
        "erased"
    };
    Ok(Json(PersonalDataView {
        subject_id: held.subject_id.clone(),
        status,
        holdings,
        erasures: held
            .erasures
            .iter()
            .map(|e| {
                json!({
                    "erased_at": e.erased_at,
                    "key_versions": e.key_versions,
                    "streams": e.streams,
                    "position": e.position,
                })
            })
            .collect(),
        derived: vec![
            "bookings read table (guest name, e-mail, notes)",
            "search index (guest name, e-mail, notes)",
            "Kafka topics and exports (sealed, as stored)",
        ],
    }))
}
