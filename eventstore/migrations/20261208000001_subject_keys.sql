-- Each data subject's data keys (ADR 0035), wrapped by a master key that is never in
-- the database. A version per key: a subject erased and seen again gets a new one.
-- Erasure empties `wrapped` and sets `erased_at`; nothing can open that version again.
CREATE TABLE subject_keys
(
    subject_id    text        NOT NULL,
    key_version   integer     NOT NULL CHECK (key_version > 0),
    master_key_id text,
    wrapped       bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    erased_at     timestamptz,
    PRIMARY KEY (subject_id, key_version),
    CONSTRAINT subject_keys_wrapped_until_erased
        CHECK ((wrapped IS NULL) = (erased_at IS NOT NULL)
           AND (wrapped IS NULL) = (master_key_id IS NULL))
);

-- Keys still under a given master key, for rotation.
CREATE INDEX subject_keys_by_master ON subject_keys (master_key_id) WHERE wrapped IS NOT NULL;
