//! A seeded event store and the raw scan every store benchmark compares against.

use std::time::Instant;

use chronicle_tests::seed::seed;
use sqlx::PgPool;

/// Seeds `pool`'s fresh store with `events` events through the real append triggers,
/// then times a raw sequential scan of them (the baseline of the replay and notary
/// benchmarks), printing both. Returns the events seeded (whole streams, so a few more
/// than asked).
pub async fn seed_and_scan(pool: &PgPool, events: u64) -> anyhow::Result<u64> {
    let started = Instant::now();
    let seeded = seed(pool, events, 0).await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "seed: {seeded} events through the append triggers in {seconds:.1} s ({:.0} events/s)",
        seeded as f64 / seconds
    );
    let started = Instant::now();
    let (rows, bytes): (i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(length(payload::text) + length(metadata::text))::bigint FROM events",
    )
    .fetch_one(pool)
    .await?;
    let scan = started.elapsed().as_secs_f64();
    println!(
        "baseline, raw sequential scan of events: {rows} rows, {} MiB of JSON in {scan:.2} s ({:.0} events/s)",
        bytes / (1 << 20),
        rows as f64 / scan
    );
    Ok(seeded)
}
