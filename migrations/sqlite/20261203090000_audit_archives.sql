-- Segments of the audit log moved to the object store by
-- `weightgate audit archive`: events FIRST_SEQ..=LAST_SEQ, which chain from
-- PREV_HASH to LAST_HASH, gzip-compressed JSON Lines in OBJECT (SIZE bytes,
-- SHA256), described by the signed checkpoint and the figures in MANIFEST.
-- The events themselves are gone from audit_events; each segment ends at an
-- event a witnessed checkpoint signs, so the live log chains on from a
-- proven hash. `audit verify --archive` reads the segments back.
CREATE TABLE audit_archives (
    first_seq   INTEGER PRIMARY KEY,
    last_seq    INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    prev_hash   TEXT NOT NULL,
    last_hash   TEXT NOT NULL,
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    object      TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    archived_at INTEGER NOT NULL
);

-- What archived `file.delivered` events delivered under each grant and file:
-- the bytes, and the byte spans covered (merged, `start-end` separated by
-- commas). Quotas count these with the deliveries still in the log, so that
-- archiving the log gives no grant its quota back.
CREATE TABLE audit_archived_deliveries (
    grant_id TEXT NOT NULL,
    file_id  TEXT NOT NULL,
    bytes    INTEGER NOT NULL,
    spans    TEXT NOT NULL,
    PRIMARY KEY (grant_id, file_id)
);

-- One archive run at a time: the run that holds this row until UNTIL_MS
-- (renewed as it goes) is the only one writing segments.
CREATE TABLE audit_archive_runs (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    holder   TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
