//! The HTTPS API: staff event writes and reads, Raft RPC between gateways, and cluster
//! administration. Every request carries the client's verified certificate identity
//! ([`Peer`]); each route checks the profile and role it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use certs::{Profile, StaffRole};
use ledger_node::entry::{DisclosureClass, EventKind};
use ledger_node::raft::{RaftRequest, RaftResponse, TypeConfig};
use ledger_node::{ApplyOutcome, Command};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::service::node::{Node, WriteError};
use crate::service::server::Peer;

/// An error answer: a status and a message naming what was wrong.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}
fn forbidden(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, msg.into())
}
fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}
/// Raft refused a cluster change (not the leader, not initialised, a change in progress...).
fn conflict(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::CONFLICT, e.to_string())
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NoLeader(_) | WriteError::ShuttingDown => {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            WriteError::Refused(_) => conflict(e),
            WriteError::Failed(_) => internal(e),
        }
    }
}

/// The disclosure classes a caller may see (docs/api.md has the table).
pub fn visible_classes(peer: &Peer) -> BTreeSet<DisclosureClass> {
    use DisclosureClass::*;
    let id = &peer.0;
    match id.profile {
        Profile::Gateway => DisclosureClass::ALL.into_iter().collect(),
        Profile::Staff => match id.staff_role() {
            Some(StaffRole::Biomed) => [Device, Maintenance, Patient].into(),
            Some(StaffRole::Supervisor) => DisclosureClass::ALL.into_iter().collect(),
            Some(StaffRole::Auditor) => [Device, Maintenance].into(),
            Some(StaffRole::Insurer) => [Device, Maintenance, Financial].into(),
            Some(StaffRole::Admin) => [Device, Maintenance, Financial].into(),
            _ => [Device].into(),
        },
        _ => BTreeSet::new(),
    }
}

fn require_gateway(peer: &Peer) -> Result<(), ApiError> {
    if peer.0.profile == Profile::Gateway {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} {} is not a gateway",
            peer.0.profile, peer.0.id
        )))
    }
}

/// Ledger contents and cluster state are for staff and gateways, never for devices.
fn require_reader(peer: &Peer) -> Result<(), ApiError> {
    match peer.0.profile {
        Profile::Staff | Profile::Gateway => Ok(()),
        _ => Err(forbidden(format!(
            "{} {} may not read the ledger",
            peer.0.profile, peer.0.id
        ))),
    }
}

fn require_admin(peer: &Peer) -> Result<(), ApiError> {
    match (peer.0.profile, peer.0.staff_role()) {
        (Profile::Gateway, _) | (Profile::Staff, Some(StaffRole::Admin)) => Ok(()),
        _ => Err(forbidden(format!(
            "{} {} may not administer the cluster",
            peer.0.profile, peer.0.id
        ))),
    }
}

fn require_writer(peer: &Peer) -> Result<(), ApiError> {
    match (peer.0.profile, peer.0.staff_role()) {
        (Profile::Gateway, _)
        | (Profile::Staff, Some(StaffRole::Biomed | StaffRole::Supervisor | StaffRole::Admin)) => {
            Ok(())
        }
        _ => Err(forbidden(format!(
            "{} {} may not record events",
            peer.0.profile, peer.0.id
        ))),
    }
}

/// Largest Raft RPC body accepted from a peer gateway.
const RAFT_BODY_LIMIT: usize = 256 * 1024 * 1024;

/// All routes of the mutual-TLS listener.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/events", post(append_event))
        .route("/v1/head", get(head))
        .route("/v1/whoami", get(whoami))
        .route("/v1/devices/{id}/history", get(history))
        .route("/v1/entries/{seq}/receipt", get(receipt))
        .route("/v1/export", get(export))
        .merge(
            // Replication traffic between authenticated gateways: a batch of appended entries
            // or a snapshot chunk may be far larger than a staff request.
            Router::new()
                .route("/raft/append", post(raft_append))
                .route("/raft/vote", post(raft_vote))
                .route("/raft/snapshot", post(raft_snapshot))
                .route("/raft/forward", post(raft_forward))
                .layer(axum::extract::DefaultBodyLimit::max(RAFT_BODY_LIMIT)),
        )
        .route("/cluster/init", post(cluster_init))
        .route("/cluster/learner", post(cluster_add_learner))
        .route("/cluster/promote", post(cluster_promote))
        .route("/cluster/remove", post(cluster_remove))
        .route("/cluster/status", get(cluster_status))
        .route("/cluster/checkpoint", post(cluster_checkpoint))
        .with_state(node)
}

/// The caller's identity as the gateway sees it (for staff tooling and TLS diagnostics).
async fn whoami(Extension(peer): Extension<Peer>) -> Json<serde_json::Value> {
    let id = &peer.0;
    Json(json!({
        "profile": id.profile.as_str(),
        "id": id.id,
        "role": id.role,
        "name": id.name,
        "serial": id.serial,
        "fingerprint": id.fingerprint,
        "visible_classes": visible_classes(&peer).iter().map(|c| c.as_str()).collect::<Vec<_>>(),
    }))
}

#[derive(Serialize)]
struct Appended {
    seq: u64,
    leaf: String,
    duplicate: bool,
    node_id: u64,
}

async fn append_event(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Appended>), ApiError> {
    require_writer(&peer)?;
    if node.is_learner() {
        return Err(forbidden(format!(
            "gateway {} is a read-only learner: record events on a voting gateway",
            node.id
        )));
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    // Without an id of its own, an event gets a random one, so that retries inside the gateway
    // (leader changes) can never record it twice.
    if let Some(obj) = value.as_object_mut() {
        if !obj.contains_key("event_id") {
            obj.insert(
                "event_id".into(),
                json!(format!("api:{}", hex::encode(rand::random::<[u8; 16]>()))),
            );
        }
    }
    let ev = crate::event::parse_line(1, &value.to_string()).map_err(|e| bad(e.reason))?;
    // Identity events change who the gateways trust: only gateways and administrators record them.
    if matches!(
        ev.event.kind,
        EventKind::CertificateIssued | EventKind::CertificateRevoked
    ) && require_admin(&peer).is_err()
    {
        return Err(forbidden(format!(
            "{} {} may not record {} events",
            peer.0.profile,
            peer.0.id,
            ev.event.kind.as_str()
        )));
    }
    if ev.corrects_event_id.is_some() {
        return Err(bad("use corrects (a sequence number) in the API"));
    }
    let author = format!("sha256:{}", peer.0.fingerprint);
    let cmd = ledger_node::ledger::prepare(
        ev.event,
        &author,
        node.id,
        &node.key,
        ledger_node::ledger::now_ms(),
    )
    .map_err(|e| bad(e.to_string()))?;
    match node.submit(Command::Append(cmd)).await? {
        ApplyOutcome::Appended { seq, leaf } => Ok((
            StatusCode::CREATED,
            Json(Appended {
                seq,
                leaf: hex::encode(leaf),
                duplicate: false,
                node_id: node.id,
            }),
        )),
        ApplyOutcome::Duplicate { seq } => {
            let leaf = node
                .store
                .entry_bytes(seq)
                .map(|b| ledger_node::hash::leaf_hash(&b))
                .unwrap_or_default();
            Ok((
                StatusCode::OK,
                Json(Appended {
                    seq,
                    leaf: hex::encode(leaf),
                    duplicate: true,
                    node_id: node.id,
                }),
            ))
        }
        ApplyOutcome::Refused { reason } => Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, reason)),
        ApplyOutcome::NodeRegistered { .. } | ApplyOutcome::Checkpointed { .. } => {
            Err(internal("unexpected outcome"))
        }
    }
}

#[derive(Deserialize)]
struct ReadOptions {
    /// `linearizable`: confirm with a quorum that this node's view is current first.
    consistency: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

async fn ensure_fresh(node: &Node, opts: &ReadOptions) -> Result<(), ApiError> {
    match opts.consistency.as_deref() {
        None | Some("local") => Ok(()),
        Some("linearizable") => {
            // On the leader this confirms leadership with a quorum and waits until everything
            // committed so far is applied. A follower waits until it has applied the leader's
            // commit index.
            match node.raft.ensure_linearizable().await {
                Ok(_) => Ok(()),
                Err(RaftErr::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                    let Some(leader) = f.leader_node else {
                        return Err(ApiError(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no leader".into(),
                        ));
                    };
                    let resp = node
                        .peers
                        .get()
                        .get(format!(
                            "https://{}/cluster/status?consistency=linearizable",
                            leader.addr
                        ))
                        .send()
                        .await
                        .map_err(|e| {
                            ApiError(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("leader unreachable: {e}"),
                            )
                        })?;
                    let status: crate::service::node::ClusterStatus = resp
                        .json()
                        .await
                        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
                    let target = status.last_applied;
                    node.raft
                        .wait(Some(std::time::Duration::from_secs(5)))
                        .applied_index_at_least(target, "linearizable read")
                        .await
                        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
                    Ok(())
                }
                Err(e) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
            }
        }
        Some(other) => Err(bad(format!(
            "unknown consistency {other:?} (local, linearizable)"
        ))),
    }
}

type RaftErr<E> = openraft::error::RaftError<u64, E>;

async fn head(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Query(opts): Query<ReadOptions>,
) -> Result<Json<ledger_node::SignedTreeHead>, ApiError> {
    require_reader(&peer)?;
    ensure_fresh(&node, &opts).await?;
    Ok(Json(node.tree_head().map_err(internal)?))
}

async fn history(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path(device): Path<String>,
    Query(opts): Query<ReadOptions>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_reader(&peer)?;
    ensure_fresh(&node, &opts).await?;
    let classes = visible_classes(&peer);
    let limit = opts.limit.unwrap_or(1000).min(10_000);
    let seqs = node
        .store
        .device_history(&device, opts.after, limit)
        .map_err(internal)?;
    let mut entries = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let e = node.store.entry(seq).map_err(internal)?;
        let openings = node.store.openings(seq).map_err(internal)?;
        let mut fields = BTreeMap::new();
        for (i, c) in e.body.components.iter().enumerate() {
            let value = match openings.get(i).cloned().flatten() {
                Some(o) if classes.contains(&c.class) => {
                    serde_json::from_str(&o.value).unwrap_or(serde_json::Value::Null)
                }
                Some(_) => json!({"withheld": c.class.as_str()}),
                None => json!({"erased": c.class.as_str()}),
            };
            fields.insert(c.name.clone(), value);
        }
        entries.push(json!({
            "seq": seq,
            "kind": e.body.kind.as_str(),
            "occurred_at": e.body.occurred_at,
            "recorded_at": crate::event::format_ms(e.body.recorded_at_ms),
            "author": e.body.author,
            "node_id": e.body.node_id,
            "corrects": e.body.corrects,
            "event_id": e.body.event_id,
            "fields": fields,
        }));
    }
    Ok(Json(json!({ "device_id": device, "entries": entries })))
}

async fn receipt(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Path(seq): Path<u64>,
) -> Result<Response, ApiError> {
    require_reader(&peer)?;
    let head = node.tree_head().map_err(internal)?;
    if seq >= head.size {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no entry {seq}: the ledger has {} entries", head.size),
        ));
    }
    let r =
        ledger_node::export::make_receipt(&node.store, seq, &head, &Some(visible_classes(&peer)))
            .map_err(internal)?;
    Ok(Json(r).into_response())
}

async fn export(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
) -> Result<Response, ApiError> {
    require_reader(&peer)?;
    // Cut at the replicated checkpoint, so that every node exports the same bytes.
    let head = match node.store.latest_checkpoint().map_err(internal)? {
        Some(h) => h,
        None => node.tree_head().map_err(internal)?,
    };
    let classes = visible_classes(&peer);
    let store = node.store.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        ledger_node::export::write_export(&store, &head, &Some(classes), &mut out).map(|()| out)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/jsonl")],
        bytes,
    )
        .into_response())
}

/// Parses a Raft RPC body (MessagePack) after the caller was authorised, so that callers who
/// may not use a route learn nothing about its body.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    crate::service::raft_net::decode(body).map_err(|e| bad(format!("bad request body: {e}")))
}

/// A Raft RPC answer in MessagePack.
fn msgpack<T: Serialize>(v: &T) -> Result<Response, ApiError> {
    let body = crate::service::raft_net::encode(v).map_err(internal)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::service::raft_net::MSGPACK,
        )],
        body,
    )
        .into_response())
}

async fn raft_append(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_gateway(&peer)?;
    let req: AppendEntriesRequest<TypeConfig> = parse(&body)?;
    msgpack(&node.raft.append_entries(req).await)
}

async fn raft_vote(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_gateway(&peer)?;
    let req: VoteRequest<u64> = parse(&body)?;
    msgpack(&node.raft.vote(req).await)
}

/// A snapshot chunk: the metadata as JSON in the `x-medledger-snapshot` header, the bytes as
/// the body (a JSON array of numbers would quadruple them).
async fn raft_snapshot(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_gateway(&peer)?;
    let meta = headers
        .get(crate::service::raft_net::SNAPSHOT_HEADER)
        .ok_or_else(|| bad("missing snapshot metadata header"))?;
    let mut req: InstallSnapshotRequest<TypeConfig> = serde_json::from_slice(meta.as_bytes())
        .map_err(|e| bad(format!("bad snapshot metadata header: {e}")))?;
    req.data = body.to_vec();
    msgpack(&node.raft.install_snapshot(req).await)
}

/// A follower forwards a batch of prepared commands here when this node leads.
async fn raft_forward(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require_gateway(&peer)?;
    let req: RaftRequest = parse(&body)?;
    match node.raft.client_write(req).await {
        Ok(r) => msgpack::<RaftResponse>(&r.data),
        Err(e) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

#[derive(Deserialize)]
struct InitRequest {
    /// The first voters; this node alone when empty.
    #[serde(default)]
    nodes: BTreeMap<u64, String>,
}

async fn cluster_init(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<InitRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&peer)?;
    let mut nodes: BTreeMap<u64, BasicNode> = req
        .nodes
        .into_iter()
        .map(|(id, addr)| (id, BasicNode { addr }))
        .collect();
    if nodes.is_empty() {
        nodes.insert(
            node.id,
            BasicNode {
                addr: node.advertise.clone(),
            },
        );
    }
    node.raft
        .initialize(nodes.clone())
        .await
        .map_err(conflict)?;
    Ok(Json(
        json!({ "initialized": nodes.keys().collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
struct MemberRequest {
    node_id: u64,
    addr: Option<String>,
}

/// Applies a membership change through this node's Raft (which must be the leader).
async fn change_membership(
    node: &Node,
    change: impl Into<ChangeMembers<u64, BasicNode>>,
) -> Result<(), ApiError> {
    node.raft
        .change_membership(change, false)
        .await
        .map_err(conflict)?;
    Ok(())
}

async fn cluster_add_learner(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<MemberRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&peer)?;
    let addr = req.addr.ok_or_else(|| bad("addr is required"))?;
    node.raft
        .add_learner(req.node_id, BasicNode { addr }, false)
        .await
        .map_err(conflict)?;
    Ok(Json(json!({ "learner": req.node_id })))
}

async fn cluster_promote(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<MemberRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&peer)?;
    let m = node.membership();
    let mut voters: BTreeSet<u64> = m.voter_ids().collect();
    if !m.nodes().any(|(id, _)| *id == req.node_id) {
        return Err(bad(format!(
            "node {} is not a member; join it as a learner first",
            req.node_id
        )));
    }
    voters.insert(req.node_id);
    change_membership(&node, voters).await?;
    Ok(Json(json!({ "voter": req.node_id })))
}

async fn cluster_remove(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<MemberRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&peer)?;
    let m = node.membership();
    let voters: BTreeSet<u64> = m.voter_ids().filter(|id| *id != req.node_id).collect();
    if voters.is_empty() {
        return Err(bad("cannot remove the last voter"));
    }
    change_membership(&node, ChangeMembers::RemoveVoters([req.node_id].into())).await?;
    change_membership(&node, ChangeMembers::RemoveNodes([req.node_id].into())).await?;
    Ok(Json(json!({ "removed": req.node_id })))
}

/// Records a checkpoint now (on the leader; a follower forwards the command like any write).
async fn cluster_checkpoint(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&peer)?;
    let size = node.checkpoint().await?;
    Ok(Json(json!({ "checkpoint_size": size })))
}

async fn cluster_status(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    Query(opts): Query<ReadOptions>,
) -> Result<Json<crate::service::node::ClusterStatus>, ApiError> {
    require_reader(&peer)?;
    ensure_fresh(&node, &opts).await?;
    Ok(Json(node.status()))
}
