//! Access URLs: the secrets behind a grant's access page and the download
//! client's manifest, each a key to fresh download links for the whole grant.
//!
//! The approval e-mail carries one; a researcher makes more on My access
//! (named, if they like: "cluster", "laptop"). They see each one, never its
//! secret: where it came from, when it was last used and from how many client
//! networks, and withdraw any of them without losing the grant. Reviewers of
//! the model withdraw a single URL too, and the researcher hears of it. A URL
//! stops at its next request on every replica (the row is read each time),
//! after `WEIGHTGATE_ACCESS_URL_TTL` without use, and with its grant. Links
//! it minted before end with their own expiry (`WEIGHTGATE_LINK_TTL`);
//! revoking the grant stops those too.

use crate::{
    app::App,
    audit::{self, Action, Client, Event},
    db::{
        self,
        grants::{AccessUrl, GrantView, NewAccessUrl},
        reviewers::Reviewer,
    },
    domain::authz::{self, ReviewerAction},
    domain::error::{Error, Result},
    domain::forms::single_line,
    domain::researchers::Researcher,
    mail,
    types::{format_ms, hash_token, new_id, new_token, now_ms, states::Origin},
};

/// The longest name a researcher may give an access URL.
pub(crate) const MAX_NAME: usize = 60;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessUrlError {
    #[error("this access URL was withdrawn; sign in to My access for a new one")]
    Withdrawn,
    #[error("this access URL was not used for {0} and has lapsed; sign in to My access for a new one")]
    Lapsed(String),
    #[error("no such access URL")]
    NotFound,
}

impl AccessUrlError {
    /// The reason a refusal names, in the error body and the audit log.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Withdrawn => "access_url_withdrawn",
            Self::Lapsed(_) => "access_url_expired",
            Self::NotFound => "not_found",
        }
    }
}

impl From<AccessUrlError> for Error {
    fn from(err: AccessUrlError) -> Self {
        match err {
            AccessUrlError::NotFound => Error::not_found(err.to_string()),
            AccessUrlError::Withdrawn | AccessUrlError::Lapsed(_) => Error::Forbidden {
                code: err.code(),
                message: err.to_string(),
            },
        }
    }
}

/// Where an access URL stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UrlState {
    Working,
    Withdrawn,
    /// Not used for longer than the portal allows.
    Lapsed,
}

impl UrlState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Working => "working",
            Self::Withdrawn => "withdrawn",
            Self::Lapsed => "lapsed",
        }
    }
}

impl std::fmt::Display for UrlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An access URL as its researcher and the grant's reviewers see it.
#[derive(Debug)]
pub(crate) struct UrlView {
    pub(crate) url: AccessUrl,
    pub(crate) state: UrlState,
    /// Used from more client networks than the portal's setting allows.
    pub(crate) shared: bool,
}

impl UrlView {
    fn of(app: &App, url: AccessUrl, now: i64) -> Self {
        let state = state_of(app, &url, now);
        let shared = url.networks > i64::from(app.config.access_url_max_networks);
        Self { url, state, shared }
    }

    /// What it is called: the researcher's name for it, or where it came from.
    pub(crate) fn label(&self) -> String {
        match (&self.url.name, self.url.origin) {
            (Some(name), _) => name.clone(),
            (None, Origin::Approval) => "from the approval e-mail".into(),
            (None, Origin::MyAccess) => "made on My access".into(),
        }
    }
}

/// A length of time as a person says it: "90 days", or "36h" when not whole
/// days.
fn describe(ttl: std::time::Duration) -> String {
    let secs = ttl.as_secs();
    match secs / 86_400 {
        days if days > 0 && secs.is_multiple_of(86_400) => {
            format!("{days} day{}", if days == 1 { "" } else { "s" })
        }
        _ => humantime::format_duration(ttl).to_string(),
    }
}

fn state_of(app: &App, url: &AccessUrl, now: i64) -> UrlState {
    if url.withdrawn_at.is_some() {
        return UrlState::Withdrawn;
    }
    let ttl = i64::try_from(app.config.access_url_ttl.as_millis()).unwrap_or(i64::MAX);
    let since = url.last_used_at.unwrap_or(url.created_at).max(url.created_at);
    if now.saturating_sub(since) > ttl {
        UrlState::Lapsed
    } else {
        UrlState::Working
    }
}

/// Whether a request through an access URL counts as a use of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// Links are minted (access page, manifest): recorded, when and from
    /// which client network.
    Links,
    /// A release's signed checksums or manifest, the same for everyone:
    /// checked, not recorded.
    ReleaseFile,
}

/// The grant behind an access URL's secret, when the URL still works. A
/// withdrawn or lapsed URL is refused and the refusal audited, counted per
/// client network like other refusals anyone can repeat at will. Recording
/// the use is conditional on the URL still working, so a withdrawal that
/// commits meanwhile is not passed by.
pub(crate) async fn open(app: &App, token: &str, client: &Client, purpose: Use) -> Result<GrantView> {
    let url = db::grants::find_access_url_by_hash(app.db.pool(), &hash_token(token))
        .await?
        .ok_or(AccessUrlError::NotFound)?;
    let grant = db::grants::find_view(app.db.pool(), &url.grant_id)
        .await?
        .ok_or(AccessUrlError::NotFound)?;
    let now = now_ms();
    let lapsed = || AccessUrlError::Lapsed(describe(app.config.access_url_ttl));
    let mut refused = match state_of(app, &url, now) {
        UrlState::Working => None,
        UrlState::Withdrawn => Some(AccessUrlError::Withdrawn),
        UrlState::Lapsed => Some(lapsed()),
    };
    if refused.is_none() && purpose == Use::Links {
        let mut tx = app.db.begin().await?;
        if db::grants::note_access_url_use(&mut tx, &url.id, &client.network(), now).await? {
            tx.commit().await?;
        } else {
            refused = Some(AccessUrlError::Withdrawn);
        }
    }
    if let Some(refused) = refused {
        let event = Event::refused(Action::LinksIssued, refused.code())
            .about_grant(&grant)
            .subject(format!("{} access URL {}", grant.email, url.id))
            .client(client.clone());
        app.record_refusal(event).await?;
        return Err(refused.into());
    }
    Ok(grant)
}

/// Makes a new access URL for one of the researcher's grants, named if they
/// like; returns the manifest URL that carries it. Earlier URLs keep working.
pub(crate) async fn create(
    app: &App,
    researcher: &Researcher,
    grant: &GrantView,
    name: &str,
    client: Client,
) -> Result<String> {
    authz::researcher_owns(&researcher.id, &grant.researcher_id)?;
    let name = match name.trim() {
        "" => None,
        typed => Some(single_line(typed, MAX_NAME, "a name").map_err(Error::invalid)?),
    };
    let token = new_token();
    let id = new_id();
    let mut tx = app.db.begin().await?;
    db::grants::insert_token(
        &mut *tx,
        &NewAccessUrl {
            id: &id,
            token_hash: &hash_token(&token),
            grant_id: &grant.id,
            origin: Origin::MyAccess,
            name: name.as_deref(),
            created_at: now_ms(),
        },
    )
    .await?;
    let event = Event::ok(Action::GrantTokenIssued)
        .actor(researcher.email.clone())
        .about_grant(grant)
        .subject(match &name {
            Some(name) => format!(
                "{} {} access URL {id} ({name})",
                researcher.email, grant.model_slug
            ),
            None => format!("{} {} access URL {id}", researcher.email, grant.model_slug),
        })
        .client(client);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(app.url(&format!("/access/{token}/manifest.json")))
}

/// Every access URL of a grant, oldest first, for a reader the caller has
/// already allowed to see the grant.
pub(crate) async fn of_grant(app: &App, grant: &GrantView) -> Result<Vec<UrlView>> {
    let now = now_ms();
    Ok(db::grants::access_urls_of(app.db.pool(), &grant.id)
        .await?
        .into_iter()
        .map(|url| UrlView::of(app, url, now))
        .collect())
}

/// The researcher withdraws one of their own grant's access URLs. Asking
/// again for one already withdrawn changes nothing.
pub(crate) async fn withdraw_own(
    app: &App,
    researcher: &Researcher,
    grant: &GrantView,
    url_id: &str,
    client: Client,
) -> Result<()> {
    authz::researcher_owns(&researcher.id, &grant.researcher_id)?;
    withdraw(app, grant, url_id, &researcher.email, client, false).await
}

/// A reviewer of the grant's model (or an admin) withdraws one access URL,
/// leaving the grant and its other URLs; the researcher is told by e-mail.
pub(crate) async fn withdraw_as_reviewer(
    app: &App,
    reviewer: &Reviewer,
    grant: &GrantView,
    url_id: &str,
    client: Client,
) -> Result<()> {
    let model_id = grant.model_id.as_str();
    authz::reviewer_may(app, reviewer, ReviewerAction::Act { model_id }).await?;
    withdraw(app, grant, url_id, &reviewer.email, client, true).await
}

async fn withdraw(
    app: &App,
    grant: &GrantView,
    url_id: &str,
    actor: &str,
    client: Client,
    tell_researcher: bool,
) -> Result<()> {
    let url = db::grants::find_access_url(app.db.pool(), &grant.id, url_id)
        .await?
        .ok_or(AccessUrlError::NotFound)?;
    let now = now_ms();
    let mut tx = app.db.begin().await?;
    if !db::grants::withdraw_access_url(&mut *tx, &url.id, actor, now).await? {
        return Ok(());
    }
    let view = UrlView::of(app, url, now);
    let event = Event::ok(Action::AccessUrlWithdrawn)
        .actor(actor.to_owned())
        .about_grant(grant)
        .subject(format!(
            "{} access URL {} ({})",
            grant.email,
            view.url.id,
            view.label()
        ))
        .client(client);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    if tell_researcher {
        mail::enqueue(
            &mut tx,
            &grant.email,
            &format!("One of your access URLs for {} was withdrawn", grant.model_title),
            &format!(
                "Hello {name},\n\nA reviewer withdrew one of your access URLs for {title} (\"{label}\", made \
                 {made} UTC, used from {networks} network(s)). It no longer opens your access page or \
                 the download client's manifest. Your access itself is unchanged: sign in to My access \
                 at {me} for a new URL, and keep it to yourself.\n",
                name = grant.researcher_name,
                title = grant.model_title,
                label = view.label(),
                made = format_ms(view.url.created_at),
                networks = view.url.networks,
                me = app.url("/me/access"),
            ),
        )
        .await?;
    }
    tx.commit().await?;
    if tell_researcher {
        app.mail.wake();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::describe;

    #[test]
    fn lapse_times_read_as_a_person_says_them() {
        assert_eq!(describe(Duration::from_secs(90 * 86_400)), "90 days");
        assert_eq!(describe(Duration::from_secs(86_400)), "1 day");
        assert_eq!(describe(Duration::from_secs(36 * 3600)), "1day 12h");
        assert_eq!(describe(Duration::from_secs(600)), "10m");
    }
}
