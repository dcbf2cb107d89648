-- weightgate schema. Timestamps are Unix milliseconds; ids are text.

CREATE TABLE models (
    id             TEXT PRIMARY KEY,
    slug           TEXT NOT NULL UNIQUE,
    title          TEXT NOT NULL,
    terms          TEXT NOT NULL,
    terms_version  INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    -- Per-grant limits on what is delivered (never on attempts); NULL is none.
    quota_bytes    INTEGER,
    quota_files    INTEGER
);

CREATE TABLE releases (
    id            TEXT PRIMARY KEY,
    model_id      TEXT NOT NULL REFERENCES models (id),
    name          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    published_at  INTEGER,
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
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    -- SHA-256 of every chunk_size bytes, as a JSON array of hex strings.
    chunk_size  INTEGER NOT NULL,
    chunks      TEXT NOT NULL,
    UNIQUE (release_id, name)
);

CREATE TABLE researchers (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE applications (
    id                  TEXT PRIMARY KEY,
    model_id            TEXT NOT NULL REFERENCES models (id),
    researcher_id       TEXT NOT NULL REFERENCES researchers (id),
    name                TEXT NOT NULL,
    affiliation         TEXT NOT NULL,
    intended_use        TEXT NOT NULL,
    terms_version       INTEGER NOT NULL,
    status              TEXT NOT NULL,
    confirm_token_hash  TEXT NOT NULL UNIQUE,
    created_at          INTEGER NOT NULL,
    confirmed_at        INTEGER,
    decided_at          INTEGER
);
CREATE INDEX applications_status ON applications (status, confirmed_at);

CREATE TABLE reviewers (
    id             TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    is_admin       INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE reviews (
    id              TEXT PRIMARY KEY,
    application_id  TEXT NOT NULL REFERENCES applications (id),
    reviewer_id     TEXT NOT NULL REFERENCES reviewers (id),
    decision        TEXT NOT NULL,
    reason          TEXT,
    created_at      INTEGER NOT NULL
);

CREATE TABLE grants (
    id                 TEXT PRIMARY KEY,
    application_id     TEXT NOT NULL UNIQUE REFERENCES applications (id),
    researcher_id      TEXT NOT NULL REFERENCES researchers (id),
    model_id           TEXT NOT NULL REFERENCES models (id),
    access_token_hash  TEXT NOT NULL UNIQUE,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    revoked_at         INTEGER,
    revoked_reason     TEXT
);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    data        TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);

-- Secrets shared by every replica: link-signing keys and cookie keys.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    purpose     TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Append-only; each row's hash covers its content and the previous row's hash.
CREATE TABLE audit_events (
    seq            INTEGER PRIMARY KEY,
    at             INTEGER NOT NULL,
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
    range_start    INTEGER,
    range_end      INTEGER,
    bytes          INTEGER,
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
    created_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    sent_at          INTEGER,
    last_error       TEXT,
    -- A worker that claimed the message owns it until then.
    lease_owner      TEXT,
    lease_until      INTEGER
);
CREATE INDEX outbox_due ON outbox (sent_at, next_attempt_at);
