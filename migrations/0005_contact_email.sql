-- Parley schema, version 5: a way to follow up by mail.
-- A customer who finds nobody online may leave an email address with the
-- conversation (the `contact` request). It is shown to agents and sent in
-- webhooks with the conversation. NULL: none given.
ALTER TABLE conversations ADD COLUMN contact_email TEXT;
