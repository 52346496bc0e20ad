//! RFC 9457 problem details: every error the API answers is an `application/problem+json`
//! document with the HTTP status, a detail naming what was wrong and, where one parameter or
//! body field was at fault, that field.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of a problem document (RFC 9457 §3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    /// The path parameter, query parameter or body field at fault, where there is one.
    pub field: Option<String>,
}

/// The document (RFC 9457 §3.1 members and one extension, `field`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `about:blank`: the status says what kind of problem it is (RFC 9457 §4.2.1).
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What was wrong with this request.
    pub detail: String,
    /// The parameter or body field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            field: None,
        }
    }

    /// The same error, naming `field` as the one at fault.
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail.to_string())
    }
    /// Raft refused a cluster change (not the leader, not initialised, a change in progress...).
    pub fn conflict(detail: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::CONFLICT, detail.to_string())
    }
    /// The data directory is below its free-space reserve (logged once by the disk guard).
    pub fn insufficient_storage(detail: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INSUFFICIENT_STORAGE, detail.to_string())
    }
    /// A fault of this gateway; logged, and named to the caller.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }

    fn document(&self) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            field: self.field.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.document()).unwrap_or_default();
        let mut r = (self.status, body).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        r
    }
}

/// Longest request target accepted (RFC 9110 §4.1 recommends at least 8,000 octets).
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The outermost layer: refuses over-long request targets with 414, and turns any error answer
/// that is not yet a problem document (a rejection of axum's own, a layer's plain-text error)
/// into one, its text as the detail. Nothing leaves the API in another error format.
pub async fn uniform(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // The target as sent (path and query), without formatting the URI anew on every request.
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!(
                "the request target is {uri_len} bytes, more than the {MAX_URI_BYTES} accepted"
            ),
        )
        .into_response();
    }
    let r = next.run(req).await;
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let is_problem = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return r;
    }
    let (parts, body) = r.into_parts();
    // Rejection texts are short; a larger body is not ours to relay.
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut out = ApiError::new(status, detail).into_response();
    // Keep what the layer said about the connection or the allowed methods.
    for name in [header::CONNECTION, header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}
