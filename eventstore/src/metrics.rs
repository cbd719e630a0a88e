//! Metrics of the relay and of the consumer loop (default registry; `/metrics` exposes
//! them).

use std::sync::LazyLock;

use prometheus::{
    Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, histogram_opts, opts,
    register_gauge, register_histogram, register_int_counter, register_int_gauge,
};

fn or_unregistered<T>(metric: prometheus::Result<T>, fallback: impl FnOnce() -> T) -> T {
    // Registration fails only for a duplicate name, which is a programming error;
    // fall back to an unregistered metric rather than abort.
    metric.unwrap_or_else(|error| {
        tracing::error!(%error, "metric registration failed");
        fallback()
    })
}

pub static RELAY_PUBLISHED: LazyLock<IntCounter> = LazyLock::new(|| {
    or_unregistered(
        register_int_counter!(
            "chronicle_relay_published_total",
            "Events published to Kafka and acknowledged"
        ),
        || IntCounter::new("unregistered", "unregistered").expect("valid metric"),
    )
});

pub static RELAY_ACTIVE: LazyLock<IntGauge> = LazyLock::new(|| {
    or_unregistered(
        register_int_gauge!(
            "chronicle_relay_active",
            "1 while this process is the active relay, 0 while standby"
        ),
        || IntGauge::new("unregistered", "unregistered").expect("valid metric"),
    )
});

pub static RELAY_BATCH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    or_unregistered(
        register_histogram!(
            "chronicle_relay_batch_seconds",
            "Time to read, publish and checkpoint one batch"
        ),
        || {
            Histogram::with_opts(prometheus::HistogramOpts::new(
                "unregistered",
                "unregistered",
            ))
            .expect("valid metric")
        },
    )
});

pub static RELAY_LAG: LazyLock<IntGauge> = LazyLock::new(|| {
    or_unregistered(
        register_int_gauge!(
            "chronicle_relay_lag_events",
            "Committed events not yet published"
        ),
        || IntGauge::new("unregistered", "unregistered").expect("valid metric"),
    )
});

pub static RELAY_HELD_BACK: LazyLock<IntGauge> = LazyLock::new(|| {
    or_unregistered(
        register_int_gauge!(
            "chronicle_relay_held_back_events",
            "Committed events the relay may not publish yet because an older transaction is still open"
        ),
        || IntGauge::new("unregistered", "unregistered").expect("valid metric"),
    )
});

pub static OLDEST_TRANSACTION_SECONDS: LazyLock<Gauge> = LazyLock::new(|| {
    or_unregistered(
        register_gauge!(
            "chronicle_oldest_transaction_seconds",
            "Age of the oldest open transaction holding an xid in the cluster"
        ),
        || Gauge::new("unregistered", "unregistered").expect("valid metric"),
    )
});

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
pub static PROJECTOR_DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            opts!(
                "chronicle_projector_dead_letters_total",
                "Messages a consumer could not read and set aside in projector_dead_letters"
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

/// Buckets for the stages of command → visible: milliseconds to seconds.
const DELAY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Recorded (the append transaction's `now()`) → handed to the producer.
pub static RELAY_EVENT_DELAY: LazyLock<Histogram> = LazyLock::new(|| {
    or_unregistered(
        register_histogram!(
            "chronicle_relay_event_delay_seconds",
            "Time from an event's append to the relay handing it to the producer",
            DELAY_BUCKETS.to_vec()
        ),
        || {
            Histogram::with_opts(prometheus::HistogramOpts::new(
                "unregistered",
                "unregistered",
            ))
            .expect("valid metric")
        },
    )
});

/// Sent by the relay (the message's timestamp) → received by a projector, and → applied
/// and committed by it (`since_sent` = `received` / `applied`).
pub static PROJECTOR_EVENT_DELAY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            histogram_opts!(
                "chronicle_projector_event_delay_seconds",
                "Time from the relay's send of an event to a projector receiving / committing it",
                DELAY_BUCKETS.to_vec()
            ),
            &["projector", "since_sent"],
        )
        .expect("valid metric"),
    )
});

pub static APPEND_GROUP_SIZE: LazyLock<Histogram> = LazyLock::new(|| {
    or_unregistered(
        register_histogram!(
            "chronicle_append_group_size",
            "Commands appended together in one transaction by group commit",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
        ),
        || {
            Histogram::with_opts(prometheus::HistogramOpts::new(
                "unregistered",
                "unregistered",
            ))
            .expect("valid metric")
        },
    )
});

pub static APPEND_QUEUE: LazyLock<IntGauge> = LazyLock::new(|| {
    or_unregistered(
        register_int_gauge!(
            "chronicle_append_queue",
            "Command appends waiting for a group commit writer"
        ),
        || IntGauge::new("unregistered", "unregistered").expect("valid metric"),
    )
});

pub static NOTARY_TREE_SIZE: LazyLock<IntGauge> = LazyLock::new(|| {
    or_unregistered(
        register_int_gauge!(
            "chronicle_notary_tree_size",
            "Leaves of the Merkle tree over the log (events in commit order)"
        ),
        || IntGauge::new("unregistered", "unregistered").expect("valid metric"),
    )
});

pub static NOTARY_CHECKPOINT_SIZE: LazyLock<IntGauge> = LazyLock::new(|| {
    or_unregistered(
        register_int_gauge!(
            "chronicle_notary_checkpoint_size",
            "Tree size of the last signed checkpoint"
        ),
        || IntGauge::new("unregistered", "unregistered").expect("valid metric"),
    )
});
