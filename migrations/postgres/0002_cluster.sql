-- Cluster membership (several nodes on one database, with --redis).
--
-- Each node holds a lease, renewed every few seconds; a node whose lease has
-- expired is gone. `presence` lists the users (agents, and customers with
-- sessions) connected to each node, so that a routing change that depends on
-- somebody being gone everywhere (an agent's grace period running out, a
-- customer who left the queue) is refused while any live node still has them.

CREATE TABLE cluster_nodes (
    id          TEXT PRIMARY KEY,
    expires_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE cluster_presence (
    node_id  TEXT NOT NULL REFERENCES cluster_nodes (id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    PRIMARY KEY (node_id, user_id)
);

-- "Is this user connected to any live node?" (the conditional routing write).
CREATE INDEX cluster_presence_user ON cluster_presence (user_id);

-- The cluster's name on the backplane: nodes on this database publish and
-- subscribe under it, so that two clusters sharing one Redis never mix.
CREATE TABLE cluster_meta (
    id  TEXT PRIMARY KEY
);
INSERT INTO cluster_meta (id) VALUES (md5(random()::text || clock_timestamp()::text));
