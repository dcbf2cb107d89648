//! `/dl/TOKEN/NAME`: signed-link downloads with `Range` support.

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{AppState, ClientInfo, Error, extract::Path, limited};
use crate::domain::grants::{self, Delivery, DownloadError};

pub(crate) async fn fetch(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    Path((token, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let head = method == Method::HEAD;
    let if_range = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok());
    let key = client.network();
    let download = match grants::open_download(&state.app, &token, &name, range, if_range, head, client).await
    {
        Ok(download) => download,
        // Invalid links are cheap to send: past a limit per address they
        // are answered 429, so a flood of them slows its sender.
        Err(err @ DownloadError::ByLink(_)) => {
            limited(&state.limits.bad_links_per_address, &key)?;
            return Err(err.into());
        }
        Err(err) => return Err(err.into()),
    };
    let size = u64::try_from(download.file.size).unwrap_or(0);
    let body = match download.body {
        Delivery::Proxy(stream) => Body::from_stream(stream),
        Delivery::Metadata => Body::empty(),
        Delivery::Redirect(url) => {
            let mut response = StatusCode::FOUND.into_response();
            let value = HeaderValue::from_str(&url).map_err(|e| Error::Internal(e.into()))?;
            response.headers_mut().insert(header::LOCATION, value);
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
            return Ok(response);
        }
    };
    let mut response = body.into_response();
    let h = response.headers_mut();
    let value = |s: String| HeaderValue::from_str(&s).map_err(|e| Error::Internal(e.into()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_LENGTH,
        value((download.end - download.start).to_string())?,
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, value(format!("\"{}\"", download.file.sha256))?);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        // A browser saves under one name, not a path: the file's own name.
        value(format!(
            "attachment; filename=\"{}\"",
            crate::types::base_name(&download.file.name)
        ))?,
    );
    h.insert("x-checksum-sha256", value(download.file.sha256.clone())?);
    if download.partial {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            value(format!(
                "bytes {}-{}/{size}",
                download.start,
                download.end.saturating_sub(1)
            ))?,
        );
    }
    Ok(response)
}
