//! Soak: `chronicle all` under a steady mixed load for a long time, sampled as an operator
//! would watch it. Not part of CI.
//!
//! The load is `chronicle_bench::mix`, an open loop at a fixed rate: half deposits (each with its own
//! `Idempotency-Key`), a quarter booking requests, a quarter ledger reads, over a fixed
//! set of accounts. Every `--sample` seconds the program records the process's
//! anonymous and file-backed memory (`RssAnon`, `RssFile`), its open descriptors, the
//! database connections it holds, the size of every table and of the search index,
//! relay and projector lag, and the window's latency and errors. It prints a line per
//! sample, then a verdict: memory growth over the last three quarters of the run (read
//! off a least-squares line through those samples, not two single samples),
//! descriptors and connections flat, lag bounded. `--out` gets `soak.csv`, `soak.md`,
//! `soak-memory.png` and `soak-storage.png` (`--replot` draws these two again from the
//! CSV).
//!
//! When the server runs without autovacuum (this machine's PostgreSQL does), the soak
//! vacuums its database as autovacuum's defaults would
//! ([`chronicle_bench::dbwatch::autovacuum_stand_in`]): weeks of running are weeks on a
//! server that vacuums.
//!
//! `scripts/bench.sh soak` builds and runs it; or
//! `cargo run --release -p chronicle-bench --bin soak -- [--minutes 60] [--rate 400]
//! [--sample 10] [--accounts 200] [--out DIR]` with `chronicle` built
//! (`CHRONICLE_BIN`, default `target/release/chronicle`) and a broker in
//! `CHRONICLE_KAFKA_BROKERS`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chronicle_bench::chronicle::{Client, Server};
use chronicle_bench::dbwatch::{self, Counters, Rates, Statement};
use chronicle_bench::mix::{self, Window};
use chronicle_bench::plot::{self, Series};
use chronicle_bench::scrape;
use chronicle_bench::{Latencies, machine};
use sqlx::PgPool;

struct Options {
    minutes: f64,
    rate: u32,
    sample: u64,
    accounts: usize,
    out: PathBuf,
    /// Only draw the plots again from `out/soak.csv`.
    replot: bool,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            minutes: 60.0,
            rate: 400,
            sample: 10,
            accounts: 200,
            out: PathBuf::from("target/soak"),
            replot: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--minutes" => options.minutes = value()?.parse()?,
                "--rate" => options.rate = value()?.parse()?,
                "--sample" => options.sample = value()?.parse()?,
                "--accounts" => options.accounts = value()?.parse()?,
                "--out" => options.out = PathBuf::from(value()?),
                "--replot" => options.replot = true,
                other => bail!("unknown flag {other}"),
            }
        }
        Ok(options)
    }
}

/// One sample of the process and its database.
struct Sample {
    at: f64,
    rss_anon_kib: u64,
    rss_file_kib: u64,
    /// Live heap bytes: jemalloc's `allocated`, or dhat's count in a heap-profile build.
    heap_bytes: f64,
    /// What jemalloc keeps resident, an upper bound (0 in a heap-profile build).
    allocator_resident: f64,
    /// The pages jemalloc's allocations occupy, and its own metadata.
    allocator_active: f64,
    allocator_metadata: f64,
    /// The process's threads.
    threads: u64,
    descriptors: usize,
    connections: i64,
    tables: BTreeMap<String, i64>,
    index_bytes: u64,
    relay_lag: f64,
    /// Read models and search, summed over partitions.
    projector_lag: f64,
    /// The process manager, summed over partitions.
    process_lag: f64,
    /// Operations answered per second over the window.
    throughput: f64,
    operations: usize,
    p99_ms: f64,
    errors: u64,
    refused: u64,
    dropped: u64,
    /// The database's and the processes' work over the window.
    rates: Rates,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    if options.replot {
        return plot_csv(&options.out);
    }
    std::fs::create_dir_all(&options.out)?;
    println!("{}", machine());
    println!(
        "soak: {} min at {} ops/s, a sample every {} s, {} accounts",
        options.minutes, options.rate, options.sample, options.accounts
    );
    let server = Server::start("all").await?;
    let pid = server.pid().context("chronicle exited at start")?;
    let pool = server.db.pool(2).await;
    let client = Arc::new(Client::new(&server, 256)?);
    let accounts = Arc::new(mix::open_accounts(&client, options.accounts).await?);
    let window = Arc::new(Mutex::new(Window::default()));
    let duration = Duration::from_secs_f64(options.minutes * 60.0);
    let load = tokio::spawn(mix::open_loop(
        client.clone(),
        accounts,
        vec![window.clone()],
        f64::from(options.rate),
        duration,
        0,
    ));
    // This machine's PostgreSQL runs without autovacuum; the soak does its work.
    let vacuums = tokio::spawn(dbwatch::autovacuum_stand_in(
        server.db.pool(1).await,
        duration,
    ));
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut counters = Counters::take(&pool).await;
    // pg_stat_statements, when loaded: a snapshot at each quarter of the run.
    let mut snapshots = Vec::from_iter(dbwatch::statements(&pool).await);
    let quarter = duration.as_secs_f64() / 4.0;
    print_header();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(options.sample)).await;
        let taken = mix::take(&window);
        let now = Counters::take(&pool).await;
        let rates = now.rates_since(&counters, options.sample as f64);
        counters = now;
        let sample = Sample {
            rates,
            ..take_sample(
                &server,
                &client,
                pid,
                &pool,
                started,
                taken,
                options.sample as f64,
            )
            .await?
        };
        print_line(&sample);
        samples.push(sample);
        let quarters_done = (started.elapsed().as_secs_f64() / quarter).floor() as usize;
        if !snapshots.is_empty() && snapshots.len() <= quarters_done.min(4) {
            snapshots.extend(dbwatch::statements(&pool).await);
        }
    }
    load.await?;
    let vacuums = vacuums.await?;
    let mut report = report(&options, &samples);
    report.push_str(&vacuums_report(&vacuums));
    report.push_str(&statements_report(&snapshots, quarter));
    println!("{report}");
    write_outputs(&options.out, &samples, &report)?;
    pool.close().await;
    server.stop().await;
    Ok(())
}

async fn take_sample(
    server: &Server,
    client: &Client,
    pid: u32,
    pool: &PgPool,
    started: Instant,
    window: Window,
    window_seconds: f64,
) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("chronicle is no longer running")?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let connections: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
          WHERE datname = current_database() AND application_name = 'chronicle'",
    )
    .fetch_one(pool)
    .await?;
    let tables: BTreeMap<String, i64> = sqlx::query_as(
        "SELECT relname::text, pg_total_relation_size(relid) FROM pg_stat_user_tables",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let metrics = client.metrics().await?;
    let process_lag = scrape::gauge_sum_labelled(
        &metrics,
        "chronicle_projector_lag",
        "projector=\"process-manager\"",
    );
    for error in &window.first_errors {
        eprintln!("soak: error: {error}");
    }
    let refused = window.refused_total();
    let latencies = Latencies::new(window.latencies);
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Sample {
        at: elapsed,
        rss_anon_kib: kib("RssAnon:"),
        rss_file_kib: kib("RssFile:"),
        heap_bytes: scrape::gauge_sum(&metrics, "chronicle_heap_live_bytes")
            + scrape::gauge_sum(&metrics, "chronicle_allocator_bytes{state=\"allocated\"}"),
        allocator_resident: scrape::gauge_sum(
            &metrics,
            "chronicle_allocator_bytes{state=\"resident\"}",
        ),
        allocator_active: scrape::gauge_sum(
            &metrics,
            "chronicle_allocator_bytes{state=\"active\"}",
        ),
        allocator_metadata: scrape::gauge_sum(
            &metrics,
            "chronicle_allocator_bytes{state=\"metadata\"}",
        ),
        threads: kib("Threads:"),
        descriptors,
        connections,
        tables,
        index_bytes: directory_bytes(&server.data_dir.join("search")),
        relay_lag: scrape::gauge_sum(&metrics, "chronicle_relay_lag_events"),
        projector_lag: scrape::gauge_sum(&metrics, "chronicle_projector_lag") - process_lag,
        process_lag,
        throughput: latencies.count() as f64 / window_seconds,
        operations: latencies.count(),
        p99_ms: chronicle_bench::ms(latencies.percentile(99.0)),
        errors: window.errors,
        refused,
        dropped: window.dropped,
        rates: Rates::default(),
    })
}

/// The bytes of the files under `dir`, recursively.
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn print_header() {
    println!(
        "{:>7} {:>9} {:>9} {:>9} {:>9} {:>5} {:>5} {:>10} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>6} {:>7} {:>5} {:>5} {:>5} {:>6} {:>6} {:>7} {:>5}",
        "min",
        "anon MiB",
        "file MiB",
        "heap MiB",
        "jem MiB",
        "fds",
        "conns",
        "tables MiB",
        "index MiB",
        "relay",
        "proj",
        "pm",
        "ops/s",
        "p99 ms",
        "errors",
        "refused",
        "chr%",
        "pg%",
        "tan%",
        "WAL/s",
        "FPI/s",
        "reads/s",
        "hit%"
    );
}

fn print_line(sample: &Sample) {
    println!(
        "{:>7.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>5} {:>5} {:>10.1} {:>9.1} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>8.1} {:>6} {:>7} {:>5.0} {:>5.0} {:>5.0} {:>6.2} {:>6.0} {:>7.0} {:>5.1}",
        sample.at / 60.0,
        mib(sample.rss_anon_kib * 1024),
        mib(sample.rss_file_kib * 1024),
        sample.heap_bytes.max(0.0) / (1024.0 * 1024.0),
        sample.allocator_resident / (1024.0 * 1024.0),
        sample.descriptors,
        sample.connections,
        mib(sample.tables.values().sum::<i64>().max(0) as u64),
        mib(sample.index_bytes),
        sample.relay_lag,
        sample.projector_lag,
        sample.process_lag,
        sample.throughput,
        sample.p99_ms,
        sample.errors,
        sample.refused + sample.dropped,
        sample.rates.chronicle_cpu,
        sample.rates.postgres_cpu,
        sample.rates.tansu_cpu,
        sample.rates.wal_mib_per_s,
        sample.rates.fpi_per_s,
        sample.rates.reads_per_s,
        sample.rates.hit_percent,
    );
}

/// What the autovacuum stand-in did (nothing when the server vacuums itself).
fn vacuums_report(vacuums: &BTreeMap<String, u32>) -> String {
    if vacuums.is_empty() {
        return "\nNo vacuum by the soak (the server's autovacuum is on, or nothing was due).\n"
            .to_owned();
    }
    let done: Vec<String> = vacuums
        .iter()
        .map(|(table, n)| format!("{table} {n}"))
        .collect();
    format!(
        "\nThe server runs without autovacuum; the soak vacuumed as its defaults would \
         (`dbwatch::autovacuum_stand_in`), times by table and kind: {}.\n",
        done.join(", ")
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The verdict, as markdown: memory, descriptors, connections and lag after warm-up
/// (the first quarter), and where storage went.
fn report(options: &Options, samples: &[Sample]) -> String {
    let mut out = String::new();
    let warm = samples.len() / 4;
    let (Some(first), Some(last)) = (samples.get(warm), samples.last()) else {
        return "too few samples for a verdict".to_owned();
    };
    let after = &samples[warm..];
    // One sample of a sawtooth (the search index's commits, jemalloc's decay) says little:
    // growth is read off a least-squares line through every sample after warm-up.
    let (fitted_from, fitted_to) = fitted_ends(after, |s| mib(s.rss_anon_kib * 1024));
    let growth = (fitted_to / fitted_from.max(1e-9) - 1.0) * 100.0;
    let range = |value: fn(&Sample) -> f64| {
        let values = after.iter().map(value);
        let low = values.clone().fold(f64::INFINITY, f64::min);
        (low, values.fold(f64::NEG_INFINITY, f64::max))
    };
    let _ = writeln!(
        out,
        "## Verdict ({} min at {} ops/s)\n",
        options.minutes, options.rate
    );
    let _ = writeln!(
        out,
        "| what (after the first quarter) | from | to | bound |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    let _ = writeln!(
        out,
        "| anonymous memory (MiB), fitted line | {fitted_from:.1} | {fitted_to:.1} | growth {growth:+.1}% (< 5%: {}) |",
        if growth < 5.0 { "met" } else { "missed" }
    );
    let _ = writeln!(
        out,
        "| anonymous memory (MiB), first and last sample | {:.1} | {:.1} | |",
        mib(first.rss_anon_kib * 1024),
        mib(last.rss_anon_kib * 1024),
    );
    // Where anonymous memory goes: the heap, the pages jemalloc holds for it, and what
    // is left (freed pages not yet purged, thread stacks, anything no allocator holds).
    for (what, value) in [
        (
            "live heap (MiB), fitted line",
            (|s: &Sample| s.heap_bytes / (1024.0 * 1024.0)) as fn(&Sample) -> f64,
        ),
        ("jemalloc active + metadata (MiB), fitted line", |s| {
            (s.allocator_active + s.allocator_metadata) / (1024.0 * 1024.0)
        }),
        ("anonymous memory beyond that (MiB), fitted line", |s| {
            mib(s.rss_anon_kib * 1024)
                - (s.allocator_active + s.allocator_metadata) / (1024.0 * 1024.0)
        }),
    ] {
        let (from, to) = fitted_ends(after, value);
        let _ = writeln!(
            out,
            "| {what} | {from:.1} | {to:.1} | change {:+.1} MiB |",
            to - from
        );
    }
    for (what, value) in [
        (
            "file-backed memory (MiB)",
            (|s: &Sample| mib(s.rss_file_kib * 1024)) as fn(&Sample) -> f64,
        ),
        ("open descriptors", |s| s.descriptors as f64),
        ("threads", |s| s.threads as f64),
        ("database connections", |s| s.connections as f64),
        ("relay lag (events)", |s| s.relay_lag),
        ("projector lag (messages)", |s| s.projector_lag),
        ("process-manager lag (messages)", |s| s.process_lag),
        ("p99 latency of a window (ms)", |s| s.p99_ms),
    ] {
        let (low, high) = range(value);
        let _ = writeln!(out, "| {what} | min {low:.1} | max {high:.1} | |");
    }
    let operations: usize = samples.iter().map(|s| s.operations).sum();
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    let refused: u64 = samples.iter().map(|s| s.refused + s.dropped).sum();
    let _ = writeln!(
        out,
        "\n{operations} operations answered, {errors} errors, {refused} refused or dropped.\n"
    );
    let _ = writeln!(
        out,
        "| table | MiB after warm-up | MiB at the end | MiB/min |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    let minutes = ((last.at - first.at) / 60.0).max(1e-9);
    for (table, end) in &last.tables {
        let begin = first.tables.get(table).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {table} | {:.2} | {:.2} | {:.3} |",
            mib(begin.max(0) as u64),
            mib((*end).max(0) as u64),
            mib((end - begin).max(0) as u64) / minutes
        );
    }
    let _ = writeln!(
        out,
        "| search index | {:.2} | {:.2} | {:.3} |",
        mib(first.index_bytes),
        mib(last.index_bytes),
        mib(last.index_bytes.saturating_sub(first.index_bytes)) / minutes
    );
    out
}

/// The values at the first and last sample's time of the least-squares line through
/// `value` over `samples`.
fn fitted_ends(samples: &[Sample], value: fn(&Sample) -> f64) -> (f64, f64) {
    let n = samples.len() as f64;
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return (0.0, 0.0);
    };
    let mean_t = samples.iter().map(|s| s.at).sum::<f64>() / n;
    let mean_v = samples.iter().map(value).sum::<f64>() / n;
    let (covariance, variance) = samples.iter().fold((0.0, 0.0), |(c, v), s| {
        let dt = s.at - mean_t;
        (c + dt * (value(s) - mean_v), v + dt * dt)
    });
    let slope = if variance > 0.0 {
        covariance / variance
    } else {
        0.0
    };
    let at = |t: f64| mean_v + slope * (t - mean_t);
    (at(first.at), at(last.at))
}

fn write_outputs(out: &Path, samples: &[Sample], report: &str) -> anyhow::Result<()> {
    let mut csv = String::from(
        "seconds,rss_anon_kib,rss_file_kib,heap_bytes,allocator_resident,descriptors,connections,table_bytes,index_bytes,\
         relay_lag,projector_lag,process_lag,operations,p99_ms,errors,refused,dropped,\
         chronicle_cpu,postgres_cpu,tansu_cpu,wal_mib_per_s,fpi_per_s,checkpoints,reads_per_s,hit_percent,\
         allocator_active,allocator_metadata,threads\n",
    );
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.0},{},{},{},{},{},{},{},{},{},{},{},{},{:.2},{},{},{},{:.1},{:.1},{:.1},{:.3},{:.1},{},{:.1},{:.2},{},{},{}",
            s.at,
            s.rss_anon_kib,
            s.rss_file_kib,
            s.heap_bytes,
            s.allocator_resident,
            s.descriptors,
            s.connections,
            s.tables.values().sum::<i64>(),
            s.index_bytes,
            s.relay_lag,
            s.projector_lag,
            s.process_lag,
            s.operations,
            s.p99_ms,
            s.errors,
            s.refused,
            s.dropped,
            s.rates.chronicle_cpu,
            s.rates.postgres_cpu,
            s.rates.tansu_cpu,
            s.rates.wal_mib_per_s,
            s.rates.fpi_per_s,
            s.rates.checkpoints,
            s.rates.reads_per_s,
            s.rates.hit_percent,
            s.allocator_active,
            s.allocator_metadata,
            s.threads
        );
    }
    std::fs::write(out.join("soak.csv"), csv)?;
    std::fs::write(
        out.join("soak.md"),
        format!("Machine: {}\n\n{report}", machine()),
    )?;
    plot_csv(out)
}

/// Draws `soak-memory.png`, `soak-storage.png` and `soak-lag.png` from `out/soak.csv`:
/// memory and storage apart, since storage grows by gigabytes while memory moves by
/// megabytes.
fn plot_csv(out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(out.join("soak.csv"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("an empty soak.csv")?
        .split(',')
        .collect();
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap_or(0.0)).collect())
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let line = |label: &str, name: &str, scale: f64| -> anyhow::Result<Series> {
        let at = column("seconds").context("no seconds column")?;
        let index = column(name).with_context(|| format!("no {name} column"))?;
        Ok(Series {
            label: label.to_owned(),
            points: rows
                .iter()
                .map(|r| (r[at] / 60.0, r[index] * scale))
                .collect(),
        })
    };
    let (kib, bytes) = (1.0 / 1024.0, 1.0 / (1024.0 * 1024.0));
    plot::over_time(
        &out.join("soak-memory.png"),
        "chronicle all under a steady load: memory",
        "minutes",
        "MiB",
        &[
            line("RssAnon", "rss_anon_kib", kib)?,
            line("RssFile", "rss_file_kib", kib)?,
            line("live heap", "heap_bytes", bytes)?,
            line("jemalloc resident", "allocator_resident", bytes)?,
        ]
        .into_iter()
        // Runs before 2026-12-06 did not record it.
        .chain(line("jemalloc active", "allocator_active", bytes).ok())
        .collect::<Vec<_>>(),
    )?;
    plot::over_time(
        &out.join("soak-storage.png"),
        "chronicle all under a steady load: storage",
        "minutes",
        "MiB",
        &[
            line("tables", "table_bytes", bytes)?,
            line("search index", "index_bytes", bytes)?,
        ],
    )?;
    plot::over_time(
        &out.join("soak-lag.png"),
        "chronicle all under a steady load: lag",
        "minutes",
        "events or messages",
        &[
            line("relay", "relay_lag", 1.0)?,
            line("read models and search", "projector_lag", 1.0)?,
            line("process manager", "process_lag", 1.0)?,
        ],
    )
}

/// The statements that took the database's time, quarter by quarter, when
/// `pg_stat_statements` was loaded: the ten that took most in the last quarter, with their
/// calls per second and mean time in each.
fn statements_report(snapshots: &[BTreeMap<i64, Statement>], quarter_seconds: f64) -> String {
    let quarters: Vec<BTreeMap<i64, Statement>> = snapshots
        .windows(2)
        .map(|pair| dbwatch::statements_between(&pair[0], &pair[1]))
        .collect();
    let Some(last) = quarters.last() else {
        return "\n(pg_stat_statements not loaded: no statement report; see docs/soak.md)\n"
            .to_owned();
    };
    let mut top: Vec<(&i64, &Statement)> = last.iter().collect();
    top.sort_by(|a, b| b.1.total_ms.total_cmp(&a.1.total_ms));
    let mut out = String::from("\n## Statements (pg_stat_statements), by quarter\n\n");
    let _ = write!(out, "| statement |");
    for q in 1..=quarters.len() {
        let _ = write!(
            out,
            " Q{q} calls/s | Q{q} mean ms | Q{q} blocks read/call |"
        );
    }
    let _ = write!(out, "\n|---|");
    for _ in &quarters {
        let _ = write!(out, "---|---|---|");
    }
    out.push('\n');
    for (id, statement) in top.into_iter().take(10) {
        let text: String = statement
            .query
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let text: String = text.chars().take(90).collect();
        let _ = write!(out, "| `{}` |", text.replace('|', "\\|"));
        for quarter in &quarters {
            match quarter.get(id) {
                Some(s) => {
                    let _ = write!(
                        out,
                        " {:.1} | {:.3} | {:.2} |",
                        s.calls / quarter_seconds,
                        s.total_ms / s.calls.max(1.0),
                        s.blocks_read / s.calls.max(1.0)
                    );
                }
                None => out.push_str(" – | – | – |"),
            }
        }
        out.push('\n');
    }
    out
}
