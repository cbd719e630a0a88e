//! One scenario: a stage, the load, the fault injected and healed, then the checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chronicle_tests::TestDb;

use crate::checks::{self, Target};
use crate::load::{self, LoadReport};
use crate::stage::Stage;
use crate::{Fault, Row, held_lock, redeliver};

/// What injecting a fault left to judge once the load has ended.
#[derive(Default)]
struct Injected {
    note: String,
    /// When the fault was in force: the answers meanwhile go into the note.
    window: Option<(Instant, Instant)>,
    /// What clients besides the load's did.
    extra: LoadReport,
}

impl From<String> for Injected {
    fn from(note: String) -> Self {
        Self {
            note,
            ..Self::default()
        }
    }
}

/// Restarts the cluster's PostgreSQL when this machine lets us; otherwise ends every
/// connection to the database under test (the closest thing a non-root user can do).
async fn restart_postgres(pool: &sqlx::PgPool, db: &TestDb) -> String {
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|d| d.filter_map(Result::ok).map(|e| e.file_name()).max());
    if let Some(version) = version {
        let status = std::process::Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                &version.to_string_lossy(),
                "main",
                "restart",
            ])
            .status();
        if status.is_ok_and(|s| s.success()) {
            return "restarted".to_owned();
        }
    }
    let _ = sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&db.name)
        .execute(pool)
        .await;
    "connections terminated".to_owned()
}

/// Injects `fault` and heals it.
async fn inject(fault: Fault, stage: &mut Stage) -> Injected {
    match fault {
        Fault::KillAll => {
            stage.deployment.kill("all").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            stage.deployment.start(false).await;
        }
        Fault::StopBroker => {
            stage.broker.stop().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            stage.broker.resume().await;
        }
        Fault::RestartPostgres => return restart_postgres(&stage.pool, &stage.db).await.into(),
        Fault::KillProjector | Fault::KillRelay => {
            let role = if fault == Fault::KillProjector {
                "project"
            } else {
                "relay"
            };
            stage.deployment.kill(role).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            stage.deployment.spawn(role);
        }
        Fault::DuplicateReorder => {
            let copies = redeliver::duplicate_and_reorder(&stage.broker.addr, "").await;
            return if copies > 0 {
                "all messages re-sent"
            } else {
                "nothing to re-send"
            }
            .to_owned()
            .into();
        }
        Fault::PoolExhausted => return exhaust_pool(stage).await,
    }
    Injected::default()
}

/// Locks `events` for [`held_lock::HOLD`] while extra clients join the load.
async fn exhaust_pool(stage: &Stage) -> Injected {
    let stop = Arc::new(AtomicBool::new(false));
    let held = held_lock::lock_events(&stage.db.options, held_lock::HOLD).await;
    let from = Instant::now();
    let extra = tokio::spawn(load::load(
        stage.deployment.base.clone(),
        stage.deployment.token(),
        stop.clone(),
        held_lock::EXTRA_CLIENTS,
    ));
    held.await.unwrap();
    let to = Instant::now();
    stop.store(true, Ordering::SeqCst);
    Injected {
        window: Some((from, to)),
        extra: extra.await.unwrap(),
        ..Injected::default()
    }
}

/// During the pool's exhaustion every request must have been answered, none later than
/// a client waits, and the failures must be 503s with `Retry-After`.
fn judge_window(fault: Fault, window: &load::Window) -> Option<String> {
    let prompt = window.timed_out == 0
        && window.unanswered == 0
        && window.failed == 0
        && window.slowest < load::CLIENT_TIMEOUT;
    match fault {
        Fault::PoolExhausted if !prompt || window.unavailable == 0 => Some(format!(
            "expected prompt 503s with Retry-After while the pool was exhausted; {window}"
        )),
        _ => None,
    }
}

pub async fn scenario(fault: Fault) -> Row {
    let mut stage = Stage::new(fault).await;
    let (base, token) = (stage.deployment.base.clone(), stage.deployment.token());
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load::load(base, token, stop.clone(), 6));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let injected = inject(fault, &mut stage).await;
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let report = loader.await.unwrap().merge(injected.extra);
    let mut notes = vec![injected.note];
    let mut own_failure = None;
    if let Some((from, to)) = injected.window {
        let window = report.window(from, to);
        notes.push(window.to_string());
        own_failure = judge_window(fault, &window);
    }
    let target = Target {
        pool: &stage.pool,
        database_url: stage.db.url(),
        search: stage.search.clone(),
    };
    let checked = checks::check(&target, &report.acknowledged, healed).await;
    stage.stop().await;
    let row = Row {
        fault,
        note: notes
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        acknowledged: report.acknowledged.len(),
        checked,
        own_failure,
    };
    if row.clean() {
        let _ = std::fs::remove_dir_all(&stage.scratch);
    } else {
        checks::keep_reports(&row.checked, &stage.scratch);
        eprintln!(
            "  logs, data and the diff and verify reports kept in {}",
            stage.scratch.display()
        );
    }
    row
}
