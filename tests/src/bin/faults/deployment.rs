//! One deployment of Chronicle under test: `chronicle all`, or its roles as separate
//! processes so one can be killed alone.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chronicle_tests::TEST_JWT_SECRET;
use tokio::process::Child;

use crate::process::{Launcher, free_port, signal, tool, wait_for_port};

/// Where a deployment finds what it needs, and how its processes run.
pub struct Placement {
    pub database_url: String,
    pub brokers: String,
    /// The address its HTTP API listens on (a free port is added).
    pub http_host: String,
    pub data: PathBuf,
    pub search: PathBuf,
    pub launcher: Launcher,
    /// Settings beyond the suite's defaults.
    pub env: Vec<(String, String)>,
}

pub struct Deployment {
    env: Vec<(String, String)>,
    pub base: String,
    processes: Vec<(&'static str, Child)>,
    /// Where each process's stderr goes (`<role>.log`).
    logs: PathBuf,
    launcher: Launcher,
}

impl Deployment {
    pub fn new(placement: Placement) -> Self {
        let addr = format!("{}:{}", placement.http_host, free_port());
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut env: Vec<(String, String)> = [
            ("CHRONICLE_DATABASE_URL", placement.database_url.clone()),
            ("CHRONICLE_HTTP_ADDR", addr.clone()),
            ("CHRONICLE_KAFKA_BROKERS", placement.brokers.clone()),
            ("CHRONICLE_KAFKA_PARTITIONS", "3".to_owned()),
            ("CHRONICLE_DATA_DIR", path(&placement.data)),
            ("CHRONICLE_SEARCH_DIR", path(&placement.search)),
            (
                "CHRONICLE_JWT_SECRET",
                String::from_utf8_lossy(TEST_JWT_SECRET).into_owned(),
            ),
            ("CHRONICLE_RATE_LIMIT_PER_SECOND", "100000".to_owned()),
            ("CHRONICLE_RATE_LIMIT_BURST", "100000".to_owned()),
            ("CHRONICLE_SCHEDULER_TICK_MS", "200".to_owned()),
            (
                "CHRONICLE_LOG",
                std::env::var("FAULTS_LOG").unwrap_or_else(|_| "error".to_owned()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (name, value) in placement.env {
            env.retain(|(k, _)| *k != name);
            env.push((name, value));
        }
        Self {
            env,
            base: format!("http://{addr}"),
            processes: Vec::new(),
            logs: placement
                .data
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default(),
            launcher: placement.launcher,
        }
    }

    pub fn spawn(&mut self, role: &'static str) {
        std::fs::create_dir_all(&self.logs).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{role}.log")))
            .unwrap();
        let child = self
            .launcher
            .command(&tool("CHRONICLE_BIN", "target/debug/chronicle"))
            .arg(role)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("chronicle (CHRONICLE_BIN)");
        self.processes.push((role, child));
    }

    pub async fn start(&mut self, split: bool) {
        // What exited on its own goes first.
        self.processes
            .retain_mut(|(_, child)| matches!(child.try_wait(), Ok(None)));
        if split {
            for role in ["serve", "relay", "project"] {
                self.spawn(role);
            }
        } else {
            self.spawn("all");
        }
        wait_for_port(self.base.trim_start_matches("http://")).await;
    }

    /// Whether every process of the deployment is still running.
    pub fn running(&mut self) -> bool {
        self.processes
            .iter_mut()
            .all(|(_, child)| matches!(child.try_wait(), Ok(None)))
    }

    pub async fn kill(&mut self, role: &'static str) {
        if let Some(index) = self.processes.iter().position(|(r, _)| *r == role) {
            let (_, mut child) = self.processes.remove(index);
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    pub async fn stop_all(&mut self) {
        for (_, child) in &self.processes {
            signal(child, "TERM");
        }
        for (_, child) in &mut self.processes {
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        }
        self.processes.clear();
    }

    /// A client's token, valid for a day.
    pub fn token(&self) -> String {
        self.token_of("loader", &[chronicle_domain::Role::Client])
    }

    /// A token for `subject` with `roles`.
    pub fn token_of(&self, subject: &str, roles: &[chronicle_domain::Role]) -> String {
        chronicle_api::auth::JwtKeys::hs256(TEST_JWT_SECRET)
            .issue(subject, roles, chrono::Duration::hours(24))
            .unwrap()
    }
}
