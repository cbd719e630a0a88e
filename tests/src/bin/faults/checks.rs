//! The checks every row gets: nothing acknowledged lost, nothing charged twice, read
//! models and search equal to a replay, the hash chains intact, and how long recovery
//! took.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::process::tool;

/// What the checks found.
#[derive(Debug, Default)]
pub struct Checked {
    pub events: i64,
    pub missing: i64,
    pub read_model_discrepancies: i64,
    pub search_discrepancies: i64,
    pub double_charges: i64,
    pub verified: bool,
    pub recovery: Option<Duration>,
    /// The reports, kept with the scenario's logs when something is wrong.
    pub reports: Vec<(&'static str, String)>,
}

/// Where the replay tool finds the store and the index.
pub struct Target<'a> {
    pub pool: &'a sqlx::PgPool,
    pub database_url: String,
    pub search: PathBuf,
}

/// Waits until the read models hold every acknowledged position and the store stopped
/// growing; returns how long that took.
pub async fn settle(pool: &sqlx::PgPool, acknowledged: &[i64], since: Instant) -> Option<Duration> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut recovered = None;
    let mut stable = 0;
    let mut last = -1;
    while Instant::now() < deadline {
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rm_applied_events WHERE global_position = ANY($1)",
        )
        .bind(acknowledged)
        .fetch_one(pool)
        .await
        .unwrap_or(0);
        if recovered.is_none() && applied as usize == acknowledged.len() {
            recovered = Some(since.elapsed());
        }
        let (events, journal): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM rm_applied_events)",
        )
        .fetch_one(pool)
        .await
        .unwrap_or((0, -1));
        stable = if events == journal && events == last {
            stable + 1
        } else {
            0
        };
        last = events;
        if recovered.is_some() && stable >= 8 {
            return recovered;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

async fn replay(target: &Target<'_>, args: &[&str]) -> (bool, String) {
    let output = Command::new(tool(
        "CHRONICLE_REPLAY_BIN",
        "target/debug/chronicle-replay",
    ))
    .args(args)
    .env("CHRONICLE_DATABASE_URL", &target.database_url)
    .env("CHRONICLE_SEARCH_DIR", &target.search)
    .output()
    .await
    .expect("chronicle-replay (CHRONICLE_REPLAY_BIN)");
    // The summary ("… N discrepancies") is on stderr, the details on stdout.
    (
        output.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        ),
    )
}

fn discrepancies(report: &str) -> i64 {
    report
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1].starts_with("discrepanc"))
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(-1)
}

/// Settles, then runs every check.
pub async fn check(target: &Target<'_>, acknowledged: &[i64], healed: Instant) -> Checked {
    let pool = target.pool;
    let recovery = settle(pool, acknowledged, healed).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // a search commit interval
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap();
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE global_position = ANY($1)")
            .bind(acknowledged)
            .fetch_one(pool)
            .await
            .unwrap();
    let double_charges: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT aggregate_id, payload->>'reference' FROM events \
          WHERE event_type = 'FundsWithdrawn' AND payload->>'reference' IS NOT NULL \
          GROUP BY 1, 2 HAVING count(*) > 1) twice",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    // The process manager keeps working after the load stops (expiries, retries), so
    // an append can land between settling and diffing; the diff then counts events the
    // projector has not applied yet. Such differences pass once the system settles
    // again; a read model that went wrong stays wrong. So a diff that finds something
    // is repeated, after settling, up to three times.
    let mut read_models = String::new();
    let mut search = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            settle(pool, acknowledged, Instant::now()).await;
        }
        read_models = replay(target, &["diff", "read-models"]).await.1;
        search = replay(target, &["diff", "search"]).await.1;
        if discrepancies(&read_models) == 0 && discrepancies(&search) == 0 {
            break;
        }
    }
    let (verified, verify_report) = replay(target, &["verify"]).await;
    Checked {
        events,
        missing: acknowledged.len() as i64 - stored,
        read_model_discrepancies: discrepancies(&read_models),
        search_discrepancies: discrepancies(&search),
        double_charges,
        verified,
        recovery,
        reports: vec![
            ("diff-read-models.txt", read_models),
            ("diff-search.txt", search),
            ("verify.txt", verify_report),
        ],
    }
}

/// Keeps the reports next to the scenario's logs.
pub fn keep_reports(checked: &Checked, dir: &Path) {
    for (name, report) in &checked.reports {
        let _ = std::fs::write(dir.join(name), report);
    }
}
