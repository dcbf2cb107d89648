-- Every access URL of a grant is a row of grant_tokens, the approval
-- e-mail's too: where it came from, the name its researcher gave it, when it
-- was last used, and whether (and by whom) it was withdrawn. The id names a
-- URL on pages and in forms; the secret is never stored, only its hash.
ALTER TABLE grant_tokens ADD COLUMN id TEXT;
ALTER TABLE grant_tokens ADD COLUMN origin TEXT NOT NULL DEFAULT 'my_access' CHECK (origin IN ('approval', 'my_access'));
ALTER TABLE grant_tokens ADD COLUMN name TEXT;
ALTER TABLE grant_tokens ADD COLUMN last_used_at INTEGER;
ALTER TABLE grant_tokens ADD COLUMN withdrawn_at INTEGER;
ALTER TABLE grant_tokens ADD COLUMN withdrawn_by TEXT;
-- URLs made before this migration count as used now: nobody could see
-- their use until today, and none should lapse at the next request.
UPDATE grant_tokens SET id = substr(token_hash, 1, 32), last_used_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
INSERT INTO grant_tokens (token_hash, grant_id, created_at, id, origin, last_used_at)
    SELECT access_token_hash, id, created_at, substr(access_token_hash, 1, 32), 'approval', CAST(strftime('%s', 'now') AS INTEGER) * 1000 FROM grants;
CREATE UNIQUE INDEX grant_tokens_id ON grant_tokens (id);
CREATE INDEX grant_tokens_grant ON grant_tokens (grant_id, created_at);

-- The client networks (IPv4 address, IPv6 /64) each access URL was used
-- from, so that a URL shared beyond its researcher shows.
CREATE TABLE access_url_networks (
    token_id    TEXT NOT NULL,
    network     TEXT NOT NULL,
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    PRIMARY KEY (token_id, network)
);
