//! Extractors whose refusals are problem documents naming the parameter or field at fault:
//! [`PathParams`], [`QueryParams`] and [`JsonBody`] (which also insists on `application/json`).
//! They run after the route's authorization layer, so a caller who may not use a route learns
//! nothing about what it expects.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::ApiError;

/// Path parameters, deserialized into a struct so that a bad value names its parameter.
pub struct PathParams<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::path::ErrorKind;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(Self(p.0)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let detail = e.body_text();
                match e.into_kind() {
                    ErrorKind::ParseErrorAtKey {
                        key,
                        value,
                        expected_type,
                    } => Err(ApiError::bad(format!(
                        "path parameter {key}: {value:?} is not a valid {expected_type}"
                    ))
                    .at(key)),
                    _ => Err(ApiError::bad(detail)),
                }
            }
            Err(e) => Err(ApiError::new(e.status(), e.body_text())),
        }
    }
}

/// Query parameters; an unknown or bad one is named.
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(Self).map_err(|e| {
            let field = e.path().to_string();
            ApiError::bad(format!("query parameter {field}: {}", e.inner())).at(field)
        })
    }
}

/// A JSON body: `Content-Type: application/json` (415 otherwise), no larger than the route's
/// body limit (413), and a refusal that names the field at fault (400 for malformed JSON, 422
/// for a well-formed body of the wrong shape).
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        require_json(req.headers())?;
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        parse_json(&body).map(Self)
    }
}

/// 415 unless the request says its body is JSON.
fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            if ct.is_empty() {
                "the body must be JSON, sent with Content-Type: application/json".to_owned()
            } else {
                format!("the body must be JSON (Content-Type: application/json), not {ct:?}")
            },
        )
        .at("content-type"))
    }
}

/// Parses JSON, naming the field at fault.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let status = if inner.is_syntax() || inner.is_eof() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        let err = ApiError::new(status, format!("body: {inner}"));
        if field == "." || field.is_empty() {
            err
        } else {
            err.at(field)
        }
    })?;
    de.end().map_err(|e| {
        ApiError::bad(format!(
            "body: trailing characters after the JSON value: {e}"
        ))
    })?;
    Ok(v)
}
