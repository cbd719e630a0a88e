-- Temporal read models, kept by the read-model projector, so that "as of T" is an
-- indexed lookup and never a replay. Validity ranges are in transaction time
-- (`recorded_at` of the event that opened and of the one that closed the version):
-- a row is the truth for valid_from <= T < valid_to (valid_to NULL: still true).

CREATE TABLE account_balance_history
(
    account_id   uuid        NOT NULL,
    sequence     bigint      NOT NULL,
    balance      bigint      NOT NULL,
    status       text        NOT NULL,
    -- Business time of the change (the movement's occurred_at).
    effective_at timestamptz NOT NULL,
    valid_from   timestamptz NOT NULL,
    valid_to     timestamptz,
    PRIMARY KEY (account_id, sequence)
);
CREATE INDEX account_balance_history_as_of ON account_balance_history (account_id, valid_from DESC, sequence DESC);

CREATE TABLE booking_status_history
(
    booking_id    uuid        NOT NULL,
    sequence      bigint      NOT NULL,
    status        text        NOT NULL,
    status_reason text,
    payment_id    uuid,
    valid_from    timestamptz NOT NULL,
    valid_to      timestamptz,
    PRIMARY KEY (booking_id, sequence)
);
CREATE INDEX booking_status_history_as_of ON booking_status_history (booking_id, valid_from DESC, sequence DESC);

-- Occupancy: bookings of a resource whose business time range covers an instant.
CREATE INDEX bookings_by_resource_time ON bookings (resource_id, starts_at, ends_at);

-- Money that moved through payments: captures positive, refunds negative.
CREATE TABLE payment_ledger
(
    payment_id  uuid        NOT NULL,
    sequence    bigint      NOT NULL,
    kind        text        NOT NULL,
    amount      bigint      NOT NULL,
    currency    text        NOT NULL,
    account_id  uuid        NOT NULL,
    owner       text        NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (payment_id, sequence)
);
CREATE INDEX payment_ledger_by_time ON payment_ledger (recorded_at);

-- The applied-events journal doubles as the audit read model: the full event as the
-- read side received it (current version).
ALTER TABLE rm_applied_events
    ADD COLUMN event_version text,
    ADD COLUMN payload jsonb,
    ADD COLUMN metadata jsonb;
CREATE INDEX rm_applied_events_stream ON rm_applied_events (aggregate_type, aggregate_id, sequence);
