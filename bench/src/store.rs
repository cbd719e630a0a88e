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

/// One run of `chronicle-replay` (`CHRONICLE_REPLAY_BIN`, else the release build).
pub struct ToolRun {
    pub ok: bool,
    /// What it printed, when kept.
    pub stdout: Vec<u8>,
    /// Its report (stderr), trimmed.
    pub report: String,
    pub seconds: f64,
}

/// Runs `chronicle-replay ARGS` against the database at `url`, timing it. Its output is
/// kept with `keep_stdout`, else discarded (an export of a million events is large).
pub async fn replay_tool(url: &str, args: &[&str], keep_stdout: bool) -> anyhow::Result<ToolRun> {
    let binary = std::env::var("CHRONICLE_REPLAY_BIN")
        .unwrap_or_else(|_| "target/release/chronicle-replay".into());
    let started = std::time::Instant::now();
    let stdout = if keep_stdout {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    };
    let output = tokio::process::Command::new(&binary)
        .env("CHRONICLE_DATABASE_URL", url)
        .args(args)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run {binary} (build it with cargo build --release -p chronicle-replay): {e}"
            )
        })?;
    Ok(ToolRun {
        ok: output.status.success(),
        stdout: output.stdout,
        report: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        seconds: started.elapsed().as_secs_f64(),
    })
}
