-- The Merkle tree over the log and its signed checkpoints (ADR 0036). Derived from
-- `events` by the notary role; nothing here is trusted by an auditor: the checkpoints
-- the auditor keeps, signed by a key that is never in the database, are what count.

-- Leaf i is the i-th event in commit order (tx_id, global_position). The event's
-- identity is kept beside it so that a verification can name the stream of a leaf whose
-- event was edited, moved or deleted.
CREATE TABLE merkle_leaves
(
    leaf_index      bigint PRIMARY KEY,
    global_position bigint NOT NULL UNIQUE,
    aggregate_type  text   NOT NULL,
    aggregate_id    text   NOT NULL,
    sequence        bigint NOT NULL
);

-- Every perfect subtree: the 2^level leaves from node_index * 2^level. Level 0 holds
-- the leaf hashes. A proof for any tree size reads O(log^2 n) of these.
CREATE TABLE merkle_nodes
(
    level      smallint NOT NULL CHECK (level BETWEEN 0 AND 62),
    node_index bigint   NOT NULL CHECK (node_index >= 0),
    hash       bytea    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, node_index)
);

-- Where the notary is: leaves so far and the last event it read, in commit order.
CREATE TABLE merkle_builder
(
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),
    tree_size       bigint  NOT NULL,
    tx_id           xid8    NOT NULL,
    global_position bigint  NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Signed tree heads. `published` turns true once the checkpoints topic acknowledged it.
CREATE TABLE merkle_checkpoints
(
    tree_size bigint      PRIMARY KEY,
    root      bytea       NOT NULL CHECK (octet_length(root) = 32),
    origin    text        NOT NULL,
    signed_at text        NOT NULL,
    key_id    text        NOT NULL,
    signature text        NOT NULL,
    published boolean     NOT NULL DEFAULT false
);
CREATE INDEX merkle_checkpoints_unpublished ON merkle_checkpoints (tree_size) WHERE NOT published;
