//! A FUSE file system that forgets what was not synced, for power-cut tests (issue 18).
//!
//! A killed process loses nothing the kernel already has; a power cut loses everything that was
//! not made durable. [`PowerFs`] keeps two trees in the test process's memory: the *current*
//! one that programs see through the mount, and the *durable* one, which holds only what an
//! `fsync`/`fdatasync` (of a file: its pages and size) or an `fsync` of a directory (its entries)
//! made durable. [`PowerFs::power_cut`] (only while unmounted, i.e. after every process using the
//! mount was killed) writes each page changed since its file's last sync whole or not at all, at
//! random from a seeded RNG, and forgets every directory entry created, renamed or removed in a
//! directory that was not synced since: the durable tree becomes the current one.
//!
//! Deliberately stricter than ext4 and like LazyFS: `fsync` of a new file does not make its name
//! durable (POSIX asks for an `fsync` of the directory), and `sync_file_range` makes nothing
//! durable (FUSE never hears of it). Files keep their pages in memory, shared between the two
//! trees (`Arc` pages, copied on write), so memory is about the data written plus unsynced pages.
//! There is no backing directory: an inode-level durable tree is what makes renames, unlinked
//! open files and directories synced at different times exact, and a test's data fits in memory.
//! Not supported (never used by the gateway): hard links, symlinks, special files, xattrs.
//! The durable state lives as long as the `PowerFs` value, so a test mounts it again after a cut.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// The unit in which unsynced data survives a cut or not, as a drive writes whole sectors and
/// the kernel writes back whole pages.
pub const PAGE: usize = 4096;

const ROOT: u64 = 1;
// Only this file system changes its tree, so the kernel may cache names and attributes.
const TTL: Duration = Duration::from_secs(1);

type Page = Arc<[u8; PAGE]>;

#[derive(Clone, Default, Debug)]
struct FileData {
    pages: BTreeMap<u64, Page>,
    size: u64,
}

impl FileData {
    fn page_count(size: u64) -> u64 {
        size.div_ceil(PAGE as u64)
    }

    /// Drops pages wholly past `size` and zeroes the tail of the last one.
    fn trim(&mut self) {
        let n = Self::page_count(self.size);
        self.pages.split_off(&n);
        let tail = (self.size % PAGE as u64) as usize;
        if tail != 0 {
            if let Some(p) = self.pages.get_mut(&(n - 1)) {
                if p[tail..].iter().any(|b| *b != 0) {
                    Arc::make_mut(p)[tail..].fill(0);
                }
            }
        }
    }

    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let end = self.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Vec::new();
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE as u64;
            let within = (pos % PAGE as u64) as usize;
            let n = (PAGE - within).min((end - pos) as usize);
            if let Some(p) = self.pages.get(&idx) {
                let at = (pos - offset) as usize;
                out[at..at + n].copy_from_slice(&p[within..within + n]);
            }
            pos += n as u64;
        }
        out
    }
}

#[derive(Clone, Debug)]
enum Body {
    File(FileData),
    Dir(BTreeMap<OsString, u64>),
}

#[derive(Clone, Debug)]
struct Inode {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
}

impl Inode {
    fn new_dir(perm: u16, uid: u32, gid: u32) -> Self {
        Inode {
            body: Body::Dir(BTreeMap::new()),
            perm,
            uid,
            gid,
            mtime: SystemTime::now(),
        }
    }

    /// The same inode as it is right after its creation: no entries, no data.
    fn skeleton(&self) -> Self {
        Inode {
            body: match self.body {
                Body::File(_) => Body::File(FileData::default()),
                Body::Dir(_) => Body::Dir(BTreeMap::new()),
            },
            ..self.clone()
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, nlink) = match &self.body {
            Body::File(f) => (FileType::RegularFile, f.size, 1),
            Body::Dir(_) => (FileType::Directory, 0, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm: self.perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }
}

type Tree = HashMap<u64, Inode>;

/// Inodes reachable from the root of `tree`.
fn reachable(tree: &Tree) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![ROOT];
    while let Some(ino) = todo.pop() {
        if !seen.insert(ino) {
            continue;
        }
        if let Some(Inode {
            body: Body::Dir(entries),
            ..
        }) = tree.get(&ino)
        {
            todo.extend(entries.values().copied());
        }
    }
    seen
}

/// What a power cut did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Unsynced pages (of files whose inode survived) written before the power went.
    pub pages_kept: u64,
    /// Unsynced pages lost.
    pub pages_dropped: u64,
    /// Directory entries of the current tree that the durable tree does not have, or has for
    /// another inode (created or renamed and not synced).
    pub names_forgotten: u64,
}

/// Counters of what the programs asked of the file system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncCounts {
    pub file_syncs: u64,
    pub dir_syncs: u64,
}

struct Volume {
    current: Tree,
    durable: Tree,
    /// Pages of each file changed (written, or cut off by a truncation) since its last sync.
    dirty: HashMap<u64, BTreeSet<u64>>,
    /// Open handles per inode: an unlinked file lives on until its last one is closed.
    open: HashMap<u64, u32>,
    /// The kernel's references per inode (each entry replied counts one, a `forget` drops its
    /// count): an inode the kernel still knows is kept even without a name, as a disk keeps an
    /// unlinked inode while it is in use. Without this a name replaced by a rename was now and
    /// then missing to a reader that had looked up the old inode just before: its open then
    /// found no inode and failed with ENOENT, which no real file system does (4 in 44,508 opens,
    /// `powerloss::fs_a_name_replaced_by_rename_is_never_missing`; the power-loss rounds saw a
    /// gateway's `raft-snapshot.bin` missing so).
    lookups: HashMap<u64, u64>,
    next_ino: u64,
    mounted: bool,
    counts: SyncCounts,
}

impl Volume {
    fn file_mut(&mut self, ino: u64) -> Result<&mut FileData, Errno> {
        match self.current.get_mut(&ino).map(|i| &mut i.body) {
            Some(Body::File(f)) => Ok(f),
            Some(Body::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn dir(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match self.current.get(&ino).map(|i| &i.body) {
            Some(Body::Dir(d)) => Ok(d),
            Some(Body::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.current.get_mut(&ino).map(|i| &mut i.body) {
            Some(Body::Dir(d)) => Ok(d),
            Some(Body::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        self.current
            .get(&ino)
            .map(|i| i.attr(ino))
            .ok_or(Errno::ENOENT)
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let file = self.file_mut(ino)?;
        let mut touched = Vec::new();
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = pos / PAGE as u64;
            let within = (pos % PAGE as u64) as usize;
            let n = (PAGE - within).min(rest.len());
            let page = file
                .pages
                .entry(idx)
                .or_insert_with(|| Arc::new([0u8; PAGE]));
            Arc::make_mut(page)[within..within + n].copy_from_slice(&rest[..n]);
            touched.push(idx);
            pos += n as u64;
            rest = &rest[n..];
        }
        file.size = file.size.max(offset + data.len() as u64);
        if let Some(i) = self.current.get_mut(&ino) {
            i.mtime = SystemTime::now();
        }
        self.dirty.entry(ino).or_default().extend(touched);
        Ok(())
    }

    fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let file = self.file_mut(ino)?;
        let old = file.size;
        file.size = size;
        file.trim();
        // Every page between the two sizes changed: cut off, zero-filled or its tail zeroed.
        let (lo, hi) = (
            old.min(size) / PAGE as u64,
            FileData::page_count(old.max(size)),
        );
        self.dirty.entry(ino).or_default().extend(lo..hi);
        Ok(())
    }

    fn new_inode(&mut self, parent: u64, name: &OsStr, inode: Inode) -> Result<FileAttr, Errno> {
        if self.dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let attr = inode.attr(ino);
        self.current.insert(ino, inode);
        self.dir_mut(parent)?.insert(name.to_owned(), ino);
        Ok(attr)
    }

    /// Forgets an inode of the current tree that has no name any more, unless it is still open or
    /// the kernel still refers to it.
    fn release_if_unlinked(&mut self, ino: u64) {
        if self.open.get(&ino).copied().unwrap_or(0) > 0
            || self.lookups.get(&ino).copied().unwrap_or(0) > 0
        {
            return;
        }
        let named = self.current.values().any(|i| match &i.body {
            Body::Dir(d) => d.values().any(|v| *v == ino),
            Body::File(_) => false,
        });
        if !named && ino != ROOT {
            self.current.remove(&ino);
            self.dirty.remove(&ino);
        }
    }

    fn unlink(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = *self.dir(parent)?.get(name).ok_or(Errno::ENOENT)?;
        match (&self.current[&ino].body, want_dir) {
            (Body::Dir(d), true) if !d.is_empty() => return Err(Errno::ENOTEMPTY),
            (Body::Dir(_), false) => return Err(Errno::EISDIR),
            (Body::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.dir_mut(parent)?.remove(name);
        self.release_if_unlinked(ino);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return Err(Errno::EINVAL);
        }
        let ino = *self.dir(parent)?.get(name).ok_or(Errno::ENOENT)?;
        let moving_dir = matches!(self.current[&ino].body, Body::Dir(_));
        let replaced = self.dir(newparent)?.get(newname).copied();
        if let Some(old) = replaced {
            if old == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (&self.current[&old].body, moving_dir) {
                (Body::Dir(d), true) if !d.is_empty() => return Err(Errno::ENOTEMPTY),
                (Body::Dir(_), false) => return Err(Errno::EISDIR),
                (Body::File(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
        }
        self.dir_mut(parent)?.remove(name);
        self.dir_mut(newparent)?.insert(newname.to_owned(), ino);
        if let Some(old) = replaced {
            self.release_if_unlinked(old);
        }
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its pages and size become durable (its name does not).
    fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        self.counts.file_syncs += 1;
        let cur = self.current.get(&ino).ok_or(Errno::ENOENT)?;
        let Body::File(data) = &cur.body else {
            return self.sync_dir(ino);
        };
        let dirty = self.dirty.remove(&ino).unwrap_or_default();
        let durable = self.durable.entry(ino).or_insert_with(|| cur.skeleton());
        durable.perm = cur.perm;
        durable.mtime = cur.mtime;
        if let Body::File(d) = &mut durable.body {
            for idx in dirty {
                match data.pages.get(&idx) {
                    Some(p) => d.pages.insert(idx, p.clone()),
                    None => d.pages.remove(&idx),
                };
            }
            d.size = data.size;
            d.trim();
        }
        Ok(())
    }

    /// `fsync` of a directory: its entries become durable, as they are now. An inode that gets
    /// its first durable name here keeps only what was synced of it (nothing, if never synced).
    fn sync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        self.counts.dir_syncs += 1;
        let cur = self.current.get(&ino).ok_or(Errno::ENOENT)?;
        let Body::Dir(entries) = &cur.body else {
            return Err(Errno::ENOTDIR);
        };
        for child in entries.values() {
            if !self.durable.contains_key(child) {
                let skeleton = self.current[child].skeleton();
                self.durable.insert(*child, skeleton);
            }
        }
        let entries = entries.clone();
        let durable = self.durable.entry(ino).or_insert_with(|| cur.skeleton());
        durable.body = Body::Dir(entries);
        // Inodes no durable name leads to any more, and that are gone from the current tree,
        // can never come back.
        let keep = reachable(&self.durable);
        let current = &self.current;
        self.durable
            .retain(|i, _| keep.contains(i) || current.contains_key(i));
        Ok(())
    }

    fn power_cut(&mut self, rng: &mut Rng) -> CutReport {
        let mut report = CutReport::default();
        let alive = reachable(&self.durable);
        // Names the programs saw that the disk does not have.
        for (dir, inode) in &self.current {
            if let Body::Dir(entries) = &inode.body {
                let durable = match self.durable.get(dir).map(|i| &i.body) {
                    Some(Body::Dir(d)) if alive.contains(dir) => Some(d),
                    _ => None,
                };
                report.names_forgotten += entries
                    .iter()
                    .filter(|(n, i)| durable.and_then(|d| d.get(*n)) != Some(*i))
                    .count() as u64;
            }
        }
        let mut dirty: Vec<_> = std::mem::take(&mut self.dirty).into_iter().collect();
        // The same seed must give the same cut: visit files in a fixed order.
        dirty.sort_by_key(|(ino, _)| *ino);
        for (ino, pages) in dirty {
            let (
                Some(Inode {
                    body: Body::File(cur),
                    ..
                }),
                true,
            ) = (self.current.get(&ino), alive.contains(&ino))
            else {
                continue;
            };
            let Some(Inode {
                body: Body::File(d),
                ..
            }) = self.durable.get_mut(&ino)
            else {
                continue;
            };
            let mut end = d.size;
            for idx in pages {
                if rng.coin() {
                    report.pages_kept += 1;
                    match cur.pages.get(&idx) {
                        Some(p) => d.pages.insert(idx, p.clone()),
                        None => d.pages.remove(&idx),
                    };
                    end = end.max(((idx + 1) * PAGE as u64).min(cur.size));
                } else {
                    report.pages_dropped += 1;
                }
            }
            // A shrink that was not synced may have reached the disk or not.
            d.size = if cur.size < d.size && rng.coin() {
                cur.size
            } else {
                end
            };
            d.trim();
        }
        let alive = reachable(&self.durable);
        self.durable.retain(|i, _| alive.contains(i));
        self.current = self.durable.clone();
        self.open.clear();
        self.lookups.clear();
        report
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same cut.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    /// A number in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// The seed of a test run: `MEDLEDGER_POWERLOSS_SEED` to replay one, else a fresh one. The test
/// prints it so that a failing run can be replayed.
pub fn seed() -> u64 {
    if let Some(s) = std::env::var("MEDLEDGER_POWERLOSS_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return s;
    }
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Rng::new(t.as_nanos() as u64 ^ u64::from(std::process::id())).next_u64() >> 1
}

/// A volume that survives power cuts as a disk would. Clones share the volume.
#[derive(Clone)]
pub struct PowerFs {
    vol: Arc<Mutex<Volume>>,
}

impl Default for PowerFs {
    fn default() -> Self {
        Self::new()
    }
}

impl PowerFs {
    /// An empty volume whose root directory exists durably (as a freshly made file system).
    pub fn new() -> Self {
        let root = Inode::new_dir(0o755, 0, 0);
        let tree: Tree = [(ROOT, root)].into_iter().collect();
        PowerFs {
            vol: Arc::new(Mutex::new(Volume {
                current: tree.clone(),
                durable: tree,
                dirty: HashMap::new(),
                open: HashMap::new(),
                lookups: HashMap::new(),
                next_ino: ROOT + 1,
                mounted: false,
                counts: SyncCounts::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Volume> {
        // A panic in another test thread must not hide this volume.
        self.vol.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mounts the volume at `at` (an existing empty directory); it stays mounted until the
    /// returned [`Mount`] is unmounted or dropped.
    pub fn mount(&self, at: &Path) -> anyhow::Result<Mount> {
        {
            let mut v = self.lock();
            if v.mounted {
                bail!("volume already mounted");
            }
            v.mounted = true;
        }
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("medledger-powerfs".into()),
            fuser::MountOption::Subtype("powerfs".into()),
        ];
        let fs = Fuse { fs: self.clone() };
        match fuser::spawn_mount(fs, at, &config) {
            Ok(session) => Ok(Mount {
                fs: self.clone(),
                at: at.to_owned(),
                session: Some(session),
            }),
            Err(e) => {
                self.lock().mounted = false;
                Err(e).with_context(|| format!("mount a FUSE file system at {}", at.display()))
            }
        }
    }

    /// The power goes: unsynced pages are written or lost at random, unsynced names forgotten.
    /// Only while unmounted: every process that used the volume must be dead first.
    pub fn power_cut(&self, rng: &mut Rng) -> anyhow::Result<CutReport> {
        let mut v = self.lock();
        if v.mounted {
            bail!("a power cut needs the volume unmounted (kill its processes, then unmount)");
        }
        Ok(v.power_cut(rng))
    }

    /// `sync(1)`: everything written so far becomes durable (an installer that synced, before
    /// the programs under test run).
    pub fn sync_everything(&self) {
        let mut v = self.lock();
        v.durable = v.current.clone();
        v.dirty.clear();
    }

    /// How many file and directory syncs the programs asked for so far.
    pub fn sync_counts(&self) -> SyncCounts {
        self.lock().counts
    }
}

/// A mounted [`PowerFs`]; dropping it unmounts.
pub struct Mount {
    fs: PowerFs,
    at: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Mount {
    pub fn path(&self) -> &Path {
        &self.at
    }

    /// Unmounts, retrying for a while if the mount is still busy (a process just killed may
    /// not have released its files yet).
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> anyhow::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = std::process::Command::new("umount")
                .arg(&self.at)
                .output()
                .context("run umount")?;
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                // Detach it so that the test does not leave a busy mount behind.
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.at)
                    .output();
                let _ = session.umount_and_join();
                self.fs.lock().mounted = false;
                bail!(
                    "umount {}: {}",
                    self.at.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Unmounted: the session thread ends (its own unmount on drop finds nothing to do).
        let r = session.join();
        self.fs.lock().mounted = false;
        r.context("FUSE session")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            eprintln!("powerfs: {e:#}");
        }
    }
}

/// The FUSE side of a mounted volume.
struct Fuse {
    fs: PowerFs,
}

impl Fuse {
    fn vol(&self) -> MutexGuard<'_, Volume> {
        self.fs.lock()
    }
}

impl fuser::Filesystem for Fuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut v = self.vol();
        match v
            .dir(parent.0)
            .and_then(|d| d.get(name).copied().ok_or(Errno::ENOENT))
            .and_then(|ino| v.attr(ino))
        {
            Ok(attr) => {
                *v.lookups.entry(attr.ino.0).or_default() += 1;
                reply.entry(&TTL, &attr, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut v = self.vol();
        if let Some(n) = v.lookups.get_mut(&ino.0) {
            *n = n.saturating_sub(nlookup);
            if *n == 0 {
                v.lookups.remove(&ino.0);
                v.release_if_unlinked(ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vol().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut v = self.vol();
        let r = (|| {
            if let Some(size) = size {
                v.truncate(ino.0, size)?;
            }
            let inode = v.current.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            if let Some(mode) = mode {
                inode.perm = (mode & 0o7777) as u16;
            }
            if let Some(uid) = uid {
                inode.uid = uid;
            }
            if let Some(gid) = gid {
                inode.gid = gid;
            }
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => inode.mtime = t,
                Some(TimeOrNow::Now) => inode.mtime = SystemTime::now(),
                None => {}
            }
            v.attr(ino.0)
        })();
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if !matches!(mode & libc_s_ifmt(), 0 | 0o100000) {
            return reply.error(Errno::EPERM);
        }
        let inode = Inode {
            body: Body::File(FileData::default()),
            perm: (mode & !umask & 0o7777) as u16,
            uid: req.uid(),
            gid: req.gid(),
            mtime: SystemTime::now(),
        };
        let mut v = self.vol();
        match v.new_inode(parent.0, name, inode) {
            Ok(attr) => {
                *v.lookups.entry(attr.ino.0).or_default() += 1;
                reply.entry(&TTL, &attr, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let inode = Inode::new_dir((mode & !umask & 0o7777) as u16, req.uid(), req.gid());
        let mut v = self.vol();
        match v.new_inode(parent.0, name, inode) {
            Ok(attr) => {
                *v.lookups.entry(attr.ino.0).or_default() += 1;
                reply.entry(&TTL, &attr, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.vol().unlink(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.vol().unlink(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .vol()
            .rename(parent.0, name, newparent.0, newname, flags)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut v = self.vol();
        if !v.current.contains_key(&ino.0) {
            return reply.error(Errno::ENOENT);
        }
        *v.open.entry(ino.0).or_default() += 1;
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let inode = Inode {
            body: Body::File(FileData::default()),
            perm: (mode & !umask & 0o7777) as u16,
            uid: req.uid(),
            gid: req.gid(),
            mtime: SystemTime::now(),
        };
        let mut v = self.vol();
        match v.new_inode(parent.0, name, inode) {
            Ok(attr) => {
                *v.open.entry(attr.ino.0).or_default() += 1;
                *v.lookups.entry(attr.ino.0).or_default() += 1;
                reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let v = self.vol();
        match v.current.get(&ino.0).map(|i| &i.body) {
            Some(Body::File(f)) => reply.data(&f.read(offset, size as usize)),
            Some(Body::Dir(_)) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.vol().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut v = self.vol();
        if let Some(n) = v.open.get_mut(&ino.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                v.open.remove(&ino.0);
                v.release_if_unlinked(ino.0);
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.vol().sync_file(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let v = self.vol();
        let entries = match v.dir(ino.0) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (ino.0, FileType::Directory, OsStr::new("..")),
        ];
        let all = dots.into_iter().chain(entries.iter().map(|(name, child)| {
            let kind = match v.current.get(child).map(|i| &i.body) {
                Some(Body::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            (*child, kind, name.as_os_str())
        }));
        for (i, (child, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.vol().sync_dir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Plenty of room: the test machine's memory is the real limit.
        reply.statfs(
            1 << 24,
            1 << 24,
            1 << 24,
            1 << 20,
            1 << 20,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut v = self.vol();
        let r = v.file_mut(ino.0).map(|f| f.size).and_then(|size| {
            let end = offset.saturating_add(length);
            if end > size {
                v.truncate(ino.0, end)
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

// The file-type bits of a mode (S_IFMT); 0 or S_IFREG is a regular file.
const fn libc_s_ifmt() -> u32 {
    0o170000
}
