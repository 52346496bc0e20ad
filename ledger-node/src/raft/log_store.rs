//! openraft's log storage on sled: the Raft log and Raft's own metadata, in two trees of the
//! node's one sled database.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `raft_log` | index (u64 BE) | the entry as MessagePack, or for entries over 6 KiB 0xc1, length (u32 BE), piece count (u32 BE) |
//! | `raft_log_chunks` | index (u64 BE), piece (u32 BE) | 6 KiB pieces of a large entry |
//! | `raft_meta` | `vote` | the vote as JSON |
//! | `raft_meta` | `committed` | the committed log id as JSON |
//! | `raft_meta` | `last_purged` | the last purged log id as JSON |
//!
//! Appended entries and votes are acknowledged only once they are on disk (sled's flush, which
//! ends in `fdatasync` in our patched sled, shared between concurrent callers): acknowledging before the flush loses
//! acknowledged writes on power loss (openraft #618).
//!
//! # The purge that follows a snapshot install
//!
//! When a follower installs a snapshot, openraft sends the install to the state machine's task
//! and at once, without waiting for it, purges the log up to the snapshot. The state machine
//! streams the snapshot into a new tree and flushes the database before it switches to it; that
//! flush also made the purge durable. A power cut in between left the log purged up to the new
//! snapshot while the ledger and the snapshot file were still the old ones: openraft's start-up
//! then found its log purged beyond its snapshot, and its state validation panicked (found by
//! the power-loss rounds, `tests/it/powerloss.rs`, `power_cut_during_snapshot_install`). So a
//! purge beyond what the state machine holds, asked for while a snapshot is being received, is
//! held back ([`PurgeGate`]) and written by the state machine right after it switched to the
//! snapshot: sled recovers a prefix of its writes, so the purge is never durable without it.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use super::{sto_err, Durability};
use crate::error::LedgerError;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The Raft log of a node. Cloning is cheap and gives another handle on the same trees (openraft
/// uses a clone as the log reader of its replication streams).
#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    /// Pieces of entries too large to store whole (see [`CHUNK`]).
    chunks: sled::Tree,
    meta: sled::Tree,
    durability: Arc<Durability>,
    path: PathBuf,
    gate: Arc<PurgeGate>,
}

/// Orders the log purge of a snapshot install after the install (see the module documentation).
#[derive(Default)]
struct PurgeGate {
    state: std::sync::Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    /// Raft's last applied log id as the state machine last wrote it (flushed or not).
    applied: Option<LogId>,
    /// A snapshot is being received; cleared by its install.
    receiving: bool,
    /// A purge held back until the state machine has applied or installed up to it.
    held: Option<LogId>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Largest entry stored as one value; larger ones are cut into pieces of this size.
///
/// sled splits its tree nodes by item count (16 per leaf), not by size, and writes a node whose
/// encoding exceeds a quarter of a segment (128 KiB) as a file of its own ("blob"), which must
/// then be `fsync`ed with its directory before a flush counts. Raft entries of 100+ events are
/// 100+ KiB each, so before this every flush on a busy gateway created and synced several
/// blob files of ~400 KiB. Pieces of at most 6 KiB keep every node under the threshold.
const CHUNK: usize = 6 * 1024;

/// First byte of the value of a cut entry; never the first byte of a MessagePack map (an entry).
const CHUNKED: u8 = 0xc1;

fn chunk_key(index: u64, piece: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&index.to_be_bytes());
    k[8..].copy_from_slice(&piece.to_be_bytes());
    k
}

/// `[start, end)` of a range of indexes, `end` `None` for unbounded; `None` for an empty range.
fn index_bounds(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.checked_add(1),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    match end {
        Some(e) if e <= start => None,
        _ => Some((start, end)),
    }
}

impl LogStore {
    pub(crate) fn open(
        db: &sled::Db,
        dir: &Path,
        durability: Arc<Durability>,
    ) -> Result<Self, LedgerError> {
        let storage = |source| LedgerError::Storage {
            path: dir.to_owned(),
            source,
        };
        Ok(Self {
            log: db.open_tree("raft_log").map_err(storage)?,
            chunks: db.open_tree("raft_log_chunks").map_err(storage)?,
            meta: db.open_tree("raft_meta").map_err(storage)?,
            durability,
            path: dir.to_owned(),
            gate: Arc::default(),
        })
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.gate.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state machine starts receiving a snapshot: until it is installed, a purge beyond what
    /// is applied waits for it.
    pub(crate) fn snapshot_receiving(&self) {
        self.gate().receiving = true;
    }

    /// The state machine wrote `applied` as its last applied log id, by applying entries or (with
    /// `installed`) by switching to a received snapshot; a purge held back until then is written
    /// now, after what it covers.
    pub(crate) fn state_applied(
        &self,
        applied: Option<LogId>,
        installed: bool,
    ) -> Result<(), LedgerError> {
        let mut gate = self.gate();
        gate.applied = applied;
        if installed {
            gate.receiving = false;
        }
        if let Some(upto) = gate.held.filter(|h| Some(h) <= applied.as_ref()) {
            tracing::debug!(upto = %upto, "purging the raft log the installed snapshot covers");
            self.purge_upto(&upto)?;
            gate.held = None;
        }
        Ok(())
    }

    fn corrupt(&self, what: &str, e: impl std::fmt::Display) -> LedgerError {
        LedgerError::Corrupt {
            path: self.path.clone(),
            reason: format!("{what}: {e}"),
        }
    }

    fn storage(&self, source: sled::Error) -> LedgerError {
        LedgerError::Storage {
            path: self.path.clone(),
            source,
        }
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, LedgerError> {
        match self.meta.get(key).map_err(|e| self.storage(e))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| {
                self.corrupt(&format!("raft_meta {}", String::from_utf8_lossy(key)), e)
            }),
        }
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), LedgerError> {
        let v = serde_json::to_vec(value).map_err(|e| self.corrupt("raft_meta value", e))?;
        self.meta.insert(key, v).map_err(|e| self.storage(e))?;
        Ok(())
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<Entry, LedgerError> {
        let index = key.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
        let whole;
        let bytes = match value.split_first() {
            Some((&CHUNKED, head)) => {
                whole = self.reassemble(index, head)?;
                &whole[..]
            }
            _ => value,
        };
        rmp_serde::from_slice(bytes)
            .map_err(|e| self.corrupt(&format!("raft log entry {index}"), e))
    }

    /// The bytes of a cut entry from its pieces; `head` is its value after the marker: total
    /// length and piece count (u32 BE each).
    fn reassemble(&self, index: u64, head: &[u8]) -> Result<Vec<u8>, LedgerError> {
        let bad = |what: &str| self.corrupt(&format!("raft log entry {index}"), what);
        let (len, rest) = head
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("short head"))?;
        let pieces = rest
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| bad("bad head"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let mut out = Vec::with_capacity(len.min(pieces as usize * CHUNK));
        for piece in 0..pieces {
            let v = self
                .chunks
                .get(chunk_key(index, piece))
                .map_err(|e| self.storage(e))?
                .ok_or_else(|| bad("a piece is missing"))?;
            out.extend_from_slice(&v);
        }
        if out.len() != len {
            return Err(bad("pieces do not add up to its length"));
        }
        Ok(out)
    }

    /// Stores one entry's bytes under its index: whole, or cut into pieces written before the
    /// head that points to them (sled recovers a prefix, so a head never lacks its pieces).
    fn put(&self, index: u64, v: Vec<u8>) -> Result<(), LedgerError> {
        if v.len() <= CHUNK {
            self.log
                .insert(index_key(index), v)
                .map_err(|e| self.storage(e))?;
            return Ok(());
        }
        let mut pieces = 0u32;
        for piece in v.chunks(CHUNK) {
            self.chunks
                .insert(chunk_key(index, pieces), piece)
                .map_err(|e| self.storage(e))?;
            pieces += 1;
        }
        let len = u32::try_from(v.len())
            .map_err(|_| self.corrupt(&format!("raft log entry {index}"), "over 4 GiB"))?;
        let mut head = Vec::with_capacity(9);
        head.push(CHUNKED);
        head.extend_from_slice(&len.to_be_bytes());
        head.extend_from_slice(&pieces.to_be_bytes());
        self.log
            .insert(index_key(index), head)
            .map_err(|e| self.storage(e))?;
        Ok(())
    }

    pub(crate) fn last_purged(&self) -> Result<Option<LogId>, LedgerError> {
        self.read_meta(KEY_LAST_PURGED)
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, LedgerError> {
        match self.log.last().map_err(|e| self.storage(e))? {
            Some((k, v)) => Ok(Some(self.decode(&k, &v)?.log_id)),
            None => Ok(None),
        }
    }

    fn read_range(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, LedgerError> {
        let iter = match end {
            Some(e) => self.log.range(index_key(start)..index_key(e)),
            None => self.log.range(index_key(start)..),
        };
        let mut out = Vec::new();
        for kv in iter {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            out.push(self.decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Purge of the log up to `log_id`, inclusive (see [`RaftLogStorage::purge`]).
    fn purge_upto(&self, log_id: &LogId) -> Result<(), LedgerError> {
        if self.last_purged()?.as_ref() < Some(log_id) {
            // The purged id goes first: a crash before the removal below leaves entries that are
            // never read again, never a hole below the first entry.
            self.write_meta(KEY_LAST_PURGED, log_id)?;
        }
        self.remove_range(0, log_id.index.checked_add(1))
    }

    /// Removes the entries with indexes in `[start, end)` (`end` `None`: to the end) in one batch.
    fn remove_range(&self, start: u64, end: Option<u64>) -> Result<(), LedgerError> {
        self.remove_keys(
            &self.log,
            &index_key(start),
            end.map(index_key).as_ref().map(|k| &k[..]),
        )?;
        // Pieces after their heads: a crash in between leaves pieces nothing points to, which
        // the next entry with that index overwrites or a later removal takes.
        self.remove_keys(
            &self.chunks,
            &chunk_key(start, 0),
            end.map(|e| chunk_key(e, 0)).as_ref().map(|k| &k[..]),
        )
    }

    /// Removes the keys of `tree` in `[lo, hi)` (`hi` `None`: to the end) in one batch.
    fn remove_keys(
        &self,
        tree: &sled::Tree,
        lo: &[u8],
        hi: Option<&[u8]>,
    ) -> Result<(), LedgerError> {
        let iter = match hi {
            Some(hi) => tree.range(lo..hi),
            None => tree.range(lo..),
        };
        let mut batch = sled::Batch::default();
        for k in iter.keys() {
            batch.remove(k.map_err(|e| self.storage(e))?);
        }
        tree.apply_batch(batch).map_err(|e| self.storage(e))
    }

    async fn sync(&self, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        self.durability
            .sync()
            .await
            .map_err(|e| sto_err(subject, ErrorVerb::Write, &e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        self.read_range(start, end)
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = |e: LedgerError| sto_err(ErrorSubject::Logs, ErrorVerb::Read, &e);
        let last_purged = self.last_purged().map_err(read)?;
        let last = self.last_entry_id().map_err(read)?;
        // A purge may go beyond the last entry (after a snapshot install), and a purge cut short
        // by a crash may leave entries at or below the purged id behind: the larger one wins.
        let last_log_id = std::cmp::max(last, last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote)
            .map_err(|e| sto_err(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        // A vote must survive a crash, or this node could vote twice in one term.
        self.sync(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE)
            .map_err(|e| sto_err(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: it rides along with the next flush. Losing it only means that
        // after a restart fewer entries are re-applied before the leader tells us again. It can
        // never be durable without the entries it covers, because they were written to the same
        // sled database before it and sled recovers a prefix of its writes.
        match committed {
            Some(c) => self.write_meta(KEY_COMMITTED, &c),
            None => self
                .meta
                .remove(KEY_COMMITTED)
                .map(|_| ())
                .map_err(|e| self.storage(e)),
        }
        .map_err(|e| sto_err(ErrorSubject::Store, ErrorVerb::Write, &e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(KEY_COMMITTED)
            .map_err(|e| sto_err(ErrorSubject::Store, ErrorVerb::Read, &e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Plain inserts, not a sled batch: a sled batch seals its log buffer twice, and every
        // seal is a synchronous device write (`fdatasync`, patched sled) on the path of
        // the flush below. Atomicity is not needed: sled recovers a prefix of its writes, and a
        // prefix of appended entries is a valid log that was never acknowledged past its end.
        let mut count = 0usize;
        for entry in entries {
            // MessagePack: entries are written once and read at least once per node (apply),
            // and JSON's text encoding of the signed bodies cost a measurable share of the CPU.
            let v = rmp_serde::to_vec_named(&entry).map_err(|e| {
                sto_err(
                    ErrorSubject::Log(entry.log_id),
                    ErrorVerb::Write,
                    &self.corrupt("raft log entry", e),
                )
            })?;
            if let Err(e) = self.put(entry.log_id.index, v) {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                return Err(sto_err(ErrorSubject::Logs, ErrorVerb::Write, &e));
            }
            count += 1;
        }
        // Only with the entries on disk may openraft count them as stored (openraft #618). The
        // flush runs in its own task and completes the callback when done, so that the leader
        // replicates these entries while they are flushed (our openraft patch counts the
        // leader's copy towards the quorum only on this callback; followers still wait for it
        // before they answer). Flushes complete in order: each covers every earlier insert.
        let durability = self.durability.clone();
        tokio::spawn(async move {
            match durability.sync().await {
                Ok(()) => {
                    tracing::trace!(entries = count, "raft log entries on disk");
                    callback.log_io_completed(Ok(()));
                }
                Err(e) => {
                    tracing::error!(error = %e, "the raft log could not be flushed");
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                }
            }
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(since = %log_id, "truncating the raft log");
        self.remove_range(log_id.index, None)
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        // Flushed so that conflicting entries cannot come back after a crash once the leader's
        // replacements have been acknowledged elsewhere.
        self.sync(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Under the gate's lock, so that a purge held back and one asked for now are written in
        // the order openraft asked for them.
        let mut gate = self.gate();
        if gate.receiving && gate.applied.as_ref() < Some(&log_id) {
            // The purge of a snapshot install that is not done yet (see the module
            // documentation): written by `state_applied` once the state machine switched to it.
            tracing::debug!(upto = %log_id, applied = ?gate.applied, "raft log purge waits for the snapshot install");
            gate.held = gate.held.max(Some(log_id));
            return Ok(());
        }
        tracing::debug!(upto = %log_id, "purging the raft log");
        // Not flushed: purging is only ever done up to state that a durable snapshot covers, and
        // a purge lost in a crash just leaves more log than needed.
        self.purge_upto(&log_id)
            .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, filler: usize) -> Entry {
        let commands = (0..filler)
            .map(|i| crate::store::Command::RegisterNode {
                node_id: index * 1000 + i as u64,
                public_key: [(i % 251) as u8; 32],
            })
            .collect();
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(super::super::RaftRequest::new(commands)),
        }
    }

    #[test]
    fn large_entries_are_cut_into_pieces_and_come_back_whole() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db =
            crate::store::open_db(tmp.path(), crate::store::DEFAULT_CACHE_BYTES).expect("open");
        let durability = Arc::new(Durability::new(db.clone(), tmp.path().to_owned()));
        let store = LogStore::open(&db, tmp.path(), durability).expect("log store");
        // 0 commands: a few bytes; 400: ~20 KiB, four pieces; 123: just over one piece.
        let entries: Vec<Entry> = [0usize, 400, 3, 123, 400, 1]
            .iter()
            .enumerate()
            .map(|(i, n)| entry(i as u64 + 1, *n))
            .collect();
        for e in &entries {
            let v = rmp_serde::to_vec_named(e).expect("encode");
            store.put(e.log_id.index, v).expect("put");
        }
        assert!(store.chunks.len() >= 8, "{} pieces", store.chunks.len());
        let back = store.read_range(1, None).expect("read");
        assert_eq!(
            rmp_serde::to_vec_named(&back).expect("encode"),
            rmp_serde::to_vec_named(&entries).expect("encode")
        );
        assert_eq!(
            store.last_entry_id().expect("last"),
            Some(entries[5].log_id)
        );
        // Truncating from 4 removes the heads and the pieces of 4 and 5, not those of 2.
        store.remove_range(4, None).expect("truncate");
        assert_eq!(store.read_range(1, None).expect("read").len(), 3);
        assert!(store.chunks.range(chunk_key(4, 0)..).next().is_none());
        // Purging up to 3 leaves nothing.
        store.remove_range(0, Some(4)).expect("purge");
        assert!(store.read_range(0, None).expect("read").is_empty());
        assert_eq!(store.chunks.len(), 0);
        // A head whose pieces are gone is a clear error, not a panic.
        store
            .put(9, rmp_serde::to_vec_named(&entry(9, 400)).expect("encode"))
            .expect("put");
        store.chunks.remove(chunk_key(9, 1)).expect("remove");
        let err = store.read_range(9, None).expect_err("a missing piece");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn bounds_of_index_ranges() {
        assert_eq!(index_bounds(&(3..7)), Some((3, Some(7))));
        assert_eq!(index_bounds(&(3..=7)), Some((3, Some(8))));
        assert_eq!(index_bounds(&(3..)), Some((3, None)));
        assert_eq!(index_bounds(&(..)), Some((0, None)));
        assert_eq!(index_bounds(&(5..5)), None);
        assert_eq!(index_bounds(&(0..=u64::MAX)), Some((0, None)));
        assert_eq!(
            index_bounds(&(Bound::Excluded(u64::MAX), Bound::Unbounded)),
            None
        );
    }
}
