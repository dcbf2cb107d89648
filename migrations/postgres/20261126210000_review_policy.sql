-- How each model is reviewed, who reviews it, and what the portal tells
-- reviewers and researchers on its own.

-- Approvals from distinct reviewers a manual decision needs (N of M).
ALTER TABLE models ADD COLUMN approvals_needed BIGINT NOT NULL DEFAULT 1;
-- Comma-separated e-mail domains whose applications are approved without a
-- reviewer; NULL or empty means every application is reviewed by hand.
ALTER TABLE models ADD COLUMN auto_approve_domains TEXT;
-- Days an application may wait before the queue marks it overdue.
ALTER TABLE models ADD COLUMN review_target_days BIGINT NOT NULL DEFAULT 7;

-- Grant length the approving reviewer chose, in days (NULL: the default).
ALTER TABLE reviews ADD COLUMN grant_days BIGINT;
-- A note for the researcher that comes with an approval.
ALTER TABLE reviews ADD COLUMN note TEXT;

-- 'immediate', 'digest' or 'off': how a reviewer hears of waiting applications.
ALTER TABLE reviewers ADD COLUMN notify TEXT NOT NULL DEFAULT 'immediate';
ALTER TABLE reviewers ADD COLUMN last_digest_at BIGINT;
-- A disabled reviewer cannot sign in; decisions they made stay as they were.
ALTER TABLE reviewers ADD COLUMN disabled_at BIGINT;

-- Reviewers (not admins) decide applications only for the models they are assigned.
CREATE TABLE model_reviewers (
    model_id     TEXT NOT NULL REFERENCES models (id),
    reviewer_id  TEXT NOT NULL REFERENCES reviewers (id),
    PRIMARY KEY (model_id, reviewer_id)
);

-- Denial reasons reviewers pick from and edit.
CREATE TABLE deny_templates (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL UNIQUE,
    body        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- When the researcher was reminded of the coming expiry, and when the
-- expiry was written to the audit log.
ALTER TABLE grants ADD COLUMN reminded_at BIGINT;
ALTER TABLE grants ADD COLUMN expiry_logged_at BIGINT;
CREATE INDEX grants_expiry ON grants (expires_at);
