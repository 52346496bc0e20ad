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

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    raft_net::decode(body).map_err(|e| ApiError::bad(format!("bad request body: {e}")))
}

/// A Raft RPC answer in MessagePack.
fn msgpack<T: Serialize>(v: &T) -> Result<Response, ApiError> {
    let body = raft_net::encode(v).map_err(ApiError::internal)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, raft_net::MSGPACK)],
        body,
    )
        .into_response())
}

/// Raft AppendEntries.
#[utoipa::path(post, path = "/raft/append", tag = "raft",
    request_body(content = Vec<u8>, content_type = "application/msgpack"),
    responses((status = 200, description = "AppendEntries response", body = Vec<u8>, content_type = "application/msgpack")))]
pub async fn append(
    State(node): State<Arc<Node>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: AppendEntriesRequest<TypeConfig> = parse(&body)?;
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
    responses((status = 200, description = "Vote response", body = Vec<u8>, content_type = "application/msgpack")))]
pub async fn vote(
    State(node): State<Arc<Node>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: VoteRequest<u64> = parse(&body)?;
    msgpack(&node.raft.vote(req).await)
}

/// A snapshot chunk: the metadata as JSON in the `x-medledger-snapshot` header, the bytes as
/// the body (a JSON array of numbers would quadruple them).
#[utoipa::path(post, path = "/raft/snapshot", tag = "raft",
    params(("x-medledger-snapshot" = String, Header, description = "Chunk metadata (JSON)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "InstallSnapshot response", body = Vec<u8>, content_type = "application/msgpack")))]
pub async fn snapshot(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let meta = headers.get(raft_net::SNAPSHOT_HEADER).ok_or_else(|| {
        ApiError::bad("missing snapshot metadata header").at(raft_net::SNAPSHOT_HEADER)
    })?;
    let mut req: InstallSnapshotRequest<TypeConfig> = serde_json::from_slice(meta.as_bytes())
        .map_err(|e| {
            ApiError::bad(format!("bad snapshot metadata header: {e}"))
                .at(raft_net::SNAPSHOT_HEADER)
        })?;
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
              (status = 503, description = "Not the leader (any more)", body = super::Problem, content_type = "application/problem+json"),
              (status = 507, description = "The leader's disk is below its free-space reserve", body = super::Problem, content_type = "application/problem+json")))]
pub async fn forward(
    State(node): State<Arc<Node>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: RaftRequest = parse(&body)?;
    // The leader stores what it takes: refused while its disk is below the reserve.
    node.disk.check().map_err(ApiError::insufficient_storage)?;
    match node.raft.client_write(req).await {
        Ok(r) => msgpack::<RaftResponse>(&r.data),
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
