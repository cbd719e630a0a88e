//! Temporal and analytic queries, and the audit trail: served from the temporal read
//! models by indexed lookups, never from the event store.

use axum::Json;
use axum::extract::{Path, State};
use chronicle_domain::Role;
use chronicle_projections::queries::{Page, show_erased_guest};
use chronicle_projections::subscriptions::{
    self as subscription_reads, Mrr, MrrBucket, StatusCount,
};
use chronicle_projections::temporal::{
    self, AuditEvent, BalanceAsOf, Bucket, Occupancy, RevenueBucket,
};
use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::reads::{
    ReadParams, database, invalid_cursor, limit, may_read, read_your_writes, validation,
};
use chronicle_eventstore::personal::open::open_payloads;
use chronicle_eventstore::personal::seal::{place, sealed_part};

use crate::AppState;
use crate::auth::Principal;
use crate::extract::{ApiQuery, IdPath};
use crate::problem::AppError;

/// `?as_of=&min_position=`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AsOfParams {
    /// Transaction time; now when absent.
    pub as_of: Option<DateTime<Utc>>,
    /// Wait (bounded) until the read model has applied this position.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// An account's balance as of a transaction time (now when absent).
#[utoipa::path(get, path = "/v1/accounts/{id}/balance", tag = "accounts", params(("id" = Uuid, Path, description = "The account's id"), AsOfParams),
    responses((status = 200, body = BalanceAsOf), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn balance(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
    ApiQuery(params): ApiQuery<AsOfParams>,
) -> Result<Json<BalanceAsOf>, AppError> {
    read_your_writes(&state, params.min_position).await?;
    let at = params.as_of.unwrap_or_else(Utc::now);
    let balance = temporal::balance_as_of(&state.pool, id, at)
        .await
        .map_err(database)?;
    balance
        .filter(|b| may_read(&principal.0, &b.owner) || principal.0.has(Role::Analyst))
        .map(Json)
        .ok_or_else(AppError::not_found)
}

/// `GET /v1/analytics/revenue` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevenueParams {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket: String,
    /// Wait (bounded) until the read model has applied this position.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// Revenue per bucket.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Revenue {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket: String,
    pub buckets: Vec<RevenueBucket>,
}

/// The most buckets one request may span.
const MAX_BUCKETS: i64 = 10_000;

/// Captured minus refunded per UTC bucket and currency (analyst or admin).
#[utoipa::path(get, path = "/v1/analytics/revenue", tag = "analytics", params(RevenueParams),
    responses((status = 200, body = Revenue), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn revenue(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<RevenueParams>,
) -> Result<Json<Revenue>, AppError> {
    principal.require_any(&[Role::Analyst, Role::Admin])?;
    let bucket = checked_buckets(&params)?;
    read_your_writes(&state, params.min_position).await?;
    let rows = temporal::revenue(&state.pool, params.from, params.to, bucket)
        .await
        .map_err(database)?;
    Ok(Json(Revenue {
        from: params.from,
        to: params.to,
        bucket: params.bucket,
        buckets: rows,
    }))
}

/// Subscriptions as of an instant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionsAsOf {
    pub as_of: DateTime<Utc>,
    /// Subscriptions by status (statuses with none are left out).
    pub counts: Vec<StatusCount>,
    /// Monthly recurring revenue by currency.
    pub mrr: Vec<Mrr>,
}

/// Subscriptions by status and MRR by currency as of a transaction time (now when
/// absent), from the subscriptions' history (analyst or admin).
#[utoipa::path(get, path = "/v1/analytics/subscriptions", tag = "analytics", params(AsOfParams),
    responses((status = 200, body = SubscriptionsAsOf), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn subscriptions(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<AsOfParams>,
) -> Result<Json<SubscriptionsAsOf>, AppError> {
    principal.require_any(&[Role::Analyst, Role::Admin])?;
    read_your_writes(&state, params.min_position).await?;
    let at = params.as_of.unwrap_or_else(Utc::now);
    let (counts, mrr) = subscription_reads::as_of(&state.pool, at)
        .await
        .map_err(database)?;
    Ok(Json(SubscriptionsAsOf {
        as_of: at,
        counts,
        mrr,
    }))
}

/// MRR per bucket.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MrrMovements {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket: String,
    pub buckets: Vec<MrrBucket>,
}

/// MRR at the end of each UTC bucket overlapping `[from, to)` and how it moved in it
/// (new, expansion, contraction, churned), per currency (analyst or admin).
#[utoipa::path(get, path = "/v1/analytics/mrr", tag = "analytics", params(RevenueParams),
    responses((status = 200, body = MrrMovements), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn mrr(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<RevenueParams>,
) -> Result<Json<MrrMovements>, AppError> {
    principal.require_any(&[Role::Analyst, Role::Admin])?;
    let bucket = checked_buckets(&params)?;
    // Buckets are computed in the database: keep their ends inside its calendar.
    let calendar = |t: DateTime<Utc>| (1..=9000).contains(&t.year());
    if !calendar(params.from) || !calendar(params.to) {
        return Err(validation(
            "to",
            "from and to must lie in the years 1 to 9000".into(),
        ));
    }
    read_your_writes(&state, params.min_position).await?;
    let rows = subscription_reads::mrr_buckets(&state.pool, params.from, params.to, bucket)
        .await
        .map_err(database)?;
    Ok(Json(MrrMovements {
        from: params.from,
        to: params.to,
        bucket: params.bucket,
        buckets: rows,
    }))
}

/// The bucket width `params` name, when the range is not empty and spans at most
/// [`MAX_BUCKETS`] of them.
fn checked_buckets(params: &RevenueParams) -> Result<Bucket, AppError> {
    let bucket = Bucket::parse(&params.bucket)
        .ok_or_else(|| validation("bucket", "must be hour, day or month".into()))?;
    if params.to <= params.from {
        return Err(validation("to", "must be after from".into()));
    }
    let span = params.to - params.from;
    let buckets = match bucket {
        Bucket::Hour => span.num_hours(),
        Bucket::Day => span.num_days(),
        Bucket::Month => span.num_days() / 28,
    };
    if buckets > MAX_BUCKETS {
        return Err(validation(
            "to",
            format!("the range spans more than {MAX_BUCKETS} buckets"),
        ));
    }
    Ok(bucket)
}

/// `GET /v1/analytics/occupancy` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OccupancyParams {
    pub resource_id: String,
    /// The business instant; now when absent.
    pub as_of: Option<DateTime<Utc>>,
    /// What was known at this transaction time; now when absent.
    pub known_at: Option<DateTime<Utc>>,
    /// Wait (bounded) until the read model has applied this position.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// Seats of a resource held at a business instant, as known at a transaction time
/// (analyst or admin).
#[utoipa::path(get, path = "/v1/analytics/occupancy", tag = "analytics", params(OccupancyParams),
    responses((status = 200, body = Occupancy), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn occupancy(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<OccupancyParams>,
) -> Result<Json<Occupancy>, AppError> {
    principal.require_any(&[Role::Analyst, Role::Admin])?;
    read_your_writes(&state, params.min_position).await?;
    let now = chronicle_eventstore::clock::now();
    let occupancy = temporal::occupancy(
        &state.pool,
        &params.resource_id,
        params.as_of.unwrap_or(now),
        params.known_at.unwrap_or(now),
    )
    .await
    .map_err(database)?;
    Ok(Json(occupancy))
}

/// `GET /v1/audit/{type}/{id}/events` parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// 1 to 500; 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    /// Wait (bounded) until the read model has applied this position.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// The event history of an aggregate, paged (auditor or admin).
#[utoipa::path(get, path = "/v1/audit/{aggregate_type}/{id}/events", tag = "audit",
    params(("aggregate_type" = String, Path, description = "account, booking or payment"),
           ("id" = Uuid, Path, description = "The aggregate's id"), AuditParams),
    responses((status = 200, body = Page<AuditEvent>), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn audit(
    State(state): State<AppState>,
    principal: Principal,
    Path((aggregate_type, id)): Path<(String, String)>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<Page<AuditEvent>>, AppError> {
    principal.require_any(&[Role::Auditor, Role::Admin])?;
    let aggregate_type = aggregate_type_of(&aggregate_type)?;
    let id = Uuid::parse_str(&id).map_err(|_| AppError::not_found())?;
    let limit = limit(params.limit)?;
    read_your_writes(&state, params.min_position).await?;
    let page = temporal::audit_events(
        &state.pool,
        aggregate_type,
        id,
        params.cursor.as_deref(),
        limit,
    )
    .await
    .map_err(database)?
    .map_err(|_| invalid_cursor())?;
    if page.items.is_empty() && params.cursor.is_none() {
        return Err(AppError::not_found());
    }
    let mut page = page;
    open_personal(&state, &mut page.items).await?;
    Ok(Json(page))
}

/// The aggregate type named in a path (`account`, `booking`, `payment`, `subscription`).
pub(crate) fn aggregate_type_of(name: &str) -> Result<&'static str, AppError> {
    match name.to_ascii_lowercase().as_str() {
        "account" => Ok("Account"),
        "booking" => Ok("Booking"),
        "payment" => Ok("Payment"),
        "subscription" => Ok("Subscription"),
        _ => Err(AppError::not_found()),
    }
}

/// One event by its id (auditor or admin): where a causation id leads.
#[utoipa::path(get, path = "/v1/audit/events/{event_id}", tag = "audit",
    params(("event_id" = Uuid, Path, description = "An event's id (a causation id names one)"), ReadParams),
    responses((status = 200, body = AuditEvent), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn audit_event(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(event_id): IdPath,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<AuditEvent>, AppError> {
    principal.require_any(&[Role::Auditor, Role::Admin])?;
    read_your_writes(&state, params.min_position).await?;
    let event = temporal::audit_event(&state.pool, event_id)
        .await
        .map_err(database)?
        .ok_or_else(AppError::not_found)?;
    let mut events = [event];
    open_personal(&state, &mut events).await?;
    let [event] = events;
    Ok(Json(event))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CausedByParams {
    /// The event whose effects to list.
    pub caused_by: Uuid,
    /// 1 to 500; 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// The events an event caused (auditor or admin): the commands a process issued in
/// reaction to it, in every stream, in append order.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit", params(CausedByParams),
    responses((status = 200, body = Page<AuditEvent>), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn caused_by(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<CausedByParams>,
) -> Result<Json<Page<AuditEvent>>, AppError> {
    principal.require_any(&[Role::Auditor, Role::Admin])?;
    let limit = limit(params.limit)?;
    read_your_writes(&state, params.min_position).await?;
    let mut page = temporal::caused_by(
        &state.pool,
        params.caused_by,
        params.cursor.as_deref(),
        limit,
    )
    .await
    .map_err(database)?
    .map_err(|_| invalid_cursor())?;
    open_personal(&state, &mut page.items).await?;
    Ok(Json(page))
}

/// Opens the sealed personal fields of `events` for the auditor: in plain text while
/// the subject's key exists, as erased after (ADR 0035), erased guests written as API.md
/// has them.
async fn open_personal(
    state: &AppState,
    events: &mut [temporal::AuditEvent],
) -> Result<(), AppError> {
    open_sealed(state, events).await?;
    for payload in events.iter_mut().filter_map(|e| e.payload.as_mut()) {
        show_erased_guest(payload);
    }
    Ok(())
}

async fn open_sealed(
    state: &AppState,
    events: &mut [temporal::AuditEvent],
) -> Result<(), AppError> {
    let Some(keys) = state.commands.key_store() else {
        return Ok(());
    };
    let payloads: Vec<(Vec<u8>, &serde_json::Value)> = events
        .iter()
        .filter_map(|e| {
            let payload = e.payload.as_ref()?;
            let id = e.aggregate_id.to_string();
            let here = place(&e.aggregate_type, &id, e.sequence, &e.event_type);
            Some((here, payload))
        })
        .collect();
    if payloads.iter().all(|(_, p)| sealed_part(p).is_none()) {
        return Ok(());
    }
    let mut connection = state.pool.acquire().await.map_err(database)?;
    let opened = open_payloads(&mut connection, keys.master_keys(), &payloads)
        .await
        .map_err(|e| AppError::internal(&e))?;
    let mut opened = opened.into_iter();
    for event in events.iter_mut().filter(|e| e.payload.is_some()) {
        if let Some(Some(payload)) = opened.next() {
            event.payload = Some(payload);
        }
    }
    Ok(())
}
