-- The seal guard moves into the append's own statement, and `subject_streams` gives way
-- to an index on the events themselves (ADR 0035, "The append guard"). A booking of a
-- new guest then costs its key row and one index entry: no trigger, no row lock and no
-- row of its own in another table. A key the append made itself needs no guard (no
-- erasure can see it before the append commits); a key it sealed under without making
-- it is held FOR SHARE by `chronicle_hold_keys`, called from the append's statement.

-- Which streams hold a subject's sealed data: the events that hold it, found by this
-- index. Nothing to copy from `subject_streams`: the index is built from the events.
CREATE INDEX events_by_subject ON events ((payload -> 'personal' ->> 'subject'))
    WHERE payload ? 'personal';

-- The event trigger of the first migration refuses to drop triggers on `events`; this
-- deliberate change of the schema lifts it for the one statement, when it exists (it is
-- installed only when migrating as a superuser).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'chronicle_guard_events_drop') THEN
        ALTER EVENT TRIGGER chronicle_guard_events_drop DISABLE;
    END IF;
END
$$;

DROP TRIGGER events_seal_guard ON events;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'chronicle_guard_events_drop') THEN
        ALTER EVENT TRIGGER chronicle_guard_events_drop ENABLE;
    END IF;
END
$$;

DROP FUNCTION chronicle_seal_guard();
DROP TABLE subject_streams;

-- The guard of sealed appends. A writer seals with a key it may have cached while
-- another process erased it; data sealed under an erased key could never be read, so
-- the append is refused (CH003) and the writer tries again with a new key. Each key row
-- is taken FOR SHARE: an erasure's UPDATE of it waits for the append's transaction,
-- and the append waits for an erasure in flight and then sees it (the row rechecked).
-- So an erasure names every stream sealed under the keys it destroys. One primary-key
-- lookup a key, so that no cached plan can turn it into a scan of the table.
CREATE FUNCTION chronicle_hold_keys(subjects text[], versions int[]) RETURNS int
    LANGUAGE plpgsql
AS $$
DECLARE
    i int;
BEGIN
    FOR i IN 1 .. coalesce(array_length(subjects, 1), 0) LOOP
        PERFORM 1
           FROM subject_keys
          WHERE subject_id = subjects[i] AND key_version = versions[i]
            AND wrapped IS NOT NULL
            FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'personal data sealed under an erased or unknown key (version %)',
                versions[i]
                USING ERRCODE = 'CH003';
        END IF;
    END LOOP;
    RETURN coalesce(array_length(subjects, 1), 0);
END
$$;

-- Group commit: each member's held keys and new keys are ranges of the key arrays
-- (`*_from[m]` to `*_upto[m]`, empty when from > upto), so a member without any costs
-- no statement. The rest is as before (20261208000004_keys_in_append.sql).
DROP FUNCTION chronicle_append_batch(text[], text[], text[], bigint[], bigint[], jsonb[], int[],
                                     bigint[], text[], text[], jsonb[], jsonb[],
                                     int[], text[], int[], text[], bytea[]);

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
    event_metadata   jsonb[],
    held_from        int[],
    held_upto        int[],
    held_subject     text[],
    held_version     int[],
    key_from         int[],
    key_upto         int[],
    key_subject      text[],
    key_version      int[],
    key_master       text[],
    key_wrapped      bytea[])
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
            IF held_from[m] <= held_upto[m] THEN
                PERFORM chronicle_hold_keys(held_subject[held_from[m]:held_upto[m]],
                                            held_version[held_from[m]:held_upto[m]]);
            END IF;
            -- The data keys this member made, with the events they seal; another
            -- writer's key of the same version fails the member with 23505 (a lost
            -- race; it tries again with theirs).
            IF key_from[m] <= key_upto[m] THEN
                INSERT INTO subject_keys (subject_id, key_version, master_key_id, wrapped)
                SELECT *
                  FROM unnest(key_subject[key_from[m]:key_upto[m]],
                              key_version[key_from[m]:key_upto[m]],
                              key_master[key_from[m]:key_upto[m]],
                              key_wrapped[key_from[m]:key_upto[m]]);
            END IF;
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
