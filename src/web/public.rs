//! The researcher's side before access: catalogue, model page, application
//! form and e-mail confirmation.

use axum::{
    Form,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use axum_csrf::CsrfToken;
use serde::Deserialize;

use super::{
    AppState, ClientInfo, Error,
    auth::{CsrfForm, check_csrf, csrf_field},
    pages::{self, FormValues, render},
};
use crate::{
    applications::{self, ApplicationForm, FieldErrors},
    db::{self, models::Model},
};

pub async fn catalogue(State(state): State<AppState>) -> Result<Response, Error> {
    let models = db::models::list_models(state.app.db.pool()).await?;
    render(&pages::Catalogue {
        models: models
            .into_iter()
            .map(|m| pages::ModelItem {
                slug: m.slug,
                title: m.title,
            })
            .collect(),
    })
}

async fn find_model(state: &AppState, slug: &str) -> Result<Model, Error> {
    db::models::find_model_by_slug(state.app.db.pool(), slug)
        .await?
        .ok_or(Error::NotFound)
}

async fn model_page(
    state: &AppState,
    model: Model,
    form: FormValues,
    errors: FieldErrors,
    csrf: String,
) -> Result<pages::ModelPage, Error> {
    let mut files = 0;
    let mut total = 0;
    for release in db::models::published_releases(state.app.db.pool(), &model.id).await? {
        for f in db::models::files_of_release(state.app.db.pool(), &release.id).await? {
            files += 1;
            total += f.size;
        }
    }
    Ok(pages::ModelPage {
        slug: model.slug,
        title: model.title,
        terms: model.terms,
        terms_version: model.terms_version,
        files,
        total_size: pages::human_size(total),
        form,
        errors,
        csrf,
    })
}

pub async fn model(
    State(state): State<AppState>,
    token: CsrfToken,
    Path(slug): Path<String>,
) -> Result<Response, Error> {
    let model = find_model(&state, &slug).await?;
    let page = model_page(
        &state,
        model,
        FormValues::default(),
        FieldErrors::new(),
        csrf_field(&token)?,
    )
    .await?;
    Ok((token, render(&page)?).into_response())
}

#[derive(Deserialize)]
pub struct ApplyForm {
    #[serde(default)]
    authenticity_token: String,
    #[serde(flatten)]
    form: ApplicationForm,
}

pub async fn apply(
    State(state): State<AppState>,
    token: CsrfToken,
    ClientInfo(client): ClientInfo,
    Path(slug): Path<String>,
    Form(submitted): Form<ApplyForm>,
) -> Result<Response, Error> {
    check_csrf(&token, &submitted.authenticity_token)?;
    let model = find_model(&state, &slug).await?;
    let form = submitted.form;
    match form.validate() {
        Ok(valid) => {
            let email = valid.email.to_string();
            applications::submit(&state.app, &model, valid, client).await?;
            render(&pages::Submitted {
                title: model.title,
                email,
            })
        }
        Err(errors) => {
            let values = FormValues {
                name: form.name,
                email: form.email,
                affiliation: form.affiliation,
                intended_use: form.intended_use,
                accept_terms: form.accept_terms.is_some(),
            };
            let page = model_page(&state, model, values, errors, csrf_field(&token)?).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, token, render(&page)?).into_response())
        }
    }
}

/// Shows a button rather than confirming on GET, so that mail scanners that
/// follow links do not confirm on the researcher's behalf.
pub async fn confirm_page(
    State(state): State<AppState>,
    token: CsrfToken,
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

pub async fn confirm(
    State(state): State<AppState>,
    token: CsrfToken,
    ClientInfo(client): ClientInfo,
    Path(confirm_token): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Error> {
    check_csrf(&token, &form.authenticity_token)?;
    let view = applications::confirm(&state.app, &confirm_token, client).await?;
    let page = pages::ConfirmPage {
        token: confirm_token,
        title: view.model_title,
        email: view.email,
        status: view.status,
        csrf: csrf_field(&token)?,
    };
    Ok((token, render(&page)?).into_response())
}
