-- The event store: postgres-es's `events` and `snapshots` tables, extended with columns
-- postgres-es need not know (they all have defaults or are set by triggers), a per-stream
-- hash chain, and guards that make the table append-only for every role.
--
-- SQLSTATEs raised here (class CH, Chronicle's own):
--   CH000  the event store is append-only
--   CH001  an idempotency key was already used for another request
--   CH002  an event does not directly follow the stored stream

CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE events
(
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence >= 1),
    event_type      text        NOT NULL,
    event_version   text        NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    global_position bigint      GENERATED ALWAYS AS IDENTITY,
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    hash            bytea       NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence),
    CONSTRAINT events_global_position_unique UNIQUE (global_position)
);

-- Commit-safe reading order for the relay: (tx_id, global_position).
CREATE INDEX events_commit_order ON events (tx_id, global_position);
-- Transaction-time scans (export, as-of).
CREATE INDEX events_recorded_at ON events (recorded_at);

-- Snapshots, one row per aggregate (postgres-es keys them by last_sequence too; one row
-- is all it ever reads).
CREATE TABLE snapshots
(
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          jsonb  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- ---------------------------------------------------------------------------------------
-- Hash chain. hash(n) = sha256(hash(n-1) || fields of event n), with 32 zero bytes before
-- event 1. Text fields are length-prefixed (big-endian int4 byte count, then UTF-8), so
-- no two different events encode alike. `chronicle_eventstore::chain` computes the same
-- in Rust for `chronicle-replay verify`.
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION chronicle_hash_field(t text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT int4send(octet_length(convert_to(t, 'UTF8'))) || convert_to(t, 'UTF8') $$;

CREATE FUNCTION chronicle_chain_hash(prev bytea, e events) RETURNS bytea
    LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT sha256(
    prev
    || chronicle_hash_field(e.aggregate_type)
    || chronicle_hash_field(e.aggregate_id)
    || int8send(e.sequence)
    || chronicle_hash_field(e.event_type)
    || chronicle_hash_field(e.event_version)
    || int8send((extract(epoch FROM e.recorded_at) * 1000000)::bigint)
    || chronicle_hash_field(e.payload::text)
    || chronicle_hash_field(e.metadata::text))
$$;

CREATE FUNCTION chronicle_events_before_insert() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    prev bytea;
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
    NEW.hash := chronicle_chain_hash(prev, NEW);
    RETURN NEW;
END
$$;

CREATE TRIGGER events_before_insert
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION chronicle_events_before_insert();

-- The head of every stream: its last sequence and hash. The chain alone cannot show that
-- a stream's newest events were removed; a head that no longer matches the stored stream
-- does. Also the catalog of streams, for verification and replay.
CREATE TABLE stream_heads
(
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    last_sequence  bigint NOT NULL,
    last_hash      bytea  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE FUNCTION chronicle_advance_head() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO stream_heads (aggregate_type, aggregate_id, last_sequence, last_hash)
    VALUES (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.hash)
    ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
        SET last_sequence = EXCLUDED.last_sequence,
            last_hash = EXCLUDED.last_hash;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_advance_head
    AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION chronicle_advance_head();

-- ---------------------------------------------------------------------------------------
-- Append-only: statement-level, so even an UPDATE or DELETE matching no row fails, and
-- TRUNCATE (which fires no row triggers) is caught too.
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION chronicle_refuse_change() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'the event store is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'CH000';
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION chronicle_refuse_change();

-- The owner of a table may disable its triggers or drop it. An event trigger (which only
-- a superuser can create) refuses that for `events`, so what remains is a deliberate
-- superuser bypass (`SET session_replication_role = replica`, which also silences event
-- triggers). Installed only when migrating as a superuser; see docs/adr/0002.
DO $guard$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        CREATE FUNCTION chronicle_guard_events_ddl() RETURNS event_trigger
            LANGUAGE plpgsql
        AS $fn$
        DECLARE
            obj record;
        BEGIN
            FOR obj IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
                IF obj.object_type IN ('table', 'trigger')
                   AND obj.object_identity ~ '(^|\.)events($|\s|\.)|\son\s(\w+\.)?events$' THEN
                    RAISE EXCEPTION 'the event store is append-only: % on % is refused',
                        obj.command_tag, obj.object_identity
                        USING ERRCODE = 'CH000';
                END IF;
            END LOOP;
        END
        $fn$;

        CREATE FUNCTION chronicle_guard_events_drop() RETURNS event_trigger
            LANGUAGE plpgsql
        AS $fn$
        DECLARE
            obj record;
        BEGIN
            FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
                IF (obj.object_type = 'table' AND obj.object_name = 'events')
                   OR (obj.object_type = 'trigger' AND obj.object_identity ~ '\son\s(\w+\.)?events$') THEN
                    RAISE EXCEPTION 'the event store is append-only: DROP of % is refused',
                        obj.object_identity
                        USING ERRCODE = 'CH000';
                END IF;
            END LOOP;
        END
        $fn$;

        CREATE EVENT TRIGGER chronicle_guard_events_ddl ON ddl_command_end
            WHEN TAG IN ('ALTER TABLE', 'ALTER TRIGGER')
            EXECUTE FUNCTION chronicle_guard_events_ddl();
        CREATE EVENT TRIGGER chronicle_guard_events_drop ON sql_drop
            EXECUTE FUNCTION chronicle_guard_events_drop();
    END IF;
END
$guard$;

-- ---------------------------------------------------------------------------------------
-- Set validation: seat claims. Two live bookings never hold the same seat of the same
-- resource for overlapping time ranges; the exclusion constraint decides, inside the
-- transaction that appends BookingRequested. Claims go when the booking is rejected,
-- cancelled or expires.
-- ---------------------------------------------------------------------------------------

CREATE TABLE seat_claims
(
    resource_id text      NOT NULL,
    seat        text      NOT NULL,
    during      tstzrange NOT NULL,
    booking_id  text      NOT NULL,
    CONSTRAINT seat_claims_no_overlap
        EXCLUDE USING gist (resource_id WITH =, seat WITH =, during WITH &&)
);
CREATE INDEX seat_claims_booking ON seat_claims (booking_id);

CREATE FUNCTION chronicle_claim_seats() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.event_type = 'BookingRequested' THEN
        -- Sorted, so two bookings claiming the same seats lock them in the same order.
        INSERT INTO seat_claims (resource_id, seat, during, booking_id)
        SELECT NEW.payload ->> 'resource_id',
               seat,
               tstzrange((NEW.payload ->> 'starts_at')::timestamptz,
                         (NEW.payload ->> 'ends_at')::timestamptz, '[)'),
               NEW.aggregate_id
          FROM jsonb_array_elements_text(NEW.payload -> 'seats') AS seat
         ORDER BY seat;
    ELSIF NEW.event_type IN ('BookingRejected', 'BookingCancelled', 'BookingExpired') THEN
        DELETE FROM seat_claims WHERE booking_id = NEW.aggregate_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_claim_seats
    AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.aggregate_type = 'Booking')
    EXECUTE FUNCTION chronicle_claim_seats();

-- ---------------------------------------------------------------------------------------
-- Idempotency records, written by the transaction that appends the request's events.
-- Scoped per actor. A second transaction with the same key (a concurrent retry, or the
-- key reused for another request) fails with CH001 and leaves nothing behind; the API
-- then answers from the committed record.
-- ---------------------------------------------------------------------------------------

CREATE TABLE idempotency_keys
(
    actor           text        NOT NULL,
    idempotency_key text        NOT NULL,
    request_hash    text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    last_sequence   bigint      NOT NULL,
    last_position   bigint      NOT NULL,
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, idempotency_key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

CREATE FUNCTION chronicle_record_idempotency() RETURNS trigger
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
        WHERE k.tx_id = pg_current_xact_id();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'idempotency key % was already used', NEW.metadata ->> 'idempotency_key'
            USING ERRCODE = 'CH001';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_record_idempotency
    AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.metadata ? 'idempotency_key')
    EXECUTE FUNCTION chronicle_record_idempotency();

-- ---------------------------------------------------------------------------------------
-- Wake the relay. NOTIFY is delivered at commit and collapses within a transaction.
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION chronicle_notify_append() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('chronicle_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION chronicle_notify_append();

-- ---------------------------------------------------------------------------------------
-- Snapshots: postgres-es updates a snapshot with `WHERE current_snapshot = $n`, commits,
-- and only then looks at the row count, so a lost update would leave the events committed
-- while the caller is told of a conflict (and retries the command). Raising here instead
-- aborts the whole append before it commits. And a first snapshot written after an old
-- one could not be read (the aggregate's shape changed) replaces that old one.
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION chronicle_snapshot_updated() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM updated) THEN
        RAISE EXCEPTION 'snapshot was changed concurrently' USING ERRCODE = '23505';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER snapshots_update_must_match
    AFTER UPDATE ON snapshots
    REFERENCING NEW TABLE AS updated
    FOR EACH STATEMENT EXECUTE FUNCTION chronicle_snapshot_updated();

CREATE FUNCTION chronicle_snapshot_replace() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    DELETE FROM snapshots
     WHERE aggregate_type = NEW.aggregate_type
       AND aggregate_id = NEW.aggregate_id
       AND last_sequence < NEW.last_sequence;
    RETURN NEW;
END
$$;

CREATE TRIGGER snapshots_replace_stale
    BEFORE INSERT ON snapshots
    FOR EACH ROW EXECUTE FUNCTION chronicle_snapshot_replace();
