//! Reads in `starts_at` order that stop at the page's end.
//!
//! The index is sorted by `sort_key` (see [`super::index`]), so within a segment document
//! ids run in key order: a query's matches come out of its scorer already in the page's
//! order, and the first `limit` live matches after the cursor are the segment's answer.
//! This is PostgreSQL's walk of a `(status, starts_at)` B-tree, without the B-tree per
//! filter: whatever the query, at most `limit` matches are read per segment (plus what the
//! scorer skips over to find them).

use tantivy::columnar::Column;
use tantivy::query::{EnableScoring, Query};
use tantivy::{DocAddress, DocId, DocSet, Searcher, TERMINATED};

use super::collector::Position;

/// The first `limit` matches of `query` whose sort key is after `after`, in key order.
pub(crate) fn first_by_key(
    searcher: &Searcher,
    query: &dyn Query,
    limit: usize,
    after: Option<u64>,
) -> tantivy::Result<Vec<(Position, DocAddress)>> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let mut found = Vec::new();
    for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
        let keys = segment.fast_fields().u64("sort_key")?;
        let start = after.map_or(0, |key| first_doc_after(&keys, key, segment.max_doc()));
        if start >= segment.max_doc() {
            continue;
        }
        let mut scorer = weight.scorer(segment, 1.0)?;
        let mut doc = scorer.doc();
        if doc < start {
            doc = scorer.seek(start);
        }
        let mut taken = 0;
        while doc != TERMINATED && taken < limit {
            if !segment.is_deleted(doc) {
                let key = keys.first(doc).unwrap_or(0);
                found.push((
                    Position { score: 0.0, key },
                    DocAddress::new(ordinal as u32, doc),
                ));
                taken += 1;
            }
            doc = scorer.advance();
        }
    }
    // Stable: equal keys (a collision of the id hash within one second) keep segment
    // order, as the collector keeps them.
    found.sort_by_key(|(position, _)| position.key);
    found.truncate(limit);
    Ok(found)
}

/// The first document whose key is greater than `key` (keys ascend with doc ids).
fn first_doc_after(keys: &Column<u64>, key: u64, max_doc: DocId) -> DocId {
    let (mut low, mut high) = (0, max_doc);
    while low < high {
        let middle = low + (high - low) / 2;
        if keys.first(middle).unwrap_or(0) <= key {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}
