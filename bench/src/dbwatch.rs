//! What the database and the machine's processes did over a window, for the soak: CPU
//! by process, WAL written (and how much of it was full-page images), blocks read from
//! outside shared buffers, checkpoints, and, when `pg_stat_statements` is loaded, the
//! statements that took the time.

use std::collections::BTreeMap;

use sqlx::PgPool;

/// Cumulative counters at one instant; the difference of two is a window.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub wal_bytes: f64,
    pub wal_fpi: f64,
    pub checkpoints: f64,
    /// Blocks of user tables and indexes read into shared buffers (from the OS).
    pub blocks_read: f64,
    /// Blocks of user tables and indexes found in shared buffers.
    pub blocks_hit: f64,
    /// CPU seconds by process (`chronicle`, `postgres`, `tansu`): pid to name and
    /// seconds, of the processes alive now.
    pub cpu: BTreeMap<u32, (&'static str, f64)>,
}

/// The process names whose CPU is counted.
const WATCHED: [&str; 3] = ["chronicle", "postgres", "tansu"];

impl Counters {
    pub async fn take(pool: &PgPool) -> Self {
        let (wal_bytes, wal_fpi): (f64, f64) =
            sqlx::query_as("SELECT wal_bytes::float8, wal_fpi::float8 FROM pg_stat_wal")
                .fetch_one(pool)
                .await
                .unwrap_or_default();
        let checkpoints: f64 = sqlx::query_scalar(
            "SELECT (checkpoints_timed + checkpoints_req)::float8 FROM pg_stat_bgwriter",
        )
        .fetch_one(pool)
        .await
        .unwrap_or_default();
        let (blocks_read, blocks_hit): (f64, f64) = sqlx::query_as(
            "SELECT coalesce(sum(coalesce(heap_blks_read, 0) + coalesce(idx_blks_read, 0)), 0)::float8, \
                    coalesce(sum(coalesce(heap_blks_hit, 0) + coalesce(idx_blks_hit, 0)), 0)::float8 \
               FROM pg_statio_user_tables",
        )
        .fetch_one(pool)
        .await
        .unwrap_or_default();
        Self {
            wal_bytes,
            wal_fpi,
            checkpoints,
            blocks_read,
            blocks_hit,
            cpu: cpu_seconds(),
        }
    }

    /// `self - earlier`, per second of `seconds`.
    pub fn rates_since(&self, earlier: &Self, seconds: f64) -> Rates {
        let per = |now: f64, then: f64| (now - then).max(0.0) / seconds.max(1e-9);
        // Per process: what it used since the earlier sample, or all it used when it
        // started since (a backend that ended in between is lost, a small undercount).
        let cpu = |name: &str| {
            let used: f64 = self
                .cpu
                .iter()
                .filter(|(_, (n, _))| *n == name)
                .map(|(pid, (_, now))| match earlier.cpu.get(pid) {
                    Some((_, then)) => (now - then).max(0.0),
                    None => *now,
                })
                .sum();
            used / seconds.max(1e-9) * 100.0
        };
        let read = self.blocks_read - earlier.blocks_read;
        let hit = self.blocks_hit - earlier.blocks_hit;
        Rates {
            wal_mib_per_s: per(self.wal_bytes, earlier.wal_bytes) / (1024.0 * 1024.0),
            fpi_per_s: per(self.wal_fpi, earlier.wal_fpi),
            checkpoints: (self.checkpoints - earlier.checkpoints).max(0.0),
            reads_per_s: per(self.blocks_read, earlier.blocks_read),
            hit_percent: if read + hit > 0.0 {
                100.0 * hit / (read + hit)
            } else {
                100.0
            },
            chronicle_cpu: cpu("chronicle"),
            postgres_cpu: cpu("postgres"),
            tansu_cpu: cpu("tansu"),
        }
    }
}

/// One window's rates.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rates {
    pub wal_mib_per_s: f64,
    pub fpi_per_s: f64,
    pub checkpoints: f64,
    pub reads_per_s: f64,
    pub hit_percent: f64,
    /// Percent of one core.
    pub chronicle_cpu: f64,
    pub postgres_cpu: f64,
    pub tansu_cpu: f64,
}

/// CPU seconds (user and system) of each live process named in [`WATCHED`], from
/// `/proc` (Linux; empty elsewhere).
fn cpu_seconds() -> BTreeMap<u32, (&'static str, f64)> {
    let mut seconds = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return seconds;
    };
    // `/proc` counts in USER_HZ, 100 on every Linux this runs on.
    const TICKS_PER_SECOND: f64 = 100.0;
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let Some(watched) = WATCHED.iter().find(|w| name.starts_with(*w)) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            seconds.insert(pid, (*watched, (user + system) / TICKS_PER_SECOND));
        }
    }
    seconds
}

/// One statement's totals from `pg_stat_statements`.
#[derive(Clone, Debug)]
pub struct Statement {
    pub query: String,
    pub calls: f64,
    pub total_ms: f64,
    pub blocks_read: f64,
}

/// The statements of this database by `queryid`, or `None` when `pg_stat_statements`
/// is not loaded (it needs `shared_preload_libraries`; see docs/soak.md).
pub async fn statements(pool: &PgPool) -> Option<BTreeMap<i64, Statement>> {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(pool)
        .await
        .ok()?;
    let rows: Vec<(i64, String, f64, f64, f64)> = sqlx::query_as(
        "SELECT queryid, query, calls::float8, total_exec_time, \
                (shared_blks_read + local_blks_read)::float8 \
           FROM pg_stat_statements \
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
            AND queryid IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    Some(
        rows.into_iter()
            .map(|(id, query, calls, total_ms, blocks_read)| {
                (
                    id,
                    Statement {
                        query,
                        calls,
                        total_ms,
                        blocks_read,
                    },
                )
            })
            .collect(),
    )
}

/// What each statement did between two snapshots.
pub fn statements_between(
    earlier: &BTreeMap<i64, Statement>,
    later: &BTreeMap<i64, Statement>,
) -> BTreeMap<i64, Statement> {
    later
        .iter()
        .map(|(id, now)| {
            let then = earlier.get(id);
            let minus = |f: fn(&Statement) -> f64| f(now) - then.map(f).unwrap_or(0.0);
            (
                *id,
                Statement {
                    query: now.query.clone(),
                    calls: minus(|s| s.calls),
                    total_ms: minus(|s| s.total_ms),
                    blocks_read: minus(|s| s.blocks_read),
                },
            )
        })
        .filter(|(_, s)| s.calls > 0.0)
        .collect()
}

/// When the server runs without autovacuum (`autovacuum = off`, as on the test machines),
/// does its work for the soak's database, as its defaults would: once a minute, `VACUUM`
/// every table whose dead rows passed 50 + 20% of its rows, or whose inserts since the
/// last vacuum passed 1,000 + 20% (what keeps an append-only table's visibility map
/// current), and `ANALYZE` every table whose changes since the last analyze passed 50 +
/// 10%; throttled like autovacuum (2 ms of sleep every 200 cost units). A service runs
/// for weeks on a server that vacuums; a soak without it measures a database no one runs.
/// Returns what it did, by table and kind; does nothing (and returns at once) when the
/// server's own autovacuum is on.
pub async fn autovacuum_stand_in(
    pool: PgPool,
    duration: std::time::Duration,
) -> BTreeMap<String, u32> {
    let mut done = BTreeMap::new();
    let on: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&pool)
        .await
        .unwrap_or_else(|_| "on".to_owned());
    if on == "on" {
        return done;
    }
    let started = std::time::Instant::now();
    // Throttled as autovacuum is by default: 2 ms of sleep every 200 cost units.
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("vacuum_cost_delay", "2ms"), ("vacuum_cost_limit", "200")]);
    let throttled = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    while started.elapsed() < duration {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        let due: Vec<(String, bool, bool)> = sqlx::query_as(
            "SELECT quote_ident(relname), \
                    n_dead_tup > 50 + 0.2 * n_live_tup \
                     OR n_ins_since_vacuum > 1000 + 0.2 * n_live_tup, \
                    n_mod_since_analyze > 50 + 0.1 * n_live_tup \
               FROM pg_stat_user_tables",
        )
        .fetch_all(&throttled)
        .await
        .unwrap_or_default();
        for (table, vacuum, analyze) in due {
            if started.elapsed() >= duration {
                break;
            }
            let (statement, kind) = match (vacuum, analyze) {
                (true, true) => (format!("VACUUM (ANALYZE) {table}"), "vacuum+analyze"),
                (true, false) => (format!("VACUUM {table}"), "vacuum"),
                (false, true) => (format!("ANALYZE {table}"), "analyze"),
                (false, false) => continue,
            };
            if sqlx::raw_sql(&statement).execute(&throttled).await.is_ok() {
                *done.entry(format!("{table} ({kind})")).or_default() += 1;
            }
        }
    }
    throttled.close().await;
    done
}
