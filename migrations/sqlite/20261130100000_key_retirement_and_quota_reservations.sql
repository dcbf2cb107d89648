-- Retired link-signing keys: links they signed are refused (key_retired)
-- from the moment of retirement, on every replica.
ALTER TABLE signing_keys ADD COLUMN retired_at INTEGER;

-- Transfers let through on a grant whose model has a quota, not yet recorded
-- as delivered: they count against the quota while they run. Written and
-- removed by the audit writer in the transaction of the events that open
-- and close them, so every replica sees the same transfers under way.
CREATE TABLE quota_reservations (
    -- The file.fetch event that let the transfer through.
    fetch_seq   INTEGER PRIMARY KEY,
    grant_id    TEXT NOT NULL,
    file_id     TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX quota_reservations_grant ON quota_reservations (grant_id, created_at);
