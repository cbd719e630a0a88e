//! Signed checkpoints for auditors (ADR 0036): export what the notary signed, prove an
//! event's inclusion, and verify the store against checkpoints the auditor kept.
//!
//! Verification trusts nothing the database says about the tree: it recomputes every
//! leaf from the events as they are stored now, in commit order, and compares the roots
//! with the kept checkpoints, whose signatures it checks with the auditor's public key.
//! The stored tree is read only to name what changed and to check that the kept
//! checkpoints are consistent with one another.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chronicle_eventstore::chain::{ChainedEvent, SELECT_CHAINED, leaf_entry};
use chronicle_eventstore::merkle::{Frontier, Hash, leaf_hash, verify_consistency};
use chronicle_eventstore::notary::checkpoint::{PublicKey, SignedCheckpoint};
use chronicle_eventstore::notary::proofs;
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::PgPool;

use crate::fold::Kind;

/// Writes every stored checkpoint after `after` leaves as JSON lines; returns how many.
pub async fn export(pool: &PgPool, after: u64, out: &mut impl Write) -> anyhow::Result<u64> {
    let mut connection = pool.acquire().await?;
    let mut after = after;
    let mut count = 0;
    loop {
        let page = proofs::checkpoints_after(&mut connection, after, 1_000).await?;
        let Some(last) = page.last() else {
            return Ok(count);
        };
        after = last.checkpoint.tree_size;
        for signed in &page {
            serde_json::to_writer(&mut *out, signed)?;
            writeln!(out)?;
            count += 1;
        }
    }
}

/// Reads an export: one signed checkpoint a line (blank lines skipped).
pub fn read_kept(text: &str) -> anyhow::Result<Vec<SignedCheckpoint>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("checkpoints file, line {}: {e}", n + 1))
        })
        .collect()
}

/// An inclusion proof as `prove` prints it (the format `tests/python/verify_proof.py`
/// checks; docs/audit.md describes it).
#[derive(Debug, Serialize)]
pub struct InclusionProof {
    pub format: &'static str,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub leaf_index: u64,
    /// Base64 of the leaf's entry, recomputed from the event as stored now.
    pub leaf_entry: String,
    pub tree_size: u64,
    /// Hex, nearest the leaf first.
    pub inclusion_path: Vec<String>,
    pub checkpoint: SignedCheckpoint,
}

/// The inclusion proof of one event in the latest stored checkpoint that covers it (or
/// the checkpoint of `tree_size` leaves).
pub async fn prove(
    pool: &PgPool,
    kind: Kind,
    id: &str,
    sequence: i64,
    tree_size: Option<u64>,
) -> anyhow::Result<InclusionProof> {
    let mut connection = pool.acquire().await?;
    let event: ChainedEvent = sqlx::query_as(&format!(
        "{SELECT_CHAINED} WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3"
    ))
    .bind(kind.name())
    .bind(id)
    .bind(sequence)
    .fetch_optional(&mut *connection)
    .await?
    .ok_or_else(|| anyhow::anyhow!("no {} {id} event {sequence}", kind.name()))?;
    let (leaf_index, _) = proofs::leaf_of(&mut connection, kind.name(), id, sequence).await?;
    let checkpoint = match tree_size {
        Some(size) => proofs::checkpoints_after(&mut connection, size.saturating_sub(1), 1)
            .await?
            .into_iter()
            .find(|c| c.checkpoint.tree_size == size),
        None => proofs::latest_checkpoint(&mut connection).await?,
    }
    .filter(|c| c.checkpoint.tree_size > leaf_index)
    .ok_or_else(|| {
        anyhow::anyhow!(
            "no signed checkpoint covers leaf {leaf_index} yet (the notary signs every \
             CHRONICLE_CHECKPOINT_EVERY events or CHRONICLE_CHECKPOINT_SECONDS)"
        )
    })?;
    let size = checkpoint.checkpoint.tree_size;
    let path = proofs::inclusion_proof(&mut connection, leaf_index, size).await?;
    Ok(InclusionProof {
        format: "chronicle inclusion proof v1",
        aggregate_type: event.aggregate_type.clone(),
        aggregate_id: event.aggregate_id.clone(),
        sequence,
        leaf_index,
        leaf_entry: BASE64.encode(leaf_entry(&event)),
        tree_size: size,
        inclusion_path: path.iter().map(hex::encode).collect(),
        checkpoint,
    })
}

/// What `verify --checkpoints` found, one line each.
#[derive(Debug, Default)]
pub struct Findings {
    /// Checkpoints checked (signature and root).
    pub checked: usize,
    /// Leaves recomputed from the store.
    pub leaves: u64,
    pub problems: Vec<String>,
}

/// One event as the recomputation reads it: what its leaf covers, and where the stored
/// tree has it.
#[derive(sqlx::FromRow)]
struct Recomputed {
    #[sqlx(flatten)]
    event: ChainedEvent,
    global_position: i64,
    stored_index: Option<i64>,
    stored_hash: Option<Vec<u8>>,
}

/// Checks `kept` checkpoints: each signature with `public`, each root against the tree
/// recomputed from the events as stored now, and successive checkpoints' consistency.
pub async fn verify(
    pool: &PgPool,
    public: &PublicKey,
    mut kept: Vec<SignedCheckpoint>,
) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let mut trusted: Vec<SignedCheckpoint> = Vec::with_capacity(kept.len());
    kept.sort_by_key(|c| c.checkpoint.tree_size);
    for signed in kept {
        if !public.verifies(&signed) {
            findings.problems.push(format!(
                "FORGED checkpoint of {} leaves (key id {}): its signature does not verify with the given public key",
                signed.checkpoint.tree_size, signed.key_id
            ));
            continue;
        }
        match trusted.last() {
            Some(last) if last.checkpoint.tree_size == signed.checkpoint.tree_size => {
                if last.checkpoint.root_hash != signed.checkpoint.root_hash {
                    findings.problems.push(format!(
                        "CONFLICTING checkpoints of {} leaves: two signed roots for one size (the log was forked)",
                        signed.checkpoint.tree_size
                    ));
                }
            }
            _ => trusted.push(signed),
        }
    }
    findings.checked = trusted.len();
    let Some(largest) = trusted.last().map(|c| c.checkpoint.tree_size) else {
        return Ok(findings);
    };

    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // The notary's order and rule: only events no open transaction can precede.
    let query = "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
                (extract(epoch FROM e.recorded_at) * 1000000)::bigint AS recorded_micros, \
                e.payload::text AS payload, e.metadata::text AS metadata, e.hash, e.global_position, \
                l.leaf_index AS stored_index, n.hash AS stored_hash \
           FROM events e \
           LEFT JOIN merkle_leaves l ON l.global_position = e.global_position \
           LEFT JOIN merkle_nodes n ON n.level = 0 AND n.node_index = l.leaf_index \
          WHERE e.tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
          ORDER BY e.tx_id, e.global_position LIMIT $1";
    let mut frontier = Frontier::new();
    let mut next = trusted.iter().peekable();
    let mut first_divergence: Option<String> = None;
    let mut first_mismatch = None;
    {
        let mut rows = sqlx::query_as::<_, Recomputed>(query)
            .bind(largest as i64)
            .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let index = frontier.size();
            let leaf = leaf_hash(&leaf_entry(&row.event));
            frontier.push(leaf);
            if first_divergence.is_none() {
                first_divergence = divergence(index, &leaf, &row);
            }
            while let Some(signed) = next.next_if(|c| c.checkpoint.tree_size == frontier.size()) {
                if first_mismatch.is_none()
                    && signed.checkpoint.root_bytes() != Some(frontier.root())
                {
                    first_mismatch = Some(signed.checkpoint.tree_size);
                }
            }
        }
    }
    findings.leaves = frontier.size();
    if let Some(size) = first_mismatch {
        findings.problems.push(format!(
            "MISMATCH checkpoint of {size} leaves: the events as stored now give another root (first checkpoint that no longer matches)"
        ));
    }
    if let Some(signed) = next.next() {
        findings.problems.push(format!(
            "MISSING events: the checkpoint of {} leaves is larger than the {} committed events the store holds",
            signed.checkpoint.tree_size,
            frontier.size()
        ));
    }
    if first_mismatch.is_some() || frontier.size() < largest {
        let named = match first_divergence {
            Some(found) => found,
            None if frontier.size() < largest => name_stored_leaf(&mut tx, frontier.size())
                .await?
                .unwrap_or_else(|| {
                    format!(
                        "leaf {}: no stored leaf names the missing event",
                        frontier.size()
                    )
                }),
            None => "the stored tree was rewritten as well: the first changed event cannot be \
                     named from it"
                .to_owned(),
        };
        findings.problems.push(format!("CHANGED {named}"));
    }
    // Successive kept checkpoints must describe one growing log.
    for pair in trusted.windows(2) {
        let (first, second) = (&pair[0].checkpoint, &pair[1].checkpoint);
        let consistent = match (first.root_bytes(), second.root_bytes()) {
            (Some(a), Some(b)) => {
                match proofs::consistency_proof(&mut tx, first.tree_size, second.tree_size).await {
                    Ok(path) => {
                        verify_consistency(first.tree_size, second.tree_size, &a, &b, &path)
                    }
                    Err(_) => false,
                }
            }
            _ => false,
        };
        if !consistent {
            findings.problems.push(format!(
                "INCONSISTENT checkpoints of {} and {} leaves: the stored tree cannot prove the second extends the first",
                first.tree_size, second.tree_size
            ));
        }
    }
    tx.rollback().await.ok();
    Ok(findings)
}

/// Where the event recomputed as leaf `index` differs from the stored tree, named.
fn divergence(index: u64, leaf: &Hash, row: &Recomputed) -> Option<String> {
    let name = format!(
        "{} {} event {} (global position {})",
        row.event.aggregate_type, row.event.aggregate_id, row.event.sequence, row.global_position
    );
    match (row.stored_index, row.stored_hash.as_deref()) {
        (Some(stored), Some(hash)) if stored as u64 == index && hash == leaf.as_slice() => None,
        (Some(stored), Some(_)) if stored as u64 == index => Some(format!(
            "leaf {index}: {name} was edited after it was notarised"
        )),
        (Some(stored), _) => Some(format!(
            "leaf {index}: {name} was leaf {stored} when notarised (an event before it was removed, inserted or moved)"
        )),
        (None, _) => Some(format!(
            "leaf {index}: {name} was never notarised at this place (inserted, or its position changed)"
        )),
    }
}

/// The stored leaf `index`'s event, named (for a store that lost its last events).
async fn name_stored_leaf(
    connection: &mut sqlx::PgConnection,
    index: u64,
) -> anyhow::Result<Option<String>> {
    let row: Option<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, global_position FROM merkle_leaves WHERE leaf_index = $1",
    )
    .bind(index as i64)
    .fetch_optional(connection)
    .await?;
    Ok(row.map(|(t, i, s, p)| {
        format!("leaf {index}: {t} {i} event {s} (global position {p}) was removed")
    }))
}
