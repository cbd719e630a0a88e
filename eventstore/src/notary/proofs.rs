//! Reading the stored tree: subtree hashes, inclusion and consistency proofs, and the
//! signed checkpoints (ADR 0036). What the database returns here is not trusted by an
//! auditor: a proof is checked against a checkpoint the auditor kept.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::merkle::{Hash, LeafRange, Subtree, consistency_ranges, inclusion_ranges, range_hash};

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
