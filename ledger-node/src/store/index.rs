//! The device and event-id indexes of store layout 4.
//!
//! Layouts 2 and 3 kept one sled key per entry in each index (`D` device `\0` seq, `I` event
//! id → seq): at 1,000,000 entries that is two million small keys, and sled keeps a page-table
//! entry and bookkeeping for every leaf page of them in memory whatever its cache size (about 80
//! MiB more at open than without them, `sled-layout-bench`), and every write touches two random
//! leaf pages of large trees. Layout 4 keeps a few keys instead:
//!
//! - `H` device `\0` first-seq (u64 BE) → the sequence numbers of up to [`HISTORY_CHUNK`] of the
//!   device's entries, ascending, the first being first-seq: first-seq, then the difference to
//!   the one before, each an unsigned LEB128 varint (one to three bytes each at a hospital's
//!   sizes). A device's history is its chunks in key order; a write appends to the device's last
//!   chunk or starts the next.
//! - `J` + bytes 0..2 of SHA-256(event id) → the bucket's records, in the order they were added:
//!   bytes 2..10 of that hash (the tag), then the entry's seq as a LEB128 varint. 65,536 buckets
//!   of a few records each; a record whose tag matches is confirmed by reading the entry's own
//!   event id (two ids share a tag once in 2^64).
//!
//! Both values are rewritten whole when an entry is added (sled writes the new value to its
//! log), so they are kept small: a few hundred bytes at a million entries.
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

/// The tag of an event id in its bucket.
pub(super) type Tag = [u8; 8];

/// The bucket key (`J` + bytes 0..2 of SHA-256(`id`)) and the tag (bytes 2..10) of `id`.
pub(super) fn key_bucket(id: &str) -> ([u8; 3], Tag) {
    let h = Sha256::digest(id.as_bytes());
    let mut tag = [0; 8];
    tag.copy_from_slice(&h[2..10]);
    ([b'J', h[0], h[1]], tag)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn take_varint(v: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (b, rest) = v.split_first()?;
        *v = rest;
        let bits = u64::from(b & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        n |= bits << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// The sequence numbers of a history chunk; `None` if malformed (a truncated varint, or not
/// strictly ascending).
pub(super) fn decode_seqs(mut v: &[u8]) -> Option<Vec<u64>> {
    let mut out: Vec<u64> = Vec::new();
    while !v.is_empty() {
        let n = take_varint(&mut v)?;
        let seq = match out.last() {
            None => n,
            Some(_) if n == 0 => return None,
            Some(last) => last.checked_add(n)?,
        };
        out.push(seq);
    }
    Some(out)
}

/// `seqs` must be strictly ascending.
pub(super) fn encode_seqs(seqs: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(seqs.len() * 2 + 8);
    let mut last = None;
    for &s in seqs {
        put_varint(&mut out, last.map_or(s, |l| s - l));
        last = Some(s);
    }
    out
}

/// The (seq, tag) records of a bucket; `None` if malformed.
pub(super) fn decode_bucket(mut v: &[u8]) -> Option<Vec<(u64, Tag)>> {
    let mut out = Vec::new();
    while !v.is_empty() {
        let (tag, rest) = v.split_first_chunk::<8>()?;
        v = rest;
        out.push((take_varint(&mut v)?, *tag));
    }
    Some(out)
}

pub(super) fn encode_bucket(records: &[(u64, Tag)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 12);
    for (seq, tag) in records {
        out.extend_from_slice(tag);
        put_varint(&mut out, *seq);
    }
    out
}

/// A bucket's value with only the records below `size` (what a reader at that size sees);
/// `None` when none is left.
pub(super) fn bucket_below(v: &[u8], size: u64) -> Option<Option<Vec<u8>>> {
    let records: Vec<_> = decode_bucket(v)?
        .into_iter()
        .filter(|(s, _)| *s < size)
        .collect();
    Some((!records.is_empty()).then(|| encode_bucket(&records)))
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
    buckets: HashMap<[u8; 3], Vec<(u64, Tag)>>,
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
        key: [u8; 3],
    ) -> Result<&mut Vec<(u64, Tag)>, LedgerError> {
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

    /// The counted entry (below `stale_from`) that carries event id `id`; the caller knows
    /// those of its own batch.
    pub(super) fn find(
        &mut self,
        store: &Store,
        tree: &sled::Tree,
        id: &str,
    ) -> Result<Option<u64>, LedgerError> {
        let (key, tag) = key_bucket(id);
        let stale_from = self.stale_from;
        let candidates: Vec<u64> = self
            .bucket(store, tree, key)?
            .iter()
            .filter(|(s, t)| *t == tag && *s < stale_from)
            .map(|(s, _)| *s)
            .collect();
        for seq in candidates {
            if store.event_id_in(tree, seq)?.as_deref() == Some(id) {
                return Ok(Some(seq));
            }
        }
        Ok(None)
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
            let (key, tag) = key_bucket(id);
            self.bucket(store, tree, key)?.push((seq, tag));
        }
        Ok(())
    }

    /// Puts every chunk and bucket changed into `batch`.
    pub(super) fn write(self, batch: &mut Writes) {
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
                batch.insert(k, encode_bucket(&records));
            }
        }
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
        let (key, tag) = key_bucket(id);
        if let Some(v) = tree.get(key).map_err(storage)? {
            let mut records = decode_bucket(&v).ok_or_else(|| store.corrupt("event id bucket"))?;
            records.retain(|(s, t)| !(*s == seq && *t == tag));
            if records.is_empty() {
                tree.remove(key).map_err(storage)?;
            } else {
                tree.insert(key, encode_bucket(&records)).map_err(storage)?;
            }
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
        let seqs = vec![3, 9, 200, 70_000, u64::MAX];
        let v = encode_seqs(&seqs);
        assert_eq!(v.len(), 1 + 1 + 2 + 3 + 10);
        assert_eq!(decode_seqs(&v), Some(seqs));
        assert_eq!(decode_seqs(&[0x80]), None, "a truncated varint");
        assert_eq!(decode_seqs(&[5, 0]), None, "not ascending");
        assert_eq!(decode_seqs(&[0xff; 11]), None, "more than 64 bits");
        let mut past = vec![1];
        past.extend_from_slice(&[0xff; 9]);
        past.push(0x01);
        assert_eq!(decode_seqs(&past), None, "past u64::MAX");
        let records = vec![(1, key_bucket("evt-1").1), (300, [7; 8])];
        let v = encode_bucket(&records);
        assert_eq!(v.len(), 8 + 1 + 8 + 2);
        assert_eq!(decode_bucket(&v), Some(records));
        assert_eq!(decode_bucket(&v[..v.len() - 1]), None);
        assert_eq!(decode_bucket(&[0; 7]), None);
        assert_eq!(
            chunk_below(&encode_seqs(&[1, 5, 8]), 6),
            Some(Some(encode_seqs(&[1, 5])))
        );
        assert_eq!(chunk_below(&encode_seqs(&[8]), 6), Some(None));
        assert_eq!(bucket_below(&v, 1), Some(None));
        assert_eq!(bucket_below(&v, 2), Some(Some(v[..9].to_vec())));
    }
}
