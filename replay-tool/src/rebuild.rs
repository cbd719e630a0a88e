//! `rebuild`: a read model rebuilt straight from the event store into fresh tables (or a
//! fresh index directory), then swapped in atomically. Progress is stored with the data,
//! so an interrupted rebuild resumes where it stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chronicle_eventstore::envelope::{SELECT_COMMIT_SAFE_AFTER, StoredEvent};
use chronicle_eventstore::personal::MasterKeys;
use chronicle_projections::consumer::PartitionKey;
use chronicle_projections::read_models::apply_envelopes;
use chronicle_projections::search::{SearchIndex, SearchProjection, SearchSettings};
use chronicle_projections::{ConsumerError, OffsetStoringConsumer};
use sqlx::{PgPool, Postgres, Transaction};

use crate::fold::Replayer;
use crate::progress::Progress;

/// The schema fresh read-model tables are built in.
const REBUILD_SCHEMA: &str = "chronicle_rebuild";
/// Where the replaced tables go (kept until the next rebuild, for inspection).
const PREVIOUS_SCHEMA: &str = "chronicle_previous";

/// Every table the read-model projector maintains.
fn read_model_tables() -> impl Iterator<Item = &'static str> {
    chronicle_projections::read_models::TABLES
        .iter()
        .map(|table| table.name)
}

const BATCH: i64 = 2_000;

/// How a rebuild went.
#[derive(Debug)]
pub struct Summary {
    pub events: u64,
    pub seconds: f64,
    pub resumed: bool,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    /// The summary of a rebuild whose progress is `progress`.
    fn of(progress: &Progress, resumed: bool) -> Self {
        Self {
            events: progress.done(),
            seconds: progress.elapsed().as_secs_f64(),
            resumed,
        }
    }
}

/// A progress line over the whole store that starts at the `applied` events an
/// interrupted rebuild already did.
async fn start_progress(
    pool: &PgPool,
    label: &'static str,
    applied: i64,
    show_progress: bool,
) -> anyhow::Result<Progress> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?;
    let mut progress = Progress::new(label, total.max(applied) as u64, show_progress);
    progress.advance(applied as u64);
    Ok(progress)
}

/// The next commit-safe events after `(tx_id, position)`, in commit order: the relay's
/// reading rule, so a rebuild never skips a transaction that commits late.
async fn next_batch(
    conn: &mut sqlx::PgConnection,
    tx_id: &str,
    position: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(SELECT_COMMIT_SAFE_AFTER)
        .bind(tx_id)
        .bind(position)
        .bind(BATCH)
        .fetch_all(conn)
        .await
}

/// Longest a rebuild waits, in one spell, for events that are committed but held back by
/// a transaction in flight elsewhere in the cluster.
const HELD_BACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether events after `(tx_id, position)` are committed but not commit-safe yet: a
/// transaction in flight anywhere in the cluster holds the horizon back (it is
/// cluster-wide). Waits until they are readable, up to [`HELD_BACK_WAIT`]; true when the
/// caller should read again. Without it a rebuild that ran beside any open transaction,
/// even in another database, ended short of the store.
async fn wait_for_held_back(
    conn: &mut sqlx::PgConnection,
    tx_id: &str,
    position: i64,
    waited: &mut std::time::Duration,
) -> Result<bool, sqlx::Error> {
    let pending: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events \
                         WHERE (events.tx_id, events.global_position) > ($1::text::xid8, $2))",
    )
    .bind(tx_id)
    .bind(position)
    .fetch_one(conn)
    .await?;
    if !pending || *waited >= HELD_BACK_WAIT {
        if pending {
            tracing::warn!(
                "events are still held back by a transaction in flight after {} s; \
                 going on without them",
                waited.as_secs()
            );
        }
        return Ok(false);
    }
    let pause = std::time::Duration::from_millis(50);
    tokio::time::sleep(pause).await;
    *waited += pause;
    Ok(true)
}

/// Rebuilds the PostgreSQL read models. With `fresh`, an interrupted earlier rebuild is
/// discarded instead of resumed.
pub async fn read_models(
    pool: &PgPool,
    fresh: bool,
    show_progress: bool,
) -> anyhow::Result<Summary> {
    let resumed = prepare_schema(pool, fresh).await?;
    let (mut tx_id, mut position, applied): (String, i64, i64) = sqlx::query_as(&format!(
        "SELECT tx_id::text, global_position, applied FROM {REBUILD_SCHEMA}.rebuild_progress"
    ))
    .fetch_one(pool)
    .await?;
    let mut progress = start_progress(pool, "rebuild read-models", applied, show_progress).await?;
    let replayer = Replayer::default();
    let mut waited = std::time::Duration::ZERO;
    loop {
        let mut tx = pool.begin().await?;
        let applied = apply_batch(&mut tx, &replayer, &mut tx_id, &mut position).await?;
        tx.commit().await?;
        progress.advance(applied);
        if applied > 0 {
            waited = std::time::Duration::ZERO;
        } else if !wait_for_held_back(&mut *pool.acquire().await?, &tx_id, position, &mut waited)
            .await?
        {
            break;
        }
    }
    swap_in(pool, &replayer, &mut tx_id, &mut position).await?;
    progress.finish();
    Ok(Summary::of(&progress, resumed && applied > 0))
}

/// Creates the rebuild schema with empty copies of the tables, unless a rebuild to
/// resume is there. Returns whether it resumes.
async fn prepare_schema(pool: &PgPool, fresh: bool) -> anyhow::Result<bool> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'rebuild_progress')",
    )
    .bind(REBUILD_SCHEMA)
    .fetch_one(pool)
    .await?;
    if exists && !fresh {
        return Ok(true);
    }
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {REBUILD_SCHEMA} CASCADE"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {REBUILD_SCHEMA}"))
        .execute(&mut *tx)
        .await?;
    for table in read_model_tables() {
        sqlx::query(&format!(
            "CREATE TABLE {REBUILD_SCHEMA}.{table} (LIKE public.{table} INCLUDING ALL)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(&format!(
        "CREATE TABLE {REBUILD_SCHEMA}.rebuild_progress (tx_id xid8 NOT NULL, global_position bigint NOT NULL, applied bigint NOT NULL)"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {REBUILD_SCHEMA}.rebuild_progress VALUES ('0', 0, 0)"
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(false)
}

/// Applies one batch to the rebuild tables and records the progress, in `tx`.
async fn apply_batch(
    tx: &mut Transaction<'_, Postgres>,
    replayer: &Replayer,
    tx_id: &mut String,
    position: &mut i64,
) -> anyhow::Result<u64> {
    sqlx::query(&format!(
        "SET LOCAL search_path TO {REBUILD_SCHEMA}, public"
    ))
    .execute(&mut **tx)
    .await?;
    let events = next_batch(tx, tx_id, *position).await?;
    let Some(last) = events.last() else {
        return Ok(0);
    };
    let envelopes: Vec<_> = events
        .iter()
        .map(|event| event.to_envelope(replayer.upcasters()))
        .collect();
    let outcome = apply_envelopes(tx, &envelopes).await?;
    if let Some((index, reason)) = outcome.unreadable.first() {
        anyhow::bail!(
            "event {} cannot be applied: {reason}",
            envelopes[*index].global_position
        );
    }
    (*tx_id, *position) = (last.tx_id.clone(), last.global_position);
    sqlx::query(&format!(
        "UPDATE {REBUILD_SCHEMA}.rebuild_progress SET tx_id = $1::text::xid8, global_position = $2, applied = applied + $3"
    ))
    .bind(&*tx_id)
    .bind(*position)
    .bind(events.len() as i64)
    .execute(&mut **tx)
    .await?;
    Ok(events.len() as u64)
}

/// In one transaction: stop the live projector (locks), apply what it may have applied
/// since, and exchange the tables. Afterwards the projector continues on the new tables;
/// its offsets stay valid because every event it meets again is recognised there.
async fn swap_in(
    pool: &PgPool,
    replayer: &Replayer,
    tx_id: &mut String,
    position: &mut i64,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '30s'")
        .execute(&mut *tx)
        .await?;
    let live: Vec<String> = read_model_tables().map(|t| format!("public.{t}")).collect();
    sqlx::query(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        live.join(", ")
    ))
    .execute(&mut *tx)
    .await?;
    while apply_batch(&mut tx, replayer, tx_id, position).await? > 0 {}
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {PREVIOUS_SCHEMA} CASCADE"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {PREVIOUS_SCHEMA}"))
        .execute(&mut *tx)
        .await?;
    for table in read_model_tables() {
        sqlx::query(&format!(
            "ALTER TABLE public.{table} SET SCHEMA {PREVIOUS_SCHEMA}"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "ALTER TABLE {REBUILD_SCHEMA}.{table} SET SCHEMA public"
        ))
        .execute(&mut *tx)
        .await?;
        restore_index_names(&mut tx, table).await?;
    }
    sqlx::query(&format!("DROP SCHEMA {REBUILD_SCHEMA} CASCADE"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// `CREATE TABLE … (LIKE … INCLUDING ALL)` names indexes after their columns; give the
/// new table's indexes the names the migrations gave the old ones.
async fn restore_index_names(
    tx: &mut Transaction<'_, Postgres>,
    table: &str,
) -> anyhow::Result<()> {
    let pairs: Vec<(String, String)> = sqlx::query_as(
        "SELECT new.indexname, old.indexname FROM pg_indexes new \
           JOIN pg_indexes old \
             ON regexp_replace(new.indexdef, '^CREATE (UNIQUE )?INDEX \\S+ ON \\S+ ', '') \
              = regexp_replace(old.indexdef, '^CREATE (UNIQUE )?INDEX \\S+ ON \\S+ ', '') \
          WHERE new.schemaname = 'public' AND new.tablename = $1 \
            AND old.schemaname = $2 AND old.tablename = $1 AND new.indexname <> old.indexname",
    )
    .bind(table)
    .bind(PREVIOUS_SCHEMA)
    .fetch_all(&mut **tx)
    .await?;
    for (new, old) in pairs {
        sqlx::query(&format!("ALTER INDEX public.\"{new}\" RENAME TO \"{old}\""))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

/// The pseudo-topic under which a search rebuild records where it got to in the
/// rebuild index's commits.
const SEARCH_MARKER: &str = "rebuild";
/// How many events a search rebuild indexes between commits.
const SEARCH_COMMIT_EVERY: usize = 50_000;

/// Where a search rebuild got to: the reading position and the events applied so far.
struct SearchMarker {
    tx_id: String,
    position: i64,
    applied: i64,
}

impl SearchMarker {
    /// The offset key of one part of the marker.
    fn key(part: i32) -> PartitionKey {
        (SEARCH_MARKER.to_owned(), part)
    }

    /// The marker in the rebuild index's last commit; the start when there is none.
    fn read(stored: &HashMap<PartitionKey, i64>) -> Self {
        Self {
            tx_id: stored
                .get(&Self::key(0))
                .map(|t| t.to_string())
                .unwrap_or_else(|| "0".into()),
            position: stored.get(&Self::key(1)).copied().unwrap_or(0),
            applied: stored.get(&Self::key(2)).copied().unwrap_or(0),
        }
    }

    /// The offsets a commit records for this marker.
    fn offsets(&self) -> HashMap<PartitionKey, i64> {
        HashMap::from([
            (Self::key(0), self.tx_id.parse::<i64>().unwrap_or(0)),
            (Self::key(1), self.position),
            (Self::key(2), self.applied),
        ])
    }
}

/// The search projector's errors as this tool reports them.
fn consumer_error(error: ConsumerError) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

/// Rebuilds the search index next to `dir`, then exchanges the two directories in one
/// `renameat2(RENAME_EXCHANGE)`. The swap needs the live index's writer lock, so it is
/// refused while a search projector runs; stop it first (it rebuilds its offsets from
/// the topics, skipping what the new index has).
pub async fn search(
    pool: &PgPool,
    keys: Arc<MasterKeys>,
    dir: &Path,
    fresh: bool,
    show_progress: bool,
) -> anyhow::Result<Summary> {
    let rebuild_dir = sibling(dir, ".rebuild");
    // The rebuild index stays open until the exchange is done.
    let (_index, projection) = open_rebuild_index(&rebuild_dir, fresh)?;
    // The pool lets it read the data subjects' keys.
    let projection = projection.with_dead_letters(pool.clone()).with_keys(keys);
    let stored = projection.stored_offsets().await.map_err(consumer_error)?;
    let marker = SearchMarker::read(&stored);
    let applied = marker.applied;
    let mut progress = start_progress(pool, "rebuild search", applied, show_progress).await?;
    index_store(pool, &projection, marker, &mut progress).await?;
    // The finished index records no offsets: the live projector reads its topic from
    // the start once and finds every document already at its version.
    projection
        .apply_envelopes(Vec::new(), HashMap::new(), true)
        .await
        .map_err(consumer_error)?;
    drop(projection);
    progress.finish();
    exchange(dir, &rebuild_dir)?;
    Ok(Summary::of(&progress, applied > 0))
}

/// Opens (with `fresh`, first empties) the rebuild index in `rebuild_dir`, with a
/// projection that commits only when told to.
fn open_rebuild_index(
    rebuild_dir: &Path,
    fresh: bool,
) -> anyhow::Result<(Arc<SearchIndex>, SearchProjection)> {
    if fresh && rebuild_dir.exists() {
        std::fs::remove_dir_all(rebuild_dir)?;
    }
    let index = Arc::new(SearchIndex::open(rebuild_dir)?);
    let settings = SearchSettings {
        commit_docs: usize::MAX,
        commit_interval: std::time::Duration::MAX,
        ..SearchSettings::default()
    };
    let projection = SearchProjection::new(index.clone(), settings)?;
    Ok((index, projection))
}

/// Indexes the commit-safe events after `marker` in batches, committing with the
/// marker of where it got to every [`SEARCH_COMMIT_EVERY`] events.
async fn index_store(
    pool: &PgPool,
    projection: &SearchProjection,
    mut marker: SearchMarker,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let replayer = Replayer::default();
    let mut conn = pool.acquire().await?;
    let mut since_commit = 0;
    let mut waited = std::time::Duration::ZERO;
    loop {
        let events = next_batch(&mut conn, &marker.tx_id, marker.position).await?;
        let Some(last) = events.last() else {
            if wait_for_held_back(&mut conn, &marker.tx_id, marker.position, &mut waited).await? {
                continue;
            }
            return Ok(());
        };
        waited = std::time::Duration::ZERO;
        (marker.tx_id, marker.position) = (last.tx_id.clone(), last.global_position);
        progress.advance(events.len() as u64);
        marker.applied = progress.done() as i64;
        since_commit += events.len();
        let envelopes = events
            .iter()
            .map(|e| e.to_envelope(replayer.upcasters()))
            .collect();
        let commit = since_commit >= SEARCH_COMMIT_EVERY;
        projection
            .apply_envelopes(envelopes, marker.offsets(), commit)
            .await
            .map_err(consumer_error)?;
        if commit {
            since_commit = 0;
        }
    }
}

fn exchange(live: &Path, rebuilt: &Path) -> anyhow::Result<()> {
    let live_index = Arc::new(SearchIndex::open(live)?);
    // Holding the live writer proves no projector writes there during the exchange.
    let _writer = SearchProjection::new(live_index, SearchSettings::default()).map_err(|e| {
        anyhow::anyhow!(
            "the search index in {} is in use ({e}); stop the search projector and run again",
            live.display()
        )
    })?;
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        rebuilt,
        rustix::fs::CWD,
        live,
        rustix::fs::RenameFlags::EXCHANGE,
    )?;
    let previous = sibling(live, ".previous");
    if previous.exists() {
        std::fs::remove_dir_all(&previous)?;
    }
    std::fs::rename(rebuilt, &previous)?;
    Ok(())
}
