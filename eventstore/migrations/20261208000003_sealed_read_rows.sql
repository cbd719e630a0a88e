-- A booking's personal fields stay sealed in the read table too (ADR 0035): the guest
-- columns read '[sealed]' and `personal` keeps the sealed value and where it was sealed
-- ({sealed, sequence, event_type}); the query that shows the booking opens it with the
-- subject's key. An erasure empties it and writes '[erased]'. Rows written in plain text
-- before sealing keep their columns and no `personal`.
ALTER TABLE bookings ADD COLUMN personal jsonb;
