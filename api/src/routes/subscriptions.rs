//! Subscriptions, the third kind of payment (ADR 0034): started by `POST /v1/payments`
//! with `kind: "subscription"`, changed by `/cancel`, `/pause`, `/resume` and
//! `/change-plan`, read with their invoices. Each change is an event carrying its
//! reason; its actor is in the event's metadata.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use chronicle_domain::billing::Interval;
use chronicle_domain::subscription::{
    Plan, SubscriptionCommand, SubscriptionRequest, SubscriptionStatus,
};
use chronicle_domain::values::Note;
use chronicle_domain::{Amount, Currency, DomainError, Money};
use chronicle_projections::subscriptions::{self, InvoiceLine};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::payments::{InitiatePaymentBody, PaymentAccepted};
use super::reads::{ReadParams, database, may_read, read_your_writes};
use super::{created, ok};
use crate::AppState;
use crate::auth::Principal;
use crate::command::Commander;
use crate::extract::{ApiJson, ApiQuery, IdPath, OptionalJson};
use crate::problem::AppError;

/// A subscription's plan, as a client gives it.
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    pub name: String,
    /// Minor units per period.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// `week`, `month` or `year`.
    #[schema(example = "month")]
    pub interval: String,
}

impl PlanBody {
    fn plan(&self) -> Result<Plan, DomainError> {
        let interval = Interval::parse(&self.interval)
            .ok_or_else(|| DomainError::invalid("plan.interval", "week, month or year"))?;
        let currency = Currency::parse(&self.currency)?;
        Ok(Plan {
            name: self.name.clone(),
            price: Money::new(Amount::new("plan.amount", self.amount)?, currency),
            interval,
        })
    }
}

/// Starts a subscription: the body of `POST /v1/payments` with `kind: "subscription"`.
pub(super) async fn start(
    state: &AppState,
    commander: &Commander,
    body: &InitiatePaymentBody,
) -> Result<Response, AppError> {
    let accepted = commander
        .execute(state, "POST /v1/payments", body, |metadata| async move {
            if body.amount.is_some() || body.currency.is_some() || body.schedule.is_some() {
                return Err(DomainError::invalid(
                    "kind",
                    "a subscription takes its amount and currency from `plan`, and has no `schedule`",
                )
                .into());
            }
            let plan = body
                .plan
                .as_ref()
                .ok_or_else(|| DomainError::invalid("plan", "required for a subscription"))?
                .plan()?;
            let owner = state
                .commands
                .chargeable_account(&commander.principal.0, body.account_id, plan.price.currency)
                .await?;
            let id = body.payment_id.unwrap_or_else(Uuid::new_v4);
            let request = SubscriptionRequest {
                subscription_id: id,
                account_id: body.account_id,
                owner,
                plan,
                trial_days: body.trial_days.unwrap_or(0),
                starts_at: body.starts_at,
            };
            let issued = commander.issue(SubscriptionCommand::Start(request));
            state.commands.subscription(id, issued, &metadata).await
        })
        .await?;
    let status = if body.trial_days.unwrap_or(0) > 0 {
        SubscriptionStatus::Trialing
    } else {
        SubscriptionStatus::Active
    };
    let location = format!("/v1/payments/{}", accepted.aggregate_id);
    let answer = PaymentAccepted {
        status: Some(status.as_str()),
        ..PaymentAccepted::new(&accepted)
    };
    Ok(created(location, &accepted, answer))
}

/// Body of `POST /v1/payments/{id}/cancel`.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelSubscriptionBody {
    /// True (the default): it ends when the period in progress does, with nothing more
    /// charged. False: it ends now and the unused part of the period is refunded.
    pub at_period_end: Option<bool>,
    pub reason: Option<String>,
}

/// Body of `POST /v1/payments/{id}/pause` and `/resume`.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    pub reason: Option<String>,
}

/// Body of `POST /v1/payments/{id}/change-plan`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePlanBody {
    pub plan: PlanBody,
    /// False (the default): now, with the unused part of the period on the old plan
    /// credited and the rest of it on the new plan charged. True: from the next period.
    pub at_period_end: Option<bool>,
    pub reason: Option<String>,
}

fn note(reason: Option<&str>) -> Result<Option<Note>, DomainError> {
    reason.map(|r| Note::parse("reason", r)).transpose()
}

/// Runs `command` on subscription `id` as the request's actor, at the version
/// `If-Match` names, if any.
async fn change(
    state: &AppState,
    commander: &Commander,
    id: Uuid,
    line: &str,
    body: &impl Serialize,
    command: impl FnOnce() -> Result<SubscriptionCommand, DomainError>,
) -> Result<Response, AppError> {
    let accepted = commander
        .execute(state, line, body, |metadata| async move {
            let issued = commander.issue_at_version(command()?);
            state.commands.subscription(id, issued, &metadata).await
        })
        .await?;
    Ok(ok(&accepted, PaymentAccepted::new(&accepted)))
}

/// Cancels a subscription: at the end of the period in progress (the default), or now
/// with the unused part of the period refunded.
#[utoipa::path(post, path = "/v1/payments/{id}/cancel", tag = "subscriptions", request_body(content = Option<CancelSubscriptionBody>),
    params(("id" = Uuid, Path, description = "The subscription's id"), crate::docs::IdempotencyKeyHeader, crate::docs::IfMatchHeader,),
    responses((status = 200, description = "Cancelled, or its cancellation scheduled", body = PaymentAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    commander: Commander,
    IdPath(id): IdPath,
    OptionalJson(body): OptionalJson<CancelSubscriptionBody>,
) -> Result<Response, AppError> {
    let line = format!("POST /v1/payments/{id}/cancel");
    change(&state, &commander, id, &line, &body, || {
        Ok(SubscriptionCommand::Cancel {
            at_period_end: body.at_period_end.unwrap_or(true),
            reason: note(body.reason.as_deref())?,
        })
    })
    .await
}

/// Pauses a subscription: nothing is charged while it is paused, and every later period
/// moves by the time it was paused.
#[utoipa::path(post, path = "/v1/payments/{id}/pause", tag = "subscriptions", request_body(content = Option<ReasonBody>),
    params(("id" = Uuid, Path, description = "The subscription's id"), crate::docs::IdempotencyKeyHeader, crate::docs::IfMatchHeader,),
    responses((status = 200, description = "Paused", body = PaymentAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    commander: Commander,
    IdPath(id): IdPath,
    OptionalJson(body): OptionalJson<ReasonBody>,
) -> Result<Response, AppError> {
    let line = format!("POST /v1/payments/{id}/pause");
    change(&state, &commander, id, &line, &body, || {
        Ok(SubscriptionCommand::Pause {
            reason: note(body.reason.as_deref())?,
        })
    })
    .await
}

/// Resumes a paused subscription.
#[utoipa::path(post, path = "/v1/payments/{id}/resume", tag = "subscriptions", request_body(content = Option<ReasonBody>),
    params(("id" = Uuid, Path, description = "The subscription's id"), crate::docs::IdempotencyKeyHeader, crate::docs::IfMatchHeader,),
    responses((status = 200, description = "Resumed", body = PaymentAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    commander: Commander,
    IdPath(id): IdPath,
    OptionalJson(body): OptionalJson<ReasonBody>,
) -> Result<Response, AppError> {
    let line = format!("POST /v1/payments/{id}/resume");
    change(&state, &commander, id, &line, &body, || {
        Ok(SubscriptionCommand::Resume {
            reason: note(body.reason.as_deref())?,
        })
    })
    .await
}

/// Changes a subscription's plan (same currency and interval): now, prorated, or from
/// the next period.
#[utoipa::path(post, path = "/v1/payments/{id}/change-plan", tag = "subscriptions", request_body = ChangePlanBody,
    params(("id" = Uuid, Path, description = "The subscription's id"), crate::docs::IdempotencyKeyHeader, crate::docs::IfMatchHeader,),
    responses((status = 200, description = "Changed, or the change scheduled", body = PaymentAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn change_plan(
    State(state): State<AppState>,
    commander: Commander,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<ChangePlanBody>,
) -> Result<Response, AppError> {
    let line = format!("POST /v1/payments/{id}/change-plan");
    change(&state, &commander, id, &line, &body, || {
        Ok(SubscriptionCommand::ChangePlan {
            plan: body.plan.plan()?,
            at_period_end: body.at_period_end.unwrap_or(false),
            reason: note(body.reason.as_deref())?,
        })
    })
    .await
}

/// A subscription's invoice lines.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Invoices {
    pub payment_id: Uuid,
    pub lines: Vec<InvoiceLine>,
}

/// A subscription's invoice lines in order: each period's charge, each plan change's
/// proration credit and charge, and a cancellation's refund.
#[utoipa::path(get, path = "/v1/payments/{id}/invoices", tag = "subscriptions", params(("id" = Uuid, Path, description = "The subscription's id"), ReadParams),
    responses((status = 200, body = Invoices), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn invoices(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<Invoices>, AppError> {
    read_your_writes(&state, params.min_position).await?;
    let owner = subscriptions::owner(&state.pool, id)
        .await
        .map_err(database)?;
    if !owner.is_some_and(|owner| may_read(&principal.0, &owner)) {
        return Err(AppError::not_found());
    }
    let lines = subscriptions::invoices(&state.pool, id)
        .await
        .map_err(database)?;
    Ok(Json(Invoices {
        payment_id: id,
        lines,
    }))
}
