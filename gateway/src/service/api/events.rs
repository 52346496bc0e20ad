//! `POST /v1/events`: record a maintenance event.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::extract::JsonBody;
use super::ApiError;
use crate::event::EventRequest;
use crate::service::node::Node;
use crate::service::records::{self, Recorded};
use crate::service::server::Peer;

/// Record a maintenance event. Staff (biomed, supervisor, admin) and gateways record any device's
/// events; a device records alarms, status changes and firmware updates about itself only.
/// Certificate events are for administrators. A read-only learner refuses writes. A staff
/// record carries its 21 CFR Part 11 signature (printed name and role from the certificate,
/// meaning `performed`, or `corrected` with its `reason` when it `corrects` an entry of the same
/// device); the answer says which roles will read each class of what was recorded.
#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body(content = EventRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded", body = Recorded),
        (status = 200, description = "Already recorded under this event_id", body = Recorded),
        (status = 400, description = "Malformed or invalid event", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed for this identity or on this gateway", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "The corrected entry does not exist", body = super::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the event size limit", body = super::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape, or refused by the ledger", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No leader reachable", body = super::Problem, content_type = "application/problem+json"),
        (status = 507, description = "This gateway's or the leader's disk is below its free-space reserve ([node] reserve_mb); reads go on", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub async fn append_event(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<EventRequest>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    let r = records::record_event(&node, &peer.0, req).await?;
    Ok((created_or_ok(&r), Json(r)))
}

/// 201 for a new entry, 200 for a duplicate.
pub fn created_or_ok(r: &Recorded) -> StatusCode {
    if r.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    }
}

/// Records a registry event the registry's routes built and checked, signed like any staff
/// record; 201, or 200 for an event id already recorded.
pub(super) async fn submit_event(
    node: &Node,
    peer: &Peer,
    event: ledger_node::entry::EventInput,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    let r = records::record_registry_event(node, &peer.0, event).await?;
    Ok((created_or_ok(&r), Json(r)))
}
