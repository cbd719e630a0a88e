-- Group commit (ADR 0012): the appends of several commands in one transaction, each in
-- a subtransaction of its own, so that one command's refusal (a seat taken, a key used,
-- a lost race) rolls back that command alone and its neighbours commit.

-- An idempotency record written earlier in the same transaction may be extended only by
-- the same request on the same stream. With one command per transaction the transaction
-- id said that much; in a group it does not.
CREATE OR REPLACE FUNCTION chronicle_record_idempotency() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO idempotency_keys AS k
        (actor, idempotency_key, request_hash, aggregate_type, aggregate_id,
         last_sequence, last_position)
    VALUES (NEW.metadata ->> 'actor', NEW.metadata ->> 'idempotency_key',
            NEW.metadata ->> 'request_hash', NEW.aggregate_type, NEW.aggregate_id,
            NEW.sequence, NEW.global_position)
    ON CONFLICT (actor, idempotency_key) DO UPDATE
        SET last_sequence = EXCLUDED.last_sequence,
            last_position = EXCLUDED.last_position
        WHERE k.tx_id = pg_current_xact_id()
          AND k.request_hash = EXCLUDED.request_hash
          AND k.aggregate_type = EXCLUDED.aggregate_type
          AND k.aggregate_id = EXCLUDED.aggregate_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'idempotency key % was already used', NEW.metadata ->> 'idempotency_key'
            USING ERRCODE = 'CH001';
    END IF;
    RETURN NULL;
END
$$;

-- Appends the events of several commands (members 1..n). Event i belongs to member
-- `member_of[i]`; the events of a member follow each other in sequence order. Each
-- member may also store its stream's snapshot: `snapshot_mode` 'first' inserts it,
-- 'next' replaces the one numbered `snapshot_number - 1` (else 23505, as for a single
-- append), anything else stores none.
--
-- One row per appended event with its global position, or one row for a member that
-- failed, with the SQLSTATE, constraint and message of its error; that member's writes
-- are rolled back and the others' are not.
CREATE FUNCTION chronicle_append_batch(
    member_type      text[],
    member_id        text[],
    snapshot_mode    text[],
    snapshot_seq     bigint[],
    snapshot_number  bigint[],
    snapshot_payload jsonb[],
    member_of        int[],
    event_sequence   bigint[],
    event_type       text[],
    event_version    text[],
    event_payload    jsonb[],
    event_metadata   jsonb[])
    RETURNS TABLE (member int, sequence bigint, global_position bigint,
                   error_state text, error_constraint text, error_message text)
    LANGUAGE plpgsql
AS $$
DECLARE
    m          int;
    sequences  bigint[];
    positions  bigint[];
    state      text;
    constraint_name text;
    message    text;
BEGIN
    FOR m IN 1 .. coalesce(array_length(member_type, 1), 0) LOOP
        state := NULL;
        BEGIN
            WITH appended AS (
                INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                    event_version, payload, metadata)
                SELECT member_type[m], member_id[m], e.sequence, e.event_type,
                       e.event_version, e.payload, e.metadata
                  FROM unnest(member_of, event_sequence, event_type, event_version,
                              event_payload, event_metadata)
                       WITH ORDINALITY
                       AS e(member, sequence, event_type, event_version, payload, metadata, n)
                 WHERE e.member = m
                 ORDER BY e.n
                RETURNING events.sequence, events.global_position
            )
            SELECT array_agg(a.sequence ORDER BY a.sequence),
                   array_agg(a.global_position ORDER BY a.sequence)
              INTO sequences, positions
              FROM appended a;
            IF snapshot_mode[m] = 'first' THEN
                INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence,
                                       current_snapshot, payload)
                VALUES (member_type[m], member_id[m], snapshot_seq[m], snapshot_number[m],
                        snapshot_payload[m]);
            ELSIF snapshot_mode[m] = 'next' THEN
                UPDATE snapshots s
                   SET last_sequence = snapshot_seq[m],
                       current_snapshot = snapshot_number[m],
                       payload = snapshot_payload[m]
                 WHERE s.aggregate_type = member_type[m]
                   AND s.aggregate_id = member_id[m]
                   AND s.current_snapshot = snapshot_number[m] - 1;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE,
                                    constraint_name = CONSTRAINT_NAME,
                                    message = MESSAGE_TEXT;
        END;
        IF state IS NULL THEN
            RETURN QUERY SELECT m, s.seq, s.pos, NULL::text, NULL::text, NULL::text
                           FROM unnest(sequences, positions) AS s(seq, pos);
        ELSE
            RETURN QUERY SELECT m, NULL::bigint, NULL::bigint, state, constraint_name, message;
        END IF;
    END LOOP;
END
$$;
