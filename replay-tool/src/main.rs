//! `chronicle-replay`: the auditor's CLI. Exits 0 on success, 1 when `verify` or `diff`
//! found something, 2 on a usage or configuration error.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use chronicle_eventstore::envelope::StoredEvent;
use chronicle_replay::export::{Format, Selection};
use chronicle_replay::fold::Kind;
use chronicle_replay::history::Until;
use chronicle_replay::{checkpoints, db, diff, export, history, personal, rebuild, verify};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "chronicle-replay",
    version,
    about = "Audit Chronicle's event store: history, state, verification, rebuild, diff, export"
)]
struct Cli {
    /// The event store.
    #[arg(
        long,
        env = "CHRONICLE_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chronicle",
        hide_env_values = true
    )]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Projection {
    ReadModels,
    Search,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Subcommand)]
enum Command {
    /// Every event of a stream with its metadata and the aggregate's state after it.
    History {
        /// account, booking or payment.
        aggregate_type: String,
        id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The aggregate rebuilt by the domain's own `apply`, now or as of a time or version.
    State {
        aggregate_type: String,
        id: String,
        /// Transaction time: only events recorded at or before it.
        #[arg(long, conflicts_with = "version")]
        as_of: Option<DateTime<Utc>>,
        /// Only events up to this sequence.
        #[arg(long)]
        version: Option<i64>,
    },
    /// Recompute every hash chain and check sequences and stream heads; with
    /// `--checkpoints`, also check the whole log against signed checkpoints kept outside
    /// the database.
    Verify {
        #[arg(long = "type")]
        aggregate_type: Option<String>,
        #[arg(long, requires = "aggregate_type")]
        id: Option<String>,
        /// Checkpoints the auditor kept (`checkpoints export`), one JSON object a line.
        #[arg(long, requires = "public_key", conflicts_with_all = ["aggregate_type", "id"])]
        checkpoints: Option<PathBuf>,
        /// The notary's public key: base64 of its 32 bytes, or a file holding that.
        #[arg(long, requires = "checkpoints")]
        public_key: Option<String>,
    },
    /// An inclusion proof of one event in a signed checkpoint, as JSON (docs/audit.md).
    Prove {
        aggregate_type: String,
        id: String,
        sequence: i64,
        /// The checkpoint to prove against (its tree size); the latest by default.
        #[arg(long)]
        tree_size: Option<u64>,
    },
    /// Signed checkpoints of the log.
    Checkpoints {
        #[command(subcommand)]
        command: CheckpointsCommand,
    },
    /// Rebuild a read model from the event store and swap it in.
    Rebuild {
        projection: Projection,
        /// Discard an interrupted rebuild instead of resuming it.
        #[arg(long)]
        fresh: bool,
        /// The search index (for `search`).
        #[arg(long, env = "CHRONICLE_SEARCH_DIR")]
        search_dir: Option<PathBuf>,
    },
    /// Replay the event store in memory and compare it with a live read model.
    Diff {
        projection: Projection,
        #[arg(long, env = "CHRONICLE_SEARCH_DIR")]
        search_dir: Option<PathBuf>,
    },
    /// Re-wrap every data subject's key still under an older master key with the
    /// current one (the first in CHRONICLE_MASTER_KEY(_FILE)); events are not touched.
    RotateMasterKey {
        /// Keys re-wrapped per round trip.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
    /// Stream events out as JSON lines or CSV.
    Export {
        #[arg(long = "type")]
        aggregate_type: Option<String>,
        /// Recorded at or after.
        #[arg(long)]
        from: Option<DateTime<Utc>>,
        /// Recorded before.
        #[arg(long)]
        to: Option<DateTime<Utc>>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Print count, rate and peak memory to stderr at the end.
        #[arg(long)]
        stats: bool,
        /// Open sealed personal fields (plain text while the data subject's key exists,
        /// erased after). Without it events are written as stored: ciphertext.
        #[arg(long)]
        open: bool,
    },
}

#[derive(Subcommand)]
enum CheckpointsCommand {
    /// Every stored checkpoint as JSON lines: what an auditor keeps.
    Export {
        /// Only checkpoints of trees larger than this.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

fn kind(text: &str) -> anyhow::Result<Kind> {
    Kind::parse(text).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown aggregate type {text:?}; use account, booking, payment or subscription"
        )
    })
}

fn search_dir(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        let data = std::env::var("CHRONICLE_DATA_DIR").unwrap_or_else(|_| "./data".into());
        PathBuf::from(data).join("search")
    })
}

/// Peak resident memory of this process, from /proc (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("chronicle-replay: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs one subcommand; the exit code says whether it found something.
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let url = cli.database_url;
    let interactive = std::io::stderr().is_terminal();
    match cli.command {
        Command::History {
            aggregate_type,
            id,
            json,
        } => print_history(&url, &aggregate_type, &id, json).await,
        Command::State {
            aggregate_type,
            id,
            as_of,
            version,
        } => print_state(&url, &aggregate_type, &id, as_of, version).await,
        Command::Verify {
            aggregate_type,
            id,
            checkpoints,
            public_key,
        } => {
            let mut problems =
                verify_chains(&url, aggregate_type.as_deref(), id.as_deref()).await?;
            if let (Some(file), Some(key)) = (checkpoints, public_key) {
                problems += verify_checkpoints(&url, &file, &key).await?;
            }
            Ok(exit_code(problems))
        }
        Command::Prove {
            aggregate_type,
            id,
            sequence,
            tree_size,
        } => {
            let pool = db::read_only(&url).await?;
            let proof =
                checkpoints::prove(&pool, kind(&aggregate_type)?, &id, sequence, tree_size).await?;
            println!("{}", serde_json::to_string_pretty(&proof)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Checkpoints {
            command: CheckpointsCommand::Export { after },
        } => {
            let pool = db::read_only(&url).await?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let count = checkpoints::export(&pool, after, &mut out).await?;
            out.flush()?;
            eprintln!("exported {count} checkpoints");
            Ok(ExitCode::SUCCESS)
        }
        Command::Rebuild {
            projection,
            fresh,
            search_dir: dir,
        } => rebuild_projection(&url, projection, fresh, dir, interactive).await,
        Command::Diff {
            projection,
            search_dir: dir,
        } => diff_projection(&url, projection, dir, interactive).await,
        Command::RotateMasterKey { batch } => rotate_master_key(&url, batch).await,
        Command::Export {
            aggregate_type,
            from,
            to,
            format,
            stats,
            open,
        } => {
            let selection = (aggregate_type.as_deref(), from, to);
            export_events(&url, selection, format, stats, open).await
        }
    }
}

/// Exit 0 when nothing was found, 1 when `problems` were.
fn exit_code(problems: usize) -> ExitCode {
    if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Every event of one stream, read-only, with the stream's kind.
async fn load_stream(
    url: &str,
    aggregate_type: &str,
    id: &str,
) -> anyhow::Result<(Kind, Vec<StoredEvent>)> {
    let pool = db::read_only(url).await?;
    let kind = kind(aggregate_type)?;
    let mut events = history::stream(&pool, kind, id).await?;
    personal::open_events(&pool, &personal::master_keys()?, &mut events).await?;
    Ok((kind, events))
}

/// `history`: prints every event of a stream with the state after it.
async fn print_history(
    url: &str,
    aggregate_type: &str,
    id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (kind, events) = load_stream(url, aggregate_type, id).await?;
    if events.is_empty() {
        anyhow::bail!("no {} with id {id}", kind.name());
    }
    let lines = history::history(kind, &events)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &lines)?;
        writeln!(out)?;
    } else {
        history::print_table(&lines, &mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `state`: prints the aggregate as of a time or version, or now.
async fn print_state(
    url: &str,
    aggregate_type: &str,
    id: &str,
    as_of: Option<DateTime<Utc>>,
    version: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let (kind, events) = load_stream(url, aggregate_type, id).await?;
    let until = match (as_of, version) {
        (Some(at), _) => Until::AsOf(at),
        (_, Some(v)) => Until::Version(v),
        _ => Until::Now,
    };
    match history::state(kind, &events, until)? {
        Some((version, state)) => {
            let body = serde_json::json!({ "aggregate_type": kind.name(), "id": id, "version": version, "state": state });
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        None => anyhow::bail!("no {} with id {id} at that point", kind.name()),
    }
    Ok(ExitCode::SUCCESS)
}

/// `verify`: recomputes the hash chains and prints every break; returns how many.
async fn verify_chains(
    url: &str,
    aggregate_type: Option<&str>,
    id: Option<&str>,
) -> anyhow::Result<usize> {
    let pool = db::read_only(url).await?;
    let kind = aggregate_type.map(kind).transpose()?;
    let started = std::time::Instant::now();
    let report = verify::verify(&pool, kind, id).await?;
    for ((t, i), found) in &report.breaks {
        println!("BROKEN {t} {i}: {found}");
    }
    eprintln!(
        "verified {} streams, {} events in {:.1} s: {} problem(s)",
        report.streams,
        report.events,
        started.elapsed().as_secs_f64(),
        report.breaks.len()
    );
    Ok(report.breaks.len())
}

/// `verify --checkpoints`: checks the log against the auditor's kept checkpoints and
/// prints every problem; returns how many.
async fn verify_checkpoints(url: &str, file: &std::path::Path, key: &str) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let kept = checkpoints::read_kept(&text)?;
    let key_text = match std::fs::read_to_string(key) {
        Ok(contents) => contents,
        Err(_) => key.to_owned(),
    };
    let public = chronicle_eventstore::notary::checkpoint::PublicKey::from_base64(&key_text)?;
    let pool = db::read_only(url).await?;
    let started = std::time::Instant::now();
    let findings = checkpoints::verify(&pool, &public, kept).await?;
    for problem in &findings.problems {
        println!("{problem}");
    }
    eprintln!(
        "checked {} signed checkpoints against {} leaves recomputed in {:.1} s: {} problem(s)",
        findings.checked,
        findings.leaves,
        started.elapsed().as_secs_f64(),
        findings.problems.len()
    );
    Ok(findings.problems.len())
}

/// `rebuild`: rebuilds a projection from the store and swaps it in.
async fn rebuild_projection(
    url: &str,
    projection: Projection,
    fresh: bool,
    dir: Option<PathBuf>,
    interactive: bool,
) -> anyhow::Result<ExitCode> {
    let pool = db::writable(url).await?;
    let keys = std::sync::Arc::new(personal::master_keys()?);
    let summary = match projection {
        Projection::ReadModels => rebuild::read_models(&pool, fresh, interactive).await?,
        Projection::Search => {
            rebuild::search(&pool, keys, &search_dir(dir), fresh, interactive).await?
        }
    };
    eprintln!(
        "rebuilt from {} events in {:.1} s: {:.0} events/s{}",
        summary.events,
        summary.seconds,
        summary.rate(),
        if summary.resumed { " (resumed)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `diff`: replays the store and prints every discrepancy with a live projection.
async fn diff_projection(
    url: &str,
    projection: Projection,
    dir: Option<PathBuf>,
    interactive: bool,
) -> anyhow::Result<ExitCode> {
    let pool = db::read_only(url).await?;
    let started = std::time::Instant::now();
    // The store and the read models from one snapshot: read models the projector
    // changes meanwhile are not compared against a store read earlier.
    let mut snapshot = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *snapshot)
        .await?;
    let keys = personal::master_keys()?;
    let expected = diff::replay_store(&mut snapshot, &keys, interactive).await?;
    let found = match projection {
        Projection::ReadModels => diff::diff_read_models(&mut snapshot, &expected).await?,
        Projection::Search => {
            let index = chronicle_projections::search::SearchIndex::open(&search_dir(dir))?;
            diff::diff_search(&index, &expected)?
        }
    };
    for discrepancy in &found {
        println!("DIFF {discrepancy}");
    }
    eprintln!(
        "replayed {} events in {:.1} s: {} discrepanc{}",
        expected.events,
        started.elapsed().as_secs_f64(),
        found.len(),
        if found.len() == 1 { "y" } else { "ies" }
    );
    Ok(exit_code(found.len()))
}

/// `rotate-master-key`: re-wraps the data keys under the current master key, in
/// batches, each row once; prints how many.
async fn rotate_master_key(url: &str, batch: i64) -> anyhow::Result<ExitCode> {
    let keys = std::sync::Arc::new(personal::master_keys()?);
    let current = keys.current_id().to_owned();
    let pool = db::writable(url).await?;
    let store = chronicle_eventstore::personal::KeyStore::new(pool, keys);
    let mut total = 0;
    loop {
        let done = store.rewrap(batch.max(1)).await?;
        total += done;
        if done == 0 {
            break;
        }
    }
    eprintln!("re-wrapped {total} data keys under master key {current:?}");
    Ok(ExitCode::SUCCESS)
}

/// `export`: streams the selected events to stdout.
async fn export_events(
    url: &str,
    (aggregate_type, from, to): (Option<&str>, Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    format: ExportFormat,
    stats: bool,
    open: bool,
) -> anyhow::Result<ExitCode> {
    let pool = db::read_only(url).await?;
    let keys = open.then(personal::master_keys).transpose()?;
    let selection = Selection {
        kind: aggregate_type.map(kind).transpose()?,
        from,
        to,
    };
    let format = match format {
        ExportFormat::Jsonl => Format::JsonLines,
        ExportFormat::Csv => Format::Csv,
    };
    let started = std::time::Instant::now();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let count = export::export(&pool, &selection, format, &mut out, keys.as_ref()).await?;
    if stats {
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "exported {count} events in {seconds:.1} s ({:.0} events/s), peak RSS {} MiB",
            count as f64 / seconds.max(1e-9),
            peak_rss_kib().map(|k| k / 1024).unwrap_or(0)
        );
    }
    Ok(ExitCode::SUCCESS)
}
