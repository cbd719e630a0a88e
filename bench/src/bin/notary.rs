//! Notary benchmark (issue 17, ADR 0036): how fast the notary builds the Merkle tree
//! over a seeded store, what signing, exporting, verifying and proving cost, and the
//! append throughput of `chronicle serve` with and without a notary following it.
//!
//! `cargo build --release -p chronicle-api -p chronicle-replay && cargo run --release -p chronicle-bench --bin notary -- [EVENTS] [SECONDS] [ROUNDS]`
//!
//! 1. Seeds a fresh store with EVENTS events (default 200,000) and times a raw scan of
//!    them, the notary building the whole tree (one batch transaction per 2,000
//!    events), one checkpoint, `checkpoints export`, `verify --checkpoints` and
//!    `prove`.
//! 2. Runs a closed loop of deposits (16 connections, SECONDS each, default 20) against
//!    `chronicle serve`, ROUNDS times (default 3) alternating without and with a notary
//!    (in this process, on its own connection, polling every 100 ms) following the
//!    store, and prints each round's throughput and, with the notary, how far behind
//!    it ended.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chronicle_bench::chronicle::{Client, Server};
use chronicle_bench::machine;
use chronicle_bench::store::{replay_tool, seed_and_scan};
use chronicle_eventstore::notary::checkpoint::CheckpointKey;
use chronicle_eventstore::notary::{Notary, NotarySettings};
use chronicle_tests::TestDb;
use tokio_util::sync::CancellationToken;

/// `chronicle-replay ARGS`: whether it succeeded, its output, its report, seconds.
async fn tool(url: &str, args: &[&str]) -> anyhow::Result<(bool, Vec<u8>, String, f64)> {
    let run = replay_tool(url, args, true).await?;
    Ok((run.ok, run.stdout, run.report, run.seconds))
}

async fn tree_builder(events: u64) -> anyhow::Result<()> {
    let db = TestDb::create().await;
    let pool = db.pool(4).await;
    let url = db.url();
    seed_and_scan(&pool, events).await?;

    let key = Arc::new(CheckpointKey::development());
    let notary = Notary::new(pool.clone(), None, NotarySettings::default(), key.clone());
    let mut active = notary
        .try_activate()
        .await?
        .ok_or_else(|| anyhow::anyhow!("another notary is active"))?;
    let started = Instant::now();
    let built = active.build_available().await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "notary, whole tree: {built} leaves in {seconds:.2} s ({:.0} events/s)",
        built as f64 / seconds
    );
    let started = Instant::now();
    active.checkpoint().await?;
    println!(
        "checkpoint (sign + store): {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    active.stop().await;
    let (table, nodes): (i64, i64) = sqlx::query_as(
        "SELECT pg_total_relation_size('merkle_leaves') + pg_total_relation_size('merkle_nodes'), \
                pg_total_relation_size('events')",
    )
    .fetch_one(&pool)
    .await?;
    println!(
        "storage: merkle_leaves + merkle_nodes {} MiB beside events {} MiB",
        table >> 20,
        nodes >> 20
    );

    let (ok, kept, report, seconds) = tool(&url, &["checkpoints", "export"]).await?;
    println!("checkpoints export: {report} [ok: {ok}, wall {seconds:.2} s]");
    let file = std::env::temp_dir().join(format!("kept-{}.jsonl", uuid::Uuid::new_v4()));
    std::fs::write(&file, kept)?;
    let public = key.public().to_base64();
    let (ok, _, report, seconds) = tool(
        &url,
        &[
            "verify",
            "--checkpoints",
            file.to_str().unwrap_or_default(),
            "--public-key",
            &public,
        ],
    )
    .await?;
    println!("verify --checkpoints: {report} [ok: {ok}, wall {seconds:.1} s]");
    std::fs::remove_file(&file).ok();
    let (kind, id, sequence): (String, String, i64) = sqlx::query_as(
        "SELECT lower(aggregate_type), aggregate_id, sequence FROM events \
          ORDER BY global_position LIMIT 1 OFFSET $1",
    )
    .bind((events / 2) as i64)
    .fetch_one(&pool)
    .await?;
    let (ok, _, _, seconds) = tool(&url, &["prove", &kind, &id, &sequence.to_string()]).await?;
    println!(
        "prove (one event in the middle): [ok: {ok}, wall {:.0} ms]",
        seconds * 1000.0
    );
    pool.close().await;
    Ok(())
}

/// Deposits from `connections` tasks for `seconds`; returns operations per second.
async fn closed_loop(server: &Server, seconds: u64) -> anyhow::Result<f64> {
    let connections = 16;
    let client = Arc::new(Client::new(server, connections)?);
    let mut accounts = Vec::new();
    for _ in 0..connections {
        accounts.push(client.open().await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for account in accounts {
        let (client, done) = (client.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                if client.deposit(account, 1, &format!("b{n}")).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / seconds as f64)
}

async fn append_with_and_without(seconds: u64, rounds: u32) -> anyhow::Result<()> {
    println!(
        "\nappend throughput, closed loop of deposits, 16 connections, {seconds} s a round, `chronicle serve`:"
    );
    for round in 1..=rounds {
        for with_notary in [false, true] {
            let server = Server::start("serve").await?;
            let stop = CancellationToken::new();
            let pool = server.db.pool(2).await;
            let notary = with_notary.then(|| {
                let notary = Notary::new(
                    pool.clone(),
                    None,
                    NotarySettings {
                        poll_interval: Duration::from_millis(100),
                        ..NotarySettings::default()
                    },
                    Arc::new(CheckpointKey::development()),
                );
                let stop = stop.clone();
                tokio::spawn(async move { notary.run(stop).await })
            });
            let rate = closed_loop(&server, seconds).await?;
            let (events, leaves): (i64, Option<i64>) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM events), (SELECT tree_size FROM merkle_builder)",
            )
            .fetch_one(&pool)
            .await?;
            stop.cancel();
            if let Some(task) = notary {
                task.await?;
            }
            let behind = match leaves {
                Some(leaves) => format!(
                    ", notary {} events behind at the end",
                    (events - leaves).max(0)
                ),
                None => String::new(),
            };
            println!(
                "  round {round}, {}: {rate:.0} ops/s{behind}",
                if with_notary {
                    "with a notary"
                } else {
                    "without"
                }
            );
            pool.close().await;
            server.stop().await;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut next = |default: u64| -> anyhow::Result<u64> {
        Ok(args
            .next()
            .map(|a| a.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let events = next(200_000)?;
    let seconds = next(20)?;
    let rounds = next(3)? as u32;
    println!("machine: {}", machine());
    tree_builder(events).await?;
    append_with_and_without(seconds, rounds).await
}
