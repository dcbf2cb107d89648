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
pub fn render(t: &impl Template) -> Result<Response, Error> {
    Ok(Html(t.render()?).into_response())
}

pub struct ModelItem {
    pub slug: String,
    pub title: String,
}

#[derive(Template)]
#[template(path = "public/catalogue.html")]
pub struct Catalogue {
    pub models: Vec<ModelItem>,
}

/// The values a researcher entered, kept when the form is shown again.
#[derive(Default)]
pub struct FormValues {
    pub name: String,
    pub email: String,
    pub affiliation: String,
    pub intended_use: String,
    pub accept_terms: bool,
}

#[derive(Template)]
#[template(path = "public/model.html")]
pub struct ModelPage {
    pub slug: String,
    pub title: String,
    pub terms: String,
    pub terms_version: i64,
    pub files: i64,
    pub total_size: String,
    pub form: FormValues,
    pub errors: FieldErrors,
    pub csrf: String,
    pub questions: Vec<QuestionField>,
    /// "Reviews of this model usually take …", or that none were decided yet.
    pub review_time: String,
    /// For a signed-in researcher who cannot apply now: why, and until when.
    pub blocked: String,
    pub signed_in: bool,
}

impl ModelPage {
    pub fn error(&self, field: &str) -> &str {
        self.errors.get(field).map_or("", String::as_str)
    }
}

#[derive(Template)]
#[template(path = "public/submitted.html")]
pub struct Submitted {
    pub title: String,
    pub email: String,
}

#[derive(Template)]
#[template(path = "public/confirm.html")]
pub struct ConfirmPage {
    pub token: String,
    pub title: String,
    pub email: String,
    pub status: Status,
    pub csrf: String,
}

pub struct LinkRow {
    pub name: String,
    pub size: String,
    pub sha256: String,
    pub url: String,
}

pub struct ReleaseRows {
    pub name: String,
    /// `SHA256SUMS`, `manifest.json` and their `.minisig` live under it.
    pub base_url: String,
    pub files: Vec<LinkRow>,
}

#[derive(Template)]
#[template(path = "researcher/access.html")]
pub struct AccessPage {
    pub title: String,
    pub email: String,
    pub state: GrantState,
    pub expires: String,
    pub links_expire: String,
    pub releases: Vec<ReleaseRows>,
    pub revoked_reason: String,
    pub manifest_url: String,
    pub public_key_url: String,
}

#[derive(Template)]
#[template(path = "admin/login.html")]
pub struct Login {
    pub csrf: String,
    pub email: String,
    pub error: String,
}

/// What every dashboard page shows in its header.
pub struct Header {
    pub email: String,
    pub csrf: String,
    /// Admins also see the pages that manage reviewers and models.
    pub is_admin: bool,
}

impl Header {
    pub fn new(reviewer: &db::reviewers::Reviewer, token: &super::auth::Csrf) -> Result<Self, Error> {
        Ok(Self {
            email: reviewer.email.clone(),
            csrf: super::auth::csrf_field(token)?,
            is_admin: reviewer.is_admin(),
        })
    }
}

pub struct ApplicationRow {
    pub id: String,
    pub name: String,
    pub email: String,
    pub affiliation: String,
    pub model: String,
    pub status: Status,
    pub when: String,
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
pub struct QueueRow {
    pub app: ApplicationRow,
    pub kind: Kind,
    /// How long it has waited since confirmation, e.g. `3 d 4 h`.
    pub waited: String,
    pub overdue: bool,
    /// `1 of 2` under an N-of-M policy, empty otherwise.
    pub approvals: String,
    /// Shown with a checkbox for bulk decisions.
    pub selectable: bool,
}

/// An `<option>` of a select.
pub struct Choice {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

impl Choice {
    pub fn list(options: &[(&str, &str)], current: &str) -> Vec<Choice> {
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
pub struct Queue {
    pub header: Header,
    pub rows: Vec<QueueRow>,
    pub total: i64,
    pub models: Vec<Choice>,
    pub statuses: Vec<Choice>,
    pub sorts: Vec<Choice>,
    pub waited_days: String,
    pub domain: String,
    pub text: String,
    pub page: i64,
    pub pages: i64,
    /// Query strings of the neighbouring pages, empty at either end.
    pub prev: String,
    pub next: String,
    pub default_days: u64,
    pub templates: Vec<Choice>,
    /// What the last bulk decision did, row by row.
    pub results: Vec<BulkResultRow>,
}

pub struct BulkResultRow {
    pub id: String,
    pub email: String,
    pub ok: bool,
    pub message: String,
}

pub struct ReviewRow {
    pub reviewer: String,
    pub decision: Decision,
    pub reason: String,
    pub note: String,
    pub days: String,
    pub when: String,
}

/// Another application or grant of the same researcher.
pub struct EarlierRow {
    pub href: String,
    pub what: String,
    pub model: String,
    pub state: String,
    pub when: String,
}

#[derive(Template)]
#[template(path = "admin/application.html")]
pub struct ApplicationPage {
    pub header: Header,
    pub app: ApplicationRow,
    pub intended_use: String,
    pub terms_version: i64,
    pub submitted: String,
    pub confirmed: String,
    pub pending: bool,
    /// The reviewer may decide it (admin, or assigned to the model).
    pub may_decide: bool,
    pub already_approved: bool,
    pub reviews: Vec<ReviewRow>,
    pub default_days: u64,
    pub max_days: u64,
    pub domain: String,
    /// `approval 1 of 2 so far` under an N-of-M policy.
    pub policy: String,
    pub history: Vec<EarlierRow>,
    pub templates: Vec<Choice>,
    /// What it asks for, with the answers to the model's questions and the
    /// question thread.
    pub kind: Kind,
    pub parent_id: String,
    pub grant_id: String,
    pub answers: Vec<AnswerRow>,
    pub messages: Vec<MessageRow>,
    pub can_ask: bool,
}

pub struct GrantRow {
    pub id: String,
    pub email: String,
    pub model: String,
    pub created: String,
    pub expires: String,
    pub state: GrantState,
    pub revoked_reason: String,
}

#[derive(Template)]
#[template(path = "admin/grants.html")]
pub struct Grants {
    pub header: Header,
    pub grants: Vec<GrantRow>,
    pub total: i64,
    pub models: Vec<Choice>,
    pub states: Vec<Choice>,
    pub email: String,
    pub expiring_days: String,
    pub page: i64,
    pub pages: i64,
    pub prev: String,
    pub next: String,
}

pub struct ReviewerRow {
    pub id: String,
    pub email: String,
    pub is_admin: bool,
    pub disabled: bool,
    pub notify: Notify,
    pub models: String,
    pub is_self: bool,
}

#[derive(Template)]
#[template(path = "admin/reviewers.html")]
pub struct ReviewersPage {
    pub header: Header,
    pub reviewers: Vec<ReviewerRow>,
    pub models: Vec<Choice>,
    pub message: String,
    pub error: String,
    pub min_password: usize,
}

pub struct PolicyRow {
    pub slug: String,
    /// The application questions as JSON, as the admin edits them.
    pub questions: String,
    /// The same questions as rows of the editor, then blank rows for new ones.
    pub question_rows: Vec<QuestionRowView>,
    /// Whether `questions` holds refused JSON (its editor is then shown open).
    pub json_refused: bool,
    pub terms: String,
    pub terms_version: i64,
    pub reapply_after_days: i64,
    /// A change to this model that was refused, and why; the text sent is
    /// kept in the field.
    pub error: String,
    pub approvals_needed: i64,
    pub auto_approve_domains: String,
    pub review_target_days: i64,
    pub reviewers: String,
}

/// One row of the question editor.
pub struct QuestionRowView {
    /// The row's number in the form's field names (`rN_label`).
    pub n: usize,
    /// The position field's value.
    pub position: String,
    pub row: crate::domain::questions::EditorRow,
    pub kinds: Vec<KindOption>,
    pub remove: bool,
    /// Whether the row shows a saved question (else it is for a new one).
    pub existing: bool,
    /// 1-based, among rows of its sort (saved or new).
    pub number: usize,
}

pub struct KindOption {
    pub value: &'static str,
    pub name: &'static str,
    pub selected: bool,
}

impl QuestionRowView {
    /// The model's saved questions as editor rows.
    pub fn saved(questions: &[crate::domain::questions::Question]) -> Vec<crate::domain::questions::SentRow> {
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
    pub fn all(rows: &[crate::domain::questions::SentRow]) -> Vec<Self> {
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

pub struct TemplateRow {
    pub id: String,
    pub title: String,
    pub body: String,
}

#[derive(Template)]
#[template(path = "admin/models.html")]
pub struct ModelsPage {
    pub header: Header,
    pub models: Vec<PolicyRow>,
    pub templates: Vec<TemplateRow>,
    pub message: String,
}

#[derive(Template)]
#[template(path = "admin/account.html")]
pub struct AccountPage {
    pub header: Header,
    pub notify: Vec<Choice>,
    pub models: String,
    pub message: String,
    pub password_error: String,
    pub min_password: usize,
}

/// Human-readable byte counts.
pub fn human_size(bytes: i64) -> String {
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
pub struct EventRowView {
    pub seq: i64,
    pub when: String,
    pub action: String,
    pub outcome: String,
    pub reason: String,
    pub actor: String,
    pub subject: String,
    pub grant: String,
    pub range: String,
    pub bytes: String,
    pub client: String,
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

pub struct ModelChart {
    pub slug: String,
    pub total: u64,
    /// Drawn by the server from numbers only; safe to embed.
    pub svg: String,
}

#[derive(Template)]
#[template(path = "admin/audit.html")]
pub struct AuditPage {
    pub header: Header,
    pub events: Vec<EventRowView>,
    pub older: Option<String>,
    pub charts: Vec<ModelChart>,
    pub since: String,
    pub until: String,
    pub model: String,
    pub researcher: String,
    pub grant: String,
    pub action: String,
    pub ip: String,
    pub outcome: String,
}

#[derive(Template)]
#[template(path = "admin/grant.html")]
pub struct GrantPage {
    pub header: Header,
    pub id: String,
    pub email: String,
    pub model: String,
    pub state: GrantState,
    pub created: String,
    pub expires: String,
    pub revoked_reason: String,
    pub events: Vec<EventRowView>,
    pub default_days: u64,
    pub max_days: u64,
    /// Approvals the model's policy needs for an extension.
    pub policy_approvals: i64,
}

/// One choice of a select or country question.
pub struct OptionItem {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

/// A model's own question on the application form, with what was entered.
pub struct QuestionField {
    pub field: String,
    pub label: String,
    pub kind: QuestionKind,
    pub required: bool,
    pub help: String,
    pub value: String,
    pub checked: bool,
    pub options: Vec<OptionItem>,
    pub error: String,
}

/// A question and its answer, ready to show.
pub struct AnswerRow {
    pub label: String,
    pub value: String,
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
pub struct TermsPage {
    pub slug: String,
    pub title: String,
    pub version: i64,
    pub current: i64,
    pub published: String,
    pub terms: String,
}

#[derive(Template)]
#[template(path = "researcher/signin.html")]
pub struct SigninPage {
    pub csrf: String,
    pub email: String,
    pub error: String,
    /// Shown above the form, e.g. when a link was used up.
    pub notice: String,
}

#[derive(Template)]
#[template(path = "researcher/signin_sent.html")]
pub struct SigninSent {
    pub email: String,
    pub minutes: i64,
}

#[derive(Template)]
#[template(path = "researcher/signin_link.html")]
pub struct SigninLink {
    pub token: String,
    pub csrf: String,
}

/// A researcher's header: who is signed in, and the sign-out form.
pub struct ResearcherHeader {
    pub email: String,
    pub csrf: String,
}

pub struct HistoryRow {
    pub when: String,
    pub what: String,
    pub body: String,
}

pub struct MyApplicationRow {
    pub id: String,
    pub model_slug: String,
    pub model_title: String,
    pub status: Status,
    pub status_label: &'static str,
    pub kind: Kind,
    pub submitted: String,
    pub terms_version: i64,
    pub next_step: String,
    pub denial_reason: String,
    pub reapply_from: String,
    pub reapply_now: bool,
    pub can_answer: bool,
    pub can_appeal: bool,
    pub history: Vec<HistoryRow>,
    pub answers: Vec<AnswerRow>,
}

#[derive(Template)]
#[template(path = "researcher/me.html")]
pub struct MyApplications {
    pub header: ResearcherHeader,
    pub applications: Vec<MyApplicationRow>,
}

pub struct MyGrantRow {
    pub id: String,
    pub model_slug: String,
    pub model_title: String,
    pub state: GrantState,
    pub expires: String,
    pub revoked_reason: String,
    pub links_expire: String,
    pub releases: Vec<ReleaseRows>,
    /// Set right after the researcher asked for it.
    pub manifest_url: String,
    /// When a renewal waits for the reviewers.
    pub renewal_pending: bool,
}

#[derive(Template)]
#[template(path = "researcher/me_access.html")]
pub struct MyAccess {
    pub header: ResearcherHeader,
    pub grants: Vec<MyGrantRow>,
    pub public_key_url: String,
}

pub struct MessageRow {
    pub who: String,
    pub when: String,
    pub body: String,
}
