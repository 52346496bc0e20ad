//! Raft storage of the replicated ledger: openraft's log store and state machine on sled.
//!
//! One sled database holds everything a node stores: the ledger ([`Store`], tree `ledger`), the
//! Raft log (tree `raft_log`: index as u64 big-endian to the entry as MessagePack) and Raft's own
//! metadata (tree `raft_meta`: vote, committed log id, last purged log id). Sharing one database
//! means one flush makes all of them durable, and Raft's last applied log id and membership are
//! written as metadata of the ledger in the same atomic batch as the entries they produced.
//!
//! The current snapshot is a file beside the database (see [`state_machine`] for its format).
//!
//! This module stores; it does not talk. The network (`openraft::RaftNetworkFactory`), the Raft
//! RPC server and client writes belong to the caller.

pub mod log_store;
pub mod state_machine;
pub mod types;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use log_store::LogStore;
pub use state_machine::{SnapshotBuilder, StateMachine};
pub use types::{RaftRequest, RaftResponse, TypeConfig};

use crate::error::LedgerError;
use crate::store::{open_db, sync_db, Store};

/// Name of the sled database's directory inside the data directory.
pub const DB_DIR: &str = "sled";
/// Name of the current snapshot's file inside the data directory.
pub const SNAPSHOT_FILE: &str = "raft-snapshot.bin";

/// Opens (or creates) the Raft storage of a node in `data_dir`: the sled database in
/// `data_dir/sled` with the ledger, the Raft log and Raft's metadata, and the snapshot file
/// `data_dir/raft-snapshot.bin`.
///
/// Returns the log store and the state machine to hand to `openraft::Raft::new`, and the ledger
/// store for reads (its [`Store::size`] follows what Raft has applied). Blocks on disk I/O (sled
/// recovery): call it from `spawn_blocking` or before the runtime is busy.
pub fn open_storage(data_dir: &Path) -> Result<(LogStore, StateMachine, Arc<Store>), LedgerError> {
    open_storage_with_cache(data_dir, crate::store::DEFAULT_CACHE_BYTES)
}

/// [`open_storage`] with sled's page cache (shared by the ledger and the Raft log) bounded to
/// `cache_bytes`.
pub fn open_storage_with_cache(
    data_dir: &Path,
    cache_bytes: u64,
) -> Result<(LogStore, StateMachine, Arc<Store>), LedgerError> {
    let db_dir = data_dir.join(DB_DIR);
    let db = open_db(&db_dir, cache_bytes)?;
    let store = Arc::new(Store::open_in(&db, &db_dir)?);
    let durability = Arc::new(Durability::new(db.clone(), db_dir.clone()));
    let log = LogStore::open(&db, &db_dir, durability.clone())?;
    let sm = StateMachine::new(
        store.clone(),
        durability,
        data_dir.join(SNAPSHOT_FILE),
        log.clone(),
    )?;
    Ok((log, sm, store))
}

/// Group flush of the shared database: a caller that wrote something and needs it on disk asks
/// for a sync; callers that ask while a sync is running share the next one, and a caller whose
/// write was already covered by a sync that started after it returns at once.
pub(crate) struct Durability {
    db: sled::Db,
    dir: PathBuf,
    /// Tickets handed out: a caller takes one after its write, so a sync that starts after
    /// ticket `t` was taken covers the writes of every ticket up to `t`.
    requested: AtomicU64,
    /// Highest ticket known to be covered by a completed sync. The lock also serialises syncs.
    synced: tokio::sync::Mutex<u64>,
}

impl Durability {
    pub(crate) fn new(db: sled::Db, dir: PathBuf) -> Self {
        Self {
            db,
            dir,
            requested: AtomicU64::new(0),
            synced: tokio::sync::Mutex::new(0),
        }
    }

    /// Returns once everything written to the database before the call is durable.
    pub(crate) async fn sync(&self) -> Result<(), LedgerError> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().await;
        if *synced >= ticket {
            return Ok(());
        }
        // Every ticket up to `covers` was taken after its write and before this sync starts.
        let covers = self.requested.load(Ordering::SeqCst);
        sync_db(&self.db, &self.dir).await?;
        *synced = covers;
        Ok(())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Converts an error to openraft's storage error (which stops the Raft node: storage that cannot
/// be read or written is not safe to go on with).
pub(crate) fn sto_err(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> types::StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(e)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_syncs_share_and_all_complete() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = open_db(tmp.path(), crate::store::DEFAULT_CACHE_BYTES).expect("open");
        let tree = db.open_tree("t").expect("tree");
        let d = Arc::new(Durability::new(db.clone(), tmp.path().to_owned()));
        let mut tasks = Vec::new();
        for i in 0u64..16 {
            let d = d.clone();
            let tree = tree.clone();
            tasks.push(tokio::spawn(async move {
                tree.insert(i.to_be_bytes(), &[1u8][..]).expect("insert");
                d.sync().await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("sync");
        }
        // Every ticket is covered by the last sync.
        assert_eq!(*d.synced.lock().await, d.requested.load(Ordering::SeqCst));
        assert_eq!(tree.len(), 16);
    }
}
