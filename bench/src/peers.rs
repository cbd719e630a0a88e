//! The peer libraries of the command benchmark. Each is a program of its own in
//! `bench/peer/` that runs the workload in-process on its library's PostgreSQL event
//! store and prints one JSON report: `peer` (name and version), `operations`, `errors`,
//! `seconds` and `latencies_us`. `scripts/bench.sh` installs or builds all of them
//! outside this workspace; one that is not there is reported as skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use chronicle_tests::{admin_options, database_url};
use serde_json::Value;
use tokio::process::Command;
use uuid::Uuid;

/// A peer library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Python `eventsourcing` with its PostgreSQL module.
    Eventsourcing,
    /// esrs (Rust, primait) with its `PgStore`.
    Esrs,
    /// Emmett (Node.js) with `@event-driven-io/emmett-postgresql`.
    Emmett,
}

/// The load of one run: closed loop when `rate` is `None`.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub connections: u32,
    pub rate: Option<u32>,
    pub seconds: u64,
    pub warmup: u64,
}

/// What one peer run gave.
pub enum Outcome {
    Measured(Report),
    /// Not installed: why, and how to install it.
    Skipped(String),
    /// Installed but the run failed.
    Failed(String),
}

/// A peer's JSON report.
pub struct Report {
    /// Library name and version, as the peer reports them.
    pub name: String,
    pub operations: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latencies: Vec<Duration>,
}

fn env_or(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

impl Peer {
    /// Every peer, in the order the report lists them.
    pub const ALL: [Self; 3] = [Self::Eventsourcing, Self::Esrs, Self::Emmett];

    /// The library's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Eventsourcing => "eventsourcing",
            Self::Esrs => "esrs",
            Self::Emmett => "Emmett",
        }
    }

    /// The language the library and its peer program are written in.
    pub fn language(self) -> &'static str {
        match self {
            Self::Eventsourcing => "Python",
            Self::Esrs => "Rust",
            Self::Emmett => "Node.js",
        }
    }

    /// The program to start, or why it cannot be.
    fn program(self) -> Result<Command, String> {
        let missing = |path: &str, hint: &str| format!("{path} not found ({hint})");
        match self {
            Self::Eventsourcing => {
                let python = env_or("CHRONICLE_BENCH_PYTHON", "target/bench-pyenv/bin/python");
                if !Path::new(&python).exists() {
                    return Err(missing(&python, "scripts/bench.sh installs it"));
                }
                let mut command = Command::new(python);
                command.arg("bench/peer/eventsourcing_peer.py");
                Ok(command)
            }
            Self::Esrs => {
                let binary = env_or(
                    "CHRONICLE_BENCH_ESRS",
                    "target/bench-esrs/release/chronicle-esrs-peer",
                );
                if !Path::new(&binary).exists() {
                    return Err(missing(&binary, "scripts/bench.sh builds it"));
                }
                Ok(Command::new(binary))
            }
            Self::Emmett => {
                let dir = PathBuf::from(env_or("CHRONICLE_BENCH_EMMETT", "target/bench-emmett"));
                let library = dir.join("node_modules/@event-driven-io/emmett-postgresql");
                if !library.exists() {
                    return Err(missing(
                        &library.display().to_string(),
                        "scripts/bench.sh installs it",
                    ));
                }
                // Node resolves packages from the script's own directory, so the script
                // runs from beside the installed node_modules: copied afresh each run, so
                // an edit to bench/peer/emmett is never measured stale.
                copy_scripts(Path::new("bench/peer/emmett"), &dir).map_err(|e| {
                    format!("cannot copy the Emmett peer into {}: {e}", dir.display())
                })?;
                let mut command = Command::new(env_or("CHRONICLE_BENCH_NODE", "node"));
                command.arg(dir.join("peer.mjs"));
                Ok(command)
            }
        }
    }

    /// Runs the workload once on a fresh database of its own, dropped afterwards.
    pub async fn run(self, load: Load) -> Outcome {
        let mut command = match self.program() {
            Ok(command) => command,
            Err(reason) => return Outcome::Skipped(reason),
        };
        let database = format!("chronicle_peer_{}", Uuid::new_v4().simple());
        let result = async {
            create_database(&database).await?;
            self.arguments(&mut command, &database, load);
            run_program(command).await
        }
        .await;
        drop_database(&database).await;
        match result {
            Ok(report) => Outcome::Measured(report),
            Err(error) => Outcome::Failed(format!("{error:#}")),
        }
    }

    fn arguments(self, command: &mut Command, database: &str, load: Load) {
        if self == Self::Eventsourcing {
            let admin = admin_options();
            command
                .args(["--dbname", database])
                .args(["--user", admin.get_username()])
                .args(["--host", admin.get_host()])
                .args(["--port", &admin.get_port().to_string()]);
        } else {
            command.args(["--database-url", &database_url(database)]);
        }
        command
            .args(["--connections", &load.connections.to_string()])
            .args(["--seconds", &load.seconds.to_string()])
            .args(["--warmup", &load.warmup.to_string()]);
        if let Some(rate) = load.rate {
            command.args(["--rate", &rate.to_string()]);
        }
    }
}

fn copy_scripts(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "mjs")
            && let Some(name) = path.file_name()
        {
            std::fs::copy(&path, to.join(name))?;
        }
    }
    Ok(())
}

async fn run_program(mut command: Command) -> anyhow::Result<Report> {
    // Not `output()`: tokio's pipes stderr too, and the peer's diagnostics (its first
    // error, a rate it could not hold) belong in the benchmark's log.
    let output = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the peer")?
        .wait_with_output()
        .await?;
    if !output.status.success() {
        bail!("the peer exited with {}", output.status);
    }
    let report: Value =
        serde_json::from_slice(&output.stdout).context("the peer printed no JSON report")?;
    let latencies = report["latencies_us"]
        .as_array()
        .context("no latencies_us in the peer's report")?
        .iter()
        .filter_map(Value::as_u64)
        .map(Duration::from_micros)
        .collect();
    Ok(Report {
        name: report["peer"].as_str().unwrap_or("unnamed peer").to_owned(),
        operations: report["operations"].as_u64().context("no operations")?,
        errors: report["errors"].as_u64().context("no errors count")?,
        seconds: report["seconds"].as_f64().context("no seconds")?,
        latencies,
    })
}

async fn admin(statement: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&admin_options()).await?;
    sqlx::query(statement).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

async fn create_database(name: &str) -> anyhow::Result<()> {
    admin(&format!(
        "CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"
    ))
    .await
    .with_context(|| format!("cannot create database {name}"))
}

async fn drop_database(name: &str) {
    if let Err(error) = admin(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await {
        eprintln!("  could not drop {name}: {error:#}");
    }
}
