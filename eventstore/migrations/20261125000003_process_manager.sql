-- The process manager's state, and the read model its scheduler reads.

ALTER TABLE payments ADD COLUMN initiated_at timestamptz;

-- Recurring payments by when their next charge falls due (maintained by the read-model
-- projector from payment events).
CREATE TABLE payment_schedules
(
    payment_id       uuid        PRIMARY KEY,
    account_id       uuid        NOT NULL,
    owner            text        NOT NULL,
    amount           bigint      NOT NULL,
    currency         text        NOT NULL,
    interval_seconds integer     NOT NULL,
    charge_count     integer,
    until            timestamptz,
    starts_at        timestamptz NOT NULL,
    next_charge      integer     NOT NULL,
    -- NULL once nothing more is due.
    next_due_at      timestamptz,
    -- Failed attempts of next_charge so far.
    attempts         integer     NOT NULL DEFAULT 0,
    status           text        NOT NULL,
    version          bigint      NOT NULL
);
CREATE INDEX payment_schedules_due ON payment_schedules (next_due_at) WHERE status = 'active';

-- One row per flow the process manager runs (a booking's payment, a refund, a charge):
-- where it stands, for operators; correctness rests on the idempotent commands.
CREATE TABLE pm_flows
(
    flow_id    uuid        PRIMARY KEY,
    kind       text        NOT NULL,
    subject_id uuid        NOT NULL,
    status     text        NOT NULL,
    detail     text,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pm_flows_subject ON pm_flows (subject_id);

-- Each completed step of a flow, with the id of the command it issued.
CREATE TABLE pm_steps
(
    flow_id      uuid        NOT NULL,
    step         text        NOT NULL,
    command_id   uuid        NOT NULL,
    completed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow_id, step)
);
