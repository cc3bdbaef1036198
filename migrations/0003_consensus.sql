-- Consensus: the node's Raft log, vote and state machine, kept in its local Postgres (in the
-- node's own database, `backend.database`; the tables exist in every database pgmix opens but
-- only that one's are used). Postgres makes each write durable (fsync) before the commit returns,
-- which is what Raft asks of its log and vote.

CREATE TABLE pgmix.raft_log (
    idx bigint PRIMARY KEY,
    entry jsonb NOT NULL
);

-- The vote, the committed log id, the last purged log id: one row.
CREATE TABLE pgmix.raft_meta (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    vote jsonb,
    committed jsonb,
    purged jsonb
);
INSERT INTO pgmix.raft_meta DEFAULT VALUES;

-- What the state machine has applied: the last log id and the membership, and the snapshot
-- that stands for everything up to it.
CREATE TABLE pgmix.raft_state (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    applied jsonb,
    membership jsonb NOT NULL DEFAULT 'null',
    snapshot jsonb
);
INSERT INTO pgmix.raft_state DEFAULT VALUES;
