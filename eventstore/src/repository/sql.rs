//! The repository's statements. Each command costs two: [`LOAD`] and one `APPEND_*`.
//! All read and write postgres-es's `events` and `snapshots` tables with the columns it
//! knows; the database fills in and checks the rest (ADR 0001).

/// Everything a command needs, in one statement and so from one snapshot of the
/// database: the stream's snapshot, the events after it, the stream's head, and the
/// idempotency record of `($3, $4)` when a key is given.
///
/// Every row has a `part` naming which of the four it is; the columns a part does not
/// use are NULL. `$1` aggregate type, `$2` aggregate id, `$3` actor, `$4` key.
pub(super) const LOAD: &str = "\
WITH snapshot AS (
    SELECT last_sequence, current_snapshot, payload
      FROM snapshots
     WHERE aggregate_type = $1 AND aggregate_id = $2
)
SELECT 'snapshot' AS part, last_sequence AS sequence, current_snapshot AS position,
       NULL::text AS event_type, NULL::text AS event_version, payload,
       NULL::text AS request_hash,
       NULL::text AS record_type, NULL::text AS record_id
  FROM snapshot
UNION ALL
SELECT 'event', sequence, global_position, event_type, event_version, payload,
       NULL, NULL, NULL
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2
   AND sequence > coalesce((SELECT last_sequence FROM snapshot), 0)
UNION ALL
(SELECT 'head', sequence, global_position, NULL, NULL, NULL, NULL, NULL, NULL
   FROM events
  WHERE aggregate_type = $1 AND aggregate_id = $2
  ORDER BY sequence DESC
  LIMIT 1)
UNION ALL
SELECT 'idempotency', last_sequence, last_position, NULL, NULL, NULL, request_hash,
       aggregate_type, aggregate_id
  FROM idempotency_keys
 WHERE actor = $3 AND idempotency_key = $4";

/// Every event of a stream, for a load whose snapshot no longer deserializes.
pub(super) const ALL_EVENTS: &str = "\
SELECT sequence, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2
 ORDER BY sequence";

/// The events of one command, inserted in sequence order by one `INSERT … SELECT FROM
/// unnest`, returning each one's global position. The triggers on `events` chain the
/// hashes, claim seats and record the idempotency key inside this same statement; a
/// row-level BEFORE trigger sees the rows the statement inserted before its own.
///
/// `$1` type, `$2` id, `$3..$7` sequences, event types, versions, payloads, metadata.
/// Personal data (ADR 0035): `$8..$9` the data keys the events are sealed under that
/// the append did not make (subjects, versions), held FOR SHARE by `chronicle_hold_keys`
/// before any event is inserted, which refuses the append (CH003) when one was erased;
/// `$10..$13` the keys it made (subjects, versions, master key ids, wrapped keys),
/// stored by the same statement, so a new guest costs no commit of its own. Another
/// writer's key of the same version fails the statement with 23505, a lost race. The
/// guard's function is not called when no key is held.
macro_rules! insert_events {
    () => {
        "WITH held AS (
    SELECT CASE WHEN cardinality($8::text[]) > 0
                THEN chronicle_hold_keys($8::text[], $9::int[])
                ELSE 0 END AS keys
),
new_keys AS (
    INSERT INTO subject_keys (subject_id, key_version, master_key_id, wrapped)
    SELECT * FROM unnest($10::text[], $11::int[], $12::text[], $13::bytea[])
),
appended AS (
    INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                        payload, metadata)
    SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload, e.metadata
      FROM held,
           unnest($3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
           WITH ORDINALITY AS e(sequence, event_type, event_version, payload, metadata, n)
     ORDER BY e.n
    RETURNING sequence, global_position
)"
    };
}

macro_rules! returning_positions {
    () => {
        "
SELECT sequence, global_position FROM appended ORDER BY sequence"
    };
}

/// Appends without touching the snapshot.
pub(super) const APPEND: &str = concat!(insert_events!(), returning_positions!());

/// Appends and stores the stream's first snapshot (`$14` last sequence, `$15` snapshot
/// number, `$16` payload). A stale row that no longer deserialized is replaced by the
/// `snapshots_replace_stale` trigger.
pub(super) const APPEND_FIRST_SNAPSHOT: &str = concat!(
    insert_events!(),
    ",
snapshot AS (
    INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
    VALUES ($1, $2, $14, $15, $16)
    RETURNING 1
)",
    returning_positions!()
);

/// Appends and replaces the snapshot numbered `$15 - 1`. If another writer replaced it
/// first, the `snapshots_update_must_match` trigger fails the whole statement with
/// 23505, which is a conflict like any other.
pub(super) const APPEND_NEXT_SNAPSHOT: &str = concat!(
    insert_events!(),
    ",
snapshot AS (
    UPDATE snapshots
       SET last_sequence = $14, current_snapshot = $15, payload = $16
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $15 - 1
    RETURNING 1
)",
    returning_positions!()
);
