//! `history` and `state`: one stream, event by event, through the domain's `apply`.

use std::io::Write;

use chronicle_eventstore::envelope::{STORED_COLUMNS, StoredEvent};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::fold::{Kind, Replayer};

/// One line of a stream's history.
#[derive(Debug, Serialize)]
pub struct HistoryLine {
    pub sequence: i64,
    pub global_position: i64,
    pub recorded_at: DateTime<Utc>,
    pub event_type: String,
    pub event_version: String,
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub payload: Value,
    /// The aggregate after this event.
    pub state: Value,
}

/// The events of a stream in sequence order.
pub async fn stream(pool: &PgPool, kind: Kind, id: &str) -> anyhow::Result<Vec<StoredEvent>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {STORED_COLUMNS} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence"
    ))
    .bind(kind.name())
    .bind(id)
    .fetch_all(pool)
    .await?)
}

/// Every event of a stream with the state after it.
pub fn history(kind: Kind, events: &[StoredEvent]) -> anyhow::Result<Vec<HistoryLine>> {
    let replayer = Replayer::default();
    let mut state = replayer.start(kind);
    let mut lines = Vec::with_capacity(events.len());
    for event in events {
        replayer
            .apply(&mut state, event)
            .map_err(anyhow::Error::msg)?;
        let metadata = |name: &str| {
            event
                .metadata
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        lines.push(HistoryLine {
            sequence: event.sequence,
            global_position: event.global_position,
            recorded_at: event.recorded_at,
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            actor: metadata("actor"),
            correlation_id: metadata("correlation_id"),
            causation_id: metadata("causation_id"),
            payload: event.upcast(replayer.upcasters()).payload,
            state: state.to_json(),
        });
    }
    Ok(lines)
}

/// Prints a history as a table: one line per event, the state after it below.
pub fn print_table(lines: &[HistoryLine], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>4}  {:<27}  {:<20}  {:<3}  {:<24}  {:<36}  {:<36}",
        "seq", "recorded_at", "event", "v", "actor", "correlation", "causation"
    )?;
    for line in lines {
        writeln!(
            out,
            "{:>4}  {:<27}  {:<20}  {:<3}  {:<24}  {:<36}  {:<36}",
            line.sequence,
            line.recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            line.event_type,
            line.event_version,
            line.actor.as_deref().unwrap_or("-"),
            line.correlation_id.as_deref().unwrap_or("-"),
            line.causation_id.as_deref().unwrap_or("-"),
        )?;
        writeln!(out, "      state: {}", line.state)?;
    }
    Ok(())
}

/// Which prefix of a stream to replay.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// Everything.
    Now,
    /// Events recorded at or before this transaction time.
    AsOf(DateTime<Utc>),
    /// Events up to this sequence.
    Version(i64),
}

/// The aggregate rebuilt from a prefix of its stream; `None` when nothing of it existed.
pub fn state(
    kind: Kind,
    events: &[StoredEvent],
    until: Until,
) -> anyhow::Result<Option<(u64, Value)>> {
    let replayer = Replayer::default();
    let mut state = replayer.start(kind);
    let mut any = false;
    for event in events {
        let included = match until {
            Until::Now => true,
            Until::AsOf(at) => event.recorded_at <= at,
            Until::Version(version) => event.sequence <= version,
        };
        if !included {
            break;
        }
        replayer
            .apply(&mut state, event)
            .map_err(anyhow::Error::msg)?;
        any = true;
    }
    Ok(any.then(|| (state.version(), state.to_json())))
}
