//! The process roles: `serve`, `relay`, `project`, `notary`, and `all` of them in one
//! process.
//! Each runs until its shutdown token is cancelled, then finishes what it was doing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chronicle_commands::CommandService;
use chronicle_commands::process::{PROCESS_MANAGER, ProcessManager};
use chronicle_eventstore::kafka::ensure_topics;
use chronicle_eventstore::notary::Notary;
use chronicle_eventstore::personal::KeyStore;
use chronicle_eventstore::relay::Relay;
use chronicle_projections::Projector;
use chronicle_projections::feed::Feed;
use chronicle_projections::monitor::{LagMonitor, OffsetSource};
use chronicle_projections::read_models::{READ_MODELS, ReadModels};
use chronicle_projections::search::{SearchIndex, SearchProjection};
use chronicle_projections::watch::ProjectionWatch;
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::auth::JwtKeys;
use crate::settings::Settings;
use crate::{AppState, LiveFeed, router};

/// Creates the database if missing, migrates and connects.
pub async fn prepare_database(settings: &Settings) -> anyhow::Result<PgPool> {
    let target = settings.database.redacted_url();
    chronicle_eventstore::ensure_database(&settings.database.url)
        .await
        .with_context(|| format!("cannot reach or create the database at {target}"))?;
    let mut migrating = chronicle_eventstore::db::connect_for_migrations(&settings.database)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    chronicle_commands::schema::migrate(&mut migrating)
        .await
        .context("cannot migrate the database")?;
    migrating.close().await.ok();
    let pool = chronicle_eventstore::connect(&settings.database)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    tracing::info!(database = %target, "database ready");
    Ok(pool)
}

/// Opens the search index of `settings`.
pub fn open_search(settings: &Settings) -> anyhow::Result<Arc<SearchIndex>> {
    let index = SearchIndex::open(&settings.search_dir).with_context(|| {
        format!(
            "cannot open the search index in {}",
            settings.search_dir.display()
        )
    })?;
    Ok(Arc::new(index))
}

/// The state every HTTP handler shares; starts the background watchers.
pub fn app_state(
    settings: &Settings,
    pool: PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<AppState> {
    let search = open_search(settings)?;
    let monitor = LagMonitor::start(
        pool.clone(),
        Some(settings.kafka.clone()),
        vec![
            OffsetSource::table(READ_MODELS),
            OffsetSource::Search(search.clone()),
            OffsetSource::Table {
                name: PROCESS_MANAGER.to_owned(),
                aggregates: ProcessManager::AGGREGATES.to_vec(),
            },
        ],
        settings.relay.name.clone(),
        settings.ready,
        settings.lag_interval,
        shutdown.clone(),
    );
    let watch = ProjectionWatch::start(pool.clone(), shutdown.clone());
    let feed = Feed::new(
        pool.clone(),
        settings.kafka.clone(),
        settings.feed.clone(),
        watch.clone(),
        shutdown.clone(),
    );
    Ok(AppState {
        commands: Arc::new(CommandService::new(pool.clone(), settings.commands.clone())),
        feed: LiveFeed::new(feed, shutdown.clone()),
        watch,
        monitor,
        search,
        limiter: Arc::new(crate::limits::RateLimiter::new(settings.protection)),
        reads: settings.reads,
        keys: Arc::new(JwtKeys::hs256(settings.jwt_secret.expose().as_bytes())),
        checkpoint_key: settings.signing_key.public(),
        pool,
    })
}

/// Serves the HTTP API until shutdown, then lets in-flight requests finish.
pub async fn serve(
    settings: &Settings,
    pool: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_state(settings, app_state(settings, pool, &shutdown)?, shutdown).await
}

/// [`serve`] with `state` made already.
async fn serve_state(
    settings: &Settings,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let commands = state.commands.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { commands.sweep_expired_records(stop).await });
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
    tracing::info!(addr = %settings.http_addr, "serving the HTTP API");
    axum::serve(
        listener,
        router(state, settings.limits)
            .into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await?;
    tracing::info!("HTTP API stopped");
    Ok(())
}

/// Publishes the event store to Kafka until shutdown (or waits as a standby).
pub async fn relay(
    settings: &Settings,
    pool: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Relay::new(pool, settings.kafka.clone(), settings.relay.clone())
        .run(shutdown)
        .await;
    Ok(())
}

/// Runs the projectors (read models and search) and the process manager until
/// shutdown.
pub async fn project(
    settings: &Settings,
    pool: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    project_sharing(settings, pool, None, shutdown).await
}

/// [`project`], its process manager sealing with `keys` when given (shared with the
/// HTTP API's commands in `chronicle all`), else with a key store of its own.
async fn project_sharing(
    settings: &Settings,
    pool: PgPool,
    keys: Option<KeyStore>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Consumers subscribe to the topics; make sure they exist even before a relay ran.
    while let Err(error) = ensure_topics(&settings.kafka).await {
        tracing::warn!(%error, "cannot create topics yet; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    let read_models = read_model_projector(settings, pool.clone());
    let search = search_projector(settings, pool.clone())?;
    let process = match keys {
        Some(keys) => process_manager_sharing(settings, pool, keys),
        None => process_manager(settings, pool),
    };
    tokio::join!(
        read_models.run(shutdown.clone()),
        search.run(shutdown.clone()),
        process.run(settings.kafka.clone(), settings.projector.clone(), shutdown),
    );
    Ok(())
}

/// The read-model projector.
pub fn read_model_projector(settings: &Settings, pool: PgPool) -> Projector<ReadModels> {
    Projector::new(
        Arc::new(ReadModels::new(pool)),
        settings.kafka.clone(),
        settings.projector.clone(),
    )
}

/// The process manager, with a command service and a pool of its own beside `pool`
/// (`CHRONICLE_PROCESS_DB_CONNECTIONS`).
pub fn process_manager(settings: &Settings, pool: PgPool) -> Arc<ProcessManager> {
    let pool = chronicle_eventstore::db::pool_beside(&pool, settings.process.connections);
    let commands = Arc::new(CommandService::new(pool, settings.commands.clone()));
    Arc::new(ProcessManager::new(commands, settings.process))
}

/// [`process_manager`], sealing and opening guests' personal data with `keys`, another
/// service's key store in the same process: the keys the HTTP API's commands made are
/// in its cache already, and an erasure empties the one cache (ADR 0035).
pub fn process_manager_sharing(
    settings: &Settings,
    pool: PgPool,
    keys: KeyStore,
) -> Arc<ProcessManager> {
    let pool = chronicle_eventstore::db::pool_beside(&pool, settings.process.connections);
    let commands = Arc::new(CommandService::sealing_with(
        pool,
        settings.commands.clone(),
        Some(keys),
    ));
    Arc::new(ProcessManager::new(commands, settings.process))
}

/// The search projector over the index of `settings` (which it takes the writer of),
/// setting aside what it cannot read in `pool`'s `projector_dead_letters`.
pub fn search_projector(
    settings: &Settings,
    pool: PgPool,
) -> anyhow::Result<Projector<SearchProjection>> {
    let projection = SearchProjection::new(open_search(settings)?, settings.search)
        .with_context(|| {
            format!(
                "cannot take the search index writer in {}",
                settings.search_dir.display()
            )
        })?
        .with_dead_letters(pool)
        .with_keys(settings.master_keys.clone());
    Ok(Projector::new(
        Arc::new(projection),
        settings.kafka.clone(),
        settings.projector.clone(),
    ))
}

/// Builds the Merkle tree over the log and signs checkpoints until shutdown (or waits as
/// a standby).
pub async fn notary(
    settings: &Settings,
    pool: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Notary::new(
        pool,
        Some(settings.kafka.clone()),
        settings.notary.clone(),
        settings.signing_key.clone(),
    )
    .run(shutdown)
    .await;
    Ok(())
}

/// Every role in one process. The first role to fail stops the others.
pub async fn all(
    settings: &Settings,
    pool: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop_all = |result: anyhow::Result<()>| {
        if result.is_err() {
            shutdown.cancel();
        }
        result
    };
    let state = app_state(settings, pool.clone(), &shutdown)?;
    // One key store for the process: the process manager finds the keys the HTTP API's
    // commands just made in its cache, and an erasure empties the only cache there is.
    let keys = state.commands.key_store().cloned();
    let (served, relayed, projected, notarised) = tokio::join!(
        async { stop_all(serve_state(settings, state, shutdown.clone()).await) },
        async { stop_all(relay(settings, pool.clone(), shutdown.clone()).await) },
        async { stop_all(project_sharing(settings, pool.clone(), keys, shutdown.clone()).await) },
        async { stop_all(notary(settings, pool.clone(), shutdown.clone()).await) },
    );
    served.and(relayed).and(projected).and(notarised)
}
