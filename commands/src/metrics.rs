//! Command metrics: outcomes per aggregate, and events appended (counted from the
//! committed events cqrs-es hands its queries).

use std::sync::LazyLock;

use cqrs_es::{Aggregate, EventEnvelope, Query};
use prometheus::{IntCounterVec, opts};

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    if let Err(error) = prometheus::register(Box::new(metric.clone())) {
        tracing::error!(%error, "metric registration failed");
    }
    metric
}

pub(crate) static COMMANDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            opts!(
                "chronicle_commands_total",
                "Commands by aggregate and outcome (appended, no_op, or the error code)"
            ),
            &["aggregate", "outcome"],
        )
        .expect("valid metric"),
    )
});

static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            opts!(
                "chronicle_events_appended_total",
                "Events appended, by aggregate"
            ),
            &["aggregate"],
        )
        .expect("valid metric"),
    )
});

/// A cqrs-es query that only counts what was committed.
pub(crate) struct CountAppended;

#[async_trait::async_trait]
impl<A: Aggregate> Query<A> for CountAppended {
    async fn dispatch(&self, _aggregate_id: &str, events: &[EventEnvelope<A>]) {
        EVENTS
            .with_label_values(&[A::TYPE])
            .inc_by(events.len() as u64);
    }
}
