//! The researcher's access page: every file with its size, SHA-256 and a
//! freshly signed link; per release a signed manifest and `SHA256SUMS`; and
//! one manifest URL for the download client.

use axum::{
    Json,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::{
    AppState, ClientInfo, Error,
    extract::Path,
    limited,
    pages::{self, FolderRows, ReleaseRows, render},
};
use crate::{
    audit::Client,
    crypto::links::Refusal,
    db::{self, grants::GrantView},
    domain::access_urls,
    domain::grants::{self, GrantState},
    types::{format_ms, format_ms_rfc3339},
};

/// The grant behind an access URL's secret, when this address and this
/// grant may have freshly signed links now.
async fn grant_for_links(state: &AppState, token: &str, client: &Client) -> Result<GrantView, Error> {
    limited(&state.limits.links_per_address, &client.network())?;
    let grant = access_urls::open(&state.app, token, client, access_urls::Use::Links).await?;
    limited(&state.limits.links_per_grant, &grant.id)?;
    Ok(grant)
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

pub(crate) async fn page(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    Path(token): Path<String>,
) -> Result<Response, Error> {
    let grant = grant_for_links(&state, &token, &client).await?;
    let access = grants::access(&state.app, grant, "page", client).await?;
    let page = pages::AccessPage {
        title: access.grant.model_title.clone(),
        email: access.grant.email.clone(),
        state: access.state,
        expires: format_ms(access.grant.expires_at),
        links_expire: format_ms(access.links_expire_at * 1000),
        revoked_reason: access.grant.revoked_reason.clone().unwrap_or_default(),
        manifest_url: state.app.url(&format!("/access/{token}/manifest.json")),
        public_key_url: state.app.url(PUBLIC_KEY_PATH),
        model_signing_key_url: state.app.url(MODEL_SIGNING_KEY_PATH),
        releases: access
            .releases
            .into_iter()
            .map(|r| ReleaseRows {
                base_url: format!("/access/{token}/releases/{}", r.release.name),
                name: r.release.name,
                folders: FolderRows::all(r.files),
            })
            .collect(),
    };
    Ok(no_store(render(&page)?))
}

/// Where the publishing key is served.
pub(crate) const PUBLIC_KEY_PATH: &str = "/.well-known/weightgate/minisign.pub";

pub(crate) async fn public_key(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        state.app.publisher.public_key_file(),
    )
        .into_response()
}

/// Where the public half of the model-signing key is served, as a PEM file
/// for `model_signing verify key --public_key`.
pub(crate) const MODEL_SIGNING_KEY_PATH: &str = "/.well-known/weightgate/model-signing.pub";

pub(crate) async fn model_signing_key(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.app.publisher.model_signing().public_key_pem().to_owned(),
    )
        .into_response()
}

/// Where the public half of the audit checkpoint key is published.
pub(crate) const AUDIT_KEY_PATH: &str = "/.well-known/weightgate/audit-checkpoint.pub";

/// The audit checkpoint key's public half, in hex, and its id: what anyone
/// checking an exported or witnessed checkpoint needs.
pub(crate) async fn audit_public_key(State(state): State<AppState>) -> Result<Response, Error> {
    let key = state.app.audit_key().await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}  {}\n", hex::encode(key.public_key().as_bytes()), key.kid),
    )
        .into_response())
}

/// `SHA256SUMS`, `manifest.json`, their `.minisig` signatures and
/// `model.sig`, exactly as signed at publication.
pub(crate) async fn release_file(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    Path((token, release, name)): Path<(String, String, String)>,
) -> Result<Response, Error> {
    let grant = access_urls::open(&state.app, &token, &client, access_urls::Use::ReleaseFile).await?;
    signed_release_file(&state, &grant, &release, &name).await
}

/// One of a release's signed files, for a grant of its model.
pub(crate) async fn signed_release_file(
    state: &AppState,
    grant: &GrantView,
    release: &str,
    name: &str,
) -> Result<Response, Error> {
    let release = db::models::find_release(state.app.db.pool(), &grant.model_id, release)
        .await?
        .filter(|r| r.published_at.is_some())
        .ok_or(Error::NotFound)?;
    let (body, content_type) = match name {
        "SHA256SUMS" => (release.sums, "text/plain; charset=utf-8"),
        "SHA256SUMS.minisig" => (release.sums_sig, "text/plain; charset=utf-8"),
        "manifest.json" => (release.manifest, "application/json"),
        "manifest.json.minisig" => (release.manifest_sig, "text/plain; charset=utf-8"),
        "model.sig" => (model_sig(state, grant, release)?, "application/json"),
        _ => (None, ""),
    };
    let body = body.ok_or(Error::NotFound)?;
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// A release's `model.sig`: the one signed at publication, or for a release
/// published before model signatures, one signed now over its manifest's
/// files, once the manifest's own minisign signature holds and it names this
/// model and release (the portal signs nothing the database alone says).
fn model_sig(
    state: &AppState,
    grant: &GrantView,
    release: db::models::Release,
) -> Result<Option<String>, Error> {
    if release.model_sig.is_some() {
        return Ok(release.model_sig);
    }
    let (Some(text), Some(signature)) = (release.manifest, release.manifest_sig) else {
        return Ok(None);
    };
    let publisher = &state.app.publisher;
    crate::crypto::manifests::verify(&publisher.public_key_file(), text.as_bytes(), &signature).map_err(
        |e| {
            anyhow::anyhow!(
                "the stored manifest of {}/{} does not verify: {e:#}",
                grant.model_slug,
                release.name
            )
        },
    )?;
    let manifest = crate::crypto::manifests::Manifest::parse(&text)?;
    if manifest.model != grant.model_slug || manifest.release != release.name {
        return Err(anyhow::anyhow!(
            "the stored manifest of {}/{} is for {}/{}",
            grant.model_slug,
            release.name,
            manifest.model,
            manifest.release
        )
        .into());
    }
    Ok(Some(publisher.model_signing().sign_manifest(&manifest)?))
}

#[derive(Serialize)]
struct GrantManifest {
    format: &'static str,
    model: String,
    researcher: String,
    grant: GrantInfo,
    /// Unix seconds after which the links below stop working: fetch this
    /// manifest again for fresh ones.
    links_expire_at: i64,
    manifest_url: String,
    public_key_url: String,
    /// The model-signing public key (PEM) that checks each release's
    /// `model.sig`.
    model_signing_key: String,
    releases: Vec<ReleaseLinks>,
}

#[derive(Serialize)]
struct GrantInfo {
    id: String,
    state: &'static str,
    expires_at: String,
}

#[derive(Serialize)]
struct ReleaseLinks {
    name: String,
    /// The release manifest, exactly as signed.
    manifest: String,
    /// Its minisign signature.
    manifest_sig: String,
    files: Vec<FileLink>,
}

#[derive(Serialize)]
struct FileLink {
    name: String,
    size: i64,
    sha256: String,
    url: String,
}

/// Everything the download client needs behind one URL: the signed release
/// manifests and a fresh link per file.
pub(crate) async fn grant_manifest(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    Path(token): Path<String>,
) -> Result<Response, Error> {
    let grant = grant_for_links(&state, &token, &client).await?;
    let access = grants::access(&state.app, grant, "manifest", client).await?;
    let refusal = match access.state {
        GrantState::Active => None,
        GrantState::Revoked => Some(Refusal::GrantRevoked),
        GrantState::Expired => Some(Refusal::GrantExpired),
    };
    if let Some(r) = refusal {
        return Err(Error::Forbidden {
            code: r.code(),
            message: r.message().to_owned(),
        });
    }
    let manifest = GrantManifest {
        format: "weightgate-grant-manifest-v1",
        model: access.grant.model_slug.clone(),
        researcher: access.grant.email.clone(),
        grant: GrantInfo {
            id: access.grant.id.clone(),
            state: access.state.as_str(),
            expires_at: format_ms_rfc3339(access.grant.expires_at),
        },
        links_expire_at: access.links_expire_at,
        manifest_url: state.app.url(&format!("/access/{token}/manifest.json")),
        public_key_url: state.app.url(PUBLIC_KEY_PATH),
        model_signing_key: state.app.publisher.model_signing().public_key_pem().to_owned(),
        releases: access
            .releases
            .into_iter()
            .map(|r| ReleaseLinks {
                name: r.release.name,
                manifest: r.release.manifest.unwrap_or_default(),
                manifest_sig: r.release.manifest_sig.unwrap_or_default(),
                files: r
                    .files
                    .into_iter()
                    .map(|f| FileLink {
                        name: f.file.name,
                        size: f.file.size,
                        sha256: f.file.sha256,
                        url: f.url,
                    })
                    .collect(),
            })
            .collect(),
    };
    Ok(no_store(Json(manifest).into_response()))
}
