-- Raised whenever an account's sessions must end (it was disabled): a
-- session is honoured only while the epoch it signed in under holds, so
-- enabling the account again does not bring old sessions back.
ALTER TABLE reviewers ADD COLUMN session_epoch INTEGER NOT NULL DEFAULT 0;
