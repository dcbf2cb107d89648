-- Appends a batch of audit events decided outside the chain's lock, in one
-- statement that holds the lock only while it runs (and its commit).
--
-- The writer read what its fetches depend on (the grants' state, the link
-- keys' retirement) without the lock, and decided each event at p_at. Under
-- the lock this function first checks that none of it has changed since, and
-- that no grant then live may have expired while the batch waited (or that
-- it waited over a second); if so it appends nothing and returns no row, and
-- the writer decides the batch again under the lock, at the time it holds it. Otherwise it chains the events on after the
-- head: each event's hash is SHA-256 over its canonical encoding, which the
-- writer sends split around the two values only the head decides, the
-- position (`seq`) and the previous hash:
--     p_prefix || seq || mid || prev_hash || post
-- so the hashes are those `audit verify` recomputes.
--
-- p_at:       the time (Unix ms) the batch was decided at, its events' time
-- p_events:   [{ord, at, action, ..., occurrences, mid, post}], ord counting
--             from 0 in the order they are to be appended
-- p_grants:   [{id, expires_at, revoked_at, quota_bytes, quota_files}] as read
-- p_keys:     [{kid, retired}] for the keys that signed the batch's links
-- p_released: [fetch_seq] transfers the batch closes on a quota
-- Returns the position of the first event, the seconds spent waiting for
-- the lock, and the seconds it was held until the function returned (the
-- commit's flush follows, still under the lock).
CREATE FUNCTION weightgate_audit_append(p_prefix TEXT, p_at BIGINT, p_events JSON, p_grants JSON, p_keys JSON, p_released JSON)
RETURNS TABLE (first_seq BIGINT, lock_wait DOUBLE PRECISION, lock_held DOUBLE PRECISION)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    asked TIMESTAMPTZ := clock_timestamp();
    granted TIMESTAMPTZ;
    n BIGINT;
    prev TEXT;
    first BIGINT;
    e RECORD;
    prevs TEXT[] := '{}';
    hashes TEXT[] := '{}';
BEGIN
    -- Each statement after the lock must see every batch committed before
    -- it was granted: READ COMMITTED takes a snapshot per statement.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'weightgate_audit_append needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    PERFORM pg_advisory_xact_lock(4242001);
    granted := clock_timestamp();
    -- Decided too long ago: the events' time would stand too far from their
    -- place in the chain.
    IF granted - asked > interval '1 second' THEN
        RETURN;
    END IF;
    IF EXISTS (
        -- A grant live when the batch was decided that may have ended since,
        -- by the database's clock or by the writer's plus the wait.
        SELECT 1
          FROM json_to_recordset(p_grants) AS seen(id TEXT, expires_at BIGINT)
         WHERE seen.expires_at > p_at
           AND seen.expires_at <= greatest(
                   (extract(epoch FROM granted) * 1000)::BIGINT,
                   p_at + (extract(epoch FROM granted - asked) * 1000)::BIGINT + 1)
    ) OR EXISTS (
        SELECT 1
          FROM json_to_recordset(p_grants)
               AS seen(id TEXT, expires_at BIGINT, revoked_at BIGINT, quota_bytes BIGINT, quota_files BIGINT)
          LEFT JOIN grants g ON g.id = seen.id
          LEFT JOIN models m ON m.id = g.model_id
         WHERE g.id IS NULL
            OR g.expires_at IS DISTINCT FROM seen.expires_at
            OR g.revoked_at IS DISTINCT FROM seen.revoked_at
            OR m.quota_bytes IS DISTINCT FROM seen.quota_bytes
            OR m.quota_files IS DISTINCT FROM seen.quota_files
    ) OR EXISTS (
        SELECT 1
          FROM json_to_recordset(p_keys) AS seen(kid TEXT, retired BOOLEAN)
          LEFT JOIN signing_keys k ON k.kid = seen.kid AND k.purpose = 'link'
         WHERE (k.retired_at IS NOT NULL) IS DISTINCT FROM seen.retired
    ) THEN
        RETURN;
    END IF;

    SELECT a.seq, a.hash INTO n, prev FROM audit_events a ORDER BY a.seq DESC LIMIT 1;
    n := coalesce(n, 0);
    prev := coalesce(prev, repeat('0', 64));
    first := n + 1;
    -- The hashes, one after the other; then every row in one statement.
    FOR e IN
        SELECT x.mid, x.post FROM json_to_recordset(p_events) AS x(ord BIGINT, mid TEXT, post TEXT) ORDER BY x.ord
    LOOP
        prevs := prevs || prev;
        prev := encode(sha256(convert_to(p_prefix || (n + 1)::text || e.mid || prev || e.post, 'UTF8')), 'hex');
        hashes := hashes || prev;
        n := n + 1;
    END LOOP;
    INSERT INTO audit_events (seq, at, action, outcome, reason, actor, subject, model_id, application_id,
                              grant_id, researcher_id, file_id, range_start, range_end, bytes, client_ip,
                              user_agent, request_id, prev_hash, hash, occurrences)
    SELECT first + x.ord, x.at, x.action, x.outcome, x.reason, x.actor, x.subject, x.model_id, x.application_id,
           x.grant_id, x.researcher_id, x.file_id, x.range_start, x.range_end, x.bytes, x.client_ip,
           x.user_agent, x.request_id, prevs[x.ord + 1], hashes[x.ord + 1], x.occurrences
      FROM json_to_recordset(p_events) AS x(
            ord BIGINT, at BIGINT, action TEXT, outcome TEXT, reason TEXT, actor TEXT, subject TEXT,
            model_id TEXT, application_id TEXT, grant_id TEXT, researcher_id TEXT, file_id TEXT,
            range_start BIGINT, range_end BIGINT, bytes BIGINT, client_ip TEXT, user_agent TEXT,
            request_id TEXT, occurrences BIGINT);
    DELETE FROM quota_reservations WHERE fetch_seq IN (SELECT value::bigint FROM json_array_elements_text(p_released));
    first_seq := first;
    lock_wait := extract(epoch FROM granted - asked);
    lock_held := extract(epoch FROM clock_timestamp() - granted);
    RETURN NEXT;
END;
$$;
