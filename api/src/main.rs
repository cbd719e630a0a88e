//! `chronicle`: one binary, several roles.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use chronicle_api::auth::JwtKeys;
use chronicle_api::settings::Settings;
use chronicle_api::{AppState, router};
use chronicle_commands::CommandService;
use chronicle_domain::Role;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "chronicle",
    version,
    about = "Event-sourced booking platform backend"
)]
struct Cli {
    #[command(subcommand)]
    role: RoleCommand,
}

#[derive(Subcommand)]
enum RoleCommand {
    /// Serve the HTTP API (commands, queries, health).
    Serve,
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Print a signed development token for the configured key.
    Token {
        /// The token's subject.
        #[arg(long)]
        sub: String,
        /// A role to grant (client, auditor, analyst, admin); repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 24)]
        ttl_hours: i64,
    },
}

fn init_tracing() {
    let filter = EnvFilter::try_from_env("CHRONICLE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_tracing();
    if let Err(error) = run(cli).await {
        eprintln!("chronicle: {error:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    match cli.role {
        RoleCommand::Serve => serve(settings).await,
        RoleCommand::Migrate => {
            let pool = prepare_database(&settings).await?;
            pool.close().await;
            Ok(())
        }
        RoleCommand::Token {
            sub,
            roles,
            ttl_hours,
        } => {
            let roles = roles
                .iter()
                .map(|name| match Role::parse(name) {
                    Some(Role::System) | None => anyhow::bail!(
                        "unknown role {name:?}; use client, auditor, analyst or admin"
                    ),
                    Some(role) => Ok(role),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let keys = JwtKeys::hs256(settings.jwt_secret.expose().as_bytes());
            let token = keys.issue(&sub, &roles, chrono::Duration::hours(ttl_hours))?;
            #[allow(clippy::print_stdout)]
            {
                println!("{token}");
            }
            Ok(())
        }
    }
}

async fn prepare_database(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let target = settings.database.redacted_url();
    chronicle_eventstore::ensure_database(&settings.database.url)
        .await
        .with_context(|| format!("cannot reach or create the database at {target}"))?;
    let pool = chronicle_eventstore::connect(&settings.database)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    chronicle_eventstore::migrate(&pool)
        .await
        .context("cannot migrate the database")?;
    tracing::info!(database = %target, "database ready");
    Ok(pool)
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    if settings.jwt_secret_is_default {
        tracing::warn!("CHRONICLE_JWT_SECRET is not set; using the fixed development key");
    }
    let pool = prepare_database(&settings).await?;
    let state = AppState {
        commands: Arc::new(CommandService::new(pool.clone(), settings.commands.clone())),
        pool,
        keys: Arc::new(JwtKeys::hs256(settings.jwt_secret.expose().as_bytes())),
    };
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
    tracing::info!(addr = %settings.http_addr, "serving the HTTP API");
    axum::serve(listener, router(state, settings.limits))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
