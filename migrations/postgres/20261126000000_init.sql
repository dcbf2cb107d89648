-- weightgate schema. Timestamps are Unix milliseconds; ids are text.

CREATE TABLE models (
    id             TEXT PRIMARY KEY,
    slug           TEXT NOT NULL UNIQUE,
    title          TEXT NOT NULL,
    terms          TEXT NOT NULL,
    terms_version  BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    -- Per-grant limits on what is delivered (never on attempts); NULL is none.
    quota_bytes    BIGINT,
    quota_files    BIGINT
);

CREATE TABLE releases (
    id            TEXT PRIMARY KEY,
    model_id      TEXT NOT NULL REFERENCES models (id),
    name          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    published_at  BIGINT,
    -- The signed manifest and SHA256SUMS, exactly as signed (minisign).
    manifest      TEXT,
    manifest_sig  TEXT,
    sums          TEXT,
    sums_sig      TEXT,
    UNIQUE (model_id, name)
);

CREATE TABLE files (
    id          TEXT PRIMARY KEY,
    release_id  TEXT NOT NULL REFERENCES releases (id),
    name        TEXT NOT NULL,
    object_key  TEXT NOT NULL,
    size        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    -- SHA-256 of every chunk_size bytes, as a JSON array of hex strings.
    chunk_size  BIGINT NOT NULL,
    chunks      TEXT NOT NULL,
    UNIQUE (release_id, name)
);

CREATE TABLE researchers (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE applications (
    id                  TEXT PRIMARY KEY,
    model_id            TEXT NOT NULL REFERENCES models (id),
    researcher_id       TEXT NOT NULL REFERENCES researchers (id),
    name                TEXT NOT NULL,
    affiliation         TEXT NOT NULL,
    intended_use        TEXT NOT NULL,
    terms_version       BIGINT NOT NULL,
    status              TEXT NOT NULL,
    confirm_token_hash  TEXT NOT NULL UNIQUE,
    created_at          BIGINT NOT NULL,
    confirmed_at        BIGINT,
    decided_at          BIGINT
);
CREATE INDEX applications_status ON applications (status, confirmed_at);

CREATE TABLE reviewers (
    id             TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    is_admin       BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE reviews (
    id              TEXT PRIMARY KEY,
    application_id  TEXT NOT NULL REFERENCES applications (id),
    reviewer_id     TEXT NOT NULL REFERENCES reviewers (id),
    decision        TEXT NOT NULL,
    reason          TEXT,
    created_at      BIGINT NOT NULL
);

CREATE TABLE grants (
    id                 TEXT PRIMARY KEY,
    application_id     TEXT NOT NULL UNIQUE REFERENCES applications (id),
    researcher_id      TEXT NOT NULL REFERENCES researchers (id),
    model_id           TEXT NOT NULL REFERENCES models (id),
    access_token_hash  TEXT NOT NULL UNIQUE,
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    revoked_at         BIGINT,
    revoked_reason     TEXT
);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    data        TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);

-- Secrets shared by every replica: link-signing keys and cookie keys.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    purpose     TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Append-only; each row's hash covers its content and the previous row's hash.
CREATE TABLE audit_events (
    seq            BIGINT PRIMARY KEY,
    at             BIGINT NOT NULL,
    action         TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    reason         TEXT,
    actor          TEXT,
    subject        TEXT,
    model_id       TEXT,
    application_id TEXT,
    grant_id       TEXT,
    researcher_id  TEXT,
    file_id        TEXT,
    range_start    BIGINT,
    range_end      BIGINT,
    bytes          BIGINT,
    client_ip      TEXT,
    user_agent     TEXT,
    request_id     TEXT,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_events_grant ON audit_events (grant_id);

CREATE TABLE outbox (
    id               TEXT PRIMARY KEY,
    to_addr          TEXT NOT NULL,
    subject          TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    sent_at          BIGINT,
    last_error       TEXT,
    -- A worker that claimed the message owns it until then.
    lease_owner      TEXT,
    lease_until      BIGINT
);
CREATE INDEX outbox_due ON outbox (sent_at, next_attempt_at);
