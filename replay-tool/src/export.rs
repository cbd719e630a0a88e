//! `export`: every event (optionally of one type, within a transaction-time range) as
//! JSON lines or CSV, streamed row by row: memory stays flat however large the store.

use std::io::Write;

use chronicle_eventstore::envelope::{STORED_COLUMNS, StoredEvent};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::json;
use sqlx::PgPool;

use chronicle_eventstore::personal::MasterKeys;
use chronicle_eventstore::personal::open::KeyRing;

use crate::fold::Kind;
use crate::personal::place_of;

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Csv,
}

/// What to export.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub kind: Option<Kind>,
    /// `recorded_at` at or after.
    pub from: Option<DateTime<Utc>>,
    /// `recorded_at` before.
    pub to: Option<DateTime<Utc>>,
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The CSV header: the columns in the order [`write_csv_line`] writes them.
const CSV_HEADER: &str = "global_position,aggregate_type,aggregate_id,sequence,event_type,event_version,recorded_at,payload,metadata";

/// Writes the selected events in global-position order; returns how many. With
/// `keys`, sealed personal fields are opened (plain text while the subject's key exists,
/// erased after); without, events are written as stored. One snapshot of the store and
/// of the keys.
pub async fn export(
    pool: &PgPool,
    selection: &Selection,
    format: Format,
    out: &mut impl Write,
    keys: Option<&MasterKeys>,
) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let ring = match keys {
        Some(keys) => Some(KeyRing::load(&mut tx, keys).await?),
        None => None,
    };
    let query = format!(
        "SELECT {STORED_COLUMNS} FROM events \
          WHERE ($1::text IS NULL OR aggregate_type = $1) \
            AND ($2::timestamptz IS NULL OR recorded_at >= $2) \
            AND ($3::timestamptz IS NULL OR recorded_at < $3) \
          ORDER BY global_position"
    );
    let mut rows = sqlx::query_as::<_, StoredEvent>(&query)
        .bind(selection.kind.map(Kind::name))
        .bind(selection.from)
        .bind(selection.to)
        .fetch(&mut *tx);
    if format == Format::Csv {
        writeln!(out, "{CSV_HEADER}")?;
    }
    let mut count = 0;
    while let Some(mut event) = rows.try_next().await? {
        count += 1;
        if let Some(ring) = &ring {
            let here = place_of(&event);
            ring.open(&mut event.payload, &here)?;
        }
        match format {
            Format::JsonLines => write_json_line(out, &event)?,
            Format::Csv => write_csv_line(out, &event)?,
        }
    }
    out.flush()?;
    Ok(count)
}

/// When the event was recorded, as RFC 3339 UTC with microseconds.
fn recorded_at(event: &StoredEvent) -> String {
    event
        .recorded_at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Writes one event as a JSON object on a line of its own.
fn write_json_line(out: &mut impl Write, event: &StoredEvent) -> anyhow::Result<()> {
    let line = json!({
        "global_position": event.global_position,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
        "event_type": event.event_type,
        "event_version": event.event_version,
        "recorded_at": recorded_at(event),
        "payload": event.payload,
        "metadata": event.metadata,
    });
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes one event as a CSV record, in the columns of [`CSV_HEADER`].
fn write_csv_line(out: &mut impl Write, event: &StoredEvent) -> std::io::Result<()> {
    writeln!(
        out,
        "{},{},{},{},{},{},{},{},{}",
        event.global_position,
        csv_field(&event.aggregate_type),
        csv_field(&event.aggregate_id),
        event.sequence,
        csv_field(&event.event_type),
        csv_field(&event.event_version),
        recorded_at(event),
        csv_field(&event.payload.to_string()),
        csv_field(&event.metadata.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(
            csv_field("{\"a\":1,\"b\":2}"),
            "\"{\"\"a\"\":1,\"\"b\"\":2}\""
        );
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
    }
}
