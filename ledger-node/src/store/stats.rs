//! What each part of a data directory takes: `medledger ledger stats`.
//!
//! Two views of the same bytes: the logical size of every part (what the store keeps: entry
//! bytes, openings, Merkle nodes, indexes, the Raft log), read from the trees, and the bytes on
//! disk (sled's files, the snapshot file), read from the file system. Their ratio per event is
//! what the ledger costs beyond the entries themselves.

use std::path::Path;

use super::{Record, Store};
use crate::error::LedgerError;

/// Bytes and count of one part.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Records or keys counted.
    pub count: u64,
    /// Key and value bytes.
    pub bytes: u64,
}

impl Part {
    fn add(&mut self, bytes: usize) {
        self.count += 1;
        self.bytes += bytes as u64;
    }
}

/// The parts of a ledger store and of the database and directory around it.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Entries in the ledger.
    pub entries: u64,
    /// The entries' bytes as `docs/ledger-format.md` defines them.
    pub entry_bytes: u64,
    /// The openings (value and salt of each component) kept beside the entries.
    pub opening_bytes: u64,
    /// Perfect-subtree hashes kept in the entry records.
    pub merkle_bytes: u64,
    /// Keys and length fields of the entry records.
    pub record_overhead_bytes: u64,
    /// Per-device index (`H` chunks; `D` keys in a store of layout 3).
    pub device_index: Part,
    /// Event-id index (`J` buckets; `I` keys in a store of layout 3).
    pub event_id_index: Part,
    /// Node keys and metadata (`K`, `M`).
    pub metadata: Part,
    /// Anything else in the ledger tree (indexes of later layouts).
    pub other: Part,
    /// Other sled trees by name (the Raft log, its chunks, Raft's metadata...).
    pub trees: Vec<(String, Part)>,
    /// sled's own account of its files.
    pub sled_on_disk: u64,
}

impl Stats {
    /// Every part's key and value bytes, the other trees included.
    pub fn logical_total(&self) -> u64 {
        self.entry_bytes
            + self.opening_bytes
            + self.merkle_bytes
            + self.record_overhead_bytes
            + [
                self.device_index,
                self.event_id_index,
                self.metadata,
                self.other,
            ]
            .iter()
            .map(|p| p.bytes)
            .sum::<u64>()
            + self.trees.iter().map(|(_, p)| p.bytes).sum::<u64>()
    }

    /// Entry and opening bytes: what the ledger holds, without any of its structure.
    pub fn payload(&self) -> u64 {
        self.entry_bytes + self.opening_bytes
    }
}

impl Store {
    /// The logical parts of the store and of the other trees of its database. Reads every key:
    /// takes as long as an export, in constant memory.
    pub fn stats(&self) -> Result<Stats, LedgerError> {
        let corrupt = |reason: String| LedgerError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let mut s = Stats {
            entries: self.size(),
            ..Stats::default()
        };
        let tree = self.tree();
        for kv in tree.iter() {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            let n = k.len() + v.len();
            match k.first() {
                Some(b'E') => {
                    let r = Record::parse(&v).ok_or_else(|| {
                        corrupt(format!("entry record {} is malformed", hex::encode(&k)))
                    })?;
                    s.entry_bytes += r.entry.len() as u64;
                    // The opening count (4 bytes) is structure, not payload.
                    let openings = r.openings.len().saturating_sub(4);
                    s.opening_bytes += openings as u64;
                    s.merkle_bytes += r.nodes.len() as u64;
                    s.record_overhead_bytes +=
                        (n - r.entry.len() - openings - r.nodes.len()) as u64;
                }
                Some(b'H' | b'D') => s.device_index.add(n),
                Some(b'J' | b'I') => s.event_id_index.add(n),
                Some(b'K' | b'M') => s.metadata.add(n),
                _ => s.other.add(n),
            }
        }
        for name in self.db.tree_names() {
            if super::is_ledger_tree(&name) {
                continue;
            }
            let label = if name.as_ref() == b"__sled__default" {
                "default".to_owned()
            } else {
                String::from_utf8_lossy(&name).into_owned()
            };
            let t = self.db.open_tree(&name).map_err(|e| self.storage(e))?;
            let mut part = Part::default();
            for kv in t.iter() {
                let (k, v) = kv.map_err(|e| self.storage(e))?;
                part.add(k.len() + v.len());
            }
            s.trees.push((label, part));
        }
        s.sled_on_disk = self.db.size_on_disk().map_err(|e| self.storage(e))?;
        Ok(s)
    }
}

/// Bytes of every file under `dir`, by the name of its top-level entry (a directory counts
/// everything under it).
pub fn file_sizes(dir: &Path) -> Result<Vec<(String, u64)>, LedgerError> {
    fn walk(p: &Path) -> std::io::Result<u64> {
        let meta = std::fs::symlink_metadata(p)?;
        if !meta.is_dir() {
            return Ok(meta.len());
        }
        let mut total = 0;
        for e in std::fs::read_dir(p)? {
            total += walk(&e?.path())?;
        }
        Ok(total)
    }
    let io = |source| LedgerError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let bytes = walk(&e.path()).map_err(|source| LedgerError::Io {
            path: e.path(),
            source,
        })?;
        out.push((e.file_name().to_string_lossy().into_owned(), bytes));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{ComponentInput, DisclosureClass, EventInput, EventKind};
    use crate::ledger::{Ledger, LedgerOptions};

    #[tokio::test]
    async fn parts_add_up_to_what_was_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(dir.path(), LedgerOptions::default())
            .await
            .expect("open");
        let mut entry_bytes = 0;
        let mut opening_bytes = 0;
        for i in 0..100u32 {
            let value = format!("\"{}\"", "x".repeat(i as usize));
            let event = EventInput {
                kind: EventKind::Calibration,
                device_id: format!("pump-{}", i % 7),
                occurred_at: None,
                components: vec![ComponentInput {
                    name: "result".into(),
                    class: DisclosureClass::Maintenance,
                    value: value.clone(),
                }],
                corrects: None,
                event_id: Some(format!("e{i}")),
            }
            .validate()
            .expect("valid");
            ledger.append(event, "test").await.expect("append");
            entry_bytes += ledger
                .store()
                .entry_bytes(u64::from(i))
                .expect("entry")
                .len() as u64;
            // Tag, salt, length and value of the one opening.
            opening_bytes += 1 + 32 + 4 + value.len() as u64;
        }
        let s = ledger.store().stats().expect("stats");
        assert_eq!(s.entries, 100);
        assert_eq!(s.entry_bytes, entry_bytes);
        assert_eq!(s.opening_bytes, opening_bytes);
        // One hash per trailing one bit of each sequence number.
        let hashes: u64 = (0..100u64).map(|i| u64::from(i.trailing_ones())).sum();
        assert_eq!(s.merkle_bytes, 32 * hashes);
        // One history chunk per device: key ("H", id, 0, first seq) and a one-byte varint per
        // entry (the first seq, then steps of 7).
        assert_eq!(s.device_index.count, 7);
        assert_eq!(s.device_index.bytes, 7 * (1 + 6 + 1 + 8) + 100);
        // One bucket per distinct hash prefix: key (3), and a tag (8) and a one-byte varint per
        // entry.
        let buckets: std::collections::HashSet<_> = (0..100)
            .map(|i| super::super::index::key_bucket(&format!("e{i}")).0)
            .collect();
        assert_eq!(s.event_id_index.count, buckets.len() as u64);
        assert_eq!(s.event_id_index.bytes, 3 * buckets.len() as u64 + 100 * 9);
        assert_eq!(s.other, Part::default());
        // Key (9) and the record's length fields (4 + 1 + 4) per entry.
        assert_eq!(s.record_overhead_bytes, 100 * (9 + 9));
        assert!(s.sled_on_disk > 0);
        let files = file_sizes(dir.path()).expect("files");
        assert!(
            files.iter().any(|(n, b)| n == "ledger" && *b > 0),
            "{files:?}"
        );
    }
}
