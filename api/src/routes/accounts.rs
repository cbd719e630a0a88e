//! `POST /v1/accounts` and the commands on one account.

use axum::extract::State;
use axum::response::Response;
use chronicle_domain::account::Movement;
use chronicle_domain::values::{Owner, Reference};
use chronicle_domain::{AccountCommand, Amount, Currency, Role};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{created, ok};
use crate::AppState;
use crate::command::{Accepted, Commander};
use crate::extract::{ApiJson, IdPath, OptionalJson};
use crate::problem::AppError;

/// Body of `POST /v1/accounts`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAccountBody {
    /// Chosen by the server when absent.
    pub account_id: Option<Uuid>,
    /// The owning principal; the caller itself when absent. Only an admin may name
    /// someone else.
    pub owner: Option<String>,
    /// An active ISO 4217 code.
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    /// How far below zero the balance may go, in minor units.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub overdraft_limit: i64,
}

/// Body of deposits and withdrawals.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MovementBody {
    /// Minor units.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    /// When given, must be the account's currency.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
    /// Makes the movement idempotent on this account.
    pub reference: Option<String>,
}

/// Body of `POST /v1/accounts/{id}/close` (none is needed).
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseBody {}

/// The answer to an account command.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountAccepted {
    pub account_id: Uuid,
    pub version: i64,
    pub position: i64,
}

impl From<&Accepted> for AccountAccepted {
    fn from(a: &Accepted) -> Self {
        Self {
            account_id: a.aggregate_id,
            version: a.version,
            position: a.position,
        }
    }
}

/// Opens an account (its owner is the caller unless an admin names another).
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = OpenAccountBody,
    params(crate::docs::IdempotencyKeyHeader),
    responses((status = 201, description = "Opened", body = AccountAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn open(
    State(state): State<AppState>,
    commander: Commander,
    ApiJson(body): ApiJson<OpenAccountBody>,
) -> Result<Response, AppError> {
    let actor = commander.actor()?;
    let owner = body.owner.clone().unwrap_or_else(|| actor.subject.clone());
    if owner != actor.subject && !actor.has(Role::Admin) {
        return Err(AppError::forbidden(
            "only an admin may open an account for someone else",
        ));
    }
    let (state, body, commander) = (&state, &body, &commander);
    let accepted = commander
        .execute(state, "POST /v1/accounts", body, |metadata| async move {
            let id = body.account_id.unwrap_or_else(Uuid::new_v4);
            let command = AccountCommand::OpenAccount {
                account_id: id,
                owner: Owner::parse(&owner)?,
                currency: Currency::parse(&body.currency)?,
                overdraft_limit: body.overdraft_limit,
            };
            state
                .commands
                .account(id, commander.issue(command), &metadata)
                .await
        })
        .await?;
    let location = format!("/v1/accounts/{}", accepted.aggregate_id);
    Ok(created(
        location,
        &accepted,
        AccountAccepted::from(&accepted),
    ))
}

/// Deposits into an account; a repeated `reference` is a no-op.
#[utoipa::path(post, path = "/v1/accounts/{id}/deposits", tag = "accounts", request_body = MovementBody,
    params(("id" = Uuid, Path, description = "The account's id"), crate::docs::IdempotencyKeyHeader, crate::docs::IfMatchHeader,),
    responses((status = 200, description = "Deposited", body = AccountAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn deposit(
    state: State<AppState>,
    commander: Commander,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<MovementBody>,
) -> Result<Response, AppError> {
    movement(
        state,
        commander,
        id,
        body,
        "deposits",
        AccountCommand::DepositFunds,
    )
    .await
}

/// Withdraws from an account, never below `-overdraft_limit` (422 `insufficient_funds`).
#[utoipa::path(post, path = "/v1/accounts/{id}/withdrawals", tag = "accounts", request_body = MovementBody,
    params(("id" = Uuid, Path, description = "The account's id"), crate::docs::IdempotencyKeyHeader, crate::docs::IfMatchHeader,),
    responses((status = 200, description = "Withdrawn", body = AccountAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn withdraw(
    state: State<AppState>,
    commander: Commander,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<MovementBody>,
) -> Result<Response, AppError> {
    movement(
        state,
        commander,
        id,
        body,
        "withdrawals",
        AccountCommand::WithdrawFunds,
    )
    .await
}

async fn movement(
    State(state): State<AppState>,
    commander: Commander,
    id: Uuid,
    body: MovementBody,
    route: &str,
    command: fn(Movement) -> AccountCommand,
) -> Result<Response, AppError> {
    let line = format!("POST /v1/accounts/{id}/{route}");
    let (state, body, commander) = (&state, &body, &commander);
    let accepted = commander
        .execute(state, &line, body, |metadata| async move {
            let movement = Movement {
                amount: Amount::new("amount", body.amount)?,
                currency: body.currency.as_deref().map(Currency::parse).transpose()?,
                reference: body
                    .reference
                    .as_deref()
                    .map(Reference::parse)
                    .transpose()?,
            };
            let issued = commander.issue_at_version(command(movement));
            state.commands.account(id, issued, &metadata).await
        })
        .await?;
    Ok(ok(&accepted, AccountAccepted::from(&accepted)))
}

/// Closes an account at a zero balance (otherwise 422 `balance_not_zero`).
#[utoipa::path(post, path = "/v1/accounts/{id}/close", tag = "accounts", request_body(content = Option<CloseBody>, description = "Nothing is needed; an empty body or {}"),
    params(("id" = Uuid, Path, description = "The account's id"), crate::docs::IdempotencyKeyHeader, crate::docs::IfMatchHeader,),
    responses((status = 200, description = "Closed", body = AccountAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn close(
    State(state): State<AppState>,
    commander: Commander,
    IdPath(id): IdPath,
    OptionalJson(body): OptionalJson<CloseBody>,
) -> Result<Response, AppError> {
    let line = format!("POST /v1/accounts/{id}/close");
    let (state, commander) = (&state, &commander);
    let accepted = commander
        .execute(state, &line, &body, |metadata| async move {
            let issued = commander.issue_at_version(AccountCommand::CloseAccount);
            state.commands.account(id, issued, &metadata).await
        })
        .await?;
    Ok(ok(&accepted, AccountAccepted::from(&accepted)))
}
