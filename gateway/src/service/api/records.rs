//! Signatures of earlier records (review, approval) and erasure of a component's value: thin
//! HTTP handlers over [`crate::service::records`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::events::created_or_ok;
use super::extract::{JsonBody, PathParams};
use super::ApiError;
use crate::records::Meaning;
use crate::service::node::Node;
use crate::service::records::{self, RecordError, Recorded};
use crate::service::server::Peer;

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        let (err, field) = match e {
            RecordError::Forbidden { field, reason } => (ApiError::forbidden(reason), field),
            RecordError::Invalid { field, reason } => (
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason),
                field,
            ),
            RecordError::NotFound { field, reason } => (ApiError::not_found(reason), field),
            RecordError::Write(w) => (w.into(), None),
            RecordError::Internal(e) => (ApiError::internal(e), None),
        };
        match field {
            Some(f) => err.at(f),
            None => err,
        }
    }
}

#[derive(Deserialize)]
pub struct SeqParam {
    seq: u64,
}

/// A signature of an earlier record.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// `reviewed` or `approved`.
    #[schema(value_type = String)]
    pub meaning: Meaning,
    /// A remark recorded with the signature (class maintenance).
    #[serde(default)]
    pub comment: Option<String>,
}

/// Sign an earlier record as reviewed or approved (21 CFR Part 11 §11.50): a record of its own
/// (kind `review` or `approval`) about the same device, with the signer's printed name and role
/// from the certificate. Refused for the record's performer; approval is for supervisors and
/// administrators.
#[utoipa::path(post, path = "/v1/entries/{seq}/signatures", tag = "events",
    params(("seq" = u64, Path, description = "Sequence number of the signed entry")),
    request_body(content = SignRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded", body = Recorded),
        (status = 200, description = "This signer had already signed it so", body = Recorded),
        (status = 403, description = "Not staff, not a role that may sign so, or the performer", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entry", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a meaning of a signature, or the entry is itself a signature or erasure", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No leader reachable", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub async fn sign(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    PathParams(SeqParam { seq }): PathParams<SeqParam>,
    JsonBody(req): JsonBody<SignRequest>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    let r = records::sign_entry(&node, &peer.0, seq, req.meaning, req.comment).await?;
    Ok((created_or_ok(&r), Json(r)))
}

#[derive(Deserialize)]
pub struct ComponentParam {
    seq: u64,
    name: String,
}

/// Why a value is erased.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    /// For example "patient's request under GDPR art. 17".
    pub reason: String,
}

/// Erase the value and salt of one component of an entry on every gateway (administrators).
/// The erasure is a ledger entry of its own (kind `erasure`, replicated like any entry); the
/// entry keeps its commitment, so the ledger still verifies, and exports mark the value as
/// erased by that entry. A record's `signature` is never erased.
#[utoipa::path(post, path = "/v1/entries/{seq}/components/{name}/erase", tag = "events",
    params(("seq" = u64, Path, description = "Sequence number of the entry"),
           ("name" = String, Path, description = "Name of the component")),
    request_body(content = EraseRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Erased", body = Recorded),
        (status = 200, description = "Already erased", body = Recorded),
        (status = 403, description = "Not an administrator, or the record's signature", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such entry or component", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "No reason, or the entry is an erasure", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No leader reachable", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub async fn erase(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    PathParams(ComponentParam { seq, name }): PathParams<ComponentParam>,
    JsonBody(req): JsonBody<EraseRequest>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    let r = records::erase_component(&node, &peer.0, seq, &name, &req.reason).await?;
    Ok((created_or_ok(&r), Json(r)))
}
