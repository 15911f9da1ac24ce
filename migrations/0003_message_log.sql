-- Parley schema, version 3.
-- The message log. The store writer appends each new message here, where a
-- commit's rows lie together in a few pages, instead of into `messages`,
-- where each conversation's newest messages sit in a page of their own (one
-- page written per message and commit). Later, off the ack's path, it folds
-- the log into `messages` one conversation at a time, many messages per page.
-- Two tables, used in turn: one takes new messages while the other, once all
-- of it is folded, is emptied at once. At startup whatever is left in them is
-- folded first (a message that is in both is kept once).
CREATE TABLE message_log_0 (
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    id              TEXT NOT NULL,
    ts              INTEGER NOT NULL,
    sender_id       TEXT NOT NULL,
    sender_role     TEXT NOT NULL,
    sender_name     TEXT NOT NULL,
    kind            TEXT NOT NULL,
    body            TEXT NOT NULL,
    client_id       TEXT,
    event           TEXT
);
CREATE TABLE message_log_1 (
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    id              TEXT NOT NULL,
    ts              INTEGER NOT NULL,
    sender_id       TEXT NOT NULL,
    sender_role     TEXT NOT NULL,
    sender_name     TEXT NOT NULL,
    kind            TEXT NOT NULL,
    body            TEXT NOT NULL,
    client_id       TEXT,
    event           TEXT
);
