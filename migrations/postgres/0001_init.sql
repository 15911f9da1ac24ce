-- Parley on PostgreSQL, schema version 1: the same data as the SQLite
-- store's migrations 0001-0006, in one step. Applied once, under an
-- advisory lock (several nodes may start at once), recorded in
-- parley_migrations.

-- Agent accounts. Passwords are argon2id PHC strings, never plain text.
CREATE TABLE agents (
    id            TEXT PRIMARY KEY,            -- a_...
    name          TEXT NOT NULL UNIQUE,        -- login name
    password_hash TEXT NOT NULL,
    max_active    INTEGER,                     -- NULL: the server's --max-active
    bot           BOOLEAN NOT NULL DEFAULT false,
    created_at    BIGINT NOT NULL,             -- Unix ms
    tokens_after  BIGINT NOT NULL DEFAULT 0    -- tokens issued before (Unix ms) are void
);

-- One row per conversation. last_seq is the seq of its newest message: a
-- writer takes the row's lock (SELECT ... FOR UPDATE), assigns
-- last_seq + 1 and stores it in the same transaction, so seqs have no gaps
-- and no duplicates whichever node writes.
CREATE TABLE conversations (
    id             TEXT PRIMARY KEY,           -- c_...
    room           TEXT NOT NULL,
    status         TEXT NOT NULL,              -- queued | active | closed
    customer_id    TEXT NOT NULL,
    customer_name  TEXT NOT NULL,
    agent_id       TEXT,                       -- assignee (kept after close)
    agent_name     TEXT,
    created_at     BIGINT NOT NULL,
    queued_at      BIGINT NOT NULL,            -- orders the room's queue
    last_seq       BIGINT NOT NULL DEFAULT 0,
    closed_at      BIGINT,
    rating         INTEGER,
    rating_comment TEXT,
    contact_email  TEXT                        -- left by the customer for a reply by mail
);
CREATE INDEX conversations_by_customer ON conversations (customer_id, created_at);
CREATE INDEX conversations_by_status ON conversations (status, room, queued_at);
CREATE INDEX conversations_by_agent ON conversations (agent_id, status);
-- At most one conversation that is not closed per customer and room.
CREATE UNIQUE INDEX conversations_open_per_customer ON conversations (customer_id, room)
    WHERE status <> 'closed';

-- Every message, note and event, keyed by (conversation, seq).
CREATE TABLE messages (
    conversation_id TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    id              TEXT NOT NULL,             -- m_..., 80 random bits
    ts              BIGINT NOT NULL,
    sender_id       TEXT NOT NULL,
    sender_role     TEXT NOT NULL,
    sender_name     TEXT NOT NULL,
    kind            TEXT NOT NULL,             -- text | note | event
    body            TEXT NOT NULL,
    client_id       TEXT,
    event           TEXT,                      -- JSON of the event, kind = event only
    PRIMARY KEY (conversation_id, seq)
);
-- Idempotent retries, whichever node a retry lands on.
CREATE UNIQUE INDEX messages_by_client_id ON messages (conversation_id, sender_id, client_id)
    WHERE client_id IS NOT NULL;

-- Read markers: the highest seq a user has read; only ever moves forward.
CREATE TABLE read_markers (
    conversation_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
