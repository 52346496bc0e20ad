//! Replication end to end: real `medledger run` processes on loopback with certificates from our
//! own CA, written to through their HTTPS API, killed with SIGKILL and restarted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certs::StaffRole;
use medledger_tests::bin;
use medledger_tests::cluster::{eventually, start_cluster, start_nodes, status, Gateway, Site};
use serde_json::{json, Value};

fn event(i: u64) -> Value {
    json!({
        "event_id": format!("ev-{i}"),
        "kind": if i.is_multiple_of(3) { "calibration" } else { "preventive-maintenance" },
        "device_id": format!("pump-{}", i % 50),
        "occurred_at": "2026-01-05T10:00:00Z",
        "components": [
            {"name": "result", "class": "maintenance", "value": "pass"},
            {"name": "technician", "class": "maintenance", "value": format!("biomed:{}", i % 7)},
        ],
    })
}

/// Writes events `range` through the nodes in turn with `concurrency` clients; a write that fails
/// (node down, no leader) is retried on the next node with the same event id. Returns the
/// acknowledged event ids and their sequence numbers.
async fn write_events(
    client: reqwest::Client,
    addrs: Arc<Vec<String>>,
    range: std::ops::Range<u64>,
    concurrency: usize,
    acked: Arc<Mutex<HashMap<String, u64>>>,
) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(range.start));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, addrs, next, acked) =
            (client.clone(), addrs.clone(), next.clone(), acked.clone());
        let end = range.end;
        tasks.push(tokio::spawn(async move {
            let mut node = w;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= end {
                    return;
                }
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
                            acked.lock().expect("lock").insert(format!("ev-{i}"), seq);
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

async fn export(client: &reqwest::Client, addr: &str) -> Vec<u8> {
    let r = client
        .get(format!("https://{addr}/v1/export"))
        .send()
        .await
        .expect("export");
    assert!(
        r.status().is_success(),
        "export from {addr}: {}",
        r.status()
    );
    r.bytes().await.expect("body").to_vec()
}

/// Runs the `medledger` CLI and asserts it succeeded, showing its stderr otherwise.
fn medledger_ok(what: &str, args: &[&str]) {
    let out = Command::new(bin("medledger"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run medledger: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `medledger cluster checkpoint --config CONFIG`: records a checkpoint through that gateway,
/// waiting for a leader; returns the checkpoint's size.
async fn checkpoint(config: &Path) -> u64 {
    let config = config.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin("medledger"))
            .args(["cluster", "checkpoint", "--config"])
            .arg(&config)
            .output()
            .expect("run medledger cluster checkpoint")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cluster checkpoint: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cluster checkpoint printed {stdout:?}"))
}

fn verify_file(path: &Path) {
    let out = Command::new(bin("medledger"))
        .arg("verify")
        .arg(path)
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "verify {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn leader_of(statuses: &[Option<Value>]) -> Option<u64> {
    statuses
        .iter()
        .flatten()
        .filter(|s| s["state"] == "Leader")
        .filter_map(|s| s["node_id"].as_u64())
        .next()
}

/// Three gateways; 10,000 events written through all of them while the leader is killed with
/// SIGKILL and restarted 20 times (200 with MEDLEDGER_LONG_TESTS=1). Afterwards no acknowledged
/// event is lost, none is recorded twice, the three exports are byte-identical and verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_survive_leader_kills() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let mut nodes = start_cluster(&site, 3, "").await;
    let writer = site.staff_client("it-biomed", StaffRole::Biomed);
    let admin = site.staff_client("it-admin2", StaffRole::Admin);
    let addrs = Arc::new(nodes.iter().map(Gateway::addr).collect::<Vec<_>>());
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let total = 10_000u64;
    let kills = if medledger_tests::long_tests() {
        200
    } else {
        20
    };
    let writes = tokio::spawn(write_events(
        writer.clone(),
        addrs.clone(),
        0..total,
        32,
        acked.clone(),
    ));
    let mut killed = 0;
    let mut terms = BTreeMap::new();
    while killed < kills {
        let mut statuses = Vec::new();
        for a in addrs.iter() {
            statuses.push(status(&admin, a).await);
        }
        for s in statuses.iter().flatten() {
            if s["state"] == "Leader" {
                let term = s["term"].as_u64().unwrap_or(0);
                let id = s["node_id"].as_u64().unwrap_or(0);
                let prev = terms.insert(term, id);
                assert!(
                    prev.is_none() || prev == Some(id),
                    "two leaders in term {term}: {prev:?} and {id}"
                );
            }
        }
        if writes.is_finished() && killed >= kills {
            break;
        }
        if let Some(leader) = leader_of(&statuses) {
            let g = nodes
                .iter_mut()
                .find(|g| g.id == leader)
                .expect("leader node");
            g.kill();
            // Keep it down until the other two have elected a new leader: a leader restarted at
            // once would resume its own term before anyone noticed.
            let others: Vec<String> = addrs.iter().filter(|a| **a != g.addr()).cloned().collect();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let mut new_leader = None;
                for a in &others {
                    if let Some(s) = status(&admin, a).await {
                        if s["state"] == "Leader" {
                            let term = s["term"].as_u64().unwrap_or(0);
                            let id = s["node_id"].as_u64().unwrap_or(0);
                            let prev = terms.insert(term, id);
                            assert!(
                                prev.is_none() || prev == Some(id),
                                "two leaders in term {term}"
                            );
                            new_leader = Some(id);
                        }
                    }
                }
                if new_leader.is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no new leader within 20 s of killing node {leader}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            g.start();
            killed += 1;
            // Let some writes through before the next kill.
            tokio::time::sleep(Duration::from_millis(300)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    writes.await.expect("writes");
    let acked = acked.lock().expect("lock").clone();
    assert_eq!(acked.len() as u64, total);
    // Convergence: all three nodes applied the same ledger.
    let size = eventually(
        "the three nodes to converge",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            let addrs = addrs.clone();
            async move {
                let mut sizes = HashSet::new();
                let mut applied = HashSet::new();
                for a in addrs.iter() {
                    let s = status(&admin, a).await?;
                    sizes.insert(s["ledger_size"].as_u64()?);
                    applied.insert(s["last_applied"].as_u64()?);
                }
                (sizes.len() == 1 && applied.len() == 1)
                    .then(|| sizes.into_iter().next())
                    .flatten()
            }
        },
    )
    .await;
    assert!(
        size >= total,
        "ledger has {size} entries for {total} events"
    );
    // A checkpoint over everything, replicated to all three, is where the exports are cut.
    // Through the CLI, which waits for an election a restarted voter may have started (on a
    // loaded 2-core machine this once answered 503 right after convergence).
    assert_eq!(checkpoint(&nodes[0].config).await, size);
    eventually(
        "the checkpoint to reach every node",
        Duration::from_secs(30),
        || {
            let admin = admin.clone();
            let addrs = addrs.clone();
            async move {
                let mut applied = HashSet::new();
                for a in addrs.iter() {
                    applied.insert(status(&admin, a).await?["last_applied"].as_u64()?);
                }
                (applied.len() == 1).then_some(())
            }
        },
    )
    .await;
    let dir = site.dir.path();
    let mut exports = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let bytes = export(&admin, a).await;
        let path = dir.join(format!("export-{i}.jsonl"));
        std::fs::write(&path, &bytes).expect("write export");
        verify_file(&path);
        exports.push(bytes);
    }
    assert!(
        exports[0] == exports[1] && exports[1] == exports[2],
        "exports differ between nodes"
    );
    // Every acknowledged event is there, at the sequence number it was acknowledged with, once.
    let text = String::from_utf8(exports[0].clone()).expect("utf8");
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut lines = text.lines();
    lines.next();
    for line in lines {
        let v: Value = serde_json::from_str(line).expect("line");
        let Some(hexbytes) = v["entry"].as_str() else {
            continue;
        };
        let e = ledger_node::Entry::decode(&hex::decode(hexbytes).expect("hex")).expect("entry");
        if let Some(id) = e.body.event_id {
            assert!(
                seen.insert(id.clone(), e.seq).is_none(),
                "event {id} recorded twice"
            );
        }
    }
    for (id, seq) in &acked {
        assert_eq!(
            seen.get(id),
            Some(seq),
            "acknowledged event {id} lost or moved"
        );
    }
    eprintln!(
        "{killed} leader kills, {} events, {} distinct terms with a leader",
        acked.len(),
        terms.len()
    );
}

/// A TCP proxy in front of one gateway that can refuse (and cut) connections from chosen source
/// addresses: each gateway connects to its peers from its own loopback address, so blocking
/// addresses at the proxies cuts chosen links in both directions.
struct Proxy {
    blocked: Arc<Mutex<HashSet<std::net::IpAddr>>>,
    conns: Arc<Mutex<Vec<(std::net::IpAddr, tokio::task::AbortHandle)>>>,
    task: tokio::task::JoinHandle<()>,
}

type Conns = Arc<Mutex<Vec<(std::net::IpAddr, tokio::task::AbortHandle)>>>;

impl Proxy {
    async fn start(listen: std::net::SocketAddr, target: String) -> (Self, u16) {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .expect("proxy bind");
        let port = l.local_addr().expect("addr").port();
        let blocked: Arc<Mutex<HashSet<std::net::IpAddr>>> = Arc::default();
        let conns: Conns = Arc::default();
        let (b, c) = (blocked.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, peer)) = l.accept().await else {
                    continue;
                };
                if b.lock().expect("lock").contains(&peer.ip()) {
                    continue;
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().expect("lock").push((peer.ip(), h.abort_handle()));
            }
        });
        (
            Proxy {
                blocked,
                conns,
                task,
            },
            port,
        )
    }

    fn block(&self, ips: &[std::net::IpAddr]) {
        self.blocked
            .lock()
            .expect("lock")
            .extend(ips.iter().copied());
        for (ip, h) in self.conns.lock().expect("lock").iter() {
            if ips.contains(ip) {
                h.abort();
            }
        }
    }

    fn heal(&self) {
        self.blocked.lock().expect("lock").clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
        .then(|| sizes.into_iter().next())
        .flatten()
}

/// The leader is cut off from both followers: it acknowledges nothing while the other two elect
/// a new leader and go on; at most one leader per term; after healing it rejoins and all three
/// hold the same ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_acknowledges_nothing_and_rejoins() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let ip = |i: u64| std::net::Ipv4Addr::new(127, 0, 0, 10 + i as u8);
    let mut nodes = Vec::new();
    let mut proxies = Vec::new();
    let mut voters = Vec::new();
    for i in 1..=3u64 {
        // Peers reach node i through its proxy; node i connects out from its own address.
        let g = Gateway::with_ip(&site, i, ip(i), &format!("source_address = \"{}\"", ip(i)));
        let (proxy, port) = Proxy::start((ip(i), 0).into(), g.addr()).await;
        voters.push((i, format!("{}:{port}", ip(i))));
        let text = std::fs::read_to_string(&g.config).expect("config");
        let text = text.replace(
            "[api]\n",
            &format!("[api]\nadvertise = \"{}:{port}\"\n", ip(i)),
        );
        std::fs::write(&g.config, text).expect("config");
        proxies.push(proxy);
        nodes.push(g);
    }
    let nodes = start_nodes(&site, nodes, &voters).await;
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let writer = site.staff_client("it-biomed", StaffRole::Biomed);
    let addrs = Arc::new(nodes.iter().map(Gateway::addr).collect::<Vec<_>>());
    let acked = Arc::new(Mutex::new(HashMap::new()));
    write_events(writer.clone(), addrs.clone(), 0..200, 8, acked.clone()).await;

    let mut statuses = Vec::new();
    for a in addrs.iter() {
        statuses.push(status(&admin, a).await);
    }
    let leader = leader_of(&statuses).expect("a leader");
    let isolated = nodes[(leader - 1) as usize].addr();
    let others: Vec<std::net::IpAddr> = (1..=3)
        .filter(|i| *i != leader)
        .map(|i| ip(i).into())
        .collect();
    for (i, p) in proxies.iter().enumerate() {
        if i as u64 + 1 == leader {
            p.block(&others);
        } else {
            p.block(&[ip(leader).into()]);
        }
    }
    let cut_at = Instant::now();
    // Writes sent to the isolated leader: none may be acknowledged.
    let mut attempts = Vec::new();
    for k in 0..5u64 {
        let (writer, addr) = (writer.clone(), isolated.clone());
        attempts.push(tokio::spawn(async move {
            let body = event(1_000_000 + k);
            match writer
                .post(format!("https://{addr}/v1/events"))
                .json(&body)
                .send()
                .await
            {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            }
        }));
    }
    // The majority side elects a leader of a newer term and keeps acknowledging.
    let majority: Vec<String> = nodes
        .iter()
        .filter(|g| g.id != leader)
        .map(Gateway::addr)
        .collect();
    eventually(
        "a new leader on the majority side",
        Duration::from_secs(20),
        || {
            let (admin, majority) = (admin.clone(), majority.clone());
            async move {
                for a in &majority {
                    if status(&admin, a).await?["state"] == "Leader" {
                        return Some(());
                    }
                }
                None
            }
        },
    )
    .await;
    write_events(
        writer.clone(),
        Arc::new(majority.clone()),
        200..400,
        8,
        acked.clone(),
    )
    .await;
    let mut terms: BTreeMap<u64, HashSet<u64>> = BTreeMap::new();
    while cut_at.elapsed() < Duration::from_secs(12) {
        for a in addrs.iter() {
            if let Some(s) = status(&admin, a).await {
                if s["state"] == "Leader" {
                    terms
                        .entry(s["term"].as_u64().unwrap_or(0))
                        .or_default()
                        .insert(s["node_id"].as_u64().unwrap_or(0));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for a in attempts {
        assert!(
            !a.await.expect("attempt"),
            "the isolated leader acknowledged a write"
        );
    }
    assert!(
        terms.len() >= 2,
        "expected the old and a new term: {terms:?}"
    );
    for (term, leaders) in &terms {
        assert!(leaders.len() <= 1, "term {term} had leaders {leaders:?}");
    }
    for p in &proxies {
        p.heal();
    }
    // It rejoins: one leader, the same ledger everywhere.
    let size = eventually(
        "the cut-off node to catch up",
        Duration::from_secs(60),
        || {
            let (admin, addrs) = (admin.clone(), addrs.clone());
            async move { converged(&admin, &addrs).await }
        },
    )
    .await;
    assert!(size >= 400);
    checkpoint(&nodes[0].config).await;
    eventually("the checkpoint everywhere", Duration::from_secs(30), || {
        let (admin, addrs) = (admin.clone(), addrs.clone());
        async move { converged(&admin, &addrs).await }
    })
    .await;
    let mut exports = Vec::new();
    for a in addrs.iter() {
        exports.push(export(&admin, a).await);
    }
    assert!(
        exports[0] == exports[1] && exports[1] == exports[2],
        "exports differ after healing"
    );
    let path = site.dir.path().join("export-partition.jsonl");
    std::fs::write(&path, &exports[0]).expect("write");
    verify_file(&path);
    let text = String::from_utf8(exports[0].clone()).expect("utf8");
    for (id, seq) in acked.lock().expect("lock").iter() {
        assert!(
            text.contains(&format!("{{\"seq\":{seq},")),
            "acknowledged event {id} at {seq} missing"
        );
    }
    drop(nodes);
}

/// A gateway that joins after 50,000 events catches up from a snapshot as a learner, serves
/// reads, refuses writes, and becomes a voter when promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_late_and_catches_up_from_a_snapshot() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let small_logs = "[raft]\nsnapshot_after_logs = 200\nkeep_logs_after_snapshot = 20\n";
    let nodes = start_cluster(&site, 1, small_logs).await;
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let writer = site.staff_client("it-biomed", StaffRole::Biomed);
    let total: u64 = std::env::var("LEARNER_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let started = Instant::now();
    let leader_addr = nodes[0].addr();
    write_events(
        writer.clone(),
        Arc::new(vec![leader_addr.clone()]),
        0..total,
        128,
        acked.clone(),
    )
    .await;
    eprintln!("{total} events written in {:?}", started.elapsed());
    let s = status(&admin, &leader_addr).await.expect("status");
    assert!(
        s["purged_index"].as_u64().is_some(),
        "the leader never purged its log: {s}"
    );

    let learner_health = format!("127.0.0.1:{}", medledger_tests::free_port());
    let mut learner = Gateway::new(
        &site,
        2,
        &format!("health_listen = \"{learner_health}\"\n{small_logs}"),
    );
    learner.start();
    let learner_addr = learner.addr();
    eventually("the learner to listen", Duration::from_secs(30), || {
        status(&admin, &learner_addr)
    })
    .await;
    medledger_ok(
        "cluster join",
        &[
            "cluster",
            "join",
            "--config",
            learner.config.to_str().expect("utf8"),
            "--via",
            &leader_addr,
        ],
    );
    let caught_up = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(180);
    let s = loop {
        if let Some(s) = status(&admin, &learner_addr).await {
            if s["ledger_size"].as_u64() >= Some(total) {
                break s;
            }
        }
        if Instant::now() > deadline {
            let tail = |p: PathBuf| {
                let t = std::fs::read_to_string(p).unwrap_or_default();
                t.lines().rev().take(40).collect::<Vec<_>>().join("\n")
            };
            panic!(
                "the learner did not catch up in 180 s: {:?}\nlearner log (newest first):\n{}\nleader log (newest first):\n{}",
                status(&admin, &learner_addr).await,
                tail(learner.dir.join("gateway.log")),
                tail(nodes[0].dir.join("gateway.log"))
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("learner caught up in {:?}", caught_up.elapsed());
    assert!(
        s["snapshot_index"].as_u64().is_some(),
        "the learner did not install a snapshot: {s}"
    );
    assert_eq!(s["state"], "Learner");
    // It registered its key once: the leader's answer lets its writes through; it does not
    // register again every 2 s while it installs the snapshot (each registration is a Raft log
    // entry, and with small logs every few of them made the leader copy its ledger into a new
    // snapshot, which started the learner's transfer over).
    let (code, metrics) = crate::ops::get(&learner_health, "/metrics")
        .await
        .expect("the learner's metrics");
    assert_eq!(code, 200);
    let registrations: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("medledger_writes_total{") && l.contains("node_registered"))
        .collect();
    assert_eq!(
        registrations,
        vec!["medledger_writes_total{outcome=\"node_registered\"} 1"],
        "after catching up for {:?}",
        caught_up.elapsed()
    );
    // Read-only: it serves a device's history and refuses writes.
    let h: Value = admin
        .get(format!("https://{learner_addr}/v1/devices/pump-7/history"))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    assert_eq!(
        h["entries"].as_array().map(Vec::len),
        Some((total / 50) as usize)
    );
    let r = writer
        .post(format!("https://{learner_addr}/v1/events"))
        .json(&event(total + 1))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    // Promoted, it votes.
    medledger_ok(
        "promote",
        &[
            "cluster",
            "promote",
            "--config",
            nodes[0].config.to_str().expect("utf8"),
            "--node",
            "2",
        ],
    );
    let s = status(&admin, &leader_addr).await.expect("status");
    assert_eq!(s["nodes"]["2"]["voter"], true, "{s}");
    drop(learner);
}

/// Revoking a gateway's certificate through the ledger cuts that gateway off from the others
/// without a restart: they refuse its connections and its server certificate, elect a leader
/// among themselves if needed, and go on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_gateway_is_cut_off_from_the_cluster() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let nodes = start_cluster(&site, 3, "").await;
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let writer = site.staff_client("it-biomed", StaffRole::Biomed);
    let addrs: Vec<String> = nodes.iter().map(Gateway::addr).collect();
    let acked = Arc::new(Mutex::new(HashMap::new()));
    write_events(
        writer.clone(),
        Arc::new(addrs.clone()),
        0..100,
        8,
        acked.clone(),
    )
    .await;

    let pem = std::fs::read(nodes[2].dir.join("pki/gateway.crt")).expect("cert");
    let chain =
        certs::pem::certs_from_pem(&pem, &nodes[2].dir.join("pki/gateway.crt")).expect("pem");
    let serial = certs::parse_identity(&chain[0]).expect("identity").serial;
    medledger_ok(
        "cert revoke",
        &[
            "cert",
            "revoke",
            "--config",
            nodes[0].config.to_str().expect("utf8"),
            &serial,
            "--reason",
            "key-compromise",
            "--subject",
            "gateway:3",
        ],
    );

    let majority = Arc::new(addrs[..2].to_vec());
    write_events(writer.clone(), majority.clone(), 100..300, 8, acked.clone()).await;
    let size = eventually("nodes 1 and 2 to agree", Duration::from_secs(30), || {
        let (admin, majority) = (admin.clone(), majority.clone());
        async move { converged(&admin, &majority).await.filter(|s| *s >= 300) }
    })
    .await;
    // Give node 3 every chance to catch up; it must not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s3 = status(&admin, &addrs[2])
        .await
        .expect("node 3 still answers its staff");
    assert!(
        s3["ledger_size"].as_u64().expect("size") < size,
        "the revoked gateway still receives the ledger: {s3}"
    );
    let s1 = status(&admin, &addrs[0]).await.expect("status");
    assert!(matches!(s1["leader"].as_u64(), Some(1 | 2)), "{s1}");
}

/// docs/operations.md "A gateway whose store cannot be opened": a gateway whose database is
/// gone (set aside, as after sled failed to recover it) is taken out of the cluster, started
/// on an empty store with its own key and certificates, joins again, catches up from a
/// snapshot, is promoted, and then holds the same ledger as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_store_is_lost_is_rebuilt_from_its_peers() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let small_logs = "[raft]\nsnapshot_after_logs = 50\nkeep_logs_after_snapshot = 5\n";
    let mut nodes = start_cluster(&site, 3, small_logs).await;
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let writer = site.staff_client("it-biomed", StaffRole::Biomed);
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let leader_addr = nodes[0].addr();
    let write = |range| {
        write_events(
            writer.clone(),
            Arc::new(vec![leader_addr.clone()]),
            range,
            16,
            acked.clone(),
        )
    };
    write(0..300).await;
    // Gateway 3 stops; its database is set aside.
    nodes[2].kill();
    let dir = nodes[2].dir.clone();
    std::fs::rename(dir.join("sled"), dir.join("sled.damaged")).expect("set sled aside");
    let _ = std::fs::remove_file(dir.join("raft-snapshot.bin"));
    let config = |n: &Gateway| n.config.to_str().expect("utf8").to_owned();
    medledger_ok(
        "cluster remove",
        &[
            "cluster",
            "remove",
            "--config",
            &config(&nodes[0]),
            "--node",
            "3",
        ],
    );
    // The other two go on.
    write(300..400).await;
    nodes[2].start();
    let addr3 = nodes[2].addr();
    eventually("gateway 3 to listen", Duration::from_secs(30), || {
        status(&admin, &addr3)
    })
    .await;
    medledger_ok(
        "cluster join",
        &[
            "cluster",
            "join",
            "--config",
            &config(&nodes[2]),
            "--via",
            &leader_addr,
        ],
    );
    medledger_ok(
        "cluster promote",
        &[
            "cluster",
            "promote",
            "--config",
            &config(&nodes[0]),
            "--node",
            "3",
        ],
    );
    write(400..450).await;
    let size = status(&admin, &leader_addr).await.expect("status")["ledger_size"]
        .as_u64()
        .expect("size");
    eventually("gateway 3 to catch up", Duration::from_secs(60), || {
        let (admin, addr3) = (admin.clone(), addr3.clone());
        async move {
            let s = status(&admin, &addr3).await?;
            (s["ledger_size"].as_u64() >= Some(size)).then_some(())
        }
    })
    .await;
    let s = status(&admin, &leader_addr).await.expect("status");
    assert_eq!(s["nodes"]["3"]["voter"], true, "{s}");
    let s3 = status(&admin, &addr3).await.expect("status of gateway 3");
    assert!(
        s3["snapshot_index"].as_u64().is_some(),
        "gateway 3 did not catch up from a snapshot: {s3}"
    );
    // The same history on the rebuilt gateway as on the leader.
    let history = |addr: String| {
        let admin = admin.clone();
        async move {
            let h: Value = admin
                .get(format!("https://{addr}/v1/devices/pump-7/history"))
                .send()
                .await
                .expect("history")
                .json()
                .await
                .expect("json");
            h["entries"].clone()
        }
    };
    let rebuilt = history(addr3.clone()).await;
    assert_eq!(rebuilt, history(leader_addr.clone()).await);
    assert_eq!(rebuilt.as_array().map(Vec::len), Some(9), "{rebuilt}");
}
