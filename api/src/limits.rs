//! Protection of the service: a token bucket per principal (429 with `Retry-After` and
//! `RateLimit` headers), a timeout per request, and admission: a bound on the commands
//! and on the queries executing at once, beyond which a request waits a moment for a
//! place and is then refused (503 `overloaded` with `Retry-After`) rather than queued
//! without end (ADR 0021).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{IntCounterVec, IntGaugeVec, opts};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AppState;
use crate::problem::AppError;

/// Tunables of the protections.
#[derive(Clone, Copy, Debug)]
pub struct LimitSettings {
    /// `CHRONICLE_RATE_LIMIT_PER_SECOND`: tokens each principal gains per second.
    pub per_second: f64,
    /// `CHRONICLE_RATE_LIMIT_BURST`: the bucket's size.
    pub burst: f64,
    /// `CHRONICLE_REQUEST_TIMEOUT_MS`: the longest a request may take.
    pub request_timeout: Duration,
    /// `CHRONICLE_MAX_INFLIGHT_COMMANDS`: commands executing at once.
    pub max_inflight_commands: usize,
    /// `CHRONICLE_MAX_INFLIGHT_QUERIES`: queries executing at once.
    pub max_inflight_queries: usize,
    /// `CHRONICLE_ADMISSION_WAIT_MS`: how long a request beyond those bounds waits for a
    /// place before it is refused with 503 `overloaded`.
    pub admission_wait: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            per_second: 200.0,
            burst: 400.0,
            request_timeout: Duration::from_secs(30),
            max_inflight_commands: 64,
            max_inflight_queries: 64,
            admission_wait: Duration::from_millis(250),
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    /// Seconds until the bucket is full again (allowed) or has a token (refused).
    pub reset_seconds: u64,
}

const SHARDS: usize = 32;

/// Token buckets by principal, in shards so principals rarely contend.
pub struct RateLimiter {
    settings: LimitSettings,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
    commands: Gate,
    queries: Gate,
}

impl RateLimiter {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            commands: Gate::new("commands", settings.max_inflight_commands, &settings),
            queries: Gate::new("queries", settings.max_inflight_queries, &settings),
        }
    }

    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// Takes a token from `key`'s bucket, if there is one.
    pub fn check(&self, key: &str) -> Decision {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let shard = &self.shards[(hasher.finish() % SHARDS as u64) as usize];
        let Ok(mut buckets) = shard.lock() else {
            // A poisoned shard must not take the service down: let the request through.
            return Decision {
                allowed: true,
                remaining: 0,
                reset_seconds: 0,
            };
        };
        let now = Instant::now();
        if buckets.len() > 10_000 {
            let idle =
                Duration::from_secs_f64(self.settings.burst / self.settings.per_second.max(1e-9));
            buckets.retain(|_, b| now.duration_since(b.at) < idle);
        }
        let (rate, burst) = (
            self.settings.per_second.max(1e-9),
            self.settings.burst.max(1.0),
        );
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Decision {
                allowed: true,
                remaining: bucket.tokens.floor() as u64,
                reset_seconds: ((burst - bucket.tokens) / rate).ceil() as u64,
            }
        } else {
            Decision {
                allowed: false,
                remaining: 0,
                reset_seconds: ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64,
            }
        }
    }
}

fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
        || path.starts_with("/docs")
}

/// Who a request counts against: the token's subject when it verifies, else the peer.
fn principal_key(state: &AppState, request: &Request) -> String {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    if let Some(actor) = token.and_then(|t| state.keys.verify(t.trim()).ok()) {
        return format!("sub:{}", actor.subject);
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => format!("ip:{}", peer.ip()),
        None => "anonymous".to_owned(),
    }
}

fn set(response: &mut Response, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
}

/// The per-principal rate limit, with the draft-standard `RateLimit` and
/// `RateLimit-Policy` headers on every limited response.
pub async fn rate_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if exempt(request.uri().path()) {
        return next.run(request).await;
    }
    let limiter = state.limiter.clone();
    let decision = limiter.check(&principal_key(&state, &request));
    let mut response = if decision.allowed {
        next.run(request).await
    } else {
        let mut error = AppError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests for this principal; slow down",
        );
        error.retry_after = Some(decision.reset_seconds);
        error.into_response()
    };
    let settings = limiter.settings();
    let window = (settings.burst / settings.per_second.max(1e-9)).ceil() as u64;
    set(
        &mut response,
        "ratelimit",
        format!(
            "limit={}, remaining={}, reset={}",
            settings.burst as u64, decision.remaining, decision.reset_seconds
        ),
    );
    set(
        &mut response,
        "ratelimit-policy",
        format!("{};w={window}", settings.burst as u64),
    );
    response
}

/// Answers 503 `timeout` when a request takes longer than the configured bound.
pub async fn timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let bound = state.limiter.settings().request_timeout;
    match tokio::time::timeout(bound, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut error = AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("the request took longer than {} ms", bound.as_millis()),
            );
            error.retry_after = Some(1);
            error.into_response()
        }
    }
}

static ADMITTED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    crate::metrics::register(
        IntGaugeVec::new(
            opts!(
                "chronicle_admission_in_flight",
                "Requests executing now, by kind (commands, queries)"
            ),
            &["kind"],
        )
        .expect("valid metric"),
    )
});

static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::register(
        IntCounterVec::new(
            opts!(
                "chronicle_admission_refused_total",
                "Requests refused with 503 overloaded because no place came free in time, by kind"
            ),
            &["kind"],
        )
        .expect("valid metric"),
    )
});

/// The places for one kind of work. A request takes one for as long as its handler
/// runs; the response's body is already built then, so a slow reader holds none.
struct Gate {
    kind: &'static str,
    places: Arc<Semaphore>,
    wait: Duration,
}

/// A place, given back (and counted out) when dropped.
struct Place {
    kind: &'static str,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Place {
    fn drop(&mut self) {
        ADMITTED.with_label_values(&[self.kind]).dec();
    }
}

impl Gate {
    fn new(kind: &'static str, places: usize, settings: &LimitSettings) -> Self {
        // Both series exist from the start, at zero, so a dashboard sees them before
        // the first refusal (several apps may share the process in tests: add, not set).
        ADMITTED.with_label_values(&[kind]).add(0);
        REFUSED.with_label_values(&[kind]).inc_by(0);
        Self {
            kind,
            places: Arc::new(Semaphore::new(places.max(1))),
            wait: settings.admission_wait,
        }
    }

    /// A place at once, or within the wait (waiters are served first come, first
    /// served); `None` when none came free.
    async fn enter(&self) -> Option<Place> {
        let permit = match self.places.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(self.wait, self.places.clone().acquire_owned())
                .await
                .ok()?
                .ok()?,
        };
        ADMITTED.with_label_values(&[self.kind]).inc();
        Some(Place {
            kind: self.kind,
            _permit: permit,
        })
    }
}

/// Admits commands (POST) and queries (GET) within their bounds; beyond, after a short
/// wait, 503 `overloaded` with `Retry-After` rather than a queue that grows without end.
pub async fn admission(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let gate = match *request.method() {
        Method::POST => &state.limiter.commands,
        Method::GET | Method::HEAD if !exempt(path) => &state.limiter.queries,
        _ => return next.run(request).await,
    };
    let Some(place) = gate.enter().await else {
        REFUSED.with_label_values(&[gate.kind]).inc();
        let mut error = AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("too many {} in flight; retry shortly", gate.kind),
        );
        error.retry_after = Some(1);
        return error.into_response();
    };
    let response = next.run(request).await;
    drop(place);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_until_it_refills() {
        let limiter = RateLimiter::new(LimitSettings {
            per_second: 1.0,
            burst: 3.0,
            ..LimitSettings::default()
        });
        for remaining in [2, 1, 0] {
            let decision = limiter.check("alice");
            assert!(decision.allowed);
            assert_eq!(decision.remaining, remaining);
        }
        let refused = limiter.check("alice");
        assert!(!refused.allowed);
        assert_eq!(refused.reset_seconds, 1);
        assert!(limiter.check("bob").allowed, "buckets are per principal");
    }
}
