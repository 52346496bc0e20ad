//! The openraft type configuration of the replicated ledger and the request/response of one Raft
//! entry.

use serde::{Deserialize, Serialize};

use crate::store::{ApplyOutcome, Command};

openraft::declare_raft_types!(
    /// Type configuration of MedLedger's Raft group: node ids are the gateways' `u64` node ids,
    /// a node's address is a [`openraft::BasicNode`] (`host:port` of its Raft endpoint) and a
    /// snapshot is a file, streamed in chunks (see `state_machine` for its format).
    pub TypeConfig:
        D = RaftRequest,
        R = RaftResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The application data of one Raft entry: commands applied in order, as one atomic batch.
///
/// Several events share one entry (group commit): the proposing node gathers whatever arrived
/// while the previous proposal was in flight. Every command is fully prepared (time, salts,
/// signature) before it is proposed, so apply is deterministic on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftRequest {
    pub commands: Vec<Command>,
}

/// What applying one Raft entry did: one outcome per command of a normal entry, none for blank
/// and membership entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftResponse {
    pub outcomes: Vec<ApplyOutcome>,
}

/// Raft node id (the gateway's node id).
pub type NodeId = u64;
/// A Raft log entry of the ledger.
pub type Entry = openraft::Entry<TypeConfig>;
/// A Raft log id.
pub type LogId = openraft::LogId<NodeId>;
/// A Raft vote.
pub type Vote = openraft::Vote<NodeId>;
/// Membership with the log id it was written at.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// Metadata of a snapshot.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
/// A snapshot with its data.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// The storage error openraft expects.
pub type StorageError = openraft::StorageError<NodeId>;
/// A running Raft node of the ledger.
pub type Raft = openraft::Raft<TypeConfig>;
