//! A full disk, for real: a gateway whose data directory is a small file system of its own (a
//! loop-mounted ext4 image, or a tmpfs with `size=` where loop devices are not available), which
//! a filler file then fills while writers go on. Below `[node] warn_free_mb` health must say
//! `degraded` while writes go on; below the reserve writes must be refused with a 507 problem naming
//! the directory and the free space, reads served, health failing with the reason; once the
//! filler is removed writes resume without a restart, and every acknowledged event is in an
//! export that `medledger verify` accepts. Needs root (mount), as the suite runs.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certs::StaffRole;
use medledger_tests::bin;
use medledger_tests::cluster::{eventually, start_nodes, Site};
use serde_json::{json, Value};

use crate::ops::{gateway_with_health, get, status_cmd};

/// The write reserve of the test gateway (`[node] reserve_mb`).
pub(crate) const RESERVE_MB: u64 = 8;
/// Free space below which the test gateway's health warns (`[node] warn_free_mb`).
pub(crate) const WARN_MB: u64 = 24;
/// The small file system's size.
const FS_MB: u64 = 64;

/// A mounted small file system, unmounted when dropped.
pub(crate) struct SmallFs {
    pub(crate) mount: PathBuf,
    pub(crate) kind: &'static str,
}

impl SmallFs {
    /// Mounts a `FS_MB` MiB ext4 image at `mount` (loop device), or a tmpfs of that size when
    /// the loop mount is refused.
    pub(crate) fn mount(image: &Path, mount: &Path) -> Self {
        std::fs::create_dir_all(mount).expect("mkdir mount point");
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        let ext4 = ok(Command::new("truncate")
            .arg("-s")
            .arg(format!("{FS_MB}M"))
            .arg(image))
            // No blocks reserved for root: the gateway runs as root in the tests, and the point
            // is that the disk really fills.
            && ok(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(image))
            && ok(Command::new("mount").args(["-o", "loop"]).arg(image).arg(mount));
        if ext4 {
            return SmallFs {
                mount: mount.to_owned(),
                kind: "ext4 on a loop device",
            };
        }
        assert!(
            ok(Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={FS_MB}m"), "tmpfs"])
                .arg(mount)),
            "cannot mount a small file system at {} (neither ext4 on a loop device nor tmpfs; \
             the test needs root)",
            mount.display()
        );
        SmallFs {
            mount: mount.to_owned(),
            kind: "tmpfs",
        }
    }

    fn free(&self) -> u64 {
        fs2::available_space(&self.mount).expect("statvfs")
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Appends 64 KiB blocks to `path` until the file system has at most `leave` bytes free (or is
/// full: ENOSPC ends it). Returns the bytes written.
pub(crate) fn fill(fs: &SmallFs, path: &Path, leave: u64) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("filler file");
    let block = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    while fs.free() > leave {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
        // Reach the disk now and then, so that the free space counts it.
        if written.is_multiple_of(1024 * 1024) {
            let _ = f.sync_data();
        }
    }
    let _ = f.sync_data();
    written
}

fn event(tag: &str, i: u64) -> Value {
    json!({
        "event_id": format!("{tag}-{i}"),
        "kind": "preventive-maintenance",
        "device_id": format!("pump-{}", i % 10),
        "occurred_at": "2026-01-05T10:00:00Z",
        "components": [
            {"name": "result", "class": "maintenance", "value": "pass"},
            {"name": "note", "class": "maintenance", "value": "x".repeat(600)},
        ],
    })
}

#[derive(Default)]
struct Seen {
    acked: BTreeSet<String>,
    /// The first 507 answer: content type and body.
    refused: Option<(String, Value)>,
    other: Vec<String>,
}

/// Four writers posting events to `addrs` in turn until `stop`, recording what was answered.
fn spawn_writers(
    staff: &reqwest::Client,
    addrs: Vec<String>,
    seen: &Arc<Mutex<Seen>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (staff, addrs, seen, stop, next) = (
            staff.clone(),
            addrs.clone(),
            seen.clone(),
            stop.clone(),
            next.clone(),
        );
        writers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let addr = &addrs[(i as usize) % addrs.len()];
                let r = staff
                    .post(format!("https://{addr}/v1/events"))
                    .json(&event("disk", i))
                    .send()
                    .await;
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        seen.lock().expect("lock").other.push(e.to_string());
                        continue;
                    }
                };
                let status = r.status().as_u16();
                let ctype = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let body: Value = r.json().await.unwrap_or_default();
                let refused = {
                    let mut s = seen.lock().expect("lock");
                    match status {
                        200 | 201 => {
                            s.acked.insert(format!("disk-{i}"));
                        }
                        507 => {
                            if s.refused.is_none() {
                                s.refused = Some((ctype, body));
                            }
                        }
                        other => s.other.push(format!("{other}: {body}")),
                    }
                    status == 507
                };
                if refused {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    writers
}

/// The acknowledged event ids that an export (JSON lines, entries hex-encoded) lacks. An event
/// id is a length-prefixed string in an entry (docs/ledger-format.md).
fn missing_from_export<'a>(export: &str, acked: &'a BTreeSet<String>) -> Vec<&'a String> {
    acked
        .iter()
        .filter(|id| {
            let mut field = (id.len() as u32).to_be_bytes().to_vec();
            field.extend_from_slice(id.as_bytes());
            !export.contains(&hex::encode(field))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_serves_reads_and_recovers() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let fs = SmallFs::mount(
        &site.dir.path().join("disk.img"),
        &site.dir.path().join("node1"),
    );
    eprintln!("small file system: {} MiB {}", FS_MB, fs.kind);
    let (gw, health) = gateway_with_health(&site, 1);
    set_reserve(&gw);
    let voters = vec![(gw.id, gw.addr())];
    let gws = start_nodes(&site, vec![gw], &voters).await;
    let gw = &gws[0];
    let addr = gw.addr();
    let staff = site.staff_client("disk-biomed", StaffRole::Biomed);

    // Writers go on for the whole test, each event retried until acknowledged or refused.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&staff, vec![addr.clone()], &seen, &stop);
    eventually("100 acknowledged writes", Duration::from_secs(60), || {
        let n = seen.lock().expect("lock").acked.len();
        async move { (n >= 100).then_some(()) }
    })
    .await;

    // With room to spare the gateway is healthy.
    let (code, out) = status_cmd(gw).await;
    assert_eq!(
        code,
        0,
        "medledger status with {} MiB free: {out}",
        fs.free() >> 20
    );

    // The disk fills under the writers: first to below the warning (`[node] warn_free_mb`),
    // where health is degraded and writes go on...
    let filler = fs.mount.join("filler.bin");
    fill(&fs, &filler, (WARN_MB + RESERVE_MB) / 2 * 1024 * 1024);
    let (code, out) = status_cmd(gw).await;
    assert_eq!(code, 1, "medledger status below warn_free_mb: {out}");
    assert!(
        out.contains("DEGRADED") && out.contains("warn_free_mb"),
        "{out}"
    );
    let acked = seen.lock().expect("lock").acked.len();
    eventually(
        "writes acknowledged below warn_free_mb",
        Duration::from_secs(30),
        || {
            let n = seen.lock().expect("lock").acked.len();
            async move { (n > acked).then_some(()) }
        },
    )
    .await;

    // ...then to below the reserve...
    let reserve = RESERVE_MB * 1024 * 1024;
    fill(&fs, &filler, reserve / 2);
    let (ctype, problem) = eventually("a write refused with 507", Duration::from_secs(60), || {
        // Kept below the reserve: the gateway may free space meanwhile (its Raft log purged
        // after a snapshot).
        fill(&fs, &filler, reserve / 2);
        let r = seen.lock().expect("lock").refused.clone();
        async move { r }
    })
    .await;
    assert_eq!(ctype, "application/problem+json", "{problem}");
    assert_eq!(problem["status"], 507, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&fs.mount.display().to_string()) && detail.contains("MiB free"),
        "the problem names the data directory and its free space: {problem}"
    );
    // ...then, with no write let through any more, to the last byte.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked_when_full = seen.lock().expect("lock").acked.len();
    fill(&fs, &filler, 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        seen.lock().expect("lock").acked.len(),
        acked_when_full,
        "writes were acknowledged below the reserve"
    );

    // Reads are served.
    let r = staff
        .get(format!("https://{addr}/v1/head"))
        .send()
        .await
        .expect("head");
    assert!(
        r.status().is_success(),
        "GET /v1/head on a full disk: {}",
        r.status()
    );
    let r = staff
        .get(format!("https://{addr}/v1/devices/pump-1/history"))
        .send()
        .await
        .expect("history");
    assert!(
        r.status().is_success(),
        "device history on a full disk: {}",
        r.status()
    );
    // Health says why.
    let (code, body) = get(&health, "/healthz").await.expect("healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("below the write reserve"), "{body}");
    let (code, out) = status_cmd(gw).await;
    assert_eq!(code, 2, "medledger status on a full disk: {out}");
    assert!(out.contains("FAILING") && out.contains("reserve"), "{out}");
    let (_, metrics) = get(&health, "/metrics").await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("medledger_writes_total{outcome=\"disk_full\"}")),
        "{metrics}"
    );
    let log = std::fs::read_to_string(gw.dir.join("gateway.log")).unwrap_or_default();
    assert!(log.contains("insufficient storage"), "{log}");

    // Space returns: writes resume by themselves.
    std::fs::remove_file(&filler).expect("remove filler");
    eventually("writes to resume", Duration::from_secs(60), || {
        let n = seen.lock().expect("lock").acked.len();
        async move { (n >= acked_when_full + 50).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    assert!(
        seen.other.is_empty(),
        "unexpected answers: {:?}",
        seen.other
    );
    let (code, body) = get(&health, "/healthz").await.expect("healthz");
    assert_eq!(code, 200, "{body}");

    // Every acknowledged event is in the ledger, and the export verifies.
    let out = Command::new(bin("medledger"))
        .args(["cluster", "checkpoint", "--config"])
        .arg(&gw.config)
        .output()
        .expect("checkpoint");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let export = staff
        .get(format!("https://{addr}/v1/export"))
        .send()
        .await
        .expect("export");
    assert!(export.status().is_success(), "export: {}", export.status());
    let text = export.text().await.expect("export body");
    let missing = missing_from_export(&text, &seen.acked);
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events missing from the export: {missing:?}",
        missing.len(),
        seen.acked.len()
    );
    let path = site.dir.path().join("export.jsonl");
    std::fs::write(&path, &text).expect("write export");
    let out = Command::new(bin("medledger"))
        .arg("verify")
        .arg(&path)
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!(
        "{} events acknowledged, {} before the disk filled; 0 lost",
        seen.acked.len(),
        acked_when_full
    );
    drop(gws);
    drop(fs);
}

/// Writes `[node] reserve_mb` and `warn_free_mb` for the small file system into a test gateway's
/// config (the harness appends its extra lines under `[api]`).
pub(crate) fn set_reserve(gw: &medledger_tests::cluster::Gateway) {
    let config = std::fs::read_to_string(&gw.config).expect("config");
    let harness = format!(
        "warn_free_mb = {}\n",
        medledger_tests::cluster::TEST_WARN_FREE_MB
    );
    assert!(config.contains(&harness), "the harness's disk warning");
    std::fs::write(
        &gw.config,
        config.replacen(
            &harness,
            &format!("reserve_mb = {RESERVE_MB}\nwarn_free_mb = {WARN_MB}\n"),
            1,
        ),
    )
    .expect("config");
}

/// Runs `medledger ARGS`, which must succeed.
fn cli(args: &[&str]) {
    let out = Command::new(bin("medledger"))
        .args(args)
        .output()
        .expect("run medledger");
    assert!(
        out.status.success(),
        "medledger {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The ledger size a gateway reports.
async fn ledger_size(client: &reqwest::Client, addr: &str) -> Option<u64> {
    medledger_tests::cluster::status(client, addr).await?["ledger_size"].as_u64()
}

/// A follower whose disk fills while the other two voters have room: it refuses what the leader
/// sends (a log line, health critical), the cluster goes on committing with the other two, and
/// once space returns the follower catches up and holds every acknowledged event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_full_disk_stops_appending_and_catches_up() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let fs = SmallFs::mount(
        &site.dir.path().join("disk.img"),
        &site.dir.path().join("node3"),
    );
    eprintln!("follower's small file system: {} MiB {}", FS_MB, fs.kind);
    let (g1, _) = gateway_with_health(&site, 1);
    let (g2, _) = gateway_with_health(&site, 2);
    let (mut g3, health3) = gateway_with_health(&site, 3);
    for g in [&g1, &g2, &g3] {
        set_reserve(g);
    }
    // Gateways 1 and 2 make the cluster; 3 joins and is promoted, so it starts as a follower.
    let voters = vec![(g1.id, g1.addr()), (g2.id, g2.addr())];
    let gws = start_nodes(&site, vec![g1, g2], &voters).await;
    g3.start();
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let a3 = g3.addr();
    eventually("node 3 to listen", Duration::from_secs(30), || {
        medledger_tests::cluster::status(&admin, &a3)
    })
    .await;
    let c3 = g3.config.display().to_string();
    cli(&[
        "cluster",
        "join",
        "--config",
        c3.as_str(),
        "--via",
        gws[0].addr().as_str(),
    ]);
    cli(&["cluster", "promote", "--config", c3.as_str(), "--node", "3"]);
    let s3 = medledger_tests::cluster::status(&admin, &a3)
        .await
        .expect("status of node 3");
    assert_ne!(s3["leader"], 3, "node 3 must be a follower: {s3}");

    let staff = site.staff_client("disk-biomed", StaffRole::Biomed);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&staff, gws.iter().map(|g| g.addr()).collect(), &seen, &stop);
    let acked = || seen.lock().expect("lock").acked.len();
    eventually("100 acknowledged writes", Duration::from_secs(60), || {
        let n = acked();
        async move { (n >= 100).then_some(()) }
    })
    .await;

    // The follower's disk fills below its reserve: it refuses what the leader sends, says so
    // once, and its health is critical.
    let filler = fs.mount.join("filler.bin");
    fill(&fs, &filler, RESERVE_MB * 1024 * 1024 / 2);
    let log3 = g3.dir.join("gateway.log");
    let since = std::time::Instant::now();
    while !std::fs::read_to_string(&log3)
        .unwrap_or_default()
        .contains("insufficient storage")
    {
        // Kept below the reserve: node 3 may free space meanwhile (its Raft log purged after a
        // snapshot), which would let it take entries again.
        fill(&fs, &filler, RESERVE_MB * 1024 * 1024 / 2);
        if since.elapsed() > Duration::from_secs(30) {
            let others: Vec<String> = gws.iter().map(|g| g.log_tail(30)).collect();
            panic!(
                "node 3 did not log that it refuses for want of space within 30 s ({} MiB free, \
                 {} writes acknowledged); the end of its log:\n{}\nthe others:\n{}",
                fs2::available_space(&fs.mount).unwrap_or(0) >> 20,
                acked(),
                g3.log_tail(40),
                others.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, body) = get(&health3, "/healthz").await.expect("healthz of node 3");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("below the write reserve"), "{body}");
    // ...then to the last byte. The other two go on committing.
    fill(&fs, &filler, 0);
    let when_full = acked();
    let size3_full = ledger_size(&admin, &a3).await.expect("node 3's size");
    eventually(
        "100 more writes acknowledged by the other two",
        Duration::from_secs(60),
        || {
            let n = acked();
            async move { (n >= when_full + 100).then_some(()) }
        },
    )
    .await;
    let size1 = ledger_size(&admin, &gws[0].addr()).await.expect("size");
    let size3 = ledger_size(&admin, &a3).await.expect("node 3's size");
    assert!(
        size3 < size1 && size3 <= size3_full + 8,
        "a follower with a full disk went on appending: {size3} (was {size3_full}), leader {size1}"
    );
    assert!(
        g3.child
            .as_mut()
            .is_some_and(|c| c.0.try_wait().ok().flatten().is_none()),
        "node 3 exited on a full disk"
    );

    // Space returns: the follower catches up by itself.
    std::fs::remove_file(&filler).expect("remove filler");
    eventually("node 3 to catch up", Duration::from_secs(60), || {
        let (admin, a1, a3) = (admin.clone(), gws[0].addr(), a3.clone());
        async move {
            let (s1, s3) = (
                ledger_size(&admin, &a1).await?,
                ledger_size(&admin, &a3).await?,
            );
            (s3 >= s1 && s3 > size3).then_some(())
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    assert!(
        seen.other.is_empty(),
        "unexpected answers: {:?}",
        seen.other
    );
    assert!(
        seen.refused.is_none(),
        "a write to the gateways with room was refused: {:?}",
        seen.refused
    );
    let (code, body) = get(&health3, "/healthz").await.expect("healthz");
    assert_eq!(code, 200, "{body}");

    // Every acknowledged event is on the follower: its own export after a checkpoint (taken on
    // gateway 1, which applied every acknowledged write).
    let c1 = gws[0].config.display().to_string();
    cli(&["cluster", "checkpoint", "--config", c1.as_str()]);
    let total = ledger_size(&admin, &gws[0].addr()).await.expect("size");
    eventually(
        "node 3 to hold the checkpoint",
        Duration::from_secs(30),
        || {
            let (admin, a3) = (admin.clone(), a3.clone());
            async move { (ledger_size(&admin, &a3).await? >= total).then_some(()) }
        },
    )
    .await;
    let text = staff
        .get(format!("https://{a3}/v1/export"))
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("export body");
    let missing = missing_from_export(&text, &seen.acked);
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events missing on the follower: {missing:?}",
        missing.len(),
        seen.acked.len()
    );
    eprintln!(
        "follower disk full: {} events acknowledged, {} of them while the follower's disk was \
         full; node 3 held {size3_full} entries then, caught up to {total}; 0 lost",
        seen.acked.len(),
        seen.acked.len() - when_full
    );
    drop(g3);
    drop(gws);
    drop(fs);
}
