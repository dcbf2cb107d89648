-- What the operator's reports read instead of scanning the log: totals kept
-- by folding the log's events, in order, into the tables below. The fold
-- remembers how far it got (report_cursor.seq, and the hash of that event,
-- so that a log rewritten beneath it is noticed) and is brought up to the
-- log's head before any report is answered; `weightgate audit
-- rebuild-reports` empties these tables and folds the whole log again.
CREATE TABLE report_cursor (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT
);
INSERT INTO report_cursor (id, seq, hash) VALUES (1, 0, NULL);

-- The bytes of each file that reached each researcher, merged, until they
-- cover it whole; then when that happened.
CREATE TABLE report_coverage (
    researcher_id TEXT NOT NULL,
    file_id       TEXT NOT NULL,
    model_id      TEXT,
    spans         TEXT NOT NULL,
    completed_at  BIGINT,
    PRIMARY KEY (researcher_id, file_id)
);
CREATE INDEX report_coverage_model ON report_coverage (model_id, completed_at);

-- Fetches and bytes per researcher and model.
CREATE TABLE report_downloads (
    researcher_id TEXT NOT NULL,
    model_id      TEXT NOT NULL,
    fetches       BIGINT NOT NULL,
    refused       BIGINT NOT NULL,
    bytes         BIGINT NOT NULL,
    first_fetch   BIGINT,
    last_fetch    BIGINT,
    PRIMARY KEY (researcher_id, model_id)
);

-- The client addresses each researcher fetched a model from.
CREATE TABLE report_download_addresses (
    researcher_id TEXT NOT NULL,
    model_id      TEXT NOT NULL,
    client_ip     TEXT NOT NULL,
    PRIMARY KEY (researcher_id, model_id, client_ip)
);

-- Fetches under each grant per hour and client address ('' for none); of
-- them, those refused because the grant was revoked, and when.
CREATE TABLE report_grant_fetches (
    grant_id         TEXT NOT NULL,
    hour             BIGINT NOT NULL,
    client_ip        TEXT NOT NULL,
    fetches          BIGINT NOT NULL,
    revoked          BIGINT NOT NULL,
    first_at         BIGINT NOT NULL,
    last_at          BIGINT NOT NULL,
    revoked_first_at BIGINT,
    revoked_last_at  BIGINT,
    PRIMARY KEY (grant_id, hour, client_ip)
);
CREATE INDEX report_grant_fetches_hour ON report_grant_fetches (hour);

-- The same for all time, per grant and client address: what a report over
-- the whole log reads.
CREATE TABLE report_grant_addresses (
    grant_id         TEXT NOT NULL,
    client_ip        TEXT NOT NULL,
    fetches          BIGINT NOT NULL,
    revoked          BIGINT NOT NULL,
    first_at         BIGINT NOT NULL,
    last_at          BIGINT NOT NULL,
    revoked_first_at BIGINT,
    revoked_last_at  BIGINT,
    PRIMARY KEY (grant_id, client_ip)
);

-- Fetches under each grant per minute: where bursts can be, found without
-- reading the log.
CREATE TABLE report_fetch_minutes (
    grant_id TEXT NOT NULL,
    minute   BIGINT NOT NULL,
    fetches  BIGINT NOT NULL,
    PRIMARY KEY (grant_id, minute)
);
CREATE INDEX report_fetch_minutes_busy ON report_fetch_minutes (fetches);

-- Refused events per action, reason, client address and hour.
CREATE TABLE report_refusals (
    action    TEXT NOT NULL,
    reason    TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    hour      BIGINT NOT NULL,
    events    BIGINT NOT NULL,
    first_at  BIGINT NOT NULL,
    last_at   BIGINT NOT NULL,
    PRIMARY KEY (action, reason, client_ip, hour)
);

-- The same for all time, per action, reason and client address.
CREATE TABLE report_refusal_totals (
    action    TEXT NOT NULL,
    reason    TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    events    BIGINT NOT NULL,
    first_at  BIGINT NOT NULL,
    last_at   BIGINT NOT NULL,
    PRIMARY KEY (action, reason, client_ip)
);

-- Transfers that ended whole, per model and UTC day.
CREATE TABLE report_daily_deliveries (
    model_id TEXT NOT NULL,
    day      BIGINT NOT NULL,
    count    BIGINT NOT NULL,
    PRIMARY KEY (model_id, day)
);
