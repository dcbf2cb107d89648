-- How many occurrences one event stands for, when it sums up many alike
-- (refused fetches that name no grant, counted per client network and
-- window); NULL for an event that records one thing. The hash covers it
-- only when it is set, so events written before it keep their hashes.
ALTER TABLE audit_events ADD COLUMN occurrences BIGINT;
