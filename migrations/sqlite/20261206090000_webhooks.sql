-- Webhook subscriptions: a reviewer's endpoint that hears of the events it
-- chose, on the models its owner reviews (every model for an admin). The
-- secret signs each message (Standard Webhooks); during a rotation the
-- previous secret signs too, until previous_until.
CREATE TABLE webhook_subscriptions (
    id               TEXT PRIMARY KEY,
    owner_id         TEXT NOT NULL REFERENCES reviewers (id),
    url              TEXT NOT NULL,
    event_types      TEXT NOT NULL,
    secret           TEXT NOT NULL,
    previous_secret  TEXT,
    previous_until   INTEGER,
    created_at       INTEGER NOT NULL,
    -- The newest event when it was made: it hears of later ones only.
    from_seq         INTEGER NOT NULL,
    disabled_at      INTEGER,
    disabled_reason  TEXT
);

CREATE INDEX webhook_subscriptions_owner ON webhook_subscriptions (owner_id);

-- The webhook outbox: one message per subscription and event of the audit
-- log it hears of. The log is written in the transaction of the change it
-- records; a worker reads it on from webhook_cursor and writes the messages,
-- which are delivered in order per subscription, at least once, by a worker
-- on any replica. The id is the message's stable webhook-id; seq is the
-- event's position in the log, which orders them.
CREATE TABLE webhook_messages (
    id               TEXT PRIMARY KEY,
    subscription_id  TEXT NOT NULL REFERENCES webhook_subscriptions (id),
    seq              INTEGER NOT NULL,
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_until      INTEGER,
    delivered_at     INTEGER,
    UNIQUE (subscription_id, seq)
);

CREATE INDEX webhook_messages_waiting ON webhook_messages (subscription_id, seq) WHERE delivered_at IS NULL;
CREATE INDEX webhook_messages_due ON webhook_messages (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX webhook_messages_created ON webhook_messages (created_at);

-- Every attempt to deliver a message, with the answer received: the
-- subscription's delivery log.
CREATE TABLE webhook_attempts (
    id           TEXT PRIMARY KEY,
    message_id   TEXT NOT NULL REFERENCES webhook_messages (id),
    at           INTEGER NOT NULL,
    status       INTEGER,
    answer       TEXT NOT NULL,
    took_ms      INTEGER NOT NULL
);

CREATE INDEX webhook_attempts_message ON webhook_attempts (message_id, at);

-- How far the log has been read into messages: one row.
CREATE TABLE webhook_cursor (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq  INTEGER NOT NULL
);

INSERT INTO webhook_cursor (id, last_seq) SELECT 1, COALESCE(MAX(seq), 0) FROM audit_events;
