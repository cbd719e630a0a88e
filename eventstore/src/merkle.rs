//! A Merkle tree over the log, as Certificate Transparency defines it (RFC 9162, §2.1):
//! leaf hashes `SHA-256(0x00 || entry)`, interior nodes `SHA-256(0x01 || left || right)`,
//! the left subtree of `n` leaves always the largest power of two below `n`.
//!
//! Pure code, no storage. The tree builder keeps a [`Frontier`] (the roots of the perfect
//! subtrees the leaves so far make, at most 64) and stores every perfect subtree it
//! completes; a proof is then a list of leaf ranges ([`inclusion_ranges`],
//! [`consistency_ranges`]) whose hashes [`range_hash`] folds from those stored subtrees.
//! The verifiers follow RFC 9162's algorithms step by step, so that a third party's
//! verifier of that RFC checks our proofs unchanged.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The root of the empty tree: the hash of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The hash of a leaf whose entry is `entry`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(entry);
    hasher.finalize().into()
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// A perfect subtree: the `2^level` leaves from `index * 2^level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subtree {
    pub level: u8,
    pub index: u64,
}

/// Leaves `start..end` of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafRange {
    pub start: u64,
    pub end: u64,
}

impl LeafRange {
    /// The perfect subtrees whose hashes make this range's hash, left to right. Every
    /// range a proof names starts at a multiple of a power of two at least its length,
    /// so it splits as the tree does: the largest power of two below its length first.
    pub fn subtrees(&self) -> Vec<Subtree> {
        let mut subtrees = Vec::new();
        let mut start = self.start;
        while start < self.end {
            let len = self.end - start;
            // The largest power of two not above `len`, limited by `start`'s alignment.
            let mut level = 63 - len.leading_zeros() as u8;
            if start != 0 {
                level = level.min(start.trailing_zeros() as u8);
            }
            subtrees.push(Subtree {
                level,
                index: start >> level,
            });
            start += 1 << level;
        }
        subtrees
    }
}

/// The hash of `range`, folded from its perfect subtrees (`hash_of` gives each; see
/// [`LeafRange::subtrees`]) as the tree combines them: right to left.
pub fn range_hash<E>(
    range: LeafRange,
    mut hash_of: impl FnMut(Subtree) -> Result<Hash, E>,
) -> Result<Hash, E> {
    let mut folded: Option<Hash> = None;
    for subtree in range.subtrees().into_iter().rev() {
        let hash = hash_of(subtree)?;
        folded = Some(match folded {
            None => hash,
            Some(right) => node_hash(&hash, &right),
        });
    }
    Ok(folded.unwrap_or_else(empty_root))
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The ranges whose hashes make the inclusion proof of leaf `index` in the tree of `size`
/// leaves (RFC 9162, §2.1.3.1: `PATH(m, D[n])`), nearest the leaf first.
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<LeafRange> {
    assert!(index < size, "leaf {index} is not in a tree of {size}");
    let mut path = Vec::new();
    let (mut lo, mut hi, mut m) = (0, size, index);
    while hi - lo > 1 {
        let k = split(hi - lo);
        if m < k {
            path.push(LeafRange {
                start: lo + k,
                end: hi,
            });
            hi = lo + k;
        } else {
            path.push(LeafRange {
                start: lo,
                end: lo + k,
            });
            lo += k;
            m -= k;
        }
    }
    path.reverse();
    path
}

/// The ranges whose hashes make the proof that the tree of `first` leaves is a prefix of
/// the tree of `second` (RFC 9162, §2.1.4.1: `PROOF(m, D[n])`), in the RFC's order.
/// Empty when `first` is 0 or equal to `second`.
pub fn consistency_ranges(first: u64, second: u64) -> Vec<LeafRange> {
    assert!(
        first <= second,
        "a tree of {first} cannot extend to {second}"
    );
    let mut path = Vec::new();
    if first == 0 || first == second {
        return path;
    }
    // SUBPROOF(m, D[lo:hi], whole), unrolled.
    let (mut lo, mut hi, mut m, mut whole) = (0, second, first, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !whole {
                path.push(LeafRange { start: lo, end: hi });
            }
            break;
        }
        let k = split(n);
        if m <= k {
            path.push(LeafRange {
                start: lo + k,
                end: hi,
            });
            hi = lo + k;
        } else {
            path.push(LeafRange {
                start: lo,
                end: lo + k,
            });
            lo += k;
            m -= k;
            whole = false;
        }
    }
    path.reverse();
    path
}

/// RFC 9162, §2.1.3.2: does `path` prove leaf `index` (hash `leaf`) in the tree of `size`
/// leaves whose root is `root`?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// RFC 9162, §2.1.4.2: does `path` prove the tree of `first` leaves (root `first_root`) a
/// prefix of the tree of `second` leaves (root `second_root`)? A tree of 0 leaves is a
/// prefix of any; equal sizes need equal roots and an empty path.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    path: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == 0 {
        return *first_root == empty_root() && path.is_empty();
    }
    if first == second {
        return first_root == second_root && path.is_empty();
    }
    if path.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = path.to_vec();
    if first.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *first_root && sr == *second_root && sn == 0
}

/// The right edge of a growing tree: the roots of the perfect subtrees its leaves make,
/// largest (leftmost) first, one per set bit of its size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<(Subtree, Hash)>,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The perfect subtrees the frontier of a tree of `size` leaves holds, left to right
    /// (what to load to resume a tree).
    pub fn peaks_of(size: u64) -> Vec<Subtree> {
        LeafRange {
            start: 0,
            end: size,
        }
        .subtrees()
    }

    /// Resumes a tree of `size` leaves from its peaks' hashes (in [`Frontier::peaks_of`]
    /// order). `None` when the count does not match.
    pub fn resume(size: u64, hashes: &[Hash]) -> Option<Self> {
        let subtrees = Self::peaks_of(size);
        (subtrees.len() == hashes.len()).then(|| Self {
            size,
            peaks: subtrees.into_iter().zip(hashes.iter().copied()).collect(),
        })
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf; returns the perfect subtrees this completes, the leaf first, each
    /// with its hash (what a builder stores).
    pub fn push(&mut self, leaf: Hash) -> Vec<(Subtree, Hash)> {
        let mut completed = vec![(
            Subtree {
                level: 0,
                index: self.size,
            },
            leaf,
        )];
        self.peaks.push(completed[0]);
        while self.peaks.len() >= 2 {
            let (right, right_hash) = self.peaks[self.peaks.len() - 1];
            let (left, left_hash) = self.peaks[self.peaks.len() - 2];
            if left.level != right.level {
                break;
            }
            self.peaks.truncate(self.peaks.len() - 2);
            let merged = (
                Subtree {
                    level: left.level + 1,
                    index: left.index / 2,
                },
                node_hash(&left_hash, &right_hash),
            );
            self.peaks.push(merged);
            completed.push(merged);
        }
        self.size += 1;
        completed
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some((_, last)) = peaks.next() else {
            return empty_root();
        };
        peaks.fold(*last, |right, (_, left)| node_hash(left, &right))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// MTH of RFC 9162, §2.1.1, written as the RFC writes it.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// Every perfect subtree of the tree, as a builder would have stored them.
    fn stored(leaves: &[Hash]) -> HashMap<Subtree, Hash> {
        let mut frontier = Frontier::new();
        leaves
            .iter()
            .flat_map(|leaf| frontier.push(*leaf))
            .collect()
    }

    fn hashes(ranges: &[LeafRange], nodes: &HashMap<Subtree, Hash>) -> Vec<Hash> {
        ranges
            .iter()
            .map(|range| {
                range_hash::<()>(*range, |s| nodes.get(&s).copied().ok_or(())).expect("stored")
            })
            .collect()
    }

    #[test]
    fn known_answers() {
        // The empty tree's root is SHA-256 of nothing; a leaf and a node of the RFC's
        // domain separation.
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn the_frontier_gives_the_rfc_root_at_every_size() {
        let all = leaves(70);
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        for (n, leaf) in all.iter().enumerate() {
            frontier.push(*leaf);
            assert_eq!(frontier.root(), mth(&all[..=n]), "size {}", n + 1);
        }
    }

    #[test]
    fn a_resumed_frontier_continues_the_same_tree() {
        let all = leaves(45);
        let nodes = stored(&all[..29]);
        let peaks: Vec<Hash> = Frontier::peaks_of(29).iter().map(|s| nodes[s]).collect();
        let mut resumed = Frontier::resume(29, &peaks).expect("peaks match");
        assert!(Frontier::resume(29, &peaks[1..]).is_none());
        for leaf in &all[29..] {
            resumed.push(*leaf);
        }
        assert_eq!(resumed.root(), mth(&all));
    }

    #[test]
    fn a_range_hash_is_the_rfc_hash_of_its_leaves() {
        let all = leaves(64);
        let nodes = stored(&all);
        for (start, end) in [(0, 64), (0, 37), (32, 45), (40, 41), (48, 64), (56, 63)] {
            let range = LeafRange { start, end };
            let folded = range_hash::<()>(range, |s| nodes.get(&s).copied().ok_or(())).unwrap();
            assert_eq!(
                folded,
                mth(&all[start as usize..end as usize]),
                "{start}..{end}"
            );
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_a_changed_one_does_not() {
        let all = leaves(33);
        let nodes = stored(&all);
        for size in 1..=33u64 {
            let root = mth(&all[..size as usize]);
            for index in 0..size {
                let path = hashes(&inclusion_ranges(index, size), &nodes);
                let leaf = &all[index as usize];
                assert!(
                    verify_inclusion(leaf, index, size, &path, &root),
                    "{index} in {size}"
                );
                let other = leaf_hash(b"another entry");
                assert!(!verify_inclusion(&other, index, size, &path, &root));
                if let Some(first) = path.first() {
                    let mut bent = path.clone();
                    bent[0] = node_hash(first, first);
                    assert!(!verify_inclusion(leaf, index, size, &bent, &root));
                    assert!(!verify_inclusion(leaf, index, size, &path[1..], &root));
                }
                // The same path at the neighbouring index hashes in the other order.
                if index ^ 1 < size {
                    assert!(!verify_inclusion(leaf, index ^ 1, size, &path, &root));
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_changed_one_does_not() {
        let all = leaves(33);
        let nodes = stored(&all);
        for second in 1..=33u64 {
            let second_root = mth(&all[..second as usize]);
            for first in 0..=second {
                let first_root = mth(&all[..first as usize]);
                let path = hashes(&consistency_ranges(first, second), &nodes);
                assert!(
                    verify_consistency(first, second, &first_root, &second_root, &path),
                    "{first} to {second}"
                );
                if first > 0 && first < second {
                    let other = node_hash(&first_root, &first_root);
                    assert!(!verify_consistency(
                        first,
                        second,
                        &other,
                        &second_root,
                        &path
                    ));
                    assert!(!verify_consistency(
                        first,
                        second,
                        &first_root,
                        &other,
                        &path
                    ));
                    let mut bent = path.clone();
                    bent[0] = other;
                    assert!(!verify_consistency(
                        first,
                        second,
                        &first_root,
                        &second_root,
                        &bent
                    ));
                }
            }
        }
    }

    #[test]
    fn a_rewritten_history_is_not_consistent_with_the_old_root() {
        let all = leaves(20);
        let mut rewritten = all.clone();
        rewritten[6] = leaf_hash(b"edited");
        let nodes = stored(&rewritten);
        let path = hashes(&consistency_ranges(9, 20), &nodes);
        assert!(!verify_consistency(
            9,
            20,
            &mth(&all[..9]),
            &mth(&rewritten),
            &path
        ));
    }
}
