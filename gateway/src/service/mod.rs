//! `medledger run`: the gateway service. [`run`] wires the parts: the Raft [`node`] with its
//! group-commit proposer, the mutual-TLS [`server`] carrying the staff [`api`], Raft RPC
//! ([`raft_net`]) and enrollment ([`enroll`]), and the ledger-driven [`revocation`] watcher.

pub mod api;
pub mod enroll;
pub mod node;
pub mod raft_net;
pub mod revocation;
pub mod run;
pub mod server;
pub mod tls;
