//! Power cuts (issue 18): the FUSE file system of `medledger_tests::powerloss` checked on its
//! own, then gateways run on it and cut while they work.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use medledger_tests::powerloss::{CutReport, PowerFs, Rng, PAGE};

fn sync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync {}: {e}", dir.display()));
}

fn write_file(path: &Path, data: &[u8], sync: bool) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).expect("write");
    if sync {
        f.sync_all().expect("fsync");
    }
}

/// Runs `work` on a fresh mount of `fs`, then cuts the power with `seed` and mounts again.
fn cut_after(
    fs: &PowerFs,
    at: &Path,
    seed: u64,
    work: impl FnOnce(&Path),
) -> (medledger_tests::powerloss::Mount, CutReport) {
    let m = fs.mount(at).expect("mount");
    work(at);
    m.unmount().expect("unmount");
    let report = fs.power_cut(&mut Rng::new(seed)).expect("cut");
    (fs.mount(at).expect("mount again"), report)
}

#[test]
fn fs_keeps_synced_files_and_forgets_unsynced_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = PowerFs::new();
    let (m, report) = cut_after(&fs, tmp.path(), 1, |root| {
        fs::create_dir(root.join("kept")).expect("mkdir");
        write_file(&root.join("kept/a"), b"synced file in a synced dir", true);
        sync_dir(&root.join("kept"));
        sync_dir(root);
        // Data synced, name never: the file vanishes.
        write_file(&root.join("kept/orphan"), b"data synced, name not", true);
        // A new directory whose parent was never synced vanishes with all it holds, synced or not.
        fs::create_dir(root.join("lost")).expect("mkdir");
        write_file(&root.join("lost/b"), b"synced, in a directory never made durable", true);
        sync_dir(&root.join("lost"));
    });
    let root = m.path();
    assert_eq!(
        fs::read(root.join("kept/a")).expect("kept/a survives"),
        b"synced file in a synced dir"
    );
    assert!(!root.join("kept/orphan").exists(), "unsynced name survived");
    assert!(!root.join("lost").exists(), "unsynced directory survived");
    // kept/orphan, lost and lost/b.
    assert_eq!(report.names_forgotten, 3, "{report:?}");
    assert_eq!(report.pages_kept + report.pages_dropped, 0, "{report:?}");
    // After a cut the survivors are durable: a second cut changes nothing.
    m.unmount().expect("unmount");
    let report = fs.power_cut(&mut Rng::new(2)).expect("cut");
    assert_eq!(report, CutReport::default());
    let m = fs.mount(tmp.path()).expect("mount");
    assert!(m.path().join("kept/a").exists());
}

#[test]
fn fs_writes_each_unsynced_page_whole_or_not_at_all() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = PowerFs::new();
    let pages = 64;
    let old = vec![b'a'; pages * PAGE];
    let seed = medledger_tests::powerloss::seed();
    eprintln!("seed {seed}");
    let (m, report) = cut_after(&fs, tmp.path(), seed, |root| {
        write_file(&root.join("f"), &old, true);
        sync_dir(root);
        // Overwrite all of it and grow it by one page and a half, without a sync.
        let mut f = OpenOptions::new()
            .write(true)
            .open(root.join("f"))
            .expect("open");
        f.write_all(&vec![b'b'; pages * PAGE + PAGE + PAGE / 2])
            .expect("write");
        // A second file written with sync_file_range-like care only: close and no fsync.
        write_file(&root.join("g"), b"never synced", false);
    });
    let data = fs::read(m.path().join("f")).expect("read");
    assert!(data.len() >= old.len(), "synced size lost: {}", data.len());
    let chunks: Vec<&[u8]> = data.chunks(PAGE).collect();
    let mut kept = 0;
    for (i, c) in chunks.iter().enumerate().take(pages) {
        assert!(
            c.iter().all(|b| *b == c[0]) && (c[0] == b'a' || c[0] == b'b'),
            "page {i} torn inside"
        );
        kept += usize::from(c[0] == b'b');
    }
    // 64 coins: both outcomes appear unless the generator is broken.
    assert!(kept > 0 && kept < pages, "{kept} of {pages} pages new");
    assert_eq!(report.pages_kept + report.pages_dropped, pages as u64 + 2);
    assert!(!m.path().join("g").exists());
    // The same seed gives the same cut.
    let fs2 = PowerFs::new();
    let tmp2 = tempfile::tempdir().expect("tempdir");
    let (m2, report2) = cut_after(&fs2, tmp2.path(), seed, |root| {
        write_file(&root.join("f"), &old, true);
        sync_dir(root);
        let mut f = OpenOptions::new()
            .write(true)
            .open(root.join("f"))
            .expect("open");
        f.write_all(&vec![b'b'; pages * PAGE + PAGE + PAGE / 2])
            .expect("write");
        write_file(&root.join("g"), b"never synced", false);
    });
    assert_eq!(report, report2);
    assert_eq!(fs::read(m2.path().join("f")).expect("read"), data);
}

#[test]
fn fs_renames_and_removals_last_only_once_their_directory_is_synced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = PowerFs::new();
    let (m, _) = cut_after(&fs, tmp.path(), 3, |root| {
        write_file(&root.join("old"), b"old", true);
        write_file(&root.join("doomed"), b"doomed", true);
        sync_dir(root);
        // Write-then-rename without syncing the directory: the rename is lost.
        write_file(&root.join("new.tmp"), b"new", true);
        fs::rename(root.join("new.tmp"), root.join("old")).expect("rename");
        fs::remove_file(root.join("doomed")).expect("rm");
    });
    let root = m.path();
    assert_eq!(fs::read(root.join("old")).expect("old"), b"old");
    assert_eq!(fs::read(root.join("doomed")).expect("doomed"), b"doomed");
    assert!(!root.join("new.tmp").exists());
    drop(m);
    let (m, _) = cut_after(&fs, tmp.path(), 4, |root| {
        write_file(&root.join("new.tmp"), b"new", true);
        fs::rename(root.join("new.tmp"), root.join("old")).expect("rename");
        fs::remove_file(root.join("doomed")).expect("rm");
        sync_dir(root);
        // A truncation that was synced stays.
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join("old"))
            .expect("open");
        f.set_len(2).expect("truncate");
        f.sync_data().expect("fdatasync");
    });
    let root = m.path();
    assert_eq!(fs::read(root.join("old")).expect("old"), b"ne");
    assert!(!root.join("doomed").exists());
    assert!(!root.join("new.tmp").exists());
}
