-- Group commit stores the data keys made for its members' events in the same
-- transaction (ADR 0035): a new guest's key costs no commit of its own. The batch
-- function gains five arrays, the new keys by member; the rest is as before
-- (20261202000003_group_commit.sql).
DROP FUNCTION chronicle_append_batch(text[], text[], text[], bigint[], bigint[], jsonb[], int[],
                                     bigint[], text[], text[], jsonb[], jsonb[]);

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
    key_member       int[],
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
            -- The data keys this member made, before the events they seal: the seal
            -- guard finds them, and another writer's key of the same version fails
            -- the member with 23505 (a lost race; it tries again with theirs).
            INSERT INTO subject_keys (subject_id, key_version, master_key_id, wrapped)
            SELECT k.subject, k.version, k.master, k.wrapped
              FROM unnest(key_member, key_subject, key_version, key_master, key_wrapped)
                   AS k(member, subject, version, master, wrapped)
             WHERE k.member = m;
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
