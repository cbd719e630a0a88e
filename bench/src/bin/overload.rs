//! Overload: `chronicle all` under an open-loop load at twice what it can serve. Not part
//! of CI.
//!
//! First the capacity: the mix of `chronicle_bench::mix` (deposits, bookings, ledger
//! reads) in a closed loop of `--workers` clients for `--capacity-seconds`, counting
//! operations answered 2xx. Then three open-loop phases: half the capacity
//! (`--calm-seconds`), `--factor` times it (`--overload-seconds`), half again. Every
//! second it records what was answered, what was refused (429 or 503, and whether
//! `Retry-After` came with it), latencies and the process's anonymous memory. The
//! report gives each phase's figures and how long after the load dropped the service
//! answered as it did before; `--out` gets `overload.md`, `overload.csv` and
//! `overload.png`.
//!
//! `scripts/bench.sh overload` builds and runs it, with a broker; or
//! `cargo run --release -p chronicle-bench --bin overload -- [--factor 2] [--out DIR]`
//! with `chronicle` built (`CHRONICLE_BIN`) and a broker in `CHRONICLE_KAFKA_BROKERS`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chronicle_bench::chronicle::{Client, Server};
use chronicle_bench::mix::{self, Window};
use chronicle_bench::plot::{self, Series};
use chronicle_bench::{Latencies, machine, ms};

struct Options {
    factor: f64,
    workers: usize,
    capacity_seconds: u64,
    calm_seconds: u64,
    overload_seconds: u64,
    accounts: usize,
    out: PathBuf,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            factor: 2.0,
            workers: 64,
            capacity_seconds: 20,
            calm_seconds: 20,
            overload_seconds: 60,
            accounts: 200,
            out: PathBuf::from("target/overload"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--factor" => options.factor = value()?.parse()?,
                "--workers" => options.workers = value()?.parse()?,
                "--capacity-seconds" => options.capacity_seconds = value()?.parse()?,
                "--calm-seconds" => options.calm_seconds = value()?.parse()?,
                "--overload-seconds" => options.overload_seconds = value()?.parse()?,
                "--accounts" => options.accounts = value()?.parse()?,
                "--out" => options.out = PathBuf::from(value()?),
                other => bail!("unknown flag {other}"),
            }
        }
        Ok(options)
    }
}

/// A stretch of the run at one offered rate.
struct Phase {
    name: &'static str,
    rate: f64,
    seconds: u64,
}

/// One second of the run.
struct Second {
    at: u64,
    phase: &'static str,
    window: Window,
    rss_anon_kib: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    std::fs::create_dir_all(&options.out)?;
    println!("{}", machine());
    let server = Server::start("all").await?;
    let pid = server.pid().context("chronicle exited at start")?;
    let client = Arc::new(Client::new(&server, 512)?);
    let accounts = Arc::new(mix::open_accounts(&client, options.accounts).await?);

    let capacity = capacity(&client, &accounts, &options).await;
    println!(
        "capacity: {capacity:.0} ops/s answered 2xx ({} closed-loop clients, {} s)",
        options.workers, options.capacity_seconds
    );
    let phases = [
        Phase {
            name: "calm",
            rate: capacity / 2.0,
            seconds: options.calm_seconds,
        },
        Phase {
            name: "overload",
            rate: capacity * options.factor,
            seconds: options.overload_seconds,
        },
        Phase {
            name: "after",
            rate: capacity / 2.0,
            seconds: options.calm_seconds,
        },
    ];
    let (seconds, totals) = run_phases(&client, &accounts, &phases, pid).await?;
    let report = report(&options, capacity, &phases, &seconds, &totals);
    println!("{report}");
    write_outputs(&options.out, &seconds, &report)?;
    server.stop().await;
    Ok(())
}

/// Operations answered 2xx per second by `--workers` clients each sending the next as
/// soon as the last is answered.
async fn capacity(client: &Arc<Client>, accounts: &Arc<Vec<uuid::Uuid>>, options: &Options) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(1 << 40));
    let workers: Vec<_> = (0..options.workers)
        .map(|_| {
            let (client, accounts, stop, done, next) = (
                client.clone(),
                accounts.clone(),
                stop.clone(),
                done.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if let Ok(answer) = mix::operate(&client, &accounts, n).await
                        && (200..300).contains(&answer.status)
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(options.capacity_seconds)).await;
    let counted = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    counted as f64 / elapsed
}

/// Drives the phases back to back, sampling every second. Returns the seconds (what
/// was answered in each) and each phase's whole window (what was answered to the
/// operations it sent, whenever the answer came).
async fn run_phases(
    client: &Arc<Client>,
    accounts: &Arc<Vec<uuid::Uuid>>,
    phases: &[Phase],
    pid: u32,
) -> anyhow::Result<(Vec<Second>, Vec<Window>)> {
    let window = Arc::new(Mutex::new(Window::default()));
    let totals: Vec<_> = phases
        .iter()
        .map(|_| Arc::new(Mutex::new(Window::default())))
        .collect();
    let current: Arc<Mutex<&'static str>> = Arc::new(Mutex::new(phases[0].name));
    let load = {
        let (client, accounts, window, current) = (
            client.clone(),
            accounts.clone(),
            window.clone(),
            current.clone(),
        );
        let plan: Vec<_> = phases
            .iter()
            .zip(&totals)
            .map(|(p, total)| (p.name, p.rate, p.seconds, total.clone()))
            .collect();
        tokio::spawn(async move {
            let mut n = 0;
            for (name, rate, seconds, total) in plan {
                *current.lock().unwrap_or_else(|e| e.into_inner()) = name;
                n = mix::open_loop(
                    client.clone(),
                    accounts.clone(),
                    vec![window.clone(), total],
                    rate,
                    Duration::from_secs(seconds),
                    n,
                )
                .await;
            }
        })
    };
    let total: u64 = phases.iter().map(|p| p.seconds).sum();
    let mut seconds = Vec::new();
    let started = tokio::time::Instant::now();
    // A few seconds more than the plan, so answers still on their way are counted.
    for at in 1..=total + 3 {
        tokio::time::sleep_until(started + Duration::from_secs(at)).await;
        let phase = *current.lock().unwrap_or_else(|e| e.into_inner());
        let second = Second {
            at,
            phase: if at > total { "after" } else { phase },
            window: mix::take(&window),
            rss_anon_kib: rss_anon_kib(pid)?,
        };
        for error in &second.window.first_errors {
            eprintln!("overload: error: {error}");
        }
        seconds.push(second);
    }
    load.await?;
    Ok((seconds, totals.iter().map(|t| mix::take(t)).collect()))
}

fn rss_anon_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("chronicle is no longer running")?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0))
}

/// The figures of one phase: the answers to what it sent, and memory over its seconds.
struct Summary {
    answered: usize,
    refused_429: u64,
    refused_503: u64,
    without_retry_after: u64,
    errors: u64,
    dropped: u64,
    latencies: Latencies,
    refusals: Latencies,
    rss_low_mib: f64,
    rss_high_mib: f64,
}

fn summarise<'a>(total: &Window, seconds: impl Iterator<Item = &'a Second>) -> Summary {
    let mut summary = Summary {
        answered: 0,
        refused_429: 0,
        refused_503: 0,
        without_retry_after: 0,
        errors: 0,
        dropped: 0,
        latencies: Latencies::new(Vec::new()),
        refusals: Latencies::new(Vec::new()),
        rss_low_mib: f64::INFINITY,
        rss_high_mib: 0.0,
    };
    summary.answered = total.latencies.len();
    summary.refused_429 = total.refused.get(&429).copied().unwrap_or(0);
    summary.refused_503 = total.refused.get(&503).copied().unwrap_or(0);
    summary.without_retry_after = total.refused_without_retry_after;
    summary.errors = total.errors;
    summary.dropped = total.dropped;
    summary.latencies = Latencies::new(total.latencies.clone());
    summary.refusals = Latencies::new(total.refusal_latencies.clone());
    for second in seconds {
        let rss = second.rss_anon_kib as f64 / 1024.0;
        summary.rss_low_mib = summary.rss_low_mib.min(rss);
        summary.rss_high_mib = summary.rss_high_mib.max(rss);
    }
    summary
}

/// Seconds from the start of the last phase until every second answers with a p99 no
/// worse than twice the calm phase's and refuses nothing.
fn recovery(seconds: &[Second], calm_p99: Duration) -> Option<u64> {
    let after: Vec<&Second> = seconds.iter().filter(|s| s.phase == "after").collect();
    let start = after.first()?.at;
    let settled = |s: &&Second| {
        s.window.refused_total() == 0
            && s.window.errors == 0
            && Latencies::new(s.window.latencies.clone()).percentile(99.0) <= calm_p99 * 2
    };
    let last_unsettled = after.iter().rposition(|s| !settled(s));
    match last_unsettled {
        None => Some(0),
        Some(i) if i + 1 < after.len() => Some(after[i + 1].at - start),
        Some(_) => None,
    }
}

fn report(
    options: &Options,
    capacity: f64,
    phases: &[Phase],
    seconds: &[Second],
    totals: &[Window],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Overload at {}× capacity\n\nMachine: {}. Capacity of the mix (closed loop, {} clients): \
         **{capacity:.0} ops/s**. Phases: {:.0} ops/s for {} s, {:.0} ops/s for {} s, {:.0} ops/s for {} s \
         (open loop; the load generator runs on the same machine).\n",
        options.factor,
        machine(),
        options.workers,
        phases[0].rate,
        phases[0].seconds,
        phases[1].rate,
        phases[1].seconds,
        phases[2].rate,
        phases[2].seconds,
    );
    let _ = writeln!(
        out,
        "| phase | offered ops/s | answered 2xx/s | refused 429 | refused 503 | without Retry-After | other errors | p50 / p99 / max of 2xx (ms) | p99 of refusals (ms) | RssAnon MiB (min–max) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let mut calm_p99 = Duration::ZERO;
    for (phase, total) in phases.iter().zip(totals) {
        let s = summarise(total, seconds.iter().filter(|s| s.phase == phase.name));
        if phase.name == "calm" {
            calm_p99 = s.latencies.percentile(99.0);
        }
        let max = s.latencies.percentile(100.0);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {:.1} / {:.1} / {:.1} | {:.1} | {:.1}–{:.1} |",
            phase.name,
            phase.rate,
            s.answered as f64 / phase.seconds.max(1) as f64,
            s.refused_429,
            s.refused_503,
            s.without_retry_after,
            s.errors + s.dropped,
            ms(s.latencies.percentile(50.0)),
            ms(s.latencies.percentile(99.0)),
            ms(max),
            ms(s.refusals.percentile(99.0)),
            s.rss_low_mib,
            s.rss_high_mib,
        );
    }
    let _ = writeln!(
        out,
        "\nRecovered (every second after refusing nothing, p99 within twice the calm phase's): {}.",
        recovery(seconds, calm_p99).map_or("not within the last phase".to_owned(), |s| format!(
            "{s} s after the load dropped"
        ))
    );
    out
}

fn write_outputs(out: &Path, seconds: &[Second], report: &str) -> anyhow::Result<()> {
    let mut csv = String::from(
        "second,phase,answered,refused_429,refused_503,without_retry_after,errors,dropped,p50_ms,p99_ms,rss_anon_kib\n",
    );
    for s in seconds {
        let w = &s.window;
        let latencies = Latencies::new(w.latencies.clone());
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{:.2},{:.2},{}",
            s.at,
            s.phase,
            w.latencies.len(),
            w.refused.get(&429).copied().unwrap_or(0),
            w.refused.get(&503).copied().unwrap_or(0),
            w.refused_without_retry_after,
            w.errors,
            w.dropped,
            ms(latencies.percentile(50.0)),
            ms(latencies.percentile(99.0)),
            s.rss_anon_kib
        );
    }
    std::fs::write(out.join("overload.csv"), csv)?;
    std::fs::write(out.join("overload.md"), report)?;
    let line = |label: &str, value: &dyn Fn(&Second) -> f64| Series {
        label: label.to_owned(),
        points: seconds.iter().map(|s| (s.at as f64, value(s))).collect(),
    };
    plot::over_time(
        &out.join("overload.png"),
        "chronicle all: calm, twice its capacity, calm",
        "seconds",
        "per second / ms / MiB",
        &[
            line("answered 2xx per second", &|s| {
                s.window.latencies.len() as f64
            }),
            line("refused per second", &|s| s.window.refused_total() as f64),
            line("p99 of 2xx (ms)", &|s| {
                ms(Latencies::new(s.window.latencies.clone()).percentile(99.0))
            }),
            line("RssAnon (MiB)", &|s| s.rss_anon_kib as f64 / 1024.0),
        ],
    )?;
    Ok(())
}
