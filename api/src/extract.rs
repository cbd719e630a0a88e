//! Extractors whose rejections are problem+json, so malformed input always gets the same
//! shape of answer.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::problem::AppError;

/// A JSON body. Syntax errors answer 400, type and shape errors 422, a missing JSON
/// content type 415, and bodies over the limit 413.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A JSON body that may be absent altogether (then `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = has_json_content_type(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                payload_too_large()
            } else {
                AppError::bad_request("malformed_body", rejection.body_text())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        if !is_json {
            return Err(unsupported_media_type());
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn has_json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

fn payload_too_large() -> AppError {
    AppError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body exceeds the configured limit",
    )
}

fn unsupported_media_type() -> AppError {
    AppError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as application/json",
    )
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    match rejection {
        JsonRejection::JsonDataError(e) => AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            e.body_text(),
        ),
        JsonRejection::JsonSyntaxError(e) => AppError::bad_request("malformed_json", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => unsupported_media_type(),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
        other => AppError::bad_request("malformed_body", other.body_text()),
    }
}

/// Query parameters. Unknown names, wrong types and out-of-range values answer 422.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                rejection.body_text(),
            )),
        }
    }
}

/// An aggregate id in the path. Something that is not a UUID names nothing: 404.
pub struct IdPath(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<Uuid>::from_request_parts(parts, state)
            .await
            .map_err(|_: PathRejection| AppError::not_found())?;
        Ok(Self(id))
    }
}

/// The headers that shape a command: `Idempotency-Key`, `If-Match`, `X-Request-Id` and
/// `X-Correlation-Id`.
#[derive(Clone, Debug)]
pub struct CommandHeaders {
    pub idempotency_key: Option<String>,
    pub expected_version: Option<u64>,
    pub request_id: Uuid,
    pub correlation_id: Option<Uuid>,
}

impl<S: Send + Sync> FromRequestParts<S> for CommandHeaders {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        let text = |name: &str| headers.get(name).map(|v| v.to_str().map(str::trim));
        let idempotency_key = match text("idempotency-key") {
            None => None,
            Some(Ok(key)) if valid_idempotency_key(key) => Some(key.to_owned()),
            Some(_) => {
                return Err(AppError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                ));
            }
        };
        let expected_version = match text("if-match") {
            None => None,
            Some(Ok(value)) => parse_if_match(value)?,
            Some(Err(_)) => return Err(invalid_if_match()),
        };
        let uuid_header = |name: &str| match text(name) {
            Some(Ok(value)) => Uuid::parse_str(value).ok(),
            _ => None,
        };
        Ok(Self {
            idempotency_key,
            expected_version,
            request_id: parts
                .extensions
                .get::<crate::RequestId>()
                .map(|r| r.0)
                .unwrap_or_else(Uuid::new_v4),
            correlation_id: uuid_header("x-correlation-id"),
        })
    }
}

fn valid_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

fn invalid_if_match() -> AppError {
    AppError::bad_request(
        "invalid_if_match",
        "If-Match must be an aggregate version in quotes, e.g. \"3\"",
    )
}

/// `"3"`, `W/"3"` and `3` name version 3; `*` asks only that the aggregate exists, which
/// every command on an existing aggregate checks anyway.
fn parse_if_match(value: &str) -> Result<Option<u64>, AppError> {
    if value == "*" {
        return Ok(None);
    }
    let tag = value.strip_prefix("W/").unwrap_or(value);
    let tag = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    tag.parse::<u64>().map(Some).map_err(|_| invalid_if_match())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_accepts_quoted_weak_and_bare_versions() {
        assert_eq!(parse_if_match("\"3\"").unwrap(), Some(3));
        assert_eq!(parse_if_match("W/\"4\"").unwrap(), Some(4));
        assert_eq!(parse_if_match("5").unwrap(), Some(5));
        assert_eq!(parse_if_match("*").unwrap(), None);
        assert_eq!(
            parse_if_match("\"x\"").unwrap_err().code,
            "invalid_if_match"
        );
    }

    #[test]
    fn idempotency_keys_are_short_visible_ascii() {
        assert!(valid_idempotency_key("order-42"));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("has space"));
        assert!(!valid_idempotency_key(&"k".repeat(256)));
    }
}
