-- Signed checkpoints of the audit log's head. Each row signs, with an Ed25519
-- key from signing_keys (purpose audit-ed25519), the text
-- "weightgate-audit-checkpoint-v1\nSEQ\nHASH\nAT": a later log that lacks event
-- SEQ, or holds a different hash there, was truncated or rewritten.
CREATE TABLE audit_checkpoints (
    id         TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    at         BIGINT NOT NULL,
    kid        TEXT NOT NULL,
    signature  TEXT NOT NULL,
    UNIQUE (seq, kid)
);

-- The operator's filters and reports read the log by these.
CREATE INDEX audit_events_action ON audit_events (action, seq);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_researcher ON audit_events (researcher_id, seq);
CREATE INDEX audit_events_model ON audit_events (model_id, seq);
CREATE INDEX audit_events_client_ip ON audit_events (client_ip, seq);
