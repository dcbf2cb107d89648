//! The portal's own versions of axum's `Form`, `Path` and `Query`: a bad
//! request gets the portal's error body (a page or JSON, with the request
//! id), and a NUL character, which no field has a use for and PostgreSQL
//! cannot store, is refused before any handler sees it.

use axum::{
    body::{Body, Bytes},
    extract::{
        FromRequest, FromRequestParts, RawForm, Request,
        rejection::{BytesRejection, FormRejection, PathRejection, QueryRejection, RawFormRejection},
    },
    http::{Method, header, request::Parts},
};
use serde::de::DeserializeOwned;

use super::Error;

/// The largest request body the portal reads: ample for every form (the
/// longest field is 5,000 characters), small enough that no one can make a
/// replica buffer much.
pub const MAX_BODY: usize = 256 * 1024;

const NUL_REFUSED: &str = "the request contains a NUL character, which no field accepts";

fn bytes_error(rejection: &BytesRejection) -> Error {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge { limit: MAX_BODY }
    } else {
        Error::BadRequest(rejection.body_text())
    }
}

/// The raw fields of a form body, after its content type, size and
/// characters are checked.
async fn checked_form_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, Error> {
    let RawForm(bytes) = RawForm::from_request(req, state).await.map_err(|e| match e {
        RawFormRejection::InvalidFormContentType(_) => Error::UnsupportedMediaType(
            "this form must be sent as application/x-www-form-urlencoded, as a browser sends it".into(),
        ),
        RawFormRejection::BytesRejection(r) => bytes_error(&r),
        other => Error::BadRequest(other.body_text()),
    })?;
    if form_urlencoded::parse(&bytes).any(|(k, v)| k.contains('\0') || v.contains('\0')) {
        return Err(Error::BadRequest(NUL_REFUSED.into()));
    }
    Ok(bytes)
}

/// A URL-encoded form body, decoded into `T`.
pub struct Form<T>(pub T);

impl<T, S> FromRequest<S> for Form<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = checked_form_body(req, state).await?;
        let checked = Request::builder()
            .method(Method::POST)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(bytes))
            .map_err(|e| Error::Internal(e.into()))?;
        axum::Form::<T>::from_request(checked, state)
            .await
            .map(|axum::Form(value)| Form(value))
            .map_err(|e: FormRejection| Error::BadRequest(e.body_text()))
    }
}

/// A form body's fields in order, repeated names included.
pub struct FormFields(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for FormFields {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = checked_form_body(req, state).await?;
        Ok(FormFields(
            form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

/// Whether a percent-encoded part of a URL decodes to a NUL: `%00` is the
/// only way to write one.
fn has_nul(encoded: &str) -> bool {
    encoded.contains('\0') || encoded.contains("%00")
}

/// Values from the URL's path, decoded into `T`.
pub struct Path<T>(pub T);

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
pub struct Query<T>(pub T);

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
}
