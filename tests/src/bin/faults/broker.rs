//! The scenario's own tansu broker, so that it can be stopped, starved of disk or cut off.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Child;

use crate::process::{Launcher, free_port, signal, tool, wait_for_port};

pub struct Broker {
    child: Option<Child>,
    pub addr: String,
    /// Where its SQLite storage lives.
    dir: PathBuf,
    /// Its stderr, kept outside `dir` (which may be a full disk).
    log: PathBuf,
    launcher: Launcher,
}

impl Broker {
    /// Starts a broker on `host` (a free port) storing into `dir`.
    pub async fn start(host: &str, dir: PathBuf, log: PathBuf, launcher: Launcher) -> Self {
        let mut broker = Self {
            child: None,
            addr: format!("{host}:{}", free_port()),
            dir,
            log,
            launcher,
        };
        broker.resume().await;
        broker
    }

    pub async fn resume(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let url = format!("tcp://{}", self.addr);
        let child = self
            .launcher
            .command(&tool("TANSU_BIN", "tansu"))
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu (TANSU_BIN)");
        self.child = Some(child);
        wait_for_port(&self.addr).await;
    }

    /// Whether the broker is still running (it may exit on its own, say on a full disk).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Whether the broker answers a metadata request within a few seconds: a liveness
    /// probe, as a supervisor would run one.
    pub async fn answers(&self) -> bool {
        let addr = self.addr.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: Result<rdkafka::consumer::BaseConsumer, _> = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &addr)
                .set("log_level", "0")
                .create();
            consumer.is_ok_and(|c| {
                use rdkafka::consumer::Consumer;
                c.fetch_metadata(None, std::time::Duration::from_secs(5))
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            // A wedged broker may not heed TERM.
            if tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}
