//! The query endpoints. They read the read models only; `min_position` makes them wait,
//! bounded, until the read models have applied a command's position.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chronicle_domain::{Actor, BookingStatus, Role};
use chronicle_projections::queries::{
    self, AccountView, BookingFilter, BookingView, LedgerLine, Page, PaymentView,
};
use chronicle_projections::subscriptions::{self, SubscriptionView};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::extract::{ApiQuery, IdPath};
use crate::problem::AppError;

/// `?min_position=`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// Wait (bounded) until the read model has applied this position.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
}

/// `?min_position=&limit=&cursor=`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Wait (bounded) until the read model has applied this position.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
    /// 1 to 500; 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// `GET /v1/bookings` parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BookingListParams {
    /// Wait (bounded) until the read model has applied this position.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
    /// 1 to 500; 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    pub account_id: Option<Uuid>,
    pub status: Option<String>,
    pub resource_id: Option<String>,
}

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

pub(crate) fn limit(requested: Option<i64>) -> Result<i64, AppError> {
    match requested.unwrap_or(DEFAULT_LIMIT) {
        n if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(validation(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

pub(crate) fn validation(field: &'static str, reason: String) -> AppError {
    let mut error = AppError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
        format!("{field}: {reason}"),
    );
    error.field = Some(field);
    error
}

pub(crate) fn invalid_cursor() -> AppError {
    AppError::bad_request("invalid_cursor", "the cursor was not issued by this server")
}

/// Whether `actor` may read something owned by `owner`: its own, or any for admins and
/// auditors.
pub(crate) fn may_read(actor: &Actor, owner: &str) -> bool {
    actor.subject == owner || actor.has(Role::Admin) || actor.has(Role::Auditor)
}

pub(crate) fn sees_everything(actor: &Actor) -> bool {
    actor.has(Role::Admin) || actor.has(Role::Auditor)
}

/// Waits until the read models have applied `min_position`, or answers 503.
pub(crate) async fn read_your_writes(
    state: &AppState,
    min_position: Option<i64>,
) -> Result<(), AppError> {
    let Some(position) = min_position else {
        return Ok(());
    };
    if !state.watch.exists(position).await.map_err(database)? {
        return Err(validation(
            "min_position",
            format!("no event has position {position}; use the position a command answered"),
        ));
    }
    let applied = state
        .watch
        .wait_for(position, state.reads.min_position_timeout)
        .await
        .map_err(|e| AppError::unavailable(&e))?;
    if applied {
        return Ok(());
    }
    Err(not_yet_applied(position))
}

/// 503: the read model behind a query has not applied `position` in time.
pub(crate) fn not_yet_applied(position: i64) -> AppError {
    let mut error = AppError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "position_not_yet_applied",
        format!("the read models have not applied position {position} yet; retry shortly"),
    );
    error.retry_after = Some(1);
    error
}

pub(crate) fn database(error: sqlx::Error) -> AppError {
    if chronicle_eventstore::error::is_unavailable(&error) {
        AppError::unavailable(&error)
    } else {
        AppError::internal(&error)
    }
}

/// An account, from the read models.
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = Uuid, Path, description = "The account's id"), ReadParams),
    responses((status = 200, body = AccountView), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn account(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<AccountView>, AppError> {
    read_your_writes(&state, params.min_position).await?;
    let account = queries::account(&state.pool, id).await.map_err(database)?;
    account
        .filter(|a| may_read(&principal.0, &a.owner))
        .map(Json)
        .ok_or_else(AppError::not_found)
}

/// An account's ledger lines in order, keyset-paged.
#[utoipa::path(get, path = "/v1/accounts/{id}/transactions", tag = "accounts", params(("id" = Uuid, Path, description = "The account's id"), PageParams),
    responses((status = 200, body = Page<LedgerLine>), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn transactions(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<Page<LedgerLine>>, AppError> {
    let limit = limit(params.limit)?;
    read_your_writes(&state, params.min_position).await?;
    let account = queries::account(&state.pool, id).await.map_err(database)?;
    if !account.is_some_and(|a| may_read(&principal.0, &a.owner)) {
        return Err(AppError::not_found());
    }
    queries::ledger(&state.pool, id, params.cursor.as_deref(), limit)
        .await
        .map_err(database)?
        .map(Json)
        .map_err(|_| invalid_cursor())
}

/// `GET /v1/bookings/{id}` parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BookingParams {
    /// Wait (bounded) until the read model has applied this position.
    #[param(minimum = 0)]
    pub min_position: Option<i64>,
    /// Transaction time: the booking as Chronicle knew it then.
    pub as_of: Option<chrono::DateTime<chrono::Utc>>,
}

/// A booking now, or as of a transaction time.
#[utoipa::path(get, path = "/v1/bookings/{id}", tag = "bookings", params(("id" = Uuid, Path, description = "The booking's id"), BookingParams),
    responses((status = 200, body = BookingView), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn booking(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
    ApiQuery(params): ApiQuery<BookingParams>,
) -> Result<Json<BookingView>, AppError> {
    read_your_writes(&state, params.min_position).await?;
    let booking = match params.as_of {
        None => queries::booking(&state.pool, id).await,
        Some(at) => chronicle_projections::temporal::booking_as_of(&state.pool, id, at).await,
    }
    .map_err(database)?;
    let mut booking = booking
        .filter(|b| may_read(&principal.0, &b.owner))
        .ok_or_else(AppError::not_found)?;
    open_bookings(&state, std::slice::from_mut(&mut booking)).await?;
    Ok(Json(booking))
}

/// Opens the sealed guests and notes of `bookings` with their subjects' keys: plain
/// text while a key exists, erased after (ADR 0035).
pub(crate) async fn open_bookings(
    state: &AppState,
    bookings: &mut [BookingView],
) -> Result<(), AppError> {
    let Some(keys) = state.commands.key_store() else {
        return Ok(());
    };
    for booking in bookings {
        let Some((subject, version)) = booking.sealed_under() else {
            booking.sealed = None;
            continue;
        };
        let subject = chronicle_eventstore::personal::SubjectId(subject);
        let key = keys
            .for_reading(&subject, version)
            .await
            .map_err(|e| match e {
                chronicle_eventstore::error::StoreError::Unavailable(e) => {
                    AppError::unavailable(&e)
                }
                other => AppError::internal(&other),
            })?;
        booking
            .open_with(key.as_ref())
            .map_err(|e| AppError::internal(&e))?;
    }
    Ok(())
}

/// Bookings, newest first, filtered; clients see their own.
#[utoipa::path(get, path = "/v1/bookings", tag = "bookings", params(BookingListParams),
    responses((status = 200, body = Page<BookingView>), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn bookings(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<BookingListParams>,
) -> Result<Json<Page<BookingView>>, AppError> {
    let limit = limit(params.limit)?;
    if let Some(status) = &params.status
        && BookingStatus::parse(status).is_none()
    {
        return Err(validation(
            "status",
            "must be one of pending, confirmed, rejected, cancelled, expired".into(),
        ));
    }
    read_your_writes(&state, params.min_position).await?;
    let filter = BookingFilter {
        owner: (!sees_everything(&principal.0)).then(|| principal.0.subject.clone()),
        account_id: params.account_id,
        status: params.status,
        resource_id: params.resource_id,
    };
    let mut page = queries::bookings(&state.pool, &filter, params.cursor.as_deref(), limit)
        .await
        .map_err(database)?
        .map_err(|_| invalid_cursor())?;
    open_bookings(&state, &mut page.items).await?;
    Ok(Json(page))
}

/// A payment or a subscription (the third kind of payment), as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PaymentRead {
    Payment(PaymentView),
    Subscription(SubscriptionView),
}

/// A payment, or a subscription with its period in progress, next charge and history,
/// from the read models.
#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments", params(("id" = Uuid, Path, description = "The payment's id"), ReadParams),
    responses((status = 200, body = PaymentRead), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn payment(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<PaymentRead>, AppError> {
    read_your_writes(&state, params.min_position).await?;
    if let Some(payment) = queries::payment(&state.pool, id).await.map_err(database)? {
        return Some(payment)
            .filter(|p| may_read(&principal.0, &p.owner))
            .map(|p| Json(PaymentRead::Payment(p)))
            .ok_or_else(AppError::not_found);
    }
    let now = chronicle_eventstore::clock::now();
    subscriptions::subscription(&state.pool, id, now)
        .await
        .map_err(database)?
        .filter(|s| may_read(&principal.0, &s.owner))
        .map(|s| Json(PaymentRead::Subscription(s)))
        .ok_or_else(AppError::not_found)
}
