-- Parley schema, version 6: the store arbitrates routing.
-- A customer has at most one conversation that is not closed per room: a
-- second `open` (from another session or node) finds the first instead.
CREATE UNIQUE INDEX conversations_open_per_customer ON conversations (customer_id, room)
    WHERE status != 'closed';
-- An assignment counts the agent's active conversations against their
-- capacity inside the committing transaction.
CREATE INDEX conversations_by_agent ON conversations (agent_id, status);
