//! Protection of the service: a token bucket per principal (429 with `Retry-After` and
//! `RateLimit` headers), a timeout per request, and a bound on commands in flight.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

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
    /// `CHRONICLE_MAX_INFLIGHT_COMMANDS`: commands executing at once; more answer 503.
    pub max_inflight_commands: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            per_second: 200.0,
            burst: 400.0,
            request_timeout: Duration::from_secs(30),
            max_inflight_commands: 512,
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
    inflight: Arc<Semaphore>,
}

impl RateLimiter {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            inflight: Arc::new(Semaphore::new(settings.max_inflight_commands.max(1))),
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

/// Bounds the commands executing at once; beyond, 503 `overloaded` at once rather than a
/// queue that grows without end.
pub async fn inflight(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Ok(_permit) = state.limiter.inflight.clone().try_acquire_owned() else {
        let mut error = AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many commands in flight; retry shortly",
        );
        error.retry_after = Some(1);
        return error.into_response();
    };
    next.run(request).await
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
