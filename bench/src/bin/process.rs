//! Process-manager benchmark: how many booking flows a second the process manager runs
//! (initiate a payment, debit the account, capture, confirm: four commands each), by
//! `CHRONICLE_PROCESS_CONCURRENCY`.
//!
//! `CHRONICLE_KAFKA_BROKERS=HOST:PORT cargo run --release -p chronicle-bench --bin process --
//! [--bookings 2000] [--accounts 100] [--concurrency 1,4,16] [--connections 8]` with PostgreSQL as the tests
//! have it (`CHRONICLE_TEST_DATABASE_URL`, default the local server).
//!
//! A fresh database and fresh topics; the HTTP API, the relay and the projectors run
//! in-process. For each concurrency in turn: BOOKINGS booking requests are made over
//! HTTP (32 at a time) against funded accounts while no process manager runs, the relay
//! publishes them, and then a process manager with that concurrency is started; the
//! clock runs from its start until every one of those flows has finished (rows of
//! `pm_flows`), and it is stopped before the next round. It resumes from the offsets
//! the previous one stored, so each round handles exactly its own bookings. Baseline:
//! the commands a second the command service takes from a closed loop of 16 clients
//! (`bench --bin commands`), since a flow is four commands plus its bookkeeping.
//! Figures are printed, never asserted.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chronicle_bench::machine;
use chronicle_eventstore::relay::relay_lag;
use chronicle_tests::{AppOptions, TestApp, spawn_app_with};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

/// Booking requests in flight while a round's bookings are made.
const REQUESTS_IN_FLIGHT: usize = 32;
/// Longest a round may take before the benchmark gives up.
const ROUND_LIMIT: Duration = Duration::from_secs(600);

struct Options {
    bookings: usize,
    accounts: usize,
    concurrency: Vec<usize>,
    /// The process manager's own pool (`CHRONICLE_PROCESS_DB_CONNECTIONS`); default: the
    /// setting's default.
    connections: Option<u32>,
}

impl Options {
    fn parse() -> anyhow::Result<Self> {
        let mut options = Self {
            bookings: 2_000,
            accounts: 100,
            concurrency: vec![1, 4, 16],
            connections: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--bookings" => options.bookings = value()?.parse()?,
                "--accounts" => options.accounts = value()?.parse()?,
                "--concurrency" => {
                    options.concurrency = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?;
                }
                "--connections" => options.connections = Some(value()?.parse()?),
                other => bail!("unknown option {other}"),
            }
        }
        Ok(options)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    println!("# process manager: booking flows/s by concurrency");
    println!("machine: {}", machine());
    println!(
        "{} bookings a round over {} accounts; HTTP, relay and projectors in-process\n",
        options.bookings, options.accounts
    );
    let app = spawn_app_with(AppOptions::with_read_side()).await;
    println!(
        "process manager pool: {} connections",
        options
            .connections
            .unwrap_or(app.settings.process.connections)
    );
    let token = app.client_token("bench");
    let mut accounts = Vec::with_capacity(options.accounts);
    for _ in 0..options.accounts {
        let account = app.open_account(&token, "EUR", 0).await;
        app.deposit(&token, account, 1_000_000_000).await;
        accounts.push(account);
    }
    let app = Arc::new(app);
    println!("| concurrency | flows | took (s) | flows/s | commands/s | first flow after (ms) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut finished_before = 0;
    for (round, &concurrency) in options.concurrency.iter().enumerate() {
        request_bookings(&app, &token, &accounts, options.bookings, round).await?;
        wait_until_published(&app).await?;
        let target = finished_before + options.bookings as i64;
        let mut settings = app.settings.clone();
        settings.process.concurrency = concurrency;
        if let Some(connections) = options.connections {
            settings.process.connections = connections;
        }
        let process = chronicle_api::roles::process_manager(&settings, app.pool.clone());
        let stop = app.shutdown.child_token();
        let started = Instant::now();
        let running = tokio::spawn(process.run(
            settings.kafka.clone(),
            settings.projector.clone(),
            stop.clone(),
        ));
        let mut first = None;
        loop {
            let finished = finished_flows(&app).await?;
            if first.is_none() && finished > finished_before {
                first = Some(started.elapsed());
            }
            if finished >= target {
                break;
            }
            if started.elapsed() > ROUND_LIMIT {
                bail!("round {round}: {finished} of {target} flows finished after {ROUND_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        stop.cancel();
        running.await?;
        let flows = options.bookings as f64;
        println!(
            "| {concurrency} | {} | {:.1} | {:.0} | {:.0} | {:.0} |",
            options.bookings,
            took.as_secs_f64(),
            flows / took.as_secs_f64(),
            4.0 * flows / took.as_secs_f64(),
            first.unwrap_or(took).as_secs_f64() * 1e3,
        );
        finished_before = target;
    }
    let confirmed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pm_flows WHERE status = 'confirmed'")
            .fetch_one(&app.pool)
            .await?;
    println!("\n{confirmed} flows confirmed in all (every booking was funded)");
    Ok(())
}

/// Makes `count` booking requests, each for a seat of its own.
async fn request_bookings(
    app: &Arc<TestApp>,
    token: &str,
    accounts: &[Uuid],
    count: usize,
    round: usize,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT));
    let mut requests = JoinSet::new();
    for n in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let (app, token) = (app.clone(), token.to_owned());
        let account = accounts[n % accounts.len()];
        requests.spawn(async move {
            let body =
                TestApp::booking_body(account, &format!("bench-{round}-{n}"), &["A1"], 10, 0);
            let reply = app.post("/v1/bookings", Some(&token), &[], &body).await;
            drop(permit);
            reply
                .status
                .is_success()
                .then_some(())
                .with_context(|| format!("{reply:?}"))
        });
    }
    while let Some(done) = requests.join_next().await {
        done??;
    }
    Ok(())
}

async fn wait_until_published(app: &TestApp) -> anyhow::Result<()> {
    let deadline = Instant::now() + ROUND_LIMIT;
    while relay_lag(&app.pool, &app.settings.relay.name)
        .await?
        .unpublished
        > 0
    {
        if Instant::now() > deadline {
            bail!("the relay did not publish the bookings");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn finished_flows(app: &TestApp) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pm_flows WHERE kind = 'booking-charge' AND status <> 'running'",
    )
    .fetch_one(&app.pool)
    .await?)
}
