//! A point in the live feed (ADR 0037): the next offset of every partition of the events
//! topics. Each partition only grows at its end, so nothing can appear behind a point,
//! whatever order transactions commit in; and the point is the same on every Chronicle
//! instance, so a subscriber resumes exactly wherever it reconnects.
//!
//! Its text form, the SSE `id`, is `v1.` and base64url (no padding) of unsigned LEB128
//! varints: the number of topics, the partitions of each, then one next offset per
//! partition, topic by topic in [`crate::envelope::all_topics`] order.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The prefix of every feed position this version writes.
const VERSION: &str = "v1.";

/// A feed position that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("not a feed position")]
    Malformed,
    /// The topics or their partitions changed since the position was issued.
    #[error("the position was issued for another layout of the topics")]
    OtherLayout,
}

/// The next offset to deliver of every partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPosition {
    partitions: usize,
    /// Topic by topic, partition by partition.
    next: Vec<u64>,
}

impl FeedPosition {
    /// The start of `topics` topics of `partitions` partitions each.
    pub fn start(topics: usize, partitions: usize) -> Self {
        Self {
            partitions,
            next: vec![0; topics * partitions],
        }
    }

    fn slot(&self, topic: usize, partition: usize) -> Option<usize> {
        (partition < self.partitions)
            .then(|| topic * self.partitions + partition)
            .filter(|slot| *slot < self.next.len())
    }

    /// Whether the message at `offset` of `partition` of `topic` is behind this point
    /// (delivered already). A partition outside the layout is never behind it.
    pub fn is_past(&self, topic: usize, partition: usize, offset: u64) -> bool {
        self.slot(topic, partition)
            .is_some_and(|slot| offset < self.next[slot])
    }

    /// Moves past the message at `offset` of `partition` of `topic`; never backwards.
    /// False when the partition is outside the layout.
    pub fn advance(&mut self, topic: usize, partition: usize, offset: u64) -> bool {
        let Some(slot) = self.slot(topic, partition) else {
            return false;
        };
        self.next[slot] = self.next[slot].max(offset.saturating_add(1));
        true
    }

    /// The next offset of `partition` of `topic`.
    pub fn next_offset(&self, topic: usize, partition: usize) -> Option<u64> {
        self.slot(topic, partition).map(|slot| self.next[slot])
    }

    /// Topics and partitions per topic.
    pub fn layout(&self) -> (usize, usize) {
        (
            self.next.len().checked_div(self.partitions).unwrap_or(0),
            self.partitions,
        )
    }

    /// Whether some partition of this point is behind `other`'s (of the same layout).
    pub fn is_behind(&self, other: &Self) -> bool {
        self.next.iter().zip(&other.next).any(|(a, b)| a < b)
    }

    /// Moves each partition to the later of this point's and `other`'s.
    pub fn join(&mut self, other: &Self) {
        for (a, b) in self.next.iter_mut().zip(&other.next) {
            *a = (*a).max(*b);
        }
    }

    /// Every partition as `(topic, partition, next offset)`.
    pub fn partitions(&self) -> impl Iterator<Item = (usize, usize, u64)> + '_ {
        let width = self.partitions.max(1);
        self.next
            .iter()
            .enumerate()
            .map(move |(slot, next)| (slot / width, slot % width, *next))
    }

    /// The text form (the SSE `id`).
    pub fn encode(&self) -> String {
        let topics = self.next.len().checked_div(self.partitions).unwrap_or(0);
        let mut bytes = Vec::with_capacity(2 + self.next.len() * 3);
        put(&mut bytes, topics as u64);
        for _ in 0..topics {
            put(&mut bytes, self.partitions as u64);
        }
        for next in &self.next {
            put(&mut bytes, *next);
        }
        format!("{VERSION}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Reads a text form issued for `topics` topics of `partitions` partitions each.
    pub fn decode(text: &str, topics: usize, partitions: usize) -> Result<Self, PositionError> {
        let body = text.strip_prefix(VERSION).ok_or(PositionError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| PositionError::Malformed)?;
        let mut at = 0;
        let mut next_varint = || take(&bytes, &mut at).ok_or(PositionError::Malformed);
        let issued_topics = next_varint()?;
        // Bounded before allocating: a forged position must not ask for memory.
        if issued_topics > 1_000 {
            return Err(PositionError::Malformed);
        }
        let mut layout = Vec::with_capacity(issued_topics as usize);
        for _ in 0..issued_topics {
            let count = next_varint()?;
            if count > 100_000 {
                return Err(PositionError::Malformed);
            }
            layout.push(count);
        }
        if layout.len() != topics || layout.iter().any(|count| *count != partitions as u64) {
            return Err(PositionError::OtherLayout);
        }
        let mut next = Vec::with_capacity(topics * partitions);
        for _ in 0..topics * partitions {
            next.push(next_varint()?);
        }
        if at != bytes.len() {
            return Err(PositionError::Malformed);
        }
        Ok(Self { partitions, next })
    }
}

/// Appends `value` as an unsigned LEB128 varint.
fn put(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads an unsigned LEB128 varint at `*at`; `None` when truncated or over 64 bits.
fn take(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_round_trips_and_only_moves_forward() {
        let mut position = FeedPosition::start(4, 6);
        assert!(!position.is_past(1, 2, 0));
        assert!(position.advance(1, 2, 41));
        assert!(position.advance(3, 5, u64::from(u32::MAX) * 7));
        assert!(position.advance(1, 2, 10));
        assert_eq!(position.next_offset(1, 2), Some(42), "never backwards");
        assert!(position.is_past(1, 2, 41) && !position.is_past(1, 2, 42));
        let text = position.encode();
        assert!(text.starts_with("v1."));
        assert!(!text.contains(['+', '/', '=']), "URL-safe: {text}");
        assert_eq!(FeedPosition::decode(&text, 4, 6), Ok(position));
    }

    #[test]
    fn points_compare_and_join_partition_by_partition() {
        let mut a = FeedPosition::start(2, 2);
        let mut b = FeedPosition::start(2, 2);
        a.advance(0, 1, 9);
        b.advance(1, 0, 4);
        assert!(a.is_behind(&b) && b.is_behind(&a));
        a.join(&b);
        assert!(!a.is_behind(&b) && b.is_behind(&a));
        assert_eq!(
            a.partitions().collect::<Vec<_>>(),
            vec![(0, 0, 0), (0, 1, 10), (1, 0, 5), (1, 1, 0)]
        );
        assert_eq!(a.layout(), (2, 2));
    }

    #[test]
    fn partitions_outside_the_layout_are_refused() {
        let mut position = FeedPosition::start(2, 3);
        assert!(!position.advance(0, 3, 1));
        assert!(!position.advance(2, 0, 1));
        assert!(!position.is_past(5, 5, 0));
        assert_eq!(position.next_offset(2, 0), None);
    }

    #[test]
    fn a_position_of_another_layout_or_malformed_is_refused() {
        let text = FeedPosition::start(4, 6).encode();
        assert_eq!(
            FeedPosition::decode(&text, 4, 3),
            Err(PositionError::OtherLayout)
        );
        assert_eq!(
            FeedPosition::decode(&text, 5, 6),
            Err(PositionError::OtherLayout)
        );
        for bad in ["", "v1.", "v2.AA", "v1.!!", "42", &text[..text.len() - 1]] {
            assert!(FeedPosition::decode(bad, 4, 6).is_err(), "{bad:?}");
        }
        let mut trailing = URL_SAFE_NO_PAD
            .decode(text.strip_prefix("v1.").unwrap())
            .unwrap();
        trailing.push(0);
        let trailing = format!("v1.{}", URL_SAFE_NO_PAD.encode(trailing));
        assert_eq!(
            FeedPosition::decode(&trailing, 4, 6),
            Err(PositionError::Malformed)
        );
        // A varint longer than 64 bits, and a huge topic count, ask for nothing.
        let long = format!("v1.{}", URL_SAFE_NO_PAD.encode([0xff; 11]));
        assert_eq!(
            FeedPosition::decode(&long, 4, 6),
            Err(PositionError::Malformed)
        );
        let mut huge = Vec::new();
        put(&mut huge, u64::MAX);
        let huge = format!("v1.{}", URL_SAFE_NO_PAD.encode(huge));
        assert_eq!(
            FeedPosition::decode(&huge, 4, 6),
            Err(PositionError::Malformed)
        );
    }

    #[test]
    fn varints_cover_the_whole_range() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut bytes = Vec::new();
            put(&mut bytes, value);
            let mut at = 0;
            assert_eq!(take(&bytes, &mut at), Some(value));
            assert_eq!(at, bytes.len());
        }
    }
}
