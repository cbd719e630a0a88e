//! Replay benchmark: seeds a fresh store with N events (default 200,000), then times
//! `chronicle-replay rebuild read-models`, `diff read-models` and `verify` against a raw
//! sequential scan of `events`; then grows the store to M events (default 1,000,000) and
//! exports it, reporting the exporter's peak RSS.
//!
//! `cargo build --release -p chronicle-replay && cargo run --release -p chronicle-bench --bin replay -- [N] [M]`
#![allow(clippy::print_stdout)]

use std::time::Instant;

use chronicle_bench::machine;
use chronicle_bench::store::{replay_tool, seed_and_scan};
use chronicle_tests::TestDb;
use chronicle_tests::seed::seed;

/// `chronicle-replay ARGS`, its output discarded: whether it succeeded, its report,
/// seconds.
async fn tool(url: &str, args: &[&str]) -> anyhow::Result<(bool, String, f64)> {
    let run = replay_tool(url, args, false).await?;
    Ok((run.ok, run.report, run.seconds))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let export_events: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    println!("machine: {}", machine());
    let db = TestDb::create().await;
    let pool = db.pool(4).await;
    let url = db.url();
    let seeded = seed_and_scan(&pool, events).await?;

    let (ok, report, seconds) = tool(&url, &["rebuild", "read-models"]).await?;
    println!("rebuild read-models: {report} [ok: {ok}, wall {seconds:.1} s]");
    let (ok, report, seconds) = tool(&url, &["diff", "read-models"]).await?;
    println!("diff read-models: {report} [zero discrepancies: {ok}, wall {seconds:.1} s]");
    let (ok, report, seconds) = tool(&url, &["verify"]).await?;
    println!("verify: {report} [ok: {ok}, wall {seconds:.1} s]");

    if export_events > seeded {
        let started = Instant::now();
        let more = seed(&pool, export_events - seeded, 1_000_000).await?;
        println!(
            "seed: {more} more events in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let (ok, report, seconds) = tool(&url, &["export", "--format", "jsonl", "--stats"]).await?;
    println!("export jsonl: {report} [ok: {ok}, wall {seconds:.1} s]");
    let (ok, report, seconds) = tool(&url, &["export", "--format", "csv", "--stats"]).await?;
    println!("export csv: {report} [ok: {ok}, wall {seconds:.1} s]");
    pool.close().await;
    Ok(())
}
