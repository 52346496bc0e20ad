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
//! (the log before it is purged as well).
//!
//! # Snapshot format
//!
//! A snapshot is the whole ledger tree, so a new node receives every entry, proof node and index
//! and serves reads at once. It is one byte string, the same in transit and in the snapshot file:
//!
//! ```text
//! "MLSNAP01"                       8 bytes
//! header length                    u32 BE
//! header                           JSON: {meta, size, root, pairs}
//! pairs times: key length u32 BE, key, value length u32 BE, value
//! SHA-256 of all bytes before it   32 bytes
//! ```
//!
//! `size` and `root` are checked against the installed ledger.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::types::{
    Entry, LogId, RaftResponse, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use super::{sto_err, Durability};
use crate::error::LedgerError;
use crate::hash::Hash;
use crate::store::{Command, Store, StoreSnapshot};

/// Store metadata name of Raft's last applied log id.
pub const META_APPLIED: &str = "raft_applied";
/// Store metadata name of Raft's last applied membership.
pub const META_MEMBERSHIP: &str = "raft_membership";

const MAGIC: &[u8; 8] = b"MLSNAP01";

/// The replicated state machine: the ledger store plus where its snapshot is kept.
pub struct StateMachine {
    store: Arc<Store>,
    durability: Arc<Durability>,
    snapshot_path: PathBuf,
}

/// Builds snapshots of the state machine; openraft runs it beside ongoing applies.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    durability: Arc<Durability>,
    snapshot_path: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    meta: SnapshotMeta,
    size: u64,
    #[serde(with = "crate::entry::hex32")]
    root: Hash,
    pairs: u64,
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn join_err(path: &Path, e: tokio::task::JoinError) -> LedgerError {
    LedgerError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    }
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

fn push_len(out: &mut Vec<u8>, len: usize, path: &Path) -> Result<(), LedgerError> {
    let len = u32::try_from(len).map_err(|_| corrupt(path, "snapshot item over 4 GiB"))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Serialises a consistent copy of the store into the snapshot format.
fn encode(meta: &SnapshotMeta, snap: &StoreSnapshot, path: &Path) -> Result<Vec<u8>, LedgerError> {
    let header = Header {
        meta: meta.clone(),
        size: snap.size,
        root: snap.root,
        pairs: snap.pairs.len() as u64,
    };
    let header = serde_json::to_vec(&header).map_err(|e| corrupt(path, e))?;
    let body: usize = snap.pairs.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + body + 32);
    out.extend_from_slice(MAGIC);
    push_len(&mut out, header.len(), path)?;
    out.extend_from_slice(&header);
    for (k, v) in &snap.pairs {
        push_len(&mut out, k.len(), path)?;
        out.extend_from_slice(k);
        push_len(&mut out, v.len(), path)?;
        out.extend_from_slice(v);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// Reads `n` bytes at `*at`, advancing it.
fn take<'a>(buf: &'a [u8], at: &mut usize, n: usize, path: &Path) -> Result<&'a [u8], LedgerError> {
    let end = at
        .checked_add(n)
        .filter(|e| *e <= buf.len())
        .ok_or_else(|| corrupt(path, "snapshot is truncated"))?;
    let s = &buf[*at..end];
    *at = end;
    Ok(s)
}

fn take_len(buf: &[u8], at: &mut usize, path: &Path) -> Result<usize, LedgerError> {
    let b = take(buf, at, 4, path)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    Ok(u32::from_be_bytes(a) as usize)
}

/// Checks the checksum and reads the header; returns the header and the offset of the first
/// pair. The last 32 bytes are the checksum, so pairs end at `buf.len() - 32`.
fn decode_header(buf: &[u8], path: &Path) -> Result<(Header, usize), LedgerError> {
    if buf.len() < MAGIC.len() + 4 + 32 || &buf[..MAGIC.len()] != MAGIC {
        return Err(corrupt(path, "not a medledger snapshot"));
    }
    let (content, sum) = buf.split_at(buf.len() - 32);
    if Sha256::digest(content).as_slice() != sum {
        return Err(corrupt(path, "snapshot checksum does not match"));
    }
    let mut at = MAGIC.len();
    let len = take_len(content, &mut at, path)?;
    let header = take(content, &mut at, len, path)?;
    let header: Header = serde_json::from_slice(header)
        .map_err(|e| corrupt(path, format!("snapshot header: {e}")))?;
    Ok((header, at))
}

/// A key/value pair borrowed from snapshot bytes.
type Pair<'a> = (&'a [u8], &'a [u8]);

/// Decodes a whole snapshot: header and pairs (borrowed from `buf`).
fn decode<'a>(buf: &'a [u8], path: &Path) -> Result<(Header, Vec<Pair<'a>>), LedgerError> {
    let (header, mut at) = decode_header(buf, path)?;
    let content = &buf[..buf.len() - 32];
    // The header's count is only a hint for the allocation, capped by what the bytes can hold.
    let cap = usize::try_from(header.pairs)
        .unwrap_or(usize::MAX)
        .min(content.len() / 8);
    let mut pairs = Vec::with_capacity(cap);
    while at < content.len() {
        let kl = take_len(content, &mut at, path)?;
        let k = take(content, &mut at, kl, path)?;
        let vl = take_len(content, &mut at, path)?;
        let v = take(content, &mut at, vl, path)?;
        pairs.push((k, v));
    }
    if pairs.len() as u64 != header.pairs {
        return Err(corrupt(
            path,
            format!(
                "snapshot has {} pairs, header says {}",
                pairs.len(),
                header.pairs
            ),
        ));
    }
    Ok((header, pairs))
}

/// How much of a snapshot file is written before it is synced: a snapshot is the whole ledger
/// (100 MB and more), and writing it in one go queued every Raft log flush of this gateway
/// behind the writeback of all of it (measured: a 114 MB snapshot during the 256-client bench
/// timed out AppendEntries and took the maximum latency to 551 ms).
const SNAPSHOT_SYNC_CHUNK: usize = 4 * 1024 * 1024;

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one: a
/// temporary file, synced (every [`SNAPSHOT_SYNC_CHUNK`] bytes, so that at most that much is
/// waiting for the disk in front of other flushes), renamed over, and the directory synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LedgerError> {
    use std::io::Write;
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| LedgerError::Io { path: p, source }
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    for chunk in bytes.chunks(SNAPSHOT_SYNC_CHUNK) {
        f.write_all(chunk).map_err(io(&tmp))?;
        f.sync_data().map_err(io(&tmp))?;
    }
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

impl StateMachine {
    pub(crate) fn new(
        store: Arc<Store>,
        durability: Arc<Durability>,
        snapshot_path: PathBuf,
    ) -> Result<Self, LedgerError> {
        let sm = Self {
            store,
            durability,
            snapshot_path,
        };
        // Fail at open, not in the middle of Raft's start-up, if the metadata does not parse.
        sm.read_applied()?;
        Ok(sm)
    }

    /// The ledger store this state machine applies to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
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

    /// Reads the current snapshot file, if there is one.
    async fn read_snapshot(&self) -> Result<Option<Snapshot>, LedgerError> {
        let path = self.snapshot_path.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<_, LedgerError> {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(LedgerError::Io { path, source }),
            };
            let (header, _) = decode_header(&bytes, &path)?;
            Ok(Some((header.meta, bytes)))
        })
        .await
        .map_err(|e| join_err(&self.snapshot_path, e))??;
        Ok(read.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }

    async fn install(&self, meta: &SnapshotMeta, bytes: Vec<u8>) -> Result<(), LedgerError> {
        let store = self.store.clone();
        let snapshot_path = self.snapshot_path.clone();
        let expected = meta.clone();
        let bytes = Arc::new(bytes);
        let data = bytes.clone();
        let (size, root) = tokio::task::spawn_blocking(move || -> Result<_, LedgerError> {
            let from = Path::new("snapshot from leader");
            let (header, pairs) = decode(&data, from)?;
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
            let size = store.replace_all(pairs)?;
            let (_, root) = store.applied_root();
            if size != header.size || root != header.root {
                return Err(corrupt(
                    &snapshot_path,
                    format!(
                        "installed snapshot gives {size} entries with root {}, expected {} with \
                         root {}",
                        hex::encode(root),
                        header.size,
                        hex::encode(header.root)
                    ),
                ));
            }
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
        self.durability.sync().await?;
        let path = self.snapshot_path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| join_err(&self.snapshot_path, e))??;
        tracing::info!(snapshot = %meta, size, root = %hex::encode(root), "installed snapshot");
        Ok(())
    }
}

impl SnapshotBuilder {
    async fn build(&self) -> Result<Snapshot, LedgerError> {
        let store = self.store.clone();
        let path = self.snapshot_path.clone();
        let copy = tokio::task::spawn_blocking(move || store.snapshot_pairs())
            .await
            .map_err(|e| join_err(&self.snapshot_path, e))??;
        // The log is purged up to this snapshot once it is built: the state it covers must be on
        // disk first. Any sync that starts now covers the copy just taken.
        self.durability.sync().await?;
        let (last_log_id, last_membership) = decode_applied(
            copy.meta(META_APPLIED).as_deref(),
            copy.meta(META_MEMBERSHIP).as_deref(),
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
        let bytes = tokio::task::spawn_blocking(move || -> Result<_, LedgerError> {
            let bytes = encode(&m, &copy, &path)?;
            drop(copy);
            write_atomic(&path, &bytes)?;
            Ok(bytes)
        })
        .await
        .map_err(|e| join_err(&self.snapshot_path, e))??;
        tracing::info!(snapshot = %meta, bytes = bytes.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
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
        let mut per_entry: Vec<usize> = Vec::new();
        let mut last: Option<LogId> = None;
        let mut membership: Option<StoredMembership> = None;
        for entry in entries {
            match entry.payload {
                EntryPayload::Blank => per_entry.push(0),
                EntryPayload::Normal(req) => {
                    per_entry.push(req.commands.len());
                    commands.extend(req.commands);
                }
                EntryPayload::Membership(m) => {
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
        let outcomes = self
            .store
            .apply(&commands, &meta)
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
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.install(meta, snapshot.into_inner())
            .await
            .map_err(|e| {
                sto_err(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                    &e,
                )
            })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.read_snapshot()
            .await
            .map_err(|e| sto_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SnapshotMeta, StoreSnapshot) {
        let meta = SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id(2, 1, 7)),
            last_membership: StoredMembership::default(),
            snapshot_id: "s".into(),
        };
        let snap = StoreSnapshot {
            pairs: vec![
                (b"Ea".as_slice().into(), b"one".as_slice().into()),
                (b"Eb".as_slice().into(), b"".as_slice().into()),
            ],
            size: 2,
            root: [7; 32],
        };
        (meta, snap)
    }

    #[test]
    fn snapshot_bytes_round_trip() {
        let (meta, snap) = sample();
        let p = Path::new("t");
        let bytes = encode(&meta, &snap, p).expect("encode");
        let (h, pairs) = decode(&bytes, p).expect("decode");
        assert_eq!(h.meta, meta);
        assert_eq!(h.size, 2);
        assert_eq!(h.root, [7; 32]);
        assert_eq!(
            pairs,
            vec![(&b"Ea"[..], &b"one"[..]), (&b"Eb"[..], &b""[..])]
        );
    }

    #[test]
    fn damaged_snapshots_are_refused_not_panicked_on() {
        let (meta, snap) = sample();
        let p = Path::new("t");
        let bytes = encode(&meta, &snap, p).expect("encode");
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b, p).is_err(), "flipped byte {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], p).is_err(), "truncated to {n} accepted");
        }
    }
}
