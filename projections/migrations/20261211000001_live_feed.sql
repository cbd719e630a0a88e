-- The live feed (issue 18, ADR 0037). The feed delivers, at each Kafka offset, the event
-- the read models applied from that message: a message the relay sent twice, or a copy
-- that arrived before its predecessor and was set aside, is skipped at every instance
-- and on every resume alike. The journal therefore records where each event was applied
-- from. NULL for events applied before this column existed or by a rebuild, which reads
-- the event store rather than Kafka: the feed delivers those wherever it meets them.
ALTER TABLE rm_applied_events
    ADD COLUMN kafka_partition int,
    ADD COLUMN kafka_offset    bigint;

-- Single-use stream tickets for `EventSource`, which cannot send an Authorization header
-- (`POST /v1/feed/tickets`). Only a hash of the ticket is stored; using it deletes it.
-- Expired rows are deleted whenever a ticket is issued, so the table holds at most the
-- tickets of the last minute or so.
CREATE TABLE feed_tickets
(
    ticket_hash bytea       PRIMARY KEY,
    subject     text        NOT NULL,
    roles       text[]      NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX feed_tickets_expiry ON feed_tickets (expires_at);
