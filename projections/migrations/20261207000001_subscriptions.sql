-- Subscriptions (ADR 0034), kept by the read-model projector.
--
-- `subscriptions`: one row per subscription. `state` is the aggregate's own state as the
-- domain folds it (so the row cannot disagree with the aggregate about periods, plans or
-- status); the other columns are read off it for queries and for the scheduler, which
-- finds due charges by `next_charge_at`. The period in progress depends on the time of
-- the query, so queries read it off `state`.
CREATE TABLE subscriptions
(
    subscription_id      uuid        PRIMARY KEY,
    account_id           uuid        NOT NULL,
    owner                text        NOT NULL,
    status               text        NOT NULL
        CONSTRAINT subscriptions_status_words
            CHECK (status IN ('trialing', 'active', 'past_due', 'paused', 'cancelled', 'ended')),
    plan_name            text        NOT NULL,
    amount               bigint      NOT NULL,
    currency             text        NOT NULL,
    interval             text        NOT NULL
        CONSTRAINT subscriptions_interval_words CHECK (interval IN ('week', 'month', 'year')),
    anchor               timestamptz NOT NULL,
    periods_charged      integer     NOT NULL,
    next_charge_at       timestamptz,
    failed_attempts      integer     NOT NULL,
    ends_at              timestamptz,
    state                jsonb       NOT NULL,
    version              bigint      NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    last_position        bigint      NOT NULL
);
CREATE INDEX subscriptions_due ON subscriptions (next_charge_at) WHERE next_charge_at IS NOT NULL;
CREATE INDEX subscriptions_ending ON subscriptions (ends_at)
    WHERE ends_at IS NOT NULL AND status NOT IN ('cancelled', 'ended');
CREATE INDEX subscriptions_by_account ON subscriptions (account_id);

-- Invoice lines: a period's charge, a plan change's proration credit and charge, and a
-- cancellation's refund. Amounts in minor units: positive owed by the subscriber,
-- negative credited to them.
CREATE TABLE subscription_invoices
(
    subscription_id uuid        NOT NULL,
    sequence        bigint      NOT NULL,
    line            integer     NOT NULL,
    kind            text        NOT NULL
        CONSTRAINT subscription_invoices_kind_words
            CHECK (kind IN ('period_charge', 'proration_credit', 'proration_charge', 'refund')),
    period          integer     NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    amount          bigint      NOT NULL,
    currency        text        NOT NULL,
    plan_name       text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (subscription_id, sequence, line)
);

-- Each version of a subscription in transaction time (valid_from <= T < valid_to), with
-- what it counts for in monthly recurring revenue: the plan's monthly amount while active
-- or past due, zero otherwise. As-of counts and MRR are sums over the versions valid at T.
CREATE TABLE subscription_history
(
    subscription_id uuid        NOT NULL,
    sequence        bigint      NOT NULL,
    status          text        NOT NULL
        CONSTRAINT subscription_history_status_words
            CHECK (status IN ('trialing', 'active', 'past_due', 'paused', 'cancelled', 'ended')),
    currency        text        NOT NULL,
    mrr             bigint      NOT NULL,
    valid_from      timestamptz NOT NULL,
    valid_to        timestamptz,
    PRIMARY KEY (subscription_id, sequence)
);
CREATE INDEX subscription_history_as_of ON subscription_history (valid_from, valid_to);
