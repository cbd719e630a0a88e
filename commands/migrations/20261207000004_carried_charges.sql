-- A subscription charge pins what it takes before it takes it (ADR 0034): a charge
-- interrupted between the withdrawal and its record records what was withdrawn, even if
-- the plan or the balance due changed meanwhile.
ALTER TABLE pm_flows ADD COLUMN pinned jsonb;

-- A plan change's net the account refused is carried to the next charge.
ALTER TABLE pm_flows DROP CONSTRAINT pm_flows_status_words;
ALTER TABLE pm_flows
    ADD CONSTRAINT pm_flows_status_words
        CHECK (status IN ('running', 'confirmed', 'captured', 'refunded', 'compensated',
                          'rejected', 'expired', 'failed', 'retrying', 'suspended', 'skipped',
                          'stuck', 'carried'));
