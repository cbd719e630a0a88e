//! Starting and signalling the programs a scenario runs: where they run (inside a
//! network namespace, under a faked clock) is a [`Launcher`].

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

/// A program's path from the environment (`scripts/faults.sh` exports them).
pub fn tool(var: &str, default: &str) -> PathBuf {
    std::env::var(var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(default))
}

/// How a scenario runs its programs: behind a prefix (`ip netns exec NAME`) and with
/// extra environment (libfaketime's).
#[derive(Clone, Debug, Default)]
pub struct Launcher {
    pub prefix: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Launcher {
    /// A command running `program` this way; killed when dropped.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(program);
                command
            }
            None => Command::new(program),
        };
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }
}

pub use chronicle_tests::{free_port, wait_for_port};

pub fn signal(child: &Child, name: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status();
    }
}
