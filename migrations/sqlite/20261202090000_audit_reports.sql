-- What the operator's reports read instead of scanning the log: totals kept
-- by folding the log's events, in order, into the tables below. The fold
-- remembers how far it got (report_cursor.seq, and the hash of that event,
-- so that a log rewritten beneath it is noticed) and is brought up to the
-- log's head before any report is answered; `weightgate audit
-- rebuild-reports` empties these tables and folds the whole log again.
-- On SQLite the tables are WITHOUT ROWID: each is stored once, in the order
-- of its key, instead of as rows plus an index of the key beside them.
CREATE TABLE report_cursor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
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
    completed_at  INTEGER,
    PRIMARY KEY (researcher_id, file_id)
) WITHOUT ROWID;
CREATE INDEX report_coverage_model ON report_coverage (model_id, completed_at);

-- Fetches and bytes per researcher and model.
CREATE TABLE report_downloads (
    researcher_id TEXT NOT NULL,
    model_id      TEXT NOT NULL,
    fetches       INTEGER NOT NULL,
    refused       INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    first_fetch   INTEGER,
    last_fetch    INTEGER,
    PRIMARY KEY (researcher_id, model_id)
) WITHOUT ROWID;

-- The client addresses each researcher fetched a model from.
CREATE TABLE report_download_addresses (
    researcher_id TEXT NOT NULL,
    model_id      TEXT NOT NULL,
    client_ip     TEXT NOT NULL,
    PRIMARY KEY (researcher_id, model_id, client_ip)
) WITHOUT ROWID;

-- Fetches under each grant per hour and client address ('' for none); of
-- them, those refused because the grant was revoked, and when.
CREATE TABLE report_grant_fetches (
    grant_id         TEXT NOT NULL,
    hour             INTEGER NOT NULL,
    client_ip        TEXT NOT NULL,
    fetches          INTEGER NOT NULL,
    revoked          INTEGER NOT NULL,
    first_at         INTEGER NOT NULL,
    last_at          INTEGER NOT NULL,
    revoked_first_at INTEGER,
    revoked_last_at  INTEGER,
    PRIMARY KEY (grant_id, hour, client_ip)
) WITHOUT ROWID;
CREATE INDEX report_grant_fetches_hour ON report_grant_fetches (hour);

-- The same for all time, per grant and client address: what a report over
-- the whole log reads.
CREATE TABLE report_grant_addresses (
    grant_id         TEXT NOT NULL,
    client_ip        TEXT NOT NULL,
    fetches          INTEGER NOT NULL,
    revoked          INTEGER NOT NULL,
    first_at         INTEGER NOT NULL,
    last_at          INTEGER NOT NULL,
    revoked_first_at INTEGER,
    revoked_last_at  INTEGER,
    PRIMARY KEY (grant_id, client_ip)
) WITHOUT ROWID;

-- Fetches under each grant per minute: where bursts can be, found without
-- reading the log.
CREATE TABLE report_fetch_minutes (
    grant_id TEXT NOT NULL,
    minute   INTEGER NOT NULL,
    fetches  INTEGER NOT NULL,
    PRIMARY KEY (grant_id, minute)
) WITHOUT ROWID;
CREATE INDEX report_fetch_minutes_busy ON report_fetch_minutes (fetches);

-- Refused events per action, reason, client address and hour.
CREATE TABLE report_refusals (
    action    TEXT NOT NULL,
    reason    TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    hour      INTEGER NOT NULL,
    events    INTEGER NOT NULL,
    first_at  INTEGER NOT NULL,
    last_at   INTEGER NOT NULL,
    PRIMARY KEY (action, reason, client_ip, hour)
) WITHOUT ROWID;

-- The same for all time, per action, reason and client address.
CREATE TABLE report_refusal_totals (
    action    TEXT NOT NULL,
    reason    TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    events    INTEGER NOT NULL,
    first_at  INTEGER NOT NULL,
    last_at   INTEGER NOT NULL,
    PRIMARY KEY (action, reason, client_ip)
) WITHOUT ROWID;

-- Transfers that ended whole, per model and UTC day.
CREATE TABLE report_daily_deliveries (
    model_id TEXT NOT NULL,
    day      INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    PRIMARY KEY (model_id, day)
) WITHOUT ROWID;
