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
    /// The command format the leader proposed this entry at ([`crate::version::FORMAT`]): the
    /// rules every replica applies its commands by. Absent (release 0.1.0, and any entry
    /// proposed while a member of the cluster runs 0.1.0) means format 1, and is then left out
    /// of the bytes, so that a 0.1.0 gateway receives what 0.1.0 itself writes.
    #[serde(default = "format_v1", skip_serializing_if = "is_format_v1")]
    pub format: u8,
}

impl RaftRequest {
    /// A request of the oldest format: the leader raises it when every member reads more.
    pub fn new(commands: Vec<Command>) -> Self {
        RaftRequest {
            commands,
            format: crate::version::FORMAT_V1,
        }
    }
}

fn format_v1() -> u8 {
    crate::version::FORMAT_V1
}

fn is_format_v1(f: &u8) -> bool {
    *f == crate::version::FORMAT_V1
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
