-- The researcher's side: sign-in links, application questions, versioned
-- terms, re-application rules, renewals, appeals and the question thread.

-- One-time sign-in links for researchers; only the token's hash is kept.
CREATE TABLE signin_tokens (
    token_hash     TEXT PRIMARY KEY,
    researcher_id  TEXT NOT NULL REFERENCES researchers (id),
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER
);
CREATE INDEX signin_tokens_researcher ON signin_tokens (researcher_id, created_at);

-- Further access tokens of a grant, minted for a signed-in researcher
-- (the download client's manifest URL); the grant's own token stays valid.
CREATE TABLE grant_tokens (
    token_hash  TEXT PRIMARY KEY,
    grant_id    TEXT NOT NULL REFERENCES grants (id),
    created_at  INTEGER NOT NULL
);

-- Every version of every model's terms; models.terms is the current one.
CREATE TABLE model_terms (
    model_id    TEXT NOT NULL REFERENCES models (id),
    version     INTEGER NOT NULL,
    terms       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (model_id, version)
);
INSERT INTO model_terms (model_id, version, terms, created_at)
    SELECT id, terms_version, terms, created_at FROM models;

-- The model owner's questions (a JSON array) and how many days a denied
-- researcher waits before applying again.
ALTER TABLE models ADD COLUMN questions TEXT NOT NULL DEFAULT '[]';
ALTER TABLE models ADD COLUMN reapply_after_days INTEGER NOT NULL DEFAULT 30;

-- The answers (a JSON array, each with the question as it was asked); the
-- kind: new, renewal (of grant_id) or appeal (of the denied parent_id).
ALTER TABLE applications ADD COLUMN answers TEXT NOT NULL DEFAULT '[]';
ALTER TABLE applications ADD COLUMN kind TEXT NOT NULL DEFAULT 'new';
ALTER TABLE applications ADD COLUMN parent_id TEXT REFERENCES applications (id);
ALTER TABLE applications ADD COLUMN grant_id TEXT REFERENCES grants (id);
CREATE INDEX applications_researcher ON applications (researcher_id, model_id, created_at);

-- Reviewers' questions and researchers' answers on an application.
CREATE TABLE application_messages (
    id              TEXT PRIMARY KEY,
    application_id  TEXT NOT NULL REFERENCES applications (id),
    author_kind     TEXT NOT NULL,
    author_email    TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX application_messages_application ON application_messages (application_id, created_at);
