//! The researcher's side before access: catalogue, model page, application
//! form and e-mail confirmation.

use super::auth::Csrf;
use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{
    AppState, ClientInfo, Error,
    auth::{MaybeResearcher, csrf_field},
    extract::{CsrfForm, Path},
    limited,
    pages::{self, FormValues, OptionItem, QuestionField, render},
};
use crate::{
    db::{self, models::Model},
    domain::applications::{self, ApplicationForm, Eligibility, FieldErrors},
    domain::grants::GrantState,
    domain::questions::{self, Kind},
    domain::researchers::Researcher,
    types::{count, format_ms, now_ms},
};

/// Every model with what it offers, its card's one-line summary and, for a
/// signed-in researcher, whether they hold access to it now.
pub(crate) async fn catalogue(
    State(state): State<AppState>,
    MaybeResearcher(researcher): MaybeResearcher,
) -> Result<Response, Error> {
    let pool = state.app.db.pool();
    let models = db::models::list_models(pool).await?;
    let summaries: std::collections::HashMap<String, String> = db::models::newest_cards(pool)
        .await?
        .into_iter()
        .filter_map(|(model, markdown)| Some((model, crate::domain::cards::summary(&markdown)?)))
        .collect();
    let now = now_ms();
    let held: std::collections::HashSet<String> = match &researcher {
        Some(r) => db::grants::list_of_researcher(pool, &r.id)
            .await?
            .into_iter()
            .filter(|g| GrantState::of(g, now) == GrantState::Active)
            .map(|g| g.model_id)
            .collect(),
        None => Default::default(),
    };
    let totals: std::collections::HashMap<String, (i64, i64, i64)> =
        db::models::published_totals_by_model(pool)
            .await?
            .into_iter()
            .map(|(model, releases, files, bytes)| (model, (releases, files, bytes)))
            .collect();
    render(&pages::Catalogue {
        models: models
            .into_iter()
            .map(|m| {
                let (releases, files, bytes) = totals.get(&m.id).copied().unwrap_or_default();
                pages::ModelItem {
                    summary: summaries.get(&m.id).cloned().unwrap_or_default(),
                    held: held.contains(&m.id),
                    slug: m.slug,
                    title: m.title,
                    offers: if files == 0 {
                        "nothing published yet".into()
                    } else {
                        format!(
                            "{} in {}, {}",
                            count(u64::try_from(files).unwrap_or(0), "file"),
                            count(u64::try_from(releases).unwrap_or(0), "release"),
                            pages::human_size(bytes)
                        )
                    },
                }
            })
            .collect(),
    })
}

async fn find_model(state: &AppState, slug: &str) -> Result<Model, Error> {
    db::models::find_model_by_slug(state.app.db.pool(), slug)
        .await?
        .ok_or(Error::NotFound)
}

/// The model's questions as form fields, with what was entered and any errors.
fn question_fields(
    model: &Model,
    entered: &std::collections::BTreeMap<String, String>,
    errors: &FieldErrors,
) -> Vec<QuestionField> {
    questions::stored(&model.questions)
        .into_iter()
        .map(|q| {
            let field = q.field();
            let value = entered.get(&field).cloned().unwrap_or_default();
            let options: Vec<OptionItem> = match q.kind {
                Kind::Select => q
                    .options
                    .iter()
                    .map(|o| OptionItem {
                        value: o.clone(),
                        label: o.clone(),
                        selected: *o == value,
                    })
                    .collect(),
                Kind::Country => questions::countries()
                    .iter()
                    .map(|(code, name)| OptionItem {
                        value: (*code).to_owned(),
                        label: (*name).to_owned(),
                        selected: *code == value,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            QuestionField {
                kind: q.kind,
                checked: !value.is_empty(),
                error: errors.get(&field).cloned().unwrap_or_default(),
                label: q.label,
                required: q.required,
                help: q.help,
                options,
                value,
                field,
            }
        })
        .collect()
}

async fn model_page(
    state: &AppState,
    model: Model,
    form: FormValues,
    answers: &std::collections::BTreeMap<String, String>,
    errors: FieldErrors,
    csrf: String,
    researcher: Option<&Researcher>,
) -> Result<pages::ModelPage, Error> {
    let pool = state.app.db.pool();
    let (files, total) = db::models::published_totals(pool, &model.id).await?;
    let card = db::models::newest_card(pool, &model.id)
        .await?
        .map(|markdown| crate::domain::cards::render(&markdown));
    let releases = db::models::published_releases(pool, &model.id)
        .await?
        .into_iter()
        .rev()
        .map(|r| pages::ReleaseItem {
            name: r.name,
            published: r.published_at.map(format_ms).unwrap_or_default(),
        })
        .collect();
    let review_time = match applications::typical_review_time(&state.app, &model.id).await? {
        Some(ms) => format!(
            "Reviews of this model usually take {} (the median of recent decisions).",
            applications::describe_duration(ms)
        ),
        None => "No application for this model has been decided yet, so we cannot say how long reviews take."
            .into(),
    };
    let blocked = match researcher {
        Some(r) => match applications::eligibility(&state.app, &r.id, &model).await? {
            Eligibility::Open => String::new(),
            other => other.explain(&model.title),
        },
        None => String::new(),
    };
    Ok(pages::ModelPage {
        questions: question_fields(&model, answers, &errors),
        slug: model.slug,
        title: model.title,
        terms: model.terms,
        terms_version: model.terms_version,
        files: count(u64::try_from(files).unwrap_or(0), "file"),
        total_size: pages::human_size(total),
        licence: card.as_ref().and_then(|c| c.licence.clone()).unwrap_or_default(),
        card: card.map(|c| c.html).unwrap_or_default(),
        releases,
        model_signing_key: state.app.publisher.model_signing().public_key_pem().to_owned(),
        model_signing_key_url: state.app.url(super::access::MODEL_SIGNING_KEY_PATH),
        form,
        errors,
        csrf,
        review_time,
        blocked,
        signed_in: researcher.is_some(),
    })
}

pub(crate) async fn model(
    State(state): State<AppState>,
    token: Csrf,
    MaybeResearcher(researcher): MaybeResearcher,
    Path(slug): Path<String>,
) -> Result<Response, Error> {
    let model = find_model(&state, &slug).await?;
    let form = FormValues {
        email: researcher.as_ref().map(|r| r.email.clone()).unwrap_or_default(),
        ..FormValues::default()
    };
    let page = model_page(
        &state,
        model,
        form,
        &std::collections::BTreeMap::new(),
        FieldErrors::new(),
        csrf_field(&token)?,
        researcher.as_ref(),
    )
    .await?;
    Ok((token, render(&page)?).into_response())
}

/// One version of a model's terms, as researchers accepted it.
pub(crate) async fn terms(
    State(state): State<AppState>,
    Path((slug, version)): Path<(String, i64)>,
) -> Result<Response, Error> {
    let model = find_model(&state, &slug).await?;
    let terms = db::models::find_terms(state.app.db.pool(), &model.id, version)
        .await?
        .ok_or(Error::NotFound)?;
    render(&pages::TermsPage {
        slug: model.slug,
        title: model.title,
        version: terms.version,
        current: model.terms_version,
        published: format_ms(terms.created_at),
        terms: terms.terms,
    })
}

#[derive(Deserialize)]
pub(crate) struct ApplyForm {
    #[serde(flatten)]
    form: ApplicationForm,
}

pub(crate) async fn apply(
    State(state): State<AppState>,
    MaybeResearcher(researcher): MaybeResearcher,
    ClientInfo(client): ClientInfo,
    Path(slug): Path<String>,
    CsrfForm {
        csrf: token,
        fields: submitted,
    }: CsrfForm<ApplyForm>,
) -> Result<Response, Error> {
    limited(&state.limits.applications_per_address, &client.network())?;
    let model = find_model(&state, &slug).await?;
    let form = submitted.form;
    match form.validate(&model) {
        Ok(valid) => {
            let email = valid.email.to_string();
            // Signed in with this very address, the researcher is told why at
            // once; anyone else only learns it from the owner's mailbox.
            if let Some(r) = researcher.as_ref().filter(|r| r.email == email) {
                let eligibility = applications::eligibility(&state.app, &r.id, &model).await?;
                if eligibility != Eligibility::Open {
                    return Err(Error::Conflict(eligibility.explain(&model.title)));
                }
            }
            // Every recorded or declined application e-mails the address.
            limited(&state.limits.mail_per_recipient, &email)?;
            applications::submit(&state.app, &model, valid, client).await?;
            // Post/redirect/get: reloading the answer does not send the form again.
            Ok(Redirect::to(&format!("/models/{}/submitted", model.slug)).into_response())
        }
        Err(errors) => {
            let values = FormValues {
                name: form.name,
                email: form.email,
                affiliation: form.affiliation,
                intended_use: form.intended_use,
                accept_terms: form.accept_terms.is_some() && !errors.contains_key("accept_terms"),
            };
            let page = model_page(
                &state,
                model,
                values,
                &form.answers,
                errors,
                csrf_field(&token)?,
                researcher.as_ref(),
            )
            .await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, token, render(&page)?).into_response())
        }
    }
}

/// What follows a sent application: check your e-mail. The page names no
/// address, so that it reveals nothing to whoever sees the screen next.
pub(crate) async fn submitted(
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Response, Error> {
    let model = find_model(&state, &slug).await?;
    render(&pages::Submitted { title: model.title })
}

/// Shows a button rather than confirming on GET, so that mail scanners that
/// follow links do not confirm on the researcher's behalf.
pub(crate) async fn confirm_page(
    State(state): State<AppState>,
    token: Csrf,
    Path(confirm_token): Path<String>,
) -> Result<Response, Error> {
    let view = applications::find_by_token(&state.app, &confirm_token)
        .await?
        .ok_or(Error::NotFound)?;
    let page = pages::ConfirmPage {
        token: confirm_token,
        title: view.model_title,
        email: view.email,
        status: view.status,
        csrf: csrf_field(&token)?,
    };
    Ok((token, render(&page)?).into_response())
}

pub(crate) async fn confirm(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    Path(confirm_token): Path<String>,
    CsrfForm { csrf: token, .. }: CsrfForm,
) -> Result<Response, Error> {
    applications::confirm(&state.app, &confirm_token, client).await?;
    // Post/redirect/get: the same link now shows the confirmed application.
    Ok((token, Redirect::to(&format!("/confirm/{confirm_token}"))).into_response())
}
