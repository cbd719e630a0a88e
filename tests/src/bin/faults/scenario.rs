//! One scenario: a stage, the load, the fault injected and healed, then the checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chronicle_tests::TestDb;

use crate::checks::{self, Target};
use crate::load::{self, LoadReport};
use crate::stage::Stage;
use crate::{Fault, Row, billing, erasure, held_lock, jump, redeliver};

/// How long a partition or a full disk lasts.
const OUTAGE: Duration = Duration::from_secs(20);

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
        Fault::PartitionBroker | Fault::PartitionPostgres => {
            let link = if fault == Fault::PartitionBroker {
                "kafka"
            } else {
                "pg"
            };
            let namespace = stage.rig.namespace.as_ref().expect("a namespace");
            let from = Instant::now();
            let before = Progress::read(&stage.pool).await;
            namespace.cut(link);
            tokio::time::sleep(OUTAGE).await;
            let during = Progress::read(&stage.pool).await.since(before);
            namespace.heal(link);
            return Injected {
                note: during,
                window: Some((from, Instant::now())),
                ..Injected::default()
            };
        }
        Fault::BrokerDiskFull | Fault::SearchDiskFull => return fill_disk(fault, stage).await,
        Fault::KillBilling => {
            let clock = stage.rig.clock.take().expect("a faked clock");
            let (extra, note) = billing::kill_during_billing(stage, &clock).await;
            stage.rig.clock = Some(clock);
            return Injected {
                note,
                extra,
                ..Injected::default()
            };
        }
        Fault::KillErasure => {
            let (extra, note) = erasure::kill_during_erasures(stage).await;
            return Injected {
                note,
                extra,
                ..Injected::default()
            };
        }
        Fault::ClockJump => {
            let clock = stage.rig.clock.as_ref().expect("a faked clock");
            let (extra, note) =
                jump::jump(&stage.deployment.base, &stage.deployment.token(), clock).await;
            return Injected {
                note,
                extra,
                ..Injected::default()
            };
        }
    }
    Injected::default()
}

/// Fills the broker's or the index's disk for [`OUTAGE`], then frees it. A broker that
/// exited meanwhile is started again, as its supervisor would.
async fn fill_disk(fault: Fault, stage: &mut Stage) -> Injected {
    let disk = if fault == Fault::BrokerDiskFull {
        stage.rig.broker_disk.as_ref()
    } else {
        stage.rig.search_disk.as_ref()
    }
    .expect("a small disk");
    let from = Instant::now();
    let filler = disk.fill();
    let before = Progress::read(&stage.pool).await;
    tokio::time::sleep(OUTAGE).await;
    let during = Progress::read(&stage.pool).await.since(before);
    let mut note = format!("{} MiB written to fill it; {during}", filler.bytes >> 20);
    filler.remove();
    let to = Instant::now();
    if fault == Fault::SearchDiskFull {
        note.push_str(&format!(
            "; Chronicle logged {}",
            logged_errors(&stage.scratch.join("all.log"))
        ));
    }
    // tansu 0.6 may not survive a write that failed for want of space: once its SQLite
    // storage panicked ("more or less than one row", idempotent_message_check), it resets
    // every connection. Its supervisor's liveness probe would restart it; so does the
    // suite, and says so.
    if !stage.broker.running() {
        stage.broker.resume().await;
        note.push_str("; the broker exited on the full disk and was started again");
    } else if !stage.broker.answers().await {
        stage.broker.stop().await;
        stage.broker.resume().await;
        let panic = std::fs::read_to_string(stage.scratch.join("tansu.log"))
            .unwrap_or_default()
            .lines()
            .skip_while(|line| !line.contains("panicked at"))
            .nth(1)
            .map(|message| format!(" (it had panicked: \"{}\")", message.trim()))
            .unwrap_or_default();
        note.push_str(&format!(
            "; the broker stopped answering after the full disk{panic}, so its liveness \
             probe failed and it was restarted"
        ));
    }
    if !stage.deployment.running() {
        stage.deployment.start(false).await;
        note.push_str("; Chronicle exited on the full disk and was started again");
    }
    Injected {
        note,
        window: Some((from, to)),
        ..Injected::default()
    }
}

/// How far the relay and the read models have come.
#[derive(Clone, Copy)]
struct Progress {
    published: i64,
    applied: i64,
}

impl Progress {
    async fn read(pool: &sqlx::PgPool) -> Self {
        let (published, applied) = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(published), 0)::bigint FROM relay_checkpoints), \
                    (SELECT count(*) FROM rm_applied_events)",
        )
        .fetch_one(pool)
        .await
        .unwrap_or((0, 0));
        Self { published, applied }
    }

    /// What happened since `before`, for a note.
    fn since(self, before: Progress) -> String {
        format!(
            "while it lasted the relay published {} events and the read models applied {}",
            self.published - before.published,
            self.applied - before.applied
        )
    }
}

/// How many errors Chronicle logged (JSON lines) and the first, for a note.
fn logged_errors(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["level"] == "ERROR")
        .collect();
    match errors.first() {
        None => "no errors".to_owned(),
        Some(first) => format!(
            "{} errors, the first \"{}: {}\"",
            errors.len(),
            first["fields"]["message"].as_str().unwrap_or(""),
            first["fields"]["error"].as_str().unwrap_or("")
        ),
    }
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
    // Commands need PostgreSQL only: without the broker or the index they go on.
    let available = window.ok > 0
        && window.failed == 0
        && window.unavailable == 0
        && window.timed_out == 0
        && window.unanswered == 0;
    match fault {
        Fault::PoolExhausted if !prompt || window.unavailable == 0 => Some(format!(
            "expected prompt 503s with Retry-After while the pool was exhausted; {window}"
        )),
        Fault::PartitionPostgres if window.failed > 0 => Some(format!(
            "expected every failure to be a 503 with Retry-After or the client's own timeout; {window}"
        )),
        Fault::PartitionBroker | Fault::BrokerDiskFull | Fault::SearchDiskFull if !available => {
            Some(format!(
                "expected every command answered as usual while only the broker or the index \
                 was unavailable; {window}"
            ))
        }
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
    let own_check = match fault {
        Fault::ClockJump => Some(jump::check(&stage.pool).await),
        Fault::KillBilling => Some(billing::check(&stage.pool).await),
        Fault::KillErasure => Some(erasure::check(&stage.pool).await),
        _ => None,
    };
    match own_check {
        Some(Ok(note)) => notes.push(note),
        Some(Err(note)) => own_failure = Some(note),
        None => {}
    }
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
    // `FAULTS_KEEP=1` keeps a clean scenario's logs too.
    if row.clean() && std::env::var_os("FAULTS_KEEP").is_none() {
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
