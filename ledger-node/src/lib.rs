//! `ledger-node`: the tamper-evident ledger of MedLedger.
//!
//! It owns the byte format of entries and signed tree heads, RFC 9162 Merkle hashing and proofs,
//! durable storage in sled with group commit, the one deterministic apply path that replication
//! drives, and the export, receipt and offline verification formats.
//!
//! It deliberately knows nothing of MQTT, Modbus, staff HTTP routes, the CLI or the config file:
//! callers hand it validated events and an author identity.
#![forbid(unsafe_code)]

pub mod entry;
pub mod error;
pub mod export;
pub mod hash;
pub mod keys;
pub mod ledger;
pub mod merkle;
pub mod raft;
pub mod sigcheck;
pub mod sth;
pub mod store;
pub mod version;

pub use entry::{ComponentInput, DisclosureClass, Entry, EventInput, EventKind};
pub use error::LedgerError;
pub use ledger::{Ledger, LedgerOptions};
pub use sth::SignedTreeHead;
pub use store::{ApplyOutcome, Command, Store};
