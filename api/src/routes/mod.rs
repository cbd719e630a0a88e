//! Route handlers, a module per resource.

pub mod accounts;
pub mod audit;
pub mod bookings;
pub mod console;
pub mod feed;
pub mod ops;
pub mod payments;
pub mod reads;
pub mod search;
pub mod subjects;
pub mod subscriptions;
pub mod temporal;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::command::Accepted;

/// 201 with `Location` and an `ETag` of the new version.
pub(crate) fn created(location: String, accepted: &Accepted, body: impl Serialize) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    with_etag(response, accepted)
}

/// 200 with an `ETag` of the aggregate's version after the command.
pub(crate) fn ok(accepted: &Accepted, body: impl Serialize) -> Response {
    with_etag((StatusCode::OK, Json(body)).into_response(), accepted)
}

fn with_etag(mut response: Response, accepted: &Accepted) -> Response {
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", accepted.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}
