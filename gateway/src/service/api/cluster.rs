//! Cluster administration: initialise, add a learner, promote, remove, checkpoint, status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, QueryParams};
use super::ledger::{ensure_fresh, Freshness};
use super::ApiError;
use crate::service::node::{ClusterStatus, Node};

/// The first voters of a new cluster.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    /// Node id to address (HOST:PORT); this gateway alone when empty.
    #[serde(default)]
    nodes: BTreeMap<u64, String>,
}

/// A membership change of one node.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    node_id: u64,
    /// Its address (HOST:PORT); required to add a learner.
    #[serde(default)]
    addr: Option<String>,
}

/// What a membership call did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MembershipAnswer {
    /// The voters after the change (init), or the node the change concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    initialized: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    learner: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    voter: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<u64>,
}

impl MembershipAnswer {
    fn none() -> Self {
        Self {
            initialized: None,
            learner: None,
            voter: None,
            removed: None,
        }
    }
}

const PROBLEM: &str = "application/problem+json";

/// Make this gateway (or the given voters) a new cluster.
#[utoipa::path(post, path = "/cluster/init", tag = "cluster",
    request_body(content = InitRequest, content_type = "application/json"),
    responses((status = 200, description = "Initialised", body = MembershipAnswer),
              (status = 409, description = "Already initialised", body = super::Problem, content_type = PROBLEM)))]
pub async fn init(
    State(node): State<Arc<Node>>,
    JsonBody(req): JsonBody<InitRequest>,
) -> Result<Json<MembershipAnswer>, ApiError> {
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
        .map_err(ApiError::conflict)?;
    Ok(Json(MembershipAnswer {
        initialized: Some(nodes.keys().copied().collect()),
        ..MembershipAnswer::none()
    }))
}

/// Applies a membership change through this node's Raft (which must be the leader).
async fn change_membership(
    node: &Node,
    change: impl Into<ChangeMembers<u64, BasicNode>>,
) -> Result<(), ApiError> {
    node.raft
        .change_membership(change, false)
        .await
        .map_err(ApiError::conflict)?;
    Ok(())
}

/// Add a gateway as a learner (a read-only follower); on the leader.
#[utoipa::path(post, path = "/cluster/learner", tag = "cluster",
    request_body(content = MemberRequest, content_type = "application/json"),
    responses((status = 200, description = "Added", body = MembershipAnswer),
              (status = 409, description = "Not the leader, or a change in progress", body = super::Problem, content_type = PROBLEM)))]
pub async fn add_learner(
    State(node): State<Arc<Node>>,
    JsonBody(req): JsonBody<MemberRequest>,
) -> Result<Json<MembershipAnswer>, ApiError> {
    let addr = req
        .addr
        .ok_or_else(|| ApiError::bad("addr is required to add a learner").at("addr"))?;
    node.raft
        .add_learner(req.node_id, BasicNode { addr }, false)
        .await
        .map_err(ApiError::conflict)?;
    Ok(Json(MembershipAnswer {
        learner: Some(req.node_id),
        ..MembershipAnswer::none()
    }))
}

/// Make a learner a voter; on the leader.
#[utoipa::path(post, path = "/cluster/promote", tag = "cluster",
    request_body(content = MemberRequest, content_type = "application/json"),
    responses((status = 200, description = "Promoted", body = MembershipAnswer),
              (status = 400, description = "Not a member", body = super::Problem, content_type = PROBLEM),
              (status = 409, description = "Not the leader, or a change in progress", body = super::Problem, content_type = PROBLEM)))]
pub async fn promote(
    State(node): State<Arc<Node>>,
    JsonBody(req): JsonBody<MemberRequest>,
) -> Result<Json<MembershipAnswer>, ApiError> {
    let m = node.membership();
    let mut voters: BTreeSet<u64> = m.voter_ids().collect();
    if !m.nodes().any(|(id, _)| *id == req.node_id) {
        return Err(ApiError::bad(format!(
            "node {} is not a member; join it as a learner first",
            req.node_id
        ))
        .at("node_id"));
    }
    voters.insert(req.node_id);
    change_membership(&node, voters).await?;
    Ok(Json(MembershipAnswer {
        voter: Some(req.node_id),
        ..MembershipAnswer::none()
    }))
}

/// Remove a node from the cluster; on the leader.
#[utoipa::path(post, path = "/cluster/remove", tag = "cluster",
    request_body(content = MemberRequest, content_type = "application/json"),
    responses((status = 200, description = "Removed", body = MembershipAnswer),
              (status = 400, description = "The last voter", body = super::Problem, content_type = PROBLEM),
              (status = 409, description = "Not the leader, or a change in progress", body = super::Problem, content_type = PROBLEM)))]
pub async fn remove(
    State(node): State<Arc<Node>>,
    JsonBody(req): JsonBody<MemberRequest>,
) -> Result<Json<MembershipAnswer>, ApiError> {
    let m = node.membership();
    let voters: BTreeSet<u64> = m.voter_ids().filter(|id| *id != req.node_id).collect();
    if voters.is_empty() {
        return Err(ApiError::bad("cannot remove the last voter").at("node_id"));
    }
    change_membership(&node, ChangeMembers::RemoveVoters([req.node_id].into())).await?;
    change_membership(&node, ChangeMembers::RemoveNodes([req.node_id].into())).await?;
    Ok(Json(MembershipAnswer {
        removed: Some(req.node_id),
        ..MembershipAnswer::none()
    }))
}

/// The size a checkpoint covers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CheckpointAnswer {
    checkpoint_size: u64,
}

/// Record a checkpoint (a signed tree head replicated to every gateway) now; a follower forwards
/// it to the leader like any write. It covers at least everything acknowledged before the
/// request: the gateway first applies whatever the cluster had committed (a leader that has
/// just come back replays its log only once its new term's first entry commits).
#[utoipa::path(post, path = "/cluster/checkpoint", tag = "cluster",
    responses((status = 200, description = "Recorded (or already covered)", body = CheckpointAnswer),
              (status = 409, description = "Refused by the ledger", body = super::Problem, content_type = PROBLEM),
              (status = 503, description = "No leader reachable", body = super::Problem, content_type = PROBLEM)))]
pub async fn checkpoint(State(node): State<Arc<Node>>) -> Result<Json<CheckpointAnswer>, ApiError> {
    // Found by the power-loss rounds (seed 2736623188282813470): a one-gateway site cut right
    // after an acknowledged revocation came back with the revocation in its log but not yet
    // applied; a checkpoint asked for as soon as it led again covered the entries before it,
    // and the export cut there did not show the acknowledged revocation.
    ensure_fresh(&node, Some("linearizable")).await?;
    let size = node.checkpoint().await?;
    Ok(Json(CheckpointAnswer {
        checkpoint_size: size,
    }))
}

/// Raft's view from this gateway: leader, term, membership, each node's index and lag.
#[utoipa::path(get, path = "/cluster/status", tag = "cluster", params(Freshness),
    responses((status = 200, description = "Cluster status", body = ClusterStatus)))]
pub async fn status(
    State(node): State<Arc<Node>>,
    QueryParams(q): QueryParams<Freshness>,
) -> Result<Json<ClusterStatus>, ApiError> {
    ensure_fresh(&node, q.consistency.as_deref()).await?;
    Ok(Json(node.status()))
}

/// This gateway's health: the verdict (`ok`, `degraded`, `failing`), whether it takes reads and
/// writes now, and every check (membership, quorum, lag, disk, certificates, CRL). What
/// `medledger status` prints.
#[utoipa::path(get, path = "/cluster/health", tag = "cluster",
    responses((status = 200, description = "Health report", body = crate::service::health::HealthReport)))]
pub async fn health(State(node): State<Arc<Node>>) -> Json<crate::service::health::HealthReport> {
    Json(node.health_report())
}
