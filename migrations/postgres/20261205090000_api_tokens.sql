-- API tokens: a reviewer's credentials for programs calling /api/v1. Each
-- has a name (which the audit log shows on every use), scopes, and an end;
-- only the SHA-256 of its secret is kept.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    reviewer_id   TEXT NOT NULL REFERENCES reviewers (id),
    name          TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    secret_hash   TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);

CREATE INDEX api_tokens_reviewer ON api_tokens (reviewer_id);

-- The answer to a write sent with an Idempotency-Key, kept for a day, so
-- that the same request sent again is answered without being done twice.
-- A row without a status is a request still running.
CREATE TABLE api_idempotency (
    token_id      TEXT NOT NULL REFERENCES api_tokens (id),
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        BIGINT,
    body          TEXT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (token_id, idem_key)
);

CREATE INDEX api_idempotency_created ON api_idempotency (created_at);
