//! The clock jumping forward. A file of the suite's holds the offset in seconds; both
//! clocks that matter follow it and so jump together, as two programs on one machine
//! would:
//! - a PostgreSQL cluster of the suite's own runs under libfaketime, which shifts the
//!   wall clock (`CLOCK_REALTIME`: `now()`, `recorded_at`) by what the file says,
//!   re-read every second. The monotonic clock is left alone, as a real clock step (NTP,
//!   a VM resumed) leaves it: timeouts and intervals keep their length;
//! - Chronicle reads the same file through its clock seam
//!   (`CHRONICLE_CLOCK=offset-file:PATH`, `chronicle_eventstore::clock`): libfaketime
//!   cannot be preloaded into it, since libfaketime and jemalloc recurse into each other
//!   while starting (libfaketime's issue #130; ADR 0032).
//!
//! The cluster is the suite's own because the machine's PostgreSQL must not jump: other
//! programs use it. It is created with `initdb` in the scenario's scratch directory, runs
//! as the `postgres` user (PostgreSQL refuses root) and is stopped with the stage.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{free_port, wait_for_port};

/// Where Debian's `libfaketime` package puts the preloaded library (its
/// multi-threaded build, for tokio and PostgreSQL's workers alike).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

pub struct FakedClock {
    file: PathBuf,
}

impl FakedClock {
    /// A clock at the machine's time, until it is moved.
    pub fn new(dir: &Path) -> Self {
        assert!(
            Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: the clock row needs libfaketime (Debian: faketime)"
        );
        std::fs::create_dir_all(dir).unwrap();
        let clock = Self {
            file: dir.join("faketime"),
        };
        clock.set_offset(0);
        clock
    }

    fn set_offset(&self, seconds: i64) {
        // Written aside and renamed, so no reader ever sees half a line.
        let aside = self.file.with_extension("new");
        std::fs::write(&aside, format!("{seconds:+}\n")).unwrap();
        std::fs::rename(&aside, &self.file).unwrap();
    }

    /// Moves the wall clock of every program on this clock forward.
    pub fn jump(&self, by: Duration) {
        self.set_offset(by.as_secs() as i64);
    }

    /// The environment that puts Chronicle on this clock.
    pub fn chronicle_env(&self) -> Vec<(String, String)> {
        vec![(
            "CHRONICLE_CLOCK".to_owned(),
            format!("offset-file:{}", self.file.display()),
        )]
    }

    /// The environment that puts a program without jemalloc on this clock.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", LIBFAKETIME.to_owned()),
            (
                "FAKETIME_TIMESTAMP_FILE",
                self.file.to_string_lossy().into_owned(),
            ),
            ("FAKETIME_CACHE_DURATION", "1".to_owned()),
            ("DONT_FAKE_MONOTONIC", "1".to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// A PostgreSQL cluster of the scenario's own, on loopback.
pub struct OwnPostgres {
    data: PathBuf,
    pub port: u16,
    /// The postmaster's pid, to stop it even when its data directory is gone (a clean
    /// scenario's scratch directory is removed before the stage is dropped).
    pid: Option<u32>,
}

fn postgres_bin(program: &str) -> PathBuf {
    let version = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.filter_map(Result::ok).map(|e| e.file_name()).max())
        .expect("PostgreSQL's programs under /usr/lib/postgresql");
    Path::new("/usr/lib/postgresql")
        .join(version)
        .join("bin")
        .join(program)
}

/// Runs a PostgreSQL program as the `postgres` user with `env`; panics with its
/// output when it fails.
fn as_postgres(env: &[(String, String)], program: &str, args: &[&str]) {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--", "env"])
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(postgres_bin(program))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runuser (the clock row needs root and PostgreSQL's server programs)");
    assert!(
        output.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl OwnPostgres {
    /// Creates a cluster in `dir` and starts it on `clock`.
    pub async fn start(dir: &Path, clock: &FakedClock) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "chown {}", dir.display());
        let data = dir.join("cluster");
        let path = |p: &Path| p.to_string_lossy().into_owned();
        as_postgres(
            &[],
            "initdb",
            &[
                "--auth=trust",
                "--username=postgres",
                "--no-sync",
                "-D",
                &path(&data),
            ],
        );
        let port = free_port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c fsync=off -k {}",
            path(dir)
        );
        let log = path(&dir.join("postgres.log"));
        let cluster = path(&data);
        let env = clock.env();
        tokio::task::spawn_blocking(move || {
            as_postgres(
                &env,
                "pg_ctl",
                &["start", "-w", "-D", &cluster, "-l", &log, "-o", &options],
            );
        })
        .await
        .unwrap();
        wait_for_port(&format!("127.0.0.1:{port}")).await;
        let pid = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok());
        Self { data, port, pid }
    }

    /// A URL of its `postgres` database, to create test databases through.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    /// A fast shutdown; the cluster's files go with the scratch directory. Without its
    /// data directory `pg_ctl` cannot find the server: then the postmaster is sent
    /// SIGINT (a fast shutdown) by its pid.
    fn drop(&mut self) {
        let stopped = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(postgres_bin("pg_ctl"))
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(&self.data)
            .output()
            .is_ok_and(|out| out.status.success());
        if let (false, Some(pid)) = (stopped, self.pid) {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
    }
}
