//! `POST /v1/events`: record a maintenance event.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use certs::Profile;
use ledger_node::entry::EventKind;
use ledger_node::{ApplyOutcome, Command};
use serde::Serialize;

use super::extract::JsonBody;
use super::{ApiError, Need};
use crate::event::EventRequest;
use crate::service::node::Node;
use crate::service::server::Peer;

/// Where an event was recorded.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Appended {
    /// Its sequence number in the ledger.
    seq: u64,
    /// Its RFC 9162 leaf hash, hex.
    leaf: String,
    /// True when an event with the same `event_id` was already recorded (nothing was added).
    duplicate: bool,
    /// The gateway that took the request.
    node_id: u64,
}

/// Kinds a device may record about itself; everything else is staff's or a gateway's to record.
const DEVICE_KINDS: [EventKind; 3] = [
    EventKind::Alarm,
    EventKind::StatusChange,
    EventKind::FirmwareUpdate,
];

/// Record a maintenance event. Staff (biomed, supervisor, admin) and gateways record any device's
/// events; a device records alarms, status changes and firmware updates about itself only.
/// Certificate events are for administrators. A read-only learner refuses writes.
#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body(content = EventRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded", body = Appended),
        (status = 200, description = "Already recorded under this event_id", body = Appended),
        (status = 400, description = "Malformed or invalid event", body = super::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed for this identity or on this gateway", body = super::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the event size limit", body = super::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape, or refused by the ledger", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No leader reachable", body = super::Problem, content_type = "application/problem+json"),
        (status = 507, description = "This gateway's or the leader's disk is below its free-space reserve ([node] reserve_mb); reads go on", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub async fn append_event(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    JsonBody(mut req): JsonBody<EventRequest>,
) -> Result<(StatusCode, Json<Appended>), ApiError> {
    if node.is_learner() {
        return Err(ApiError::forbidden(format!(
            "gateway {} is a read-only learner: record events on a voting gateway",
            node.id
        )));
    }
    if req.corrects_event_id.is_some() {
        return Err(
            ApiError::bad("use corrects (a sequence number) in the API").at("corrects_event_id")
        );
    }
    // Without an id of its own, an event gets a random one, so that retries inside the gateway
    // (leader changes) can never record it twice.
    if req.event_id.is_none() {
        req.event_id = Some(format!("api:{}", hex::encode(rand::random::<[u8; 16]>())));
    }
    let ev = req
        .into_event(1, String::new)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.reason))?;
    let kind = ev.event.kind;
    let who = || format!("{} {}", peer.0.profile, peer.0.id);
    if peer.0.profile == Profile::Device {
        if ev.event.device_id != peer.0.id {
            return Err(ApiError::forbidden(format!(
                "{} may record events about itself only, not about {:?}",
                who(),
                ev.event.device_id
            ))
            .at("device_id"));
        }
        if !DEVICE_KINDS.contains(&kind) {
            return Err(ApiError::forbidden(format!(
                "{} may not record {} events (a device records alarm, status-change and \
                 firmware-update)",
                who(),
                kind.as_str()
            ))
            .at("kind"));
        }
    }
    // Identity events change who the gateways trust: only gateways and administrators record them.
    if matches!(
        kind,
        EventKind::CertificateIssued | EventKind::CertificateRevoked
    ) && Need::Admin.check(&peer).is_err()
    {
        return Err(ApiError::forbidden(format!(
            "{} may not record {} events",
            who(),
            kind.as_str()
        ))
        .at("kind"));
    }
    let author = format!("sha256:{}", peer.0.fingerprint);
    let cmd = ledger_node::ledger::prepare(
        ev.event,
        &author,
        node.id,
        &node.key,
        ledger_node::ledger::now_ms(),
    )
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let (status, seq, leaf) = match node.submit(Command::Append(cmd)).await? {
        ApplyOutcome::Appended { seq, leaf } => (StatusCode::CREATED, seq, leaf),
        ApplyOutcome::Duplicate { seq } => {
            let leaf = node
                .store
                .entry_bytes(seq)
                .map(|b| ledger_node::hash::leaf_hash(&b))
                .map_err(ApiError::internal)?;
            (StatusCode::OK, seq, leaf)
        }
        ApplyOutcome::Refused { reason } => {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason))
        }
        ApplyOutcome::NodeRegistered { .. } | ApplyOutcome::Checkpointed { .. } => {
            return Err(ApiError::internal("unexpected outcome of an append"))
        }
    };
    Ok((
        status,
        Json(Appended {
            seq,
            leaf: hex::encode(leaf),
            duplicate: status == StatusCode::OK,
            node_id: node.id,
        }),
    ))
}
