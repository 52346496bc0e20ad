//! Power cuts (issue 18): the FUSE file system of `medledger_tests::powerloss` checked on its
//! own, then gateways run on it and cut while they work.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certs::StaffRole;
use ledger_node::entry::EventKind;
use medledger_tests::bin;
use medledger_tests::cluster::{eventually, poll, start_nodes, status, Gateway, Site};
use medledger_tests::powerloss::{CutReport, Mount, PowerFs, Rng, PAGE};
use serde_json::{json, Value};

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
        write_file(
            &root.join("lost/b"),
            b"synced, in a directory never made durable",
            true,
        );
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

/// A file replaced by renames (write a temporary file, sync it, rename it over the name, sync
/// the directory: how a gateway replaces `raft-snapshot.bin`) is never missing to a reader that
/// opens it meanwhile, also while an earlier version is still open.
#[test]
fn fs_a_name_replaced_by_rename_is_never_missing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = PowerFs::new();
    let m = fs.mount(tmp.path()).expect("mount");
    let root = m.path().to_owned();
    write_file(&root.join("bin"), b"version 0", true);
    sync_dir(&root);
    let stop = Arc::new(AtomicBool::new(false));
    let missing = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (root, stop, missing, opened) =
                (root.clone(), stop.clone(), missing.clone(), opened.clone());
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match File::open(root.join("bin")) {
                        Ok(f) => {
                            opened.fetch_add(1, Ordering::SeqCst);
                            // Keep a few old versions open, as a snapshot being sent is.
                            held.push(f);
                            if held.len() > 3 {
                                held.remove(0);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            missing.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => panic!("open: {e}"),
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut versions = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        versions += 1;
        let t = root.join("bin.tmp");
        write_file(&t, format!("version {versions}").as_bytes(), true);
        let reader = File::open(&t).expect("open tmp");
        fs::rename(&t, root.join("bin")).expect("rename");
        sync_dir(&root);
        drop(reader);
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().expect("reader");
    }
    let (missing, opened) = (
        missing.load(Ordering::SeqCst),
        opened.load(Ordering::SeqCst),
    );
    eprintln!("{versions} versions, {opened} opens, {missing} not found");
    assert_eq!(
        missing, 0,
        "the name was missing {missing} times in {opened} opens"
    );
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

/// sled counts what its flush wrote as stable: its page-table snapshots record it and its
/// segment cleaner frees and reuses the segments whose pages it relocated. Stock sled 0.34.7
/// flushes with `sync_file_range`, which makes nothing durable here (nor empties a drive's write
/// cache), so a cut lost data sled had already counted on, and sled's recovery then failed on
/// the log: "Read corrupted data at file offset" or a panic in its snapshot, found by the
/// release-build rounds of `power_cut_during_snapshot_install` (docs/operations.md). The
/// patched sled (ledger-node/vendor/sled/PATCHED.md) flushes with `fdatasync`: everything its
/// flush returned for survives any cut, with no other sync from us, and it opens again. Several
/// rounds of overwrites, so that segments are cleaned and reused (sled writes a page-table
/// snapshot at each open).
#[test]
fn sled_flush_alone_survives_a_cut_while_segments_are_reused() {
    if let Ok(dir) = std::env::var("MEDLEDGER_SLED_CHILD") {
        // A panic in sled (its recovery panics on some logs) is reported as this round's error.
        if let Err(p) = std::panic::catch_unwind(|| sled_child(Path::new(&dir))) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            println!("error sled panicked: {msg}");
        }
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let fs = PowerFs::new();
    let seed = medledger_tests::powerloss::seed();
    eprintln!("seed {seed}");
    let mut rng = Rng::new(seed);
    // Every pass overwrites every key with its tag, so what the last flush covered is one tag.
    let mut flushed: Option<u64> = None;
    for round in 0..5u64 {
        let m = fs.mount(tmp.path()).expect("mount");
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "powerloss::sled_flush_alone_survives_a_cut_while_segments_are_reused",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MEDLEDGER_SLED_CHILD", tmp.path().join("sled"))
            .env("MEDLEDGER_SLED_ROUND", round.to_string())
            .env("MEDLEDGER_SLED_PASSES", (3 + rng.range(0, 3)).to_string())
            .env("MEDLEDGER_SLED_TAIL", rng.range(1, SLED_KEYS).to_string())
            .env(
                "MEDLEDGER_SLED_FLUSHED",
                flushed.map(|t| t.to_string()).unwrap_or_default(),
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the sled child");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut done = false;
        for line in std::io::BufRead::lines(out) {
            let line = line.expect("child output");
            if let Some(tag) = line.strip_prefix("flushed ") {
                flushed = Some(tag.parse().expect("tag"));
            } else if line == "done" {
                done = true;
                break;
            } else if let Some(e) = line.strip_prefix("error ") {
                panic!("round {round} (seed {seed}): {e}");
            }
        }
        // The power goes with the last writes in sled's buffers or written but not synced.
        let _ = child.kill();
        let _ = child.wait();
        assert!(done, "round {round} (seed {seed}): the child ended early");
        m.unmount().expect("unmount");
        fs.power_cut(&mut rng).expect("cut");
    }
}

const SLED_KEYS: u64 = 400;

/// The child of `sled_flush_alone_survives_a_cut_while_segments_are_reused`: opens sled, checks
/// what the last round's flush covered, overwrites every key a few times with a flush after
/// each pass (printing its tag), then some keys once more without a flush (tag round * 10 + 9),
/// and waits to be killed.
fn sled_child(dir: &Path) {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let round: u64 = var("MEDLEDGER_SLED_ROUND").parse().expect("round");
    let passes: u64 = var("MEDLEDGER_SLED_PASSES").parse().expect("passes");
    let tail: u64 = var("MEDLEDGER_SLED_TAIL").parse().expect("tail");
    let flushed: Option<u64> = var("MEDLEDGER_SLED_FLUSHED").parse().ok();
    let opened = sled::Config::new()
        .path(dir)
        .segment_size(64 * 1024)
        .flush_every_ms(None)
        .open();
    let db = match opened {
        Ok(db) => db,
        Err(e) => return println!("error sled does not open: {e}"),
    };
    // The store makes sled's names durable once, when it opens it (store::open_db).
    File::open(dir.join("conf"))
        .and_then(|f| f.sync_all())
        .expect("sync conf");
    sync_dir(dir);
    sync_dir(dir.parent().expect("parent"));
    if let Some(tag) = flushed {
        for k in 0..SLED_KEYS {
            match db.get(k.to_be_bytes()) {
                // Written after that flush: may have reached the disk, or not.
                Ok(Some(v)) if v == value(k, tag) || v == value(k, (round - 1) * 10 + 9) => {}
                Ok(other) => {
                    return println!(
                        "error key {k}: flushed with tag {tag}, found {:?}",
                        other.map(|v| String::from_utf8_lossy(&v[..16]).into_owned())
                    )
                }
                Err(e) => return println!("error key {k}: {e}"),
            }
        }
    }
    for pass in 0..passes {
        let tag = round * 10 + pass;
        for k in 0..SLED_KEYS {
            db.insert(k.to_be_bytes(), value(k, tag)).expect("insert");
        }
        db.flush().expect("flush");
        println!("flushed {tag}");
    }
    for k in 0..tail {
        db.insert(k.to_be_bytes(), value(k, round * 10 + 9))
            .expect("insert");
    }
    println!("done");
    std::io::stdout().flush().expect("stdout");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn value(key: u64, round: u64) -> Vec<u8> {
    format!("{key:08}-{round:04}-").repeat(20).into_bytes()
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

// ---------------------------------------------------------------------------------------------
// Gateways on PowerFs volumes.

/// Rounds per kind: a few in the default suite, 200 with `MEDLEDGER_LONG_TESTS=1`.
fn rounds(default: u32) -> u32 {
    if let Some(n) = std::env::var("MEDLEDGER_POWERLOSS_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return n;
    }
    if medledger_tests::long_tests() {
        200
    } else {
        default
    }
}

/// The run's seed, printed so that a failing run can be replayed. A replay repeats every random
/// choice (when to cut, whom, which pages survive) but not the timing of the processes, so it
/// reproduces a loss often rather than always.
fn run_seed(test: &str) -> u64 {
    let seed = medledger_tests::powerloss::seed();
    eprintln!("{test}: seed {seed} (replay with MEDLEDGER_POWERLOSS_SEED={seed})");
    seed
}

/// The seeds of a test's rounds: first those of rounds that once found a missing sync (kept as
/// regression tests), then `rounds(default)` drawn from the run's seed.
fn round_seeds(test: &str, found: &[u64], default: u32) -> Vec<u64> {
    let mut master = Rng::new(run_seed(test));
    let mut seeds = found.to_vec();
    seeds.extend((0..rounds(default)).map(|_| master.next_u64()));
    seeds
}

/// Round seeds of `power_cut_one_gateway_under_writes` that found a missing sync.
/// 6379465957844797959: the node came back empty, with no Raft state and no leader: nothing
/// synced the directories `sled` and its parent, so their names were forgotten (fixed in
/// `ledger_node::store::open_db`, which now syncs them and sled's `conf`, and `keys.rs`, which
/// syncs the directory of a new `node.key`).
const FOUND_ONE_GATEWAY: &[u64] = &[6_379_465_957_844_797_959];

/// A gateway whose data directory (`DIR/data`) is a [`PowerFs`] volume; its config and log stay
/// outside (`DIR/gateway.toml`, `DIR/gateway.log`), so a cut leaves the log to read.
struct PNode {
    // Declared first so that it is dropped (killed) before the volume is unmounted.
    gw: Gateway,
    fs: PowerFs,
    mount: Option<Mount>,
}

impl PNode {
    /// Prepares gateway `id` of `site` with its certificate and key copied onto a fresh volume,
    /// made durable as an installer would (`sync`).
    fn prepare(site: &Site, id: u64, extra: &str) -> (Gateway, PowerFs, Mount) {
        let gw = Gateway::new(site, id, extra);
        let data = gw.dir.join("data");
        fs::create_dir(&data).expect("mkdir data");
        let volume = PowerFs::new();
        let mount = volume.mount(&data).expect("mount");
        fs::create_dir(data.join("pki")).expect("mkdir pki");
        for f in ["gateway.crt", "gateway.key", "root.crt"] {
            fs::copy(gw.dir.join("pki").join(f), data.join("pki").join(f)).expect("copy pki");
        }
        let text = fs::read_to_string(&gw.config).expect("config");
        let from = format!("data_dir = \"{}\"", gw.dir.display());
        assert!(text.contains(&from), "{text}");
        let text = text.replace(&from, &format!("data_dir = \"{}\"", data.display()));
        fs::write(&gw.config, text).expect("config");
        volume.sync_everything();
        (gw, volume, mount)
    }

    fn data(&self) -> PathBuf {
        self.gw.dir.join("data")
    }

    /// The power goes: the process is killed, the volume unmounted and cut, then mounted again
    /// (the gateway is not restarted).
    fn cut(&mut self, rng: &mut Rng) -> CutReport {
        self.gw.kill();
        if let Some(m) = self.mount.take() {
            m.unmount().expect("unmount");
        }
        let report = self.fs.power_cut(rng).expect("power cut");
        self.mount = Some(self.fs.mount(&self.data()).expect("mount after the cut"));
        report
    }

    fn log_tail(&self) -> String {
        self.gw.log_tail(30)
    }
}

/// Starts `n` gateways on volumes and makes them one cluster.
async fn start_site(site: &Site, n: u64, extra: &str) -> Vec<PNode> {
    let mut gws = Vec::new();
    let mut volumes = Vec::new();
    for id in 1..=n {
        let (gw, fs, mount) = PNode::prepare(site, id, extra);
        gws.push(gw);
        volumes.push((fs, mount));
    }
    let voters: Vec<(u64, String)> = gws.iter().map(|g| (g.id, g.addr())).collect();
    let gws = start_nodes(site, gws, &voters).await;
    gws.into_iter()
        .zip(volumes)
        .map(|(gw, (fs, mount))| PNode {
            gw,
            fs,
            mount: Some(mount),
        })
        .collect()
}

fn event(id: &str, n: u64) -> Value {
    json!({
        "event_id": id,
        "kind": if n.is_multiple_of(3) { "calibration" } else { "preventive-maintenance" },
        "device_id": format!("pump-{}", n % 20),
        "occurred_at": "2026-01-05T10:00:00Z",
        "components": [
            {"name": "result", "class": "maintenance", "value": "pass"},
            {"name": "technician", "class": "maintenance", "value": format!("biomed:{}", n % 7)},
        ],
    })
}

type Acked = Arc<Mutex<HashMap<String, u64>>>;

/// Writers that post events until stopped; each event is retried (same event id, next
/// gateway) until acknowledged, so an event in flight at a cut is either recorded once or
/// retried, never lost silently. Acknowledged ids and their sequence numbers go into `acked`.
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(
        client: &reqwest::Client,
        nodes: &[&PNode],
        prefix: &str,
        n: usize,
        acked: &Acked,
    ) -> Self {
        let addrs: Vec<String> = nodes.iter().map(|n| n.gw.addr()).collect();
        let logs: Arc<Vec<PathBuf>> =
            Arc::new(nodes.iter().map(|n| n.gw.dir.join("gateway.log")).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let addrs = Arc::new(addrs);
        let tasks = (0..n)
            .map(|w| {
                let (client, addrs, next, acked, stop, logs) = (
                    client.clone(),
                    addrs.clone(),
                    next.clone(),
                    acked.clone(),
                    stop.clone(),
                    logs.clone(),
                );
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut node = w;
                    while !stop.load(Ordering::SeqCst) {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let id = format!("{prefix}-{i}");
                        let body = event(&id, i);
                        let deadline = Instant::now() + Duration::from_secs(120);
                        // What each gateway last answered, for the message if none takes it.
                        let mut answers: HashMap<String, String> = HashMap::new();
                        loop {
                            let addr = &addrs[node % addrs.len()];
                            let r = client
                                .post(format!("https://{addr}/v1/events"))
                                .json(&body)
                                .send()
                                .await;
                            match r {
                                Ok(r) if r.status().is_success() => {
                                    let v: Value = r.json().await.expect("json");
                                    let seq = v["seq"].as_u64().expect("seq");
                                    acked.lock().expect("lock").insert(id, seq);
                                    break;
                                }
                                Ok(r) => {
                                    let status = r.status();
                                    let text = r.text().await.unwrap_or_default();
                                    answers.insert(addr.clone(), format!("{status}: {text}"));
                                }
                                Err(e) => {
                                    answers.insert(addr.clone(), format!("error: {e}"));
                                }
                            }
                            if Instant::now() >= deadline {
                                panic!(
                                    "event {id} not acknowledged within 120 s; last answers: \
                                     {answers:#?}\n{}",
                                    keep_logs(&logs)
                                );
                            }
                            node += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
            })
            .collect();
        Writers { stop, tasks }
    }

    /// Stops the writers; each first gets its event in hand acknowledged.
    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("writer task");
        }
    }
}

/// Keeps the gateways' logs in `$TMPDIR/medledger-powerloss-<pid>` (the site's directory goes
/// when the test fails) and returns where, with each log's last lines.
fn keep_logs(logs: &[PathBuf]) -> String {
    let keep = std::env::temp_dir().join(format!("medledger-powerloss-{}", std::process::id()));
    let _ = fs::create_dir_all(&keep);
    let mut out = format!("logs kept in {}", keep.display());
    for (i, log) in logs.iter().enumerate() {
        let name = log.parent().and_then(|d| d.file_name()).map_or_else(
            || format!("gateway{i}"),
            |d| d.to_string_lossy().into_owned(),
        );
        let _ = fs::copy(log, keep.join(format!("{name}.log")));
        let t = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        out.push_str(&format!("\n--- {} (last lines):\n{tail}", log.display()));
    }
    out
}

fn acked_count(acked: &Acked) -> usize {
    acked.lock().expect("lock").len()
}

/// Starts `n` writers of round `round` through all of `nodes` and returns them, still writing,
/// once a random 20 to 300 more events are acknowledged.
async fn writes_before_the_cut(
    writer: &reqwest::Client,
    nodes: &[PNode],
    round: usize,
    n: usize,
    acked: &Acked,
    rng: &mut Rng,
) -> Writers {
    let writers = Writers::start(
        writer,
        &nodes.iter().collect::<Vec<_>>(),
        &format!("r{round}"),
        n,
        acked,
    );
    let target = acked_count(acked) + rng.range(20, 300) as usize;
    until_acked(acked, target, "writes before the cut").await;
    writers
}

/// Waits until `n` events are acknowledged in all.
async fn until_acked(acked: &Acked, n: usize, what: &str) {
    eventually(what, Duration::from_secs(120), || {
        let a = acked.clone();
        async move { (acked_count(&a) >= n).then_some(()) }
    })
    .await;
}

/// Every gateway answers with the same leader, last applied log index and ledger size: the
/// last applied log index.
async fn converged(admin: &reqwest::Client, addrs: &[String]) -> Option<u64> {
    let mut applied = HashSet::new();
    let mut sizes = HashSet::new();
    let mut leaders = HashSet::new();
    for a in addrs {
        let s = status(admin, a).await?;
        applied.insert(s["last_applied"].as_u64()?);
        sizes.insert(s["ledger_size"].as_u64()?);
        leaders.insert(s["leader"].as_u64()?);
    }
    (applied.len() == 1 && sizes.len() == 1 && leaders.len() == 1)
        .then(|| applied.into_iter().next())
        .flatten()
}

/// Debugging aid for a site that does not converge: each gateway's entries (event ids by
/// sequence number) read through receipts, where they differ, and the logs kept in
/// `$TMPDIR/medledger-powerloss-<pid>`.
async fn diverged(admin: &reqwest::Client, nodes: &[PNode]) -> PathBuf {
    let keep = std::env::temp_dir().join(format!("medledger-powerloss-{}", std::process::id()));
    let _ = fs::create_dir_all(&keep);
    let mut all = Vec::new();
    for n in nodes {
        let _ = fs::copy(
            n.gw.dir.join("gateway.log"),
            keep.join(format!("node{}.log", n.gw.id)),
        );
        let addr = n.gw.addr();
        let size = status(admin, &addr)
            .await
            .and_then(|s| s["ledger_size"].as_u64())
            .unwrap_or(0);
        let mut ids = Vec::new();
        for seq in 0..size {
            let r = admin
                .get(format!("https://{addr}/v1/entries/{seq}/receipt"))
                .send()
                .await;
            let id = match r {
                Ok(r) if r.status().is_success() => {
                    let v: Value = r.json().await.unwrap_or_default();
                    v["entry"]["entry"]
                        .as_str()
                        .and_then(|h| hex::decode(h).ok())
                        .and_then(|b| ledger_node::Entry::decode(&b).ok())
                        .map(|e| format!("{:?}/{}", e.body.event_id, e.body.device_id))
                        .unwrap_or_else(|| format!("undecodable {v}"))
                }
                Ok(r) => format!("status {}", r.status()),
                Err(e) => format!("error {e}"),
            };
            ids.push(id);
        }
        let text: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| format!("{i} {id}"))
            .collect();
        let _ = fs::write(
            keep.join(format!("node{}.entries", n.gw.id)),
            text.join("\n"),
        );
        all.push(ids);
    }
    let longest = all.iter().map(Vec::len).max().unwrap_or(0);
    for seq in 0..longest {
        let row: Vec<&str> = all
            .iter()
            .map(|ids| ids.get(seq).map_or("-", |s| s.as_str()))
            .collect();
        if row.iter().any(|r| *r != row[0]) {
            eprintln!("first difference at seq {seq}: {row:?}");
            break;
        }
    }
    eprintln!("logs and entries kept in {}", keep.display());
    keep
}

/// The entries of a verified export, by sequence number: (kind, event id, device id).
type Entries = Vec<(u64, EventKind, Option<String>, String)>;

/// After a round: the gateways agree, a replicated checkpoint cuts byte-identical exports that
/// `medledger verify` accepts, and every acknowledged event is there once, at the sequence
/// number it was acknowledged with. Returns the ledger's entries.
async fn check_site(
    admin: &reqwest::Client,
    nodes: &[PNode],
    acked: &HashMap<String, u64>,
    out: &Path,
) -> Entries {
    // A purged log without the snapshot file that covered it means a file was lost: a gateway
    // builds a new one and goes on (round 129 of a release run stopped on it before; the test
    // file system's own defect then), but the round has found what this test looks for.
    for n in nodes {
        let log = fs::read_to_string(n.gw.dir.join("gateway.log")).unwrap_or_default();
        assert!(
            !log.contains(ledger_node::raft::state_machine::SNAPSHOT_LOST),
            "gateway {} lost its snapshot file:\n{}",
            n.gw.id,
            n.log_tail()
        );
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.gw.addr()).collect();
    let converge = |what: &'static str| {
        let (admin, addrs) = (admin.clone(), addrs.clone());
        async move {
            if let Err(e) = poll(what, Duration::from_secs(90), || {
                let (admin, addrs) = (admin.clone(), addrs.clone());
                async move { converged(&admin, &addrs).await }
            })
            .await
            {
                let mut logs = Vec::new();
                for n in nodes {
                    let s = status(&admin, &n.gw.addr()).await;
                    logs.push(format!("node {}: {s:?}\n{}", n.gw.id, n.log_tail()));
                }
                diverged(&admin, nodes).await;
                panic!("{e}\n{}", logs.join("\n"));
            }
        }
    };
    converge("the gateways to agree").await;
    // The checkpoint goes to whichever gateway takes it (a follower forwards it).
    let mut k = 0usize;
    poll("a checkpoint", Duration::from_secs(30), || {
        k += 1;
        let (admin, addr) = (admin.clone(), addrs[k % addrs.len()].clone());
        async move {
            let r = admin
                .post(format!("https://{addr}/cluster/checkpoint"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await
    .expect("checkpoint");
    // The exports are compared at one applied log index: a checkpoint request that failed for
    // its client (a gateway restarting, a leader changing under the poll above) may still be
    // committed afterwards, and a follower applies it a heartbeat after the leader. A round of
    // 200 stopped on exactly that (the leader's export had the late checkpoint, the followers'
    // not yet). Exports taken while the gateways agree on one last applied index, before and
    // after, must be byte-identical; otherwise the site is let settle and asked again.
    let mut attempt = 0;
    let exports = loop {
        attempt += 1;
        converge("the checkpoint to reach every gateway").await;
        let before = converged(admin, &addrs).await;
        let mut exports = Vec::new();
        for a in &addrs {
            // A long run's ledger grows to tens of thousands of entries, which a debug build
            // exports in more than the client's usual timeout when the machine is busy
            // (200-round runs of the snapshot kinds stopped on it with nothing lost).
            let r = admin
                .get(format!("https://{a}/v1/export"))
                .timeout(Duration::from_secs(300))
                .send()
                .await
                .expect("export");
            assert!(r.status().is_success(), "export from {a}: {}", r.status());
            exports.push(r.bytes().await.expect("body").to_vec());
        }
        let after = converged(admin, &addrs).await;
        let same = exports.iter().all(|e| e == &exports[0]);
        let steady = before.is_some() && before == after;
        if same || steady || attempt >= 10 {
            if !same {
                let keep = diverged(admin, nodes).await;
                for (i, e) in exports.iter().enumerate() {
                    let _ = fs::write(keep.join(format!("node{}.export", i + 1)), e);
                }
                panic!(
                    "the gateways' exports differ at applied log index {before:?} / {after:?} \
                     (attempt {attempt}; kept in {})",
                    keep.display()
                );
            }
            break exports;
        }
        eprintln!(
            "exports differ while the gateways applied {before:?} then {after:?}: asking again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    fs::write(out, &exports[0]).expect("write export");
    let v = Command::new(bin("medledger"))
        .arg("verify")
        .arg(out)
        .output()
        .expect("verify");
    assert!(
        v.status.success(),
        "verify {}: {}{}",
        out.display(),
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let text = String::from_utf8(exports[0].clone()).expect("utf8");
    let mut entries = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for line in text.lines().skip(1) {
        let v: Value = serde_json::from_str(line).expect("export line");
        let Some(hexbytes) = v["entry"].as_str() else {
            continue;
        };
        let e = ledger_node::Entry::decode(&hex::decode(hexbytes).expect("hex")).expect("entry");
        if let Some(id) = &e.body.event_id {
            assert!(
                seen.insert(id.clone(), e.seq).is_none(),
                "event {id} recorded twice"
            );
        }
        entries.push((e.seq, e.body.kind, e.body.event_id, e.body.device_id));
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|(id, seq)| seen.get(*id) != Some(*seq))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost or moved, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    entries
}

/// What a test of several rounds saw, printed at its end (and written into docs/operations.md).
#[derive(Default)]
struct Tally {
    rounds: u32,
    cuts: u32,
    report: CutReport,
}

impl Tally {
    fn add(&mut self, r: &CutReport) {
        self.cuts += 1;
        self.report.pages_kept += r.pages_kept;
        self.report.pages_dropped += r.pages_dropped;
        self.report.names_forgotten += r.names_forgotten;
    }

    fn print(&self, test: &str, acked: usize, started: Instant) {
        eprintln!(
            "{test}: {} rounds, {} power cuts, {acked} acknowledged events, 0 lost; unsynced at \
             the cuts: {} pages written, {} pages lost, {} names forgotten; {:.0?}",
            self.rounds,
            self.cuts,
            self.report.pages_kept,
            self.report.pages_dropped,
            self.report.names_forgotten,
            started.elapsed()
        );
    }
}

/// Waits for a restarted gateway to answer and the site to have a leader.
async fn until_serving(admin: &reqwest::Client, nodes: &[PNode]) {
    for n in nodes {
        let addr = n.gw.addr();
        let r = poll(
            &format!("gateway {} to come back with a leader", n.gw.id),
            Duration::from_secs(60),
            || {
                let (admin, addr) = (admin.clone(), addr.clone());
                async move {
                    status(&admin, &addr)
                        .await
                        .filter(|s| !s["leader"].is_null())
                }
            },
        )
        .await;
        if let Err(e) = r {
            panic!("{e}\nits log:\n{}", n.log_tail());
        }
    }
}

/// Kind 1: one gateway under 8 concurrent writers loses power at a random moment, again and
/// again; it comes back without repair and has every acknowledged event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_one_gateway_under_writes() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let started = Instant::now();
    let seeds = round_seeds("power_cut_one_gateway_under_writes", FOUND_ONE_GATEWAY, 3);
    let site = Site::new();
    let mut nodes = start_site(&site, 1, "").await;
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let writer = site.staff_client("it-biomed", StaffRole::Biomed);
    let acked: Acked = Arc::default();
    let mut tally = Tally::default();
    for (round, seed) in seeds.into_iter().enumerate() {
        let mut rng = Rng::new(seed);
        let t = Instant::now();
        let writers = writes_before_the_cut(&writer, &nodes, round, 8, &acked, &mut rng).await;
        let t1 = t.elapsed();
        tally.add(&nodes[0].cut(&mut rng));
        nodes[0].gw.start();
        until_serving(&admin, &nodes).await;
        let t2 = t.elapsed();
        let target = acked_count(&acked) + 20;
        until_acked(&acked, target, "writes after the cut").await;
        writers.stop().await;
        let t3 = t.elapsed();
        let acked = acked.lock().expect("lock").clone();
        check_site(
            &admin,
            &nodes,
            &acked,
            &site.dir.path().join("export.jsonl"),
        )
        .await;
        eprintln!(
            "power_cut_one_gateway_under_writes round {round} (seed {seed}): cut at {t1:.1?}, \
             serving at {t2:.1?}, writers stopped at {t3:.1?}, checked at {:.1?}",
            t.elapsed()
        );
        tally.rounds += 1;
    }
    tally.print(
        "power_cut_one_gateway_under_writes",
        acked_count(&acked),
        started,
    );
}

/// Round seeds of `power_cut_whole_site_under_writes` in which the gateways came back with
/// different ledgers (same applied Raft index, different sizes or entries): the leader, restarted
/// as leader of its old term, gave new entries the log ids of entries its followers still held
/// from before the cut (fixed in the patched openraft's `Engine::startup`: a restarted leader
/// campaigns in a new term; ledger-node/vendor/openraft/PATCHED.md). 13788188410073470796 is the
/// round that showed it in the logs; the others are the failing rounds of earlier runs (ledger
/// sizes or exports differing), from before the fixes.
const FOUND_WHOLE_SITE: &[u64] = &[
    13_788_188_410_073_470_796,
    5_470_404_616_213_449_070,
    6_705_450_893_039_337_854,
    10_252_031_357_994_857_557,
    11_621_868_810_331_496_869,
];

/// Kind 2: a whole 3-gateway site loses power at once while writes go through all three
/// gateways; it comes back without repair, elects a leader and has every acknowledged event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_whole_site_under_writes() {
    let test = "power_cut_whole_site_under_writes";
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let started = Instant::now();
    let seeds = round_seeds(test, FOUND_WHOLE_SITE, 2);
    let site = Site::new();
    let mut nodes = start_site(&site, 3, "").await;
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let writer = site.staff_client("it-biomed", StaffRole::Biomed);
    let acked: Acked = Arc::default();
    let mut tally = Tally::default();
    for (round, seed) in seeds.into_iter().enumerate() {
        let mut rng = Rng::new(seed);
        let t = Instant::now();
        let writers = writes_before_the_cut(&writer, &nodes, round, 12, &acked, &mut rng).await;
        // The power goes everywhere at the same moment: every process dies before any volume
        // is cut.
        for n in nodes.iter_mut() {
            n.gw.kill();
        }
        let mut reports = Vec::new();
        for n in nodes.iter_mut() {
            let r = n.cut(&mut rng);
            tally.add(&r);
            reports.push(r);
        }
        eprintln!(
            "{test} round {round}: cut after {} acknowledged events; unsynced pages written/lost: \
             {:?}",
            acked_count(&acked),
            reports
                .iter()
                .map(|r| (r.pages_kept, r.pages_dropped))
                .collect::<Vec<_>>()
        );
        for n in nodes.iter_mut() {
            n.gw.start();
        }
        until_serving(&admin, &nodes).await;
        let target = acked_count(&acked) + 20;
        until_acked(&acked, target, "writes after the cut").await;
        writers.stop().await;
        let acked = acked.lock().expect("lock").clone();
        check_site(
            &admin,
            &nodes,
            &acked,
            &site.dir.path().join("export.jsonl"),
        )
        .await;
        eprintln!("{test} round {round} (seed {seed}): {:?}", t.elapsed());
        tally.rounds += 1;
    }
    tally.print(test, acked_count(&acked), started);
}

/// Round seeds of `power_cut_one_of_three_gateways` that found a missing sync (none yet).
const FOUND_ONE_OF_THREE: &[u64] = &[];

/// Kind 3: one gateway of three (the leader half of the time) loses power while the other two
/// go on taking writes; it comes back, rejoins and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_one_of_three_gateways() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let started = Instant::now();
    let test = "power_cut_one_of_three_gateways";
    let seeds = round_seeds(test, FOUND_ONE_OF_THREE, 2);
    let site = Site::new();
    let mut nodes = start_site(&site, 3, "").await;
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let writer = site.staff_client("it-biomed", StaffRole::Biomed);
    let addrs: Vec<String> = nodes.iter().map(|n| n.gw.addr()).collect();
    let acked: Acked = Arc::default();
    let mut tally = Tally::default();
    for (round, seed) in seeds.into_iter().enumerate() {
        let mut rng = Rng::new(seed);
        let t = Instant::now();
        let writers = writes_before_the_cut(&writer, &nodes, round, 12, &acked, &mut rng).await;
        let leader = status(&admin, &addrs[0])
            .await
            .and_then(|s| s["leader"].as_u64());
        let victim = match leader {
            Some(l) if rng.coin() => (l - 1) as usize,
            _ => rng.range(0, 3) as usize,
        };
        tally.add(&nodes[victim].cut(&mut rng));
        // The other two elect a leader if needed and go on.
        let target = acked_count(&acked) + rng.range(20, 300) as usize;
        until_acked(&acked, target, "writes while one gateway is down").await;
        nodes[victim].gw.start();
        until_serving(&admin, &nodes).await;
        writers.stop().await;
        let acked = acked.lock().expect("lock").clone();
        check_site(
            &admin,
            &nodes,
            &acked,
            &site.dir.path().join("export.jsonl"),
        )
        .await;
        eprintln!(
            "{test} round {round} (seed {seed}, gateway {} cut{}): {:?}",
            victim + 1,
            if leader == Some(victim as u64 + 1) {
                ", the leader"
            } else {
                ""
            },
            t.elapsed()
        );
        tally.rounds += 1;
    }
    tally.print(test, acked_count(&acked), started);
}

/// Runs the `medledger` CLI and returns its stdout, or its stderr as the error.
fn medledger(args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin("medledger"))
        .args(args)
        .output()
        .map_err(|e| format!("cannot run medledger: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "medledger {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn medledger_ok(args: &[&str]) -> String {
    medledger(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The serial of a PEM certificate, lowercase hex without separators.
fn serial_of(cert: &Path) -> String {
    let pem = fs::read(cert).expect("read certificate");
    let chain = certs::pem::certs_from_pem(&pem, cert).expect("pem");
    certs::parse_identity(&chain[0]).expect("identity").serial
}

/// An HTTPS client with the staff certificate `prefix.crt`/`prefix.key`, trusting `root_pem`.
fn client_from_files(prefix: &Path, root_pem: &[u8]) -> reqwest::Client {
    let chain = fs::read(prefix.with_extension("crt")).expect("crt");
    let key = fs::read(prefix.with_extension("key")).expect("key");
    let key = certs::CertifiedKey::from_pem(
        std::str::from_utf8(&chain).expect("utf8"),
        std::str::from_utf8(&key).expect("utf8"),
    )
    .expect("certified key");
    let root = certs::pem::certs_from_pem(root_pem, Path::new("root.crt")).expect("root");
    let cfg = certs::client_config(&root[..1], &key, &certs::RevocationPolicy::default(), &[])
        .expect("client config");
    reqwest::Client::builder()
        .use_preconfigured_tls((*cfg).clone())
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .expect("client")
}

/// Rounds of `power_cut_after_ca_init_cluster_init_and_issue` that found a defect: (round seed,
/// stage). 2736623188282813470, stage 2 (round 128 of run seed 268372509954072845): the export
/// after the cut lacked the acknowledged revocation. The gateway came back with it in its Raft
/// log but not applied (the apply was not yet synced), and `POST /cluster/checkpoint`, asked as
/// soon as the gateway led again, covered only the entries before it; the checkpoint now waits
/// until everything committed is applied (`api::cluster::checkpoint`).
const FOUND_PKI: &[(u64, usize)] = &[(2_736_623_188_282_813_470, 2)];

/// Kind 4: the power goes right after `medledger ca init` (before any gateway ran), right after
/// `cluster init`, or right after certificates were issued (staff, devices) and one revoked,
/// round by round in turn. The site comes back: the same root, its issuing CA still issues, the
/// ledger has every issue and revocation, and the CRL lists the revoked serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_after_ca_init_cluster_init_and_issue() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let started = Instant::now();
    let test = "power_cut_after_ca_init_cluster_init_and_issue";
    // The stage of an ordinary round is its place among the ordinary rounds, so that a run seed
    // replays the same rounds whatever was found since.
    let seeds = FOUND_PKI.iter().copied().chain(
        round_seeds(test, &[], 3)
            .into_iter()
            .enumerate()
            .map(|(i, seed)| (seed, i % 3)),
    );
    let mut tally = Tally::default();
    for (round, (seed, stage)) in seeds.enumerate() {
        let mut rng = Rng::new(seed);
        let t = Instant::now();
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("node1");
        let data = dir.join("data");
        fs::create_dir_all(&data).expect("mkdir");
        let volume = PowerFs::new();
        let mount = volume.mount(&data).expect("mount");
        let d = data.to_str().expect("utf8");
        medledger_ok(&[
            "ca",
            "init",
            "--data-dir",
            d,
            "--site",
            "Power Hospital",
            "--node-id",
            "1",
        ]);
        let root_pem = fs::read(data.join("pki/root.crt")).expect("root.crt");
        let port = medledger_tests::free_port();
        let config = dir.join("gateway.toml");
        fs::write(
            &config,
            format!("[node]\nid = 1\ndata_dir = \"{d}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n"),
        )
        .expect("config");
        let mut node = PNode {
            gw: Gateway {
                id: 1,
                ip: std::net::Ipv4Addr::LOCALHOST,
                port,
                dir: dir.clone(),
                config: config.clone(),
                child: None,
            },
            fs: volume,
            mount: Some(mount),
        };
        if stage == 0 {
            tally.add(&node.cut(&mut rng));
        }
        node.gw.start();
        let c = config.to_str().expect("utf8");
        // `cluster init` as soon as the gateway listens.
        poll("cluster init", Duration::from_secs(30), || async {
            medledger(&["cluster", "init", "--config", c]).ok()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail()));
        if stage == 1 {
            tally.add(&node.cut(&mut rng));
            node.gw.start();
        }
        let out = |name: &str| dir.join(name).display().to_string();
        let issue = |profile: &str, id: &str, extra: &[&str], name: &str| {
            let o = out(name);
            let mut args = vec![
                "cert",
                "issue",
                "--config",
                c,
                "--profile",
                profile,
                "--id",
                id,
            ];
            args.extend(extra);
            args.extend(["--out", &o]);
            medledger(&args)
        };
        // The first issue waits for the gateway to serve (it may be coming back from a cut).
        poll(
            "the first certificate issue",
            Duration::from_secs(30),
            || async {
                issue(
                    "staff",
                    "admin",
                    &["--role", "admin", "--name", "Site Admin"],
                    "admin",
                )
                .ok()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail()));
        issue("device", "pump-1", &[], "pump1").unwrap_or_else(|e| panic!("{e}"));
        issue("device", "pump-2", &[], "pump2").unwrap_or_else(|e| panic!("{e}"));
        let revoked = serial_of(&dir.join("pump1.crt"));
        medledger_ok(&[
            "cert",
            "revoke",
            "--config",
            c,
            &revoked,
            "--reason",
            "key-compromise",
        ]);
        if stage == 2 {
            tally.add(&node.cut(&mut rng));
            node.gw.start();
        }
        let admin = client_from_files(&dir.join("admin"), &root_pem);
        until_serving(&admin, std::slice::from_ref(&node)).await;
        assert_eq!(
            fs::read(data.join("pki/root.crt")).expect("root.crt after the cut"),
            root_pem,
            "the root certificate changed"
        );
        let entries = check_site(
            &admin,
            std::slice::from_ref(&node),
            &HashMap::new(),
            &tmp.path().join("export.jsonl"),
        )
        .await;
        let has = |kind: EventKind, device: &str| {
            entries
                .iter()
                .any(|(_, k, _, dev)| *k == kind && dev.contains(device))
        };
        for id in ["admin", "pump-1", "pump-2"] {
            assert!(
                has(EventKind::CertificateIssued, id),
                "the issue of {id} was lost: {entries:?}"
            );
        }
        assert!(
            has(EventKind::CertificateRevoked, "pump-1"),
            "the revocation was lost: {entries:?}"
        );
        // The CRL the gateway keeps lists the revoked serial.
        let crl = data.join("pki/crl.pem");
        eventually(
            "pki/crl.pem to list the revoked serial",
            Duration::from_secs(20),
            || {
                let crl = crl.clone();
                let revoked = revoked.clone();
                async move {
                    let o = Command::new("openssl")
                        .args(["crl", "-noout", "-text", "-in"])
                        .arg(&crl)
                        .output()
                        .ok()?;
                    let text = String::from_utf8_lossy(&o.stdout)
                        .to_lowercase()
                        .replace(':', "");
                    text.contains(&revoked).then_some(())
                }
            },
        )
        .await;
        // The issuing CA still issues.
        issue("device", "pump-3", &[], "pump3").unwrap_or_else(|e| panic!("{e}"));
        let when = ["ca init", "cluster init", "issue and revoke"][stage];
        eprintln!(
            "{test} round {round} (seed {seed}, cut after {when}): {:?}",
            t.elapsed()
        );
        tally.rounds += 1;
        drop(node);
    }
    tally.print(test, 0, started);
}

/// Round seeds of `power_cut_during_snapshot_install` that found a defect. 10814029892005166560
/// (the first round of run seed 3172681818236010586): the installing gateway came back with a
/// Raft core that panicked at start (openraft's state validation). Two causes, both fixed: a cut
/// after the store switched to the snapshot and before `raft-snapshot.recv` was renamed
/// (`StateMachine::finish_interrupted_install`), and the log purge that openraft runs at once
/// when it hands the snapshot to the state machine, made durable by the install's flush before
/// the store switched (the purge now waits for the install: `ledger_node::raft::log_store`).
const FOUND_SNAPSHOT: &[u64] = &[10_814_029_892_005_166_560];

/// Raft settings that make the gateways snapshot and purge their logs every few dozen entries.
const SMALL_SNAPSHOTS: &str = "[raft]\nsnapshot_after_logs = 30\nsnapshot_growth_percent = 0\n\
                               keep_logs_after_snapshot = 5\n";

/// The leader's gateway number, as the gateway at `addr` sees it.
async fn leader_of(admin: &reqwest::Client, addr: &str) -> u64 {
    poll("a leader", Duration::from_secs(30), || {
        let (admin, a) = (admin.clone(), addr.to_owned());
        async move { status(&admin, &a).await?["leader"].as_u64() }
    })
    .await
    .expect("leader")
}

/// The last applied Raft log index of the gateway at `addr` (0 if it does not answer).
async fn applied_of(admin: &reqwest::Client, addr: &str) -> u64 {
    status(admin, addr)
        .await
        .and_then(|s| s["last_applied"].as_u64())
        .unwrap_or(0)
}

/// Starts writers on every gateway but `behind` (which is down, having applied `applied`) and
/// returns them, still writing, once `leader` purged its log past what `behind` has: only a
/// snapshot can bring it back.
#[allow(clippy::too_many_arguments)]
async fn write_until_purged(
    admin: &reqwest::Client,
    writer: &reqwest::Client,
    nodes: &[PNode],
    behind: usize,
    applied: u64,
    leader: u64,
    round: usize,
    acked: &Acked,
) -> Writers {
    let addrs: Vec<String> = nodes.iter().map(|n| n.gw.addr()).collect();
    let others: Vec<&PNode> = (0..nodes.len())
        .filter(|i| *i != behind)
        .map(|i| &nodes[i])
        .collect();
    let writers = Writers::start(writer, &others, &format!("r{round}"), 12, acked);
    let leader_addr = addrs[(leader - 1) as usize].clone();
    poll(
        "the leader to purge its log",
        Duration::from_secs(120),
        || {
            let (admin, a) = (admin.clone(), leader_addr.clone());
            async move {
                let s = status(&admin, &a).await?;
                (s["purged_index"].as_u64()? > applied + 5).then_some(())
            }
        },
    )
    .await
    .expect("purge");
    writers
}

/// Kind 5: a follower that was down while the others took a snapshot and purged their log comes
/// back, is sent a snapshot, and loses power while it receives or installs it (as soon as
/// `raft-snapshot.recv` appears on its volume; right after the install if that was quicker than
/// the test could look). It comes back again and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_during_snapshot_install() {
    snapshot_rounds("power_cut_during_snapshot_install", FOUND_SNAPSHOT, false).await;
}

/// Kind 6: a follower was down while the others took writes, snapshotted and purged their logs;
/// it comes back, and the leader loses power while it builds or sends the snapshot the follower
/// needs (as soon as the follower starts receiving it, or at a random moment), with writes going
/// on. The other two elect a leader, which sends the snapshot again; the cut gateway comes back
/// and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_during_snapshot_send() {
    snapshot_rounds("power_cut_during_snapshot_send", FOUND_SNAPSHOT_SEND, true).await;
}

/// The rounds of kinds 5 (`cut_sender` false: the follower that receives is cut) and 6 (true:
/// the leader that sends).
async fn snapshot_rounds(test: &str, found: &[u64], cut_sender: bool) {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let started = Instant::now();
    let seeds = round_seeds(test, found, 2);
    let mut tally = Tally::default();
    let mut caught = 0;
    let mut acked_total = 0;
    // A fresh site every few dozen rounds: the volumes keep every byte the gateways wrote in the
    // test's memory, and a site under writes for 200 rounds outgrew the machine (the sender
    // kind's test process was killed for memory at round 86, with 10 GB).
    for (part, seeds) in seeds.chunks(ROUNDS_PER_SITE).enumerate() {
        let site = Site::new();
        let mut nodes = start_site(&site, 3, SMALL_SNAPSHOTS).await;
        let admin = site.staff_client("it-admin", StaffRole::Admin);
        let writer = site.staff_client("it-biomed", StaffRole::Biomed);
        let addrs: Vec<String> = nodes.iter().map(|n| n.gw.addr()).collect();
        let acked: Acked = Arc::default();
        for (i, seed) in seeds.iter().copied().enumerate() {
            let round = part * ROUNDS_PER_SITE + i;
            // Printed first: a round that fails says nothing else of its seed.
            eprintln!("{test} round {round}: seed {seed}");
            let mut rng = Rng::new(seed);
            let t = Instant::now();
            let leader = leader_of(&admin, &addrs[0]).await;
            let l = (leader - 1) as usize;
            let followers: Vec<usize> = (0..3).filter(|i| *i != l).collect();
            let behind = followers[rng.range(0, 2) as usize];
            let applied = applied_of(&admin, &addrs[behind]).await;
            if cut_sender {
                // Down, not cut: what is cut in this round is the sender.
                nodes[behind].gw.kill();
            } else {
                tally.add(&nodes[behind].cut(&mut rng));
            }
            let writers = write_until_purged(
                &admin, &writer, &nodes, behind, applied, leader, round, &acked,
            )
            .await;
            // The sender goes on taking writes (and building snapshots) while it sends.
            let writers = if cut_sender {
                Some(writers)
            } else {
                writers.stop().await;
                None
            };
            let recv = nodes[behind].data().join("raft-snapshot.recv");
            nodes[behind].gw.start();
            let during = if !cut_sender || rng.coin() {
                let behind_addr = addrs[behind].clone();
                poll("the snapshot to arrive", Duration::from_secs(60), || {
                    let (admin, a, recv) = (admin.clone(), behind_addr.clone(), recv.clone());
                    async move {
                        if recv.exists() {
                            return Some(true);
                        }
                        let s = status(&admin, &a).await?;
                        (s["snapshot_index"].as_u64()? > applied).then_some(false)
                    }
                })
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", nodes[behind].log_tail()))
            } else {
                tokio::time::sleep(Duration::from_millis(rng.range(0, 1500))).await;
                recv.exists()
            };
            caught += u32::from(during);
            let cut = if cut_sender { l } else { behind };
            tally.add(&nodes[cut].cut(&mut rng));
            if cut_sender {
                // The other two elect a leader and go on; the follower gets its snapshot from it.
                let target = acked_count(&acked) + 20;
                until_acked(&acked, target, "writes after the cut").await;
            }
            nodes[cut].gw.start();
            until_serving(&admin, &nodes).await;
            if let Some(w) = writers {
                w.stop().await;
            }
            let acked = acked.lock().expect("lock").clone();
            check_site(
                &admin,
                &nodes,
                &acked,
                &site.dir.path().join("export.jsonl"),
            )
            .await;
            eprintln!(
            "{test} round {round} (seed {seed}, gateway {} cut {} the snapshot {} gateway {}): \
             {:?}",
            cut + 1,
            if during { "during" } else { "around" },
            if cut_sender {
                "sent to"
            } else {
                "received from"
            },
            if cut_sender { behind + 1 } else { l + 1 },
            t.elapsed()
        );
            tally.rounds += 1;
        }
        acked_total += acked_count(&acked);
    }
    eprintln!("{test}: {caught} cuts caught a snapshot being received");
    tally.print(test, acked_total, started);
}

/// Rounds of a snapshot kind on one site before the next starts afresh.
const ROUNDS_PER_SITE: usize = 40;

/// Round seeds of `power_cut_during_snapshot_send` that found a defect.
/// 4350587644674368704 (round 129 of run seed 2258075608172915007, release build): the cut
/// leader came back without `raft-snapshot.bin`, became leader again, and openraft stopped its
/// core a second later when a follower needed the snapshot and the state machine had none to
/// give. The file was not lost by the cut: the test file system now and then answered ENOENT to
/// an open of a name just replaced by a rename (it forgot the old inode while the kernel still
/// referred to it; `fs_a_name_replaced_by_rename_is_never_missing`), and the gateway takes no
/// answer from openraft's snapshot request lightly: a missing file is now built when asked for
/// (`raft::state_machine`, `get_current_snapshot`). The replay repeats the cut, not the timing.
const FOUND_SNAPSHOT_SEND: &[u64] = &[4_350_587_644_674_368_704];

/// Round seeds of `power_cut_while_the_telemetry_outbox_fills_and_drains` that found a defect.
/// 9976454004442202441 (round 7 of run seed 6989156408600135779): a message's rule event never
/// reached the ledger. Near the outbox's bound a batch wrote its earlier events first and saved
/// the rules' state, which already held the next message's transition; cut before that
/// message's event was written, the gateway came back with a state that had seen it, and the
/// broker's redelivery raised nothing. The state is now saved only with the whole batch
/// (`service::telemetry`, `Pipeline::flush`). The replay repeats the cut, not the timing.
const FOUND_TELEMETRY: &[u64] = &[9_976_454_004_442_202_441];

/// Kind 7: one gateway with an MQTT device behind the real Mosquitto (TLS, the device's own
/// certificate) loses power while its outbox fills and drains: the device publishes a burst in
/// which every value crosses the alarm limit (each one a rule event), the outbox holds a handful
/// of events (4 KiB), so the gateway acknowledges messages only as the ledger takes events, and
/// the cut comes at a random moment of that. After the cut the broker delivers what was not
/// acknowledged again; every message's rule event must reach the ledger exactly once, in order.
/// (Every message, not only those the gateway acknowledged: the broker keeps the rest in the
/// gateway's persistent session.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_while_the_telemetry_outbox_fills_and_drains() {
    use crate::telemetry::{history, mqtt_config, outbox_files, payload, start_broker, Device};
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let started = Instant::now();
    let test = "power_cut_while_the_telemetry_outbox_fills_and_drains";
    let seeds = round_seeds(test, FOUND_TELEMETRY, 3);
    let site = Site::new();
    let broker = start_broker(&site);
    let extra = format!(
        "{}[telemetry]\noutbox_max_bytes = 4096\n",
        mqtt_config(&broker, "")
    );
    let mut nodes = start_site(&site, 1, &extra).await;
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let addr = nodes[0].gw.addr();
    let device = "pump-pl";
    let pump = Device::new(&site, device);
    // Device time: one sample a second, from a week ago (rounds of the long run fit in it).
    let t0 = time::OffsetDateTime::now_utc().unix_timestamp() - 7 * 86_400;
    let mut sent = 0u64;
    let mut tally = Tally::default();
    let mut in_outbox = 0usize;
    for (round, seed) in seeds.into_iter().enumerate() {
        let mut rng = Rng::new(seed);
        let t = Instant::now();
        // Above the limit, below it (by more than the hysteresis), above, ...: every sample
        // raises or clears the alarm.
        let burst: Vec<String> = (sent..sent + rng.range(20, 150))
            .map(|i| {
                let flow = if i.is_multiple_of(2) { 140.0 } else { 100.0 };
                payload(i + 1, t0, i as i64, &[("flow_rate", flow)])
            })
            .collect();
        sent += burst.len() as u64;
        // The broker has every message once this returns (QoS 1, acknowledged to the device).
        let publisher = {
            let (at, pump) = (broker.at(), pump.clone());
            std::thread::spawn(move || pump.publish_to(&at, &burst))
        };
        tokio::time::sleep(Duration::from_millis(rng.range(0, 2500))).await;
        let waiting = outbox_files(&nodes[0].data());
        in_outbox += waiting;
        tally.add(&nodes[0].cut(&mut rng));
        publisher.join().expect("publisher");
        nodes[0].gw.start();
        until_serving(&admin, &nodes).await;
        let events = match poll(
            "every message's rule event in the ledger",
            Duration::from_secs(120),
            || {
                let admin = admin.clone();
                let addr = addr.clone();
                async move {
                    let h = history(&admin, &addr, device).await?;
                    let alarms: Vec<_> = h.into_iter().filter(|(k, _, _)| k == "alarm").collect();
                    (alarms.len() as u64 >= sent).then_some(alarms)
                }
            },
        )
        .await
        {
            Ok(events) => events,
            Err(e) => {
                let got = history(&admin, &addr, device)
                    .await
                    .map(|h| h.iter().filter(|(k, _, _)| k == "alarm").count());
                panic!(
                    "{e}: {got:?} rule events in the ledger for {sent} messages sent, {waiting} \
                     files in the outbox at the cut, round {round} (seed {seed})\n{}",
                    nodes[0].log_tail()
                )
            }
        };
        assert_eq!(events.len() as u64, sent, "more rule events than messages");
        let mut ids = HashSet::new();
        for (i, (_, state, id)) in events.iter().enumerate() {
            let want = if i % 2 == 0 { "raised" } else { "cleared" };
            assert_eq!(state, want, "rule event {i} ({id}) of {sent}");
            assert!(ids.insert(id.clone()), "rule event {id} twice");
        }
        // The ledger itself: the gateway's export verifies, no event id twice.
        check_site(
            &admin,
            &nodes,
            &HashMap::new(),
            &site.dir.path().join("export.jsonl"),
        )
        .await;
        eprintln!(
            "{test} round {round} (seed {seed}): {sent} messages in all, {waiting} files in the \
             outbox at the cut; {:?}",
            t.elapsed()
        );
        tally.rounds += 1;
    }
    eprintln!("{test}: {in_outbox} outbox files waiting at the cuts in all");
    tally.print(test, sent as usize, started);
}
