-- Parley schema, version 4: revoking an agent's tokens.
-- Tokens carry the time they were issued (`iat`, Unix ms). A token issued
-- before `tokens_after` is void: `parley agent passwd` sets it to the time
-- of the change, so every token issued before (and every session opened
-- with one) ends, while tokens issued later keep working.
ALTER TABLE agents ADD COLUMN tokens_after INTEGER NOT NULL DEFAULT 0;
