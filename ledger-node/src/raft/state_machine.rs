//! openraft's state machine: the ledger [`Store`], driven through its one apply path.
//!
//! # Durability without a flush per apply
//!
//! Applying does not flush. An entry reaches `apply` only once it is committed, that is on disk
//! in the Raft log of a quorum, and Raft's last applied log id (and membership) are written in
//! the same atomic sled batch as the ledger changes the entry made. A crash can therefore only
//! lose a suffix of applies together with the matching last applied id; on restart openraft
//! applies the lost suffix again from the log (or the leader sends it again), and apply is
//! deterministic, so the same bytes come back. That is why applied entries are published to
//! readers ([`Store::publish`]) without a flush of their own.
//!
//! Two places do flush: building a snapshot (openraft purges the log up to a snapshot, so the
//! state it covers must be durable before the log that could rebuild it goes), and installing one
//! (the log before it is purged as well, and that purge is written only after the install
//! switched the store to the snapshot: see [`LogStore`]'s module).
//!
//! # Snapshots
//!
//! A snapshot is the whole ledger tree, so a new node receives every entry, proof node and index
//! and serves reads at once. It is a file, built, sent, received and installed as a stream: a
//! ledger of millions of entries is gigabytes, and none of it is held in memory. The builder
//! copies a [`StoreView`] of the store (the entries present when it was taken, read from the live
//! tree) into a temporary file, syncing every [`SNAPSHOT_SYNC_CHUNK`] bytes, and renames it to
//! `raft-snapshot.bin`; openraft sends it in chunks read from the file. The receiver writes the
//! chunks into `raft-snapshot.recv`, checks its checksum and header, installs the pairs with
//! [`Store::install`] (a new sled tree, switched to only once complete and checked) and renames
//! the file to `raft-snapshot.bin`. The format, the same on disk and in transit:
//!
//! ```text
//! "MLSNAP02"                       8 bytes
//! header length                    u32 BE
//! header                           JSON: {meta, size, root}
//! pairs times: key length u32 BE, key, value length u32 BE, value
//! end of pairs                     u32 BE 0xFFFF_FFFF
//! pair count                       u64 BE
//! SHA-256 of all bytes before it   32 bytes
//! ```
//!
//! Version 1 (`"MLSNAP01"`, written by earlier versions, still read) has the pair count in the
//! header and no end marker or count after the pairs. `size` and `root` are checked against the
//! installed ledger.

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::types::{
    Entry, LogId, RaftResponse, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use super::{sto_err, Durability, LogStore};
use crate::error::LedgerError;
use crate::hash::Hash;
use crate::store::{Command, Store, StoreView};

/// Store metadata name of Raft's last applied log id.
pub const META_APPLIED: &str = "raft_applied";
/// Store metadata name of Raft's last applied membership.
pub const META_MEMBERSHIP: &str = "raft_membership";
/// Store metadata name of the log id of the last Raft entry applied with an erasure in it: the
/// log up to it may hold the value the erasure dropped, until this node has
/// a snapshot covering it and has purged its log up to it (see [`StateMachine::erasures`]).
pub const META_LAST_ERASURE: &str = "raft_last_erasure";

const MAGIC_V1: &[u8; 8] = b"MLSNAP01";
const MAGIC: &[u8; 8] = b"MLSNAP02";
/// Key length that ends the pairs of a version 2 snapshot (no key is 4 GiB long).
const END_OF_PAIRS: u32 = u32::MAX;
/// Read and write buffer of snapshot files.
const IO_BUFFER: usize = 1 << 20;

/// The replicated state machine: the ledger store plus where its snapshot is kept.
pub struct StateMachine {
    store: Arc<Store>,
    durability: Arc<Durability>,
    snapshot_path: PathBuf,
    /// The node's Raft log, told what is applied so that the purge of a snapshot install is
    /// written after the install (see the [`log_store`](super::log_store) module).
    log: LogStore,
    /// Held while `raft-snapshot.bin` is replaced, by a build or an install (see
    /// [`replace_snapshot_file`]).
    snapshot_file: Arc<std::sync::Mutex<()>>,
    /// Held while a build writes `raft-snapshot.tmp`: openraft runs one build at a time, but
    /// [`RaftStateMachine::get_current_snapshot`] may build one beside it.
    building: Arc<std::sync::Mutex<()>>,
    /// The log id of the last entry applied with an erasure in it ([`META_LAST_ERASURE`]).
    erasures: tokio::sync::watch::Sender<Option<LogId>>,
}

/// Whether the signed body of an append (`EntryBody::encode`: recorded time, node id, author,
/// kind, ...) is of kind erasure; read without decoding the rest. A body that does not read so
/// is not an erasure (apply refuses it anyway).
fn is_erasure(body: &[u8]) -> bool {
    let field = |at: usize| -> Option<(&[u8], usize)> {
        let len = u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        let start = at + 4;
        Some((body.get(start..start.checked_add(len)?)?, start + len))
    };
    // Recorded time and node id: 8 bytes each.
    field(16)
        .and_then(|(_, next)| field(next))
        .is_some_and(|(kind, _)| kind == crate::entry::EventKind::Erasure.as_str().as_bytes())
}

/// What [`RaftStateMachine::get_current_snapshot`] logs, as an error, when the Raft log is purged
/// and the snapshot file that covered the purge is gone.
pub const SNAPSHOT_LOST: &str = "the raft log is purged but the snapshot file is missing";

/// Builds snapshots of the state machine; openraft runs it beside ongoing applies.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    durability: Arc<Durability>,
    snapshot_path: PathBuf,
    snapshot_file: Arc<std::sync::Mutex<()>>,
    building: Arc<std::sync::Mutex<()>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    meta: SnapshotMeta,
    size: u64,
    #[serde(with = "crate::entry::hex32")]
    root: Hash,
    /// Version 1 only: the number of pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pairs: Option<u64>,
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    }
}

fn join_err(path: &Path, e: tokio::task::JoinError) -> LedgerError {
    LedgerError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    }
}

/// The voting members of a membership (both configurations of a joint one), ascending: the
/// voter set a co-signed checkpoint carries (docs/ledger-format.md §9.6).
pub fn voter_set(m: &openraft::Membership<u64, openraft::BasicNode>) -> Vec<u64> {
    let set: std::collections::BTreeSet<u64> = m.voter_ids().collect();
    set.into_iter().collect()
}

/// Raft's last applied log id and membership as stored in the ledger's metadata.
fn decode_applied(
    applied: Option<&[u8]>,
    membership: Option<&[u8]>,
    path: &Path,
) -> Result<(Option<LogId>, StoredMembership), LedgerError> {
    let applied = match applied {
        None => None,
        Some(v) => Some(
            serde_json::from_slice(v).map_err(|e| corrupt(path, format!("{META_APPLIED}: {e}")))?,
        ),
    };
    let membership = match membership {
        None => StoredMembership::default(),
        Some(v) => serde_json::from_slice(v)
            .map_err(|e| corrupt(path, format!("{META_MEMBERSHIP}: {e}")))?,
    };
    Ok((applied, membership))
}

/// Writes a snapshot in the format above, hashing as it goes.
struct SnapshotWriter<W: Write> {
    out: W,
    hasher: Sha256,
    pairs: u64,
    path: PathBuf,
}

impl<W: Write> SnapshotWriter<W> {
    fn new(out: W, header: &Header, path: &Path) -> Result<Self, LedgerError> {
        let header = serde_json::to_vec(header).map_err(|e| corrupt(path, e))?;
        let mut w = Self {
            out,
            hasher: Sha256::new(),
            pairs: 0,
            path: path.to_owned(),
        };
        w.put(MAGIC)?;
        w.put_len(header.len())?;
        w.put(&header)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), LedgerError> {
        self.hasher.update(bytes);
        self.out.write_all(bytes).map_err(io_err(&self.path))
    }

    fn put_len(&mut self, len: usize) -> Result<(), LedgerError> {
        let len = u32::try_from(len)
            .ok()
            .filter(|l| *l != END_OF_PAIRS)
            .ok_or_else(|| corrupt(&self.path, "snapshot item of 4 GiB or more"))?;
        self.put(&len.to_be_bytes())
    }

    fn pair(&mut self, key: &[u8], value: &[u8]) -> Result<(), LedgerError> {
        self.put_len(key.len())?;
        self.put(key)?;
        self.put_len(value.len())?;
        self.put(value)?;
        self.pairs += 1;
        Ok(())
    }

    /// Writes the end of the pairs, their count and the checksum; returns the writer.
    fn finish(mut self) -> Result<W, LedgerError> {
        self.put(&END_OF_PAIRS.to_be_bytes())?;
        self.put(&self.pairs.to_be_bytes())?;
        let sum = self.hasher.finalize_reset();
        self.out.write_all(&sum).map_err(io_err(&self.path))?;
        Ok(self.out)
    }
}

/// How much of a snapshot file is written before it is synced: a snapshot is the whole ledger
/// (100 MB and more), and writing it in one go queued every Raft log flush of this gateway
/// behind the writeback of all of it (measured: a 114 MB snapshot during the 256-client bench
/// timed out AppendEntries and took the maximum latency to 551 ms).
const SNAPSHOT_SYNC_CHUNK: u64 = 4 * 1024 * 1024;

/// A file that syncs its data every [`SNAPSHOT_SYNC_CHUNK`] bytes written, so that at most that
/// much is waiting for the disk in front of other flushes.
struct SyncingFile {
    file: std::fs::File,
    unsynced: u64,
}

impl Write for SyncingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SNAPSHOT_SYNC_CHUNK {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Writes `view` as the snapshot `meta` into `path` so that a crash leaves either the old file or
/// the new one (a temporary file, synced, renamed over, the directory synced), and returns the
/// new file opened for reading. `lock` is held while the file is replaced (see
/// [`replace_snapshot_file`]).
fn write_snapshot_file(
    path: &Path,
    meta: &SnapshotMeta,
    view: &StoreView,
    lock: &std::sync::Mutex<()>,
) -> Result<(std::fs::File, u64), LedgerError> {
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let header = Header {
        meta: meta.clone(),
        size: view.size(),
        root: view.root(),
        pairs: None,
    };
    let out = BufWriter::with_capacity(IO_BUFFER, SyncingFile { file, unsynced: 0 });
    let mut w = SnapshotWriter::new(out, &header, &tmp)?;
    view.for_each_pair(|k, v| w.pair(k, v))?;
    let out = w.finish()?;
    let file = out
        .into_inner()
        .map_err(|e| LedgerError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?
        .file;
    file.sync_all().map_err(io_err(&tmp))?;
    let len = file.metadata().map_err(io_err(&tmp))?.len();
    drop(file);
    // Opened before the rename: a build that renames over this one meanwhile does not change
    // what this snapshot's reader sees.
    let reader = std::fs::File::open(&tmp).map_err(io_err(&tmp))?;
    replace_snapshot_file(lock, &tmp, path, meta.last_log_id)?;
    Ok((reader, len))
}

/// Renames the built snapshot `from` (of `last`) over the current snapshot file `to`, unless
/// that holds a newer snapshot: openraft builds beside installs, and a build that started before
/// an install and ended after it put its older snapshot in place of the installed one, whose log
/// openraft had purged (the next start would find its log purged beyond its snapshot, which its
/// state validation refuses). The older file is removed; its reader stays open.
fn replace_snapshot_file(
    lock: &std::sync::Mutex<()>,
    from: &Path,
    to: &Path,
    last: Option<LogId>,
) -> Result<(), LedgerError> {
    let _replacing = lock.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(current) = file_last_log_id(to).filter(|current| *current > last) {
        tracing::info!(
            built = ?last,
            current = ?current,
            "a snapshot was installed while this one was built: keeping the installed one"
        );
        return std::fs::remove_file(from).map_err(io_err(from));
    }
    rename_synced(from, to)
}

/// The last log id in the header of the snapshot file at `path`; `None` if there is no file or
/// it does not read.
fn file_last_log_id(path: &Path) -> Option<Option<LogId>> {
    let file = std::fs::File::open(path).ok()?;
    let content = file.metadata().ok()?.len().checked_sub(32)?;
    let header = SnapshotReader::new(BufReader::new(&file), content, path)
        .ok()?
        .header;
    Some(header.meta.last_log_id)
}

/// Renames `from` to `to` and syncs the directory, so that the rename survives a crash.
fn rename_synced(from: &Path, to: &Path) -> Result<(), LedgerError> {
    std::fs::rename(from, to).map_err(io_err(to))?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// Reads `n` of the `left` bytes of a snapshot's content; more than are left is an error, before
/// anything is allocated.
fn take_bounded(
    r: &mut impl Read,
    n: u64,
    left: &mut u64,
    path: &Path,
) -> Result<Vec<u8>, LedgerError> {
    if n > *left {
        return Err(corrupt(path, "snapshot is truncated"));
    }
    let len = usize::try_from(n).map_err(|_| corrupt(path, "snapshot item too large"))?;
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).map_err(io_err(path))?;
    *left -= n;
    Ok(buf)
}

/// A key/value pair read from a snapshot.
type OwnedPair = (Vec<u8>, Vec<u8>);

/// Reads a snapshot's pairs from `r`, which holds `content` bytes before the checksum (checked
/// beforehand by [`check_sum`]). Every length is checked against what is left, so damaged or
/// hostile input is an error, never a panic or a huge allocation.
/// Checks the start of a snapshot as it arrives (its first chunk): a snapshot of a format this
/// release does not read is refused before anything is written, with both releases named.
pub fn check_snapshot_start(chunk: &[u8]) -> Result<(), crate::version::VersionError> {
    match chunk.get(..MAGIC.len()) {
        Some(m) if m != MAGIC && m != MAGIC_V1 && m.starts_with(b"MLSNAP") => {
            Err(crate::version::VersionError::Snapshot {
                found: String::from_utf8_lossy(m).into_owned(),
            })
        }
        _ => Ok(()),
    }
}

struct SnapshotReader<R: Read> {
    r: R,
    left: u64,
    v1: bool,
    header: Header,
    pairs: u64,
    done: bool,
    path: PathBuf,
}

impl<R: Read> SnapshotReader<R> {
    fn new(mut r: R, content: u64, path: &Path) -> Result<Self, LedgerError> {
        let mut left = content;
        let mut reader = |n: u64, left: &mut u64| take_bounded(&mut r, n, left, path);
        let magic = reader(MAGIC.len() as u64, &mut left)
            .map_err(|_| corrupt(path, "not a medledger snapshot"))?;
        let v1 = match magic.as_slice() {
            m if m == MAGIC => false,
            m if m == MAGIC_V1 => true,
            // A later format of ours: say so, naming this release, rather than "not a snapshot".
            m if m.starts_with(b"MLSNAP") => {
                return Err(crate::version::VersionError::Snapshot {
                    found: String::from_utf8_lossy(m).into_owned(),
                }
                .into())
            }
            _ => return Err(corrupt(path, "not a medledger snapshot")),
        };
        let len = reader(4, &mut left)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let header = reader(len.into(), &mut left)?;
        let header: Header = serde_json::from_slice(&header)
            .map_err(|e| corrupt(path, format!("snapshot header: {e}")))?;
        if v1 != header.pairs.is_some() {
            return Err(corrupt(path, "snapshot header does not match its version"));
        }
        Ok(Self {
            r,
            left,
            v1,
            header,
            pairs: 0,
            done: false,
            path: path.to_owned(),
        })
    }

    fn take(&mut self, n: u64) -> Result<Vec<u8>, LedgerError> {
        take_bounded(&mut self.r, n, &mut self.left, &self.path)
    }

    fn take_u32(&mut self) -> Result<u32, LedgerError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next pair, or `None` after the last one (once the count has been checked).
    fn next_pair(&mut self) -> Result<Option<OwnedPair>, LedgerError> {
        if self.done {
            return Ok(None);
        }
        let expected = if self.v1 && self.left == 0 {
            self.header.pairs
        } else if self.v1 {
            None
        } else {
            match self.take_u32()? {
                END_OF_PAIRS => {
                    let n = self.take(8)?;
                    let mut c = [0u8; 8];
                    c.copy_from_slice(&n);
                    if self.left != 0 {
                        return Err(corrupt(&self.path, "snapshot has bytes after its pairs"));
                    }
                    Some(u64::from_be_bytes(c))
                }
                kl => {
                    let k = self.take(kl.into())?;
                    return self.value_for(k).map(Some);
                }
            }
        };
        if let Some(count) = expected {
            self.done = true;
            if count != self.pairs {
                return Err(corrupt(
                    &self.path,
                    format!("snapshot has {} pairs, it says {count}", self.pairs),
                ));
            }
            return Ok(None);
        }
        let kl = self.take_u32()?;
        let k = self.take(kl.into())?;
        self.value_for(k).map(Some)
    }

    fn value_for(&mut self, k: Vec<u8>) -> Result<OwnedPair, LedgerError> {
        let vl = self.take_u32()?;
        let v = self.take(vl.into())?;
        self.pairs += 1;
        Ok((k, v))
    }
}

impl<R: Read> Iterator for SnapshotReader<R> {
    type Item = Result<OwnedPair, LedgerError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.next_pair() {
            Ok(p) => p.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Checks the SHA-256 at the end of a snapshot of `len` bytes read from `r`; returns the length
/// of the content before it.
fn check_sum(mut r: impl Read, len: u64, path: &Path) -> Result<u64, LedgerError> {
    let content = len
        .checked_sub(32)
        .ok_or_else(|| corrupt(path, "not a medledger snapshot"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_BUFFER];
    let mut left = content;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        r.read_exact(&mut buf[..n]).map_err(io_err(path))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut sum = [0u8; 32];
    r.read_exact(&mut sum).map_err(io_err(path))?;
    if hasher.finalize().as_slice() != sum {
        return Err(corrupt(path, "snapshot checksum does not match"));
    }
    Ok(content)
}

/// Reads a snapshot file from its start: checks the checksum, then returns a reader of its
/// header and pairs.
fn open_checked(
    file: &std::fs::File,
    path: &Path,
) -> Result<SnapshotReader<BufReader<std::fs::File>>, LedgerError> {
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut f = file.try_clone().map_err(io_err(path))?;
    f.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let content = check_sum(BufReader::with_capacity(IO_BUFFER, &f), len, path)?;
    f.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    SnapshotReader::new(BufReader::with_capacity(IO_BUFFER, f), content, path)
}

/// Whether `file` is the file at `path`.
fn is_file_at(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

impl StateMachine {
    pub(crate) fn new(
        store: Arc<Store>,
        durability: Arc<Durability>,
        snapshot_path: PathBuf,
        log: LogStore,
    ) -> Result<Self, LedgerError> {
        let last_erasure = match store.meta(META_LAST_ERASURE)? {
            None => None,
            Some(v) => Some(
                serde_json::from_slice(&v)
                    .map_err(|e| corrupt(durability.dir(), format!("{META_LAST_ERASURE}: {e}")))?,
            ),
        };
        let sm = Self {
            store,
            durability,
            snapshot_path,
            log,
            snapshot_file: Arc::default(),
            building: Arc::default(),
            erasures: tokio::sync::watch::Sender::new(last_erasure),
        };
        // Fail at open, not in the middle of Raft's start-up, if the metadata does not parse.
        let (applied, _) = sm.read_applied()?;
        sm.log.state_applied(applied, false)?;
        sm.finish_interrupted_install()?;
        Ok(sm)
    }

    /// Completes an install that a crash cut short after [`Store::install`] switched the store to
    /// a received snapshot and before `raft-snapshot.recv` was renamed to `raft-snapshot.bin`.
    ///
    /// Left so, the store's last applied log id is the new snapshot's while the snapshot file is
    /// an older one (or none). openraft then purges its log up to the applied id at start-up
    /// (the log ends before it) and its state says the log is purged beyond its snapshot, which
    /// its validation refuses, and the Raft core panics at start (a power cut during an install,
    /// seed 3172681818236010586, panicked so; the other cause of that panic was the log purge
    /// written before the install, see the [`log_store`](super::log_store) module). A received
    /// file whose checksum holds and whose last
    /// log id is the store's is that snapshot, or one of the same state: it becomes the current
    /// snapshot. Anything else in `raft-snapshot.recv` is a partial receive, truncated by the
    /// next one.
    fn finish_interrupted_install(&self) -> Result<(), LedgerError> {
        let recv = self.receive_path();
        let file = match std::fs::File::open(&recv) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(LedgerError::Io { path: recv, source }),
        };
        let Ok(reader) = open_checked(&file, &recv) else {
            return Ok(());
        };
        let (applied, _) = self.read_applied()?;
        let received = reader.header.meta.last_log_id;
        drop(reader);
        drop(file);
        if received.is_none() || received != applied {
            return Ok(());
        }
        rename_synced(&recv, &self.snapshot_path)?;
        tracing::warn!(
            snapshot = %self.snapshot_path.display(),
            "completed a snapshot install that was cut short: the received snapshot is the current one"
        );
        Ok(())
    }

    /// The ledger store this state machine applies to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The log id of the last Raft entry applied with an erasure in it, as it changes; kept in the store's metadata, so known again after a
    /// restart. Until this node has a snapshot that covers it and has purged its log up to it,
    /// the log (and an older snapshot file) may still hold the value the erasure dropped: the
    /// gateway takes that snapshot and purges as soon as it sees a new one.
    pub fn erasures(&self) -> tokio::sync::watch::Receiver<Option<LogId>> {
        self.erasures.subscribe()
    }

    fn read_applied(&self) -> Result<(Option<LogId>, StoredMembership), LedgerError> {
        let applied = self.store.meta(META_APPLIED)?;
        let membership = self.store.meta(META_MEMBERSHIP)?;
        decode_applied(
            applied.as_deref(),
            membership.as_deref(),
            self.durability.dir(),
        )
    }

    /// Where a snapshot from the leader is received before it is installed.
    fn receive_path(&self) -> PathBuf {
        self.snapshot_path.with_extension("recv")
    }

    /// The current snapshot, if there is one: its metadata from the file's header, and the file
    /// to read it from. The checksum is checked by whoever installs it.
    async fn read_snapshot(&self) -> Result<Option<Snapshot>, LedgerError> {
        let path = self.snapshot_path.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<_, LedgerError> {
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(LedgerError::Io { path, source }),
            };
            let len = file.metadata().map_err(io_err(&path))?.len();
            let content = len
                .checked_sub(32)
                .ok_or_else(|| corrupt(&path, "not a medledger snapshot"))?;
            let header = SnapshotReader::new(BufReader::new(&file), content, &path)?.header;
            let mut file = file;
            file.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
            Ok(Some((header.meta, file)))
        })
        .await
        .map_err(|e| join_err(&self.snapshot_path, e))??;
        Ok(read.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }

    /// Installs a received snapshot: checks it, replaces the store with its pairs (streamed) and
    /// keeps it as this node's current snapshot.
    async fn install(
        &self,
        meta: &SnapshotMeta,
        mut data: tokio::fs::File,
    ) -> Result<(), LedgerError> {
        let recv = self.receive_path();
        data.flush().await.map_err(io_err(&recv))?;
        let data = data.into_std().await;
        let store = self.store.clone();
        let snapshot_path = self.snapshot_path.clone();
        let expected = meta.clone();
        let (log, snapshot_file) = (self.log.clone(), self.snapshot_file.clone());
        let (size, root) = tokio::task::spawn_blocking(move || -> Result<_, LedgerError> {
            // openraft writes what it receives into the file `begin_receiving_snapshot` made;
            // other callers (openraft's storage test suite) hand over another node's file, which
            // is copied here first so that what is installed is kept under this node's name.
            let file = if is_file_at(&data, &recv) {
                data
            } else {
                let mut from = data.try_clone().map_err(io_err(&recv))?;
                from.seek(SeekFrom::Start(0)).map_err(io_err(&recv))?;
                let mut to = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&recv)
                    .map_err(io_err(&recv))?;
                std::io::copy(&mut from, &mut to).map_err(io_err(&recv))?;
                to
            };
            file.sync_all().map_err(io_err(&recv))?;
            // The name too: once the store switches to this snapshot, an open after a crash
            // finds the file by it (`finish_interrupted_install`).
            if let Some(dir) = recv.parent() {
                crate::store::sync_dir(dir)?;
            }
            let from = Path::new("snapshot from leader");
            let reader = open_checked(&file, from)?;
            let header = &reader.header;
            if header.meta.last_log_id != expected.last_log_id
                || header.meta.last_membership != expected.last_membership
            {
                return Err(corrupt(
                    from,
                    format!(
                        "snapshot data is of {} but its metadata says {}",
                        header.meta, expected
                    ),
                ));
            }
            let (want_size, want_root) = (header.size, header.root);
            let size = store.install(reader)?;
            let (_, root) = store.applied_root();
            if size != want_size || root != want_root {
                return Err(corrupt(
                    &snapshot_path,
                    format!(
                        "installed snapshot gives {size} entries with root {}, expected {} with \
                         root {}",
                        hex::encode(root),
                        want_size,
                        hex::encode(want_root)
                    ),
                ));
            }
            {
                let _replacing = snapshot_file.lock().unwrap_or_else(|p| p.into_inner());
                rename_synced(&recv, &snapshot_path)?;
            }
            // Only now, after the switch and the rename, the log purge openraft asked for
            // when it started this install.
            log.state_applied(expected.last_log_id, true)?;
            Ok((size, root))
        })
        .await
        .map_err(|e| join_err(&self.snapshot_path, e))??;
        let (applied, membership) = self.read_applied()?;
        if applied != meta.last_log_id || membership != meta.last_membership {
            return Err(corrupt(
                self.durability.dir(),
                format!("installed snapshot records {applied:?} as last applied, not {meta}"),
            ));
        }
        tracing::info!(snapshot = %meta, size, root = %hex::encode(root), "installed snapshot");
        Ok(())
    }
}

impl SnapshotBuilder {
    async fn build(&self) -> Result<Snapshot, LedgerError> {
        let store = self.store.clone();
        let view = tokio::task::spawn_blocking(move || store.view())
            .await
            .map_err(|e| join_err(&self.snapshot_path, e))??;
        // The log is purged up to this snapshot once it is built: the state it covers must be on
        // disk first. Any sync that starts now covers the view just taken.
        self.durability.sync().await?;
        let (last_log_id, last_membership) = decode_applied(
            view.meta(META_APPLIED).as_deref(),
            view.meta(META_MEMBERSHIP).as_deref(),
            self.durability.dir(),
        )?;
        let seq = SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &last_log_id {
            Some(l) => format!(
                "{}-{}-{}-{seq}",
                l.leader_id,
                l.index,
                crate::ledger::now_ms()
            ),
            None => format!("none-{}-{seq}", crate::ledger::now_ms()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let m = meta.clone();
        let path = self.snapshot_path.clone();
        let (lock, building) = (self.snapshot_file.clone(), self.building.clone());
        let (file, bytes) = tokio::task::spawn_blocking(move || {
            let _one_writer = building.lock().unwrap_or_else(|p| p.into_inner());
            write_snapshot_file(&path, &m, &view, &lock)
        })
        .await
        .map_err(|e| join_err(&self.snapshot_path, e))??;
        tracing::info!(snapshot = %meta, bytes, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.build()
            .await
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.read_applied()
            .map_err(|e| sto_err(ErrorSubject::StateMachine, ErrorVerb::Read, &e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<RaftResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // All commands of all entries go through one `Store::apply`, one atomic batch: apply is
        // sequential within a batch, so this gives the same result as one call per entry.
        let mut commands: Vec<Command> = Vec::new();
        // The command format of each command: its entry's (`RaftRequest::format`).
        let mut formats: Vec<u8> = Vec::new();
        let mut per_entry: Vec<usize> = Vec::new();
        let mut last: Option<LogId> = None;
        let mut first: Option<LogId> = None;
        let mut membership: Option<StoredMembership> = None;
        // The voter set in force at each command: for commands after a membership entry of this
        // batch, that entry's (`memberships[k - 1]`, k = `epochs[i]`); before any, the applied one.
        let mut epochs: Vec<usize> = Vec::new();
        let mut memberships: Vec<Vec<u64>> = Vec::new();
        // The last entry with an erasure in it (applied or refused: a refused one only costs a
        // snapshot), written with the apply so that a restart still knows the log holds the
        // erased value; its own log id, so every replica records the same whatever its batches.
        let mut erasure: Option<LogId> = None;
        for entry in entries {
            first.get_or_insert(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => per_entry.push(0),
                EntryPayload::Normal(req) => {
                    if req
                        .commands
                        .iter()
                        .any(|c| matches!(c, Command::Append(a) if is_erasure(&a.body)))
                    {
                        erasure = Some(entry.log_id);
                    }
                    per_entry.push(req.commands.len());
                    formats.extend(std::iter::repeat_n(req.format, req.commands.len()));
                    epochs.extend(std::iter::repeat_n(memberships.len(), req.commands.len()));
                    commands.extend(req.commands);
                }
                EntryPayload::Membership(m) => {
                    memberships.push(voter_set(&m));
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    per_entry.push(0);
                }
            }
            last = Some(entry.log_id);
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        let write = |e: &dyn std::fmt::Display| {
            sto_err(
                ErrorSubject::Apply(last),
                ErrorVerb::Write,
                &corrupt(self.durability.dir(), e),
            )
        };
        let mut meta = vec![(
            META_APPLIED,
            serde_json::to_vec(&last).map_err(|e| write(&e))?,
        )];
        if let Some(m) = &membership {
            meta.push((
                META_MEMBERSHIP,
                serde_json::to_vec(m).map_err(|e| write(&e))?,
            ));
        }
        // Read only when a command needs it (a co-signed checkpoint before any membership entry
        // of this batch), and before apply: the store's metadata is behind its writer lock.
        let needs_applied = commands
            .iter()
            .zip(&epochs)
            .any(|(c, e)| *e == 0 && matches!(c, Command::CosignedCheckpoint { .. }));
        let applied_voters = if needs_applied {
            let (_, m) = self
                .read_applied()
                .map_err(|e| sto_err(ErrorSubject::Apply(last), ErrorVerb::Read, &e))?;
            Some(voter_set(m.membership()))
        } else {
            None
        };
        let voters_of = |i: usize| match epochs[i] {
            0 => applied_voters.clone(),
            k => Some(memberships[k - 1].clone()),
        };
        if let Some(at) = &erasure {
            meta.push((
                META_LAST_ERASURE,
                serde_json::to_vec(at).map_err(|e| write(&e))?,
            ));
        }
        let outcomes = self
            .store
            .apply_in(&commands, |i| formats[i], voters_of, &meta)
            .map_err(|e| sto_err(ErrorSubject::Apply(last), ErrorVerb::Write, &e))?;
        if outcomes.len() != commands.len() {
            return Err(write(&format!(
                "apply gave {} outcomes for {} commands",
                outcomes.len(),
                commands.len()
            )));
        }
        // See the module documentation: the Raft log, not a flush here, makes these durable.
        self.store.publish();
        self.log
            .state_applied(Some(last), false)
            .map_err(|e| sto_err(ErrorSubject::Apply(last), ErrorVerb::Write, &e))?;
        if erasure.is_some() {
            self.erasures.send_replace(erasure);
        }
        tracing::debug!(
            first = first.map_or(0, |f| f.index),
            last = last.index,
            size = self.store.size(),
            "applied"
        );
        let mut outcomes = outcomes.into_iter();
        Ok(per_entry
            .into_iter()
            .map(|n| RaftResponse {
                outcomes: outcomes.by_ref().take(n).collect(),
            })
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            durability: self.durability.clone(),
            snapshot_path: self.snapshot_path.clone(),
            snapshot_file: self.snapshot_file.clone(),
            building: self.building.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        // openraft purges its log up to a received snapshot without waiting for its install.
        self.log.snapshot_receiving();
        let path = self.receive_path();
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|source| {
                sto_err(
                    ErrorSubject::Snapshot(None),
                    ErrorVerb::Write,
                    &LedgerError::Io { path, source },
                )
            })?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        self.install(meta, *snapshot).await.map_err(|e| {
            sto_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                &e,
            )
        })
    }

    /// The snapshot file, or, if there is none and anything is applied, one built now from the
    /// current state. openraft asks for the snapshot when a follower needs entries its log no
    /// longer has (purged, or only scheduled for purging, which openraft decides in memory), and
    /// stops its core, so the gateway exits, if there is none: a leader whose open of the file
    /// failed (the power-loss tests' file system answered ENOENT to a name just replaced by a
    /// rename, a defect of its own since mended) stopped so (200-round power-loss run of the
    /// sender kind, round 129, seed 4350587644674368704; docs/operations.md "Power loss").
    /// openraft's own start-up builds one only when the log is purged; this answers every later
    /// ask too. A node that applied nothing has no snapshot.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let read_err = |e: &LedgerError| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
        if let Some(snapshot) = self.read_snapshot().await.map_err(|e| read_err(&e))? {
            return Ok(Some(snapshot));
        }
        let (applied, _) = self.read_applied().map_err(|e| read_err(&e))?;
        let Some(applied) = applied else {
            return Ok(None);
        };
        match self.log.last_purged().map_err(|e| read_err(&e))? {
            // The log is purged only up to a snapshot whose file was made durable first: this
            // state means a file was lost (the power-loss tests fail a round that logs it).
            Some(purged) => tracing::error!(
                applied = %applied,
                purged = %purged,
                snapshot = %self.snapshot_path.display(),
                "{SNAPSHOT_LOST}: building one from the current state"
            ),
            None => tracing::warn!(
                applied = %applied,
                snapshot = %self.snapshot_path.display(),
                "no snapshot file yet: building one from the current state"
            ),
        }
        let builder = self.get_snapshot_builder().await;
        builder
            .build()
            .await
            .map(Some)
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id(2, 1, 7)),
            last_membership: StoredMembership::default(),
            snapshot_id: "s".into(),
        }
    }

    fn pairs() -> Vec<OwnedPair> {
        vec![
            (b"Ea".to_vec(), b"one".to_vec()),
            (b"Eb".to_vec(), b"".to_vec()),
        ]
    }

    fn encode() -> Vec<u8> {
        let header = Header {
            meta: meta(),
            size: 2,
            root: [7; 32],
            pairs: None,
        };
        let p = Path::new("t");
        let mut w = SnapshotWriter::new(Vec::new(), &header, p).expect("header");
        for (k, v) in pairs() {
            w.pair(&k, &v).expect("pair");
        }
        w.finish().expect("finish")
    }

    /// What version 1 wrote: the pair count in the header, no end marker.
    fn encode_v1() -> Vec<u8> {
        let header = serde_json::to_vec(&Header {
            meta: meta(),
            size: 2,
            root: [7; 32],
            pairs: Some(2),
        })
        .expect("header");
        let mut out = MAGIC_V1.to_vec();
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        for (k, v) in pairs() {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(&k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(&v);
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    fn decode(bytes: &[u8]) -> Result<(Header, Vec<OwnedPair>), LedgerError> {
        let p = Path::new("t");
        let content = check_sum(bytes, bytes.len() as u64, p)?;
        let mut r = SnapshotReader::new(bytes, content, p)?;
        let pairs = r.by_ref().collect::<Result<Vec<_>, _>>()?;
        Ok((r.header, pairs))
    }

    /// A co-signed checkpoint is checked against the voter set of the membership in force at
    /// its own log entry: the one applied before its batch, or a membership entry earlier in the
    /// same batch (openraft hands a follower or a replay several entries at once).
    #[tokio::test]
    async fn a_cosigned_checkpoint_is_checked_against_the_membership_at_its_entry() {
        use crate::entry::{ComponentInput, DisclosureClass, EventInput, EventKind};
        use crate::raft::types::RaftRequest;
        use crate::sth::SignedTreeHead;
        use crate::store::ApplyOutcome;
        use ed25519_dalek::SigningKey;
        use openraft::{BasicNode, Membership};
        let dir = tempfile::tempdir().expect("tempdir");
        let (_log, mut sm, store) = crate::raft::open_storage(dir.path()).expect("storage");
        let keys: Vec<SigningKey> = (1..=3u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        let member = |index: u64, ids: &[u64]| Entry {
            log_id: openraft::testing::log_id(1, 1, index),
            payload: EntryPayload::Membership(Membership::new(
                vec![ids.iter().copied().collect()],
                ids.iter()
                    .map(|i| (*i, BasicNode::new(format!("n{i}"))))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )),
        };
        let normal = |index: u64, commands: Vec<Command>| Entry {
            log_id: openraft::testing::log_id(1, 1, index),
            payload: EntryPayload::Normal(RaftRequest {
                commands,
                format: 2,
            }),
        };
        let mut cmds: Vec<Command> = keys
            .iter()
            .zip(1u64..)
            .map(|(k, id)| Command::RegisterNode {
                node_id: id,
                public_key: k.verifying_key().to_bytes(),
            })
            .collect();
        let event = EventInput {
            kind: EventKind::Repair,
            device_id: "pump-1".into(),
            occurred_at: None,
            components: vec![ComponentInput {
                name: "action".into(),
                class: DisclosureClass::Maintenance,
                value: "\"fixed\"".into(),
            }],
            corrects: None,
            event_id: None,
        };
        cmds.push(Command::Append(
            crate::ledger::prepare(event, "local:test", 1, &keys[0], 1).expect("prepare"),
        ));
        sm.apply(vec![member(1, &[1, 2]), normal(2, cmds)])
            .await
            .expect("apply");
        store.flush_blocking().expect("flush");
        let root = store.root(1).expect("root");
        let sign = |node: u64| SignedTreeHead::sign(1, root, 5, node, &keys[node as usize - 1]);
        let cosigned = |voters: Vec<u64>| Command::CosignedCheckpoint {
            head: sign(1),
            voters,
            cosignatures: vec![sign(2), sign(3)],
        };
        let out = sm
            .apply(vec![
                normal(3, vec![cosigned(vec![1, 2, 3])]),
                member(4, &[1, 2, 3]),
                normal(5, vec![cosigned(vec![1, 2]), cosigned(vec![1, 2, 3])]),
            ])
            .await
            .expect("apply");
        let refused = |o: &ApplyOutcome, why: &str| matches!(o, ApplyOutcome::Refused { reason } if reason.contains(why));
        assert!(
            refused(
                &out[0].outcomes[0],
                "voter set [1, 2, 3] is not the cluster's voters [1, 2]"
            ),
            "{out:?}"
        );
        assert!(out[1].outcomes.is_empty(), "{out:?}");
        assert!(
            refused(
                &out[2].outcomes[0],
                "voter set [1, 2] is not the cluster's voters [1, 2, 3]"
            ),
            "{out:?}"
        );
        assert_eq!(out[2].outcomes[1], ApplyOutcome::Checkpointed { size: 1 });
        // The next batch starts from the membership applied (1, 2, 3).
        let out = sm
            .apply(vec![normal(6, vec![cosigned(vec![1, 2])])])
            .await
            .expect("apply");
        assert!(refused(&out[0].outcomes[0], "[1, 2, 3]"), "{out:?}");
        assert_eq!(
            store.cosigned_checkpoint().expect("read").map(|c| c.voters),
            Some(vec![1, 2, 3])
        );
    }

    /// A node whose snapshot file is gone (round 129 of a release power-loss run of the sender
    /// kind: a leader back from a cut without it) builds the snapshot when openraft asks for it,
    /// instead of answering none (which stops openraft's core); a node that applied nothing
    /// still has none.
    #[tokio::test]
    async fn a_missing_snapshot_file_is_built_when_asked() {
        use openraft::storage::RaftLogStorage;
        use openraft::{BasicNode, Membership};
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, mut sm, store) = crate::raft::open_storage(dir.path()).expect("storage");
        let path = dir.path().join(crate::raft::SNAPSHOT_FILE);
        assert!(sm.get_current_snapshot().await.expect("read").is_none());
        assert!(!path.exists(), "nothing applied: no snapshot is built");
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let event = crate::entry::EventInput {
            kind: crate::entry::EventKind::Repair,
            device_id: "pump-1".into(),
            occurred_at: None,
            components: Vec::new(),
            corrects: None,
            event_id: None,
        };
        let cmds = vec![
            Command::RegisterNode {
                node_id: 1,
                public_key: key.verifying_key().to_bytes(),
            },
            Command::Append(
                crate::ledger::prepare(event, "local:test", 1, &key, 1).expect("prepare"),
            ),
        ];
        let entries = vec![
            Entry {
                log_id: openraft::testing::log_id(1, 1, 1),
                payload: EntryPayload::Membership(Membership::new(
                    vec![[1u64].into_iter().collect()],
                    [(1u64, BasicNode::new("n1"))]
                        .into_iter()
                        .collect::<std::collections::BTreeMap<_, _>>(),
                )),
            },
            Entry {
                log_id: openraft::testing::log_id(1, 1, 2),
                payload: EntryPayload::Normal(crate::raft::types::RaftRequest {
                    commands: cmds,
                    format: 2,
                }),
            },
        ];
        sm.apply(entries).await.expect("apply");
        store.flush_blocking().expect("flush");
        log.purge(openraft::testing::log_id(1, 1, 2))
            .await
            .expect("purge");
        let snapshot = sm
            .get_current_snapshot()
            .await
            .expect("built")
            .expect("a snapshot");
        assert_eq!(
            snapshot.meta.last_log_id,
            Some(openraft::testing::log_id(1, 1, 2))
        );
        assert!(path.exists(), "the built snapshot is the node's file now");
        let again = sm
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("file");
        assert_eq!(again.meta, snapshot.meta, "read back, not built again");
    }

    /// The erasure check reads the kind from the signed body alone, and never panics on bytes
    /// that are not a body.
    #[test]
    fn erasures_are_told_from_the_body_alone() {
        use crate::entry::{EventInput, EventKind};
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let body = |kind, id: &str| {
            let event = EventInput {
                kind,
                device_id: "pump-1".into(),
                occurred_at: None,
                components: Vec::new(),
                corrects: None,
                event_id: Some(id.into()),
            };
            crate::ledger::prepare(event, "sha256:ab", 1, &key, 1_700_000_000_000)
                .expect("prepare")
                .body
        };
        let erasure = body(
            EventKind::Erasure,
            &crate::entry::erasure_event_id(3, "mrn"),
        );
        assert!(is_erasure(&erasure));
        assert!(!is_erasure(&body(EventKind::Calibration, "wo-1")));
        for cut in 0..erasure.len() {
            let _ = is_erasure(&erasure[..cut]);
        }
        assert!(!is_erasure(&[0xff; 40]));
    }

    /// A build that started before an install and ends after it keeps the installed snapshot.
    #[test]
    fn an_older_build_does_not_replace_an_installed_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft-snapshot.bin");
        let tmp = dir.path().join("raft-snapshot.tmp");
        let lock = std::sync::Mutex::new(());
        // The installed snapshot is of log index 7 (`meta`).
        std::fs::write(&path, encode()).expect("installed");
        std::fs::write(&tmp, b"older").expect("built");
        replace_snapshot_file(&lock, &tmp, &path, Some(openraft::testing::log_id(1, 1, 5)))
            .expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), encode());
        assert!(!tmp.exists());
        std::fs::write(&tmp, b"newer").expect("built");
        replace_snapshot_file(&lock, &tmp, &path, Some(openraft::testing::log_id(2, 1, 9)))
            .expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"newer");
    }

    /// A snapshot of a later format is refused at its first chunk and when opened, naming the
    /// format found and this release; other bytes stay "not a medledger snapshot".
    #[test]
    fn a_snapshot_of_a_newer_format_is_refused_naming_both_versions() {
        let mut bytes = b"MLSNAP07".to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let e = check_snapshot_start(&bytes)
            .expect_err("MLSNAP07")
            .to_string();
        assert!(
            e.contains("\"MLSNAP07\"") && e.contains(crate::version::RELEASE),
            "{e}"
        );
        assert!(check_snapshot_start(b"MLSNAP02rest").is_ok());
        assert!(check_snapshot_start(b"MLSNAP01rest").is_ok());
        let len = bytes.len() as u64;
        let e = SnapshotReader::new(&bytes[..], len, Path::new("snap"))
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("MLSNAP07") && e.contains(crate::version::RELEASE),
            "{e}"
        );
        let e = SnapshotReader::new(&b"NOTASNAPSHOT"[..], 12, Path::new("snap"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("not a medledger snapshot"), "{e}");
    }

    #[test]
    fn snapshot_bytes_round_trip_and_version_1_still_reads() {
        for bytes in [encode(), encode_v1()] {
            let (h, got) = decode(&bytes).expect("decode");
            assert_eq!(h.meta, meta());
            assert_eq!(h.size, 2);
            assert_eq!(h.root, [7; 32]);
            assert_eq!(got, pairs());
        }
    }

    #[test]
    fn damaged_snapshots_are_refused_not_panicked_on() {
        for bytes in [encode(), encode_v1()] {
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x40;
                assert!(decode(&b).is_err(), "flipped byte {i} accepted");
            }
            for n in 0..bytes.len() {
                assert!(decode(&bytes[..n]).is_err(), "truncated to {n} accepted");
            }
        }
    }

    /// Damage behind a checksum that matches (a peer that computes it over bad content): lengths
    /// that run past the end, a wrong count, bytes after the pairs are errors, not panics.
    #[test]
    fn bad_structure_with_a_good_checksum_is_refused() {
        let good = encode();
        let content = &good[..good.len() - 32];
        let reseal = |c: &[u8]| {
            let mut v = c.to_vec();
            let sum = Sha256::digest(&v);
            v.extend_from_slice(&sum);
            v
        };
        // The pair count (the last 8 content bytes) off by one.
        let mut c = content.to_vec();
        let n = c.len();
        c[n - 1] ^= 1;
        assert!(decode(&reseal(&c)).is_err(), "wrong count accepted");
        // A byte after the count.
        let mut c = content.to_vec();
        c.push(0);
        assert!(decode(&reseal(&c)).is_err(), "trailing byte accepted");
        // Every 4-byte window set to a huge length.
        for i in 8..content.len() - 4 {
            let mut c = content.to_vec();
            c[i..i + 4].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
            assert!(decode(&reseal(&c)).is_err(), "huge length at {i} accepted");
        }
    }
}
