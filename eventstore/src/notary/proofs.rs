//! Reading the stored tree: subtree hashes, inclusion and consistency proofs, and the
//! signed checkpoints (ADR 0036). What the database returns here is not trusted by an
//! auditor: a proof is checked against a checkpoint the auditor kept.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::PgConnection;

use super::checkpoint::{Checkpoint, PublicKey, SignedCheckpoint};
use crate::chain::{ChainedEvent, leaf_entry};
use crate::merkle::{
    Hash, LeafRange, Subtree, consistency_ranges, inclusion_ranges, leaf_hash, range_hash,
    verify_inclusion,
};

/// A proof needs a subtree the store does not have.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the tree has {have} leaves, fewer than the {want} asked about")]
    TooSmall { have: u64, want: u64 },
    #[error("subtree {0:?} is not stored")]
    Missing(Subtree),
    #[error("no event {0}")]
    NoSuchEvent(String),
}

/// The stored hashes of `subtrees`, in their order; those not stored are left out (a
/// caller that needs all compares the lengths).
pub async fn subtree_hashes(
    connection: &mut PgConnection,
    subtrees: &[Subtree],
) -> Result<Vec<Hash>, sqlx::Error> {
    let rows: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT n.hash FROM unnest($1::smallint[], $2::bigint[]) WITH ORDINALITY AS s(level, node_index, ord) \
           JOIN merkle_nodes n USING (level, node_index) ORDER BY s.ord",
    )
    .bind(subtrees.iter().map(|s| i16::from(s.level)).collect::<Vec<_>>())
    .bind(subtrees.iter().map(|s| s.index as i64).collect::<Vec<_>>())
    .fetch_all(connection)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|hash| Hash::try_from(hash.as_slice()).ok())
        .collect())
}

/// The hashes of `ranges`, each folded from its stored perfect subtrees.
pub async fn range_hashes(
    connection: &mut PgConnection,
    ranges: &[LeafRange],
) -> Result<Vec<Hash>, ProofError> {
    let mut wanted: Vec<Subtree> = ranges.iter().flat_map(LeafRange::subtrees).collect();
    wanted.sort();
    wanted.dedup();
    let rows: Vec<(i16, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT n.level, n.node_index, n.hash FROM unnest($1::smallint[], $2::bigint[]) AS s(level, node_index) \
           JOIN merkle_nodes n USING (level, node_index)",
    )
    .bind(wanted.iter().map(|s| i16::from(s.level)).collect::<Vec<_>>())
    .bind(wanted.iter().map(|s| s.index as i64).collect::<Vec<_>>())
    .fetch_all(connection)
    .await?;
    let stored: HashMap<Subtree, Hash> = rows
        .into_iter()
        .filter_map(|(level, index, hash)| {
            Some((
                Subtree {
                    level: u8::try_from(level).ok()?,
                    index: u64::try_from(index).ok()?,
                },
                Hash::try_from(hash.as_slice()).ok()?,
            ))
        })
        .collect();
    ranges
        .iter()
        .map(|range| {
            range_hash(*range, |s| {
                stored.get(&s).copied().ok_or(ProofError::Missing(s))
            })
        })
        .collect()
}

/// Leaves in the stored tree.
pub async fn stored_size(connection: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let size: Option<i64> = sqlx::query_scalar("SELECT tree_size FROM merkle_builder")
        .fetch_optional(connection)
        .await?;
    Ok(size.unwrap_or(0).max(0) as u64)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves.
pub async fn inclusion_proof(
    connection: &mut PgConnection,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    let have = stored_size(connection).await?;
    if size > have || index >= size {
        return Err(ProofError::TooSmall {
            have: have.min(size),
            want: index.max(size),
        });
    }
    range_hashes(connection, &inclusion_ranges(index, size)).await
}

/// The proof that the tree of `first` leaves is a prefix of the tree of `second`.
pub async fn consistency_proof(
    connection: &mut PgConnection,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, ProofError> {
    let have = stored_size(connection).await?;
    if second > have || first > second {
        return Err(ProofError::TooSmall { have, want: second });
    }
    range_hashes(connection, &consistency_ranges(first, second)).await
}

/// A leaf's index, and its hash as stored.
pub async fn leaf_of(
    connection: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
) -> Result<(u64, Hash), ProofError> {
    let row: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT l.leaf_index, n.hash FROM merkle_leaves l \
           JOIN merkle_nodes n ON n.level = 0 AND n.node_index = l.leaf_index \
          WHERE l.aggregate_type = $1 AND l.aggregate_id = $2 AND l.sequence = $3",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .fetch_optional(connection)
    .await?;
    let name = || format!("{aggregate_type}/{aggregate_id}/{sequence} in the tree");
    let (index, hash) = row.ok_or_else(|| ProofError::NoSuchEvent(name()))?;
    let hash = Hash::try_from(hash.as_slice()).map_err(|_| ProofError::NoSuchEvent(name()))?;
    Ok((index as u64, hash))
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    tree_size: i64,
    root: Vec<u8>,
    origin: String,
    signed_at: String,
    key_id: String,
    signature: String,
}

impl From<CheckpointRow> for SignedCheckpoint {
    fn from(row: CheckpointRow) -> Self {
        SignedCheckpoint {
            checkpoint: Checkpoint {
                origin: row.origin,
                tree_size: row.tree_size.max(0) as u64,
                root_hash: hex::encode(row.root),
                signed_at: row.signed_at,
            },
            key_id: row.key_id,
            signature: row.signature,
        }
    }
}

const SELECT_CHECKPOINTS: &str =
    "SELECT tree_size, root, origin, signed_at, key_id, signature FROM merkle_checkpoints";

/// Stored checkpoints of trees larger than `after` leaves, smallest first, at most
/// `limit`.
pub async fn checkpoints_after(
    connection: &mut PgConnection,
    after: u64,
    limit: i64,
) -> Result<Vec<SignedCheckpoint>, sqlx::Error> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(&format!(
        "{SELECT_CHECKPOINTS} WHERE tree_size > $1 ORDER BY tree_size LIMIT $2"
    ))
    .bind(after as i64)
    .bind(limit)
    .fetch_all(connection)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Stored checkpoints of trees smaller than `before` leaves, largest first, at most
/// `limit`.
pub async fn checkpoints_before(
    connection: &mut PgConnection,
    before: u64,
    limit: i64,
) -> Result<Vec<SignedCheckpoint>, sqlx::Error> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(&format!(
        "{SELECT_CHECKPOINTS} WHERE tree_size < $1 ORDER BY tree_size DESC LIMIT $2"
    ))
    .bind(i64::try_from(before).unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(connection)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Stored checkpoints the topic has not acknowledged, smallest first, at most `limit`.
pub async fn unpublished(
    connection: &mut PgConnection,
    limit: i64,
) -> Result<Vec<SignedCheckpoint>, sqlx::Error> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(&format!(
        "{SELECT_CHECKPOINTS} WHERE NOT published ORDER BY tree_size LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(connection)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// The latest signed checkpoint stored, if any.
pub async fn latest_checkpoint(
    connection: &mut PgConnection,
) -> Result<Option<SignedCheckpoint>, sqlx::Error> {
    Ok(checkpoints_before(connection, u64::MAX, 1).await?.pop())
}

/// One stream against the latest signed checkpoint.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StreamCoverage {
    pub tree_size: u64,
    pub signed_at: String,
    /// Whether the checkpoint's signature verifies with the server's public key.
    pub signature_valid: bool,
    /// The stream's events the checkpoint covers, each proven included as stored now.
    pub covered: u64,
    /// The stream's events signed later than this checkpoint (not covered yet).
    pub pending: u64,
    pub problems: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct StreamLeaf {
    #[sqlx(flatten)]
    event: ChainedEvent,
    leaf_index: Option<i64>,
}

/// Checks the events of one stream against the latest signed checkpoint: its signature
/// with `public`, and for every event it covers, the leaf recomputed from the event as
/// stored now and its inclusion proof under the signed root. `None` while nothing was
/// signed yet. This is the server checking itself: an auditor who does not trust the
/// database checks proofs against checkpoints it kept (`chronicle-replay prove`).
pub async fn stream_coverage(
    connection: &mut PgConnection,
    public: &PublicKey,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Option<StreamCoverage>, ProofError> {
    let Some(signed) = latest_checkpoint(connection).await? else {
        return Ok(None);
    };
    let size = signed.checkpoint.tree_size;
    let mut coverage = StreamCoverage {
        tree_size: size,
        signed_at: signed.checkpoint.signed_at.clone(),
        signature_valid: public.verifies(&signed),
        covered: 0,
        pending: 0,
        problems: Vec::new(),
    };
    if !coverage.signature_valid {
        coverage
            .problems
            .push("the checkpoint's signature does not verify with the server's key".into());
    }
    let Some(root) = signed.checkpoint.root_bytes() else {
        coverage
            .problems
            .push("the checkpoint's root is not a hash".into());
        return Ok(Some(coverage));
    };
    let leaves: Vec<StreamLeaf> = sqlx::query_as(
        "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
                (extract(epoch FROM e.recorded_at) * 1000000)::bigint AS recorded_micros, \
                e.payload::text AS payload, e.metadata::text AS metadata, e.hash, l.leaf_index \
           FROM events e LEFT JOIN merkle_leaves l ON l.global_position = e.global_position \
          WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 ORDER BY e.sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_all(&mut *connection)
    .await?;
    for leaf in leaves {
        let Some(index) = leaf.leaf_index.map(|i| i as u64).filter(|i| *i < size) else {
            coverage.pending += 1;
            continue;
        };
        let path = inclusion_proof(connection, index, size).await?;
        if verify_inclusion(
            &leaf_hash(&leaf_entry(&leaf.event)),
            index,
            size,
            &path,
            &root,
        ) {
            coverage.covered += 1;
        } else {
            coverage.problems.push(format!(
                "event {} (leaf {index}) is not in the signed tree as stored now",
                leaf.event.sequence
            ));
        }
    }
    Ok(Some(coverage))
}
