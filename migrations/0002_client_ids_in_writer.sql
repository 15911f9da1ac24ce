-- Parley schema, version 2.
-- Retries are found by the store writer, which keeps the client ids of each
-- open conversation in memory (read back from that conversation's messages),
-- so the index on (sender_id, client_id) goes: it cost one more page written
-- per message. A retry is the same sender's same client_id in the same
-- conversation.
DROP INDEX messages_by_client_id;
