//! Search benchmark: indexes N synthetic bookings through the search projection (the
//! same code path as the projector, minus Kafka) and measures query latency over a mix
//! of queries.
//!
//! `cargo run --release -p chronicle-bench --bin search -- [bookings] [queries]`
//! (defaults 100000 and 2000).
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bench::{Latencies, Rng, machine, ms};
use chronicle_eventstore::envelope::{Envelope, EnvelopeMetadata, event_id};
use chronicle_projections::Projection;
use chronicle_projections::consumer::Delivered;
use chronicle_projections::search::{
    SearchIndex, SearchProjection, SearchRequest, SearchSettings, SearchSort,
};
use chrono::{TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

const FIRST: &[&str] = &[
    "Zoë",
    "Chloé",
    "Björn",
    "Anaïs",
    "José",
    "Renée",
    "Søren",
    "Amélie",
    "Łukasz",
    "François",
    "Maria",
    "John",
    "Ahmed",
    "Yuki",
    "Olga",
    "Pedro",
    "Hannah",
    "Liam",
    "Noah",
    "Emma",
    "Mia",
    "Lucas",
    "Sofia",
    "Mateo",
    "Aisha",
    "Ingrid",
    "Dmitri",
    "Priya",
    "Kofi",
    "Mei",
];
const LAST: &[&str] = &[
    "Adams",
    "Ångström",
    "Dubois",
    "Müller",
    "García",
    "Nakamura",
    "Kowalski",
    "O'Brien",
    "Øster",
    "Silva",
    "Novak",
    "Rossi",
    "Johnson",
    "Okafor",
    "Ivanova",
    "Chen",
    "Dupont",
    "Schröder",
    "Fernández",
    "Kim",
    "Haddad",
    "Lindqvist",
    "Moreau",
    "Petrov",
    "Sato",
    "Walsh",
    "Yılmaz",
    "Zhang",
    "Costa",
    "Berg",
];
const WORDS: &[&str] = &[
    "window",
    "aisle",
    "wheelchair",
    "access",
    "vegetarian",
    "dinner",
    "late",
    "arrival",
    "quiet",
    "room",
    "balcony",
    "view",
    "anniversary",
    "birthday",
    "champagne",
    "allergy",
    "gluten",
    "parking",
    "early",
    "checkin",
    "family",
    "children",
    "pet",
    "friendly",
    "business",
    "meeting",
    "projector",
    "stage",
    "front",
];

fn booking_event(rng: &mut Rng, n: usize) -> (Uuid, Envelope) {
    let id = Uuid::from_u128(0xb00c_0000_0000_0000_0000_0000_0000_0000 | n as u128);
    let first = rng.pick(FIRST);
    let last = rng.pick(LAST);
    let notes: Vec<&str> = (0..1 + rng.below(6)).map(|_| *rng.pick(WORDS)).collect();
    let starts = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
        + chrono::Duration::minutes(rng.below(525_600) as i64);
    let payload = json!({
        "type": "BookingRequested", "booking_id": id, "account_id": Uuid::from_u128(rng.below(20_000) as u128),
        "owner": format!("user-{}", rng.below(20_000)), "resource_id": format!("hall-{}", rng.below(200)),
        "seats": [format!("S{}", rng.below(500))], "starts_at": starts, "ends_at": starts + chrono::Duration::hours(2),
        "price": {"amount": 1000 + rng.below(50_000) as i64, "currency": "EUR"},
        "guest": {"name": format!("{first} {last}"), "email": format!("{}.{}@example.org", first.to_lowercase(), n)},
        "notes": notes.join(" "), "requested_at": "2029-12-01T00:00:00Z"
    });
    (id, envelope(id, 1, "BookingRequested", payload, n as i64))
}

fn envelope(
    id: Uuid,
    sequence: i64,
    event_type: &str,
    payload: serde_json::Value,
    position: i64,
) -> Envelope {
    Envelope {
        event_id: event_id("Booking", &id.to_string(), sequence),
        global_position: position,
        aggregate_type: "Booking".into(),
        aggregate_id: id.to_string(),
        sequence,
        event_type: event_type.into(),
        event_version: "1".into(),
        recorded_at: Utc::now(),
        payload,
        metadata: EnvelopeMetadata::default(),
    }
}

async fn load(projection: &SearchProjection, bookings: usize) -> anyhow::Result<Duration> {
    let mut rng = Rng::new(42);
    let started = Instant::now();
    let mut offset = 0i64;
    let mut batch = Vec::with_capacity(1000);
    for n in 0..bookings {
        let (id, requested) = booking_event(&mut rng, n);
        let mut events = vec![requested];
        if n % 10 == 0 {
            let cancelled = json!({"type": "BookingCancelled", "reason": null, "cancelled_at": "2029-12-02T00:00:00Z"});
            events.push(envelope(
                id,
                2,
                "BookingCancelled",
                cancelled,
                (bookings + n) as i64,
            ));
        }
        for event in events {
            batch.push(Delivered {
                topic: "bench.chronicle.booking".into(),
                partition: 0,
                offset,
                payload: Some(serde_json::to_vec(&event)?),
            });
            offset += 1;
        }
        if batch.len() >= 1000 {
            projection.apply_batch(&batch).await?;
            batch.clear();
        }
    }
    projection.apply_batch(&batch).await?;
    projection.flush().await?;
    Ok(started.elapsed())
}

fn queries(rng: &mut Rng) -> (&'static str, SearchRequest) {
    let base = SearchRequest {
        limit: 20,
        ..SearchRequest::default()
    };
    let text = |t: String| Some(t);
    match rng.below(7) {
        0 => (
            "exact last name",
            SearchRequest {
                text: text(rng.pick(LAST).to_string()),
                ..base
            },
        ),
        1 => (
            "name prefix",
            SearchRequest {
                text: text(rng.pick(FIRST).chars().take(3).collect()),
                ..base
            },
        ),
        2 => (
            "accent-folded",
            SearchRequest {
                text: text("zoe angstrom".into()),
                ..base
            },
        ),
        3 => (
            "one typo",
            SearchRequest {
                text: text("wheelchiar".into()),
                ..base
            },
        ),
        4 => (
            "filters only",
            SearchRequest {
                status: Some("cancelled".into()),
                resource_id: Some(format!("hall-{}", rng.below(200))),
                ..base
            },
        ),
        5 => (
            "text + filter, by start",
            SearchRequest {
                text: text(rng.pick(WORDS).to_string()),
                status: Some("pending".into()),
                sort: SearchSort::StartsAt,
                ..base
            },
        ),
        _ => (
            "two words",
            SearchRequest {
                text: text(format!("{} {}", rng.pick(WORDS), rng.pick(WORDS))),
                ..base
            },
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bookings: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let count: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2_000);
    println!("machine: {}", machine());
    let dir = std::env::temp_dir().join(format!(
        "chronicle-bench-search-{}",
        Uuid::new_v4().simple()
    ));
    let index = Arc::new(SearchIndex::open(&dir)?);
    let settings = SearchSettings {
        commit_docs: 50_000,
        commit_interval: Duration::from_secs(3600),
        ..SearchSettings::default()
    };
    let projection = SearchProjection::new(index.clone(), settings)?;
    let took = load(&projection, bookings).await?;
    let events = bookings + bookings / 10;
    index.refresh()?;
    println!(
        "indexing: {bookings} bookings ({events} events, 1 in 10 then cancelled) in {:.2} s = {:.0} docs/s, {:.0} events/s; {} docs in the index",
        took.as_secs_f64(),
        bookings as f64 / took.as_secs_f64(),
        events as f64 / took.as_secs_f64(),
        index.len()
    );
    let mut rng = Rng::new(7);
    let mut all = Vec::with_capacity(count);
    let mut by_kind: std::collections::BTreeMap<&str, Vec<Duration>> = Default::default();
    for _ in 0..count {
        let (kind, request) = queries(&mut rng);
        let started = Instant::now();
        let page = index.search(&request)?;
        let took = started.elapsed();
        std::hint::black_box(page);
        all.push(took);
        by_kind.entry(kind).or_default().push(took);
    }
    println!(
        "queries (limit 20, one thread): {}",
        Latencies::new(all).summary()
    );
    for (kind, samples) in by_kind {
        let latencies = Latencies::new(samples);
        println!(
            "  {kind:<24} p50 {:.3} ms, p99 {:.3} ms",
            ms(latencies.percentile(50.0)),
            ms(latencies.percentile(99.0))
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
