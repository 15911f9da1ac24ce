-- Parley schema, version 1. Applied once; PRAGMA user_version records it.

-- Agent accounts. Passwords are argon2id PHC strings, never plain text.
CREATE TABLE agents (
    id            TEXT PRIMARY KEY,           -- a_...
    name          TEXT NOT NULL UNIQUE,       -- login name
    password_hash TEXT NOT NULL,
    max_active    INTEGER,                    -- NULL: the server's --max-active
    bot           INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL            -- Unix ms
);

-- One row per conversation. last_seq is the seq of its newest message: the
-- writer assigns seq = last_seq + 1 in the same transaction as the insert, so
-- seqs have no gaps and follow commit order.
CREATE TABLE conversations (
    id             TEXT PRIMARY KEY,          -- c_...
    room           TEXT NOT NULL,
    status         TEXT NOT NULL,             -- queued | active | closed
    customer_id    TEXT NOT NULL,             -- v_...
    customer_name  TEXT NOT NULL,
    agent_id       TEXT,                      -- assignee (kept after close)
    agent_name     TEXT,
    created_at     INTEGER NOT NULL,
    queued_at      INTEGER NOT NULL,          -- orders the room's queue
    last_seq       INTEGER NOT NULL DEFAULT 0,
    closed_at      INTEGER,
    rating         INTEGER,
    rating_comment TEXT
);
CREATE INDEX conversations_by_customer ON conversations (customer_id, created_at);
CREATE INDEX conversations_by_status ON conversations (status, room, queued_at);

-- Every message, note and event, keyed by (conversation, seq).
CREATE TABLE messages (
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    id              TEXT NOT NULL,            -- m_..., 80 random bits: unique system-wide without an index
    ts              INTEGER NOT NULL,
    sender_id       TEXT NOT NULL,
    sender_role     TEXT NOT NULL,
    sender_name     TEXT NOT NULL,
    kind            TEXT NOT NULL,            -- text | note | event
    body            TEXT NOT NULL,
    client_id       TEXT,
    event           TEXT,                     -- JSON of the event, kind = event only
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
-- Idempotent retries: one message per (sender, client_id).
CREATE UNIQUE INDEX messages_by_client_id ON messages (sender_id, client_id) WHERE client_id IS NOT NULL;

-- Read markers: the highest seq a user has read; only ever moves forward.
CREATE TABLE read_markers (
    conversation_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
