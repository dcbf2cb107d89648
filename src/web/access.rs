//! The researcher's access page: every file with its size, SHA-256 and a
//! freshly signed link, and a `SHA256SUMS` per release.

use axum::{
    extract::{Path, State},
    http::header,
    response::{IntoResponse, Response},
};

use super::{
    AppState, ClientInfo, Error,
    pages::{self, LinkRow, ReleaseRows, human_size, render},
};
use crate::{db, grants, types::format_ms};

pub async fn page(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    Path(token): Path<String>,
) -> Result<Response, Error> {
    let grant = grants::find_by_access_token(&state.app, &token)
        .await?
        .ok_or(Error::NotFound)?;
    let access = grants::access(&state.app, grant, client).await?;
    let page = pages::AccessPage {
        title: access.grant.model_title.clone(),
        email: access.grant.email.clone(),
        state: access.state.as_str().to_owned(),
        expires: format_ms(access.grant.expires_at),
        links_expire: format_ms(access.links_expire_at * 1000),
        revoked_reason: access.grant.revoked_reason.clone().unwrap_or_default(),
        releases: access
            .releases
            .into_iter()
            .map(|r| ReleaseRows {
                sums_url: format!("/access/{token}/releases/{}/SHA256SUMS", r.release.name),
                name: r.release.name,
                files: r
                    .files
                    .into_iter()
                    .map(|f| LinkRow {
                        name: f.file.name,
                        size: human_size(f.file.size),
                        sha256: f.file.sha256,
                        url: f.url,
                    })
                    .collect(),
            })
            .collect(),
    };
    let mut response = render(&page)?;
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

pub async fn sha256sums(
    State(state): State<AppState>,
    Path((token, release)): Path<(String, String)>,
) -> Result<Response, Error> {
    let grant = grants::find_by_access_token(&state.app, &token)
        .await?
        .ok_or(Error::NotFound)?;
    let release = db::models::find_release(state.app.db.pool(), &grant.model_id, &release)
        .await?
        .filter(|r| r.published_at.is_some())
        .ok_or(Error::NotFound)?;
    let files = db::models::files_of_release(state.app.db.pool(), &release.id).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        grants::sha256sums(&files),
    )
        .into_response())
}
