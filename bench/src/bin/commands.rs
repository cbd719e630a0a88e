//! Command benchmark: Chronicle's write path over HTTP next to raw SQL and three peer
//! libraries, all measured in the same run on the same PostgreSQL.
//!
//! The workload, the same for every system: each client repeatedly opens an account
//! (25%), deposits into one of the accounts it opened (50%, with a reference), or
//! requests a booking of a resource nobody used before (25%). One operation is one
//! command and one event. Every system runs at each load point on a fresh database:
//! a closed loop at each connection count, then an open loop at a fixed rate with
//! latency counted from each request's intended start (no coordinated omission).
//!
//! - **Chronicle**: `chronicle serve` (commands and queries, no relay or projectors),
//!   one keep-alive HTTP connection per client, JWT on every request.
//! - **pgbench**: the same operations as raw SQL transactions (read the stream, insert
//!   the event, commit) on a plain table without triggers: the physical limit of this
//!   PostgreSQL for that work.
//! - **peers** (`chronicle_bench::peers`, programs in `bench/peer/`), each with its own
//!   aggregate and command API on its own PostgreSQL event store, called in-process from
//!   N concurrent workers on N connections, without HTTP or auth: Python
//!   `eventsourcing`, esrs (Rust, `PgStore`) and Emmett (Node.js,
//!   `getPostgreSQLEventStore` with its `CommandHandler`). A peer that is not installed
//!   is reported as skipped in the table, not left out.
//!
//! Then **command → visible**: `chronicle all` under a fixed background load; a probe
//! deposits and polls `GET /v1/accounts/{id}` until the new version shows (and, in
//! turn, asks once with `min_position`, which waits server-side). Beside it, the broker's
//! own floor on the same broker at the same rate (`chronicle_bench::floor`): a raw
//! rdkafka produce → consume round trip with the relay's producer and the projectors'
//! consumer settings.
//!
//! `scripts/bench.sh commands` installs the peers, builds and runs it; or
//! `cargo run --release -p chronicle-bench --bin commands -- [--seconds S] [--warmup W]
//! [--connections 1,16,64] [--rate R] [--visible-rate R] [--visible-partitions 6,1]
//! [--only closed,open,visible] [--out DIR]`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chronicle_bench::chronicle::{Client, Server};
use chronicle_bench::peers::{Load, Outcome, Peer};
use chronicle_bench::plot::{self, Series};
use chronicle_bench::scrape::Histogram;
use chronicle_bench::{Latencies, Rng, floor, machine, ms};
use chronicle_eventstore::kafka::KafkaSettings;
use chronicle_tests::TestDb;
use tokio::process::Command;
use uuid::Uuid;

/// What one measured run gives.
struct Run {
    operations: u64,
    errors: u64,
    seconds: f64,
    latencies: Vec<Duration>,
}

impl Run {
    fn throughput(&self) -> f64 {
        self.operations as f64 / self.seconds.max(1e-9)
    }

    fn line(&self) -> String {
        format!(
            "{:>8.0} ops/s  {}  errors {}",
            self.throughput(),
            Latencies::new(self.latencies.clone()).summary(),
            self.errors
        )
    }

    fn sorted_ms(&self) -> Vec<f64> {
        let mut samples: Vec<f64> = self.latencies.iter().map(|d| ms(*d)).collect();
        samples.sort_by(f64::total_cmp);
        samples
    }
}

struct Options {
    seconds: u64,
    warmup: u64,
    connections: Vec<u32>,
    rate: u32,
    visible_rate: u32,
    /// Partitions per topic for each command → visible run (`CHRONICLE_KAFKA_PARTITIONS`).
    visible_partitions: Vec<i32>,
    out: PathBuf,
    /// Parts to run: `closed`, `open`, `visible` (all by default).
    parts: Vec<String>,
}

impl Options {
    fn runs(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }

    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            seconds: 20,
            warmup: 3,
            connections: vec![1, 16, 64],
            rate: 300,
            visible_rate: 100,
            // The default, then what the README advises for one projector on tansu.
            visible_partitions: vec![KafkaSettings::new("").partitions, 1],
            out: PathBuf::from("docs/bench"),
            parts: vec!["closed".into(), "open".into(), "visible".into()],
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--seconds" => options.seconds = value()?.parse()?,
                "--warmup" => options.warmup = value()?.parse()?,
                "--connections" => {
                    options.connections = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?;
                }
                "--rate" => options.rate = value()?.parse()?,
                "--visible-rate" => options.visible_rate = value()?.parse()?,
                "--visible-partitions" => {
                    options.visible_partitions = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?;
                }
                "--out" => options.out = value()?.into(),
                "--only" => options.parts = value()?.split(',').map(str::to_owned).collect(),
                other => bail!("unknown argument {other}"),
            }
        }
        Ok(options)
    }
}

// ------------------------------------------------------------------ the workload

/// What a client does next.
#[derive(Clone, Copy)]
enum Operation {
    Open,
    Deposit,
    Book,
}

fn next_operation(rng: &mut Rng, has_account: bool) -> Operation {
    match rng.below(4) {
        _ if !has_account => Operation::Open,
        0 => Operation::Open,
        1 | 2 => Operation::Deposit,
        _ => Operation::Book,
    }
}

/// Runs `operation` as `client`; a new account is remembered in `accounts`.
async fn perform(
    client: &Client,
    operation: Operation,
    rng: &mut Rng,
    accounts: &Mutex<Vec<Uuid>>,
    tag: &str,
) -> anyhow::Result<()> {
    let pick = |rng: &mut Rng| {
        let accounts = accounts.lock().unwrap_or_else(|e| e.into_inner());
        *rng.pick(&accounts)
    };
    match operation {
        Operation::Open => {
            let id = client.open().await?;
            accounts.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        }
        Operation::Deposit => {
            let account = pick(rng);
            let amount = 100 + rng.below(10_000) as u64;
            client
                .deposit(account, amount, &format!("dep-{tag}"))
                .await?;
        }
        Operation::Book => {
            let account = pick(rng);
            client.book(account, &format!("bench-room-{tag}")).await?;
        }
    }
    Ok(())
}

/// Closed loop: `connections` clients, each issuing operations back to back.
async fn closed_loop(server: &Server, connections: u32, options: &Options) -> anyhow::Result<Run> {
    let started = Instant::now();
    let measure_from = started + Duration::from_secs(options.warmup);
    let until = measure_from + Duration::from_secs(options.seconds);
    let mut clients = Vec::new();
    for worker in 0..connections {
        let client = Client::new(server, 1)?;
        clients.push(tokio::spawn(async move {
            let mut rng = Rng::new(0xC0FFEE + u64::from(worker));
            let accounts = Mutex::new(Vec::new());
            let mut run = Run {
                operations: 0,
                errors: 0,
                seconds: 0.0,
                latencies: Vec::new(),
            };
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let has_account = !accounts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                let operation = next_operation(&mut rng, has_account);
                let sent = Instant::now();
                let result = perform(
                    &client,
                    operation,
                    &mut rng,
                    &accounts,
                    &format!("{worker}-{n}"),
                )
                .await;
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(()) => {
                        run.operations += 1;
                        run.latencies.push(sent.elapsed());
                    }
                    Err(error) => {
                        if run.errors == 0 {
                            eprintln!("  first error: {error:#}");
                        }
                        run.errors += 1;
                    }
                }
            }
            run
        }));
    }
    let mut total = Run {
        operations: 0,
        errors: 0,
        seconds: 0.0,
        latencies: Vec::new(),
    };
    for client in clients {
        let run = client.await?;
        total.operations += run.operations;
        total.errors += run.errors;
        total.latencies.extend(run.latencies);
    }
    total.seconds = measure_from.elapsed().as_secs_f64();
    Ok(total)
}

/// Open loop at `rate` operations/s for `seconds`; latency from each intended start.
async fn open_loop(server: &Server, rate: u32, seconds: u64, seed: u64) -> anyhow::Result<Run> {
    let client = Arc::new(Client::new(server, 256)?);
    let accounts = Arc::new(Mutex::new(Vec::new()));
    // Accounts to deposit into and book for, made before the clock starts.
    for _ in 0..16 {
        let id = client.open().await?;
        accounts.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    }
    let total = u64::from(rate) * seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let intended = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(intended).await;
        let (client, accounts) = (client.clone(), accounts.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed + i);
            let operation = next_operation(&mut rng, true);
            let result = perform(
                &client,
                operation,
                &mut rng,
                &accounts,
                &format!("open-{seed}-{i}"),
            )
            .await;
            (result.map_err(|e| format!("{e:#}")), intended.elapsed())
        }));
    }
    let mut run = Run {
        operations: 0,
        errors: 0,
        seconds: seconds as f64,
        latencies: Vec::with_capacity(tasks.len()),
    };
    for task in tasks {
        match task.await? {
            (Ok(()), latency) => {
                run.operations += 1;
                run.latencies.push(latency);
            }
            (Err(error), _) => {
                if run.errors == 0 {
                    eprintln!("  first error: {error}");
                }
                run.errors += 1;
            }
        }
    }
    Ok(run)
}

/// Command → visible, under `rate` operations/s of background load on `chronicle all`.
/// Returns (polling from the acknowledgement, the same from the send, one `min_position`
/// read from the acknowledgement).
async fn command_to_visible(
    rate: u32,
    seconds: u64,
    partitions: i32,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Vec<Duration>)> {
    let server = Server::start_with(
        "all",
        &[("CHRONICLE_KAFKA_PARTITIONS", partitions.to_string())],
    )
    .await?;
    let probe = Client::new(&server, 1)?;
    let account = probe.open().await?;
    // Let the read side catch up with its own start before measuring.
    wait_visible(&probe, account, 1).await?;
    let background = tokio::spawn(background_load(Client::new(&server, 64)?, rate, seconds));
    let horizon = tokio::spawn(sample_oldest_transaction(seconds));
    let until = Instant::now() + Duration::from_secs(seconds);
    let (mut from_ack, mut from_send, mut waited) = (Vec::new(), Vec::new(), Vec::new());
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let sent = Instant::now();
        let reply = probe.deposit(account, 1, &format!("probe-{n}")).await?;
        let acknowledged = Instant::now();
        let version = reply["version"]
            .as_i64()
            .context("no version in the reply")?;
        if n.is_multiple_of(2) {
            let position = reply["position"]
                .as_i64()
                .context("no position in the reply")?;
            probe
                .get(&format!("/v1/accounts/{account}?min_position={position}"))
                .await?;
            waited.push(acknowledged.elapsed());
        } else {
            wait_visible(&probe, account, version).await?;
            from_ack.push(acknowledged.elapsed());
            from_send.push(sent.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (operations, errors) = background.await??;
    println!("  background load: {operations} operations, {errors} errors");
    let oldest = horizon.await??;
    let metrics = probe.metrics().await?;
    print_stages(&metrics);
    let share = |ms: u64| {
        let held = oldest
            .iter()
            .filter(|d| **d >= Duration::from_millis(ms))
            .count();
        100.0 * held as f64 / oldest.len().max(1) as f64
    };
    println!(
        "  oldest transaction holding an xid anywhere in the cluster (what holds the relay back), \
         {} samples: ≥ 20 ms in {:.0}%, ≥ 50 ms in {:.0}%, ≥ 200 ms in {:.0}%, longest {:.0} ms",
        oldest.len(),
        share(20),
        share(50),
        share(200),
        ms(oldest.iter().max().copied().unwrap_or_default())
    );
    server.stop().await;
    Ok((from_ack, from_send, waited))
}

/// Where command → visible goes, from `chronicle all`'s own histograms over the run
/// (warm-up included): the relay's wait from append to send, then per projector the
/// broker's share (sent → received) and the whole way (sent → applied and committed).
fn print_stages(metrics: &str) {
    let stages = [
        (
            "chronicle_relay_event_delay_seconds",
            "",
            "appended → sent by the relay",
        ),
        (
            "chronicle_projector_event_delay_seconds",
            "projector=\"read-models\",since_sent=\"received\"",
            "sent → received by the read-model projector",
        ),
        (
            "chronicle_projector_event_delay_seconds",
            "projector=\"read-models\",since_sent=\"applied\"",
            "sent → applied by the read-model projector",
        ),
        (
            "chronicle_projector_event_delay_seconds",
            "projector=\"process-manager\",since_sent=\"received\"",
            "sent → received by the process manager",
        ),
        (
            "chronicle_projector_event_delay_seconds",
            "projector=\"process-manager\",since_sent=\"applied\"",
            "sent → handled by the process manager",
        ),
    ];
    println!("  stages of every event in the run, from chronicle all's histograms:");
    for (name, labels, label) in stages {
        match Histogram::parse(metrics, name, labels) {
            Some(h) if h.count > 0.0 => println!(
                "    {label}: mean {:.1} ms, p50 ≤ {} ms, p99 ≤ {} ms ({} events)",
                1000.0 * h.mean(),
                bound_ms(h.bound(0.50)),
                bound_ms(h.bound(0.99)),
                h.count
            ),
            _ => println!("    {label}: not reported"),
        }
    }
}

fn bound_ms(seconds: f64) -> String {
    if seconds.is_finite() {
        format!("{}", seconds * 1000.0)
    } else {
        "∞".to_owned()
    }
}

/// Every 50 ms for `seconds`, the age of the oldest transaction holding an xid anywhere
/// in the cluster: the relay publishes nothing committed after it (ADR 0005), so on a
/// shared server this, not Chronicle, can dominate command → visible.
async fn sample_oldest_transaction(seconds: u64) -> anyhow::Result<Vec<Duration>> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&chronicle_tests::admin_options()).await?;
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut samples = Vec::new();
    while Instant::now() < until {
        let age: f64 = sqlx::query_scalar(
            "SELECT coalesce(extract(epoch FROM max(clock_timestamp() - xact_start)), 0)::float8 \
               FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await?;
        samples.push(Duration::from_secs_f64(age.max(0.0)));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conn.close().await.ok();
    Ok(samples)
}

/// Polls the account every millisecond until it shows `version`.
async fn wait_visible(client: &Client, account: Uuid, version: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(body) = client.get(&format!("/v1/accounts/{account}")).await
            && body["version"].as_i64().unwrap_or(0) >= version
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "account {account} did not reach version {version} in the read model within 30 s"
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn background_load(client: Client, rate: u32, seconds: u64) -> anyhow::Result<(u64, u64)> {
    let client = Arc::new(client);
    let accounts = Arc::new(Mutex::new(vec![client.open().await?]));
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..u64::from(rate) * seconds {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        let (client, accounts) = (client.clone(), accounts.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(0xBAC6 + i);
            let operation = next_operation(&mut rng, true);
            perform(&client, operation, &mut rng, &accounts, &format!("bg-{i}"))
                .await
                .is_ok()
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        if task.await? {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    Ok((ok, failed))
}

// ------------------------------------------------------------------ pgbench

/// The same three operations as raw SQL transactions on a plain table: read the
/// stream, append one event, commit. Deposits go to 10,000 pre-opened streams.
const PGBENCH_SETUP: &str = "\
CREATE TABLE raw_events (stream_id bigint NOT NULL, sequence bigint NOT NULL, \
    event_type text NOT NULL, payload jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(), \
    PRIMARY KEY (stream_id, sequence));
INSERT INTO raw_events (stream_id, sequence, event_type, payload) \
    SELECT s, 1, 'AccountOpened', '{\"owner\": \"bench\", \"currency\": \"EUR\", \"overdraft_limit\": 0}' \
      FROM generate_series(1, 10000) s;
ANALYZE raw_events;";

const PGBENCH_OPEN: &str = "\
\\set s random(100000, 9000000000000)
BEGIN;
SELECT sequence, payload FROM raw_events WHERE stream_id = :s ORDER BY sequence;
INSERT INTO raw_events (stream_id, sequence, event_type, payload) VALUES (:s, 1, 'AccountOpened', \
'{\"owner\": \"bench\", \"currency\": \"EUR\", \"overdraft_limit\": 0}') ON CONFLICT DO NOTHING;
COMMIT;
";

const PGBENCH_DEPOSIT: &str = "\
\\set s random(1, 10000)
\\set amount random(100, 10100)
BEGIN;
SELECT sequence, payload FROM raw_events WHERE stream_id = :s ORDER BY sequence;
INSERT INTO raw_events (stream_id, sequence, event_type, payload) \
SELECT :s, max(sequence) + 1, 'FundsDeposited', jsonb_build_object('amount', :amount, 'reference', 'dep', \
'balance_after', :amount) FROM raw_events WHERE stream_id = :s ON CONFLICT DO NOTHING;
COMMIT;
";

const PGBENCH_BOOK: &str = "\
\\set s random(100000, 9000000000000)
BEGIN;
SELECT sequence, payload FROM raw_events WHERE stream_id = :s ORDER BY sequence;
INSERT INTO raw_events (stream_id, sequence, event_type, payload) VALUES (:s, 1, 'BookingRequested', \
'{\"resource_id\": \"bench-room\", \"seats\": [\"1\", \"2\"], \"starts_at\": \"2031-01-01T10:00:00Z\", \
\"ends_at\": \"2031-01-01T12:00:00Z\", \"price\": {\"amount\": 2500, \"currency\": \"EUR\"}, \
\"guest\": {\"name\": \"Zoë Adams\", \"email\": \"zoe@example.org\"}, \"notes\": \"bench\"}') \
ON CONFLICT DO NOTHING;
COMMIT;
";

fn pgbench_bin() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("PGBENCH") {
        return Ok(path.into());
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin/pgbench"))
        .filter(|path| path.exists())
        .collect();
    candidates.sort();
    candidates
        .pop()
        .context("pgbench not found (install postgresql-contrib or set PGBENCH)")
}

/// One pgbench run; `rate` makes it an open loop (pgbench then counts latency from the
/// scheduled start, like ours).
async fn pgbench(connections: u32, rate: Option<u32>, options: &Options) -> anyhow::Result<Run> {
    let db = TestDb::create().await;
    let pool = db.pool(1).await;
    sqlx::raw_sql(PGBENCH_SETUP).execute(&pool).await?;
    pool.close().await;
    let dir = std::env::temp_dir().join(format!("chronicle-pgbench-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    for (name, script) in [
        ("open.sql", PGBENCH_OPEN),
        ("deposit.sql", PGBENCH_DEPOSIT),
        ("book.sql", PGBENCH_BOOK),
    ] {
        std::fs::write(dir.join(name), script)?;
    }
    let total = options.warmup + options.seconds;
    let mut command = Command::new(pgbench_bin()?);
    command
        .current_dir(&dir)
        .args(["-n", "-c", &connections.to_string()])
        .args(["-j", &connections.min(4).to_string()])
        .args(["-T", &total.to_string()])
        .args([
            "-f",
            "open.sql@1",
            "-f",
            "deposit.sql@2",
            "-f",
            "book.sql@1",
        ])
        .args(["-l", "--log-prefix", "tx"]);
    if let Some(rate) = rate {
        command.args(["-R", &rate.to_string()]);
    }
    command
        .arg(db.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started_epoch = epoch_micros();
    let output = command.output().await?;
    if !output.status.success() {
        bail!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let from = started_epoch + options.warmup * 1_000_000;
    let until = from + options.seconds * 1_000_000;
    let mut run = Run {
        operations: 0,
        errors: 0,
        seconds: options.seconds as f64,
        latencies: Vec::new(),
    };
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("tx."))
        {
            continue;
        }
        read_pgbench_log(&path, from, until, &mut run)?;
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(run)
}

/// Reads a pgbench transaction log: `client transaction latency_us script epoch_s
/// epoch_us [lag]`, keeping transactions that ended within `[from, until)` µs.
fn read_pgbench_log(path: &Path, from: u64, until: u64, run: &mut Run) -> anyhow::Result<()> {
    for line in std::fs::read_to_string(path)?.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, _, latency, _, seconds, micros, ..] = fields[..] else {
            continue;
        };
        let ended = seconds.parse::<u64>()? * 1_000_000 + micros.parse::<u64>()?;
        if !(from..until).contains(&ended) {
            continue;
        }
        match latency.parse::<u64>() {
            Ok(latency) => {
                run.operations += 1;
                run.latencies.push(Duration::from_micros(latency));
            }
            // "skipped" or "failed" instead of a latency.
            Err(_) => run.errors += 1,
        }
    }
    Ok(())
}

fn epoch_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ------------------------------------------------------------------ report

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs <= 0.0 {
        "n/a".to_owned()
    } else {
        format!("{:.2}×", ours / theirs)
    }
}

fn p(run: &Run, percentile: f64) -> f64 {
    ms(Latencies::new(run.latencies.clone()).percentile(percentile))
}

/// One peer at one load point: its run, or why there is none.
struct PeerRow {
    peer: Peer,
    /// Library and version as the peer reported them (its plain name when it has not).
    name: String,
    run: Result<Run, String>,
}

impl PeerRow {
    fn system(&self) -> String {
        format!("{} ({}, in-process)", self.name, self.peer.language())
    }
}

struct Row {
    label: String,
    chronicle: Run,
    pgbench: Run,
    peers: Vec<PeerRow>,
}

impl Row {
    fn peer_run(&self, peer: Peer) -> Option<&Run> {
        self.peers
            .iter()
            .find(|row| row.peer == peer)
            .and_then(|row| row.run.as_ref().ok())
    }
}

/// A peer's name in the plots' legends.
fn peer_label(peer: Peer) -> String {
    format!("{} ({}), in-process", peer.name(), peer.language())
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| load | system | ops/s | p50 ms | p99 ms | p99.9 ms | errors | Chronicle ÷ this |\n|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let ours = row.chronicle.throughput();
        let mut systems = vec![
            ("Chronicle (HTTP)".to_owned(), Ok(&row.chronicle)),
            ("pgbench raw SQL".to_owned(), Ok(&row.pgbench)),
        ];
        systems.extend(
            row.peers
                .iter()
                .map(|peer| (peer.system(), peer.run.as_ref())),
        );
        for (name, run) in systems {
            let line = match run {
                Ok(run) => format!(
                    "| {} | {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
                    row.label,
                    run.throughput(),
                    p(run, 50.0),
                    p(run, 99.0),
                    p(run, 99.9),
                    run.errors,
                    if std::ptr::eq(run, &row.chronicle) {
                        "—".to_owned()
                    } else {
                        ratio(ours, run.throughput())
                    }
                ),
                Err(why) => format!("| {} | {name} | {why} | | | | | |\n", row.label),
            };
            out.push_str(&line);
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    std::fs::create_dir_all(&options.out)?;
    println!("machine: {}", machine());
    println!(
        "workload: open 25% / deposit 50% / book 25%; {} s measured after {} s warm-up per run",
        options.seconds, options.warmup
    );
    let mut rows = Vec::new();
    if options.runs("closed") {
        for &connections in &options.connections {
            println!("closed loop, {connections} connection(s):");
            let server = Server::start("serve").await?;
            let chronicle = closed_loop(&server, connections, &options).await?;
            server.stop().await;
            rows.push(
                baselines(
                    format!("closed, {connections} conn"),
                    chronicle,
                    connections,
                    None,
                    &options,
                )
                .await?,
            );
        }
    }
    if options.runs("open") {
        let rate = options.rate;
        println!("open loop, {rate} operations/s:");
        let server = Server::start("serve").await?;
        let chronicle = open_loop(&server, rate, options.seconds, 0x0BE4).await?;
        server.stop().await;
        rows.push(
            baselines(
                format!("open, {rate}/s"),
                chronicle,
                64,
                Some(rate),
                &options,
            )
            .await?,
        );
    }
    let mut visible = Vec::new();
    if options.runs("visible") {
        let brokers = std::env::var("CHRONICLE_KAFKA_BROKERS")
            .unwrap_or_else(|_| KafkaSettings::DEFAULT_BROKERS.to_owned());
        for &partitions in &options.visible_partitions {
            println!(
                "command → visible, chronicle all under {} operations/s of background load, \
                 topics of {partitions} partition(s):",
                options.visible_rate
            );
            let (from_ack, from_send, waited) =
                command_to_visible(options.visible_rate, options.seconds, partitions).await?;
            // The same broker, the same rate, right after: what the broker alone takes.
            let floor =
                floor::round_trips(&brokers, partitions, options.visible_rate, options.seconds)
                    .await?;
            let runs = [
                ("deposit acknowledged → visible to polling", from_ack),
                ("deposit sent → visible to polling", from_send),
                ("deposit acknowledged → min_position read answered", waited),
                (
                    "broker floor: raw produce → consume, same broker and rate",
                    floor,
                ),
            ];
            for (label, samples) in runs {
                println!("  {label}: {}", Latencies::new(samples.clone()).summary());
                // The plot shows acknowledged → visible and the floor, per configuration.
                if label.starts_with("deposit acknowledged → visible")
                    || label.starts_with("broker")
                {
                    let short = label.split(':').next().unwrap_or(label);
                    visible.push((format!("{short}, {partitions} partition(s)"), samples));
                }
            }
        }
    }
    println!();
    println!("{}", table(&rows));
    plots(&options.out, &rows, &visible)?;
    println!("plots written to {}", options.out.display());
    Ok(())
}

/// Prints Chronicle's run and measures raw SQL and every peer under the same load.
async fn baselines(
    label: String,
    chronicle: Run,
    connections: u32,
    rate: Option<u32>,
    options: &Options,
) -> anyhow::Result<Row> {
    println!("  {:<22} {}", "chronicle", chronicle.line());
    let pgbench = pgbench(connections, rate, options).await?;
    println!("  {:<22} {}", "pgbench", pgbench.line());
    let load = Load {
        connections,
        rate,
        seconds: options.seconds,
        warmup: options.warmup,
    };
    let mut peers = Vec::new();
    for peer in Peer::ALL {
        let row = peer_row(peer, peer.run(load).await);
        match &row.run {
            Ok(run) => println!("  {:<22} {}", row.name, run.line()),
            Err(why) => println!("  {:<22} {why}", row.name),
        }
        peers.push(row);
    }
    Ok(Row {
        label,
        chronicle,
        pgbench,
        peers,
    })
}

fn peer_row(peer: Peer, outcome: Outcome) -> PeerRow {
    let (name, run) = match outcome {
        Outcome::Measured(report) => (
            report.name,
            Ok(Run {
                operations: report.operations,
                errors: report.errors,
                seconds: report.seconds,
                latencies: report.latencies,
            }),
        ),
        Outcome::Skipped(why) => (peer.name().to_owned(), Err(format!("skipped: {why}"))),
        Outcome::Failed(why) => (peer.name().to_owned(), Err(format!("failed: {why}"))),
    };
    PeerRow { peer, name, run }
}

fn plots(out: &Path, rows: &[Row], visible: &[(String, Vec<Duration>)]) -> anyhow::Result<()> {
    let closed: Vec<&Row> = rows
        .iter()
        .filter(|r| r.label.starts_with("closed"))
        .collect();
    if closed.len() > 1 {
        let connections = |row: &Row| {
            row.label
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(1.0)
        };
        let line = |label: String, run: &dyn Fn(&Row) -> Option<&Run>| Series {
            label,
            points: closed
                .iter()
                .filter_map(|row| run(row).map(|r| (connections(row), r.throughput())))
                .collect(),
        };
        let mut series = vec![
            line("Chronicle over HTTP".to_owned(), &|r| Some(&r.chronicle)),
            line("pgbench raw SQL transaction".to_owned(), &|r| {
                Some(&r.pgbench)
            }),
        ];
        for peer in Peer::ALL {
            series.push(line(peer_label(peer), &|r| r.peer_run(peer)));
        }
        // A peer skipped at every load point has no line, rather than an empty one.
        series.retain(|line| !line.points.is_empty());
        plot::throughput(
            &out.join("commands-throughput.png"),
            "Commands: throughput vs connections (closed loop)",
            &series,
        )?;
    }
    for row in rows {
        let name = row.label.replace([',', ' ', '/'], "-").replace("--", "-");
        let mut series = vec![
            ("Chronicle over HTTP".to_owned(), row.chronicle.sorted_ms()),
            (
                "pgbench raw SQL transaction".to_owned(),
                row.pgbench.sorted_ms(),
            ),
        ];
        for peer in &row.peers {
            if let Ok(run) = &peer.run {
                series.push((peer_label(peer.peer), run.sorted_ms()));
            }
        }
        plot::latency_percentiles(
            &out.join(format!("commands-latency-{name}.png")),
            &format!("Command latency, {}", row.label),
            &series,
        )?;
    }
    if visible.is_empty() {
        return Ok(());
    }
    let series: Vec<(String, Vec<f64>)> = visible
        .iter()
        .map(|(label, samples)| {
            let mut ms: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
            ms.sort_by(f64::total_cmp);
            (label.clone(), ms)
        })
        .collect();
    plot::latency_percentiles(
        &out.join("command-to-visible.png"),
        "Command → visible in the read model",
        &series,
    )?;
    Ok(())
}
