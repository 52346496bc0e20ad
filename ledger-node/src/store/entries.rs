//! The entry file of a ledger tree (store layout 4): the entry records, appended once, read by
//! offset. sled keeps only a small pointer per entry (`E` seq → [`Pointer`]) beside its
//! indexes, so its page table and its space amplification no longer grow with the entries'
//! bytes (issue 17: a 1,000,000-entry store took 1,710 bytes per entry in sled, 2.3x the
//! payload, and ~70 MiB of memory per GB of sled files just to open).
//!
//! A record is written to the file and the file synced (`fdatasync`) before the apply inserts
//! its pointer into sled, so a pointer that survives a crash points at durable bytes; bytes
//! beyond the last counted pointer are what a crash left of an apply that did not count, and
//! [`Store::open_in`](super::Store::open_in) cuts them off. An erasure never moves bytes: it
//! zeroes the salt and value of the erased opening in place (so a torn write cannot damage the
//! record's structure or its other openings) and records which opening was erased by which
//! entry in the pointer, which readers lay over the record.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::LedgerError;

/// First byte of a pointer value. An inline record (layouts 2 and 3, still read) starts with
/// its entry's length as a u32 BE, whose first byte is 0 for every entry under 16 MiB.
const POINTER_TAG: u8 = 0xFE;

/// Where an entry's record is in the entry file, and which of its openings were erased since
/// it was written (opening index, seq of the erasure entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pointer {
    pub offset: u64,
    pub len: u32,
    pub erased: Vec<(u32, u64)>,
}

impl Pointer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + 12 * self.erased.len());
        out.push(POINTER_TAG);
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        for (index, by) in &self.erased {
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&by.to_be_bytes());
        }
        out
    }

    /// `None` for an inline record; `Some(None)` for a malformed pointer.
    pub fn decode(v: &[u8]) -> Option<Option<Self>> {
        let (tag, rest) = v.split_first()?;
        if *tag != POINTER_TAG {
            return None;
        }
        Some((|| {
            let (offset, rest) = rest.split_first_chunk::<8>()?;
            let (len, mut rest) = rest.split_first_chunk::<4>()?;
            let mut erased = Vec::new();
            while !rest.is_empty() {
                let (index, r) = rest.split_first_chunk::<4>()?;
                let (by, r) = r.split_first_chunk::<8>()?;
                erased.push((u32::from_be_bytes(*index), u64::from_be_bytes(*by)));
                rest = r;
            }
            Some(Pointer {
                offset: u64::from_be_bytes(*offset),
                len: u32::from_be_bytes(*len),
                erased,
            })
        })())
    }
}

/// Whether a stored `E` value is a pointer into the entry file.
pub(super) fn is_pointer(v: &[u8]) -> bool {
    v.first() == Some(&POINTER_TAG)
}

/// The directory of the entry files, inside the store's (sled's) directory.
pub(super) const ENTRIES_DIR: &str = "entries";

/// The entry file of one ledger tree.
pub(super) struct EntryFile {
    path: PathBuf,
    file: std::fs::File,
    /// Where the next record goes.
    len: AtomicU64,
}

impl EntryFile {
    /// The file of tree `tree` in `store_dir`, created (durably: file and directory names) if
    /// missing. Its length is what the file holds; [`EntryFile::truncate`] cuts it to what the
    /// store counts.
    pub fn open(store_dir: &Path, tree: &[u8]) -> Result<Self, LedgerError> {
        let dir = store_dir.join(ENTRIES_DIR);
        super::create_dir_durable(&dir)?;
        let path = dir.join(String::from_utf8_lossy(tree).as_ref());
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        if !existed {
            file.sync_all().map_err(io(&path))?;
            super::sync_dir(&dir)?;
        }
        let len = file.metadata().map_err(io(&path))?.len();
        Ok(Self {
            path,
            file,
            len: AtomicU64::new(len),
        })
    }

    /// Removes the entry file of tree `tree`, if any (a replaced tree's, or one an unfinished
    /// install left).
    pub fn remove(store_dir: &Path, tree: &[u8]) -> Result<(), LedgerError> {
        let dir = store_dir.join(ENTRIES_DIR);
        let path = dir.join(String::from_utf8_lossy(tree).as_ref());
        match std::fs::remove_file(&path) {
            Ok(()) => super::sync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The names of the entry files present (tree names).
    pub fn names(store_dir: &Path) -> Result<Vec<Vec<u8>>, LedgerError> {
        let dir = store_dir.join(ENTRIES_DIR);
        let listing = match std::fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut out = Vec::new();
        for item in listing {
            let item = item.map_err(io(&dir))?;
            out.push(item.file_name().into_encoded_bytes());
        }
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::SeqCst)
    }

    /// The record a pointer names, as written.
    pub fn read(&self, p: &Pointer) -> Result<Vec<u8>, LedgerError> {
        let end = p.offset.checked_add(u64::from(p.len));
        if end.is_none_or(|end| end > self.len()) {
            return Err(LedgerError::Corrupt {
                path: self.path.clone(),
                reason: format!(
                    "an entry record at {}+{} is beyond the end of the entry file ({} bytes)",
                    p.offset,
                    p.len,
                    self.len()
                ),
            });
        }
        let mut buf = vec![0u8; p.len as usize];
        self.file
            .read_exact_at(&mut buf, p.offset)
            .map_err(io(&self.path))?;
        Ok(buf)
    }

    /// Appends `record` (not synced) and returns its pointer.
    pub fn append(&self, record: &[u8]) -> Result<Pointer, LedgerError> {
        let len = u32::try_from(record.len()).map_err(|_| LedgerError::Corrupt {
            path: self.path.clone(),
            reason: "an entry record of 4 GiB or more".into(),
        })?;
        let offset = self.len();
        if let Err(e) = self.file.write_all_at(record, offset) {
            // Whatever part went in is beyond every pointer: cut off now or at the next open.
            let _ = self.file.set_len(offset);
            return Err(io(&self.path)(e));
        }
        self.len.store(offset + u64::from(len), Ordering::SeqCst);
        Ok(Pointer {
            offset,
            len,
            erased: Vec::new(),
        })
    }

    /// Overwrites `len` bytes at `offset` with zeros (not synced).
    pub fn zero(&self, offset: u64, len: usize) -> Result<(), LedgerError> {
        self.file
            .write_all_at(&vec![0u8; len], offset)
            .map_err(io(&self.path))
    }

    /// `fdatasync`: everything written so far is durable.
    pub fn sync(&self) -> Result<(), LedgerError> {
        self.file.sync_data().map_err(io(&self.path))
    }

    /// Cuts the file to `len` bytes (what a crash left beyond the counted records) and syncs.
    pub fn truncate(&self, len: u64) -> Result<(), LedgerError> {
        if self.len() == len {
            return Ok(());
        }
        self.file.set_len(len).map_err(io(&self.path))?;
        self.file.sync_all().map_err(io(&self.path))?;
        self.len.store(len, Ordering::SeqCst);
        Ok(())
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_round_trip_and_inline_records_are_not_pointers() {
        let p = Pointer {
            offset: 1 << 40,
            len: 700,
            erased: vec![(2, 99), (0, 100)],
        };
        assert_eq!(Pointer::decode(&p.encode()), Some(Some(p.clone())));
        assert!(is_pointer(&p.encode()));
        // An inline record starts with its entry's length.
        assert_eq!(Pointer::decode(&[0, 0, 1, 2, 7]), None);
        // A pointer cut short is malformed, not an inline record.
        assert_eq!(Pointer::decode(&p.encode()[..10]), Some(None));
        assert_eq!(Pointer::decode(&p.encode()[..20]), Some(None));
    }

    #[test]
    fn records_are_appended_read_zeroed_and_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = EntryFile::open(dir.path(), b"ledger").expect("open");
        let a = f.append(b"first record").expect("append");
        let b = f.append(b"second").expect("append");
        assert_eq!(f.read(&a).expect("read"), b"first record");
        assert_eq!(f.read(&b).expect("read"), b"second");
        f.zero(a.offset + 6, 6).expect("zero");
        assert_eq!(f.read(&a).expect("read"), b"first \0\0\0\0\0\0");
        f.sync().expect("sync");
        drop(f);
        let f = EntryFile::open(dir.path(), b"ledger").expect("reopen");
        assert_eq!(f.len(), 18);
        f.truncate(12).expect("truncate");
        let err = f.read(&b).expect_err("cut off");
        assert!(err.to_string().contains("beyond the end"), "{err}");
        assert_eq!(
            EntryFile::names(dir.path()).expect("names"),
            vec![b"ledger".to_vec()]
        );
        EntryFile::remove(dir.path(), b"ledger").expect("remove");
        assert!(EntryFile::names(dir.path()).expect("names").is_empty());
    }
}
