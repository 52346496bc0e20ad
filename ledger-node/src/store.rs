//! Durable storage of the ledger in sled, and the one deterministic apply path.
//!
//! Everything lives in one sled tree under one-letter key prefixes, so that applying a batch of
//! commands is a single atomic `sled::Batch`:
//!
//! | key | value |
//! |---|---|
//! | `E` seq(u64 BE) | entry bytes |
//! | `O` seq | openings (values and salts) as JSON; dropped on erasure |
//! | `N` level(u8) index(u64 BE) | hash of a perfect subtree |
//! | `D` device-id 0x00 seq | empty: the per-device index |
//! | `I` event-id | seq of the entry that carries that event id |
//! | `K` node-id(u64 BE) | the node's ed25519 public key |
//! | `M` name | metadata (`size`, and whatever the caller adds, e.g. Raft's last applied log id) |
//!
//! A batch is acknowledged only after `flush`, which is sled's own flush followed by an
//! `fdatasync` of sled's data file (sled's flush alone uses `sync_file_range`, which does not
//! empty the drive's write cache).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::entry::{Entry, EntryBody, Opening};
use crate::error::LedgerError;
use crate::hash::{leaf_hash, Hash};
use crate::merkle::{self, Frontier, NodeReader};

/// A state-changing command. Everything an entry's bytes depend on is inside the command, fixed by
/// the proposing node before apply; apply reads no clock, no randomness and no environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Append one signed event.
    Append(AppendCommand),
    /// Make a node's public key known, so that its entries and tree heads can be checked.
    RegisterNode {
        node_id: u64,
        #[serde(with = "crate::entry::hex32")]
        public_key: [u8; 32],
    },
    /// Record a signed tree head as a replicated checkpoint: every replica stores the same head,
    /// so exports cut at it are byte-identical on every node and the head leaves the node that
    /// signed it.
    Checkpoint(crate::sth::SignedTreeHead),
}

/// One event ready for apply: the signed body, the signature and the openings of its components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendCommand {
    /// Signed body bytes (as `EntryBody::encode` writes them).
    #[serde(with = "b64")]
    pub body: Vec<u8>,
    #[serde(with = "crate::sth::hex64")]
    pub signature: [u8; 64],
    pub openings: Vec<Opening>,
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// What applying one command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// A new entry at `seq`.
    Appended { seq: u64, leaf: [u8; 32] },
    /// The event id was already in the ledger at `seq`; nothing was written.
    Duplicate { seq: u64 },
    /// A node key was registered (or was already registered with the same key).
    NodeRegistered { node_id: u64 },
    /// A checkpoint over the first `size` entries was recorded.
    Checkpointed { size: u64 },
    /// The command was refused; nothing was written.
    Refused { reason: String },
}

/// A consistent copy of the whole store (see [`Store::snapshot_pairs`]).
pub struct StoreSnapshot {
    /// Every key/value pair, in key order.
    pub pairs: Vec<(sled::IVec, sled::IVec)>,
    /// Number of entries.
    pub size: u64,
    /// Root hash of the entries.
    pub root: Hash,
}

impl StoreSnapshot {
    /// A metadata value written with [`Store::apply`], as it is in this copy.
    pub fn meta(&self, name: &str) -> Option<&[u8]> {
        let key = key_meta(name);
        self.pairs
            .binary_search_by(|(k, _)| k.as_ref().cmp(key.as_slice()))
            .ok()
            .and_then(|i| self.pairs.get(i))
            .map(|(_, v)| v.as_ref())
    }
}

/// The sled-backed ledger store.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    /// The writer's view, including applied but not yet flushed entries.
    writer: Mutex<WriterState>,
    /// Entries known to be on disk: what readers see.
    durable_size: AtomicU64,
}

struct WriterState {
    frontier: Frontier,
}

const META_SIZE: &[u8] = b"Msize";
const META_CHECKPOINT: &str = "checkpoint";

fn key_entry(seq: u64) -> [u8; 9] {
    let mut k = [b'E'; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}
fn key_openings(seq: u64) -> [u8; 9] {
    let mut k = [b'O'; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}
fn key_node(level: u8, index: u64) -> [u8; 10] {
    let mut k = [b'N'; 10];
    k[1] = level;
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}
fn key_device_prefix(device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 10);
    k.push(b'D');
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k
}
fn key_event_id(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(b'I');
    k.extend_from_slice(id.as_bytes());
    k
}
fn key_node_key(node_id: u64) -> [u8; 9] {
    let mut k = [b'K'; 9];
    k[1..].copy_from_slice(&node_id.to_be_bytes());
    k
}
fn key_meta(name: &str) -> Vec<u8> {
    let mut k = vec![b'M'];
    k.extend_from_slice(name.as_bytes());
    k
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// Opens sled in `dir` the way the ledger needs it: no background flusher, because every
/// acknowledgement is preceded by an explicit [`sync_db`].
pub(crate) fn open_db(dir: &Path) -> Result<sled::Db, LedgerError> {
    sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .open()
        .map_err(|source| LedgerError::Storage {
            path: dir.to_owned(),
            source,
        })
}

/// Makes everything written to the sled database in `dir` so far durable: sled's flush, then
/// `fdatasync` of its data file (sled's flush alone uses `sync_file_range`, which does not empty
/// the drive's write cache), and `fsync` of the blob files sled writes for pages too big for its
/// log (it never syncs them itself; a Raft entry with many events can be one).
pub(crate) async fn sync_db(db: &sled::Db, dir: &Path) -> Result<(), LedgerError> {
    // sled's own `flush_async` flushes on a sled thread that keeps the database (and its file
    // lock) alive for a moment after the flush is reported; flushing on our blocking thread
    // drops our handle before the await returns.
    let db = db.clone();
    let dir = dir.to_owned();
    let err_path = dir.join("db");
    tokio::task::spawn_blocking(move || {
        db.flush().map_err(|source| LedgerError::Storage {
            path: dir.clone(),
            source,
        })?;
        drop(db);
        sync_files(&dir)
    })
    .await
    .map_err(|e| LedgerError::Io {
        path: err_path,
        source: std::io::Error::other(e),
    })?
}

fn sync_files(dir: &Path) -> Result<(), LedgerError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| LedgerError::Io { path, source }
    };
    let data = dir.join("db");
    std::fs::OpenOptions::new()
        .read(true)
        .open(&data)
        .and_then(|f| f.sync_data())
        .map_err(io(&data))?;
    let blobs = dir.join("blobs");
    let listing = match std::fs::read_dir(&blobs) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&blobs)(e)),
    };
    let mut any = false;
    for item in listing {
        let path = item.map_err(io(&blobs))?.path();
        match std::fs::File::open(&path).and_then(|f| f.sync_data()) {
            Ok(()) => any = true,
            // sled removes blobs of rewritten pages at any time; a vanished blob needs no sync.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    if any {
        std::fs::File::open(&blobs)
            .and_then(|f| f.sync_all())
            .map_err(io(&blobs))?;
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in `dir`, checking that what is on disk agrees with itself.
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        std::fs::create_dir_all(dir).map_err(|source| LedgerError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let db = open_db(dir)?;
        Self::open_in(&db, dir)
    }

    /// Opens (or creates) the store in the `ledger` tree of an already open sled database, so that
    /// other trees of the same database (Raft's log) share its flushes. `dir` must be the
    /// database's directory: [`Store::flush`] syncs the data file in it.
    pub fn open_in(db: &sled::Db, dir: &Path) -> Result<Self, LedgerError> {
        let tree = db
            .open_tree("ledger")
            .map_err(|source| LedgerError::Storage {
                path: dir.to_owned(),
                source,
            })?;
        let store = Store {
            path: dir.to_owned(),
            db: db.clone(),
            tree,
            writer: Mutex::new(WriterState {
                frontier: Frontier::new(),
            }),
            durable_size: AtomicU64::new(0),
        };
        let frontier = store.load_frontier()?;
        let size = frontier.size();
        store.lock_writer().frontier = frontier;
        store.durable_size.store(size, Ordering::SeqCst);
        Ok(store)
    }

    /// Reads the recorded size, checks it against the entries present and rebuilds the frontier.
    fn load_frontier(&self) -> Result<Frontier, LedgerError> {
        let size = match self.get(META_SIZE)? {
            None => 0,
            Some(v) => be_u64(&v).ok_or_else(|| self.corrupt("size is not 8 bytes"))?,
        };
        if size > 0 && self.get(&key_entry(size - 1))?.is_none() {
            return Err(self.corrupt(&format!("size is {size} but entry {} is missing", size - 1)));
        }
        if self.get(&key_entry(size))?.is_some() {
            return Err(self.corrupt(&format!("entry {size} exists beyond the recorded size")));
        }
        Frontier::from_reader(self, size)
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // A poisoned lock means a panic mid-apply; the state it guards is rebuilt from disk on the
        // next open, and the in-memory frontier is only advanced after a successful batch.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn corrupt(&self, reason: &str) -> LedgerError {
        LedgerError::Corrupt {
            path: self.path.clone(),
            reason: reason.to_owned(),
        }
    }

    fn storage(&self, source: sled::Error) -> LedgerError {
        LedgerError::Storage {
            path: self.path.clone(),
            source,
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, LedgerError> {
        self.tree.get(key).map_err(|e| self.storage(e))
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of entries on disk.
    pub fn size(&self) -> u64 {
        self.durable_size.load(Ordering::SeqCst)
    }

    /// Applies commands in order as one atomic batch, together with `meta` key/values (for example
    /// Raft's last applied log id). Not durable until [`Store::flush`]. Deterministic: the outcome
    /// depends only on the commands and the stored state.
    pub fn apply(
        &self,
        commands: &[Command],
        meta: &[(&str, Vec<u8>)],
    ) -> Result<Vec<ApplyOutcome>, LedgerError> {
        let mut w = self.lock_writer();
        let mut frontier = w.frontier.clone();
        let mut batch = sled::Batch::default();
        let mut outcomes = Vec::with_capacity(commands.len());
        let mut new_ids: HashMap<String, u64> = HashMap::new();
        let mut new_keys: HashMap<u64, [u8; 32]> = HashMap::new();
        for cmd in commands {
            let outcome = match cmd {
                Command::RegisterNode {
                    node_id,
                    public_key,
                } => {
                    let known = match new_keys.get(node_id) {
                        Some(k) => Some(*k),
                        None => self.node_key_bytes(*node_id)?,
                    };
                    match known {
                        Some(k) if &k != public_key => ApplyOutcome::Refused {
                            reason: format!("node {node_id} already has a different public key"),
                        },
                        Some(_) => ApplyOutcome::NodeRegistered { node_id: *node_id },
                        None if VerifyingKey::from_bytes(public_key).is_err() => {
                            ApplyOutcome::Refused {
                                reason: format!(
                                    "public key of node {node_id} is not a valid point"
                                ),
                            }
                        }
                        None => {
                            batch.insert(&key_node_key(*node_id), public_key.as_slice());
                            new_keys.insert(*node_id, *public_key);
                            ApplyOutcome::NodeRegistered { node_id: *node_id }
                        }
                    }
                }
                Command::Append(a) => {
                    self.apply_append(a, &mut frontier, &mut batch, &mut new_ids)?
                }
                Command::Checkpoint(head) => {
                    self.apply_checkpoint(head, w.frontier.size(), &new_keys, &mut batch)?
                }
            };
            outcomes.push(outcome);
        }
        batch.insert(META_SIZE, &frontier.size().to_be_bytes());
        for (name, value) in meta {
            batch.insert(key_meta(name), value.as_slice());
        }
        self.tree.apply_batch(batch).map_err(|e| self.storage(e))?;
        w.frontier = frontier;
        Ok(outcomes)
    }

    /// A checkpoint is recorded when it covers entries applied before this batch, its root is
    /// the root of those entries, its signature checks with a registered key and it is not older
    /// than the checkpoint already recorded.
    fn apply_checkpoint(
        &self,
        head: &crate::sth::SignedTreeHead,
        applied: u64,
        new_keys: &HashMap<u64, [u8; 32]>,
        batch: &mut sled::Batch,
    ) -> Result<ApplyOutcome, LedgerError> {
        let refuse = |reason: String| Ok(ApplyOutcome::Refused { reason });
        if head.size > applied {
            return refuse(format!(
                "checkpoint of size {} is beyond the {applied} applied entries",
                head.size
            ));
        }
        let key = match new_keys.get(&head.node_id) {
            Some(k) => Some(*k),
            None => self.node_key_bytes(head.node_id)?,
        };
        let Some(key) = key.and_then(|k| VerifyingKey::from_bytes(&k).ok()) else {
            return refuse(format!(
                "checkpoint signed by node {}, whose key is unknown",
                head.node_id
            ));
        };
        if !head.verify(&key) {
            return refuse("checkpoint signature does not verify".into());
        }
        if merkle::root(self, head.size)? != head.root {
            return refuse(format!(
                "checkpoint root is not the root of the first {} entries",
                head.size
            ));
        }
        if let Some(prev) = self.latest_checkpoint()? {
            if prev.size > head.size {
                return refuse(format!(
                    "a checkpoint of size {} is already recorded",
                    prev.size
                ));
            }
        }
        let json = serde_json::to_vec(head).map_err(|e| self.corrupt(&e.to_string()))?;
        batch.insert(key_meta(META_CHECKPOINT), json);
        Ok(ApplyOutcome::Checkpointed { size: head.size })
    }

    /// The latest replicated checkpoint, if any.
    pub fn latest_checkpoint(&self) -> Result<Option<crate::sth::SignedTreeHead>, LedgerError> {
        match self.get(&key_meta(META_CHECKPOINT))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.corrupt(&format!("checkpoint: {e}"))),
        }
    }

    fn apply_append(
        &self,
        a: &AppendCommand,
        frontier: &mut Frontier,
        batch: &mut sled::Batch,
        new_ids: &mut HashMap<String, u64>,
    ) -> Result<ApplyOutcome, LedgerError> {
        let seq = frontier.size();
        // The body was produced by the proposing node; parse it as an entry with a placeholder
        // sequence number to reuse the one decoder.
        let mut bytes = Vec::with_capacity(a.body.len() + 73);
        bytes.push(crate::entry::ENTRY_VERSION);
        bytes.extend_from_slice(&seq.to_be_bytes());
        bytes.extend_from_slice(&a.body);
        bytes.extend_from_slice(&a.signature);
        let entry = match Entry::decode(&bytes) {
            Ok(e) => e,
            Err(e) => {
                return Ok(ApplyOutcome::Refused {
                    reason: format!("bad entry body: {e}"),
                })
            }
        };
        let body: &EntryBody = &entry.body;
        if let Some(id) = &body.event_id {
            if let Some(seq) = new_ids.get(id) {
                return Ok(ApplyOutcome::Duplicate { seq: *seq });
            }
            if let Some(v) = self.get(&key_event_id(id))? {
                let seq = be_u64(&v).ok_or_else(|| self.corrupt("event id index value"))?;
                return Ok(ApplyOutcome::Duplicate { seq });
            }
        }
        if let Some(c) = body.corrects {
            if c >= seq {
                return Ok(ApplyOutcome::Refused {
                    reason: format!("corrects entry {c}, but the ledger has {seq} entries"),
                });
            }
        }
        if a.openings.len() != body.components.len() {
            return Ok(ApplyOutcome::Refused {
                reason: "openings do not match the components".into(),
            });
        }
        let leaf = leaf_hash(&bytes);
        batch.insert(&key_entry(seq), bytes);
        let openings: Vec<Option<&Opening>> = a.openings.iter().map(Some).collect();
        let o = serde_json::to_vec(&openings).map_err(|e| self.corrupt(&e.to_string()))?;
        batch.insert(&key_openings(seq), o);
        let mut dk = key_device_prefix(&body.device_id);
        dk.extend_from_slice(&seq.to_be_bytes());
        batch.insert(dk, &[][..]);
        if let Some(id) = &body.event_id {
            batch.insert(key_event_id(id), &seq.to_be_bytes());
            new_ids.insert(id.clone(), seq);
        }
        frontier.push(leaf, |level, index, h| {
            batch.insert(&key_node(level, index), h.as_slice());
        });
        Ok(ApplyOutcome::Appended { seq, leaf })
    }

    /// Makes everything applied so far durable: sled's flush, then `fdatasync` of its data file.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        // Everything applied before this point is covered by the flush below.
        let target = self.lock_writer().frontier.size();
        sync_db(&self.db, &self.path).await?;
        self.durable_size.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// Makes everything applied so far visible to readers without flushing.
    ///
    /// Only for callers whose durability comes from elsewhere: under Raft an applied entry is
    /// already on disk in the replicated log of a quorum, and the last applied log id is written
    /// in the same batch as the entries, so a crash that loses applied entries also rolls the
    /// applied log id back and they are applied again, byte for byte, from the log.
    pub fn publish(&self) {
        let applied = self.lock_writer().frontier.size();
        self.durable_size.fetch_max(applied, Ordering::SeqCst);
    }

    /// The sled database the store lives in.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Every key/value pair of the store with the size and root they give, read under the writer
    /// lock so that no apply lands half-way through: a consistent copy of the state for a
    /// snapshot. Values are sled's reference-counted buffers, so the copy costs little beyond the
    /// keys.
    pub fn snapshot_pairs(&self) -> Result<StoreSnapshot, LedgerError> {
        let w = self.lock_writer();
        let pairs = self
            .tree
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.storage(e))?;
        Ok(StoreSnapshot {
            pairs,
            size: w.frontier.size(),
            root: w.frontier.root(),
        })
    }

    /// Replaces the whole state with `pairs` (as [`Store::snapshot_pairs`] returned them on another
    /// node) in one atomic batch, then checks the result and rebuilds the in-memory frontier.
    /// Readers see the new size at once; call [`Store::flush`] to make it durable.
    ///
    /// If the pairs do not form a consistent ledger the batch has already been applied and an
    /// error is returned: the caller must treat the store as broken (Raft stops on it).
    pub fn replace_all<K, V>(
        &self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<u64, LedgerError>
    where
        K: Into<sled::IVec>,
        V: Into<sled::IVec>,
    {
        let mut w = self.lock_writer();
        let mut batch = sled::Batch::default();
        for k in self.tree.iter().keys() {
            batch.remove(k.map_err(|e| self.storage(e))?);
        }
        // A batch is a map: an insert after the remove of the same key wins.
        for (k, v) in pairs {
            batch.insert(k, v);
        }
        self.tree.apply_batch(batch).map_err(|e| self.storage(e))?;
        let frontier = self.load_frontier()?;
        let size = frontier.size();
        w.frontier = frontier;
        self.durable_size.store(size, Ordering::SeqCst);
        Ok(size)
    }

    /// Root hash of everything applied, flushed or not (the writer's frontier).
    pub fn applied_root(&self) -> (u64, Hash) {
        let w = self.lock_writer();
        (w.frontier.size(), w.frontier.root())
    }

    /// The bytes of entry `seq`.
    pub fn entry_bytes(&self, seq: u64) -> Result<Vec<u8>, LedgerError> {
        let size = self.size();
        if seq >= size {
            return Err(LedgerError::NoSuchEntry { seq, size });
        }
        match self.get(&key_entry(seq))? {
            Some(v) => Ok(v.to_vec()),
            None => Err(self.corrupt(&format!("entry {seq} is missing"))),
        }
    }

    /// Entry `seq`, parsed.
    pub fn entry(&self, seq: u64) -> Result<Entry, LedgerError> {
        let bytes = self.entry_bytes(seq)?;
        Entry::decode(&bytes).map_err(|e| LedgerError::corrupt(&self.path, e))
    }

    /// The openings (value and salt) of entry `seq`'s components; `None` where erased.
    pub fn openings(&self, seq: u64) -> Result<Vec<Option<Opening>>, LedgerError> {
        match self.get(&key_openings(seq))? {
            None => Ok(Vec::new()),
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| self.corrupt(&format!("openings of entry {seq}: {e}"))),
        }
    }

    /// Sequence numbers of a device's entries, oldest first, starting after `after` (exclusive),
    /// at most `limit`: a range read on the per-device index.
    pub fn device_history(
        &self,
        device_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, LedgerError> {
        let prefix = key_device_prefix(device_id);
        let size = self.size();
        let mut start = prefix.clone();
        start.extend_from_slice(&after.map_or(0, |a| a.saturating_add(1)).to_be_bytes());
        let mut out = Vec::new();
        for kv in self.tree.range(start..) {
            let (k, _) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let seq = be_u64(&k[prefix.len()..]).ok_or_else(|| self.corrupt("device index key"))?;
            if seq >= size {
                break;
            }
            out.push(seq);
        }
        Ok(out)
    }

    /// Sequence number of the entry that carries `event_id`, if any.
    pub fn find_event_id(&self, event_id: &str) -> Result<Option<u64>, LedgerError> {
        match self.get(&key_event_id(event_id))? {
            None => Ok(None),
            Some(v) => {
                let seq = be_u64(&v).ok_or_else(|| self.corrupt("event id index value"))?;
                Ok((seq < self.size()).then_some(seq))
            }
        }
    }

    fn node_key_bytes(&self, node_id: u64) -> Result<Option<[u8; 32]>, LedgerError> {
        match self.get(&key_node_key(node_id))? {
            None => Ok(None),
            Some(v) => Ok(Some(
                v.as_ref()
                    .try_into()
                    .map_err(|_| self.corrupt("node key is not 32 bytes"))?,
            )),
        }
    }

    /// Every registered node key, by node id.
    pub fn node_keys(&self) -> Result<Vec<(u64, [u8; 32])>, LedgerError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(b"K") {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            let id = be_u64(&k[1..]).ok_or_else(|| self.corrupt("node key id"))?;
            let key: [u8; 32] = v
                .as_ref()
                .try_into()
                .map_err(|_| self.corrupt("node key is not 32 bytes"))?;
            out.push((id, key));
        }
        Ok(out)
    }

    /// Reads a metadata value written with [`Store::apply`].
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.get(&key_meta(name))?.map(|v| v.to_vec()))
    }

    /// Root hash of the first `size` entries.
    pub fn root(&self, size: u64) -> Result<Hash, LedgerError> {
        let have = self.size();
        if size > have {
            return Err(LedgerError::NoSuchEntry {
                seq: size - 1,
                size: have,
            });
        }
        merkle::root(self, size)
    }

    /// Inclusion proof of entry `seq` in the tree of `size` entries.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, LedgerError> {
        let have = self.size();
        if size > have {
            return Err(LedgerError::NoSuchEntry {
                seq: size - 1,
                size: have,
            });
        }
        Ok(merkle::inclusion_proof(self, seq, size)??)
    }

    /// Consistency proof from `old` to `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LedgerError> {
        Ok(merkle::consistency_proof(self, old, new, self.size())??)
    }
}

impl NodeReader for Store {
    type Error = LedgerError;
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        match self.get(&key_node(level, index))? {
            Some(v) => v
                .as_ref()
                .try_into()
                .map_err(|_| self.corrupt(&format!("tree node {level}/{index} is not 32 bytes"))),
            None => Err(self.corrupt(&format!("tree node {level}/{index} is missing"))),
        }
    }
}
