//! Projection metrics (default registry); the consumer loop's own live in
//! `chronicle_eventstore::metrics`.

pub use chronicle_eventstore::metrics::{
    PROJECTOR_APPLIED, PROJECTOR_BATCH_SECONDS, PROJECTOR_RESTARTS, PROJECTOR_SKIPPED,
};

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, opts,
};

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

pub static FEED_SUBSCRIBERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "chronicle_feed_subscribers",
            "Live feed streams open on this process",
        )
        .expect("valid metric"),
    )
});

pub static FEED_EVENTS_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "chronicle_feed_events_sent_total",
            "Events sent to live feed subscribers (one per subscriber that saw it)",
        )
        .expect("valid metric"),
    )
});

pub static FEED_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            opts!(
                "chronicle_feed_dropped_subscribers_total",
                "Feed streams ended by Chronicle with a point to resume from, by reason \
                 (slow: fell behind the buffer; shutdown; catch_up: reading Kafka failed)"
            ),
            &["reason"],
        )
        .expect("valid metric"),
    )
});

pub static FEED_DELIVERY_LAG: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "chronicle_feed_delivery_lag_seconds",
                "From the relay sending an event to the feed sending it to a subscriber",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric"),
    )
});

pub static FEED_BUFFERED: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "chronicle_feed_buffered_messages",
            "Released messages the live feed holds for subscribers to read and resume in",
        )
        .expect("valid metric"),
    )
});

pub static FEED_CATCH_UPS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "chronicle_feed_catch_ups",
            "Feed resumes reading Kafka now (their point is older than the buffer)",
        )
        .expect("valid metric"),
    )
});
