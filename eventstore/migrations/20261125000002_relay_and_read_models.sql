-- The relay's checkpoint and the read-model projector's tables. Read models live in the
-- event store's database (CHRONICLE_DATABASE_URL); they are disposable and rebuilt from
-- the event stream, so nothing here is append-only.

-- The relay publishes in commit-safe order (tx_id, global_position); its checkpoint is
-- the last pair whose delivery Kafka acknowledged.
CREATE TABLE relay_checkpoints
(
    name            text        PRIMARY KEY,
    tx_id           xid8        NOT NULL,
    global_position bigint      NOT NULL,
    published       bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Per projector, per partition: the next Kafka offset to apply. Written in the same
-- transaction as the read-model changes of the batch that consumed it.
CREATE TABLE projector_offsets
(
    projector   text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, topic, partition)
);

-- Every event the read-model projector has applied, by global position: the
-- duplicate guard of last resort and what `min_position` waits on.
CREATE TABLE rm_applied_events
(
    global_position bigint      PRIMARY KEY,
    aggregate_type  text        NOT NULL,
    aggregate_id    uuid        NOT NULL,
    sequence        bigint      NOT NULL,
    event_type      text        NOT NULL,
    recorded_at     timestamptz NOT NULL
);

-- Messages a projector could not read (not an envelope, unknown event), kept for a human
-- and skipped so that one bad message cannot stop a projector.
CREATE TABLE projector_dead_letters
(
    projector  text        NOT NULL,
    topic      text        NOT NULL,
    partition  integer     NOT NULL,
    "offset"   bigint      NOT NULL,
    error      text        NOT NULL,
    message    bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, topic, partition, "offset")
);

CREATE TABLE accounts
(
    account_id      uuid        PRIMARY KEY,
    owner           text        NOT NULL,
    currency        text        NOT NULL,
    balance         bigint      NOT NULL,
    overdraft_limit bigint      NOT NULL,
    status          text        NOT NULL,
    version         bigint      NOT NULL,
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    last_position   bigint      NOT NULL
);
CREATE INDEX accounts_owner ON accounts (owner);

CREATE TABLE account_ledger
(
    account_id      uuid        NOT NULL,
    sequence        bigint      NOT NULL,
    kind            text        NOT NULL,
    amount          bigint      NOT NULL,
    balance_after   bigint      NOT NULL,
    reference       text,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    global_position bigint      NOT NULL,
    PRIMARY KEY (account_id, sequence)
);

CREATE TABLE bookings
(
    booking_id       uuid        PRIMARY KEY,
    account_id       uuid        NOT NULL,
    owner            text        NOT NULL,
    resource_id      text        NOT NULL,
    seats            text[]      NOT NULL,
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz NOT NULL,
    price_amount     bigint      NOT NULL,
    price_currency   text        NOT NULL,
    guest_name       text        NOT NULL,
    guest_email      text        NOT NULL,
    notes            text,
    status           text        NOT NULL,
    status_reason    text,
    payment_id       uuid,
    version          bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    created_position bigint      NOT NULL,
    last_position    bigint      NOT NULL
);
-- Keyset pagination, newest first, per filter the list endpoint offers.
CREATE INDEX bookings_by_owner ON bookings (owner, created_position DESC);
CREATE INDEX bookings_by_account ON bookings (account_id, created_position DESC);
CREATE INDEX bookings_by_resource ON bookings (resource_id, created_position DESC);
CREATE INDEX bookings_by_status ON bookings (status, created_position DESC);
CREATE INDEX bookings_by_position ON bookings (created_position DESC);

CREATE TABLE payments
(
    payment_id       uuid        PRIMARY KEY,
    account_id       uuid        NOT NULL,
    owner            text        NOT NULL,
    amount           bigint      NOT NULL,
    currency         text        NOT NULL,
    kind             text        NOT NULL,
    schedule         jsonb,
    booking_id       uuid,
    status           text        NOT NULL,
    charges_captured integer     NOT NULL,
    captured_total   bigint      NOT NULL,
    refunded_total   bigint      NOT NULL,
    failure_reason   text,
    version          bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    last_position    bigint      NOT NULL
);
CREATE INDEX payments_by_account ON payments (account_id);
CREATE INDEX payments_by_booking ON payments (booking_id) WHERE booking_id IS NOT NULL;
