-- Each column that holds a state (src/types/states.rs) accepts only that
-- state's values, so a row the portal cannot read is refused when it is
-- written, not found later by a page that fails. A unit test keeps these
-- lists equal to the enums.
-- SQLite cannot add a CHECK to a table that exists, so triggers refuse
-- the same rows.

CREATE TRIGGER applications_status_known_on_insert BEFORE INSERT ON applications
WHEN NEW.status NOT IN ('unconfirmed', 'pending', 'info_requested', 'approved', 'denied')
BEGIN
    SELECT RAISE(ABORT, 'applications.status holds an unknown state');
END;

CREATE TRIGGER applications_status_known_on_update BEFORE UPDATE OF status ON applications
WHEN NEW.status NOT IN ('unconfirmed', 'pending', 'info_requested', 'approved', 'denied')
BEGIN
    SELECT RAISE(ABORT, 'applications.status holds an unknown state');
END;

CREATE TRIGGER applications_kind_known_on_insert BEFORE INSERT ON applications
WHEN NEW.kind NOT IN ('new', 'renewal', 'appeal')
BEGIN
    SELECT RAISE(ABORT, 'applications.kind holds an unknown state');
END;

CREATE TRIGGER applications_kind_known_on_update BEFORE UPDATE OF kind ON applications
WHEN NEW.kind NOT IN ('new', 'renewal', 'appeal')
BEGIN
    SELECT RAISE(ABORT, 'applications.kind holds an unknown state');
END;

CREATE TRIGGER reviews_decision_known_on_insert BEFORE INSERT ON reviews
WHEN NEW.decision NOT IN ('approve', 'deny')
BEGIN
    SELECT RAISE(ABORT, 'reviews.decision holds an unknown state');
END;

CREATE TRIGGER reviews_decision_known_on_update BEFORE UPDATE OF decision ON reviews
WHEN NEW.decision NOT IN ('approve', 'deny')
BEGIN
    SELECT RAISE(ABORT, 'reviews.decision holds an unknown state');
END;

CREATE TRIGGER reviewers_notify_known_on_insert BEFORE INSERT ON reviewers
WHEN NEW.notify NOT IN ('immediate', 'digest', 'off')
BEGIN
    SELECT RAISE(ABORT, 'reviewers.notify holds an unknown state');
END;

CREATE TRIGGER reviewers_notify_known_on_update BEFORE UPDATE OF notify ON reviewers
WHEN NEW.notify NOT IN ('immediate', 'digest', 'off')
BEGIN
    SELECT RAISE(ABORT, 'reviewers.notify holds an unknown state');
END;

CREATE TRIGGER application_messages_author_kind_known_on_insert BEFORE INSERT ON application_messages
WHEN NEW.author_kind NOT IN ('researcher', 'reviewer')
BEGIN
    SELECT RAISE(ABORT, 'application_messages.author_kind holds an unknown state');
END;

CREATE TRIGGER application_messages_author_kind_known_on_update BEFORE UPDATE OF author_kind ON application_messages
WHEN NEW.author_kind NOT IN ('researcher', 'reviewer')
BEGIN
    SELECT RAISE(ABORT, 'application_messages.author_kind holds an unknown state');
END;
