//! `POST /v1/payments` and refunds; subscriptions, the third kind, in `subscriptions`.

use axum::extract::State;
use axum::response::Response;
use chronicle_domain::payment::PaymentRequest;
use chronicle_domain::{
    Amount, Currency, DomainError, Money, PaymentCommand, PaymentKind, PaymentStatus, Schedule,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::subscriptions::{self, PlanBody};
use super::{created, ok};
use crate::AppState;
use crate::command::{Accepted, Commander};
use crate::extract::{ApiJson, IdPath};
use crate::problem::AppError;

/// When a recurring payment charges.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    pub interval_seconds: u32,
    pub count: Option<u32>,
    pub until: Option<DateTime<Utc>>,
}

/// Body of `POST /v1/payments`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitiatePaymentBody {
    /// Chosen by the server when absent.
    pub payment_id: Option<Uuid>,
    pub account_id: Uuid,
    /// Minor units (per charge, for recurring payments); required for `one_time` and
    /// `recurring`, absent for `subscription` (its plan has the amount).
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: Option<i64>,
    /// Required for `one_time` and `recurring`, absent for `subscription`.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: Option<String>,
    pub kind: KindBody,
    pub booking_id: Option<Uuid>,
    /// `recurring` only.
    pub schedule: Option<ScheduleBody>,
    /// `subscription` only: what it bills, how often.
    pub plan: Option<PlanBody>,
    /// `subscription` only: days before the first charge (default 0).
    #[schema(maximum = 366)]
    pub trial_days: Option<u32>,
    /// `subscription` only: when billing starts (after the trial, if any); default now.
    pub starts_at: Option<DateTime<Utc>>,
}

/// The kind of payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[schema(as = PaymentKind)]
#[serde(rename_all = "snake_case")]
pub enum KindBody {
    /// Charged once.
    OneTime,
    /// Charged on a fixed schedule.
    Recurring,
    /// A plan billed per calendar period (ADR 0034).
    Subscription,
}

/// Body of `POST /v1/payments/{id}/refund`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// Minor units.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
}

/// The answer to a payment command.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentAccepted {
    pub payment_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<Uuid>,
    pub version: i64,
    pub position: i64,
}

impl PaymentAccepted {
    pub(super) fn new(accepted: &Accepted) -> Self {
        Self {
            payment_id: accepted.aggregate_id,
            status: None,
            refund_id: None,
            version: accepted.version,
            position: accepted.position,
        }
    }
}

/// Initiates a payment; the process manager charges it (recurring ones at each due
/// time). With `kind: "subscription"` it starts a subscription, billed per calendar
/// period on its plan.
#[utoipa::path(post, path = "/v1/payments", tag = "payments", request_body = InitiatePaymentBody,
    params(crate::docs::IdempotencyKeyHeader),
    responses((status = 201, description = "Initiated", body = PaymentAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn initiate(
    State(state): State<AppState>,
    commander: Commander,
    ApiJson(body): ApiJson<InitiatePaymentBody>,
) -> Result<Response, AppError> {
    let (state, body, commander) = (&state, &body, &commander);
    let kind = match body.kind {
        KindBody::OneTime => PaymentKind::OneTime,
        KindBody::Recurring => PaymentKind::Recurring,
        KindBody::Subscription => return subscriptions::start(state, commander, body).await,
    };
    let accepted = commander
        .execute(state, "POST /v1/payments", body, |metadata| async move {
            if body.plan.is_some() || body.trial_days.is_some() || body.starts_at.is_some() {
                return Err(DomainError::invalid(
                    "kind",
                    "`plan`, `trial_days` and `starts_at` belong to a subscription",
                )
                .into());
            }
            let (Some(amount), Some(currency)) = (body.amount, body.currency.as_deref()) else {
                return Err(DomainError::invalid(
                    "amount",
                    "`amount` and `currency` are required for this kind",
                )
                .into());
            };
            let currency = Currency::parse(currency)?;
            let owner = state
                .commands
                .chargeable_account(&commander.principal.0, body.account_id, currency)
                .await?;
            let id = body.payment_id.unwrap_or_else(Uuid::new_v4);
            let request = PaymentRequest {
                payment_id: id,
                account_id: body.account_id,
                owner,
                amount: Money::new(Amount::new("amount", amount)?, currency),
                kind,
                schedule: body.schedule.as_ref().map(|s| Schedule {
                    interval_seconds: s.interval_seconds,
                    count: s.count,
                    until: s.until,
                }),
                booking_id: body.booking_id,
            };
            let issued = commander.issue(PaymentCommand::InitiatePayment(request));
            state.commands.payment(id, issued, &metadata).await
        })
        .await?;
    let status = match kind {
        PaymentKind::OneTime => PaymentStatus::Pending,
        PaymentKind::Recurring => PaymentStatus::Active,
    };
    let location = format!("/v1/payments/{}", accepted.aggregate_id);
    let answer = PaymentAccepted {
        status: Some(status.as_str()),
        ..PaymentAccepted::new(&accepted)
    };
    Ok(created(location, &accepted, answer))
}

/// Refunds part or all of what was captured (422 `refund_exceeds_captured` beyond).
#[utoipa::path(post, path = "/v1/payments/{id}/refund", tag = "payments", request_body = RefundBody,
    params(("id" = Uuid, Path, description = "The payment's id"), crate::docs::IdempotencyKeyHeader, crate::docs::IfMatchHeader,),
    responses((status = 200, description = "Refunded", body = PaymentAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn refund(
    State(state): State<AppState>,
    commander: Commander,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<RefundBody>,
) -> Result<Response, AppError> {
    let line = format!("POST /v1/payments/{id}/refund");
    let refund_id = commander.derived_id(&line);
    let (state, body, commander) = (&state, &body, &commander);
    let accepted = commander
        .execute(state, &line, body, |metadata| async move {
            let command = PaymentCommand::RefundPayment {
                refund_id,
                amount: Amount::new("amount", body.amount)?,
            };
            let issued = commander.issue_at_version(command);
            state.commands.payment(id, issued, &metadata).await
        })
        .await?;
    let answer = PaymentAccepted {
        refund_id: Some(refund_id),
        ..PaymentAccepted::new(&accepted)
    };
    Ok(ok(&accepted, answer))
}
