//! Raft RPC between gateways: MessagePack bodies, gateways only (checked before the body is
//! read, so other callers learn nothing about it).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use ledger_node::raft::{RaftRequest, RaftResponse, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;

use super::ApiError;
use crate::service::node::Node;
use crate::service::raft_net;

/// Refuses a caller whose peer protocol this release does not speak (or whose version headers
/// do not parse), naming both releases; logged once a minute and counted in /metrics.
fn check_peer(node: &Node, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let v = raft_net::PeerVersion::from_headers(headers).and_then(|v| {
        v.check(None)?;
        Ok(v)
    });
    v.map(|_| ()).map_err(|e| {
        raft_net::refused(Some(&node.metrics), "caller", "peer", &e);
        ApiError::conflict(&e).at(raft_net::PROTOCOL_HEADER)
    })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    raft_net::decode(body).map_err(|e| ApiError::bad(format!("bad request body: {e}")))
}

/// A Raft RPC answer in MessagePack.
fn msgpack<T: Serialize>(v: &T) -> Result<Response, ApiError> {
    let body = raft_net::encode(v).map_err(ApiError::internal)?;
    let [release, protocol, format] = raft_net::version_headers();
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE.as_str(),
                raft_net::MSGPACK.to_owned(),
            ),
            release,
            protocol,
            format,
        ],
        body,
    )
        .into_response())
}

/// Raft AppendEntries.
#[utoipa::path(post, path = "/raft/append", tag = "raft",
    request_body(content = Vec<u8>, content_type = "application/msgpack"),
    responses((status = 200, description = "AppendEntries response", body = Vec<u8>, content_type = "application/msgpack"),
              (status = 409, description = "A release this gateway does not speak (peer protocol, command format or snapshot format), both releases named", body = super::Problem, content_type = "application/problem+json")))]
pub async fn append(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_peer(&node, &headers)?;
    let req: AppendEntriesRequest<TypeConfig> = parse(&body)?;
    // An entry of a command format this release does not apply is refused before it is
    // stored: the leader keeps retrying (and this gateway falls behind) until it is upgraded,
    // which is better than applying it by other rules than the others.
    for e in &req.entries {
        if let openraft::EntryPayload::Normal(r) = &e.payload {
            if let Err(v) = ledger_node::version::check_format(r.format) {
                raft_net::refused(Some(&node.metrics), "leader", "command", &v);
                return Err(ApiError::conflict(format!(
                    "log entry {}: {v}",
                    e.log_id.index
                )));
            }
        }
    }
    // Entries are refused (nothing stored, nothing acknowledged; the leader retries) while this
    // follower's disk is below its reserve; heartbeats still pass, so it keeps its leader.
    if !req.entries.is_empty() {
        node.disk.check().map_err(ApiError::insufficient_storage)?;
    }
    msgpack(&node.raft.append_entries(req).await)
}

/// Raft RequestVote.
#[utoipa::path(post, path = "/raft/vote", tag = "raft",
    request_body(content = Vec<u8>, content_type = "application/msgpack"),
    responses((status = 200, description = "Vote response", body = Vec<u8>, content_type = "application/msgpack"),
              (status = 409, description = "A release this gateway does not speak (peer protocol, command format or snapshot format), both releases named", body = super::Problem, content_type = "application/problem+json")))]
pub async fn vote(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_peer(&node, &headers)?;
    let req: VoteRequest<u64> = parse(&body)?;
    msgpack(&node.raft.vote(req).await)
}

/// A snapshot chunk: the metadata as JSON in the `x-medledger-snapshot` header, the bytes as
/// the body (a JSON array of numbers would quadruple them).
#[utoipa::path(post, path = "/raft/snapshot", tag = "raft",
    params(("x-medledger-snapshot" = String, Header, description = "Chunk metadata (JSON)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "InstallSnapshot response", body = Vec<u8>, content_type = "application/msgpack"),
              (status = 409, description = "A release this gateway does not speak (peer protocol, command format or snapshot format), both releases named", body = super::Problem, content_type = "application/problem+json")))]
pub async fn snapshot(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_peer(&node, &headers)?;
    let meta = headers.get(raft_net::SNAPSHOT_HEADER).ok_or_else(|| {
        ApiError::bad("missing snapshot metadata header").at(raft_net::SNAPSHOT_HEADER)
    })?;
    let mut req: InstallSnapshotRequest<TypeConfig> = serde_json::from_slice(meta.as_bytes())
        .map_err(|e| {
            ApiError::bad(format!("bad snapshot metadata header: {e}"))
                .at(raft_net::SNAPSHOT_HEADER)
        })?;
    if req.offset == 0 {
        if let Err(v) = ledger_node::raft::state_machine::check_snapshot_start(&body) {
            raft_net::refused(Some(&node.metrics), "leader", "snapshot", &v);
            return Err(ApiError::conflict(v));
        }
    }
    node.disk
        .check_room(body.len() as u64)
        .map_err(ApiError::insufficient_storage)?;
    req.data = body.to_vec();
    msgpack(&node.raft.install_snapshot(req).await)
}

/// A follower forwards a batch of prepared commands here when this node leads.
#[utoipa::path(post, path = "/raft/forward", tag = "raft",
    request_body(content = Vec<u8>, content_type = "application/msgpack"),
    responses((status = 200, description = "The commands' outcomes", body = Vec<u8>, content_type = "application/msgpack"),
              (status = 409, description = "A release this gateway does not speak (peer protocol, command format or snapshot format), both releases named", body = super::Problem, content_type = "application/problem+json"),
              (status = 503, description = "Not the leader (any more)", body = super::Problem, content_type = "application/problem+json"),
              (status = 507, description = "The leader's disk is below its free-space reserve", body = super::Problem, content_type = "application/problem+json")))]
pub async fn forward(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_peer(&node, &headers)?;
    let req: RaftRequest = parse(&body)?;
    if let Err(v) = ledger_node::version::check_format(req.format) {
        raft_net::refused(Some(&node.metrics), "follower", "command", &v);
        return Err(ApiError::conflict(v));
    }
    // The leader stores what it takes: refused while its disk is below the reserve.
    node.disk.check().map_err(ApiError::insufficient_storage)?;
    // Proposed at the cluster format, whatever the follower's release.
    match node.propose(&req).await {
        Ok(outcomes) => msgpack(&RaftResponse { outcomes }),
        Err(e) => Err(ApiError::unavailable(e)),
    }
}

/// The leader asks this voter to co-sign the head of a checkpoint: this node signs the same
/// size and root once it has applied those entries and found that root (docs/ledger-format.md
/// §9.6); a different root is refused (409), so no gateway co-signs a history it did not apply.
#[utoipa::path(post, path = "/raft/cosign", tag = "raft",
    request_body(content = Vec<u8>, content_type = "application/msgpack"),
    responses((status = 200, description = "This node's signed tree head over the same size and root", body = Vec<u8>, content_type = "application/msgpack"),
              (status = 409, description = "This node's tree of that size has another root, or its key is not registered", body = super::Problem, content_type = "application/problem+json"),
              (status = 503, description = "This node has not applied that many entries in time", body = super::Problem, content_type = "application/problem+json")))]
pub async fn cosign(
    State(node): State<Arc<Node>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: crate::service::node::CosignRequest = parse(&body)?;
    match node.cosign(req.size, req.root).await {
        Ok(head) => msgpack(&head),
        Err(crate::service::node::WriteError::Refused(why)) => Err(ApiError::conflict(why)),
        Err(e) => Err(ApiError::unavailable(e)),
    }
}
