//! The device and event-id indexes of store layout 4.
//!
//! Layouts 2 and 3 kept one sled key per entry in each index (`D` device `\0` seq, `I` event
//! id → seq): at 1,000,000 entries that is two million small keys, and sled keeps a page-table
//! entry and bookkeeping for every leaf page of them in memory whatever its cache size (about 80
//! MiB more at open than without them, `store-layout-bench`), and every write touches two random
//! leaf pages of large trees. Layout 4 keeps a few keys instead:
//!
//! - `H` device `\0` first-seq (u64 BE) → the sequence numbers (u64 BE each, ascending) of up to
//!   [`HISTORY_CHUNK`] of the device's entries, the first being first-seq. A device's history is
//!   its chunks in key order; a write appends to the device's last chunk or starts the next.
//! - `J` + the first two bytes of SHA-256(event id) → the bucket's (seq u64 BE, id length u16
//!   BE, id) records, in the order they were added: 65,536 buckets of a few records each.
//!
//! Readers leave out sequence numbers at or beyond the ledger's size (an apply after a snapshot
//! view was taken, or one a crash did not let count); a writer drops those it finds at or beyond
//! the size its batch started at before it adds its own (see [`IndexWrites`]).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::{be_u64, Store, Writes};
use crate::LedgerError;

/// Sequence numbers per history chunk: 1 KiB of value, one key per 128 entries of a device.
pub(super) const HISTORY_CHUNK: usize = 128;

/// `H` device `\0`: every chunk key of a device starts with it.
pub(super) fn key_history_prefix(device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 10);
    k.push(b'H');
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k
}

fn key_history(device: &str, first: u64) -> Vec<u8> {
    let mut k = key_history_prefix(device);
    k.extend_from_slice(&first.to_be_bytes());
    k
}

/// `J` + the first two bytes of SHA-256(`id`).
pub(super) fn key_bucket(id: &str) -> [u8; 3] {
    let h = Sha256::digest(id.as_bytes());
    [b'J', h[0], h[1]]
}

/// The sequence numbers of a history chunk; `None` if the value is not a whole number of them.
pub(super) fn decode_seqs(v: &[u8]) -> Option<Vec<u64>> {
    if !v.len().is_multiple_of(8) {
        return None;
    }
    v.chunks_exact(8).map(be_u64).collect()
}

fn encode_seqs(seqs: &[u64]) -> Vec<u8> {
    seqs.iter().flat_map(|s| s.to_be_bytes()).collect()
}

/// The (seq, event id) records of a bucket; `None` if malformed.
pub(super) fn decode_bucket(mut v: &[u8]) -> Option<Vec<(u64, String)>> {
    let mut out = Vec::new();
    while !v.is_empty() {
        let (seq, rest) = v.split_first_chunk::<8>()?;
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let (id, rest) = rest.split_at_checked(u16::from_be_bytes(*len) as usize)?;
        out.push((
            u64::from_be_bytes(*seq),
            std::str::from_utf8(id).ok()?.to_owned(),
        ));
        v = rest;
    }
    Some(out)
}

/// `None` if an event id is longer than 65,535 bytes (the API refuses far shorter ones).
fn encode_bucket(records: &[(u64, String)]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(records.iter().map(|(_, id)| 10 + id.len()).sum());
    for (seq, id) in records {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&u16::try_from(id.len()).ok()?.to_be_bytes());
        out.extend_from_slice(id.as_bytes());
    }
    Some(out)
}

/// A bucket's value with only the records below `size` (what a reader at that size sees);
/// `None` when none is left.
pub(super) fn bucket_below(v: &[u8], size: u64) -> Option<Option<Vec<u8>>> {
    let records: Vec<_> = decode_bucket(v)?
        .into_iter()
        .filter(|(s, _)| *s < size)
        .collect();
    Some(if records.is_empty() {
        None
    } else {
        encode_bucket(&records)
    })
}

/// A chunk's value with only the sequence numbers below `size`; `None` when none is left.
pub(super) fn chunk_below(v: &[u8], size: u64) -> Option<Option<Vec<u8>>> {
    let seqs: Vec<u64> = decode_seqs(v)?.into_iter().filter(|s| *s < size).collect();
    Some((!seqs.is_empty()).then(|| encode_seqs(&seqs)))
}

/// The index changes of one apply (or of one step of a conversion): each chunk and bucket it
/// touches is read from the tree once, changed in memory and written back by [`Self::write`],
/// before the apply's size record.
pub(super) struct IndexWrites {
    /// Sequence numbers at or beyond this, read from the tree, are left over from an apply that
    /// did not count: dropped on reading (the replay of the same commands adds them again).
    stale_from: u64,
    /// The key of the last chunk of each device touched.
    last: HashMap<String, Vec<u8>>,
    chunks: HashMap<Vec<u8>, Vec<u64>>,
    buckets: HashMap<[u8; 3], Vec<(u64, String)>>,
    /// Chunk keys found starting at or beyond `stale_from`.
    stale: Vec<Vec<u8>>,
}

impl IndexWrites {
    pub(super) fn new(stale_from: u64) -> Self {
        Self {
            stale_from,
            last: HashMap::new(),
            chunks: HashMap::new(),
            buckets: HashMap::new(),
            stale: Vec::new(),
        }
    }

    fn bucket(
        &mut self,
        store: &Store,
        tree: &sled::Tree,
        id: &str,
    ) -> Result<&mut Vec<(u64, String)>, LedgerError> {
        let key = key_bucket(id);
        if !self.buckets.contains_key(&key) {
            let mut records = match tree.get(key).map_err(|e| store.storage(e))? {
                None => Vec::new(),
                Some(v) => decode_bucket(&v).ok_or_else(|| store.corrupt("event id bucket"))?,
            };
            records.retain(|(s, _)| *s < self.stale_from);
            self.buckets.insert(key, records);
        }
        Ok(self.buckets.entry(key).or_default())
    }

    /// The entry that carries event id `id`, among those counted and those this batch added.
    pub(super) fn find(
        &mut self,
        store: &Store,
        tree: &sled::Tree,
        id: &str,
    ) -> Result<Option<u64>, LedgerError> {
        Ok(self
            .bucket(store, tree, id)?
            .iter()
            .find(|(_, i)| i == id)
            .map(|(s, _)| *s))
    }

    /// The key of the device's last chunk that holds anything below `stale_from` (its sequence
    /// numbers are then in `chunks`), or `None`. Chunks that start at or beyond `stale_from` were
    /// started by an apply that did not count: they are removed by [`Self::write`] unless this
    /// batch writes them again.
    fn last_chunk(
        &mut self,
        store: &Store,
        tree: &sled::Tree,
        device: &str,
    ) -> Result<Option<Vec<u8>>, LedgerError> {
        if let Some(k) = self.last.get(device) {
            return Ok(Some(k.clone()));
        }
        let prefix = key_history_prefix(device);
        let mut end = prefix.clone();
        if let Some(nul) = end.last_mut() {
            *nul = 1;
        }
        for kv in tree.range(prefix.as_slice()..end.as_slice()).rev() {
            let (k, v) = kv.map_err(|e| store.storage(e))?;
            let first = be_u64(&k[prefix.len()..])
                .ok_or_else(|| store.corrupt("device history chunk key"))?;
            if first >= self.stale_from {
                self.stale.push(k.to_vec());
                continue;
            }
            let mut seqs = decode_seqs(&v).ok_or_else(|| store.corrupt("device history chunk"))?;
            seqs.retain(|s| *s < self.stale_from);
            let k = k.to_vec();
            self.chunks.insert(k.clone(), seqs);
            self.last.insert(device.to_owned(), k.clone());
            return Ok(Some(k));
        }
        Ok(None)
    }

    /// Adds entry `seq` of `device`, carrying `id`, to both indexes.
    pub(super) fn add(
        &mut self,
        store: &Store,
        tree: &sled::Tree,
        device: &str,
        id: Option<&str>,
        seq: u64,
    ) -> Result<(), LedgerError> {
        let key = match self.last_chunk(store, tree, device)? {
            Some(k) if self.chunks.get(&k).is_some_and(|s| s.len() < HISTORY_CHUNK) => k,
            _ => {
                let k = key_history(device, seq);
                self.chunks.insert(k.clone(), Vec::new());
                self.last.insert(device.to_owned(), k.clone());
                k
            }
        };
        self.chunks.entry(key).or_default().push(seq);
        if let Some(id) = id {
            self.bucket(store, tree, id)?.push((seq, id.to_owned()));
        }
        Ok(())
    }

    /// Puts every chunk and bucket changed into `batch`.
    pub(super) fn write(self, store: &Store, batch: &mut Writes) -> Result<(), LedgerError> {
        for k in self.stale {
            if !self.chunks.contains_key(&k) {
                batch.remove(k);
            }
        }
        for (k, seqs) in self.chunks {
            if !seqs.is_empty() {
                batch.insert(k, encode_seqs(&seqs));
            }
        }
        for (k, records) in self.buckets {
            if !records.is_empty() {
                let v = encode_bucket(&records)
                    .ok_or_else(|| store.corrupt("event id longer than 65535 bytes"))?;
                batch.insert(k, v);
            }
        }
        Ok(())
    }
}

/// Removes entry `seq` of `device` (carrying `id`) from both indexes of `tree`, in place: what
/// an apply that did not count left behind (see `Store::remove_uncounted`).
pub(super) fn remove(
    store: &Store,
    tree: &sled::Tree,
    device: &str,
    id: Option<&str>,
    seq: u64,
) -> Result<(), LedgerError> {
    let storage = |e| store.storage(e);
    let prefix = key_history_prefix(device);
    if let Some(kv) = tree.range(prefix..=key_history(device, seq)).next_back() {
        let (k, v) = kv.map_err(storage)?;
        let mut seqs = decode_seqs(&v).ok_or_else(|| store.corrupt("device history chunk"))?;
        seqs.retain(|s| *s != seq);
        if seqs.is_empty() {
            tree.remove(k).map_err(storage)?;
        } else {
            tree.insert(k, encode_seqs(&seqs)).map_err(storage)?;
        }
    }
    if let Some(id) = id {
        let key = key_bucket(id);
        if let Some(v) = tree.get(key).map_err(storage)? {
            let mut records = decode_bucket(&v).ok_or_else(|| store.corrupt("event id bucket"))?;
            records.retain(|(s, i)| !(*s == seq && i == id));
            match encode_bucket(&records) {
                Some(v) if !v.is_empty() => tree.insert(key, v).map(drop),
                _ => tree.remove(key).map(drop),
            }
            .map_err(storage)?;
        }
    }
    Ok(())
}

/// Removes every key of `tree` that starts with `prefix`; returns how many there were.
pub(super) fn remove_prefix(
    store: &Store,
    tree: &sled::Tree,
    prefix: &[u8],
) -> Result<u64, LedgerError> {
    let mut n = 0;
    for kv in tree.scan_prefix(prefix) {
        let (k, _) = kv.map_err(|e| store.storage(e))?;
        tree.remove(k).map_err(|e| store.storage(e))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_malformed_ones_are_refused() {
        let seqs = vec![3, 9, u64::MAX];
        assert_eq!(decode_seqs(&encode_seqs(&seqs)), Some(seqs));
        assert_eq!(decode_seqs(&[0; 7]), None);
        let records = vec![(1, "evt-1".to_owned()), (7, String::new())];
        let v = encode_bucket(&records).expect("encode");
        assert_eq!(decode_bucket(&v), Some(records));
        assert_eq!(decode_bucket(&v[..v.len() - 1]), None);
        assert_eq!(decode_bucket(&[0; 9]), None);
        assert!(encode_bucket(&[(0, "x".repeat(70_000))]).is_none());
        assert_eq!(
            chunk_below(&encode_seqs(&[1, 5, 8]), 6),
            Some(Some(encode_seqs(&[1, 5])))
        );
        assert_eq!(chunk_below(&encode_seqs(&[8]), 6), Some(None));
        assert_eq!(bucket_below(&v, 1), Some(None));
    }
}
