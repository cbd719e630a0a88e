//! The workload, as Chronicle's benchmark client and the Python peer run it.
//!
//! Each worker draws from its own seeded generator: 25% open an account, 50% deposit
//! into one of the accounts this worker opened (with a reference of its own), 25%
//! request a booking of a resource never used before. A worker with no account yet
//! opens one, so every operation is one command and stores one event.
//!
//! Closed loop (no `--rate`): N workers issue commands back to back; samples of the
//! warm-up are discarded. Open loop (`--rate R`): commands are due at fixed intended
//! start times, one every 1/R s in all; N workers take the next slot, wait for it if
//! early, and latency runs from the INTENDED start, so queueing counts. A run so far
//! behind that it would overrun the window by max(10 s, 2 × S) abandons the remaining
//! slots and counts those of the window as errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::domain::{BookingRequest, Guest, Money};
use crate::{Args, Failure, Peer};

/// What all workers measured together.
pub struct Report {
    pub samples: Vec<u64>,
    pub errors: u64,
    pub done: u64,
    pub seconds: f64,
}

/// One worker: its generator, its accounts and its samples (µs, measured window only).
struct Worker {
    index: u64,
    rng: u64,
    accounts: Vec<Uuid>,
    n: u64,
    samples: Vec<u64>,
    errors: u64,
    done: u64,
    dropped: u64,
}

static FIRST_ERROR: AtomicBool = AtomicBool::new(false);

impl Worker {
    fn new(index: u64) -> Self {
        Self {
            index,
            rng: 0x5EED + index,
            accounts: Vec::new(),
            n: 0,
            samples: Vec::new(),
            errors: 0,
            done: 0,
            dropped: 0,
        }
    }

    /// xorshift64, as Chronicle's client draws.
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x % n
    }

    /// Draws and runs the next command; counts it and its latency from `started` when
    /// `measured`.
    async fn run_one(&mut self, peer: &Peer, started: Instant, measured: bool) {
        self.n += 1;
        let result = self.next(peer).await;
        match result {
            Ok(()) => {
                self.done += 1;
                if measured {
                    self.samples.push(started.elapsed().as_micros() as u64);
                }
            }
            Err(error) => {
                self.errors += u64::from(measured);
                if !FIRST_ERROR.swap(true, Ordering::Relaxed) {
                    eprintln!("esrs peer: first error: {error}");
                }
            }
        }
    }

    async fn next(&mut self, peer: &Peer) -> Result<(), Failure> {
        let draw = self.below(4);
        let tag = format!("{}-{}", self.index, self.n);
        if draw == 0 || self.accounts.is_empty() {
            let id = peer.open(format!("owner-{}", self.index)).await?;
            self.accounts.push(id);
            return Ok(());
        }
        let pick = self.below(self.accounts.len() as u64) as usize;
        let account = self.accounts[pick];
        if draw < 3 {
            let amount = 100 + self.below(10_000) as i64;
            return peer.deposit(account, amount, format!("dep-{tag}")).await;
        }
        let starts_at = Utc::now() + chrono::Duration::days(30);
        peer.book(BookingRequest {
            account_id: account,
            resource_id: format!("esrs-room-{tag}"),
            seats: vec!["1".to_owned(), "2".to_owned()],
            starts_at,
            ends_at: starts_at + chrono::Duration::hours(2),
            price: Money {
                amount: 2_500,
                currency: "EUR".to_owned(),
            },
            guest: Guest {
                name: "Zoë Adams".to_owned(),
                email: "zoe@example.org".to_owned(),
            },
            notes: Some("bench".to_owned()),
        })
        .await
    }
}

/// Runs the closed or the open loop, as `args` say.
pub async fn run(peer: Peer, args: &Args) -> Result<Report, Failure> {
    let peer = Arc::new(peer);
    // Let every worker start before the clock does.
    let begin = Instant::now() + Duration::from_millis(50);
    let window_start = begin + args.warmup;
    let plan = Arc::new(Plan {
        begin,
        window_start,
        deadline: window_start + args.seconds,
        rate: args.rate,
        slots: args.rate.map_or(0, |r| {
            (r * (args.warmup + args.seconds).as_secs_f64()).round() as u64
        }),
        next_slot: AtomicU64::new(0),
        give_up: window_start
            + args.seconds
            + args.seconds.mul_f64(2.0).max(Duration::from_secs(10)),
    });
    let tasks: Vec<_> = (0..u64::from(args.connections))
        .map(|index| {
            let (peer, plan) = (peer.clone(), plan.clone());
            tokio::spawn(async move { plan.drive(&peer, Worker::new(index)).await })
        })
        .collect();
    let mut report = Report {
        samples: Vec::new(),
        errors: 0,
        done: 0,
        seconds: 0.0,
    };
    let mut dropped = 0;
    for task in tasks {
        let worker = task.await?;
        report.samples.extend(worker.samples);
        report.errors += worker.errors;
        report.done += worker.done;
        dropped += worker.dropped;
    }
    report.seconds = window_start.elapsed().as_secs_f64();
    if dropped > 0 {
        eprintln!(
            "esrs peer: rate not sustained: {dropped} slots never started, counted as errors"
        );
    }
    Ok(report)
}

/// The schedule every worker follows.
struct Plan {
    begin: Instant,
    window_start: Instant,
    deadline: Instant,
    rate: Option<f64>,
    slots: u64,
    next_slot: AtomicU64,
    give_up: Instant,
}

impl Plan {
    async fn drive(&self, peer: &Peer, mut worker: Worker) -> Worker {
        tokio::time::sleep_until(self.begin).await;
        match self.rate {
            None => {
                while Instant::now() < self.deadline {
                    let started = Instant::now();
                    worker
                        .run_one(peer, started, started >= self.window_start)
                        .await;
                }
            }
            Some(rate) => loop {
                let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
                if slot >= self.slots {
                    break;
                }
                let intended = self.begin + Duration::from_secs_f64(slot as f64 / rate);
                let measured = intended >= self.window_start;
                if Instant::now() > self.give_up {
                    worker.errors += u64::from(measured);
                    worker.dropped += 1;
                    continue;
                }
                tokio::time::sleep_until(intended).await;
                worker.run_one(peer, intended, measured).await;
            },
        }
        worker
    }
}
