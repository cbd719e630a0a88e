//! The one error type of the HTTP edge: every failure becomes an RFC 9457
//! `application/problem+json` body with a stable machine `code`. Internal details are
//! logged, never returned.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chronicle_commands::CommandError;
use chronicle_domain::DomainError;
use serde::Serialize;

/// An error answered to the client.
#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// The offending field, for validation failures.
    pub field: Option<&'static str>,
    /// Seconds after which retrying makes sense (503, 429).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// A failure whose cause must not reach the client: logged here, answered as 500.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }

    /// The same error, telling the client to retry after `seconds` (`Retry-After`).
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The database or another dependency is out of reach.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "dependency unavailable");
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a dependency is unavailable; retry shortly",
        );
        error.retry_after = Some(1);
        error
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let problem = Problem {
            kind: format!("urn:chronicle:problem:{}", self.code),
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            field: self.field,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<DomainError> for AppError {
    fn from(error: DomainError) -> Self {
        let status = match &error {
            DomainError::NotFound => return Self::not_found(),
            DomainError::AlreadyExists => StatusCode::CONFLICT,
            DomainError::VersionConflict { .. } => StatusCode::PRECONDITION_FAILED,
            DomainError::Validation { .. }
            | DomainError::InsufficientFunds { .. }
            | DomainError::CurrencyMismatch { .. }
            | DomainError::AccountClosed
            | DomainError::BalanceNotZero { .. }
            | DomainError::InvalidTransition { .. }
            | DomainError::BookingStarted
            | DomainError::RefundExceedsCaptured { .. }
            | DomainError::AmountOutOfRange => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let field = match &error {
            DomainError::Validation { field, .. } => Some(*field),
            _ => None,
        };
        let mut app = Self::new(status, error.code(), error.to_string());
        app.field = field;
        app
    }
}

impl From<CommandError> for AppError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Rejected(e) => e.into(),
            CommandError::SeatTaken => Self::new(
                StatusCode::CONFLICT,
                "seat_taken",
                "a requested seat is already booked for an overlapping time",
            ),
            CommandError::IdempotencyKeyUsed => idempotency_key_reused(),
            CommandError::Contention { attempts } => Self::new(
                StatusCode::CONFLICT,
                "version_conflict",
                format!("the resource kept changing concurrently ({attempts} attempts); retry"),
            ),
            CommandError::Unavailable(e) => Self::unavailable(&e),
            CommandError::Internal(e) => Self::internal(&e),
        }
    }
}

impl From<chronicle_eventstore::StoreError> for AppError {
    fn from(error: chronicle_eventstore::StoreError) -> Self {
        CommandError::from(error).into()
    }
}

/// The same `Idempotency-Key` came with a different request.
pub fn idempotency_key_reused() -> AppError {
    AppError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this Idempotency-Key was already used with a different request",
    )
}
