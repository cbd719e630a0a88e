//! `GET /v1/search/bookings`, served from the search index only.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use chronicle_domain::BookingStatus;
use chronicle_projections::search::{SearchPage, SearchRequest, SearchSort};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::reads::{
    database, invalid_cursor, limit, not_yet_applied, read_your_writes, sees_everything, validation,
};
use crate::AppState;
use crate::auth::Principal;
use crate::extract::ApiQuery;
use crate::problem::AppError;

/// `GET /v1/search/bookings` parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    pub q: Option<String>,
    pub status: Option<String>,
    pub resource_id: Option<String>,
    pub account_id: Option<Uuid>,
    /// `starts_at` at or after.
    pub from: Option<DateTime<Utc>>,
    /// `starts_at` before.
    pub to: Option<DateTime<Utc>>,
    /// `relevance` (default) or `starts_at`.
    pub sort: Option<String>,
    /// 1 to 500; 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    /// Wait (bounded) until the read model has applied this position.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

fn request(principal: &Principal, params: SearchParams) -> Result<SearchRequest, AppError> {
    if params.q.as_ref().is_some_and(|q| q.chars().count() > 500) {
        return Err(validation("q", "must be at most 500 characters".into()));
    }
    if let Some(status) = &params.status
        && BookingStatus::parse(status).is_none()
    {
        return Err(validation(
            "status",
            "must be one of pending, confirmed, rejected, cancelled, expired".into(),
        ));
    }
    let sort = match params.sort.as_deref() {
        None | Some("relevance") => SearchSort::Relevance,
        Some("starts_at") => SearchSort::StartsAt,
        Some(_) => return Err(validation("sort", "must be relevance or starts_at".into())),
    };
    if let (Some(from), Some(to)) = (params.from, params.to)
        && to <= from
    {
        return Err(validation("to", "must be after from".into()));
    }
    Ok(SearchRequest {
        text: params.q,
        owner: (!sees_everything(&principal.0)).then(|| principal.0.subject.clone()),
        status: params.status,
        resource_id: params.resource_id,
        account_id: params.account_id,
        from: params.from,
        to: params.to,
        sort,
        limit: limit(params.limit)? as usize,
        cursor: params.cursor,
    })
}

/// Full-text search over bookings: guest name (prefixes too), email, notes, resource;
/// case- and accent-insensitive, one typo tolerated in words of five letters or more.
#[utoipa::path(get, path = "/v1/search/bookings", tag = "search", params(SearchParams),
    responses((status = 200, body = SearchPage), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn bookings(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<SearchPage>, AppError> {
    let min_position = params.min_position;
    let request = request(&principal, params)?;
    search_your_writes(&state, min_position).await?;
    let index = state.search.clone();
    let page = tokio::task::spawn_blocking(move || index.search(&request))
        .await
        .map_err(|e| AppError::internal(&e))?;
    match page {
        Ok(page) => Ok(Json(page)),
        Err(chronicle_projections::search::query::SearchError::InvalidCursor(_)) => {
            Err(invalid_cursor())
        }
        Err(error) => Err(AppError::internal(&error)),
    }
}

/// Waits until the search index shows the event at `min_position`: first until the
/// read models know which event that is, then, for a booking event, until the index
/// holds that booking at that version or later.
async fn search_your_writes(state: &AppState, min_position: Option<i64>) -> Result<(), AppError> {
    let Some(position) = min_position.filter(|p| *p > 0) else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + state.reads.min_position_timeout;
    read_your_writes(state, Some(position)).await?;
    let event = chronicle_projections::queries::applied_event(&state.pool, position)
        .await
        .map_err(database)?;
    let Some(event) = event else {
        return Err(not_yet_applied(position));
    };
    if event.aggregate_type != "Booking" {
        return Ok(());
    }
    let (booking, sequence) = (event.aggregate_id, event.sequence);
    loop {
        let index = state.search.clone();
        let indexed = tokio::task::spawn_blocking(move || {
            index.refresh()?;
            index.get(booking)
        })
        .await
        .map_err(|e| AppError::internal(&e))?
        .map_err(|e| AppError::internal(&e))?;
        if indexed.is_some_and(|b| b.version >= sequence) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(not_yet_applied(position));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
