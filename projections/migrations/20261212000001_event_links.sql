-- The console walks from an event to its cause and to what it caused (issue 19): the
-- journal of applied events answers "which event has this id" and "which events name this
-- one as their cause" without touching the event store.
ALTER TABLE rm_applied_events ADD COLUMN event_id uuid;

-- Event ids are name-based UUIDs (version 5) of "type/id/sequence" in Chronicle's own
-- namespace (eventstore::envelope::event_id); uuid-ossp computes the same ones for the
-- events journaled before this column. The projector writes it from now on.
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
UPDATE rm_applied_events
   SET event_id = uuid_generate_v5('6368726f-6e69-636c-6576-656e74696473',
                                   aggregate_type || '/' || aggregate_id || '/' || sequence)
 WHERE event_id IS NULL;
ALTER TABLE rm_applied_events ALTER COLUMN event_id SET NOT NULL;

CREATE INDEX rm_applied_events_event_id ON rm_applied_events (event_id);
CREATE INDEX rm_applied_events_causation ON rm_applied_events ((metadata ->> 'causation_id'))
    WHERE metadata ->> 'causation_id' IS NOT NULL;
