//! Projection metrics (default registry); the consumer loop's own live in
//! `chronicle_eventstore::metrics`.

pub use chronicle_eventstore::metrics::{
    PROJECTOR_APPLIED, PROJECTOR_BATCH_SECONDS, PROJECTOR_RESTARTS, PROJECTOR_SKIPPED,
};

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, opts};

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    if let Err(error) = prometheus::register(Box::new(metric.clone())) {
        tracing::error!(%error, "metric registration failed");
    }
    metric
}

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

pub static PROJECTOR_EARLY_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            opts!(
                "chronicle_projector_early_events_total",
                "Events that came before their predecessor (a relay retry); skipped until resent"
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

pub static SEARCH_INDEX_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "chronicle_search_index_bytes",
            "Size of the search index on disk",
        )
        .expect("valid metric"),
    )
});

pub static SEARCH_MAPPED_FILES: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "chronicle_search_mapped_files",
            "Files of the search index this process keeps mapped",
        )
        .expect("valid metric"),
    )
});
