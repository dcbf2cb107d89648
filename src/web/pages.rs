//! The pages, as askama templates. Every value is escaped by the template.

use askama::Template;
use axum::response::{Html, IntoResponse, Response};

use super::Error;
use crate::{
    db,
    domain::applications::FieldErrors,
    domain::grants::GrantState,
    domain::questions::Kind as QuestionKind,
    types::{
        format_ms,
        states::{Decision, Kind, Notify, Status},
    },
};

/// Renders a template as an HTML response.
pub(crate) fn render(t: &impl Template) -> Result<Response, Error> {
    Ok(Html(t.render()?).into_response())
}

pub(crate) struct ModelItem {
    pub(crate) slug: String,
    pub(crate) title: String,
    /// What its published releases hold: files, releases, size.
    pub(crate) offers: String,
    /// The first paragraph of its model card, on one line.
    pub(crate) summary: String,
    /// The researcher looking holds access to it now.
    pub(crate) held: bool,
}

pub(crate) struct ReleaseItem {
    pub(crate) name: String,
    pub(crate) published: String,
}

#[derive(Template)]
#[template(path = "public/catalogue.html")]
pub(crate) struct Catalogue {
    pub(crate) models: Vec<ModelItem>,
}

/// The values a researcher entered, kept when the form is shown again.
#[derive(Default)]
pub(crate) struct FormValues {
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) affiliation: String,
    pub(crate) intended_use: String,
    pub(crate) accept_terms: bool,
}

#[derive(Template)]
#[template(path = "public/model.html")]
pub(crate) struct ModelPage {
    pub(crate) slug: String,
    pub(crate) title: String,
    pub(crate) terms: String,
    pub(crate) terms_version: i64,
    /// "3 files".
    pub(crate) files: String,
    pub(crate) total_size: String,
    /// The licence the model card names, if any.
    pub(crate) licence: String,
    /// The model card, rendered and sanitised (`domain::cards`): safe HTML.
    pub(crate) card: String,
    /// Published releases, newest first.
    pub(crate) releases: Vec<ReleaseItem>,
    /// The public key (PEM) that checks every release's `model.sig`.
    pub(crate) model_signing_key: String,
    pub(crate) model_signing_key_url: String,
    pub(crate) form: FormValues,
    pub(crate) errors: FieldErrors,
    pub(crate) csrf: String,
    pub(crate) questions: Vec<QuestionField>,
    /// "Reviews of this model usually take …", or that none were decided yet.
    pub(crate) review_time: String,
    /// For a signed-in researcher who cannot apply now: why, and until when.
    pub(crate) blocked: String,
    pub(crate) signed_in: bool,
}

impl ModelPage {
    pub(crate) fn error(&self, field: &str) -> &str {
        self.errors.get(field).map_or("", String::as_str)
    }
}

#[derive(Template)]
#[template(path = "public/submitted.html")]
pub(crate) struct Submitted {
    pub(crate) title: String,
}

#[derive(Template)]
#[template(path = "public/confirm.html")]
pub(crate) struct ConfirmPage {
    pub(crate) token: String,
    pub(crate) title: String,
    pub(crate) email: String,
    pub(crate) status: Status,
    pub(crate) csrf: String,
}

/// One file of a release on an access page.
pub(crate) struct LinkRow {
    /// Its path in the release (`original/consolidated.00.pth`).
    pub(crate) name: String,
    /// Its own name (`consolidated.00.pth`).
    pub(crate) base: String,
    pub(crate) size: String,
    pub(crate) sha256: String,
    pub(crate) url: String,
}

/// The files of one folder of a release (the release's top when `folder`
/// is empty), shown as a table that folds away when the release is large.
pub(crate) struct FolderRows {
    /// `original/`, or empty.
    pub(crate) folder: String,
    /// "3 files, 16.1 GiB".
    pub(crate) summary: String,
    /// Whether it is unfolded when the page opens.
    pub(crate) open: bool,
    pub(crate) files: Vec<LinkRow>,
}

/// Releases with more files than this show their folders folded.
const UNFOLDED_FILES: usize = 50;

impl FolderRows {
    /// A release's files grouped by folder: the files at the top of the
    /// release first, then each folder's, folders in order; folders are
    /// folded when the release has more than [`UNFOLDED_FILES`] files, and
    /// so is the top when it alone has that many.
    pub(crate) fn all(files: Vec<crate::domain::grants::LinkedFile>) -> Vec<Self> {
        let open = files.len() <= UNFOLDED_FILES;
        let mut by_folder: std::collections::BTreeMap<String, (i64, Vec<LinkRow>)> =
            std::collections::BTreeMap::new();
        for f in files {
            let name = f.file.name;
            let base = crate::types::base_name(&name).to_owned();
            let folder = name[..name.len() - base.len()].to_owned();
            let entry = by_folder.entry(folder).or_default();
            entry.0 += f.file.size;
            entry.1.push(LinkRow {
                base,
                size: human_size(f.file.size),
                sha256: f.file.sha256,
                url: f.url,
                name,
            });
        }
        by_folder
            .into_iter()
            .map(|(folder, (bytes, mut files))| {
                files.sort_by(|a, b| a.base.cmp(&b.base));
                Self {
                    summary: format!(
                        "{}, {}",
                        crate::types::count(files.len() as u64, "file"),
                        human_size(bytes)
                    ),
                    open: open || (folder.is_empty() && files.len() <= UNFOLDED_FILES),
                    folder,
                    files,
                }
            })
            .collect()
    }
}

pub(crate) struct ReleaseRows {
    pub(crate) name: String,
    /// `SHA256SUMS`, `manifest.json` and their `.minisig` live under it.
    pub(crate) base_url: String,
    pub(crate) folders: Vec<FolderRows>,
}

#[derive(Template)]
#[template(path = "researcher/access.html")]
pub(crate) struct AccessPage {
    pub(crate) title: String,
    pub(crate) email: String,
    pub(crate) state: GrantState,
    pub(crate) expires: String,
    pub(crate) links_expire: String,
    pub(crate) releases: Vec<ReleaseRows>,
    pub(crate) revoked_reason: String,
    pub(crate) manifest_url: String,
    pub(crate) public_key_url: String,
    pub(crate) model_signing_key_url: String,
}

#[derive(Template)]
#[template(path = "admin/login.html")]
pub(crate) struct Login {
    pub(crate) csrf: String,
    pub(crate) email: String,
    pub(crate) error: String,
}

/// What every dashboard page shows in its header.
pub(crate) struct Header {
    pub(crate) email: String,
    pub(crate) csrf: String,
    /// Admins also see the pages that manage reviewers and models.
    pub(crate) is_admin: bool,
}

impl Header {
    pub(crate) fn new(reviewer: &db::reviewers::Reviewer, token: &super::auth::Csrf) -> Result<Self, Error> {
        Ok(Self {
            email: reviewer.email.clone(),
            csrf: super::auth::csrf_field(token)?,
            is_admin: reviewer.is_admin(),
        })
    }
}

pub(crate) struct ApplicationRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) affiliation: String,
    pub(crate) model: String,
    pub(crate) status: Status,
    pub(crate) when: String,
}

impl From<&db::applications::ApplicationView> for ApplicationRow {
    fn from(a: &db::applications::ApplicationView) -> Self {
        Self {
            id: a.id.clone(),
            name: a.name.clone(),
            email: a.email.clone(),
            affiliation: a.affiliation.clone(),
            model: a.model_slug.clone(),
            status: a.status,
            when: format_ms(a.decided_at.or(a.confirmed_at).unwrap_or(a.created_at)),
        }
    }
}

/// One row of the queue.
pub(crate) struct QueueRow {
    pub(crate) app: ApplicationRow,
    pub(crate) kind: Kind,
    /// How long it has waited since confirmation, e.g. `3 d 4 h`.
    pub(crate) waited: String,
    pub(crate) overdue: bool,
    /// `1 of 2` under an N-of-M policy, empty otherwise.
    pub(crate) approvals: String,
    /// Shown with a checkbox for bulk decisions.
    pub(crate) selectable: bool,
}

/// An `<option>` of a select.
pub(crate) struct Choice {
    pub(crate) value: String,
    pub(crate) label: String,
    pub(crate) selected: bool,
}

impl Choice {
    pub(crate) fn list(options: &[(&str, &str)], current: &str) -> Vec<Choice> {
        options
            .iter()
            .map(|(value, label)| Choice {
                value: (*value).to_owned(),
                label: (*label).to_owned(),
                selected: *value == current,
            })
            .collect()
    }
}

#[derive(Template)]
#[template(path = "admin/queue.html")]
pub(crate) struct Queue {
    pub(crate) header: Header,
    pub(crate) rows: Vec<QueueRow>,
    pub(crate) total: i64,
    pub(crate) models: Vec<Choice>,
    pub(crate) statuses: Vec<Choice>,
    pub(crate) sorts: Vec<Choice>,
    pub(crate) waited_days: String,
    pub(crate) domain: String,
    pub(crate) text: String,
    pub(crate) page: i64,
    pub(crate) pages: i64,
    /// Query strings of the neighbouring pages, empty at either end.
    pub(crate) prev: String,
    pub(crate) next: String,
    pub(crate) default_days: u64,
    pub(crate) templates: Vec<Choice>,
    /// What the last bulk decision did, row by row.
    pub(crate) results: Vec<BulkResultRow>,
}

/// Kept in the session between the bulk form and the queue it redirects to.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct BulkResultRow {
    pub(crate) id: String,
    pub(crate) email: String,
    pub(crate) ok: bool,
    pub(crate) message: String,
}

pub(crate) struct ReviewRow {
    pub(crate) reviewer: String,
    pub(crate) decision: Decision,
    pub(crate) reason: String,
    pub(crate) note: String,
    pub(crate) days: String,
    pub(crate) when: String,
}

/// Another application or grant of the same researcher.
pub(crate) struct EarlierRow {
    pub(crate) href: String,
    pub(crate) what: String,
    pub(crate) model: String,
    pub(crate) state: String,
    pub(crate) when: String,
}

#[derive(Template)]
#[template(path = "admin/application.html")]
pub(crate) struct ApplicationPage {
    pub(crate) header: Header,
    pub(crate) app: ApplicationRow,
    pub(crate) intended_use: String,
    pub(crate) terms_version: i64,
    pub(crate) submitted: String,
    pub(crate) confirmed: String,
    pub(crate) pending: bool,
    /// The reviewer may decide it (admin, or assigned to the model).
    pub(crate) may_decide: bool,
    pub(crate) already_approved: bool,
    pub(crate) reviews: Vec<ReviewRow>,
    pub(crate) default_days: u64,
    pub(crate) max_days: u64,
    pub(crate) domain: String,
    /// `approval 1 of 2 so far` under an N-of-M policy.
    pub(crate) policy: String,
    pub(crate) history: Vec<EarlierRow>,
    /// The grant this application made: its page, state and end.
    pub(crate) made_grant: Option<EarlierRow>,
    pub(crate) templates: Vec<Choice>,
    /// What it asks for, with the answers to the model's questions and the
    /// question thread.
    pub(crate) kind: Kind,
    pub(crate) parent_id: String,
    pub(crate) grant_id: String,
    pub(crate) answers: Vec<AnswerRow>,
    pub(crate) messages: Vec<MessageRow>,
    pub(crate) can_ask: bool,
}

pub(crate) struct GrantRow {
    pub(crate) id: String,
    pub(crate) email: String,
    pub(crate) model: String,
    pub(crate) created: String,
    pub(crate) expires: String,
    pub(crate) state: GrantState,
    pub(crate) revoked_reason: String,
}

#[derive(Template)]
#[template(path = "admin/grants.html")]
pub(crate) struct Grants {
    pub(crate) header: Header,
    pub(crate) grants: Vec<GrantRow>,
    pub(crate) total: i64,
    pub(crate) models: Vec<Choice>,
    pub(crate) states: Vec<Choice>,
    pub(crate) email: String,
    pub(crate) expiring_days: String,
    pub(crate) page: i64,
    pub(crate) pages: i64,
    pub(crate) prev: String,
    pub(crate) next: String,
}

pub(crate) struct ReviewerRow {
    pub(crate) id: String,
    pub(crate) email: String,
    pub(crate) is_admin: bool,
    pub(crate) disabled: bool,
    pub(crate) notify: Notify,
    pub(crate) models: String,
    pub(crate) is_self: bool,
}

#[derive(Template)]
#[template(path = "admin/reviewers.html")]
pub(crate) struct ReviewersPage {
    pub(crate) header: Header,
    pub(crate) reviewers: Vec<ReviewerRow>,
    pub(crate) models: Vec<Choice>,
    pub(crate) message: String,
    pub(crate) error: String,
    pub(crate) min_password: usize,
}

pub(crate) struct PolicyRow {
    pub(crate) slug: String,
    /// The application questions as JSON, as the admin edits them.
    pub(crate) questions: String,
    /// The same questions as rows of the editor, then blank rows for new ones.
    pub(crate) question_rows: Vec<QuestionRowView>,
    /// Whether `questions` holds refused JSON (its editor is then shown open).
    pub(crate) json_refused: bool,
    pub(crate) terms: String,
    pub(crate) terms_version: i64,
    pub(crate) reapply_after_days: i64,
    /// A change to this model that was refused, and why; the text sent is
    /// kept in the field.
    pub(crate) error: String,
    pub(crate) approvals_needed: i64,
    pub(crate) auto_approve_domains: String,
    pub(crate) review_target_days: i64,
    pub(crate) reviewers: String,
}

/// One row of the question editor.
pub(crate) struct QuestionRowView {
    /// The row's number in the form's field names (`rN_label`).
    pub(crate) n: usize,
    /// The position field's value.
    pub(crate) position: String,
    pub(crate) row: crate::domain::questions::EditorRow,
    pub(crate) kinds: Vec<KindOption>,
    pub(crate) remove: bool,
    /// Whether the row shows a saved question (else it is for a new one).
    pub(crate) existing: bool,
    /// 1-based, among rows of its sort (saved or new).
    pub(crate) number: usize,
}

pub(crate) struct KindOption {
    pub(crate) value: &'static str,
    pub(crate) name: &'static str,
    pub(crate) selected: bool,
}

impl QuestionRowView {
    /// The model's saved questions as editor rows.
    pub(crate) fn saved(
        questions: &[crate::domain::questions::Question],
    ) -> Vec<crate::domain::questions::SentRow> {
        questions
            .iter()
            .enumerate()
            .map(|(i, q)| crate::domain::questions::SentRow {
                fields: crate::domain::questions::EditorRow::of(q),
                position: (i + 1).to_string(),
                remove: false,
                existing: true,
            })
            .collect()
    }

    /// `rows` (less any blank new ones), then
    /// [`crate::domain::questions::NEW_ROWS`] blank rows for new questions.
    pub(crate) fn all(rows: &[crate::domain::questions::SentRow]) -> Vec<Self> {
        let kept: Vec<_> = rows
            .iter()
            .filter(|r| r.existing || !r.is_blank())
            .cloned()
            .collect();
        let first_blank = kept.len() + 1;
        let blanks =
            (0..crate::domain::questions::NEW_ROWS).map(move |i| crate::domain::questions::SentRow {
                fields: crate::domain::questions::EditorRow {
                    kind: "text".into(),
                    ..Default::default()
                },
                position: (first_blank + i).to_string(),
                remove: false,
                existing: false,
            });
        let (mut saved, mut new) = (0, 0);
        kept.into_iter()
            .chain(blanks)
            .enumerate()
            .map(|(n, sent)| {
                let counter = if sent.existing { &mut saved } else { &mut new };
                *counter += 1;
                Self {
                    n,
                    number: *counter,
                    position: sent.position,
                    kinds: crate::domain::questions::KINDS
                        .iter()
                        .map(|(kind, name)| {
                            let value = crate::domain::questions::kind_name(*kind);
                            KindOption {
                                value,
                                name,
                                selected: value == sent.fields.kind,
                            }
                        })
                        .collect(),
                    row: sent.fields,
                    remove: sent.remove,
                    existing: sent.existing,
                }
            })
            .collect()
    }
}

pub(crate) struct TemplateRow {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) body: String,
}

#[derive(Template)]
#[template(path = "admin/models.html")]
pub(crate) struct ModelsPage {
    pub(crate) header: Header,
    pub(crate) models: Vec<PolicyRow>,
    pub(crate) templates: Vec<TemplateRow>,
    pub(crate) message: String,
}

#[derive(Template)]
#[template(path = "admin/account.html")]
pub(crate) struct AccountPage {
    pub(crate) header: Header,
    pub(crate) notify: Vec<Choice>,
    pub(crate) models: String,
    pub(crate) message: String,
    pub(crate) password_error: String,
    pub(crate) min_password: usize,
    /// The reviewer's API tokens, newest first.
    pub(crate) tokens: Vec<TokenRow>,
    /// The scopes a new token may have: (value, label).
    pub(crate) scopes: Vec<(&'static str, &'static str)>,
    /// The secret of the token just made, shown this once.
    pub(crate) new_secret: String,
    pub(crate) token_error: String,
    pub(crate) max_token_days: u64,
    /// The reviewer's webhook subscriptions.
    pub(crate) webhooks: Vec<WebhookRow>,
    /// Every event type a subscription may hear of.
    pub(crate) event_types: Vec<&'static str>,
    /// The secret of the subscription just made, shown this once.
    pub(crate) new_webhook_secret: String,
    pub(crate) webhook_error: String,
}

/// A webhook subscription on the account page.
pub(crate) struct WebhookRow {
    pub(crate) id: String,
    pub(crate) url: String,
    pub(crate) events: String,
    pub(crate) enabled: bool,
    pub(crate) disabled_reason: String,
}

/// A subscription's delivery log.
#[derive(Template)]
#[template(path = "admin/webhook.html")]
pub(crate) struct WebhookPage {
    pub(crate) header: Header,
    pub(crate) message: String,
    pub(crate) row: WebhookRow,
    /// A secret just made by a rotation, shown this once.
    pub(crate) new_secret: String,
    pub(crate) rotating_until: String,
    pub(crate) messages: Vec<WebhookMessageRow>,
    pub(crate) attempts: Vec<WebhookAttemptRow>,
}

pub(crate) struct WebhookMessageRow {
    pub(crate) id: String,
    pub(crate) event: String,
    pub(crate) created: String,
    pub(crate) attempts: i64,
    pub(crate) delivered: String,
}

pub(crate) struct WebhookAttemptRow {
    pub(crate) message_id: String,
    pub(crate) when: String,
    pub(crate) status: String,
    pub(crate) ok: bool,
    pub(crate) answer: String,
    pub(crate) took: String,
}

/// An API token on the account page.
pub(crate) struct TokenRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) scopes: String,
    pub(crate) state: &'static str,
    /// Neither revoked nor expired: it can be revoked.
    pub(crate) active: bool,
    pub(crate) expires: String,
    pub(crate) last_used: String,
}

/// Human-readable byte counts.
pub(crate) fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One audit event, ready to show.
pub(crate) struct EventRowView {
    pub(crate) seq: i64,
    pub(crate) when: String,
    pub(crate) action: String,
    pub(crate) outcome: String,
    pub(crate) reason: String,
    pub(crate) actor: String,
    pub(crate) subject: String,
    pub(crate) grant: String,
    pub(crate) range: String,
    pub(crate) bytes: String,
    pub(crate) client: String,
}

impl From<&db::audit::EventRow> for EventRowView {
    fn from(e: &db::audit::EventRow) -> Self {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        Self {
            seq: e.seq,
            when: format_ms(e.at),
            action: e.action.clone(),
            outcome: match e.occurrences {
                Some(n) => format!("{} ×{n}", e.outcome),
                None => e.outcome.clone(),
            },
            reason: opt(&e.reason),
            actor: opt(&e.actor),
            subject: opt(&e.subject),
            grant: opt(&e.grant_id),
            range: match (e.range_start, e.range_end) {
                (Some(s), Some(t)) => format!("{s}-{t}"),
                _ => String::new(),
            },
            bytes: e.bytes.map(|b| b.to_string()).unwrap_or_default(),
            client: opt(&e.client_ip),
        }
    }
}

pub(crate) struct ModelChart {
    pub(crate) slug: String,
    /// "3 completed transfers".
    pub(crate) total: String,
    /// Drawn by the server from numbers only; safe to embed.
    pub(crate) svg: String,
}

#[derive(Template)]
#[template(path = "admin/audit.html")]
pub(crate) struct AuditPage {
    pub(crate) header: Header,
    pub(crate) events: Vec<EventRowView>,
    pub(crate) older: Option<String>,
    /// The last archived event and its time, when events were archived.
    pub(crate) archived: Option<(i64, String)>,
    pub(crate) charts: Vec<ModelChart>,
    pub(crate) since: String,
    pub(crate) until: String,
    pub(crate) model: String,
    pub(crate) researcher: String,
    pub(crate) grant: String,
    pub(crate) action: String,
    pub(crate) ip: String,
    pub(crate) outcome: String,
}

#[derive(Template)]
#[template(path = "admin/grant.html")]
pub(crate) struct GrantPage {
    pub(crate) header: Header,
    pub(crate) id: String,
    pub(crate) email: String,
    pub(crate) model: String,
    pub(crate) state: GrantState,
    pub(crate) created: String,
    pub(crate) expires: String,
    pub(crate) revoked_reason: String,
    pub(crate) events: Vec<EventRowView>,
    pub(crate) default_days: u64,
    pub(crate) max_days: u64,
    /// Approvals the model's policy needs for an extension.
    pub(crate) policy_approvals: i64,
    pub(crate) access_urls: Vec<AccessUrlRow>,
}

/// One choice of a select or country question.
pub(crate) struct OptionItem {
    pub(crate) value: String,
    pub(crate) label: String,
    pub(crate) selected: bool,
}

/// A model's own question on the application form, with what was entered.
pub(crate) struct QuestionField {
    pub(crate) field: String,
    pub(crate) label: String,
    pub(crate) kind: QuestionKind,
    pub(crate) required: bool,
    pub(crate) help: String,
    pub(crate) value: String,
    pub(crate) checked: bool,
    pub(crate) options: Vec<OptionItem>,
    pub(crate) error: String,
}

/// A question and its answer, ready to show.
pub(crate) struct AnswerRow {
    pub(crate) label: String,
    pub(crate) value: String,
}

impl From<&crate::domain::questions::Answer> for AnswerRow {
    fn from(a: &crate::domain::questions::Answer) -> Self {
        let value = a.display();
        Self {
            label: a.label.clone(),
            value: if value.is_empty() {
                "(no answer)".into()
            } else {
                value
            },
        }
    }
}

#[derive(Template)]
#[template(path = "public/terms.html")]
pub(crate) struct TermsPage {
    pub(crate) slug: String,
    pub(crate) title: String,
    pub(crate) version: i64,
    pub(crate) current: i64,
    pub(crate) published: String,
    pub(crate) terms: String,
}

#[derive(Template)]
#[template(path = "researcher/signin.html")]
pub(crate) struct SigninPage {
    pub(crate) csrf: String,
    pub(crate) email: String,
    pub(crate) error: String,
    /// Shown above the form, e.g. when a link was used up.
    pub(crate) notice: String,
}

#[derive(Template)]
#[template(path = "researcher/signin_sent.html")]
pub(crate) struct SigninSent {
    pub(crate) minutes: i64,
}

#[derive(Template)]
#[template(path = "researcher/signin_link.html")]
pub(crate) struct SigninLink {
    pub(crate) token: String,
    pub(crate) csrf: String,
}

/// A researcher's header: who is signed in, and the sign-out form.
pub(crate) struct ResearcherHeader {
    pub(crate) email: String,
    pub(crate) csrf: String,
}

pub(crate) struct HistoryRow {
    pub(crate) when: String,
    pub(crate) what: String,
    pub(crate) body: String,
}

pub(crate) struct MyApplicationRow {
    pub(crate) id: String,
    pub(crate) model_slug: String,
    pub(crate) model_title: String,
    pub(crate) status: Status,
    pub(crate) status_label: &'static str,
    pub(crate) kind: Kind,
    pub(crate) submitted: String,
    pub(crate) terms_version: i64,
    pub(crate) next_step: String,
    pub(crate) denial_reason: String,
    pub(crate) reapply_from: String,
    pub(crate) reapply_now: bool,
    pub(crate) can_answer: bool,
    pub(crate) can_appeal: bool,
    pub(crate) history: Vec<HistoryRow>,
    pub(crate) answers: Vec<AnswerRow>,
}

#[derive(Template)]
#[template(path = "researcher/me.html")]
pub(crate) struct MyApplications {
    pub(crate) header: ResearcherHeader,
    pub(crate) applications: Vec<MyApplicationRow>,
}

pub(crate) struct MyGrantRow {
    pub(crate) id: String,
    pub(crate) model_slug: String,
    pub(crate) model_title: String,
    pub(crate) state: GrantState,
    pub(crate) expires: String,
    pub(crate) revoked_reason: String,
    pub(crate) links_expire: String,
    pub(crate) releases: Vec<ReleaseRows>,
    /// Set right after the researcher asked for it.
    pub(crate) manifest_url: String,
    /// When a renewal waits for the reviewers.
    pub(crate) renewal_pending: bool,
    pub(crate) access_urls: Vec<AccessUrlRow>,
}

/// One access URL of a grant, as its researcher and reviewers see it.
pub(crate) struct AccessUrlRow {
    pub(crate) id: String,
    pub(crate) label: String,
    pub(crate) created: String,
    pub(crate) last_used: String,
    pub(crate) networks: i64,
    pub(crate) shared: bool,
    pub(crate) state: crate::domain::access_urls::UrlState,
    /// Who withdrew it, and when.
    pub(crate) withdrawn: String,
    pub(crate) may_withdraw: bool,
}

impl AccessUrlRow {
    /// The row as the grant's researcher sees it: who withdrew it is "you"
    /// or "a reviewer", never a reviewer's address.
    pub(crate) fn for_researcher(v: crate::domain::access_urls::UrlView, email: &str) -> Self {
        let by_them = v.url.withdrawn_by.as_deref() == Some(email);
        let at = v.url.withdrawn_at;
        let mut row = Self::from(v);
        if let Some(at) = at {
            let who = if by_them { "you" } else { "a reviewer" };
            row.withdrawn = format!("by {who}, {} UTC", format_ms(at));
        }
        row
    }
}

impl From<crate::domain::access_urls::UrlView> for AccessUrlRow {
    fn from(v: crate::domain::access_urls::UrlView) -> Self {
        use crate::domain::access_urls::UrlState;
        Self {
            label: v.label(),
            id: v.url.id,
            created: format_ms(v.url.created_at),
            last_used: v.url.last_used_at.map(format_ms).unwrap_or_default(),
            networks: v.url.networks,
            shared: v.shared,
            withdrawn: match (&v.url.withdrawn_by, v.url.withdrawn_at) {
                (Some(by), Some(at)) => format!("by {by}, {} UTC", format_ms(at)),
                _ => String::new(),
            },
            may_withdraw: v.state != UrlState::Withdrawn,
            state: v.state,
        }
    }
}

#[derive(Template)]
#[template(path = "researcher/me_access.html")]
pub(crate) struct MyAccess {
    pub(crate) header: ResearcherHeader,
    pub(crate) grants: Vec<MyGrantRow>,
    pub(crate) public_key_url: String,
    pub(crate) model_signing_key_url: String,
}

pub(crate) struct MessageRow {
    pub(crate) who: String,
    pub(crate) when: String,
    pub(crate) body: String,
}
