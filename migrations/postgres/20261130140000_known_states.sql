-- Each column that holds a state (src/types/states.rs) accepts only that
-- state's values, so a row the portal cannot read is refused when it is
-- written, not found later by a page that fails. A unit test keeps these
-- lists equal to the enums.

ALTER TABLE applications ADD CONSTRAINT applications_status_known CHECK (status IN ('unconfirmed', 'pending', 'info_requested', 'approved', 'denied'));

ALTER TABLE applications ADD CONSTRAINT applications_kind_known CHECK (kind IN ('new', 'renewal', 'appeal'));

ALTER TABLE reviews ADD CONSTRAINT reviews_decision_known CHECK (decision IN ('approve', 'deny'));

ALTER TABLE reviewers ADD CONSTRAINT reviewers_notify_known CHECK (notify IN ('immediate', 'digest', 'off'));

ALTER TABLE application_messages ADD CONSTRAINT application_messages_author_kind_known CHECK (author_kind IN ('researcher', 'reviewer'));
