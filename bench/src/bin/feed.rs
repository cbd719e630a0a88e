//! Live feed benchmark (issue 18, ADR 0037): how much memory a held subscriber costs,
//! and how long an event takes from its command's acknowledgement to a subscriber,
//! beside the same command's time to become visible to queries.
//!
//! `cargo build --release -p chronicle-api && cargo run --release -p chronicle-bench --bin feed -- [SUBSCRIBERS] [SECONDS] [RATE] [PARTITIONS]`
//!
//! Starts `chronicle all` (broker from `CHRONICLE_KAFKA_BROKERS`, PARTITIONS partitions
//! per topic, default 1), then:
//! 1. opens SUBSCRIBERS (default 10,000) feed streams, each of a principal of its own
//!    that owns nothing (they stay quiet but for heartbeats), and reports the server's
//!    `RssAnon` and jemalloc's live heap before and after, per subscriber, with its
//!    descriptors;
//! 2. with them held, sends RATE deposits a second (default 100) for SECONDS (default
//!    60), round-robin over 20 probe principals, each watching its own feed stream, and
//!    measures for every deposit acknowledgement → SSE receipt, and for every fourth,
//!    acknowledgement → visible to a query (polled every 2 ms, as docs/benchmarks.md §4
//!    measures command → visible).
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chronicle_api::auth::JwtKeys;
use chronicle_bench::chronicle::{JWT_SECRET, Server};
use chronicle_bench::{Latencies, machine, ms};
use chronicle_domain::Role;
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

/// Deposits seen on the probes' streams: global position → when it arrived.
#[derive(Default)]
struct Arrivals {
    at: Mutex<HashMap<i64, Instant>>,
    arrived: Notify,
}

impl Arrivals {
    async fn wait_for(&self, position: i64, bound: Duration) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let notified = self.arrived.notified();
            if let Some(at) = self.at.lock().ok()?.remove(&position) {
                return Some(at);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

async fn live_heap(http: &reqwest::Client, base: &str) -> f64 {
    let page = match http.get(format!("{base}/metrics")).send().await {
        Ok(reply) => reply.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    page.lines()
        .find(|l| l.starts_with("chronicle_allocator_bytes{state=\"allocated\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Opens a feed stream for `token`; with `arrivals`, records each event's position as
/// it arrives, else reads and drops.
async fn subscribe(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    arrivals: Option<Arc<Arrivals>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut response = http
        .get(format!("{base}/v1/feed"))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "feed: {}",
        response.status()
    );
    Ok(tokio::spawn(async move {
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let Some(arrivals) = &arrivals else {
                continue;
            };
            let now = Instant::now();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let data = block.lines().find_map(|l| l.strip_prefix("data: "));
                if let Some(position) = data
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                    .and_then(|d| d["global_position"].as_i64())
                    && let Ok(mut at) = arrivals.at.lock()
                {
                    at.insert(position, now);
                }
            }
            arrivals.arrived.notify_waiters();
        }
    }))
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let reply = http
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = reply.status();
    let body: Value = reply.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{path}: {status} {body}");
    Ok(body)
}

/// Polls the account until it shows `version`.
async fn visible(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    account: Uuid,
    version: i64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let reply = http
            .get(format!("{base}/v1/accounts/{account}"))
            .bearer_auth(token)
            .send()
            .await?;
        if reply.status().is_success() {
            let body: Value = reply.json().await?;
            if body["version"].as_i64() >= Some(version) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    anyhow::bail!("version {version} of {account} not visible within 10 s")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> u64 {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
    };
    let (subscribers, seconds, rate, partitions) =
        (arg(0, 10_000), arg(1, 60), arg(2, 100), arg(3, 1));
    println!("{}", machine());
    println!(
        "live feed: {subscribers} held subscribers, {rate} deposits/s for {seconds} s, \
         {partitions} partition(s) per topic"
    );
    let server = Server::start_with(
        "all",
        &[
            ("CHRONICLE_KAFKA_PARTITIONS", partitions.to_string()),
            (
                "CHRONICLE_FEED_MAX_SUBSCRIBERS",
                (subscribers + 1_000).to_string(),
            ),
            ("CHRONICLE_MAX_INFLIGHT_QUERIES", "512".to_owned()),
        ],
    )
    .await?;
    let pid = server.pid().context("chronicle is not running")?;
    let base = server.base.clone();
    let keys = JwtKeys::hs256(JWT_SECRET.as_bytes());
    let token = |sub: &str| {
        keys.issue(sub, &[Role::Client], chrono::Duration::hours(4))
            .expect("a token")
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;

    // Probes: accounts of their own, visible before anything is measured.
    let mut probes = Vec::new();
    for i in 0..20 {
        let token = token(&format!("probe-{i}"));
        let opened = post(
            &http,
            &base,
            &token,
            "/v1/accounts",
            json!({"currency": "EUR"}),
        )
        .await?;
        let account: Uuid = opened["account_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("no account_id")?;
        visible(&http, &base, &token, account, 1).await?;
        probes.push((token, account));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = (
        proc_status(pid, "RssAnon:"),
        live_heap(&http, &base).await,
        descriptors(pid),
    );

    // 1. Held subscribers.
    let started = Instant::now();
    let mut held = Vec::with_capacity(subscribers as usize);
    let opener = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    for chunk in (0..subscribers).collect::<Vec<_>>().chunks(200) {
        let opened = futures::future::join_all(chunk.iter().map(|i| {
            let (opener, base, token) =
                (opener.clone(), base.clone(), token(&format!("quiet-{i}")));
            async move { subscribe(&opener, &base, &token, None).await }
        }))
        .await;
        for stream in opened {
            held.push(stream?);
        }
    }
    let opening = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = (
        proc_status(pid, "RssAnon:"),
        live_heap(&http, &base).await,
        descriptors(pid),
    );
    let per = |b: f64, a: f64| (a - b) / subscribers as f64;
    println!(
        "opened {subscribers} streams in {:.1} s; server RssAnon {:.1} → {:.1} MiB ({:.1} KiB per subscriber), \
         live heap {:.1} → {:.1} MiB ({:.1} KiB per subscriber), descriptors {} → {}",
        opening.as_secs_f64(),
        before.0 as f64 / 1024.0,
        after.0 as f64 / 1024.0,
        per(before.0 as f64, after.0 as f64),
        before.1 / 1048576.0,
        after.1 / 1048576.0,
        per(before.1, after.1) / 1024.0,
        before.2,
        after.2,
    );

    // 2. Latency with them held.
    let arrivals = Arc::new(Arrivals::default());
    let mut watching = Vec::new();
    for (token, _) in &probes {
        watching.push(subscribe(&http, &base, token, Some(arrivals.clone())).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tick = tokio::time::interval(interval);
    let mut measuring = Vec::new();
    let mut n = 0usize;
    while Instant::now() < until {
        tick.tick().await;
        n += 1;
        let (token, account) = probes[n % probes.len()].clone();
        let (http, base, arrivals) = (http.clone(), base.clone(), arrivals.clone());
        measuring.push(tokio::spawn(async move {
            let reply = post(
                &http,
                &base,
                &token,
                &format!("/v1/accounts/{account}/deposits"),
                json!({"amount": 1, "reference": format!("feed-{n}")}),
            )
            .await?;
            let acknowledged = Instant::now();
            let position = reply["position"].as_i64().context("no position")?;
            let version = reply["version"].as_i64().context("no version")?;
            let polled = async {
                if n.is_multiple_of(4) {
                    visible(&http, &base, &token, account, version).await?;
                    Ok::<_, anyhow::Error>(Some(acknowledged.elapsed()))
                } else {
                    Ok(None)
                }
            };
            let streamed = arrivals.wait_for(position, Duration::from_secs(10));
            let (polled, streamed) = tokio::join!(polled, streamed);
            let streamed = streamed.map(|at| at.saturating_duration_since(acknowledged));
            Ok::<_, anyhow::Error>((polled?, streamed))
        }));
    }
    let (mut to_visible, mut to_stream, mut missing, mut errors) = (Vec::new(), Vec::new(), 0, 0);
    for measure in measuring {
        match measure.await? {
            Ok((polled, streamed)) => {
                to_visible.extend(polled);
                match streamed {
                    Some(latency) => to_stream.push(latency),
                    None => missing += 1,
                }
            }
            Err(error) => {
                if errors == 0 {
                    println!("  first error: {error:#}");
                }
                errors += 1;
            }
        }
    }
    let (visible_p99, stream_p99) = {
        let (v, s) = (Latencies::new(to_visible), Latencies::new(to_stream));
        println!("deposit acknowledged → visible to polling: {}", v.summary());
        println!("deposit acknowledged → SSE received:       {}", s.summary());
        (v.percentile(99.0), s.percentile(99.0))
    };
    println!(
        "{n} deposits, {errors} errors, {missing} never seen on the stream; \
         p99 SSE − p99 visible = {:+.1} ms (target ≤ +20 ms); server RssAnon at the end {:.1} MiB, \
         {} descriptors",
        ms(stream_p99) - ms(visible_p99),
        proc_status(pid, "RssAnon:") as f64 / 1024.0,
        descriptors(pid)
    );
    for stream in held.into_iter().chain(watching) {
        stream.abort();
    }
    server.stop().await;
    Ok(())
}
