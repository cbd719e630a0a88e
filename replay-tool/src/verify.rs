//! `verify`: recompute every hash chain, check sequences run 1, 2, 3… and that each
//! stream ends where its recorded head says. Streams through the store; memory grows
//! with the number of streams (their heads), not of events.

use std::collections::BTreeMap;

use chronicle_eventstore::chain::{ChainBreak, ChainCheck, ChainedEvent, SELECT_CHAINED};
use futures::TryStreamExt;
use sqlx::PgPool;

use crate::fold::Kind;

/// A stream, by type and id.
pub type StreamKey = (String, String);

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    pub streams: u64,
    pub events: u64,
    pub breaks: Vec<(StreamKey, ChainBreak)>,
}

/// Verifies every stream, or those of `kind`, or the one stream `kind`/`id`.
///
/// Heads and events are read in one read-only, repeatable-read transaction: on a store
/// that is being appended to, both come from the same snapshot, so a stream that grew
/// between the two reads is not mistaken for a truncated or forged one.
pub async fn verify(pool: &PgPool, kind: Option<Kind>, id: Option<&str>) -> anyhow::Result<Report> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let filter = "WHERE ($1::text IS NULL OR aggregate_type = $1) AND ($2::text IS NULL OR aggregate_id = $2)";
    let order = "ORDER BY aggregate_type COLLATE \"C\", aggregate_id COLLATE \"C\"";
    let kind_name = kind.map(Kind::name);
    let mut heads: BTreeMap<StreamKey, i64> = sqlx::query_as::<_, (String, String, i64)>(&format!(
        "SELECT aggregate_type, aggregate_id, last_sequence FROM stream_heads {filter} {order}"
    ))
    .bind(kind_name)
    .bind(id)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(t, i, s)| ((t, i), s))
    .collect();

    let mut report = Report::default();
    let query = format!("{SELECT_CHAINED} {filter} {order}, sequence");
    let mut rows = sqlx::query_as::<_, ChainedEvent>(&query)
        .bind(kind_name)
        .bind(id)
        .fetch(&mut *tx);
    let mut current: Option<(StreamKey, ChainCheck)> = None;
    while let Some(event) = rows.try_next().await? {
        report.events += 1;
        let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
        if current.as_ref().is_none_or(|(k, _)| *k != key) {
            if let Some((done, check)) = current.take() {
                finish(&mut report, &mut heads, done, check);
            }
            current = Some((key, ChainCheck::default()));
        }
        if let Some((_, check)) = current.as_mut() {
            check.push(&event);
        }
    }
    if let Some((done, check)) = current.take() {
        finish(&mut report, &mut heads, done, check);
    }
    // Heads whose streams have no event left at all.
    for (key, head_sequence) in heads {
        report.streams += 1;
        report.breaks.push((
            key,
            ChainBreak::HeadMismatch {
                head_sequence,
                last_sequence: 0,
            },
        ));
    }
    Ok(report)
}

fn finish(
    report: &mut Report,
    heads: &mut BTreeMap<StreamKey, i64>,
    key: StreamKey,
    check: ChainCheck,
) {
    report.streams += 1;
    let head = heads.remove(&key);
    for found in check.finish(head) {
        report.breaks.push((key.clone(), found));
    }
}
