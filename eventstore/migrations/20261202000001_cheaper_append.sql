-- A cheaper append (ADR 0011). Nothing about what is stored changes.
--
-- 1. The hash chain is computed inside the plpgsql trigger. Calling the SQL helper
--    functions of the first migration from it parsed their bodies again on every row
--    (they take a row type and cannot be inlined). The bytes hashed are the same, field
--    for field: `chronicle_chain_hash` stays as the readable definition, and the tests
--    check the trigger against it and against `chronicle_eventstore::chain`.
-- 2. The relay's wake-up moves out of the append transaction. NOTIFY takes a
--    cluster-wide lock at commit and holds it through the commit's WAL flush, so every
--    appending transaction waited for every other. Chronicle's writers now notify after
--    their commit (`chronicle_eventstore::wake`); the relay also polls.
-- 3. Snapshots written until now are dropped. cqrs-es 0.5's PersistedEventStore applied
--    a command's events twice into each snapshot (its EventSink had applied them
--    already), so every stored snapshot is wrong (the
--    aggregate's version runs ahead, a payment's totals count an event twice).
--    Snapshots are a cache of the events: every stream is replayed at its next load and
--    snapshotted again at its next commit.

CREATE OR REPLACE FUNCTION chronicle_events_before_insert() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    prev       bytea;
    f_type     bytea;
    f_id       bytea;
    f_event    bytea;
    f_version  bytea;
    f_payload  bytea;
    f_metadata bytea;
BEGIN
    -- Transaction time and transaction id belong to the database, whatever was sent.
    NEW.recorded_at := now();
    NEW.tx_id := pg_current_xact_id();
    IF NEW.sequence = 1 THEN
        prev := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    ELSE
        SELECT hash INTO prev
          FROM events
         WHERE aggregate_type = NEW.aggregate_type
           AND aggregate_id = NEW.aggregate_id
           AND sequence = NEW.sequence - 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'event % of % % does not follow a stored event',
                NEW.sequence, NEW.aggregate_type, NEW.aggregate_id
                USING ERRCODE = 'CH002';
        END IF;
    END IF;
    -- Text fields are hashed as a big-endian int4 byte count, then their UTF-8 bytes.
    f_type := convert_to(NEW.aggregate_type, 'UTF8');
    f_id := convert_to(NEW.aggregate_id, 'UTF8');
    f_event := convert_to(NEW.event_type, 'UTF8');
    f_version := convert_to(NEW.event_version, 'UTF8');
    f_payload := convert_to(NEW.payload::text, 'UTF8');
    f_metadata := convert_to(NEW.metadata::text, 'UTF8');
    NEW.hash := sha256(
        prev
        || int4send(length(f_type)) || f_type
        || int4send(length(f_id)) || f_id
        || int8send(NEW.sequence)
        || int4send(length(f_event)) || f_event
        || int4send(length(f_version)) || f_version
        || int8send((extract(epoch FROM NEW.recorded_at) * 1000000)::bigint)
        || int4send(length(f_payload)) || f_payload
        || int4send(length(f_metadata)) || f_metadata);
    RETURN NEW;
END
$$;

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

DROP TRIGGER events_notify ON events;
DROP FUNCTION chronicle_notify_append();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'chronicle_guard_events_drop') THEN
        ALTER EVENT TRIGGER chronicle_guard_events_drop ENABLE;
    END IF;
END
$$;

DELETE FROM snapshots;
