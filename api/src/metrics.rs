//! HTTP metrics (requests by route and status, latency) and the gauges sampled when
//! `/metrics` is scraped (connection pool usage).

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, histogram_opts, opts};

pub(crate) fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    if let Err(error) = prometheus::register(Box::new(metric.clone())) {
        tracing::error!(%error, "metric registration failed");
    }
    metric
}

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            opts!(
                "chronicle_http_requests_total",
                "HTTP requests by route and status"
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric"),
    )
});

static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            histogram_opts!(
                "chronicle_http_request_duration_seconds",
                "HTTP request latency by route",
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
                ]
            ),
            &["method", "route"],
        )
        .expect("valid metric"),
    )
});

static POOL: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            opts!(
                "chronicle_db_pool_connections",
                "Database pool connections by state"
            ),
            &["state"],
        )
        .expect("valid metric"),
    )
});

/// Counts and times every request by its route template (`/v1/accounts/{id}`), so ids
/// do not explode the label space.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    LATENCY
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    REQUESTS
        .with_label_values(&[&method, &route, response.status().as_str()])
        .inc();
    response
}

/// Samples the pool before an exposition.
pub fn sample_pool(pool: &sqlx::PgPool) {
    let size = i64::from(pool.size());
    let idle = pool.num_idle() as i64;
    POOL.with_label_values(&["idle"]).set(idle);
    POOL.with_label_values(&["in_use"]).set(size - idle);
}

/// With the `heap-profile` feature: the bytes the allocator holds live right now
/// (`chronicle_heap_live_bytes`), beside the process's resident memory, to tell a
/// growing heap from memory the allocator keeps but the program freed.
#[cfg(feature = "heap-profile")]
pub fn sample_heap() {
    static HEAP_LIVE: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
        register(
            prometheus::IntGauge::new(
                "chronicle_heap_live_bytes",
                "Bytes allocated and not yet freed (heap-profile builds only)",
            )
            .expect("valid metric"),
        )
    });
    HEAP_LIVE.set(dhat::HeapStats::get().curr_bytes as i64);
}

/// jemalloc's own account (`chronicle_allocator_bytes`): `allocated` is what the program
/// holds, `active` the pages those allocations occupy, `metadata` jemalloc's own
/// bookkeeping, `resident` an upper bound of what it keeps in memory (freed pages not
/// yet purged included), `mapped` its address space in use, `retained` address space it
/// kept without memory behind it. jemalloc serves C libraries' `malloc` too (librdkafka's),
/// so beside the process's resident memory this tells the program's heap from the
/// allocator's overhead and from anonymous memory no allocator holds (thread stacks).
#[cfg(not(feature = "heap-profile"))]
pub fn sample_heap() {
    use tikv_jemalloc_ctl::{epoch, stats};
    static ALLOCATOR: LazyLock<IntGaugeVec> = LazyLock::new(|| {
        register(
            IntGaugeVec::new(
                opts!(
                    "chronicle_allocator_bytes",
                    "jemalloc's statistics, in bytes"
                ),
                &["state"],
            )
            .expect("valid metric"),
        )
    });
    // The statistics are a snapshot taken at each epoch advance.
    if epoch::advance().is_err() {
        return;
    }
    for (state, value) in [
        ("allocated", stats::allocated::read()),
        ("active", stats::active::read()),
        ("metadata", stats::metadata::read()),
        ("resident", stats::resident::read()),
        ("mapped", stats::mapped::read()),
        ("retained", stats::retained::read()),
    ] {
        if let Ok(bytes) = value {
            ALLOCATOR.with_label_values(&[state]).set(bytes as i64);
        }
    }
}
