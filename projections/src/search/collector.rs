//! A top-k collector for keyset pagination: it keeps the best `limit` documents that
//! come *after* a cursor in the chosen order, by relevance (score descending, then sort
//! key) or by the sort key alone (`starts_at`, then a tiebreak).

use std::cmp::Ordering;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

/// A position in the result order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Position {
    pub score: Score,
    pub key: u64,
}

impl Position {
    /// How two positions compare in the result order (`Less` comes first).
    fn order(&self, other: &Self, by_relevance: bool) -> Ordering {
        if by_relevance {
            other
                .score
                .total_cmp(&self.score)
                .then(self.key.cmp(&other.key))
        } else {
            self.key.cmp(&other.key)
        }
    }
}

pub(crate) struct KeysetTop {
    pub limit: usize,
    pub after: Option<Position>,
    pub by_relevance: bool,
    /// Skip a document on its score alone when the score rules it out (see
    /// [`SegmentTop::may_enter`]); off, every match's key is read, as at first.
    pub skip_by_score: bool,
}

pub(crate) struct SegmentTop {
    segment: SegmentOrdinal,
    keys: Column<u64>,
    limit: usize,
    after: Option<Position>,
    by_relevance: bool,
    skip_by_score: bool,
    best: Vec<(Position, DocAddress)>,
}

impl Collector for KeysetTop {
    type Fruit = Vec<(Position, DocAddress)>;
    type Child = SegmentTop;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<SegmentTop> {
        Ok(SegmentTop {
            segment,
            keys: reader.fast_fields().u64("sort_key")?,
            limit: self.limit,
            after: self.after,
            by_relevance: self.by_relevance,
            skip_by_score: self.skip_by_score,
            best: Vec::with_capacity(self.limit + 1),
        })
    }

    fn requires_scoring(&self) -> bool {
        self.by_relevance
    }

    fn merge_fruits(&self, fruits: Vec<Self::Fruit>) -> tantivy::Result<Self::Fruit> {
        let mut all: Vec<_> = fruits.into_iter().flatten().collect();
        let by_relevance = self.by_relevance;
        all.sort_by(|a, b| a.0.order(&b.0, by_relevance));
        all.truncate(self.limit);
        Ok(all)
    }
}

impl SegmentCollector for SegmentTop {
    type Fruit = Vec<(Position, DocAddress)>;

    fn collect(&mut self, doc: DocId, score: Score) {
        let score = if self.by_relevance { score } else { 0.0 };
        if self.by_relevance && self.skip_by_score && !self.may_enter(score) {
            return;
        }
        let position = Position {
            score,
            key: self.keys.first(doc).unwrap_or(0),
        };
        if let Some(after) = &self.after
            && position.order(after, self.by_relevance) != Ordering::Greater
        {
            return;
        }
        let by_relevance = self.by_relevance;
        if self.best.len() == self.limit {
            // Full: only something better than the current worst gets in.
            match self.best.last() {
                Some((worst, _)) if position.order(worst, by_relevance) == Ordering::Less => {
                    self.best.pop();
                }
                _ => return,
            }
        }
        let at = self
            .best
            .partition_point(|(p, _)| p.order(&position, by_relevance) != Ordering::Greater);
        self.best
            .insert(at, (position, DocAddress::new(self.segment, doc)));
    }

    fn harvest(self) -> Self::Fruit {
        self.best
    }
}

impl SegmentTop {
    /// Whether a document of this score can enter the page, whatever its key: by
    /// relevance the score decides unless it ties the cursor or the current worst, so
    /// the sort key (a random read of a fast field) is only read for candidates.
    fn may_enter(&self, score: Score) -> bool {
        // Ordering::Less: the score comes before the other (it is higher).
        let before = |other: Score| other.total_cmp(&score);
        if let Some(after) = &self.after
            && before(after.score) == Ordering::Less
        {
            return false;
        }
        match self.best.last() {
            Some((worst, _)) if self.best.len() == self.limit => {
                before(worst.score) != Ordering::Greater
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(score: f32, key: u64) -> Position {
        Position { score, key }
    }

    #[test]
    fn relevance_orders_by_score_then_key() {
        assert_eq!(p(2.0, 9).order(&p(1.0, 1), true), Ordering::Less);
        assert_eq!(p(1.0, 1).order(&p(1.0, 2), true), Ordering::Less);
        assert_eq!(p(1.0, 2).order(&p(1.0, 2), true), Ordering::Equal);
    }

    #[test]
    fn key_order_ignores_scores() {
        assert_eq!(p(9.0, 5).order(&p(0.0, 4), false), Ordering::Greater);
    }
}
