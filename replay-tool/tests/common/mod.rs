//! Running `chronicle-replay` as an auditor does, for the CLI's test files.

#![allow(dead_code)] // each test file uses what it needs

use std::process::Output;

/// Runs `chronicle-replay args` against the database at `url`.
pub async fn replay(url: &str, args: &[&str]) -> Output {
    replay_with(url, args, &[]).await
}

/// Runs `chronicle-replay args` against `url` with extra environment variables.
pub async fn replay_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chronicle-replay"));
    command.env("CHRONICLE_DATABASE_URL", url).args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().await.expect("chronicle-replay runs")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Both streams, for a failure's message.
pub fn text(output: &Output) -> String {
    format!("{}{}", stdout(output), stderr(output))
}

/// A connection of a superuser who switched the event store's guards off
/// (`session_replication_role = replica`), as an administrator tampering with it would.
pub async fn guards_off(app: &chronicle_tests::TestApp) -> sqlx::PgConnection {
    app.guards_off().await
}
