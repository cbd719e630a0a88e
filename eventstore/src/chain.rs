//! The per-stream hash chain, computed in Rust exactly as the database computes it on
//! insert (`chronicle_chain_hash` in the first migration), so that an auditor's tool can
//! recompute it independently.

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::error::StoreError;

/// The hash before a stream's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The fields of a stored event that the chain covers, in their stored form.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ChainedEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// `recorded_at` in microseconds since the Unix epoch.
    pub recorded_micros: i64,
    /// `payload::text`: the stored JSON exactly as the database renders it.
    pub payload: String,
    /// `metadata::text`.
    pub metadata: String,
    /// The hash stored with the event.
    pub hash: Vec<u8>,
}

/// Selects [`ChainedEvent`] columns from `events`; append a WHERE and ORDER BY.
pub const SELECT_CHAINED: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, \
     event_version, (extract(epoch FROM recorded_at) * 1000000)::bigint AS recorded_micros, \
     payload::text AS payload, metadata::text AS metadata, hash FROM events";

fn field(out: &mut Vec<u8>, text: &str) {
    // A stored event is far below 4 GiB; a longer field could not have been stored.
    let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// The event's fields the chain covers, as they are hashed: each text field as its
/// length (4 bytes, big-endian) and UTF-8 bytes, `sequence` and `recorded_micros` as 8
/// bytes big-endian, in the order of [`ChainedEvent`].
pub fn encode(event: &ChainedEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + event.payload.len() + event.metadata.len());
    field(&mut out, &event.aggregate_type);
    field(&mut out, &event.aggregate_id);
    out.extend_from_slice(&event.sequence.to_be_bytes());
    field(&mut out, &event.event_type);
    field(&mut out, &event.event_version);
    out.extend_from_slice(&event.recorded_micros.to_be_bytes());
    field(&mut out, &event.payload);
    field(&mut out, &event.metadata);
    out
}

/// The hash of `event` chained after `prev`: SHA-256 of `prev` and [`encode`]`(event)`.
pub fn chain_hash(prev: &[u8], event: &ChainedEvent) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(encode(event));
    hasher.finalize().into()
}

/// The entry of `event`'s leaf in the Merkle tree over the log (ADR 0036): [`encode`]
/// followed by the stored chain hash, so the leaf covers every stored byte the chain
/// covers and the chain's link too.
pub fn leaf_entry(event: &ChainedEvent) -> Vec<u8> {
    let mut entry = encode(event);
    entry.extend_from_slice(&event.hash);
    entry
}

/// Something wrong with a stream's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainBreak {
    /// Sequences must run 1, 2, 3, … without holes.
    SequenceGap { expected: i64, found: i64 },
    /// The stored hash is not what the event's content and its predecessor give.
    HashMismatch { sequence: i64 },
    /// The stream's recorded head is not its last stored event: events were removed
    /// from its end (or the head was altered).
    HeadMismatch {
        head_sequence: i64,
        last_sequence: i64,
    },
    /// Events exist but the stream has no recorded head.
    MissingHead { last_sequence: i64 },
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SequenceGap { expected, found } => {
                write!(
                    f,
                    "sequence {found} where {expected} was expected (events missing)"
                )
            }
            Self::HashMismatch { sequence } => {
                write!(
                    f,
                    "sequence {sequence}: hash does not match its content and predecessor (altered)"
                )
            }
            Self::HeadMismatch {
                head_sequence,
                last_sequence,
            } => write!(
                f,
                "head records sequence {head_sequence} but the last stored is {last_sequence} (events removed from the end)"
            ),
            Self::MissingHead { last_sequence } => {
                write!(
                    f,
                    "events up to sequence {last_sequence} but no recorded head"
                )
            }
        }
    }
}

/// Checks one stream's events, in sequence order, link by link.
#[derive(Debug)]
pub struct ChainCheck {
    prev: [u8; 32],
    expected: i64,
    breaks: Vec<ChainBreak>,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self {
            prev: GENESIS,
            expected: 1,
            breaks: Vec::new(),
        }
    }
}

impl ChainCheck {
    /// Takes the stream's next event.
    pub fn push(&mut self, event: &ChainedEvent) {
        if event.sequence != self.expected {
            self.breaks.push(ChainBreak::SequenceGap {
                expected: self.expected,
                found: event.sequence,
            });
        }
        if chain_hash(&self.prev, event).as_slice() != event.hash.as_slice() {
            self.breaks.push(ChainBreak::HashMismatch {
                sequence: event.sequence,
            });
        }
        // Continue from what is stored, so one altered event is reported once.
        self.prev
            .copy_from_slice(event.hash.get(..32).unwrap_or(&GENESIS));
        self.expected = event.sequence + 1;
    }

    /// Compares the last event seen with the stream's recorded head and returns every
    /// break found.
    pub fn finish(mut self, head_sequence: Option<i64>) -> Vec<ChainBreak> {
        let last_sequence = self.expected - 1;
        match head_sequence {
            Some(head_sequence) if head_sequence != last_sequence => {
                self.breaks.push(ChainBreak::HeadMismatch {
                    head_sequence,
                    last_sequence,
                });
            }
            None if last_sequence > 0 => {
                self.breaks.push(ChainBreak::MissingHead { last_sequence })
            }
            _ => {}
        }
        self.breaks
    }
}

/// Recomputes the chain of one stream and compares it with its head.
pub async fn verify_stream(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Vec<ChainBreak>, StoreError> {
    let mut connection = pool.acquire().await?;
    verify_stream_in(&mut connection, aggregate_type, aggregate_id).await
}

/// [`verify_stream`] on `connection`: in a repeatable-read transaction, the events and
/// the head come from one snapshot, so an append between the two reads is not taken for
/// a truncated stream.
pub async fn verify_stream_in(
    connection: &mut sqlx::PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Vec<ChainBreak>, StoreError> {
    let events: Vec<ChainedEvent> = sqlx::query_as(&format!(
        "{SELECT_CHAINED} WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence"
    ))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_all(&mut *connection)
    .await?;
    let head: Option<i64> = sqlx::query_scalar(
        "SELECT last_sequence FROM stream_heads WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(&mut *connection)
    .await?;
    let mut check = ChainCheck::default();
    events.iter().for_each(|e| check.push(e));
    Ok(check.finish(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: i64, prev: &[u8]) -> ChainedEvent {
        let mut e = ChainedEvent {
            aggregate_type: "Account".into(),
            aggregate_id: "a".into(),
            sequence,
            event_type: "FundsDeposited".into(),
            event_version: "1".into(),
            recorded_micros: 1_700_000_000_000_000 + sequence,
            payload: format!("{{\"amount\": {sequence}}}"),
            metadata: "{}".into(),
            hash: vec![],
        };
        e.hash = chain_hash(prev, &e).to_vec();
        e
    }

    fn chain(n: i64) -> Vec<ChainedEvent> {
        let mut prev = GENESIS.to_vec();
        (1..=n)
            .map(|s| {
                let e = event(s, &prev);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn check(events: &[ChainedEvent], head: i64) -> Vec<ChainBreak> {
        let mut check = ChainCheck::default();
        events.iter().for_each(|e| check.push(e));
        check.finish(Some(head))
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(check(&chain(5), 5), vec![]);
    }

    #[test]
    fn an_altered_payload_is_named_by_sequence() {
        let mut events = chain(5);
        events[2].payload = "{\"amount\": 999}".into();
        assert_eq!(
            check(&events, 5),
            vec![ChainBreak::HashMismatch { sequence: 3 }]
        );
    }

    #[test]
    fn a_removed_event_breaks_the_sequence_and_the_link() {
        let mut events = chain(5);
        events.remove(1);
        assert_eq!(
            check(&events, 5),
            vec![
                ChainBreak::SequenceGap {
                    expected: 2,
                    found: 3
                },
                ChainBreak::HashMismatch { sequence: 3 }
            ]
        );
    }

    #[test]
    fn a_removed_last_event_is_caught_by_the_head() {
        let mut events = chain(5);
        events.pop();
        assert_eq!(
            check(&events, 5),
            vec![ChainBreak::HeadMismatch {
                head_sequence: 5,
                last_sequence: 4
            }]
        );
    }
}
