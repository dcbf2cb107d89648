-- PostgreSQL's replicas append audit batches decided outside the chain's lock
-- through a function (weightgate_audit_append) that checks what they were
-- decided on and chains them under the lock. SQLite has one writer, which
-- decides and appends each batch under the database's write lock, so it
-- needs no such function; this migration keeps the two lists in step.
SELECT 1;
