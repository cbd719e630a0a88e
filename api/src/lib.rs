//! Chronicle's HTTP edge: the axum router, authentication, problem+json errors and the
//! command pipeline (idempotency keys, `If-Match`, request metadata). Only this crate
//! knows about HTTP; below it, errors are typed and carry stable codes.

pub mod auth;
pub mod command;
pub mod docs;
pub mod extract;
pub mod limits;
mod metrics;
pub mod problem;
pub mod roles;
mod routes;
pub mod settings;
pub mod telemetry;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chronicle_commands::CommandService;
use chronicle_projections::monitor::LagMonitor;
use chronicle_projections::search::SearchIndex;
use chronicle_projections::watch::ProjectionWatch;
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use uuid::Uuid;

use crate::auth::JwtKeys;
use crate::problem::AppError;
pub use crate::routes::feed::LiveFeed;
use crate::settings::ReadSettings;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub commands: Arc<CommandService>,
    pub pool: PgPool,
    pub keys: Arc<JwtKeys>,
    /// Read-your-writes waits.
    pub watch: ProjectionWatch,
    /// Relay and projector lag, for `/readyz`.
    pub monitor: Arc<LagMonitor>,
    /// The search index (read side).
    pub search: Arc<SearchIndex>,
    /// Rate limits, timeouts and admission (the bounds on work in flight).
    pub limiter: Arc<limits::RateLimiter>,
    pub reads: ReadSettings,
    /// The key checkpoints verify with (ADR 0036).
    pub checkpoint_key: chronicle_eventstore::notary::checkpoint::PublicKey,
    /// The live feed (ADR 0037).
    pub feed: Arc<LiveFeed>,
}

impl FromRef<AppState> for Arc<JwtKeys> {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}

/// Limits the router enforces.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// `CHRONICLE_BODY_LIMIT_BYTES`: larger request bodies answer 413.
    pub body_limit: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
        }
    }
}

/// The id of the request being served (`X-Request-Id` when it is a UUID, else fresh).
#[derive(Clone, Copy, Debug)]
pub struct RequestId(pub Uuid);

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v.trim()).ok())
        .unwrap_or_else(Uuid::new_v4);
    request.extensions_mut().insert(RequestId(id));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

/// The OpenAPI document (served at `/openapi.json`, browsed at `/docs`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    docs::ApiDoc::openapi()
}

/// The span of a request: its id, its correlation id, and (recorded by the `Principal`
/// extractor) who made it. Commands and appends run inside it.
fn request_span(request: &Request) -> tracing::Span {
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.to_string())
        .unwrap_or_default();
    let correlation_id = request
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "http",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %request_id,
        correlation_id = %correlation_id,
        principal = tracing::field::Empty,
    )
}

/// Logs a response that failed. A 503 (overloaded, timed out, database out of reach) is
/// a refusal the metrics count; an error line each would flood the log exactly when
/// the service is busiest, so those are logged at debug only.
fn log_failure(class: ServerErrorsFailureClass, latency: std::time::Duration, _: &tracing::Span) {
    let latency_ms = latency.as_millis() as u64;
    match class {
        ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::debug!(latency_ms, "response refused (503)");
        }
        class => tracing::error!(classification = %class, latency_ms, "response failed"),
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    AppError::internal(&"a handler panicked").into_response()
}

/// The whole HTTP API.
pub fn router(state: AppState, http: HttpLimits) -> Router {
    let limits = http;
    use routes::{
        accounts, audit, bookings, console, feed, ops, payments, reads, search, subjects,
        subscriptions, temporal,
    };
    Router::new()
        .route("/v1/accounts", post(accounts::open))
        .route("/v1/accounts/{id}", get(reads::account))
        .route("/v1/accounts/{id}/transactions", get(reads::transactions))
        .route("/v1/accounts/{id}/balance", get(temporal::balance))
        .route("/v1/accounts/{id}/deposits", post(accounts::deposit))
        .route("/v1/accounts/{id}/withdrawals", post(accounts::withdraw))
        .route("/v1/accounts/{id}/close", post(accounts::close))
        .route("/v1/bookings", post(bookings::request).get(reads::bookings))
        .route("/v1/bookings/{id}", get(reads::booking))
        .route("/v1/bookings/{id}/cancel", post(bookings::cancel))
        .route("/v1/payments", post(payments::initiate))
        .route("/v1/payments/{id}", get(reads::payment))
        .route("/v1/payments/{id}/refund", post(payments::refund))
        .route("/v1/payments/{id}/cancel", post(subscriptions::cancel))
        .route("/v1/payments/{id}/pause", post(subscriptions::pause))
        .route("/v1/payments/{id}/resume", post(subscriptions::resume))
        .route(
            "/v1/payments/{id}/change-plan",
            post(subscriptions::change_plan),
        )
        .route("/v1/payments/{id}/invoices", get(subscriptions::invoices))
        .route("/v1/search/bookings", get(search::bookings))
        .route("/v1/analytics/revenue", get(temporal::revenue))
        .route("/v1/analytics/occupancy", get(temporal::occupancy))
        .route("/v1/analytics/subscriptions", get(temporal::subscriptions))
        .route("/v1/analytics/mrr", get(temporal::mrr))
        .route(
            "/v1/audit/{aggregate_type}/{id}/events",
            get(temporal::audit),
        )
        .route(
            "/v1/audit/{aggregate_type}/{id}/verification",
            get(audit::verification),
        )
        .route("/v1/audit/events", get(temporal::caused_by))
        .route("/v1/audit/events/{id}", get(temporal::audit_event))
        .route("/v1/audit/checkpoints", get(audit::checkpoints))
        .route("/v1/audit/public-key", get(audit::public_key))
        .route("/v1/feed", get(feed::feed))
        .route("/v1/feed/tickets", post(feed::ticket))
        .route("/v1/subjects/erasure", post(subjects::erase))
        .route("/v1/subjects/personal-data", get(subjects::personal_data))
        .route("/console", get(console::index))
        .route("/console/", get(console::index))
        .route("/console/{*path}", get(console::asset))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", openapi()))
        .route_layer(middleware::from_fn(metrics::track))
        .fallback(|| async { AppError::not_found() })
        .method_not_allowed_fallback(|| async {
            AppError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed on this path",
            )
        })
        .layer(DefaultBodyLimit::max(limits.body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::admission,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::rate_limit,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::timeout,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                .on_failure(log_failure),
        )
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}
