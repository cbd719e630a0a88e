//! Projector metrics (default registry).

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, histogram_opts, opts};

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    if let Err(error) = prometheus::register(Box::new(metric.clone())) {
        tracing::error!(%error, "metric registration failed");
    }
    metric
}

pub static PROJECTOR_APPLIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            opts!(
                "chronicle_projector_applied_total",
                "Messages applied by a projector"
            ),
            &["projector"],
        )
        .expect("valid metric"),
    )
});

pub static PROJECTOR_SKIPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            opts!(
                "chronicle_projector_redeliveries_total",
                "Messages dropped because their offset was applied already"
            ),
            &["projector"],
        )
        .expect("valid metric"),
    )
});

pub static PROJECTOR_DUPLICATE_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            opts!(
                "chronicle_projector_duplicate_events_total",
                "Events a projection had applied already (version guard)"
            ),
            &["projector"],
        )
        .expect("valid metric"),
    )
});

pub static PROJECTOR_DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            opts!(
                "chronicle_projector_dead_letters_total",
                "Messages a projector could not read and set aside"
            ),
            &["projector"],
        )
        .expect("valid metric"),
    )
});

pub static PROJECTOR_RESTARTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            opts!(
                "chronicle_projector_restarts_total",
                "Projector loops restarted after a failure"
            ),
            &["projector"],
        )
        .expect("valid metric"),
    )
});

pub static PROJECTOR_BATCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            histogram_opts!(
                "chronicle_projector_batch_seconds",
                "Time to apply and commit one batch"
            ),
            &["projector"],
        )
        .expect("valid metric"),
    )
});

pub static PROJECTOR_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            opts!(
                "chronicle_projector_lag",
                "Messages in a partition not yet applied by a projector"
            ),
            &["projector", "topic", "partition"],
        )
        .expect("valid metric"),
    )
});

pub static SEARCH_DOCUMENTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new("chronicle_search_documents", "Bookings in the search index")
            .expect("valid metric"),
    )
});
