//! `chronicle`: one binary, several roles.

use chronicle_api::auth::JwtKeys;
use chronicle_api::roles;
use chronicle_api::settings::{Settings, Source};
use chronicle_api::telemetry;
use chronicle_domain::Role;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "chronicle",
    version,
    about = "Event-sourced booking platform backend"
)]
struct Cli {
    /// A TOML file of settings (the CHRONICLE_* names); the environment overrides it.
    #[arg(long, env = "CHRONICLE_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    role: RoleCommand,
}

#[derive(Subcommand)]
enum RoleCommand {
    /// Serve the HTTP API (commands, queries, health, metrics).
    Serve,
    /// Publish the event store to Kafka (one active relay; others wait as standbys).
    Relay,
    /// Run the projectors that maintain the read models.
    Project,
    /// Build the Merkle tree over the log and sign checkpoints (one active notary;
    /// others wait as standbys).
    Notary,
    /// Every role in one process: serve, relay, project and notary.
    All,
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

/// jemalloc, not glibc's malloc: under a steady load glibc kept up to 16 arenas of freed
/// memory (resident anonymous memory rose by about 8 MiB a minute while the live heap
/// stayed near 40 MiB); jemalloc returns what it no longer uses (docs/soak.md). Its
/// settings are compiled in by `.cargo/config.toml` (ADR 0038).
#[cfg(not(feature = "heap-profile"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// With the `heap-profile` feature every allocation is recorded, for `dhat-heap.json`.
#[cfg(feature = "heap-profile")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The heap profiler of a `heap-profile` build. It writes `dhat-heap.json` when dropped:
/// at the shutdown signal, before anything stops, so "live at the end" is what the
/// running service held.
#[cfg(feature = "heap-profile")]
static PROFILER: std::sync::Mutex<Option<dhat::Profiler>> = std::sync::Mutex::new(None);

#[tokio::main]
async fn main() {
    #[cfg(feature = "heap-profile")]
    if let Ok(mut profiler) = PROFILER.lock() {
        *profiler = Some(dhat::Profiler::new_heap());
    }
    let cli = Cli::parse();
    if let Err(error) = run(cli).await {
        eprintln!("chronicle: {error:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let source = match &cli.config {
        Some(path) => Source::with_file(path)?,
        None => Source::env(),
    };
    let settings = Settings::load(&source)?;
    let _telemetry = telemetry::init(
        std::env::var("CHRONICLE_LOG").ok().as_deref(),
        settings.otlp_endpoint.as_deref(),
    )?;
    chronicle_eventstore::clock::configure(&settings.clock);
    let role = match cli.role {
        RoleCommand::Token {
            sub,
            roles,
            ttl_hours,
        } => return print_token(&settings, &sub, &roles, ttl_hours),
        RoleCommand::Migrate => {
            roles::prepare_database(&settings).await?.close().await;
            return Ok(());
        }
        role => role,
    };
    if settings.jwt_secret_is_default && matches!(role, RoleCommand::Serve | RoleCommand::All) {
        tracing::warn!("CHRONICLE_JWT_SECRET is not set; using the fixed development key");
    }
    if settings.master_keys.is_development() {
        tracing::warn!(
            "CHRONICLE_MASTER_KEY and CHRONICLE_MASTER_KEY_FILE are not set; personal data is sealed under the fixed development keys"
        );
    }
    if settings.signing_key.is_development()
        && matches!(role, RoleCommand::Notary | RoleCommand::All)
    {
        tracing::warn!(
            "CHRONICLE_SIGNING_KEY and CHRONICLE_SIGNING_KEY_FILE are not set; checkpoints are signed with the fixed development key"
        );
    }
    let pool = roles::prepare_database(&settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        let bound = settings.shutdown_timeout;
        async move {
            shutdown_signal().await;
            #[cfg(feature = "heap-profile")]
            if let Ok(mut profiler) = PROFILER.lock() {
                drop(profiler.take());
            }
            shutdown.cancel();
            // Work that cannot finish in time is cut short, loudly.
            tokio::time::sleep(bound).await;
            tracing::error!(
                seconds = bound.as_secs(),
                "shutdown did not finish in time; exiting"
            );
            std::process::exit(2);
        }
    });
    let result = match role {
        RoleCommand::Serve => roles::serve(&settings, pool.clone(), shutdown).await,
        RoleCommand::Relay => roles::relay(&settings, pool.clone(), shutdown).await,
        RoleCommand::Project => roles::project(&settings, pool.clone(), shutdown).await,
        RoleCommand::Notary => roles::notary(&settings, pool.clone(), shutdown).await,
        _ => roles::all(&settings, pool.clone(), shutdown).await,
    };
    pool.close().await;
    result
}

fn print_token(
    settings: &Settings,
    sub: &str,
    roles: &[String],
    ttl_hours: i64,
) -> anyhow::Result<()> {
    let roles = roles
        .iter()
        .map(|name| match Role::parse(name) {
            Some(Role::System) | None => {
                anyhow::bail!("unknown role {name:?}; use client, auditor, analyst or admin")
            }
            Some(role) => Ok(role),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let keys = JwtKeys::hs256(settings.jwt_secret.expose().as_bytes());
    let token = keys.issue(sub, &roles, chrono::Duration::hours(ttl_hours))?;
    #[allow(clippy::print_stdout)]
    {
        println!("{token}");
    }
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

#[cfg(all(test, not(feature = "heap-profile")))]
mod tests {
    /// jemalloc runs with the settings `.cargo/config.toml` compiles in (ADR 0038; a
    /// misspelt option would be ignored without a word).
    #[test]
    fn jemalloc_runs_with_the_compiled_in_settings() {
        // tikv-jemalloc-ctl 0.6 hands the C string out with its terminating NUL.
        let compiled = tikv_jemalloc_ctl::config::malloc_conf::read().unwrap();
        assert_eq!(
            compiled.trim_end_matches('\0'),
            "narenas:2,dirty_decay_ms:1000"
        );
        if std::env::var_os("MALLOC_CONF").is_none() {
            assert_eq!(tikv_jemalloc_ctl::opt::narenas::read().unwrap(), 2);
        }
    }
}
