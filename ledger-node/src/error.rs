//! The ledger's error type.

use std::path::PathBuf;

use crate::entry::{DecodeError, InvalidEvent};

/// Everything that can go wrong in the ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The event was refused before it reached the ledger.
    #[error("invalid event: {0}")]
    InvalidEvent(#[from] InvalidEvent),
    /// The state machine refused the command (for example a correction of an entry that does not
    /// exist).
    #[error("event refused: {0}")]
    Refused(String),
    /// The storage engine failed.
    #[error("storage error in {path}: {source}")]
    Storage { path: PathBuf, source: sled::Error },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file is not usable.
    #[error("key file {path}: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },
    /// Stored data does not parse or does not agree with itself.
    #[error("ledger data in {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// An entry that does not exist was asked for.
    #[error("no entry {seq}: the ledger has {size} entries")]
    NoSuchEntry { seq: u64, size: u64 },
    /// A proof that cannot exist was asked for.
    #[error(transparent)]
    ProofRequest(#[from] crate::merkle::ProofRequestError),
    /// Something another release wrote that this one does not know.
    #[error(transparent)]
    Version(#[from] crate::version::VersionError),
    /// The ledger is shutting down.
    #[error("the ledger is shutting down")]
    ShuttingDown,
}

impl LedgerError {
    pub(crate) fn corrupt(path: &std::path::Path, e: DecodeError) -> Self {
        LedgerError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    }
}
