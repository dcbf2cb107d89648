//! Every kind of event the log records. An event is written with one of
//! these; the log stores its text, and the text of an action is never
//! changed once written, since event hashes cover it.

use crate::types::states::stored_as_text;

stored_as_text! {
    /// What an event records.
    pub Action ("an audit action") {
        ApplicationSubmitted = "application.submitted",
        /// A form for an address that may not apply now; the owner is told why.
        ApplicationDeclined = "application.declined",
        ApplicationConfirmed = "application.confirmed",
        /// A reviewer asked the applicant a question.
        ApplicationQuestion = "application.question",
        ApplicationAnswered = "application.answered",
        ApplicationAppealed = "application.appealed",
        ApplicationRenewalRequested = "application.renewal_requested",
        ReviewApproved = "review.approved",
        ReviewDenied = "review.denied",
        GrantCreated = "grant.created",
        GrantExtended = "grant.extended",
        GrantRevoked = "grant.revoked",
        GrantExpired = "grant.expired",
        GrantReminded = "grant.reminded",
        /// A new access URL for a grant (of its access page and manifest).
        GrantTokenIssued = "grant.token_issued",
        /// An access URL withdrawn by its researcher or a reviewer; the grant
        /// and its other URLs stay.
        AccessUrlWithdrawn = "access_url.withdrawn",
        /// Download links (or a manifest of them) handed out.
        LinksIssued = "links.issued",
        /// A request for a file's bytes, let through or refused.
        FileFetch = "file.fetch",
        /// What a let-through fetch delivered, when its transfer ended.
        FileDelivered = "file.delivered",
        KeysRotated = "keys.rotated",
        KeysRetired = "keys.retired",
        ModelCreated = "model.created",
        ModelPolicy = "model.policy",
        ModelQuestionsChanged = "model.questions_changed",
        ModelQuotaSet = "model.quota_set",
        ModelReapplyAfterChanged = "model.reapply_after_changed",
        ModelTermsChanged = "model.terms_changed",
        ReleasePublished = "release.published",
        ResearcherSignIn = "researcher.sign_in",
        ResearcherSignInLink = "researcher.sign_in_link",
        ReviewerSaved = "reviewer.saved",
        ReviewerChanged = "reviewer.changed",
        ReviewerAssigned = "reviewer.assigned",
        ReviewerUnassigned = "reviewer.unassigned",
        ReviewerSignIn = "reviewer.sign_in",
        ReviewerPasswordChanged = "reviewer.password_changed",
        TemplateSaved = "template.saved",
        TemplateDeleted = "template.deleted",
        PortalStopped = "portal.stopped",
        /// Old events moved to an archived segment in the object store.
        AuditArchived = "audit.archived",
        TokenCreated = "token.created",
        TokenRevoked = "token.revoked",
        /// A request to the API with a token, let through or refused; the
        /// events of what it did share its request id.
        TokenUsed = "token.used",
        WebhookSubscribed = "webhook.subscribed",
        WebhookRemoved = "webhook.removed",
        WebhookSecretRotated = "webhook.secret_rotated",
        WebhookEnabled = "webhook.enabled",
        /// A message sent again on a person's request.
        WebhookResent = "webhook.resent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_has_its_own_text_and_reads_back() {
        let mut texts: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        for &action in Action::ALL {
            assert_eq!(action.as_str().parse::<Action>(), Ok(action));
        }
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), Action::ALL.len(), "two actions share a text");
        assert!("file.fetched".parse::<Action>().is_err());
    }
}
