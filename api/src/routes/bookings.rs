//! `POST /v1/bookings` and the commands on one booking.

use axum::extract::State;
use axum::response::Response;
use chronicle_domain::booking::BookingRequest;
use chronicle_domain::values::{Guest, Note, ResourceId, Seats};
use chronicle_domain::{Amount, BookingCommand, BookingStatus, Currency, DomainError, Money};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{created, ok};
use crate::AppState;
use crate::command::{Accepted, Commander};
use crate::extract::{ApiJson, IdPath, OptionalJson};
use crate::problem::AppError;

/// An amount in a currency.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyBody {
    /// Minor units.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
}

/// The guest a booking is for.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestBody {
    pub name: String,
    pub email: String,
}

/// Body of `POST /v1/bookings`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestBookingBody {
    /// Chosen by the server when absent.
    pub booking_id: Option<Uuid>,
    pub account_id: Uuid,
    pub resource_id: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// Distinct seat ids.
    #[schema(min_items = 1, max_items = 100)]
    pub seats: Vec<String>,
    pub price: MoneyBody,
    pub guest: GuestBody,
    pub notes: Option<String>,
}

/// Body of `POST /v1/bookings/{id}/cancel`.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    pub reason: Option<String>,
}

/// The answer to a booking command.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BookingAccepted {
    pub booking_id: Uuid,
    pub status: &'static str,
    pub version: i64,
    pub position: i64,
}

impl BookingAccepted {
    fn new(accepted: &Accepted, status: BookingStatus) -> Self {
        Self {
            booking_id: accepted.aggregate_id,
            status: status.as_str(),
            version: accepted.version,
            position: accepted.position,
        }
    }
}

fn booking_request(
    body: &RequestBookingBody,
    id: Uuid,
    owner: String,
) -> Result<BookingRequest, DomainError> {
    Ok(BookingRequest {
        booking_id: id,
        account_id: body.account_id,
        owner,
        resource_id: ResourceId::parse(&body.resource_id)?,
        seats: Seats::parse(&body.seats)?,
        starts_at: body.starts_at,
        ends_at: body.ends_at,
        price: Money::new(
            Amount::new("price.amount", body.price.amount)?,
            Currency::parse(&body.price.currency)?,
        ),
        guest: Guest::parse(&body.guest.name, &body.guest.email)?,
        notes: body
            .notes
            .as_deref()
            .map(|n| Note::parse("notes", n))
            .transpose()?,
    })
}

/// Requests a booking; it stays `pending` until the process manager has charged its
/// account, then becomes `confirmed` or `rejected`.
#[utoipa::path(post, path = "/v1/bookings", tag = "bookings", request_body = RequestBookingBody,
    params(crate::docs::IdempotencyKeyHeader),
    responses((status = 201, description = "Requested (pending)", body = BookingAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn request(
    State(state): State<AppState>,
    commander: Commander,
    ApiJson(body): ApiJson<RequestBookingBody>,
) -> Result<Response, AppError> {
    let (state, body, commander) = (&state, &body, &commander);
    let accepted = commander
        .execute(state, "POST /v1/bookings", body, |metadata| async move {
            let currency = Currency::parse(&body.price.currency)?;
            let owner = state
                .commands
                .chargeable_account(&commander.principal.0, body.account_id, currency)
                .await?;
            let id = body.booking_id.unwrap_or_else(Uuid::new_v4);
            let request = booking_request(body, id, owner)?;
            let issued = commander.issue(BookingCommand::RequestBooking(Box::new(request)));
            state.commands.booking(id, issued, &metadata).await
        })
        .await?;
    let location = format!("/v1/bookings/{}", accepted.aggregate_id);
    Ok(created(
        location,
        &accepted,
        BookingAccepted::new(&accepted, BookingStatus::Pending),
    ))
}

/// Cancels a booking before it starts (422 `booking_started` after); a confirmed one is
/// refunded.
#[utoipa::path(post, path = "/v1/bookings/{id}/cancel", tag = "bookings", request_body(content = Option<CancelBody>),
    params(("id" = Uuid, Path, description = "The booking's id"), crate::docs::IdempotencyKeyHeader, crate::docs::IfMatchHeader,),
    responses((status = 200, description = "Cancelled", body = BookingAccepted), crate::docs::CommandErrors),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    commander: Commander,
    IdPath(id): IdPath,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> Result<Response, AppError> {
    let line = format!("POST /v1/bookings/{id}/cancel");
    let (state, body, commander) = (&state, &body, &commander);
    let accepted = commander
        .execute(state, &line, body, |metadata| async move {
            let reason = body
                .reason
                .as_deref()
                .map(|r| Note::parse("reason", r))
                .transpose()?;
            let issued = commander.issue_at_version(BookingCommand::CancelBooking { reason });
            state.commands.booking(id, issued, &metadata).await
        })
        .await?;
    Ok(ok(
        &accepted,
        BookingAccepted::new(&accepted, BookingStatus::Cancelled),
    ))
}
