-- Audit checkpoint keys no longer live in the database: whoever could write
-- it could re-sign a rewritten log. The key is now read from
-- WEIGHTGATE_AUDIT_KEY or a key file, and every checkpoint also goes to a
-- witness outside the database. Checkpoints signed with a key that lived
-- here prove nothing against the database's writers, so they go with their
-- keys; the first checkpoint signed with the new key covers every event
-- before it (each event's hash chains to all before it).
DELETE FROM audit_checkpoints;
DELETE FROM signing_keys WHERE purpose = 'audit-ed25519';
