//! The OpenAPI 3.1 document, generated from the handlers' annotations, and the shapes
//! of errors every endpoint shares. Served at `/openapi.json`; `/docs` is Swagger UI
//! with its assets bundled into the binary (no CDN).

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use crate::routes::{
    accounts, audit, bookings, feed, ops, payments, reads, search, subjects, subscriptions,
    temporal,
};

/// The stable machine codes of errors.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ErrorCode {
    ValidationFailed,
    MalformedJson,
    MalformedBody,
    UnsupportedMediaType,
    PayloadTooLarge,
    InvalidIfMatch,
    InvalidIdempotencyKey,
    InvalidCursor,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    AlreadyExists,
    VersionConflict,
    SeatTaken,
    InsufficientFunds,
    CurrencyMismatch,
    AccountClosed,
    BalanceNotZero,
    InvalidTransition,
    BookingStarted,
    RefundExceedsCaptured,
    AmountOutOfRange,
    IdempotencyKeyReused,
    PositionNotYetApplied,
    InvalidFeedPosition,
    FeedPositionExpired,
    TooManyStreams,
    RateLimited,
    Overloaded,
    Timeout,
    Unavailable,
    Internal,
}

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// A URN naming the problem type: `urn:chronicle:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: ErrorCode,
    /// The offending field, for validation failures.
    pub field: Option<String>,
}

/// The errors a command can answer.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum CommandErrors {
    /// Malformed JSON, or a bad `If-Match` or `Idempotency-Key` header.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// No bearer token, or an invalid one.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// The principal lacks the role (e.g. an auditor moving money).
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// No such aggregate, or not the principal's.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// `seat_taken`, `already_exists`, or `version_conflict` after server-side retries.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// `version_conflict`: `If-Match` named another version.
    #[response(status = 412, content_type = "application/problem+json")]
    PreconditionFailed(Problem),
    /// The body is larger than the configured limit.
    #[response(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Problem),
    /// The body is not `application/json`.
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// `validation_failed`, `insufficient_funds`, `currency_mismatch`, `account_closed`,
    /// `balance_not_zero`, `invalid_transition`, `booking_started`,
    /// `refund_exceeds_captured`, `amount_out_of_range`, `idempotency_key_reused`.
    #[response(status = 422, content_type = "application/problem+json")]
    Unprocessable(Problem),
    /// Over the principal's rate limit (`Retry-After`, `RateLimit` headers).
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Problem),
    /// `unavailable`, `overloaded` or `timeout`; retry after `Retry-After`.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

/// The errors a query can answer.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum QueryErrors {
    /// An invalid cursor.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// The principal lacks the role.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// No such resource, or not the principal's.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// Unknown, malformed or out-of-range parameters.
    #[response(status = 422, content_type = "application/problem+json")]
    Unprocessable(Problem),
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Problem),
    /// `position_not_yet_applied` (`min_position` not reached in time), `unavailable`,
    /// `timeout`.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT with `sub` and `roles` (client, auditor, analyst, admin); \
                         `chronicle token --sub alice --role client` prints one",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chronicle",
        description = "Event-sourced booking platform: accounts, bookings, payments. Commands append \
                       events; queries read projections. See the README for the operator's contract.",
    ),
    paths(
        accounts::open, accounts::deposit, accounts::withdraw, accounts::close,
        bookings::request, bookings::cancel,
        payments::initiate, payments::refund,
        subscriptions::cancel, subscriptions::pause, subscriptions::resume,
        subscriptions::change_plan, subscriptions::invoices,
        reads::account, reads::transactions, reads::booking, reads::bookings, reads::payment,
        search::bookings,
        temporal::balance, temporal::revenue, temporal::occupancy, temporal::audit,
        temporal::subscriptions, temporal::mrr, temporal::audit_event, temporal::caused_by,
        audit::checkpoints, audit::public_key, audit::verification,
        feed::feed, feed::ticket,
        subjects::erase, subjects::personal_data,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(Problem, ErrorCode, feed::ResumeNotice)),
    modifiers(&BearerAuth),
    tags(
        (name = "accounts", description = "Wallets: open, deposit, withdraw, close, read"),
        (name = "bookings", description = "Seats on a resource for a time range"),
        (name = "payments", description = "One-time and recurring charges, refunds"),
        (name = "subscriptions", description = "Plans billed per calendar period: the third kind of payment"),
        (name = "search", description = "Full-text search over bookings"),
        (name = "analytics", description = "Temporal queries for analysts"),
        (name = "audit", description = "Event histories and signed checkpoints of the log for auditors"),
        (name = "feed", description = "Live events as Server-Sent Events, resumable exactly (Last-Event-ID)"),
        (name = "privacy", description = "Data subjects' access and erasure requests (roles privacy, admin)"),
        (name = "operations", description = "Health, readiness, metrics"),
    ),
)]
pub struct ApiDoc;

/// The header that makes a command idempotent.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyKeyHeader {
    /// Makes the command idempotent for this principal: the same key with the same request answers the original result
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// The header that makes a command on an existing aggregate conditional on its version.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IfMatchHeader {
    /// The version the aggregate must be at, e.g. "3"; otherwise 412
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}
