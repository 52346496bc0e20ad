//! Durable storage of the ledger in sled, and the one deterministic apply path.
//!
//! Everything lives in one sled tree under one-letter key prefixes; an apply counts once its
//! size record (`Msize`, written last) is in (see [`Store::apply`]). The tree is `ledger` until a
//! snapshot is installed and `ledger.N` after the N-th install ([`Store::install`]); the key
//! `medledger.ledger_tree` of the database's default tree names the current one:
//!
//! | key | value |
//! |---|---|
//! | `E` seq(u64 BE) | the entry record, below |
//! | `H` device-id 0x00 first-seq(u64 BE) | a chunk of the per-device index: up to 128 seqs (u64 BE) of the device's entries, from first-seq up |
//! | `J` SHA-256(event-id)[0..2] | a bucket of the event-id index: (seq u64 BE, id length u16 BE, event id) records |
//! | `C` seq(u64 BE) correction-seq(u64 BE) | empty: the corrections of an entry (same device) |
//! | `K` node-id(u64 BE) | the node's ed25519 public key |
//! | `Msize` | the size record: entry count and the caller's metadata (Raft's last applied log id and membership) |
//! | `M` name | `layout`; `checkpoint` (the latest replicated signed tree head) |
//!
//! Layouts 2 and 3 had one index key per entry instead of the `H` and `J` keys (`D` device-id
//! 0x00 seq → empty, `I` event-id → seq); a store of those layouts gets its indexes rebuilt from
//! its entries when it is opened or installed from a snapshot ([`index`]).
//!
//! The entry record keeps everything written per entry under one key, because sled's cost per
//! batch grows with the number of keys (layout 2; layout 1 had separate `O` keys for openings as
//! JSON and `N` keys for every perfect subtree hash, leaves included, and is not read):
//!
//! | field | bytes |
//! |---|---|
//! | entry length | u32 BE |
//! | entry bytes | as `docs/ledger-format.md` defines them |
//! | node count k | u8 |
//! | perfect-subtree hashes | k × 32: the hashes of the subtrees of levels 1..=k whose last leaf is this entry (k is the number of trailing one bits of seq) |
//! | opening count | u32 BE |
//! | openings | per component: 1, salt (32), value length (u32 BE), value (UTF-8); or 2, seq (u64 BE): erased by that erasure entry; or 0: erased (written by no version, read as erased by an unknown entry) |
//!
//! An erasure entry ([`crate::entry::EventKind::Erasure`]) is the one apply that rewrites an
//! earlier record: the opening it names becomes tag 2 with the erasure's seq; the entry bytes and
//! the subtree hashes stay as they were, so the ledger still verifies. Its rules depend only on
//! the entries (never on whether the value is still there), so a replica that receives the
//! erased record in a snapshot and replays the erasure from the log writes the same bytes.
//!
//! So `perfect(0, i)` is the leaf hash of entry i's bytes and `perfect(l, j)` for `l >= 1` is a
//! read of entry `((j + 1) << l) - 1`: still one sled read per perfect subtree.
//!
//! A batch is acknowledged only after `flush`, sled's own flush, which in our patched sled ends
//! with an `fdatasync` of its data file (ledger-node/vendor/sled/PATCHED.md; stock sled's
//! `sync_file_range` does not empty the drive's write cache).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::entry::{
    parse_erasure_event_id, Entry, EntryBody, EntryRef, EventKind, Opening, ERASURE_ID_PREFIX,
    SIGNATURE_COMPONENT,
};
use crate::error::LedgerError;
use crate::hash::{leaf_hash, Hash};
use crate::merkle::{self, Frontier, NodeReader};

mod index;
mod stats;
pub use stats::{file_sizes, Part, Stats};

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
    /// A checkpoint with the co-signatures the leader collected from other gateways: tree heads
    /// over the same size and root, each signed by a gateway that applied those entries and
    /// found the same root (docs/ledger-format.md §9.6). Recorded only if every co-signature
    /// verifies, `voters` is the voter set of the Raft membership in force at its log entry
    /// (ascending node ids; every replica checks it against the membership it applied) and a
    /// majority of those voters signed; a plain [`Command::Checkpoint`] records none.
    CosignedCheckpoint {
        head: crate::sth::SignedTreeHead,
        /// Absent in the co-signed checkpoints of development builds before voter sets (the
        /// Raft log may still hold one): read as empty, and refused alike by every replica.
        #[serde(default)]
        voters: Vec<u64>,
        cosignatures: Vec<crate::sth::SignedTreeHead>,
    },
}

/// One event ready for apply: the body, its signature if any and the openings of its components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendCommand {
    /// Body bytes (as `EntryBody::encode` writes them).
    #[serde(with = "b64")]
    pub body: Vec<u8>,
    /// The proposing node's signature of the body: the entry is written as version 1. Absent:
    /// version 2, which needs command format 3 (every member reads it), and is left out of the
    /// command's bytes so that release 0.2.0's commands (always signed) read as before.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::sth::opt_hex64"
    )]
    pub signature: Option<[u8; 64]>,
    pub openings: Vec<Opening>,
}

/// The signed body: base64 in text formats, raw bytes in binary ones (the Raft log and RPC);
/// both accepted from a binary format, so log entries written by earlier versions decode.
mod b64 {
    use base64::Engine;
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }
    struct Body;
    impl<'de> Visitor<'de> for Body {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("base64 or bytes")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map_err(E::custom)
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(Body)
        } else {
            d.deserialize_any(Body)
        }
    }
}

/// The stored state of one component's opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpeningState {
    /// Value and salt.
    Open(Opening),
    /// Value and salt were erased, by the erasure entry `by` (`None`: by an entry not recorded).
    Erased { by: Option<u64> },
}

impl OpeningState {
    /// The opening, if not erased.
    pub fn open(self) -> Option<Opening> {
        match self {
            OpeningState::Open(o) => Some(o),
            OpeningState::Erased { .. } => None,
        }
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

/// The store as of one moment, read lazily: what a Raft snapshot copies (see [`Store::view`]).
///
/// Entries, their device index and their event ids are only ever added, so the keys that belong
/// to the first [`StoreView::size`] entries are read from the live tree and the ones added since
/// are left out; node keys and metadata change in place and are copied when the view is taken.
/// The view keeps the tree it reads alive, also across [`Store::install`].
pub struct StoreView {
    tree: Arc<LedgerTree>,
    size: u64,
    root: Hash,
    metas: std::collections::BTreeMap<String, Vec<u8>>,
    /// The `K` and `M` pairs as they were when the view was taken.
    small: Vec<(sled::IVec, sled::IVec)>,
    path: PathBuf,
}

impl StoreView {
    /// Number of entries.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Root hash of the entries.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// A metadata value written with [`Store::apply`], as it was when the view was taken.
    pub fn meta(&self, name: &str) -> Option<Vec<u8>> {
        if let Some(v) = self.metas.get(name) {
            return Some(v.clone());
        }
        // Layout 2 kept each value under its own key.
        let key = key_meta(name);
        self.small
            .iter()
            .find(|(k, _)| k.as_ref() == key.as_slice())
            .map(|(_, v)| v.to_vec())
    }

    /// Calls `f` with every key/value pair of the view, in key order, and returns how many there
    /// were. Reads the tree as it goes: memory stays small whatever the size of the ledger.
    ///
    /// While the ledger's command format is 1 (a cluster that may still hold a gateway of release
    /// 0.1.0, which reads store layouts 2 and 3 only), the indexes go out as layout 3 wrote them
    /// (one `D` and one `I` key per entry, `Mlayout` 3), so that such a gateway can install the
    /// snapshot; this release rebuilds them as layout 4 when it installs one.
    pub fn for_each_pair(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), LedgerError>,
    ) -> Result<u64, LedgerError> {
        let corrupt = |what: &str| LedgerError::Corrupt {
            path: self.path.clone(),
            reason: format!("{what} is malformed"),
        };
        let storage = |source| LedgerError::Storage {
            path: self.path.clone(),
            source,
        };
        let legacy = stored_format(&self.metas) < 2;
        let mut count = 0u64;
        let mut emit = |k: &[u8], v: &[u8]| {
            count += 1;
            f(k, v)
        };
        for kv in self.tree.range(..&b"K"[..]) {
            let (k, v) = kv.map_err(storage)?;
            // Index chunks and buckets grow in place: what the view had is what lies below its
            // size (a chunk started after the view was taken is left out whole).
            let seq = match k.first() {
                Some(b'H') => {
                    let Some(v) = index::chunk_below(&v, self.size)
                        .ok_or_else(|| corrupt("device history chunk"))?
                    else {
                        continue;
                    };
                    if !legacy {
                        emit(&k, &v)?;
                        continue;
                    }
                    let seqs = index::decode_seqs(&v).unwrap_or_default();
                    // `D` device 0x00 seq, from `H` device 0x00 first-seq.
                    let mut dk = k[..k.len().saturating_sub(8)].to_vec();
                    if let Some(letter) = dk.first_mut() {
                        *letter = b'D';
                    }
                    let at = dk.len();
                    for seq in seqs {
                        dk.truncate(at);
                        dk.extend_from_slice(&seq.to_be_bytes());
                        emit(&dk, &[])?;
                    }
                    continue;
                }
                Some(b'J') => {
                    let Some(v) = index::bucket_below(&v, self.size)
                        .ok_or_else(|| corrupt("event id bucket"))?
                    else {
                        continue;
                    };
                    if !legacy {
                        emit(&k, &v)?;
                        continue;
                    }
                    for (seq, _) in index::decode_bucket(&v).unwrap_or_default() {
                        let Some(id) = event_id_at(&self.tree, &self.path, seq)? else {
                            return Err(corrupt("event id bucket (a record without its entry)"));
                        };
                        let mut ik = vec![b'I'];
                        ik.extend_from_slice(id.as_bytes());
                        emit(&ik, &seq.to_be_bytes())?;
                    }
                    continue;
                }
                Some(b'E') => Some(be_u64(&k[1..]).ok_or_else(|| corrupt("entry key"))?),
                // Layout 3 (a view of a tree not yet rebuilt).
                Some(b'D') => Some(
                    k.len()
                        .checked_sub(8)
                        .filter(|at| *at > 1)
                        .and_then(|at| be_u64(&k[at..]))
                        .ok_or_else(|| corrupt("device index key"))?,
                ),
                Some(b'I') => Some(be_u64(&v).ok_or_else(|| corrupt("event id index value"))?),
                Some(b'C') => Some(
                    k.get(9..)
                        .and_then(be_u64)
                        .ok_or_else(|| corrupt("correction index key"))?,
                ),
                _ => None,
            };
            // Written by an apply after the view was taken.
            if seq.is_some_and(|s| s >= self.size) {
                continue;
            }
            emit(&k, &v)?;
        }
        for (k, v) in &self.small {
            if legacy && k.as_ref() == META_LAYOUT {
                emit(k, &[3])?;
            } else {
                emit(k, v)?;
            }
        }
        for kv in self.tree.range(&b"N"[..]..) {
            let (k, v) = kv.map_err(storage)?;
            emit(&k, &v)?;
        }
        Ok(count)
    }
}

/// Key, in the database's default tree, of the name of the sled tree that holds the ledger
/// (absent: [`FIRST_TREE`]). [`Store::install`] fills a new tree and then switches this key.
const CURRENT_TREE_KEY: &[u8] = b"medledger.ledger_tree";
/// The ledger's tree until a snapshot is installed; later ones are `ledger.N`.
const FIRST_TREE: &[u8] = b"ledger";

fn is_ledger_tree(name: &[u8]) -> bool {
    name == FIRST_TREE || name.strip_prefix(b"ledger.").is_some_and(|n| !n.is_empty())
}

/// The name after `current` in the series `ledger`, `ledger.1`, `ledger.2`, ...
fn next_tree_name(current: &[u8]) -> Vec<u8> {
    let n = current
        .strip_prefix(b"ledger.")
        .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    format!("ledger.{}", n.saturating_add(1)).into_bytes()
}

/// The sled tree that holds the ledger, shared by the store, its readers and snapshot views.
/// When [`Store::install`] replaces it, it is marked retired and dropped from the database once
/// the last of them lets go of it (a crash before that leaves it to [`Store::open_in`]).
struct LedgerTree {
    tree: sled::Tree,
    db: sled::Db,
    retired: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for LedgerTree {
    type Target = sled::Tree;
    fn deref(&self) -> &sled::Tree {
        &self.tree
    }
}

impl Drop for LedgerTree {
    fn drop(&mut self) {
        if !self.retired.load(Ordering::SeqCst) {
            return;
        }
        let db = self.db.clone();
        let name = self.tree.name();
        // Freeing every page of a large ledger takes a while: not on the thread of whoever
        // happened to hold the tree last (it may be an async worker).
        let spawned = std::thread::Builder::new()
            .name("medledger-drop-tree".into())
            .spawn(move || {
                if let Err(e) = db.drop_tree(&name) {
                    tracing::warn!(error = %e, tree = %String::from_utf8_lossy(&name),
                        "could not drop the replaced ledger tree; it is dropped at the next open");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a thread to drop the replaced ledger tree; it is dropped at the next open");
        }
    }
}

/// The sled-backed ledger store.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    /// The tree holding the ledger; replaced whole by [`Store::install`].
    tree: std::sync::RwLock<Arc<LedgerTree>>,
    /// The writer's view, including applied but not yet flushed entries.
    writer: Mutex<WriterState>,
    /// Entries whose batch `apply_batch` has completed (the writer's frontier size, readable
    /// without the writer lock, so that a flush can start while the next batch is applied).
    applied_size: AtomicU64,
    /// Entries known to be on disk: what readers see.
    durable_size: AtomicU64,
    /// The command format the store applies by (as its metadata says), readable without the
    /// writer lock: every event a gateway prepares asks it ([`Store::format`]).
    format: std::sync::atomic::AtomicU8,
}

/// The key/value writes of one apply, in order, and removals of keys an apply that did not
/// count left (done first).
#[derive(Default)]
struct Writes(Vec<(sled::IVec, sled::IVec)>, Vec<sled::IVec>);

impl Writes {
    fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.0.push((key.as_ref().into(), value.as_ref().into()));
    }
    fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.1.push(key.as_ref().into());
    }
    /// Makes the writes to `tree`: the removals, then the inserts in order.
    fn write_to(self, tree: &sled::Tree) -> sled::Result<()> {
        for k in self.1 {
            tree.remove(k)?;
        }
        for (k, v) in self.0 {
            tree.insert(k, v)?;
        }
        Ok(())
    }
}

struct WriterState {
    frontier: Frontier,
    /// The metadata values carried in the size record (see [`SizeRecord`]).
    metas: std::collections::BTreeMap<String, Vec<u8>>,
    /// Whether `Mlayout` already says [`LAYOUT`].
    layout_written: bool,
}

/// The value of `Msize`: the entry count and the caller's metadata (Raft's last applied log id
/// and membership), in one value so that one insert makes an apply count.
///
/// `size` (u64 BE), then per metadata value: name length (u8), name, value length (u32 BE),
/// value. Layout 2 wrote the 8-byte size alone and each metadata value under its own `M` key;
/// those are still read when the record does not carry the name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct SizeRecord {
    size: u64,
    metas: std::collections::BTreeMap<String, Vec<u8>>,
}

impl SizeRecord {
    fn encode(size: u64, metas: &std::collections::BTreeMap<String, Vec<u8>>) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(
            8 + metas
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>(),
        );
        out.extend_from_slice(&size.to_be_bytes());
        for (name, value) in metas {
            out.push(u8::try_from(name.len()).ok()?);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&u32::try_from(value.len()).ok()?.to_be_bytes());
            out.extend_from_slice(value);
        }
        Some(out)
    }

    fn decode(v: &[u8]) -> Option<Self> {
        let (size, mut rest) = v.split_first_chunk::<8>()?;
        let mut metas = std::collections::BTreeMap::new();
        while let Some((len, r)) = rest.split_first() {
            let (name, r) = r.split_at_checked(*len as usize)?;
            let (vlen, r) = r.split_first_chunk::<4>()?;
            let (value, r) = r.split_at_checked(u32::from_be_bytes(*vlen) as usize)?;
            metas.insert(std::str::from_utf8(name).ok()?.to_owned(), value.to_vec());
            rest = r;
        }
        Some(Self {
            size: u64::from_be_bytes(*size),
            metas,
        })
    }
}

const META_SIZE: &[u8] = b"Msize";
const META_LAYOUT: &[u8] = b"Mlayout";
/// Version of the key layout and entry record above, stored once per store. Layout 4 is layout 3
/// with the `H` and `J` index keys in place of one `D` and one `I` key per entry. Layout 3 is layout 2
/// with metadata in the size record ([`SizeRecord`]); a layout-2 store is read and upgraded.
const LAYOUT: u8 = 4;
/// Layouts this version reads.
const LAYOUTS_READ: [u8; 3] = [2, 3, 4];
/// Entries indexed per write of a layout conversion ([`Store::convert_indexes`]).
const CONVERT_STEP: u64 = 8192;
const META_CHECKPOINT: &str = "checkpoint";
/// The latest co-signed checkpoint ([`crate::sth::Cosigned`] as JSON): kept when a plain
/// checkpoint follows it, so that exports and receipts can still be cut at it.
const META_COSIGNED: &str = "cosigned";

/// The command format the store applies by (one byte in the size record); absent: format 1.
const META_FORMAT: &str = "format";

/// What a co-signed checkpoint brings to [`Store::apply_checkpoint`] beyond its head.
struct CosignedParts<'a> {
    voters: &'a [u64],
    /// The voter set of the membership in force at its log entry, where known.
    applied_voters: Option<Vec<u64>>,
    cosignatures: &'a [crate::sth::SignedTreeHead],
}

/// The format recorded in the size record's metadata.
fn stored_format(metas: &std::collections::BTreeMap<String, Vec<u8>>) -> u8 {
    match metas.get(META_FORMAT).map(Vec::as_slice) {
        Some([f]) => *f,
        _ => crate::version::FORMAT_V1,
    }
}

fn key_entry(seq: u64) -> [u8; 9] {
    let mut k = [b'E'; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}
fn key_correction(target: u64, correction: u64) -> [u8; 17] {
    let mut k = [b'C'; 17];
    k[1..9].copy_from_slice(&target.to_be_bytes());
    k[9..].copy_from_slice(&correction.to_be_bytes());
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

/// The event id of entry `seq` of `tree`, a store in `path` (for errors).
fn event_id_at(tree: &sled::Tree, path: &Path, seq: u64) -> Result<Option<String>, LedgerError> {
    let Some(v) = tree
        .get(key_entry(seq))
        .map_err(|source| LedgerError::Storage {
            path: path.to_owned(),
            source,
        })?
    else {
        return Ok(None);
    };
    let corrupt = || LedgerError::Corrupt {
        path: path.to_owned(),
        reason: format!("record of entry {seq} is malformed"),
    };
    let record = Record::parse(&v).ok_or_else(corrupt)?;
    let entry = EntryRef::decode(record.entry).map_err(|e| LedgerError::corrupt(path, e))?;
    Ok(entry.event_id.map(str::to_owned))
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// Writes an entry record (see the module doc).
fn encode_record(entry: &[u8], nodes: &[Hash], openings: &[Opening]) -> Option<Vec<u8>> {
    let len = openings.iter().map(|o| 37 + o.value.len()).sum::<usize>()
        + entry.len()
        + 32 * nodes.len()
        + 9;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&u32::try_from(entry.len()).ok()?.to_be_bytes());
    out.extend_from_slice(entry);
    out.push(u8::try_from(nodes.len()).ok()?);
    for h in nodes {
        out.extend_from_slice(h);
    }
    out.extend_from_slice(&u32::try_from(openings.len()).ok()?.to_be_bytes());
    for o in openings {
        out.push(1);
        out.extend_from_slice(&o.salt);
        out.extend_from_slice(&u32::try_from(o.value.len()).ok()?.to_be_bytes());
        out.extend_from_slice(o.value.as_bytes());
    }
    Some(out)
}

/// The key and new value of a rewritten entry record.
type RecordWrite = ([u8; 9], Vec<u8>);

/// Writes an entry record from the parts of an existing one with new opening states (erasure).
fn encode_record_states(entry: &[u8], nodes: &[u8], states: &[OpeningState]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(entry.len() + nodes.len() + 64 * states.len() + 9);
    out.extend_from_slice(&u32::try_from(entry.len()).ok()?.to_be_bytes());
    out.extend_from_slice(entry);
    out.push(u8::try_from(nodes.len() / 32).ok()?);
    out.extend_from_slice(nodes);
    out.extend_from_slice(&u32::try_from(states.len()).ok()?.to_be_bytes());
    for st in states {
        match st {
            OpeningState::Open(o) => {
                out.push(1);
                out.extend_from_slice(&o.salt);
                out.extend_from_slice(&u32::try_from(o.value.len()).ok()?.to_be_bytes());
                out.extend_from_slice(o.value.as_bytes());
            }
            OpeningState::Erased { by: Some(by) } => {
                out.push(2);
                out.extend_from_slice(&by.to_be_bytes());
            }
            OpeningState::Erased { by: None } => out.push(0),
        }
    }
    Some(out)
}

/// An entry record split into its parts; `None` if it is malformed.
struct Record<'a> {
    entry: &'a [u8],
    nodes: &'a [u8],
    openings: &'a [u8],
}

impl<'a> Record<'a> {
    fn parse(v: &'a [u8]) -> Option<Self> {
        let (len, rest) = v.split_first_chunk::<4>()?;
        let (entry, rest) = rest.split_at_checked(u32::from_be_bytes(*len) as usize)?;
        let (k, rest) = rest.split_first()?;
        let (nodes, openings) = rest.split_at_checked(32 * *k as usize)?;
        Some(Record {
            entry,
            nodes,
            openings,
        })
    }

    /// Hash of the perfect subtree of `level` (1-based) that ends at this entry.
    fn node(&self, level: u8) -> Option<Hash> {
        let at = 32 * (level as usize).checked_sub(1)?;
        self.nodes.get(at..at + 32)?.try_into().ok()
    }

    fn openings(&self) -> Option<Vec<OpeningState>> {
        let (n, mut rest) = self.openings.split_first_chunk::<4>()?;
        let n = u32::from_be_bytes(*n) as usize;
        // Each opening takes at least one byte: refuse counts the record cannot hold.
        let mut out = Vec::with_capacity(n.min(rest.len()));
        for _ in 0..n {
            let (tag, r) = rest.split_first()?;
            rest = r;
            match tag {
                0 => out.push(OpeningState::Erased { by: None }),
                1 => {
                    let (salt, r) = rest.split_first_chunk::<32>()?;
                    let (len, r) = r.split_first_chunk::<4>()?;
                    let (value, r) = r.split_at_checked(u32::from_be_bytes(*len) as usize)?;
                    rest = r;
                    out.push(OpeningState::Open(Opening {
                        value: std::str::from_utf8(value).ok()?.to_owned(),
                        salt: *salt,
                    }));
                }
                2 => {
                    let (by, r) = rest.split_first_chunk::<8>()?;
                    rest = r;
                    out.push(OpeningState::Erased {
                        by: Some(u64::from_be_bytes(*by)),
                    });
                }
                _ => return None,
            }
        }
        rest.is_empty().then_some(out)
    }
}

/// How long [`open_db`] waits for sled's lock on a database that is being let go of.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// sled's page cache when nothing else is asked for, bytes. sled's own default (1 GiB) let a
/// gateway's memory grow with its ledger up to that much; an appliance keeps its ledger on disk
/// and its working set (the newest entries, the Merkle frontier's nodes) in far less. 16 MiB
/// keeps a gateway of 1,000,000 entries under 150 MiB idle, also after a snapshot build has
/// read every page; 64 MiB wrote ~8% more events/s at 64 clients and the same at 1 and 16
/// (docs/benchmarks.md, "The page cache holds what it counts").
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Opens sled in `dir` the way the ledger needs it: no background flusher, because every
/// acknowledgement is preceded by an explicit [`sync_db`]; a page cache of `cache_bytes`; log
/// records compressed with zstd (level [`COMPRESSION_LEVEL`]) in a new database, while one made
/// before keeps what it was made with (sled cannot change it; [`stored_compression`]).
///
/// Creates `dir` if needed and makes sled's files and their names durable before returning:
/// sled never syncs the directories it writes to (nor its `conf` file), so after a power cut
/// a database that was never synced this way could be missing altogether (found by the
/// power-loss tests, `tests/it/powerloss.rs`).
pub(crate) fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db, LedgerError> {
    create_dir_durable(dir)?;
    let compress = stored_compression(dir)?.unwrap_or(true);
    let open = || {
        sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .use_compression(compress)
            .compression_factor(COMPRESSION_LEVEL)
            .open()
    };
    // sled lets go of its file lock only when its last IO task ends, which can be a moment
    // after the last handle was dropped: a reopen in the same process (a test, a bench that
    // writes a store and then starts a gateway on it) waits for that rather than failing.
    // Another process holding the lock (a running gateway) is still refused after the wait.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    // sled's recovery fails on a damaged log with a corruption error or a panic ("tried to
    // serialize Uninitialized" from its page-table snapshot, which stock sled also left after
    // some power cuts; docs/operations.md "Power loss"): said as a store this version cannot
    // open, with what to do.
    let damaged = |what: String| LedgerError::Corrupt {
        path: dir.to_owned(),
        reason: format!(
            "sled could not recover its log ({what}); the store has to be rebuilt from the \
             other gateways (docs/operations.md \"A gateway whose store cannot be opened\")"
        ),
    };
    let db = loop {
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)).map_err(|p| {
            damaged(
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a panic".to_owned()),
            )
        })?;
        match opened {
            Err(e @ sled::Error::Corruption { .. }) => return Err(damaged(e.to_string())),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => {
                break r.map_err(|source| LedgerError::Storage {
                    path: dir.to_owned(),
                    source,
                })?
            }
        }
    };
    let conf = dir.join("conf");
    match std::fs::File::open(&conf).and_then(|f| f.sync_all()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(LedgerError::Io {
                path: conf,
                source: e,
            })
        }
        _ => {}
    }
    // The names sled created (`db`, `conf`, `blobs`); sled syncs the directory only for the
    // snapshots and blobs it writes later (patched, PATCHED.md).
    sync_dir(dir)?;
    Ok(db)
}

/// zstd level of sled's log records in stores made by this version. Level 1, the cheapest:
/// sled compresses each record alone (an entry's insert, a page rewritten, a Raft log entry),
/// so the ratio is the same at higher levels and only the CPU grows (docs/benchmarks.md,
/// "sled's records compressed").
pub const COMPRESSION_LEVEL: i32 = 1;

/// Whether the sled database in `dir` was made with its log records compressed (`None`: no
/// database there yet). sled refuses to open a database with another setting than it was made
/// with, so a store made before compression keeps its uncompressed records.
fn stored_compression(dir: &Path) -> Result<Option<bool>, LedgerError> {
    let conf = dir.join("conf");
    // sled's `conf`: `key: value` lines, then a checksum of four binary bytes.
    let bytes = match std::fs::read(&conf) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LedgerError::Io { path: conf, source }),
    };
    Ok(Some(
        bytes
            .split(|b| *b == b'\n')
            .any(|l| l.trim_ascii() == b"use_compression: true"),
    ))
}

/// `fsync` of a directory: makes the names created, renamed or removed in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| LedgerError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// `mkdir -p` whose result survives a power cut: every directory it creates is synced, and so
/// is the parent that got its name.
pub fn create_dir_durable(dir: &Path) -> Result<(), LedgerError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durable(parent)?;
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(LedgerError::Io {
                path: dir.to_owned(),
                source: e,
            })
        }
        _ => {}
    }
    sync_dir(dir)?;
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}

/// Makes everything written to the sled database in `dir` so far durable: sled's flush, which in
/// our patched sled ends each log write with `fdatasync` and syncs the blob files and snapshot
/// names it writes (ledger-node/vendor/sled/PATCHED.md). Stock sled's flush used
/// `sync_file_range`, which does not empty the drive's write cache, and never synced blobs; the
/// store followed every flush with syncs of its own, which covered what was acknowledged but not
/// what sled itself counted on between flushes (a power cut could leave a log its recovery fails
/// on).
pub(crate) async fn sync_db(db: &sled::Db, dir: &Path) -> Result<(), LedgerError> {
    // sled's own `flush_async` flushes on a sled thread that keeps the database (and its file
    // lock) alive for a moment after the flush is reported; flushing on our blocking thread
    // drops our handle before the await returns.
    let db = db.clone();
    let dir = dir.to_owned();
    let err_path = dir.join("db");
    tokio::task::spawn_blocking(move || {
        db.flush()
            .map(drop)
            .map_err(|source| LedgerError::Storage { path: dir, source })
    })
    .await
    .map_err(|e| LedgerError::Io {
        path: err_path,
        source: std::io::Error::other(e),
    })?
}

impl Store {
    /// Opens (or creates) the store in `dir`, checking that what is on disk agrees with itself,
    /// with sled's page cache at [`DEFAULT_CACHE_BYTES`].
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with sled's page cache bounded to `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, LedgerError> {
        let db = open_db(dir, cache_bytes)?;
        Self::open_in(&db, dir)
    }

    /// Opens (or creates) the store in the `ledger` tree of an already open sled database, so that
    /// other trees of the same database (Raft's log) share its flushes. `dir` must be the
    /// database's directory: [`Store::flush`] syncs the data file in it.
    pub fn open_in(db: &sled::Db, dir: &Path) -> Result<Self, LedgerError> {
        let storage = |source| LedgerError::Storage {
            path: dir.to_owned(),
            source,
        };
        let current = db
            .get(CURRENT_TREE_KEY)
            .map_err(storage)?
            .map_or_else(|| FIRST_TREE.to_vec(), |v| v.to_vec());
        // A tree that is not the current one was being filled by an install that did not finish,
        // or was replaced by one that did.
        for name in db.tree_names() {
            if is_ledger_tree(&name) && name.as_ref() != current.as_slice() {
                tracing::info!(tree = %String::from_utf8_lossy(&name), "dropping a ledger tree left by a snapshot install");
                db.drop_tree(&name).map_err(storage)?;
            }
        }
        let tree = db.open_tree(&current).map_err(storage)?;
        let store = Store {
            path: dir.to_owned(),
            db: db.clone(),
            tree: std::sync::RwLock::new(Arc::new(LedgerTree {
                tree,
                db: db.clone(),
                retired: false.into(),
            })),
            writer: Mutex::new(WriterState {
                frontier: Frontier::new(),
                metas: Default::default(),
                layout_written: false,
            }),
            applied_size: AtomicU64::new(0),
            durable_size: AtomicU64::new(0),
            format: std::sync::atomic::AtomicU8::new(crate::version::FORMAT_V1),
        };
        let (frontier, record) = store.load_frontier(&store.tree())?;
        let size = frontier.size();
        store.convert_indexes(&store.tree(), size)?;
        {
            let mut w = store.lock_writer();
            w.frontier = frontier;
            w.metas = record.metas;
            store
                .format
                .store(stored_format(&w.metas), Ordering::SeqCst);
            w.layout_written = store.layout_is_current(&store.tree())?;
        }
        store.applied_size.store(size, Ordering::SeqCst);
        store.durable_size.store(size, Ordering::SeqCst);
        tracing::info!(size, path = %dir.display(), "opened the ledger store");
        Ok(store)
    }

    /// Reads the recorded size, checks it against the entries present and rebuilds the frontier.
    ///
    /// Entries beyond the recorded size are what a crash left of an apply that did not count
    /// (its size record was never written): they are removed here, see [`Store::apply`].
    fn load_frontier(&self, tree: &sled::Tree) -> Result<(Frontier, SizeRecord), LedgerError> {
        let get = |key: &[u8]| tree.get(key).map_err(|e| self.storage(e));
        let record = match get(META_SIZE)? {
            None => SizeRecord::default(),
            Some(v) => {
                SizeRecord::decode(&v).ok_or_else(|| self.corrupt("size record is malformed"))?
            }
        };
        let size = record.size;
        if size > 0 {
            let layout = get(META_LAYOUT)?;
            if !layout
                .as_deref()
                .is_some_and(|l| l.len() == 1 && LAYOUTS_READ.contains(&l[0]))
            {
                return Err(self.corrupt(&format!(
                    "store layout {} is not one of the layouts {LAYOUTS_READ:?} this version reads",
                    layout.map_or_else(|| "1".to_owned(), hex::encode)
                )));
            }
        }
        if size > 0 && get(&key_entry(size - 1))?.is_none() {
            return Err(self.corrupt(&format!("size is {size} but entry {} is missing", size - 1)));
        }
        self.remove_uncounted(tree, size)?;
        let reader = TreeReader { store: self, tree };
        Ok((Frontier::from_reader(&reader, size)?, record))
    }

    /// Removes the entries at `size` and beyond with their index keys. Index keys are removed
    /// before their entry, so that a crash in here leaves an entry to find them by next time.
    fn remove_uncounted(&self, tree: &sled::Tree, size: u64) -> Result<(), LedgerError> {
        let (mut removed, mut last) = (0u64, 0u64);
        let layout_4 = self.layout_is_current(tree)?;
        for kv in tree.range(key_entry(size)..=key_entry(u64::MAX)) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            let seq = be_u64(&k[1..]).ok_or_else(|| self.corrupt("entry key"))?;
            let record = self.parse_record(seq, &v)?;
            let entry =
                Entry::decode(record.entry).map_err(|e| LedgerError::corrupt(&self.path, e))?;
            if let Some(c) = entry.body.corrects {
                tree.remove(key_correction(c, seq))
                    .map_err(|e| self.storage(e))?;
            }
            // A store of an older layout has its indexes rebuilt from the entries next
            // (`convert_indexes`).
            if layout_4 {
                let (device, id) = (&entry.body.device_id, entry.body.event_id.as_deref());
                index::remove(self, tree, device, id, seq)?;
            }
            tree.remove(k).map_err(|e| self.storage(e))?;
            removed += 1;
            last = seq;
        }
        if removed > 0 {
            tracing::warn!(
                removed,
                size,
                last,
                "removed entries an interrupted apply left beyond the recorded size"
            );
        }
        Ok(())
    }

    /// Whether `Mlayout` already says [`LAYOUT`] (an older store is upgraded by its next apply).
    fn layout_is_current(&self, tree: &sled::Tree) -> Result<bool, LedgerError> {
        let layout = tree.get(META_LAYOUT).map_err(|e| self.storage(e))?;
        Ok(layout.as_deref() == Some(&[LAYOUT][..]))
    }

    /// Rebuilds the device and event-id indexes of a store of layout 2 or 3 (one key per entry
    /// in each) as layout 4's chunks and buckets ([`index`]), from the entries themselves, and
    /// marks the store layout 4; removes what an interrupted run left. Durable in steps: the new
    /// indexes are synced before the layout says 4, so a crash before that starts over (the old
    /// keys are still there, the new ones are removed first) and one after it only leaves old
    /// keys, removed by the next open.
    fn convert_indexes(&self, tree: &sled::Tree, size: u64) -> Result<(), LedgerError> {
        let storage = |e| self.storage(e);
        let layout = tree.get(META_LAYOUT).map_err(storage)?;
        if layout.as_deref() == Some(&[LAYOUT][..]) || (layout.is_none() && size == 0) {
            let old =
                index::remove_prefix(self, tree, b"D")? + index::remove_prefix(self, tree, b"I")?;
            if old > 0 {
                tracing::info!(keys = old, "removed the index keys of store layout 3");
            }
            return Ok(());
        }
        let started = std::time::Instant::now();
        index::remove_prefix(self, tree, b"H")?;
        index::remove_prefix(self, tree, b"J")?;
        let mut writes = index::IndexWrites::new(size);
        let mut step = 0u64;
        for kv in tree.range(key_entry(0)..key_entry(size)) {
            let (k, v) = kv.map_err(storage)?;
            let seq = be_u64(&k[1..]).ok_or_else(|| self.corrupt("entry key"))?;
            let record = self.parse_record(seq, &v)?;
            let entry =
                EntryRef::decode(record.entry).map_err(|e| LedgerError::corrupt(&self.path, e))?;
            writes.add(self, tree, entry.device_id, entry.event_id, seq)?;
            step += 1;
            if step.is_multiple_of(CONVERT_STEP) {
                let mut batch = Writes::default();
                std::mem::replace(&mut writes, index::IndexWrites::new(size)).write(&mut batch);
                batch.write_to(tree).map_err(storage)?;
            }
        }
        let mut batch = Writes::default();
        writes.write(&mut batch);
        batch.write_to(tree).map_err(storage)?;
        self.db.flush().map_err(storage)?;
        tree.insert(META_LAYOUT, &[LAYOUT]).map_err(storage)?;
        self.db.flush().map_err(storage)?;
        let old = index::remove_prefix(self, tree, b"D")? + index::remove_prefix(self, tree, b"I")?;
        tracing::info!(
            entries = step,
            old_keys = old,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt the device and event-id indexes as store layout {LAYOUT}"
        );
        Ok(())
    }

    /// The tree holding the ledger now.
    fn tree(&self) -> Arc<LedgerTree> {
        // Only `install` writes the lock, and it cannot panic while holding it.
        self.tree.read().unwrap_or_else(|p| p.into_inner()).clone()
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
        self.tree().get(key).map_err(|e| self.storage(e))
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of entries on disk.
    pub fn size(&self) -> u64 {
        self.durable_size.load(Ordering::SeqCst)
    }

    /// Applies commands in order, together with `meta` key/values (for example Raft's last
    /// applied log id). Not durable until [`Store::flush`]. Deterministic: the outcome depends
    /// only on the commands and the stored state.
    ///
    /// All-or-nothing without a sled batch: the writes go in as plain inserts, the size record
    /// (entry count and `meta`, one value) last. sled recovers a prefix of its writes in order,
    /// so after a crash either the size record of this apply is there, and so is everything
    /// before it, or it is not, and [`Store::open`] removes what the apply left beyond the
    /// recorded size. (A sled batch would also be atomic, but seals sled's log buffer twice, and
    /// each seal is a synchronous device write in front of the next flush: a third of the
    /// latency of a one-event write through Raft.) A registered node key or a checkpoint left by
    /// such an apply stays: both are true statements that the apply repeated from the log
    /// writes again, byte for byte.
    pub fn apply(
        &self,
        commands: &[Command],
        meta: &[(&str, Vec<u8>)],
    ) -> Result<Vec<ApplyOutcome>, LedgerError> {
        self.apply_at(commands, |_| crate::version::FORMAT, meta)
    }

    /// [`Store::apply`] with each command's format (`format_of(i)` for `commands[i]`, the format
    /// its Raft entry was proposed at): a command is applied by the rules of the higher of its
    /// format and the store's (see [`crate::version::FORMAT`]). The store's format is raised, in
    /// the same size record, by the first command of a higher one and never lowered, so a
    /// replica that saw format 2 keeps its rules whoever leads next; it is replicated state
    /// (snapshots carry it), so every replica applies each command by the same rules.
    ///
    /// A format this release does not know is an error (nothing applied), never a guess.
    pub fn apply_at(
        &self,
        commands: &[Command],
        format_of: impl Fn(usize) -> u8,
        meta: &[(&str, Vec<u8>)],
    ) -> Result<Vec<ApplyOutcome>, LedgerError> {
        self.apply_in(commands, format_of, |_| None, meta)
    }

    /// [`Store::apply_at`] that also knows, for each command, the voter set of the Raft
    /// membership in force at its log entry (`voters_of(i)`, ascending node ids; `None` where no
    /// membership is known, as outside Raft). A [`Command::CosignedCheckpoint`] is recorded only
    /// if its voter set is that one: a voter set written by one gateway is checked by all.
    pub fn apply_in(
        &self,
        commands: &[Command],
        format_of: impl Fn(usize) -> u8,
        voters_of: impl Fn(usize) -> Option<Vec<u64>>,
        meta: &[(&str, Vec<u8>)],
    ) -> Result<Vec<ApplyOutcome>, LedgerError> {
        for i in 0..commands.len() {
            crate::version::check_format(format_of(i))?;
        }
        let mut w = self.lock_writer();
        let stored_format = stored_format(&w.metas);
        let mut format = stored_format;
        let mut frontier = w.frontier.clone();
        let mut batch = Writes::default();
        let mut pending = Pending {
            base: frontier.size(),
            entries: Vec::new(),
            checkpoint: None,
        };
        let mut outcomes = Vec::with_capacity(commands.len());
        // Sized up front: growing it batch after batch cost a measurable share of the writer.
        let mut new_ids: HashMap<String, u64> = HashMap::with_capacity(commands.len());
        let mut new_keys: HashMap<u64, [u8; 32]> = HashMap::new();
        let tree = self.tree();
        let mut index = index::IndexWrites::new(w.frontier.size());
        for (i, cmd) in commands.iter().enumerate() {
            format = format.max(format_of(i));
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
                            batch.insert(key_node_key(*node_id), public_key.as_slice());
                            new_keys.insert(*node_id, *public_key);
                            ApplyOutcome::NodeRegistered { node_id: *node_id }
                        }
                    }
                }
                Command::Append(a) => self.apply_append(
                    a,
                    format,
                    w.frontier.size(),
                    &mut frontier,
                    &mut batch,
                    (&tree.tree, &mut index),
                    &mut new_ids,
                    &mut pending,
                )?,
                Command::Checkpoint(head) => {
                    self.apply_checkpoint(head, None, &new_keys, &mut batch, &mut pending)?
                }
                // Release 0.1.0 knows no such command: refused alike by every replica while
                // the cluster applies format 1 (the leader does not propose it then).
                Command::CosignedCheckpoint { .. } if format < 2 => ApplyOutcome::Refused {
                    reason: format!(
                        "a co-signed checkpoint needs command format 2 (release {}); the \
                         cluster applies format {format}",
                        crate::version::format_release(2)
                    ),
                },
                Command::CosignedCheckpoint {
                    head,
                    voters,
                    cosignatures,
                } => self.apply_checkpoint(
                    head,
                    Some(CosignedParts {
                        voters,
                        applied_voters: voters_of(i),
                        cosignatures,
                    }),
                    &new_keys,
                    &mut batch,
                    &mut pending,
                )?,
            };
            outcomes.push(outcome);
        }
        index.write(&mut batch);
        if !w.layout_written {
            batch.insert(META_LAYOUT, [LAYOUT]);
        }
        let mut metas = w.metas.clone();
        if format > stored_format {
            metas.insert(META_FORMAT.to_owned(), vec![format]);
        }
        for (name, value) in meta {
            metas.insert((*name).to_owned(), value.clone());
        }
        let record = SizeRecord::encode(frontier.size(), &metas)
            .ok_or_else(|| self.corrupt("metadata too large for the size record"))?;
        // The size record goes last: it is what makes the apply count (see the doc above).
        batch.insert(META_SIZE, record);
        batch.write_to(&tree).map_err(|e| self.storage(e))?;
        self.applied_size.store(frontier.size(), Ordering::SeqCst);
        w.frontier = frontier;
        w.metas = metas;
        self.format
            .store(crate::store::stored_format(&w.metas), Ordering::SeqCst);
        w.layout_written = true;
        Ok(outcomes)
    }

    /// A checkpoint is recorded when it covers entries applied before it (in this batch or an
    /// earlier one), its root is the root of those entries, its signature checks with a
    /// registered key and it is not older than the checkpoint already recorded.
    ///
    /// The outcome depends only on the commands before it, never on how they were cut into
    /// batches: openraft hands a follower (or a node replaying its log after a restart) several
    /// log entries in one apply where the leader applied them one by one. Before, a checkpoint
    /// counted only the entries of earlier batches, so one that covered entries of its own
    /// batch was refused there and recorded on the leader, and the gateways' exports (cut at the
    /// latest checkpoint) could differ.
    fn apply_checkpoint(
        &self,
        head: &crate::sth::SignedTreeHead,
        cosigned: Option<CosignedParts<'_>>,
        new_keys: &HashMap<u64, [u8; 32]>,
        batch: &mut Writes,
        pending: &mut Pending,
    ) -> Result<ApplyOutcome, LedgerError> {
        let refuse = |reason: String| Ok(ApplyOutcome::Refused { reason });
        let applied = pending.size();
        if head.size > applied {
            return refuse(format!(
                "checkpoint of size {} is beyond the {applied} applied entries",
                head.size
            ));
        }
        let key_of = |node_id: u64| -> Result<Option<VerifyingKey>, LedgerError> {
            let key = match new_keys.get(&node_id) {
                Some(k) => Some(*k),
                None => self.node_key_bytes(node_id)?,
            };
            Ok(key.and_then(|k| VerifyingKey::from_bytes(&k).ok()))
        };
        let Some(key) = key_of(head.node_id)? else {
            return refuse(format!(
                "checkpoint signed by node {}, whose key is unknown",
                head.node_id
            ));
        };
        if !head.verify(&key) {
            return refuse("checkpoint signature does not verify".into());
        }
        let cosignatures = cosigned.as_ref().map_or(&[][..], |c| c.cosignatures);
        let mut signers = vec![head.node_id];
        for c in cosignatures {
            if c.size != head.size || c.root != head.root {
                return refuse(format!(
                    "the co-signature of node {} is over another tree than the checkpoint",
                    c.node_id
                ));
            }
            if signers.contains(&c.node_id) {
                return refuse(format!("node {} signs the checkpoint twice", c.node_id));
            }
            match key_of(c.node_id)? {
                Some(k) if c.verify(&k) => signers.push(c.node_id),
                Some(_) => {
                    return refuse(format!(
                        "the co-signature of node {} does not verify",
                        c.node_id
                    ))
                }
                None => {
                    return refuse(format!(
                        "checkpoint co-signed by node {}, whose key is unknown",
                        c.node_id
                    ))
                }
            }
        }
        if let Some(c) = &cosigned {
            // The voter set a verifier takes the quorum from: the one every replica applied at
            // this log entry, never what the recording gateway says it is.
            let voters = c.voters;
            if voters.is_empty() {
                return refuse("a co-signed checkpoint without a voter set".into());
            }
            if !crate::sth::is_voter_set(voters) {
                return refuse(format!(
                    "the checkpoint's voter set {voters:?} is not a set of node ids in ascending \
                     order"
                ));
            }
            match &c.applied_voters {
                None => {
                    return refuse(
                        "a co-signed checkpoint outside Raft: no membership to check its voter \
                         set against"
                            .into(),
                    )
                }
                Some(applied) if applied != voters => {
                    return refuse(format!(
                        "the checkpoint's voter set {voters:?} is not the cluster's voters \
                         {applied:?} at its log entry"
                    ))
                }
                Some(_) => {}
            }
            let signed = voters.iter().filter(|v| signers.contains(v)).count();
            if signed < crate::sth::majority(voters.len()) {
                return refuse(format!(
                    "the checkpoint of {} entries is {}: fewer than a majority",
                    head.size,
                    crate::sth::describe_signers(voters, &signers)
                ));
            }
        }
        let reader = PendingReader {
            store: self,
            pending,
        };
        if merkle::root(&reader, head.size)? != head.root {
            return refuse(format!(
                "checkpoint root is not the root of the first {} entries",
                head.size
            ));
        }
        let prev = match pending.checkpoint {
            Some(size) => Some(size),
            None => self.latest_checkpoint()?.map(|c| c.size),
        };
        if let Some(prev) = prev {
            if prev > head.size {
                return refuse(format!("a checkpoint of size {prev} is already recorded"));
            }
        }
        let json = serde_json::to_vec(head).map_err(|e| self.corrupt(&e.to_string()))?;
        batch.insert(key_meta(META_CHECKPOINT), json);
        if let Some(c) = cosigned {
            let record = crate::sth::Cosigned {
                tree_head: head.clone(),
                voters: c.voters.to_vec(),
                cosignatures: c.cosignatures.to_vec(),
            };
            let json = serde_json::to_vec(&record).map_err(|e| self.corrupt(&e.to_string()))?;
            batch.insert(key_meta(META_COSIGNED), json);
        }
        pending.checkpoint = Some(head.size);
        Ok(ApplyOutcome::Checkpointed { size: head.size })
    }

    /// The latest co-signed checkpoint, if any: its head, voter set and co-signatures. A plain
    /// checkpoint recorded after it does not replace it.
    pub fn cosigned_checkpoint(&self) -> Result<Option<crate::sth::Cosigned>, LedgerError> {
        match self.get(&key_meta(META_COSIGNED))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.corrupt(&format!("co-signed checkpoint: {e}"))),
        }
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

    // The apply's state travels as separate borrows (frontier, writes, ids, pending) and the
    // command format beside them: a struct of them would only move the list.
    #[allow(clippy::too_many_arguments)]
    fn apply_append(
        &self,
        a: &AppendCommand,
        format: u8,
        batch_start: u64,
        frontier: &mut Frontier,
        batch: &mut Writes,
        (tree, index): (&sled::Tree, &mut index::IndexWrites),
        new_ids: &mut HashMap<String, u64>,
        pending: &mut Pending,
    ) -> Result<ApplyOutcome, LedgerError> {
        let seq = frontier.size();
        // The body was produced by the proposing node; parse it as an entry with a placeholder
        // sequence number to reuse the one decoder.
        let bytes = crate::entry::entry_bytes(seq, &a.body, a.signature.as_ref());
        // A version 2 entry is readable only by releases that apply format 3: every replica
        // refuses it alike while the cluster applies an older format.
        if a.signature.is_none() && format < 3 {
            return Ok(ApplyOutcome::Refused {
                reason: format!(
                    "an entry without its own signature (entry version 2) needs command format 3 \
                     (release {}); the cluster applies format {format}",
                    crate::version::format_release(3),
                ),
            });
        }
        let entry = match Entry::decode(&bytes) {
            Ok(e) => e,
            Err(e) => {
                return Ok(ApplyOutcome::Refused {
                    reason: format!("bad entry body: {e}"),
                })
            }
        };
        let body: &EntryBody = &entry.body;
        // Format 1 (release 0.1.0) has no such kinds: its decoder refuses them, and so must
        // every replica while the cluster applies format 1.
        if format < 2
            && matches!(
                body.kind,
                EventKind::Review | EventKind::Approval | EventKind::Erasure
            )
        {
            return Ok(ApplyOutcome::Refused {
                reason: format!(
                    "event kind {:?} needs command format 2 (release {}); the cluster applies \
                     format {format} until every gateway runs release {} or later",
                    body.kind.as_str(),
                    crate::version::format_release(2),
                    crate::version::format_release(2),
                ),
            });
        }
        if let Some(id) = &body.event_id {
            if let Some(seq) = new_ids.get(id) {
                return Ok(ApplyOutcome::Duplicate { seq: *seq });
            }
            // An index record at or beyond the batch's start belongs to no counted entry: a
            // power cut kept it while losing its entry (sled kept a later write of an apply that
            // did not count). It is not a duplicate (`find` leaves it out); this apply's own
            // records are in `new_ids` already.
            if let Some(dup) = index.find(self, tree, id)? {
                return Ok(ApplyOutcome::Duplicate { seq: dup });
            }
        }
        if let Some(c) = body.corrects {
            if c >= seq {
                return Ok(ApplyOutcome::Refused {
                    reason: format!("corrects entry {c}, but the ledger has {seq} entries"),
                });
            }
            // A correction concerns the same device as the entry it corrects: otherwise one
            // device's history could silently rewrite another's (issue 14). Format 1 (release
            // 0.1.0) did not check it; the leader holds such a correction back while the
            // cluster applies format 1 (`required_format`).
        }
        if let (Some(c), true) = (body.corrects, format >= 2) {
            let target = self.record_in_apply(c, batch_start, batch, false)?;
            let target = self.parse_record(c, &target)?;
            let target =
                EntryRef::decode(target.entry).map_err(|e| LedgerError::corrupt(&self.path, e))?;
            if target.device_id != body.device_id {
                return Ok(ApplyOutcome::Refused {
                    reason: format!(
                        "corrects entry {c}, which is about device {:?}, not {:?}: a correction \
                         concerns the same device as the entry it corrects",
                        target.device_id, body.device_id
                    ),
                });
            }
        }
        if a.openings.len() != body.components.len() {
            return Ok(ApplyOutcome::Refused {
                reason: "openings do not match the components".into(),
            });
        }
        if matches!(body.kind, EventKind::Review | EventKind::Approval) {
            if let Err(reason) = self.check_signer(body, &a.openings, seq, batch_start, batch)? {
                return Ok(ApplyOutcome::Refused { reason });
            }
        }
        let is_erasure = body.kind == EventKind::Erasure;
        // In format 1 an event id starting with `erasure:` is an event id like any other.
        let erasure_id = body
            .event_id
            .as_deref()
            .filter(|id| format >= 2 && id.starts_with(ERASURE_ID_PREFIX));
        if is_erasure != erasure_id.is_some() {
            return Ok(ApplyOutcome::Refused {
                reason: format!(
                    "an erasure entry and only an erasure entry has an event id starting with \
                     {ERASURE_ID_PREFIX:?}"
                ),
            });
        }
        let erased = match erasure_id {
            None => None,
            Some(id) => match self.erase_in_apply(id, seq, &body.device_id, batch_start, batch)? {
                Ok(write) => Some(write),
                Err(reason) => return Ok(ApplyOutcome::Refused { reason }),
            },
        };
        let leaf = leaf_hash(&bytes);
        let mut nodes = Vec::new();
        frontier.push(leaf, |level, _, h| {
            if level > 0 {
                nodes.push(*h);
            }
        });
        let Some(record) = encode_record(&bytes, &nodes, &a.openings) else {
            return Err(self.corrupt(&format!("entry {seq} is too large for its record")));
        };
        pending.entries.push((leaf, nodes));
        batch.insert(key_entry(seq), record);
        if let Some((key, value)) = erased {
            batch.insert(key, value);
        }
        if let Some(c) = body.corrects {
            batch.insert(key_correction(c, seq), &[][..]);
        }
        index.add(self, tree, &body.device_id, body.event_id.as_deref(), seq)?;
        if let Some(id) = &body.event_id {
            new_ids.insert(id.clone(), seq);
        }
        Ok(ApplyOutcome::Appended { seq, leaf })
    }

    /// Checks a review or approval (appended at `seq`) against the entry it signs: 21 CFR Part
    /// 11 separation of duties, the same rule the API applies before it proposes one, applied
    /// here again so that a command that did not come through the API (an import, a raw Raft
    /// command) is refused too, identically on every gateway. Everything it reads is in the
    /// entries: the signature component of both (the staff id and, for the review, the entry it
    /// signs, `of`), their authors (certificate fingerprints) and devices. A signature is never
    /// erased, so a replica that installed a snapshot decides the same.
    fn check_signer(
        &self,
        body: &EntryBody,
        openings: &[Opening],
        seq: u64,
        batch_start: u64,
        batch: &Writes,
    ) -> Result<Result<(), String>, LedgerError> {
        let kind = body.kind.as_str();
        let signature = body
            .components
            .iter()
            .position(|c| c.name == SIGNATURE_COMPONENT)
            .and_then(|i| openings.get(i))
            .and_then(|o| serde_json::from_str::<serde_json::Value>(&o.value).ok());
        let Some(signature) = signature else {
            return Ok(Err(format!(
                "a {kind} record carries its signature (component {SIGNATURE_COMPONENT:?}) \
                 naming the entry it signs"
            )));
        };
        let signer = signature.get("id").and_then(serde_json::Value::as_str);
        let (Some(signer), Some(of)) = (signer, signature.get("of").and_then(|v| v.as_u64()))
        else {
            return Ok(Err(format!(
                "the signature of a {kind} record names its signer (id) and the entry it signs \
                 (of)"
            )));
        };
        if of >= seq {
            return Ok(Err(format!(
                "a {kind} of entry {of}, but the ledger has {seq} entries"
            )));
        }
        let value = self.record_in_apply(of, batch_start, batch, true)?;
        let record = self.parse_record(of, &value)?;
        let target =
            EntryRef::decode(record.entry).map_err(|e| LedgerError::corrupt(&self.path, e))?;
        if target.device_id != body.device_id {
            return Ok(Err(format!(
                "a {kind} of entry {of}, which is about device {:?}, not {:?}",
                target.device_id, body.device_id
            )));
        }
        if matches!(
            target.kind,
            EventKind::Review | EventKind::Approval | EventKind::Erasure
        ) {
            return Ok(Err(format!(
                "entry {of} is a {} record; review and approve the record it concerns",
                target.kind.as_str()
            )));
        }
        let performer = target
            .components
            .iter()
            .position(|c| c.name == SIGNATURE_COMPONENT)
            .and_then(|i| record.openings()?.into_iter().nth(i)?.open())
            .and_then(|o| serde_json::from_str::<serde_json::Value>(&o.value).ok())
            .and_then(|v| v.get("id")?.as_str().map(str::to_owned));
        if target.author == body.author || performer.as_deref() == Some(signer) {
            return Ok(Err(format!(
                "21 CFR Part 11 separation of duties: {} performed entry {of}, and its review \
                 or approval must be signed by someone other than the performer",
                performer.as_deref().unwrap_or(target.author)
            )));
        }
        Ok(Ok(()))
    }

    /// The record of entry `seq`, which the apply in progress may itself have added or (an
    /// erasure, `rewritten`) rewritten: its writes reach the tree only at its end.
    fn record_in_apply(
        &self,
        seq: u64,
        batch_start: u64,
        batch: &Writes,
        rewritten: bool,
    ) -> Result<sled::IVec, LedgerError> {
        let key = key_entry(seq);
        if seq >= batch_start || rewritten {
            // The latest write of the key in this batch (an erasure may have rewritten it).
            if let Some((_, v)) = batch.0.iter().rev().find(|(k, _)| k.as_ref() == key) {
                return Ok(v.clone());
            }
        }
        self.record(seq)
    }

    /// Checks an erasure whose event id is `id` (appended at `seq` about `device`) and returns
    /// the rewritten record of the entry it erases from, or why it is refused. Every rule
    /// depends only on entries, not on the opening's state: erasing an erased value writes the
    /// same record again (a replica that got the erased record by snapshot replays it so).
    fn erase_in_apply(
        &self,
        id: &str,
        seq: u64,
        device: &str,
        batch_start: u64,
        batch: &Writes,
    ) -> Result<Result<RecordWrite, String>, LedgerError> {
        let Some((target, name)) = parse_erasure_event_id(id) else {
            return Ok(Err(format!(
                "erasure event id {id:?} is not erasure:<seq>:<component>"
            )));
        };
        if target >= seq {
            return Ok(Err(format!(
                "erases from entry {target}, but the ledger has {seq} entries"
            )));
        }
        // Another erasure of this batch may have rewritten the record already.
        let value = self.record_in_apply(target, batch_start, batch, true)?;
        let record = self.parse_record(target, &value)?;
        let entry =
            EntryRef::decode(record.entry).map_err(|e| LedgerError::corrupt(&self.path, e))?;
        if entry.device_id != device {
            return Ok(Err(format!(
                "erases from entry {target}, which is about device {:?}, not {device:?}",
                entry.device_id
            )));
        }
        if entry.kind == EventKind::Erasure {
            return Ok(Err(format!(
                "entry {target} is an erasure: nothing to erase"
            )));
        }
        if name == SIGNATURE_COMPONENT {
            return Ok(Err(format!(
                "the {SIGNATURE_COMPONENT} component of a record is never erased (21 CFR Part \
                 11 §11.10(e): a record's signature stays readable)"
            )));
        }
        let Some(index) = entry.components.iter().position(|c| c.name == name) else {
            return Ok(Err(format!("entry {target} has no component {name:?}")));
        };
        let mut states = record
            .openings()
            .ok_or_else(|| self.corrupt(&format!("openings of entry {target} are malformed")))?;
        let Some(state) = states.get_mut(index) else {
            return Err(self.corrupt(&format!("openings of entry {target} are short")));
        };
        *state = OpeningState::Erased { by: Some(seq) };
        let rewritten = encode_record_states(record.entry, record.nodes, &states)
            .ok_or_else(|| self.corrupt(&format!("entry {target} is too large for its record")))?;
        Ok(Ok((key_entry(target), rewritten)))
    }

    /// Makes everything applied so far durable: sled's flush (an `fdatasync` of its data file).
    ///
    /// May run while another thread applies the next batch: it covers (and makes visible to
    /// readers) the batches whose apply completed before it started; sled makes a batch that is
    /// half-written when the flush runs either wholly durable or absent after a crash.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        // Everything applied before this point is covered by the flush below: `applied_size` is
        // stored only after the batch's `apply_batch` returned.
        let target = self.applied_size.load(Ordering::SeqCst);
        sync_db(&self.db, &self.path).await?;
        self.durable_size.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// [`Store::flush`] on the calling thread, for callers that run it on a blocking thread of
    /// their own (the single-node writer flushes one batch this way while it applies the next).
    pub fn flush_blocking(&self) -> Result<(), LedgerError> {
        let target = self.applied_size.load(Ordering::SeqCst);
        self.db.flush().map_err(|e| self.storage(e))?;
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
        let applied = self.applied_size.load(Ordering::SeqCst);
        self.durable_size.fetch_max(applied, Ordering::SeqCst);
    }

    /// The sled database the store lives in.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The store as of now, for a snapshot (see [`StoreView`]). Takes the writer lock only to
    /// note the size, the root and the node keys and metadata; the entries are read later.
    pub fn view(&self) -> Result<StoreView, LedgerError> {
        let w = self.lock_writer();
        let tree = self.tree();
        let small = tree
            .range(&b"K"[..]..&b"N"[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.storage(e))?;
        Ok(StoreView {
            tree,
            size: w.frontier.size(),
            root: w.frontier.root(),
            metas: w.metas.clone(),
            small,
            path: self.path.clone(),
        })
    }

    /// Replaces the whole state with `pairs` (another node's [`StoreView`], through a snapshot),
    /// so that a crash at any point leaves either the old state or the new one, and returns the
    /// new number of entries. Blocks on disk I/O.
    ///
    /// The pairs go into a new sled tree, streamed, never all in memory; the database is flushed
    /// and the new tree checked (size record, last entry, Merkle frontier) before the database's
    /// pointer to the ledger tree ([`CURRENT_TREE_KEY`]) is switched to it and flushed again.
    /// [`Store::open_in`] drops whichever tree the pointer does not name. If `pairs` fails or
    /// does not form a consistent ledger, the new tree is dropped and the old state stays.
    pub fn install<I>(&self, pairs: I) -> Result<u64, LedgerError>
    where
        I: IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), LedgerError>>,
    {
        let mut w = self.lock_writer();
        let old = self.tree();
        let name = next_tree_name(&old.name());
        let storage = |e| self.storage(e);
        // Left by an install that failed in this process (none survives an open).
        self.db.drop_tree(&name).map_err(storage)?;
        let tree = self.db.open_tree(&name).map_err(storage)?;
        let filled = (|| {
            for pair in pairs {
                let (k, v) = pair?;
                tree.insert(k, v).map_err(storage)?;
            }
            self.db.flush().map_err(storage)?;
            let loaded = self.load_frontier(&tree)?;
            // A snapshot of an older release's gateway carries the indexes of its layout.
            self.convert_indexes(&tree, loaded.0.size())?;
            let layout = self.layout_is_current(&tree)?;
            Ok::<_, LedgerError>((loaded, layout))
        })();
        let ((frontier, record), layout_written) = match filled {
            Ok(f) => f,
            Err(e) => {
                drop(tree);
                if let Err(d) = self.db.drop_tree(&name) {
                    tracing::warn!(error = %d, "could not drop the tree of a failed snapshot install");
                }
                return Err(e);
            }
        };
        self.db.insert(CURRENT_TREE_KEY, name).map_err(storage)?;
        self.db.flush().map_err(storage)?;
        *self.tree.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(LedgerTree {
            tree,
            db: self.db.clone(),
            retired: false.into(),
        });
        // Nobody can get hold of the old tree any more. Dropped here if this is its last user;
        // otherwise by the last snapshot view that still reads it.
        match Arc::try_unwrap(old) {
            Ok(old) => {
                let name = old.tree.name();
                drop(old);
                self.db.drop_tree(&name).map_err(storage)?;
            }
            Err(old) => old.retired.store(true, Ordering::SeqCst),
        }
        let size = frontier.size();
        w.frontier = frontier;
        w.metas = record.metas;
        self.format.store(stored_format(&w.metas), Ordering::SeqCst);
        w.layout_written = layout_written;
        self.applied_size.store(size, Ordering::SeqCst);
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
        let v = self.record(seq)?;
        Ok(self.parse_record(seq, &v)?.entry.to_vec())
    }

    /// The stored record of entry `seq` (see the module doc), which must exist.
    fn record(&self, seq: u64) -> Result<sled::IVec, LedgerError> {
        self.get(&key_entry(seq))?
            .ok_or_else(|| self.corrupt(&format!("entry {seq} is missing")))
    }

    fn parse_record<'a>(&self, seq: u64, v: &'a [u8]) -> Result<Record<'a>, LedgerError> {
        Record::parse(v).ok_or_else(|| self.corrupt(&format!("record of entry {seq} is malformed")))
    }

    /// Entry `seq`, parsed.
    pub fn entry(&self, seq: u64) -> Result<Entry, LedgerError> {
        let bytes = self.entry_bytes(seq)?;
        Entry::decode(&bytes).map_err(|e| LedgerError::corrupt(&self.path, e))
    }

    /// The openings (value and salt) of entry `seq`'s components; `None` where erased.
    pub fn openings(&self, seq: u64) -> Result<Vec<Option<Opening>>, LedgerError> {
        Ok(self
            .opening_states(seq)?
            .into_iter()
            .map(OpeningState::open)
            .collect())
    }

    /// The state of each of entry `seq`'s openings: value and salt, or erased by which entry.
    pub fn opening_states(&self, seq: u64) -> Result<Vec<OpeningState>, LedgerError> {
        match self.get(&key_entry(seq))? {
            None => Ok(Vec::new()),
            Some(v) => self
                .parse_record(seq, &v)?
                .openings()
                .ok_or_else(|| self.corrupt(&format!("openings of entry {seq} are malformed"))),
        }
    }

    /// Sequence numbers of the corrections of entry `seq` (entries whose `corrects` is `seq`),
    /// oldest first.
    pub fn corrections(&self, seq: u64) -> Result<Vec<u64>, LedgerError> {
        let size = self.size();
        let mut prefix = vec![b'C'];
        prefix.extend_from_slice(&seq.to_be_bytes());
        let mut out = Vec::new();
        for kv in self.tree().scan_prefix(&prefix) {
            let (k, _) = kv.map_err(|e| self.storage(e))?;
            let c = k
                .get(9..)
                .and_then(be_u64)
                .ok_or_else(|| self.corrupt("correction index key"))?;
            if c < size {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Sequence numbers of a device's entries, oldest first, starting after `after` (exclusive),
    /// at most `limit`: a range read on the per-device index.
    pub fn device_history(
        &self,
        device_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, LedgerError> {
        let prefix = index::key_history_prefix(device_id);
        let size = self.size();
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut at = prefix.clone();
        at.extend_from_slice(&from.to_be_bytes());
        let tree = self.tree();
        // The chunk that may hold `from` is the last one starting at or before it.
        let begin = match tree.range(prefix.as_slice()..=at.as_slice()).next_back() {
            Some(kv) => kv.map_err(|e| self.storage(e))?.0.to_vec(),
            None => at,
        };
        let mut out = Vec::new();
        for kv in tree.range(begin..) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let seqs =
                index::decode_seqs(&v).ok_or_else(|| self.corrupt("device history chunk"))?;
            for seq in seqs.into_iter().filter(|s| *s >= from) {
                if seq >= size || out.len() >= limit {
                    return Ok(out);
                }
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// Ids of the devices the per-device index names, in byte order, at most `limit`: one
    /// index read per device (each jumps past the previous device's keys).
    pub fn device_ids(&self, limit: usize) -> Result<Vec<String>, LedgerError> {
        let size = self.size();
        let mut out = Vec::new();
        let mut start = vec![b'H'];
        while out.len() < limit {
            let Some(kv) = self.tree().range(start.clone()..).next() else {
                break;
            };
            let (k, _) = kv.map_err(|e| self.storage(e))?;
            if k.first() != Some(&b'H') {
                break;
            }
            let rest = &k[1..];
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| self.corrupt("device index key"))?;
            let seq = be_u64(&rest[nul + 1..]).ok_or_else(|| self.corrupt("device index key"))?;
            let id =
                std::str::from_utf8(&rest[..nul]).map_err(|_| self.corrupt("device index key"))?;
            // A device whose first entry lies beyond the applied size is not there yet.
            if seq < size {
                out.push(id.to_owned());
            }
            // Past every key of this device: its prefix followed by 0x01.
            start = index::key_history_prefix(id);
            if let Some(last) = start.last_mut() {
                *last = 1;
            }
        }
        Ok(out)
    }

    /// The command format this store applies by: the highest a command of it was applied at
    /// (see [`Store::apply_at`]).
    pub fn format(&self) -> u8 {
        self.format.load(Ordering::SeqCst)
    }

    /// The command format `cmd` needs: a command that format 1 (release 0.1.0) would apply
    /// otherwise than this release needs format 2. The leader holds such a command back while a
    /// member of the cluster applies an older format.
    pub fn required_format(&self, cmd: &Command) -> Result<u8, LedgerError> {
        let a = match cmd {
            Command::Append(a) => a,
            Command::CosignedCheckpoint { .. } => return Ok(2),
            _ => return Ok(crate::version::FORMAT_V1),
        };
        if a.signature.is_none() {
            return Ok(3);
        }
        let bytes = crate::entry::entry_bytes(0, &a.body, a.signature.as_ref());
        let Ok(body) = EntryRef::decode(&bytes) else {
            // Refused alike by every format.
            return Ok(crate::version::FORMAT_V1);
        };
        if matches!(
            body.kind,
            EventKind::Review | EventKind::Approval | EventKind::Erasure
        ) || body
            .event_id
            .is_some_and(|id| id.starts_with(ERASURE_ID_PREFIX))
        {
            return Ok(2);
        }
        if let Some(c) = body.corrects {
            if c < self.size() {
                let record = self.record(c)?;
                let target = self.parse_record(c, &record)?;
                let target = EntryRef::decode(target.entry)
                    .map_err(|e| LedgerError::corrupt(&self.path, e))?;
                if target.device_id != body.device_id {
                    return Ok(2);
                }
            }
        }
        Ok(crate::version::FORMAT_V1)
    }

    /// Sequence number of the entry that carries `event_id`, if any.
    pub fn find_event_id(&self, event_id: &str) -> Result<Option<u64>, LedgerError> {
        let (key, tag) = index::key_bucket(event_id);
        let tree = self.tree();
        let Some(v) = tree.get(key).map_err(|e| self.storage(e))? else {
            return Ok(None);
        };
        let size = self.size();
        let records = index::decode_bucket(&v).ok_or_else(|| self.corrupt("event id bucket"))?;
        for (seq, _) in records.into_iter().filter(|(s, t)| *s < size && *t == tag) {
            if self.event_id_in(&tree, seq)?.as_deref() == Some(event_id) {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    /// The event id of entry `seq` of `tree` (`None`: no such entry, or it has none).
    fn event_id_in(&self, tree: &sled::Tree, seq: u64) -> Result<Option<String>, LedgerError> {
        event_id_at(tree, &self.path, seq)
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
        for kv in self.tree().scan_prefix(b"K") {
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

    /// Reads a metadata value written with [`Store::apply`] (what is applied, flushed or not).
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        if let Some(v) = self.lock_writer().metas.get(name) {
            return Ok(Some(v.clone()));
        }
        // Layout 2 kept each value under its own key.
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
        TreeReader {
            store: self,
            tree: &self.tree(),
        }
        .perfect(level, index)
    }
}

/// What an apply has produced so far and not yet written: its entries' leaf and perfect-subtree
/// hashes (in order, from `base`) and the size of a checkpoint it recorded.
struct Pending {
    base: u64,
    entries: Vec<(Hash, Vec<Hash>)>,
    checkpoint: Option<u64>,
}

impl Pending {
    /// Entries applied so far, this apply's included.
    fn size(&self) -> u64 {
        self.base + self.entries.len() as u64
    }
}

/// Reads the Merkle tree as an apply in progress sees it: its own entries from [`Pending`], the
/// earlier ones from the store.
struct PendingReader<'a> {
    store: &'a Store,
    pending: &'a Pending,
}

impl NodeReader for PendingReader<'_> {
    type Error = LedgerError;
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        let last = 1u64
            .checked_shl(level.into())
            .and_then(|width| index.checked_add(1)?.checked_mul(width))
            .map(|end| end - 1);
        let Some(at) = last.and_then(|l| l.checked_sub(self.pending.base)) else {
            return self.store.perfect(level, index);
        };
        let missing = || {
            self.store
                .corrupt(&format!("tree node {level}/{index} is not in the apply"))
        };
        let (leaf, nodes) = usize::try_from(at)
            .ok()
            .and_then(|at| self.pending.entries.get(at))
            .ok_or_else(missing)?;
        match level {
            0 => Ok(*leaf),
            l => nodes.get(usize::from(l) - 1).copied().ok_or_else(missing),
        }
    }
}

/// Reads the Merkle tree of one ledger tree (the current one, or one being installed).
struct TreeReader<'a> {
    store: &'a Store,
    tree: &'a sled::Tree,
}

impl NodeReader for TreeReader<'_> {
    type Error = LedgerError;
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        let store = self.store;
        // The subtree's last leaf is entry ((index + 1) << level) - 1, whose record holds the
        // subtree's hash (level 0: the leaf hash of its bytes).
        let last = 1u64
            .checked_shl(level.into())
            .and_then(|width| index.checked_add(1)?.checked_mul(width))
            .map(|end| end - 1)
            .ok_or_else(|| store.corrupt(&format!("tree node {level}/{index} is out of range")))?;
        let v = self
            .tree
            .get(key_entry(last))
            .map_err(|e| store.storage(e))?
            .ok_or_else(|| store.corrupt(&format!("entry {last} is missing")))?;
        let record = store.parse_record(last, &v)?;
        if level == 0 {
            return Ok(leaf_hash(record.entry));
        }
        record
            .node(level)
            .ok_or_else(|| store.corrupt(&format!("tree node {level}/{index} is missing")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{ComponentInput, DisclosureClass, EventInput};
    use crate::ledger::prepare;
    use ed25519_dalek::SigningKey;

    fn append(i: u64, key: &SigningKey) -> AppendCommand {
        let c = |name: &str, value: String| ComponentInput {
            name: name.into(),
            class: DisclosureClass::Maintenance,
            value,
        };
        let event = EventInput {
            kind: EventKind::Repair,
            device_id: format!("pump-{}", i % 3),
            occurred_at: None,
            // Values of varying length, one of them empty.
            components: (0..(i % 4))
                .map(|k| {
                    c(
                        &format!("part {k}"),
                        format!("\"{}\"", "x".repeat((i * k) as usize % 40)),
                    )
                })
                .chain(
                    [c("empty", "\"\"".into())]
                        .into_iter()
                        .filter(|_| i.is_multiple_of(5)),
                )
                .collect(),
            corrects: None,
            event_id: Some(format!("evt-{i}")),
        };
        prepare(event, "biomed:test", 1, key, 1_700_000_000_000 + i as i64).expect("prepare")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A new store's sled records are compressed; a store made without compression (every
    /// store before it) opens, takes appends and reads back without it, also after a reopen.
    #[test]
    fn new_stores_compress_and_older_ones_keep_their_records() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let cmds = |from: u64| {
            (from..from + 40)
                .map(|i| Command::Append(append(i, &key)))
                .collect::<Vec<_>>()
        };
        let new = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(new.path()).expect("open");
            store.apply(&cmds(0), &[]).expect("apply");
            store.flush_blocking().expect("flush");
        }
        let store = Store::open(new.path()).expect("reopen");
        assert_eq!(store.size(), 40);
        assert_eq!(store.entry(39).expect("read").body.device_id, "pump-0");
        drop(store);
        assert_eq!(stored_compression(new.path()).expect("conf"), Some(true));

        let old = tempfile::tempdir().expect("tempdir");
        {
            // What a binary before compression made: sled's defaults, records as they are.
            let db = sled::Config::new()
                .path(old.path())
                .flush_every_ms(None)
                .open()
                .expect("sled");
            db.flush().expect("flush");
        }
        assert_eq!(stored_compression(old.path()).expect("conf"), Some(false));
        for round in 0..2 {
            let store = Store::open(old.path()).expect("open an uncompressed store");
            store.apply(&cmds(round * 40), &[]).expect("apply");
            store.flush_blocking().expect("flush");
            assert_eq!(store.size(), (round + 1) * 40);
            let e = store.entry(round * 40 + 7).expect("read");
            assert_eq!(e.body.device_id, format!("pump-{}", (round * 40 + 7) % 3));
            assert_eq!(
                store
                    .find_event_id(&format!("evt-{}", round * 40 + 39))
                    .expect("find"),
                Some(round * 40 + 39)
            );
        }
        assert_eq!(stored_compression(old.path()).expect("conf"), Some(false));
        assert_eq!(
            stored_compression(&old.path().join("none")).expect("no conf"),
            None
        );
    }

    /// An event-id index key left by an apply that did not count, whose entry a power cut lost
    /// (found by the power-loss rounds: the gateways then disagreed on the ledger's size), does
    /// not make the event a duplicate when the apply is replayed.
    #[test]
    fn an_orphan_event_id_key_beyond_the_ledger_is_not_a_duplicate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[9; 32]);
        let store = Store::open(dir.path()).expect("open");
        let first = store
            .apply(&[Command::Append(append(0, &key))], &[])
            .expect("apply");
        assert!(matches!(first[0], ApplyOutcome::Appended { seq: 0, .. }));
        // What a cut left: the index record of event 1 at seq 1, without its entry or size record.
        let (bucket, tag) = index::key_bucket("evt-1");
        store
            .tree()
            .insert(bucket, index::encode_bucket(&[(1, tag)]))
            .expect("insert");
        assert_eq!(store.find_event_id("evt-1").expect("find"), None);
        let replay = store
            .apply(&[Command::Append(append(1, &key))], &[])
            .expect("apply");
        assert!(
            matches!(replay[0], ApplyOutcome::Appended { seq: 1, .. }),
            "{replay:?}"
        );
        // A real duplicate still is one.
        let again = store
            .apply(&[Command::Append(append(1, &key))], &[])
            .expect("apply");
        assert!(
            matches!(again[0], ApplyOutcome::Duplicate { seq: 1 }),
            "{again:?}"
        );
    }

    /// Every perfect subtree the store answers from its entry records is the one a frontier fed
    /// with the same leaves emits, every root matches, openings come back as given, and all of it
    /// survives a reopen.
    #[test]
    fn entry_records_answer_subtrees_roots_and_openings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[7; 32]);
        let cmds: Vec<AppendCommand> = (0..77).map(|i| append(i, &key)).collect();
        let mut reference = HashMap::new();
        let mut frontier = Frontier::new();
        let mut roots = vec![frontier.root()];
        {
            let store = Store::open(dir.path()).expect("open");
            let mut next = 0;
            for size in [1usize, 5, 31, 2, 38] {
                let batch: Vec<Command> = cmds[next..next + size]
                    .iter()
                    .cloned()
                    .map(Command::Append)
                    .collect();
                let outcomes = store.apply(&batch, &[]).expect("apply");
                for (k, o) in outcomes.iter().enumerate() {
                    let ApplyOutcome::Appended { seq, leaf } = o else {
                        panic!("command {} not appended: {o:?}", next + k);
                    };
                    assert_eq!(*seq, (next + k) as u64);
                    frontier.push(*leaf, |l, i, h| {
                        reference.insert((l, i), *h);
                    });
                    roots.push(frontier.root());
                }
                next += size;
                // Applied but not flushed: invisible to readers.
                assert_eq!(store.size(), (next - size) as u64);
                runtime().block_on(store.flush()).expect("flush");
                assert_eq!(store.size(), next as u64);
            }
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.size(), 77);
        for (&(level, index), hash) in &reference {
            assert_eq!(
                &store.perfect(level, index).expect("perfect"),
                hash,
                "{level}/{index}"
            );
        }
        assert_eq!(reference.len(), 77 + 38 + 19 + 9 + 4 + 2 + 1);
        for (size, root) in roots.iter().enumerate() {
            assert_eq!(
                &store.root(size as u64).expect("root"),
                root,
                "root of {size}"
            );
        }
        for (seq, cmd) in cmds.iter().enumerate() {
            let want: Vec<Option<Opening>> = cmd.openings.iter().cloned().map(Some).collect();
            assert_eq!(store.openings(seq as u64).expect("openings"), want);
            let mut body = Vec::new();
            store
                .entry(seq as u64)
                .expect("entry")
                .body
                .encode(&mut body);
            assert_eq!(body, cmd.body);
        }
        assert!(store
            .openings(77)
            .expect("openings past the end")
            .is_empty());
        assert!(store.perfect(0, 77).is_err());
        assert!(store.perfect(64, 0).is_err());
        assert!(store.perfect(63, u64::MAX).is_err());
    }

    /// Every strict prefix of a record, and a record with a bad tag, is refused without a panic.
    #[test]
    fn truncated_or_damaged_records_are_refused() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let a = append(3, &key);
        let nodes = [[1u8; 32], [2u8; 32]];
        let record = encode_record(b"entry bytes", &nodes, &a.openings).expect("encode");
        let parsed = Record::parse(&record).expect("parse");
        assert_eq!(parsed.entry, b"entry bytes");
        assert_eq!(parsed.node(1), Some([1u8; 32]));
        assert_eq!(parsed.node(2), Some([2u8; 32]));
        assert_eq!(parsed.node(3), None);
        assert_eq!(parsed.node(0), None);
        let want: Vec<OpeningState> = a.openings.iter().cloned().map(OpeningState::Open).collect();
        assert_eq!(parsed.openings(), Some(want));
        for cut in 0..record.len() {
            let r = Record::parse(&record[..cut]).and_then(|r| r.openings());
            assert!(r.is_none(), "prefix of {cut} bytes accepted");
        }
        let mut bad = record.clone();
        let tag = 4 + 11 + 1 + 64 + 4;
        bad[tag] = 3;
        assert!(Record::parse(&bad).and_then(|r| r.openings()).is_none());
    }

    fn event(device: &str, id: &str, corrects: Option<u64>) -> EventInput {
        EventInput {
            kind: EventKind::Calibration,
            device_id: device.into(),
            occurred_at: None,
            components: vec![
                ComponentInput {
                    name: "result".into(),
                    class: DisclosureClass::Maintenance,
                    value: "\"pass\"".into(),
                },
                ComponentInput {
                    name: "patient_mrn".into(),
                    class: DisclosureClass::Patient,
                    value: "\"MRN1\"".into(),
                },
            ],
            corrects,
            event_id: Some(id.into()),
        }
    }

    fn erasure(device: &str, seq: u64, name: &str) -> EventInput {
        EventInput {
            kind: EventKind::Erasure,
            device_id: device.into(),
            occurred_at: None,
            components: Vec::new(),
            corrects: None,
            event_id: Some(crate::entry::erasure_event_id(seq, name)),
        }
    }

    fn signed(
        kind: EventKind,
        device: &str,
        id: &str,
        signer: &str,
        of: Option<u64>,
    ) -> EventInput {
        let mut sig = serde_json::json!({"id": signer, "name": signer, "role": "biomed",
            "meaning": "performed"});
        if let Some(of) = of {
            sig["of"] = of.into();
            sig["meaning"] = "approved".into();
        }
        EventInput {
            kind,
            device_id: device.into(),
            occurred_at: None,
            components: vec![ComponentInput {
                name: SIGNATURE_COMPONENT.into(),
                class: DisclosureClass::Maintenance,
                value: sig.to_string(),
            }],
            corrects: None,
            event_id: Some(id.into()),
        }
    }

    /// The performer's own review or approval is refused by apply itself (a command that did
    /// not come through the API, as an import or a raw Raft command), whether the same
    /// certificate (author) or the same staff id on another one signs it, in the batch of its
    /// target too; one by someone else is appended; a review without a signature naming its
    /// entry, or of another device's entry, is refused.
    #[test]
    fn the_performers_own_approval_is_refused_in_apply() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[5; 32]);
        let by = |author: &str, e: EventInput| {
            Command::Append(prepare(e, author, 1, &key, 1).expect("prepare"))
        };
        let store = Store::open(dir.path()).expect("open");
        let cal = |id: &str| signed(EventKind::Calibration, "vent-1", id, "t100", None);
        let approve = |id: &str, signer: &str, of: u64| {
            signed(EventKind::Approval, "vent-1", id, signer, Some(of))
        };
        let mut unsigned = approve("u", "s200", 0);
        unsigned.components.clear();
        let out = store
            .apply(
                &[
                    by("sha256:tech", cal("c0")),
                    by("sha256:tech", approve("a1", "s200", 0)),
                    by("sha256:tech-2", approve("a2", "t100", 0)),
                    by("sha256:sup", unsigned),
                    by(
                        "sha256:sup",
                        signed(EventKind::Review, "pump-x", "r", "s200", Some(0)),
                    ),
                    by("sha256:sup", approve("a3", "s200", 0)),
                ],
                &[],
            )
            .expect("apply");
        let refused = |o: &ApplyOutcome, want: &str| match o {
            ApplyOutcome::Refused { reason } => assert!(reason.contains(want), "{reason}"),
            other => panic!("{other:?}, wanted a refusal with {want:?}"),
        };
        assert!(matches!(out[0], ApplyOutcome::Appended { seq: 0, .. }));
        refused(&out[1], "separation of duties: t100 performed entry 0");
        refused(&out[2], "separation of duties");
        refused(&out[3], "carries its signature");
        refused(&out[4], "about device \"vent-1\"");
        assert!(matches!(out[5], ApplyOutcome::Appended { seq: 1, .. }));
        // In a later batch (the target read from the tree), the same.
        let out = store
            .apply(&[by("sha256:tech", approve("a4", "s300", 0))], &[])
            .expect("apply");
        refused(&out[0], "someone other than the performer");
    }

    /// Format 1 (release 0.1.0) rules while the cluster applies format 1: a cross-device
    /// correction and an `erasure:` event id on another kind are appended as 0.1.0 appends them,
    /// the kinds 0.1.0 does not know are refused as it refuses them; the first format-2 command
    /// raises the store's format for good (a later format-1 entry is applied by format 2), the
    /// leader's `required_format` names what needs 2, and an unknown format is an error that
    /// names both versions, with nothing applied.
    #[test]
    fn format_one_applies_as_release_0_1_0_until_the_cluster_moves_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[6; 32]);
        let cmd = |e: EventInput| Command::Append(prepare(e, "t", 1, &key, 1).expect("prepare"));
        let store = Store::open(dir.path()).expect("open");
        let v1 = |_: usize| crate::version::FORMAT_V1;
        let register = Command::RegisterNode {
            node_id: 1,
            public_key: key.verifying_key().to_bytes(),
        };
        store.apply_at(&[register], v1, &[]).expect("register");
        assert_eq!(store.format(), 1);
        let mut review = event("vent-icu-07", "r", Some(0));
        review.kind = EventKind::Review;
        let cross = cmd(event("pump-x", "b", Some(0)));
        let cmds = [
            cmd(event("vent-icu-07", "a", None)),
            cross.clone(),
            cmd(event("vent-icu-07", "erasure:0:result", None)),
            cmd(review.clone()),
            cmd(erasure("vent-icu-07", 0, "patient_mrn")),
        ];
        let out = store.apply_at(&cmds, v1, &[]).expect("apply");
        store.publish();
        assert!(matches!(out[0], ApplyOutcome::Appended { seq: 0, .. }));
        assert!(matches!(out[1], ApplyOutcome::Appended { seq: 1, .. }));
        assert!(matches!(out[2], ApplyOutcome::Appended { seq: 2, .. }));
        for o in &out[3..] {
            assert!(
                matches!(o, ApplyOutcome::Refused { reason } if reason.contains("needs command format 2")),
                "{o:?}"
            );
        }
        assert_eq!(store.format(), 1);
        // What the leader holds back while a member applies format 1.
        assert_eq!(store.required_format(&cross).expect("required"), 2);
        assert_eq!(store.required_format(&cmds[3]).expect("required"), 2);
        assert_eq!(store.required_format(&cmds[4]).expect("required"), 2);
        let same = cmd(event("vent-icu-07", "s", Some(0)));
        assert_eq!(store.required_format(&same).expect("required"), 1);
        // An unknown format: nothing applied, both versions named.
        let e = store
            .apply_at(std::slice::from_ref(&same), |_| 9, &[])
            .expect_err("format 9");
        let msg = e.to_string();
        assert!(
            msg.contains("format 9") && msg.contains(crate::version::RELEASE),
            "{msg}"
        );
        assert_eq!(store.size(), 3);
        // Format 2 once: the store keeps its rules, also for entries that say format 1. (A
        // review is then checked as a Part 11 record: signed, by someone else, naming entry 0.)
        let review = signed(EventKind::Review, "vent-icu-07", "r", "s200", Some(0));
        let review = Command::Append(prepare(review, "sup", 1, &key, 1).expect("prepare"));
        let out = store.apply_at(&[review], |_| 2, &[]).expect("format 2");
        assert!(matches!(out[0], ApplyOutcome::Appended { seq: 3, .. }));
        assert_eq!(store.format(), 2);
        let out = store
            .apply_at(&[cmd(event("pump-x", "b2", Some(0)))], v1, &[])
            .expect("apply");
        assert!(
            matches!(&out[0], ApplyOutcome::Refused { reason } if reason.contains("same device")),
            "{out:?}"
        );
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.format(), 2);
    }

    /// Entries of version 2 (no signature) need command format 3: refused alike by every
    /// replica below it, held back by the leader (`required_format`), written as version 2 from
    /// format 3 on, after which signed appends are still read as version 1. Such commands keep
    /// release 0.2.0's bytes: a signed one serialises as before, an unsigned one without the field.
    #[test]
    fn unsigned_appends_need_format_three_and_become_version_two_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[6; 32]);
        let store = Store::open(dir.path()).expect("open");
        let signed = prepare(event("vent-icu-07", "a", None), "t", 1, &key, 1).expect("prepare");
        let unsigned =
            crate::ledger::prepare_at(3, event("vent-icu-07", "b", None), "t", 1, &key, 1)
                .expect("prepare");
        assert!(signed.signature.is_some() && unsigned.signature.is_none());
        let bytes = rmp_serde::to_vec_named(&unsigned).expect("encode");
        assert!(!bytes.windows(9).any(|w| w == b"signature"));
        let back: AppendCommand = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, unsigned);
        let back: AppendCommand =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&signed).expect("encode"))
                .expect("decode");
        assert_eq!(back, signed);

        let (signed, unsigned) = (Command::Append(signed), Command::Append(unsigned));
        assert_eq!(store.required_format(&unsigned).expect("required"), 3);
        assert_eq!(store.required_format(&signed).expect("required"), 1);
        let out = store
            .apply_at(&[signed.clone(), unsigned.clone()], |_| 2, &[])
            .expect("apply");
        assert!(matches!(out[0], ApplyOutcome::Appended { seq: 0, .. }));
        assert!(
            matches!(&out[1], ApplyOutcome::Refused { reason } if reason.contains("needs command format 3")),
            "{out:?}"
        );
        assert_eq!(store.format(), 2);
        let out = store
            .apply_at(&[unsigned, signed], |_| 3, &[])
            .expect("apply");
        assert!(matches!(out[0], ApplyOutcome::Appended { seq: 1, .. }));
        store.publish();
        assert_eq!(store.format(), 3);
        let versions: Vec<u8> = (0..2)
            .map(|s| store.entry_bytes(s).expect("entry")[0])
            .collect();
        assert_eq!(versions, [1, 2]);
        drop(store);
        assert_eq!(Store::open(dir.path()).expect("reopen").format(), 3);
    }

    /// A correction of another device's entry and an erasure that does not match its target are
    /// refused by apply itself (so no replica accepts them), in the same batch as their target
    /// too; an erasure drops value and salt, leaves the entry bytes and the root as they were,
    /// is idempotent, survives a reopen, and the export marks it; a value stripped without an
    /// erasure entry, or a marker pointing at the wrong entry, does not verify.
    #[test]
    fn corrections_stay_on_their_device_and_erasure_marks_exports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[5; 32]);
        let cmd = |e: EventInput| Command::Append(prepare(e, "t", 1, &key, 1).expect("prepare"));
        let store = Store::open(dir.path()).expect("open");
        store
            .apply(
                &[Command::RegisterNode {
                    node_id: 1,
                    public_key: key.verifying_key().to_bytes(),
                }],
                &[],
            )
            .expect("register");
        let out = store
            .apply(
                &[
                    cmd(event("vent-icu-07", "a", None)),
                    // Same batch as its target: still checked.
                    cmd(event("pump-x", "b", Some(0))),
                    cmd(event("vent-icu-07", "c", Some(0))),
                    cmd(erasure("pump-x", 0, "patient_mrn")),
                    cmd(erasure("vent-icu-07", 0, "nothing")),
                    cmd(erasure("vent-icu-07", 0, "signature")),
                    cmd(erasure("vent-icu-07", 0, "patient_mrn")),
                ],
                &[],
            )
            .expect("apply");
        store.publish();
        assert!(matches!(out[0], ApplyOutcome::Appended { seq: 0, .. }));
        let refused = |o: &ApplyOutcome, want: &str| match o {
            ApplyOutcome::Refused { reason } => assert!(reason.contains(want), "{reason}"),
            other => panic!("{other:?}, wanted a refusal with {want:?}"),
        };
        refused(&out[1], "a correction concerns the same device");
        assert!(matches!(out[2], ApplyOutcome::Appended { seq: 1, .. }));
        refused(&out[3], "about device \"vent-icu-07\"");
        refused(&out[4], "no component \"nothing\"");
        refused(&out[5], "never erased");
        assert!(matches!(out[6], ApplyOutcome::Appended { seq: 2, .. }));
        assert_eq!(store.corrections(0).expect("corrections"), vec![1]);
        assert_eq!(
            store.opening_states(0).expect("states")[1],
            OpeningState::Erased { by: Some(2) }
        );
        assert!(matches!(
            store.opening_states(0).expect("states")[0],
            OpeningState::Open(_)
        ));
        // Again: a duplicate, nothing changes.
        let again = store
            .apply(&[cmd(erasure("vent-icu-07", 0, "patient_mrn"))], &[])
            .expect("apply");
        assert_eq!(again, vec![ApplyOutcome::Duplicate { seq: 2 }]);
        let root = store.root(3).expect("root");
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.root(3).expect("root"), root);
        assert_eq!(
            store.opening_states(0).expect("states")[1],
            OpeningState::Erased { by: Some(2) }
        );
        let head = crate::sth::SignedTreeHead::sign(3, root, 9, 1, &key);
        let mut text = Vec::new();
        crate::export::write_export(&store, &head, &None, &mut text).expect("export");
        let text = String::from_utf8(text).expect("utf8");
        assert!(text.contains("{\"erased_by\":2}"), "{text}");
        let check = |t: &str| {
            crate::export::verify(
                &mut t.as_bytes(),
                &crate::export::VerifyOptions::default(),
                &mut |_, _| {},
            )
        };
        let report = check(&text).expect("verifies");
        assert_eq!(report.erased_components, 1);
        // A value stripped from entry 1 without an erasure entry.
        let lines: Vec<&str> = text.lines().collect();
        let rec: serde_json::Value = serde_json::from_str(lines[2]).expect("line");
        let mut stripped = rec.clone();
        stripped["openings"][1] = serde_json::Value::Null;
        let mut t = lines.clone();
        let s1 = stripped.to_string();
        t[2] = &s1;
        let e = check(&t.join("\n")).expect_err("stripped");
        assert_eq!(e.seq, Some(1));
        assert!(
            e.reason.contains("\"patient_mrn\"") && e.reason.contains("stripped"),
            "{e}"
        );
        // A marker that points at an erasure of another component.
        let mut forged = rec;
        forged["openings"][0] = serde_json::json!({"erased_by": 2});
        let s2 = forged.to_string();
        t[2] = &s2;
        let e = check(&t.join("\n")).expect_err("forged marker");
        assert_eq!(e.seq, Some(1));
        assert!(
            e.reason.contains("\"result\"") && e.reason.contains("entry 2"),
            "{e}"
        );
    }

    /// A store written with another key layout is refused on open instead of misread.
    /// Collects a view's pairs, as a snapshot file would carry them.
    fn view_pairs(view: &StoreView) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        view.for_each_pair(|k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .expect("pairs");
        out
    }

    /// A view copies the store as it was when taken, even while applies go on; installed on
    /// another store (which had a history of its own) it gives the same size, root, entries and
    /// indexes, also after a reopen, and the replaced tree is gone.
    #[test]
    fn a_view_installed_elsewhere_is_the_store_as_it_was() {
        let a_dir = tempfile::tempdir().expect("tempdir");
        let b_dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[4; 32]);
        let cmds: Vec<Command> = (0..40).map(|i| Command::Append(append(i, &key))).collect();
        let a = Store::open(a_dir.path()).expect("open a");
        a.apply(&cmds[..25], &[("m", b"at 25".to_vec())])
            .expect("apply");
        a.publish();
        let view = a.view().expect("view");
        let (size, root) = (view.size(), view.root());
        // Applies after the view: none of it may show up in the copy.
        a.apply(&cmds[25..], &[("m", b"at 40".to_vec())])
            .expect("apply");
        a.publish();
        let pairs = view_pairs(&view);
        assert_eq!(view.meta("m"), Some(b"at 25".to_vec()));
        {
            let b = Store::open(b_dir.path()).expect("open b");
            let other = SigningKey::from_bytes(&[5; 32]);
            b.apply(
                &(100..103)
                    .map(|i| Command::Append(append(i, &other)))
                    .collect::<Vec<_>>(),
                &[],
            )
            .expect("apply b");
            let installed = b.install(pairs.iter().cloned().map(Ok)).expect("install");
            assert_eq!(installed, size);
            assert_eq!(b.applied_root(), (size, root));
            assert_eq!(b.meta("m").expect("meta"), Some(b"at 25".to_vec()));
            assert_eq!(view_pairs(&b.view().expect("view b")), pairs);
        }
        let b = Store::open(b_dir.path()).expect("reopen b");
        assert_eq!((b.size(), b.root(size).expect("root")), (size, root));
        for seq in 0..size {
            assert_eq!(
                b.entry_bytes(seq).expect("b"),
                a.entry_bytes(seq).expect("a")
            );
        }
        assert_eq!(b.find_event_id("evt-24").expect("find"), Some(24));
        assert_eq!(b.find_event_id("evt-25").expect("find"), None);
        assert_eq!(b.find_event_id("evt-101").expect("find"), None);
        assert_eq!(
            b.device_history("pump-1", None, 100).expect("history"),
            a.device_history("pump-1", None, 100)
                .expect("history")
                .into_iter()
                .filter(|s| *s < size)
                .collect::<Vec<_>>()
        );
        let names: Vec<Vec<u8>> = b
            .db()
            .tree_names()
            .into_iter()
            .map(|n| n.to_vec())
            .filter(|n| is_ledger_tree(n))
            .collect();
        assert_eq!(names, vec![b"ledger.1".to_vec()], "one ledger tree left");
        // Applying goes on from the installed state.
        let out = b.apply(&cmds[25..26], &[]).expect("apply after install");
        assert!(
            matches!(out[0], ApplyOutcome::Appended { seq: 25, .. }),
            "{out:?}"
        );
    }

    /// An install whose pairs fail half-way or do not form a ledger changes nothing, and a tree
    /// left by an install that crashed before it switched over is dropped at the next open.
    #[test]
    fn a_failed_or_interrupted_install_leaves_the_old_state() {
        let a_dir = tempfile::tempdir().expect("tempdir");
        let b_dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[6; 32]);
        let cmds: Vec<Command> = (0..20).map(|i| Command::Append(append(i, &key))).collect();
        let a = Store::open(a_dir.path()).expect("open a");
        a.apply(&cmds, &[]).expect("apply");
        a.publish();
        let pairs = view_pairs(&a.view().expect("view"));
        let b = Store::open(b_dir.path()).expect("open b");
        b.apply(&cmds[..3], &[]).expect("apply b");
        b.publish();
        let before = b.applied_root();
        // The stream breaks off.
        let broken = pairs
            .iter()
            .cloned()
            .map(Ok)
            .take(5)
            .chain(std::iter::once(Err(LedgerError::Refused("cut".into()))));
        assert!(b.install(broken).is_err());
        // The last entry is missing: the size record does not match the entries.
        let last = key_entry(19);
        let holed = pairs
            .iter()
            .filter(|(k, _)| k.as_slice() != last.as_slice())
            .cloned()
            .map(Ok);
        assert!(b.install(holed).is_err());
        assert_eq!(b.applied_root(), before);
        assert_eq!(
            b.entry_bytes(2).expect("entry"),
            a.entry_bytes(2).expect("a")
        );
        // A crash after filling a new tree but before switching: the tree stays behind.
        let left = b.db().open_tree("ledger.1").expect("tree");
        for (k, v) in &pairs {
            left.insert(k.as_slice(), v.as_slice()).expect("insert");
        }
        drop(left);
        runtime().block_on(b.flush()).expect("flush");
        drop(b);
        let b = Store::open(b_dir.path()).expect("reopen");
        assert_eq!(b.applied_root(), before);
        assert!(
            !b.db()
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == b"ledger.1"),
            "the unfinished tree was dropped"
        );
    }

    /// A checkpoint's outcome depends only on the commands before it, not on how they were cut
    /// into applies (openraft applies several log entries at once on a follower or after a
    /// restart): before, a checkpoint of entries of the same apply was refused there and
    /// recorded on the leader, and the gateways' exports differed.
    #[test]
    fn checkpoint_outcomes_do_not_depend_on_how_applies_are_cut() {
        let key = SigningKey::from_bytes(&[8; 32]);
        let appends: Vec<Command> = (0..13).map(|i| Command::Append(append(i, &key))).collect();
        let roots = {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path()).expect("open");
            let mut roots = vec![store.applied_root().1];
            for a in &appends {
                store.apply(std::slice::from_ref(a), &[]).expect("apply");
                roots.push(store.applied_root().1);
            }
            roots
        };
        let head = |size: usize| {
            Command::Checkpoint(crate::sth::SignedTreeHead::sign(
                size as u64,
                roots[size.min(roots.len() - 1)],
                1_700_000_000_000,
                1,
                &key,
            ))
        };
        let mut commands = vec![Command::RegisterNode {
            node_id: 1,
            public_key: key.verifying_key().to_bytes(),
        }];
        commands.extend(appends[..5].iter().cloned());
        commands.extend([head(5), head(2)]);
        commands.extend(appends[5..9].iter().cloned());
        commands.extend([head(7), head(9), head(6)]);
        commands.extend(appends[9..].iter().cloned());
        commands.extend([head(13), head(14)]);
        let run = |cuts: &[usize]| {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path()).expect("open");
            let mut outcomes = Vec::new();
            let mut from = 0;
            for &to in cuts.iter().chain([commands.len()].iter()) {
                outcomes.extend(store.apply(&commands[from..to], &[]).expect("apply"));
                from = to;
            }
            store.publish();
            let latest = store
                .latest_checkpoint()
                .expect("checkpoint")
                .map(|c| c.size);
            (outcomes, latest)
        };
        let one_by_one: Vec<usize> = (1..commands.len()).collect();
        let (want, latest) = run(&one_by_one);
        let kinds: Vec<String> = want
            .iter()
            .filter_map(|o| match o {
                ApplyOutcome::Checkpointed { size } => Some(format!("C{size}")),
                ApplyOutcome::Refused { .. } => Some("R".into()),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, ["C5", "R", "C7", "C9", "R", "C13", "R"], "{want:?}");
        assert_eq!(latest, Some(13));
        assert_eq!(run(&[]), (want.clone(), latest), "all in one apply");
        for cut in 1..commands.len() {
            assert_eq!(run(&[cut]), (want.clone(), latest), "cut at {cut}");
        }
    }

    #[test]
    fn device_ids_lists_each_device_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[9; 32]);
        let cmds: Vec<Command> = (0..7).map(|i| Command::Append(append(i, &key))).collect();
        let store = Store::open(dir.path()).expect("open");
        assert!(store.device_ids(10).expect("ids").is_empty());
        store.apply(&cmds, &[]).expect("apply");
        store.publish();
        assert_eq!(
            store.device_ids(10).expect("ids"),
            ["pump-0", "pump-1", "pump-2"]
        );
        assert_eq!(store.device_ids(2).expect("ids"), ["pump-0", "pump-1"]);
    }

    #[test]
    fn an_apply_without_its_size_record_is_removed_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[9; 32]);
        let cmds: Vec<Command> = (0..6).map(|i| Command::Append(append(i, &key))).collect();
        let (before, bytes) = {
            let store = Store::open(dir.path()).expect("open");
            store
                .apply(&cmds[..4], &[("m", b"one".to_vec())])
                .expect("apply");
            let before = store.get(META_SIZE).expect("get").expect("size record");
            // The next apply writes all of its keys, then "crashes" before its size record
            // counts: the old record is put back, as a crash after the other writes leaves it.
            store
                .apply(&cmds[4..], &[("m", b"two".to_vec())])
                .expect("apply");
            store.publish();
            let bytes = store.entry_bytes(4).expect("entry 4");
            store
                .tree()
                .insert(META_SIZE, before.clone())
                .expect("restore");
            runtime().block_on(store.flush()).expect("flush");
            (before, bytes)
        };
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.size(), 4);
        assert_eq!(store.meta("m").expect("meta"), Some(b"one".to_vec()));
        assert_eq!(store.get(META_SIZE).expect("get"), Some(before));
        assert!(store.get(&key_entry(4)).expect("get").is_none());
        assert!(store.get(&key_entry(5)).expect("get").is_none());
        assert_eq!(store.find_event_id("evt-4").expect("find"), None);
        let bucket = store.get(&index::key_bucket("evt-5").0).expect("get");
        assert!(
            bucket.is_none_or(|b| index::decode_bucket(&b)
                .expect("bucket")
                .iter()
                .all(|(seq, _)| *seq != 5)),
            "the removed entry's event id record is gone"
        );
        assert_eq!(
            store.device_history("pump-1", None, 10).expect("history"),
            vec![1]
        );
        // Applied again, the same commands give the same entries, not duplicates.
        let out = store.apply(&cmds[4..], &[]).expect("apply again");
        assert!(
            matches!(out[0], ApplyOutcome::Appended { seq: 4, .. }),
            "{out:?}"
        );
        store.publish();
        assert_eq!(store.entry_bytes(4).expect("entry 4"), bytes);
        assert_eq!(
            store.device_history("pump-1", None, 10).expect("history"),
            vec![1, 4]
        );
    }

    #[test]
    fn a_layout_2_store_is_read_and_upgraded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[4; 32]);
        {
            let store = Store::open(dir.path()).expect("open");
            store
                .apply(&[Command::Append(append(1, &key))], &[])
                .expect("apply");
            // What layout 2 wrote: an 8-byte size and metadata under its own key.
            store
                .tree()
                .insert(META_SIZE, &1u64.to_be_bytes())
                .expect("size");
            store.tree().insert(META_LAYOUT, &[2u8]).expect("layout");
            store
                .tree()
                .insert(key_meta("raft_applied"), &b"old"[..])
                .expect("meta");
            runtime().block_on(store.flush()).expect("flush");
        }
        let store = Store::open(dir.path()).expect("reopen a layout-2 store");
        assert_eq!(store.size(), 1);
        assert_eq!(
            store.meta("raft_applied").expect("meta"),
            Some(b"old".to_vec())
        );
        store
            .apply(
                &[Command::Append(append(2, &key))],
                &[("raft_applied", b"new".to_vec())],
            )
            .expect("apply");
        assert_eq!(
            store.meta("raft_applied").expect("meta"),
            Some(b"new".to_vec())
        );
        assert_eq!(
            store.get(META_LAYOUT).expect("get").as_deref(),
            Some(&[LAYOUT][..])
        );
        let view = store.view().expect("view");
        assert_eq!(view.meta("raft_applied"), Some(b"new".to_vec()));
    }

    #[test]
    fn commands_are_binary_in_messagepack_and_old_text_entries_still_decode() {
        use serde::Serialize;
        let key = SigningKey::from_bytes(&[3; 32]);
        let cmds = vec![
            Command::Append(append(7, &key)),
            Command::RegisterNode {
                node_id: 2,
                public_key: key.verifying_key().to_bytes(),
            },
            Command::Checkpoint(crate::sth::SignedTreeHead::sign(
                1,
                [5; 32],
                1_700_000_000_000,
                2,
                &key,
            )),
        ];
        let binary = rmp_serde::to_vec_named(&cmds).expect("encode");
        // What earlier versions wrote: base64 body and hex keys, hashes and signatures.
        let mut text = Vec::new();
        cmds.serialize(
            &mut rmp_serde::Serializer::new(&mut text)
                .with_struct_map()
                .with_human_readable(),
        )
        .expect("encode as text");
        assert!(
            binary.len() + 200 < text.len(),
            "{} vs {}",
            binary.len(),
            text.len()
        );
        for bytes in [&binary, &text] {
            let back: Vec<Command> = rmp_serde::from_slice(bytes).expect("decode");
            assert_eq!(back, cmds);
        }
        // JSON keeps its text forms.
        let json = serde_json::to_string(&cmds).expect("json");
        assert!(
            json.contains(&hex::encode(key.verifying_key().to_bytes())),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Vec<Command>>(&json).expect("json back"),
            cmds
        );
    }

    #[test]
    fn another_layout_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[5; 32]);
        {
            let store = Store::open(dir.path()).expect("open");
            store
                .apply(&[Command::Append(append(1, &key))], &[])
                .expect("apply");
            store.tree().remove(META_LAYOUT).expect("remove layout");
            runtime().block_on(store.flush()).expect("flush");
        }
        match Store::open(dir.path()) {
            Err(LedgerError::Corrupt { reason, .. }) => {
                assert!(reason.contains("layout 1"), "{reason}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a store without a layout marker was opened"),
        }
    }

    /// Layout 4's indexes: a device's history runs across several chunks and pages through
    /// them with `after`; index records an apply that did not count left (a chunk and a bucket
    /// record beyond the ledger's end) are neither duplicates nor history, and go when the
    /// device is written again.
    #[test]
    fn history_chunks_page_and_stale_records_never_show() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[6; 32]);
        let store = Store::open(dir.path()).expect("open");
        let n = 7 * index::HISTORY_CHUNK as u64 + 10;
        store
            .apply(
                &(0..4)
                    .map(|i| Command::Append(append(i, &key)))
                    .collect::<Vec<_>>(),
                &[],
            )
            .expect("apply");
        // Left by a cut: a chunk of pump-1 starting at 9 (entry 9 is pump-0's) and a record of
        // event 9 at seq 9.
        let mut chunk = b"Hpump-1\0".to_vec();
        chunk.extend_from_slice(&9u64.to_be_bytes());
        store
            .tree()
            .insert(chunk.clone(), index::encode_seqs(&[9]))
            .expect("insert");
        let (bucket, tag) = index::key_bucket("evt-9");
        store
            .tree()
            .insert(bucket, index::encode_bucket(&[(9, tag)]))
            .expect("insert");
        for start in (4..n).step_by(50) {
            let cmds: Vec<Command> = (start..(start + 50).min(n))
                .map(|i| Command::Append(append(i, &key)))
                .collect();
            let out = store.apply(&cmds, &[]).expect("apply");
            assert!(
                out.iter()
                    .all(|o| matches!(o, ApplyOutcome::Appended { .. })),
                "{out:?}"
            );
        }
        store.publish();
        assert!(
            store.get(&chunk).expect("get").is_none(),
            "stale chunk removed"
        );
        assert_eq!(store.find_event_id("evt-9").expect("find"), Some(9));
        let want: Vec<u64> = (0..n).filter(|i| i % 3 == 1).collect();
        assert!(want.len() > 2 * index::HISTORY_CHUNK);
        assert_eq!(
            store.device_history("pump-1", None, 10_000).expect("all"),
            want
        );
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store.device_history("pump-1", after, 7).expect("page");
            if page.is_empty() {
                break;
            }
            after = page.last().copied();
            paged.extend(page);
        }
        assert_eq!(paged, want);
        assert_eq!(
            store
                .device_history("pump-1", Some(want[200]), 3)
                .expect("mid"),
            want[201..204]
        );
        assert_eq!(
            store.device_ids(10).expect("ids"),
            ["pump-0", "pump-1", "pump-2"]
        );
        let again = store
            .apply(&[Command::Append(append(n - 1, &key))], &[])
            .expect("apply");
        assert!(matches!(again[0], ApplyOutcome::Duplicate { seq } if seq == n - 1));
    }

    /// What layout 3 wrote (one `D` and one `I` key per entry), turned into layout 4 at the next
    /// open and when installed from a snapshot of such a store: the same histories, device list
    /// and event ids, no old key left, and the store says layout 4.
    #[test]
    fn a_layout_3_store_gets_its_indexes_rebuilt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::from_bytes(&[7; 32]);
        let n = index::HISTORY_CHUNK as u64 * 2 + 5;
        let cmds: Vec<Command> = (0..n).map(|i| Command::Append(append(i, &key))).collect();
        let answers = |s: &Store| {
            (
                ["pump-0", "pump-1", "pump-2"].map(|d| s.device_history(d, None, 1000).expect("h")),
                (0..n + 1)
                    .map(|i| s.find_event_id(&format!("evt-{i}")).expect("find"))
                    .collect::<Vec<_>>(),
                s.device_ids(10).expect("ids"),
            )
        };
        let (want, pairs) = {
            let store = Store::open(dir.path()).expect("open");
            store.apply(&cmds, &[]).expect("apply");
            store.publish();
            let want = answers(&store);
            // Back to layout 3.
            let tree = store.tree();
            index::remove_prefix(&store, &tree, b"H").expect("H");
            index::remove_prefix(&store, &tree, b"J").expect("J");
            for seq in 0..n {
                let e = store.entry(seq).expect("entry");
                let mut dk = b"D".to_vec();
                dk.extend_from_slice(e.body.device_id.as_bytes());
                dk.push(0);
                dk.extend_from_slice(&seq.to_be_bytes());
                tree.insert(dk, &[][..]).expect("D");
                let id = e.body.event_id.expect("id");
                tree.insert(format!("I{id}").as_bytes(), &seq.to_be_bytes())
                    .expect("I");
            }
            tree.insert(META_LAYOUT, &[3u8]).expect("layout");
            runtime().block_on(store.flush()).expect("flush");
            let pairs = view_pairs(&store.view().expect("view"));
            assert!(pairs.iter().any(|(k, _)| k[0] == b'D'));
            (want, pairs)
        };
        let check = |s: &Store| {
            assert_eq!(answers(s), want);
            assert_eq!(
                s.get(META_LAYOUT).expect("get").as_deref(),
                Some(&[LAYOUT][..])
            );
            let tree = s.tree();
            assert!(tree.scan_prefix(b"D").next().is_none());
            assert!(tree.scan_prefix(b"I").next().is_none());
        };
        let store = Store::open(dir.path()).expect("reopen a layout-3 store");
        check(&store);
        let other = tempfile::tempdir().expect("tempdir");
        let b = Store::open(other.path()).expect("open b");
        assert_eq!(b.install(pairs.into_iter().map(Ok)).expect("install"), n);
        check(&b);
        // A ledger still at command format 1 (a cluster that may hold a 0.1.0 gateway) sends
        // its indexes as layout 3 in snapshots; installed here, they are layout 4 again.
        let one = tempfile::tempdir().expect("tempdir");
        let c = Store::open(one.path()).expect("open c");
        c.apply_at(&cmds, |_| 1, &[]).expect("apply at format 1");
        c.publish();
        assert_eq!(c.format(), 1);
        let pairs = view_pairs(&c.view().expect("view"));
        assert!(pairs.iter().any(|(k, _)| k[0] == b'D'));
        assert!(pairs.iter().any(|(k, _)| k[0] == b'I'));
        assert!(!pairs.iter().any(|(k, _)| k[0] == b'H' || k[0] == b'J'));
        assert!(pairs.contains(&(META_LAYOUT.to_vec(), vec![3])));
        assert_eq!(pairs.iter().filter(|(k, _)| k[0] == b'D').count() as u64, n);
        let later = tempfile::tempdir().expect("tempdir");
        let d = Store::open(later.path()).expect("open d");
        assert_eq!(d.install(pairs.into_iter().map(Ok)).expect("install"), n);
        check(&d);
    }
}
