//! Liveness, readiness and metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus::{Encoder, TextEncoder};
use serde_json::{Value, json};

use crate::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = Object)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The process can serve: its database answers, and the relay and projectors are within
/// their lag bounds (see the README's configuration table).
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = Object),
    (status = 503, description = "Not ready; `reasons` says why", body = Object)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut reasons = Vec::new();
    if let Err(e) = chronicle_eventstore::db::ping(&state.pool).await {
        reasons.push(chronicle_projections::monitor::unreachable("database", &e));
    }
    reasons.extend(state.monitor.not_ready_reasons());
    let report = state.monitor.report();
    let relay = report.relay.map(|lag| {
        json!({
            "unpublished": lag.unpublished,
            "held_back": lag.held_back,
            "oldest_transaction_seconds": lag.oldest_transaction_seconds,
        })
    });
    let projector_lag: i64 = report.projectors.values().sum();
    let mut by_projector = std::collections::BTreeMap::<&str, i64>::new();
    for ((projector, _, _), lag) in &report.projectors {
        *by_projector.entry(projector).or_default() += lag;
    }
    let body = json!({
        "status": if reasons.is_empty() { "ready" } else { "not_ready" },
        "reasons": reasons,
        "relay": relay,
        "projector_lag": projector_lag,
        "projectors": by_projector,
    });
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Prometheus text exposition of every registered metric.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::metrics::sample_pool(&state.pool);
    crate::metrics::sample_heap();
    let mut buffer = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(error) = encoder.encode(&prometheus::gather(), &mut buffer) {
        tracing::error!(%error, "cannot encode metrics");
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
        buffer,
    )
}
