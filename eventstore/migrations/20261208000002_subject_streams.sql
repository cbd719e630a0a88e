-- Which streams hold a data subject's sealed data, under which key version (ADR 0035),
-- written by the transaction that appends the data. An erasure names these streams in
-- its PersonalDataErased event, so every projection knows what to show as erased.
CREATE TABLE subject_streams
(
    subject_id     text    NOT NULL,
    key_version    integer NOT NULL,
    aggregate_type text    NOT NULL,
    aggregate_id   text    NOT NULL,
    first_position bigint  NOT NULL,
    PRIMARY KEY (subject_id, key_version, aggregate_type, aggregate_id)
);

-- The guard of sealed appends. A writer seals with a key it may have cached while
-- another process erased it; data sealed under an erased key could never be read, so
-- the append is refused (CH003) and the writer tries again with a new key. The key
-- row is taken FOR SHARE: an erasure's UPDATE of it waits for this transaction, and
-- this transaction waits for an erasure in flight and then sees it. So an erasure
-- names every stream sealed under the keys it destroys.
CREATE FUNCTION chronicle_seal_guard() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    subject text    := NEW.payload -> 'personal' ->> 'subject';
    version integer := (NEW.payload -> 'personal' ->> 'key_version')::integer;
BEGIN
    PERFORM 1
       FROM subject_keys
      WHERE subject_id = subject AND key_version = version AND wrapped IS NOT NULL
        FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'personal data sealed under an erased or unknown key (version %)', version
            USING ERRCODE = 'CH003';
    END IF;
    INSERT INTO subject_streams (subject_id, key_version, aggregate_type, aggregate_id, first_position)
    VALUES (subject, version, NEW.aggregate_type, NEW.aggregate_id, NEW.global_position)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_seal_guard
    AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.payload ? 'personal')
    EXECUTE FUNCTION chronicle_seal_guard();
