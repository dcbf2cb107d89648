-- A leaner audit log. Every text of an event that repeats from event to
-- event (its action, outcome and reason, who acted, its subject, the ids of
-- what it names, the client's address and user agent) is stored once, in
-- audit_terms, and named by its number; the two hashes are stored as their
-- 32 bytes, and a request id in the form the portal gives it (a UUID) as
-- its 16. What an event says, and the canonical form its hash covers, do
-- not change: the view audit_log reads every event back as text, column for
-- column as audit_events held it before.
--
-- A term is never changed or removed while an event names it: altering one
-- alters every event that names it, which `audit verify` finds as it finds
-- any other altered event.
CREATE TABLE audit_terms (
    id   INTEGER PRIMARY KEY,
    term TEXT NOT NULL UNIQUE
);

-- The events as they were, to be copied over and dropped.
DROP INDEX audit_events_grant;
DROP INDEX audit_events_action;
DROP INDEX audit_events_at;
DROP INDEX audit_events_researcher;
DROP INDEX audit_events_model;
DROP INDEX audit_events_client_ip;
ALTER TABLE audit_events RENAME TO audit_events_text;

INSERT INTO audit_terms (term)
SELECT term FROM (
    SELECT action AS term FROM audit_events_text
    UNION SELECT outcome FROM audit_events_text
    UNION SELECT reason FROM audit_events_text
    UNION SELECT actor FROM audit_events_text
    UNION SELECT subject FROM audit_events_text
    UNION SELECT model_id FROM audit_events_text
    UNION SELECT application_id FROM audit_events_text
    UNION SELECT grant_id FROM audit_events_text
    UNION SELECT researcher_id FROM audit_events_text
    UNION SELECT file_id FROM audit_events_text
    UNION SELECT client_ip FROM audit_events_text
    UNION SELECT user_agent FROM audit_events_text
) WHERE term IS NOT NULL ORDER BY term;

-- The repeated texts as numbers into audit_terms; hashes that are not
-- lower-case hexadecimal text (none that weightgate wrote: a NUL byte, which
-- SQLite's text functions stop at, counts as not) keep their bytes, so that
-- they read back as altered.
CREATE TABLE audit_events (
    seq              INTEGER PRIMARY KEY,
    at               INTEGER NOT NULL,
    action_term      INTEGER NOT NULL,
    outcome_term     INTEGER NOT NULL,
    reason_term      INTEGER,
    actor_term       INTEGER,
    subject_term     INTEGER,
    model_term       INTEGER,
    application_term INTEGER,
    grant_term       INTEGER,
    researcher_term  INTEGER,
    file_term        INTEGER,
    range_start      INTEGER,
    range_end        INTEGER,
    bytes            INTEGER,
    client_ip_term   INTEGER,
    user_agent_term  INTEGER,
    request_uuid     BLOB,
    request_text     TEXT,
    prev_hash        BLOB NOT NULL,
    hash             BLOB NOT NULL,
    occurrences      INTEGER
);
INSERT INTO audit_events (seq, at, action_term, outcome_term, reason_term, actor_term, subject_term, model_term, application_term, grant_term, researcher_term, file_term, range_start, range_end, bytes, client_ip_term, user_agent_term, request_uuid, request_text, prev_hash, hash, occurrences)
SELECT o.seq,
       o.at,
       (SELECT id FROM audit_terms WHERE term = o.action),
       (SELECT id FROM audit_terms WHERE term = o.outcome),
       (SELECT id FROM audit_terms WHERE term = o.reason),
       (SELECT id FROM audit_terms WHERE term = o.actor),
       (SELECT id FROM audit_terms WHERE term = o.subject),
       (SELECT id FROM audit_terms WHERE term = o.model_id),
       (SELECT id FROM audit_terms WHERE term = o.application_id),
       (SELECT id FROM audit_terms WHERE term = o.grant_id),
       (SELECT id FROM audit_terms WHERE term = o.researcher_id),
       (SELECT id FROM audit_terms WHERE term = o.file_id),
       o.range_start,
       o.range_end,
       o.bytes,
       (SELECT id FROM audit_terms WHERE term = o.client_ip),
       (SELECT id FROM audit_terms WHERE term = o.user_agent),
       CASE WHEN typeof(o.request_id) = 'text' AND instr(CAST(o.request_id AS BLOB), X'00') = 0
                 AND o.request_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
            THEN unhex(replace(o.request_id, '-', '')) END,
       CASE WHEN NOT (typeof(o.request_id) = 'text' AND instr(CAST(o.request_id AS BLOB), X'00') = 0
                 AND o.request_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]')
            THEN o.request_id END,
       CASE WHEN typeof(o.prev_hash) = 'text' AND instr(CAST(o.prev_hash AS BLOB), X'00') = 0
                 AND NOT o.prev_hash GLOB '*[^0-9a-f]*' AND length(o.prev_hash) % 2 = 0
            THEN unhex(o.prev_hash) ELSE CAST(o.prev_hash AS BLOB) END,
       CASE WHEN typeof(o.hash) = 'text' AND instr(CAST(o.hash AS BLOB), X'00') = 0
                 AND NOT o.hash GLOB '*[^0-9a-f]*' AND length(o.hash) % 2 = 0
            THEN unhex(o.hash) ELSE CAST(o.hash AS BLOB) END,
       o.occurrences
  FROM audit_events_text o ORDER BY o.seq;
DROP TABLE audit_events_text;

-- The operator's filters and reports read the log by these. A term's index
-- lists its events in sequence order (the row's position is the last column
-- of every index entry), so the newest events of a grant are the end of its
-- entries.
CREATE INDEX audit_events_grant ON audit_events (grant_term) WHERE grant_term IS NOT NULL;
CREATE INDEX audit_events_action ON audit_events (action_term);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_researcher ON audit_events (researcher_term) WHERE researcher_term IS NOT NULL;
CREATE INDEX audit_events_model ON audit_events (model_term) WHERE model_term IS NOT NULL;
CREATE INDEX audit_events_client_ip ON audit_events (client_ip_term) WHERE client_ip_term IS NOT NULL;

-- Every event as text, as the log's hash covers it.
CREATE VIEW audit_log AS
SELECT e.seq,
       e.at,
       (SELECT term FROM audit_terms WHERE id = e.action_term) AS action,
       (SELECT term FROM audit_terms WHERE id = e.outcome_term) AS outcome,
       (SELECT term FROM audit_terms WHERE id = e.reason_term) AS reason,
       (SELECT term FROM audit_terms WHERE id = e.actor_term) AS actor,
       (SELECT term FROM audit_terms WHERE id = e.subject_term) AS subject,
       (SELECT term FROM audit_terms WHERE id = e.model_term) AS model_id,
       (SELECT term FROM audit_terms WHERE id = e.application_term) AS application_id,
       (SELECT term FROM audit_terms WHERE id = e.grant_term) AS grant_id,
       (SELECT term FROM audit_terms WHERE id = e.researcher_term) AS researcher_id,
       (SELECT term FROM audit_terms WHERE id = e.file_term) AS file_id,
       e.range_start,
       e.range_end,
       e.bytes,
       (SELECT term FROM audit_terms WHERE id = e.client_ip_term) AS client_ip,
       (SELECT term FROM audit_terms WHERE id = e.user_agent_term) AS user_agent,
       CASE WHEN e.request_uuid IS NULL THEN e.request_text
            WHEN length(e.request_uuid) <> 16 THEN lower(hex(e.request_uuid))
            ELSE lower(substr(hex(e.request_uuid), 1, 8) || '-' || substr(hex(e.request_uuid), 9, 4) || '-' ||
                       substr(hex(e.request_uuid), 13, 4) || '-' || substr(hex(e.request_uuid), 17, 4) || '-' ||
                       substr(hex(e.request_uuid), 21))
       END AS request_id,
       lower(hex(e.prev_hash)) AS prev_hash,
       lower(hex(e.hash)) AS hash,
       e.occurrences
  FROM audit_events e;
