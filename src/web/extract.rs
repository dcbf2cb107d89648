//! The portal's own versions of axum's `Form` (as [`CsrfForm`], which checks
//! the CSRF token first), `Path` and `Query`: a bad
//! request gets the portal's error body (a page or JSON, with the request
//! id), and a NUL character, which no field has a use for and PostgreSQL
//! cannot store, is refused before any handler sees it.

use axum::{
    body::{Body, Bytes},
    extract::{
        FromRequest, FromRequestParts, Request,
        rejection::{FormRejection, PathRejection, QueryRejection},
    },
    http::{Method, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

use super::{
    Error,
    auth::{Csrf, check_csrf},
};

/// The largest request body the portal reads: ample for every form (the
/// longest field is 5,000 characters), small enough that no one can make a
/// replica buffer much.
pub(crate) const MAX_BODY: usize = 256 * 1024;

const NUL_REFUSED: &str = "the request contains a NUL character, which no field accepts";

/// How much of an oversized body the portal still reads (and throws away)
/// before answering 413: a client that sent the whole body then reads the
/// answer, instead of finding its connection reset mid-upload.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// The raw fields of a form body, after its content type, size and
/// characters are checked.
async fn checked_form_body<S: Send + Sync>(req: Request, _state: &S) -> Result<Bytes, Error> {
    use futures_util::StreamExt;
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(Error::UnsupportedMediaType(
            "this form must be sent as application/x-www-form-urlencoded, as a browser sends it".into(),
        ));
    }
    let mut stream = req.into_body().into_data_stream();
    let mut bytes = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| Error::BadRequest(format!("the request body could not be read: {e}")))?;
        total = total.saturating_add(chunk.len());
        if total > DRAIN_LIMIT {
            break;
        }
        if total <= MAX_BODY {
            bytes.extend_from_slice(&chunk);
        }
    }
    if total > MAX_BODY {
        return Err(Error::PayloadTooLarge { limit: MAX_BODY });
    }
    let bytes = Bytes::from(bytes);
    if form_urlencoded::parse(&bytes).any(|(k, v)| k.contains('\0') || v.contains('\0')) {
        return Err(Error::BadRequest(NUL_REFUSED.into()));
    }
    Ok(bytes)
}

/// Decodes checked form fields into `T`, with axum's messages for a field
/// that is missing or of the wrong type.
async fn decode<T: DeserializeOwned, S: Send + Sync>(bytes: Bytes, state: &S) -> Result<T, Error> {
    let checked = Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(bytes))
        .map_err(|e| Error::Internal(e.into()))?;
    axum::Form::<T>::from_request(checked, state)
        .await
        .map(|axum::Form(value)| value)
        .map_err(|e: FormRejection| Error::BadRequest(e.body_text()))
}

/// A form with no fields of its own: a button that posts only its CSRF token.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct NoFields {}

/// A posted form whose CSRF token is checked before the handler runs, so no
/// handler can forget to: `fields` are the form's own fields (the
/// `authenticity_token` is taken out first), `csrf` the page's protection,
/// for the answer's cookie and the next form. The token is checked before
/// the fields are decoded, so a forged post learns nothing about them.
pub(crate) struct CsrfForm<T = NoFields> {
    pub(crate) csrf: Csrf,
    pub(crate) fields: T,
}

impl<T, S> FromRequest<S> for CsrfForm<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
    axum_csrf::CsrfConfig: axum::extract::FromRef<S>,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let csrf = Csrf::from_request_parts(&mut parts, state).await?;
        let bytes = checked_form_body(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let submitted = form_urlencoded::parse(&bytes)
            .find(|(name, _)| name == "authenticity_token")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        check_csrf(&csrf, &submitted).map_err(IntoResponse::into_response)?;
        let fields = decode(own_fields(&bytes), state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self { csrf, fields })
    }
}

/// A form body without its CSRF token: what the handler's fields are
/// decoded from, in the order they were sent.
fn own_fields(body: &[u8]) -> Bytes {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form_urlencoded::parse(body).filter(|(name, _)| name != "authenticity_token"))
        .finish()
        .into()
}

/// Whether a percent-encoded part of a URL decodes to a NUL: `%00` is the
/// only way to write one.
fn has_nul(encoded: &str) -> bool {
    encoded.contains('\0') || encoded.contains("%00")
}

/// Values from the URL's path, decoded into `T`.
pub(crate) struct Path<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if has_nul(parts.uri.path()) {
            return Err(Error::BadRequest(NUL_REFUSED.into()));
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|e: PathRejection| Error::BadRequest(e.body_text()))
    }
}

/// Values from the URL's query string, decoded into `T`.
pub(crate) struct Query<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.uri.query().is_some_and(has_nul) {
            return Err(Error::BadRequest(NUL_REFUSED.into()));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e: QueryRejection| Error::BadRequest(e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_nuls_are_found_however_they_are_written() {
        for nul in ["%00", "a%00b", "/dl/x/shard%00.bin", "q=%00"] {
            assert!(has_nul(nul), "{nul}");
        }
        for fine in ["", "a%20b", "100%25", "a+b", "%2e%2e/x", "q=a&b=c"] {
            assert!(!has_nul(fine), "{fine}");
        }
    }

    #[test]
    fn a_forms_own_fields_leave_out_its_csrf_token_and_keep_the_rest() {
        let body = b"a=1&authenticity_token=secret&b=x+y%26z&a=2&authenticity_token=again";
        let own = own_fields(body);
        let pairs: Vec<(String, String)> = form_urlencoded::parse(&own).into_owned().collect();
        assert_eq!(
            pairs,
            [("a", "1"), ("b", "x y&z"), ("a", "2")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }
}
