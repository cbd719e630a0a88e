//! Search benchmark: indexes N synthetic bookings through the search projection (the
//! same code path as the projector, minus Kafka) and measures query latency over a mix
//! of queries.
//!
//! Baseline, a peer measured in the same run: the same bookings in a PostgreSQL table
//! (`pg_trgm` GIN index over the accent-folded text, B-tree indexes for the filters) and
//! the same query mix in SQL — words as `ILIKE '%word%'` conditions ranked by
//! `similarity`, the typo as a trigram word-similarity match (`<%`), filters as
//! equality, "by start" as `ORDER BY starts_at`. It is what a team would build without a
//! search engine. Its answers are not identical (no BM25, no prefix-of-word rule), so
//! compare latencies, not results.
//!
//! `cargo run --release -p chronicle-bench --bin search -- [bookings] [queries]`
//! (defaults 100000 and 2000). The baseline needs PostgreSQL (as the tests do:
//! `CHRONICLE_TEST_DATABASE_URL`); `--no-baseline` after the numbers skips it.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_bench::{Latencies, Rng, machine, ms};
use chronicle_eventstore::envelope::{Envelope, EnvelopeMetadata, event_id};
use chronicle_projections::OffsetStoringConsumer;
use chronicle_projections::consumer::Delivered;
use chronicle_projections::search::{
    SearchIndex, SearchProjection, SearchRequest, SearchSettings, SearchSort,
};
use chronicle_tests::TestDb;
use chrono::{DateTime, TimeZone, Utc};
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
                sent_at_ms: None,
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
    let baseline = args.next().as_deref() != Some("--no-baseline");
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
    let took_ours = load(&projection, bookings).await?;
    let took = took_ours;
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
    let mut ours = Timings::default();
    for _ in 0..count {
        let (kind, request) = queries(&mut rng);
        let started = Instant::now();
        let page = index.search(&request)?;
        ours.add(kind, started.elapsed());
        std::hint::black_box(page);
    }
    ours.print("queries (limit 20, one thread)", None);
    compare_plans(&index, count)?;
    std::fs::remove_dir_all(&dir).ok();

    if baseline {
        let db = TestDb::create().await;
        let pool = db.pool(1).await;
        let took = pg_load(&pool, bookings).await?;
        println!(
            "baseline, PostgreSQL pg_trgm: {bookings} bookings loaded and indexed in {:.2} s = {:.0} docs/s (ratio ours / baseline {:.2})",
            took.as_secs_f64(),
            bookings as f64 / took.as_secs_f64(),
            took.as_secs_f64() / took_ours.as_secs_f64()
        );
        // The same sequence of queries, for at most a minute: at 1M bookings the peer
        // needs a tenth of a second and more per query.
        let mut rng = Rng::new(7);
        let mut theirs = Timings::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..count {
            if Instant::now() > deadline {
                break;
            }
            let (kind, request) = queries(&mut rng);
            let started = Instant::now();
            let rows = pg_search(&pool, kind, &request).await?;
            theirs.add(kind, started.elapsed());
            std::hint::black_box(rows);
        }
        theirs.print(
            "baseline, PostgreSQL pg_trgm, the same queries",
            Some(&ours),
        );
        pool.close().await;
    }
    Ok(())
}

/// The same queries by the reference plan (the first implementation: every match
/// visited, typo clauses read eagerly), timed on the same index, and every page compared
/// with the fast plan's: bookings, order, scores to the bit, snippets, cursors.
fn compare_plans(index: &SearchIndex, count: usize) -> anyhow::Result<()> {
    let mut rng = Rng::new(7);
    let mut reference = Timings::default();
    let mut differ = Vec::new();
    for _ in 0..count {
        let (kind, request) = queries(&mut rng);
        let started = Instant::now();
        let theirs = index.search_reference(&request)?;
        reference.add(kind, started.elapsed());
        let ours = index.search(&request)?;
        let page = |p: &chronicle_projections::search::SearchPage| {
            let hits: Vec<_> = p
                .items
                .iter()
                .map(|h| (h.booking.booking_id, h.score.to_bits(), h.snippet.clone()))
                .collect();
            (hits, p.next_cursor.clone())
        };
        if page(&ours) != page(&theirs) {
            differ.push(kind);
        }
    }
    reference.print(
        "reference plan (the previous implementation), the same queries",
        None,
    );
    println!(
        "check: fast and reference plans return identical pages for {} of {count} queries{}",
        count - differ.len(),
        if differ.is_empty() {
            String::new()
        } else {
            format!(" (differ: {differ:?})")
        }
    );
    anyhow::ensure!(differ.is_empty(), "the plans disagree");
    Ok(())
}

/// Query latencies, overall and per kind of query.
#[derive(Default)]
struct Timings {
    all: Vec<Duration>,
    by_kind: std::collections::BTreeMap<&'static str, Vec<Duration>>,
}

impl Timings {
    fn add(&mut self, kind: &'static str, took: Duration) {
        self.all.push(took);
        self.by_kind.entry(kind).or_default().push(took);
    }

    fn p50(samples: &[Duration]) -> Duration {
        Latencies::new(samples.to_vec()).percentile(50.0)
    }

    /// Prints the summary; with `ours`, each line also gives this p50 ÷ ours p50 (how many
    /// times longer the baseline takes).
    fn print(&self, title: &str, ours: Option<&Timings>) {
        let ratio = |mine: &[Duration], theirs: Option<&[Duration]>| match theirs {
            Some(t) => format!(
                " (baseline p50 ÷ ours p50: {:.1}×)",
                ms(Self::p50(mine)) / ms(Self::p50(t)).max(1e-9)
            ),
            None => String::new(),
        };
        println!(
            "{title}: {}{}",
            Latencies::new(self.all.clone()).summary(),
            ratio(&self.all, ours.map(|o| o.all.as_slice()))
        );
        for (kind, samples) in &self.by_kind {
            let latencies = Latencies::new(samples.clone());
            println!(
                "  {kind:<24} p50 {:.3} ms, p99 {:.3} ms{}",
                ms(latencies.percentile(50.0)),
                ms(latencies.percentile(99.0)),
                ratio(
                    samples,
                    ours.and_then(|o| o.by_kind.get(kind)).map(Vec::as_slice)
                )
            );
        }
    }
}

/// One batch of the baseline table's columns.
#[derive(Default)]
struct BaselineRows {
    ids: Vec<Uuid>,
    statuses: Vec<String>,
    resources: Vec<String>,
    starts: Vec<DateTime<Utc>>,
    docs: Vec<String>,
}

/// The same bookings as [`load`] (same seed), in a plain table with a trigram index.
async fn pg_load(pool: &sqlx::PgPool, bookings: usize) -> anyhow::Result<Duration> {
    sqlx::raw_sql(
        "CREATE EXTENSION IF NOT EXISTS pg_trgm; CREATE EXTENSION IF NOT EXISTS unaccent;
         CREATE TABLE search_baseline (
             booking_id uuid PRIMARY KEY, status text NOT NULL, resource_id text NOT NULL,
             starts_at timestamptz NOT NULL, doc text NOT NULL)",
    )
    .execute(pool)
    .await?;
    let mut rng = Rng::new(42);
    let started = Instant::now();
    let mut rows = BaselineRows::default();
    for n in 0..bookings {
        let (id, requested) = booking_event(&mut rng, n);
        let p = &requested.payload;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        rows.ids.push(id);
        rows.statuses
            .push(if n % 10 == 0 { "cancelled" } else { "pending" }.to_owned());
        rows.resources.push(text(&p["resource_id"]));
        rows.starts
            .push(serde_json::from_value(p["starts_at"].clone())?);
        rows.docs.push(format!(
            "{} {} {} {}",
            text(&p["guest"]["name"]),
            text(&p["guest"]["email"]),
            text(&p["notes"]),
            text(&p["resource_id"])
        ));
        if rows.ids.len() == 5_000 || n + 1 == bookings {
            sqlx::query(
                "INSERT INTO search_baseline \
                 SELECT id, status, resource_id, starts_at, lower(unaccent(doc)) \
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) \
                     AS v(id, status, resource_id, starts_at, doc)",
            )
            .bind(std::mem::take(&mut rows.ids))
            .bind(std::mem::take(&mut rows.statuses))
            .bind(std::mem::take(&mut rows.resources))
            .bind(std::mem::take(&mut rows.starts))
            .bind(std::mem::take(&mut rows.docs))
            .execute(pool)
            .await?;
        }
    }
    sqlx::raw_sql(
        "CREATE INDEX search_baseline_doc ON search_baseline USING gin (doc gin_trgm_ops);
         CREATE INDEX search_baseline_filters ON search_baseline (status, resource_id);
         CREATE INDEX search_baseline_start ON search_baseline (status, starts_at);
         ANALYZE search_baseline;
         SET plan_cache_mode = force_custom_plan",
    )
    .execute(pool)
    .await?;
    Ok(started.elapsed())
}

/// `request` as SQL over the baseline table; returns the ids of the first page.
async fn pg_search(
    pool: &sqlx::PgPool,
    kind: &str,
    request: &SearchRequest,
) -> anyhow::Result<Vec<Uuid>> {
    let words: Vec<String> = request
        .text
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut conditions = Vec::new();
    let query = words.join(" ");
    if kind == "one typo" {
        conditions.push("lower(unaccent($1)) <% doc".to_owned());
    } else if !words.is_empty() {
        conditions.push(
            "doc LIKE ALL (SELECT '%' || lower(unaccent(w)) || '%' FROM unnest($2::text[]) AS w)"
                .to_owned(),
        );
    }
    if request.status.is_some() {
        conditions.push("status = $3".to_owned());
    }
    if request.resource_id.is_some() {
        conditions.push("resource_id = $4".to_owned());
    }
    let filter = if conditions.is_empty() {
        "true".to_owned()
    } else {
        conditions.join(" AND ")
    };
    let order = match (request.sort, words.is_empty()) {
        (SearchSort::StartsAt, _) => "starts_at, booking_id",
        (_, false) => "similarity(doc, lower(unaccent($1))) DESC, booking_id",
        (_, true) => "booking_id",
    };
    let sql = format!(
        "SELECT booking_id FROM search_baseline \
          WHERE {filter} ORDER BY {order} LIMIT $5"
    );
    Ok(sqlx::query_scalar(&sql)
        .bind(&query)
        .bind(&words)
        .bind(request.status.as_deref())
        .bind(request.resource_id.as_deref())
        .bind(request.limit as i64)
        .fetch_all(pool)
        .await?)
}
