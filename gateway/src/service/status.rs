//! What a node reports of Raft and the ledger (`GET /cluster/status`): plain data, read by the
//! API, the health checks, the metrics and the CLI, so none of them needs the node itself.

use std::collections::BTreeMap;

/// `cluster status` output.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    pub node_id: u64,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub ledger_size: u64,
    /// Last log index covered by this node's current snapshot (built or installed).
    pub snapshot_index: Option<u64>,
    /// Last log index purged from this node's log.
    pub purged_index: Option<u64>,
    pub nodes: BTreeMap<u64, NodeStatus>,
}

/// One member in `cluster status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeStatus {
    pub addr: String,
    pub voter: bool,
    /// Last log index known to be on that node (leader's view; this node's own applied index).
    pub matched_index: Option<u64>,
    /// How far behind the leader's last log index.
    pub lag: Option<u64>,
}
