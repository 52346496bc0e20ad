//! Upgrades (issue 16): versions carried and checked between gateways, and a rolling upgrade of
//! a three-gateway cluster from the previous release while writes go on.
//!
//! The default suite checks the refusals against one real gateway: a peer RPC of an unknown
//! protocol, a Raft entry of an unknown command format, and malformed version headers are
//! refused with a message naming both releases, logged once and counted in `/metrics`.
//! The rolling upgrade is a long test (`MEDLEDGER_LONG_TESTS=1`): it builds the previous release
//! from its commit under `target/prev-release/` (once; a rerun reuses the build).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certs::{CertSpec, StaffRole};
use ledger_node::version::RELEASE;
use medledger_tests::cluster::{eventually, status, Gateway, Site};
use medledger_tests::{bin, ChildGuard};
use serde_json::{json, Value};

const MSGPACK: &str = "application/msgpack";

/// A Raft RPC with the given version headers (none when `headers` is empty).
async fn raft_rpc(
    client: &reqwest::Client,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> reqwest::Response {
    let mut req = client
        .post(format!("https://{addr}{path}"))
        .header("content-type", MSGPACK)
        .body(rmp_serde::to_vec_named(body).expect("msgpack"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("raft rpc")
}

/// One gateway; calls from a fake peer (a gateway certificate of node 7) speaking a future
/// protocol, sending a Raft entry of a future command format, or a version header that does not
/// parse, are refused with 409 naming both releases; the same calls with release 0.1.0's (no
/// headers) or this release's headers are answered, with this release's headers. The refusals
/// are logged once per kind (rate-limited) and counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_versions_are_refused_naming_both() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let (gw, health) = crate::ops::gateway_with_health(&site, 1);
    let voters = [(1, gw.addr())];
    let nodes = medledger_tests::cluster::start_nodes(&site, vec![gw], &voters).await;
    let addr = nodes[0].addr();
    let peer = site.client_for(&CertSpec::Gateway(certs::ServerSpec {
        id: "7".into(),
        dns_names: vec![],
        ip_addrs: vec![std::net::Ipv4Addr::LOCALHOST.into()],
    }));
    // A stale vote: Raft answers it (refusing the vote) when the versions are understood.
    let vote = json!({
        "vote": {"leader_id": {"term": 0, "node_id": 7}, "committed": false},
        "last_log_id": null,
    });
    let future = [
        ("x-medledger-release", "9.1.0"),
        ("x-medledger-protocol", "7"),
        ("x-medledger-format", "9"),
    ];
    for _ in 0..3 {
        let r = raft_rpc(&peer, &addr, "/raft/vote", &future, &vote).await;
        assert_eq!(r.status(), 409);
        let text = r.text().await.expect("body");
        for want in [
            "runs release 9.1.0 (peer protocol 7)",
            &format!("this gateway (release {RELEASE}, peer protocol 1)"),
        ] {
            assert!(text.contains(want), "missing {want:?} in {text}");
        }
    }
    let r = raft_rpc(
        &peer,
        &addr,
        "/raft/vote",
        &[
            ("x-medledger-release", "0.2.0"),
            ("x-medledger-protocol", "one"),
        ],
        &vote,
    )
    .await;
    assert_eq!(r.status(), 409);
    let text = r.text().await.expect("body");
    assert!(
        text.contains("x-medledger-protocol") && text.contains("\\\"one\\\""),
        "{text}"
    );
    // Release 0.1.0 sends no headers: answered, with this release's.
    for headers in [
        &[][..],
        &[
            ("x-medledger-release", RELEASE),
            ("x-medledger-protocol", "1"),
            ("x-medledger-format", "3"),
        ][..],
    ] {
        let r = raft_rpc(&peer, &addr, "/raft/vote", headers, &vote).await;
        assert_eq!(r.status(), 200, "{headers:?}");
        assert_eq!(
            r.headers()
                .get("x-medledger-release")
                .and_then(|v| v.to_str().ok()),
            Some(RELEASE)
        );
        assert_eq!(
            r.headers()
                .get("x-medledger-format")
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
    }
    // A Raft entry of command format 9 from a leader of a later term: refused before it is
    // stored, naming the format, its release and this one.
    let append = |format: u64| {
        json!({
            "vote": {"leader_id": {"term": 50, "node_id": 7}, "committed": true},
            "prev_log_id": null,
            "entries": [{
                "log_id": {"leader_id": {"term": 50, "node_id": 7}, "index": 1},
                "payload": {"Normal": {"commands": [], "format": format}},
            }],
            "leader_commit": null,
        })
    };
    let r = raft_rpc(&peer, &addr, "/raft/append", &[], &append(9)).await;
    assert_eq!(r.status(), 409);
    let text = r.text().await.expect("body");
    for want in [
        "log entry 1: raft command of format 9",
        &format!("newer than this gateway's release {RELEASE}, which applies formats 1 to 3"),
    ] {
        assert!(text.contains(want), "missing {want:?} in {text}");
    }
    // The same through the leader's forward route.
    let r = raft_rpc(
        &peer,
        &addr,
        "/raft/forward",
        &[],
        &json!({"commands": [], "format": 9}),
    )
    .await;
    assert_eq!(r.status(), 409);
    let text = r.text().await.expect("body");
    assert!(
        text.contains("format 9") && text.contains(RELEASE),
        "{text}"
    );
    // The gateway still leads its one-member cluster: nothing of the above was applied.
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let s = status(&admin, &addr).await.expect("status");
    assert_eq!(s["state"], "Leader", "{s}");
    // Counted by kind; logged once per kind and caller within the minute.
    let metrics = eventually("metrics", Duration::from_secs(10), || {
        crate::ops::get(&health, "/metrics")
    })
    .await
    .1;
    let count = |what: &str| -> f64 {
        let line = format!("medledger_version_refusals_total{{what=\"{what}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line:?} in /metrics:\n{metrics}"))
    };
    assert_eq!(count("peer"), 4.0);
    assert_eq!(count("command"), 2.0);
    let log = std::fs::read_to_string(nodes[0].dir.join("gateway.log")).expect("log");
    let refusals = log
        .lines()
        .filter(|l| l.contains("refused:") && l.contains("9.1.0"))
        .count();
    assert_eq!(
        refusals, 1,
        "the same refusal logged {refusals} times:\n{log}"
    );
}

/// The release the rolling upgrade starts from, and its commit: a clone does not always carry
/// the release tags (CI's checkout and the sessions' clones have none), the commit it always
/// has. `v0.1.0` is the annotated tag on this commit where tags are kept.
const PREVIOUS_RELEASE: (&str, &str) = ("v0.1.0", "6c53875e7c74662704af4dd15e8dc378888feb6f");

/// The directory of the previous release's source and build under `target/`.
fn previous_release_dir(tag: &str) -> PathBuf {
    medledger_tests::target_dir().join("prev-release").join(tag)
}

/// Builds release `tag` from its commit (`git archive`, no worktree) with its own target
/// directory under `target/`, once: a rerun finds the build and cargo has nothing to do.
/// Returns its `medledger` binary.
fn build_previous_release((tag, commit): (&str, &str)) -> PathBuf {
    let base = previous_release_dir(tag);
    let src = base.join("src");
    if !src.join("Cargo.toml").exists() {
        let tmp = base.join("src.partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("mkdir");
        let mut archive = Command::new("git")
            .args(["archive", commit])
            .current_dir(medledger_tests::workspace_root())
            .stdout(Stdio::piped())
            .spawn()
            .expect("git archive");
        let tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&tmp)
            .stdin(archive.stdout.take().expect("stdout"))
            .status()
            .expect("tar");
        assert!(
            archive.wait().expect("git archive").success() && tar.success(),
            "git archive {commit} ({tag}) | tar -x failed"
        );
        std::fs::rename(&tmp, &src).expect("rename");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let st = Command::new(cargo)
        .args(["build", "--bins"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .env("CARGO_INCREMENTAL", "0")
        .status()
        .expect("cargo build of the previous release");
    assert!(st.success(), "building {tag} failed: {st}");
    eprintln!(
        "upgrade: {tag} built (or found built) in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    base.join("target/debug/medledger")
}

/// Starts `g` with the `medledger` binary `exe` (its log appended to `gateway.log`).
fn start_with(g: &mut Gateway, exe: &Path) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(g.dir.join("gateway.log"))
        .expect("log");
    let child = Command::new(exe)
        .args(["run", "--config"])
        .arg(&g.config)
        .env("RUST_LOG", "warn,medledger=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn medledger run");
    g.child = Some(ChildGuard(child));
}

/// Stops `g` as systemd does: SIGTERM, then SIGKILL after 30 s.
fn stop(g: &mut Gateway) {
    let Some(mut c) = g.child.take() else {
        return;
    };
    let pid = c.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.0.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "upgrade: gateway {} did not stop within 30 s of SIGTERM",
        g.id
    );
    c.kill();
}

fn event(i: u64) -> Value {
    json!({
        "event_id": format!("up-{i}"),
        "kind": if i.is_multiple_of(3) { "calibration" } else { "preventive-maintenance" },
        "device_id": format!("pump-{}", i % 20),
        "occurred_at": "2026-01-05T10:00:00Z",
        "components": [
            {"name": "result", "class": "maintenance", "value": "pass"},
            {"name": "technician", "class": "maintenance", "value": format!("biomed:{}", i % 7)},
        ],
    })
}

/// What the writers saw: each acknowledged event id with its sequence number, and the times
/// of all acknowledgements.
#[derive(Default)]
struct Acks {
    seq: HashMap<String, u64>,
    at: Vec<Instant>,
}

/// Writes events through the gateways in turn with `concurrency` clients until `stop` is set;
/// a write that fails (gateway down, no leader) is retried on the next gateway with the same
/// event id.
async fn write_until(
    client: reqwest::Client,
    addrs: Arc<Vec<String>>,
    concurrency: usize,
    acks: Arc<Mutex<Acks>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, addrs, next, acks, stop) = (
            client.clone(),
            addrs.clone(),
            next.clone(),
            acks.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut node = w;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = event(i);
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    node += 1;
                    let addr = &addrs[node % addrs.len()];
                    let r = client
                        .post(format!("https://{addr}/v1/events"))
                        .json(&body)
                        .send()
                        .await;
                    if let Ok(r) = r {
                        if r.status().is_success() {
                            let v: Value = r.json().await.expect("json");
                            let seq = v["seq"].as_u64().expect("seq");
                            let mut a = acks.lock().expect("lock");
                            a.seq.insert(format!("up-{i}"), seq);
                            a.at.push(Instant::now());
                            break;
                        }
                    }
                    assert!(
                        Instant::now() < deadline,
                        "event {i} not acknowledged within 120 s"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
}

/// Waits until every gateway answers with the same leader, ledger size and applied index.
async fn converged(admin: &reqwest::Client, addrs: &[String], what: &str) -> u64 {
    eventually(what, Duration::from_secs(120), || {
        let admin = admin.clone();
        let addrs = addrs.to_vec();
        async move {
            let mut sizes = HashSet::new();
            let mut applied = HashSet::new();
            let mut leaders = HashSet::new();
            for a in &addrs {
                let s = status(&admin, a).await?;
                sizes.insert(s["ledger_size"].as_u64()?);
                applied.insert(s["last_applied"].as_u64()?);
                leaders.insert(s["leader"].as_u64()?);
            }
            (sizes.len() == 1 && applied.len() == 1 && leaders.len() == 1)
                .then(|| sizes.into_iter().next())
                .flatten()
        }
    })
    .await
}

/// `medledger` (new or old) with `args`, asserting success; its stdout.
fn run_ok(exe: &Path, args: &[&str]) -> String {
    let out = Command::new(exe)
        .args(args)
        .output()
        .expect("run medledger");
    assert!(
        out.status.success(),
        "medledger {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Erases the `technician` component of entry `seq` through `addr` (an erasure is a format-2
/// entry): status and body.
async fn erase(client: &reqwest::Client, addr: &str, seq: u64) -> (u16, String) {
    let r = client
        .post(format!(
            "https://{addr}/v1/entries/{seq}/components/technician/erase"
        ))
        .json(&json!({"reason": "recorded under the wrong name"}))
        .send()
        .await
        .expect("post");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// A correction of pump-0's first entry recorded as a device other than pump-0, through a
/// gateway of release 0.1.0 (which records it; this release refuses it): status and body.
async fn cross_device_correction(client: &reqwest::Client, addr: &str, seq: u64) -> (u16, String) {
    let body = json!({
        "kind": "repair",
        "device_id": "pump-other",
        "corrects": seq,
        "occurred_at": "2026-01-05T10:00:00Z",
        "components": [{"name": "result", "class": "maintenance", "value": "fixed"}],
    });
    let r = client
        .post(format!("https://{addr}/v1/events"))
        .json(&body)
        .send()
        .await
        .expect("post");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Three gateways of release v0.1.0 upgraded one at a time to this code (followers first, the
/// leader last) while clients write through all three: every acknowledged event is on every
/// gateway exactly once, the exports are byte-identical and verify; a correction of another
/// device's entry is recorded while all run 0.1.0 (format 1) and every gateway keeps it; an
/// erasure (format 2) is refused in the mixed cluster and recorded once all three run this
/// release. Prints the figures that
/// docs/operations.md "Releases" quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_from_the_previous_release_loses_nothing() {
    if !medledger_tests::long_tests() {
        eprintln!(
            "skipped: the rolling upgrade builds release v0.1.0; set MEDLEDGER_LONG_TESTS=1 to run it"
        );
        return;
    }
    let old = build_previous_release(PREVIOUS_RELEASE);
    let new = bin("medledger");
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let mut nodes: Vec<Gateway> = (1..=3).map(|i| Gateway::new(&site, i, "")).collect();
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let writer = site.staff_client("it-biomed", StaffRole::Biomed);
    let addrs = Arc::new(nodes.iter().map(Gateway::addr).collect::<Vec<_>>());
    for g in &mut nodes {
        start_with(g, &old);
    }
    for a in addrs.iter() {
        eventually(
            "a v0.1.0 gateway to listen",
            Duration::from_secs(60),
            || status(&admin, a),
        )
        .await;
    }
    let mut init = vec![
        "cluster".to_owned(),
        "init".into(),
        "--config".into(),
        nodes[0].config.display().to_string(),
    ];
    for g in &nodes {
        init.push("--voter".into());
        init.push(format!("{}={}", g.id, g.addr()));
    }
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    run_ok(&old, &init);
    converged(&admin, &addrs, "the v0.1.0 cluster to elect a leader").await;

    let started = Instant::now();
    let acks = Arc::new(Mutex::new(Acks::default()));
    let halt = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = tokio::spawn(write_until(
        writer.clone(),
        addrs.clone(),
        8,
        acks.clone(),
        halt.clone(),
    ));
    let settle = Duration::from_secs(8);
    tokio::time::sleep(settle).await;
    // What format 2 refuses, while every gateway runs 0.1.0: recorded, as 0.1.0 records it.
    let first = acks.lock().expect("lock").seq.get("up-0").copied();
    let first = first.expect("the first event acknowledged");
    let (code, body) = cross_device_correction(&writer, &addrs[0], first).await;
    assert_eq!(code, 201, "0.1.0 records a cross-device correction: {body}");

    // Followers first, the leader last, each stopped (SIGTERM) and started on this release
    // with its data directory and config.
    let mut order: Vec<u64> = Vec::new();
    let leader = status(&admin, &addrs[0]).await.expect("status")["leader"]
        .as_u64()
        .expect("leader");
    order.extend(nodes.iter().map(|g| g.id).filter(|id| *id != leader));
    order.push(leader);
    let mut mixed_outcome = None;
    for (n, id) in order.iter().enumerate() {
        let g = nodes.iter_mut().find(|g| g.id == *id).expect("node");
        let t = Instant::now();
        stop(g);
        start_with(g, &new);
        let a = g.addr();
        eventually(
            &format!("gateway {id} on this release to rejoin"),
            Duration::from_secs(60),
            || {
                let admin = admin.clone();
                let a = a.clone();
                async move { status(&admin, &a).await.filter(|s| !s["leader"].is_null()) }
            },
        )
        .await;
        eprintln!(
            "upgrade: gateway {id} replaced in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        tokio::time::sleep(settle).await;
        if n == 0 {
            // A mixed cluster: an erasure (format 2) through the upgraded gateway is held
            // back by a leader of this release, or refused alike by every gateway when a
            // 0.1.0 gateway leads (the exports below are compared).
            let out = erase(&admin, &a, first).await;
            eprintln!("upgrade: erasure in the mixed cluster: {out:?}");
            mixed_outcome = Some(out);
        }
    }
    let (code, body) = mixed_outcome.expect("tried");
    assert!(
        code != 201
            && (body.contains("held back until every gateway")
                || body.contains("needs command format 2")
                || body.contains("unknown event kind")),
        "{code} {body}"
    );
    // All three on this release: the leader moves the cluster to format 2 with its next write.
    eventually(
        "the cluster to apply command format 2",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            let addrs = addrs.clone();
            async move {
                let (code, body) = erase(&admin, &addrs[1], first).await;
                eprintln!("upgrade: erasure once all run this release: {code} {body}");
                (code == 201).then_some(())
            }
        },
    )
    .await;
    halt.store(true, std::sync::atomic::Ordering::SeqCst);
    writes.await.expect("writers");
    let duration = started.elapsed();

    let size = converged(&admin, &addrs, "the upgraded gateways to converge").await;
    run_ok(
        &new,
        &[
            "cluster",
            "checkpoint",
            "--config",
            nodes[0].config.to_str().expect("utf8"),
        ],
    );
    converged(&admin, &addrs, "the checkpoint to reach every gateway").await;
    let mut exports = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let r = admin
            .get(format!("https://{a}/v1/export"))
            .send()
            .await
            .expect("export");
        assert!(r.status().is_success(), "export from {a}: {}", r.status());
        let bytes = r.bytes().await.expect("body").to_vec();
        let path = site.dir.path().join(format!("export-{i}.jsonl"));
        std::fs::write(&path, &bytes).expect("write export");
        run_ok(&new, &["verify", path.to_str().expect("utf8")]);
        exports.push(bytes);
    }
    assert!(
        exports[0] == exports[1] && exports[1] == exports[2],
        "exports differ between gateways"
    );
    let text = String::from_utf8(exports[0].clone()).expect("utf8");
    let mut seen: HashMap<String, u64> = HashMap::new();
    // Entry versions in ledger order: version 1 (signed) while a 0.1.0 gateway was a member,
    // version 2 (command format 3) once all three ran this release, never the other way round.
    let mut versions: Vec<u8> = Vec::new();
    for line in text.lines().skip(1) {
        let v: Value = serde_json::from_str(line).expect("line");
        let Some(hexbytes) = v["entry"].as_str() else {
            continue;
        };
        let e = ledger_node::Entry::decode(&hex::decode(hexbytes).expect("hex")).expect("entry");
        if versions.last() != Some(&e.version()) {
            versions.push(e.version());
        }
        if let Some(id) = e.body.event_id {
            assert!(
                seen.insert(id.clone(), e.seq).is_none(),
                "event {id} recorded twice"
            );
        }
    }
    assert_eq!(versions, [1, 2], "entry versions in ledger order");
    let acks = acks.lock().expect("lock");
    let mut lost = 0;
    for (id, seq) in &acks.seq {
        if seen.get(id) != Some(seq) {
            lost += 1;
            eprintln!(
                "upgrade: {id} acknowledged at {seq}, in the ledger at {:?}",
                seen.get(id)
            );
        }
    }
    let mut at = acks.at.clone();
    at.sort();
    let pause = at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!(
        "upgrade: {} writes acknowledged, {lost} lost, longest write pause {:.2} s, ledger {size} \
         entries, {:.0} s from the first write to the last",
        acks.seq.len(),
        pause.as_secs_f64(),
        duration.as_secs_f64()
    );
    assert_eq!(lost, 0, "acknowledged events lost");
}
