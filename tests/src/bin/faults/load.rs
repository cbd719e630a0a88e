//! The load every scenario runs: mixed commands from a few clients, each answer
//! recorded (when, what status, how long it took) so a fault's window can be judged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a client waits for an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One request's fate.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    pub sent: Instant,
    pub took: Duration,
    /// The status, or `None` when no answer came (the client's timeout, a refused or
    /// reset connection).
    pub status: Option<u16>,
    pub timed_out: bool,
    pub retry_after: bool,
}

/// What a load did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// The position of every command that got a 2xx, sorted, without duplicates.
    pub acknowledged: Vec<i64>,
    pub answers: Vec<Answer>,
}

impl LoadReport {
    pub fn merge(mut self, other: LoadReport) -> Self {
        self.acknowledged.extend(other.acknowledged);
        self.acknowledged.sort_unstable();
        self.acknowledged.dedup();
        self.answers.extend(other.answers);
        self
    }

    /// The answers to requests sent between `from` and `to`.
    pub fn window(&self, from: Instant, to: Instant) -> Window {
        let mut window = Window::default();
        for answer in self
            .answers
            .iter()
            .filter(|a| a.sent >= from && a.sent <= to)
        {
            window.requests += 1;
            window.slowest = window.slowest.max(answer.took);
            match answer.status {
                Some(s) if (200..300).contains(&s) => window.ok += 1,
                Some(503) if answer.retry_after => window.unavailable += 1,
                Some(s) if (400..500).contains(&s) => window.refused += 1,
                Some(_) => window.failed += 1,
                None if answer.timed_out => window.timed_out += 1,
                None => window.unanswered += 1,
            }
        }
        window
    }
}

/// Answers in a fault's window, by kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct Window {
    pub requests: usize,
    pub ok: usize,
    /// 503 with `Retry-After`.
    pub unavailable: usize,
    /// 4xx: the domain or the request refused.
    pub refused: usize,
    /// Any other 5xx (a 500, a 503 without `Retry-After`).
    pub failed: usize,
    /// No answer within the client's timeout.
    pub timed_out: usize,
    /// The connection failed.
    pub unanswered: usize,
    pub slowest: Duration,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in the window: {} 2xx, {} 503 with Retry-After, {} 4xx, {} other 5xx, \
             {} timed out, {} unanswered; slowest {:.1} s",
            self.requests,
            self.ok,
            self.unavailable,
            self.refused,
            self.failed,
            self.timed_out,
            self.unanswered,
            self.slowest.as_secs_f64()
        )
    }
}

/// Sends one command and records its fate; the reply's body only when it is a 2xx
/// that parses.
pub async fn send(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
    body: Value,
) -> (Answer, Option<Value>) {
    let sent = Instant::now();
    let result = http
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await;
    let mut answer = Answer {
        sent,
        took: sent.elapsed(),
        status: None,
        timed_out: false,
        retry_after: false,
    };
    match result {
        Ok(response) => {
            answer.status = Some(response.status().as_u16());
            answer.retry_after = response.headers().contains_key("retry-after");
            let ok = response.status().is_success();
            let body = response.json::<Value>().await.ok().filter(|_| ok);
            (answer, body)
        }
        Err(error) => {
            answer.timed_out = error.is_timeout();
            (answer, None)
        }
    }
}

/// Mixed commands from `workers` clients until `stop`.
pub async fn load(base: String, token: String, stop: Arc<AtomicBool>, workers: u64) -> LoadReport {
    let report: Arc<Mutex<LoadReport>> = Arc::default();
    let handles: Vec<_> = (0..workers)
        .map(|worker| {
            tokio::spawn(client(
                worker,
                base.clone(),
                token.clone(),
                stop.clone(),
                report.clone(),
            ))
        })
        .collect();
    for handle in handles {
        let _ = handle.await;
    }
    let mut report = std::mem::take(&mut *report.lock().unwrap());
    report.acknowledged.sort_unstable();
    report.acknowledged.dedup();
    report
}

/// The next command of a client: its path and body.
fn next_command(
    step: u64,
    account: &Option<String>,
    bookings: &mut Vec<String>,
) -> (String, Value) {
    match (account, step % 6) {
        (None, _) => ("/v1/accounts".to_owned(), json!({ "currency": "EUR" })),
        (Some(id), 0 | 1) => (
            format!("/v1/accounts/{id}/deposits"),
            json!({ "amount": 1 + step % 900 }),
        ),
        (Some(id), 2) => (
            format!("/v1/accounts/{id}/withdrawals"),
            json!({ "amount": 1 + step % 300 }),
        ),
        (Some(id), 3) => {
            let starts = chrono::Utc::now() + chrono::Duration::days(2 + (step % 20) as i64);
            (
                "/v1/bookings".to_owned(),
                json!({
                    "account_id": id, "resource_id": format!("hall-{}", step % 5), "seats": [format!("S{}", step % 9)],
                    "starts_at": starts, "ends_at": starts + chrono::Duration::hours(2),
                    "price": { "amount": 100 + step % 400, "currency": "EUR" },
                    "guest": { "name": "Load Guest", "email": "load@example.org" }
                }),
            )
        }
        (Some(_), 4) if !bookings.is_empty() => (
            format!("/v1/bookings/{}/cancel", bookings.remove(0)),
            json!({}),
        ),
        (Some(id), _) => (
            "/v1/payments".to_owned(),
            json!({ "account_id": id, "amount": 50, "currency": "EUR", "kind": "one_time" }),
        ),
    }
}

async fn client(
    worker: u64,
    base: String,
    token: String,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
) {
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    let mut account: Option<String> = None;
    let mut bookings: Vec<String> = Vec::new();
    let mut step = worker * 7919;
    while !stop.load(Ordering::SeqCst) {
        step += 1;
        let (path, body) = next_command(step, &account, &mut bookings);
        let (answer, reply) = send(&http, &base, &token, &path, body).await;
        report.lock().unwrap().answers.push(answer);
        let Some(reply) = reply else {
            // No answer: back off longer than after a refusal.
            let pause = if answer.status.is_none() { 100 } else { 5 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            continue;
        };
        if let Some(id) = reply["account_id"].as_str() {
            account = Some(id.to_owned());
        }
        if let (Some(id), true) = (reply["booking_id"].as_str(), path == "/v1/bookings") {
            bookings.push(id.to_owned());
        }
        if let Some(position) = reply["position"].as_i64() {
            report.lock().unwrap().acknowledged.push(position);
        }
    }
}
