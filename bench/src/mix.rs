//! The mixed load the soak and overload programs drive, as an open loop: half deposits
//! (each with its own `Idempotency-Key`), a quarter booking requests, a quarter ledger
//! reads, over a fixed set of accounts. What it saw is gathered in a [`Window`] the
//! program empties whenever it samples.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::Rng;
use crate::chronicle::{Answer, Client, booking_body};

/// Operations the program itself may have in flight; beyond, they are counted dropped
/// (the loop stays open: nothing waits for an earlier operation to finish).
const MAX_IN_FLIGHT: usize = 4_000;

/// What the load saw since the window was last emptied.
#[derive(Default)]
pub struct Window {
    /// Latencies of operations answered 2xx.
    pub latencies: Vec<Duration>,
    /// Answers 429 or 503 by status: refused early, as designed under overload.
    pub refused: BTreeMap<u16, u64>,
    /// How long refusals took to arrive.
    pub refusal_latencies: Vec<Duration>,
    /// Refusals that came without a `Retry-After` header.
    pub refused_without_retry_after: u64,
    /// Other failures: other statuses, transport errors.
    pub errors: u64,
    /// Operations not sent because too many were already in flight in this program.
    pub dropped: u64,
    /// The first few errors' texts, to say what went wrong.
    pub first_errors: Vec<String>,
}

impl Window {
    /// Every refusal, whatever its status.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    fn record(&mut self, took: Duration, answer: Result<Answer, String>) {
        match answer {
            Ok(answer) if (200..300).contains(&answer.status) => self.latencies.push(took),
            Ok(answer) if matches!(answer.status, 429 | 503) => {
                *self.refused.entry(answer.status).or_default() += 1;
                self.refusal_latencies.push(took);
                if !answer.retry_after {
                    self.refused_without_retry_after += 1;
                }
            }
            other => {
                self.errors += 1;
                if self.first_errors.len() < 3 {
                    self.first_errors.push(match other {
                        Ok(answer) => format!("answered {}", answer.status),
                        Err(error) => error,
                    });
                }
            }
        }
    }
}

/// Empties `window`, returning what it held.
pub fn take(window: &Mutex<Window>) -> Window {
    std::mem::take(&mut *window.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Opens `count` accounts with enough money for a long run, and waits until the read
/// models show each of them (the load reads their ledgers from the start).
pub async fn open_accounts(client: &Client, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let mut opened = Vec::with_capacity(count);
    for n in 0..count {
        let id = client.open().await?;
        let reply = client
            .deposit(id, 100_000_000, &format!("seed-{n}"))
            .await?;
        opened.push((id, reply["position"].as_i64().unwrap_or(0)));
    }
    // Each account's partition is applied in its own time: wait for each.
    for (id, position) in &opened {
        client
            .get(&format!("/v1/accounts/{id}?min_position={position}"))
            .await?;
    }
    Ok(opened.into_iter().map(|(id, _)| id).collect())
}

/// Operation `n` of the mix.
pub async fn operate(client: &Client, accounts: &[Uuid], n: u64) -> anyhow::Result<Answer> {
    let mut rng = Rng::new(0x50a4 ^ n);
    let account = *rng.pick(accounts);
    match rng.below(4) {
        0 | 1 => {
            let key = format!("mix-{n}");
            let body = json!({"amount": 100 + rng.below(1_000), "reference": key});
            client
                .answer(
                    Method::POST,
                    &format!("/v1/accounts/{account}/deposits"),
                    Some(&body),
                    Some(&key),
                )
                .await
        }
        2 => {
            let body = booking_body(account, &format!("mix-room-{n}"));
            client
                .answer(Method::POST, "/v1/bookings", Some(&body), None)
                .await
        }
        _ => {
            let path = format!("/v1/accounts/{account}/transactions?limit=20");
            client.answer(Method::GET, &path, None, None).await
        }
    }
}

/// Runs the mix at `rate` operations a second for `duration`, each started on time
/// whatever the ones before it do, numbering operations from `first`; returns the next
/// number. What each answer was goes into every one of `windows` (say, one emptied
/// every second and one for the whole phase).
pub async fn open_loop(
    client: Arc<Client>,
    accounts: Arc<Vec<Uuid>>,
    windows: Vec<Arc<Mutex<Window>>>,
    rate: f64,
    duration: Duration,
    first: u64,
) -> u64 {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    loop {
        let due = start + interval.mul_f64(sent as f64);
        if due.duration_since(start) >= duration {
            return first + sent;
        }
        tokio::time::sleep_until(due).await;
        let n = first + sent;
        sent += 1;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            for window in &windows {
                window.lock().unwrap_or_else(|e| e.into_inner()).dropped += 1;
            }
            continue;
        };
        let (client, accounts, windows) = (client.clone(), accounts.clone(), windows.clone());
        tokio::spawn(async move {
            let began = Instant::now();
            let answer = operate(&client, &accounts, n).await;
            let took = began.elapsed();
            let answer = answer.map_err(|error| format!("{error:#}"));
            for window in &windows {
                window
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(took, answer.clone());
            }
            drop(permit);
        });
    }
}
