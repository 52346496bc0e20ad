//! Replication end to end: real `medledger run` processes on loopback with certificates from our
//! own CA, written to through their HTTPS API, killed with SIGKILL and restarted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certs::{CertSpec, IssuingCa, StaffRole, Validity};
use medledger_tests::{bin, free_port, ChildGuard};
use serde_json::{json, Value};

/// A site CA and the certificates of a test cluster.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub ca: IssuingCa,
}

impl Site {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = certs::init_site_ca(
            &dir.path().join("ca"),
            &certs::CaInit::new("test hospital", "1"),
        )
        .expect("site ca");
        Site { dir, ca }
    }

    /// An HTTPS client presenting a staff certificate of `role`.
    pub fn staff_client(&self, id: &str, role: StaffRole) -> reqwest::Client {
        let issued = self
            .ca
            .issue(
                &CertSpec::staff(id, id, role),
                Validity::days(2).expect("validity"),
            )
            .expect("issue staff");
        let key = certs::CertifiedKey::from_pem(
            &issued.chain_pem,
            issued.key_pem.as_deref().expect("key"),
        )
        .expect("key");
        let cfg = certs::client_config(
            &[self.ca.root_der().clone()],
            &key,
            &certs::RevocationPolicy::default(),
            &[],
        )
        .expect("client config");
        reqwest::Client::builder()
            .use_preconfigured_tls((*cfg).clone())
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("client")
    }
}

/// One gateway process.
pub struct Gateway {
    pub id: u64,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub child: Option<ChildGuard>,
}

impl Gateway {
    /// Prepares a node's data directory, certificate and config file.
    pub fn new(site: &Site, id: u64, extra_config: &str) -> Self {
        let dir = site.dir.path().join(format!("node{id}"));
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).expect("mkdir");
        let issued = site
            .ca
            .issue(
                &CertSpec::gateway(id.to_string()),
                Validity::days(2).expect("validity"),
            )
            .expect("issue gateway");
        issued
            .write_files(&pki.join("gateway.crt"), &pki.join("gateway.key"))
            .expect("write cert");
        std::fs::write(pki.join("root.crt"), site.ca.root_pem()).expect("root");
        let port = free_port();
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nid = {id}\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n{extra_config}\n",
                dir.display()
            ),
        )
        .expect("config");
        Gateway {
            id,
            port,
            dir,
            config,
            child: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the process; its log goes to `gateway.log` in its directory.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gateway.log"))
            .expect("log");
        let child = Command::new(bin("medledger"))
            .args(["run", "--config", self.config.to_str().expect("utf8")])
            .env("RUST_LOG", "warn,medledger=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn medledger run");
        self.child = Some(ChildGuard(child));
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }
}

pub async fn status(client: &reqwest::Client, addr: &str) -> Option<Value> {
    let r = client
        .get(format!("https://{addr}/cluster/status"))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Polls until `f` holds, or panics naming `what` after `timeout`.
pub async fn eventually<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `n` gateways and makes them one cluster of voters through the CLI.
pub async fn start_cluster(site: &Site, n: u64, extra: &str) -> Vec<Gateway> {
    let mut nodes: Vec<Gateway> = (1..=n).map(|i| Gateway::new(site, i, extra)).collect();
    for g in &mut nodes {
        g.start();
    }
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    for g in &nodes {
        let addr = g.addr();
        eventually(
            &format!("node {} to listen", g.id),
            Duration::from_secs(30),
            || status(&admin, &addr),
        )
        .await;
    }
    let mut args = vec![
        "cluster".to_string(),
        "init".into(),
        "--config".into(),
        nodes[0].config.display().to_string(),
    ];
    for g in &nodes {
        args.push("--voter".into());
        args.push(format!("{}={}", g.id, g.addr()));
    }
    let out = Command::new(bin("medledger"))
        .args(&args)
        .output()
        .expect("cluster init");
    assert!(
        out.status.success(),
        "cluster init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for g in &nodes {
        let addr = g.addr();
        eventually(
            &format!("node {} to know the leader", g.id),
            Duration::from_secs(30),
            || {
                let admin = admin.clone();
                let addr = addr.clone();
                async move {
                    status(&admin, &addr)
                        .await
                        .filter(|s| !s["leader"].is_null())
                }
            },
        )
        .await;
    }
    nodes
}

fn event(i: u64) -> Value {
    json!({
        "event_id": format!("ev-{i}"),
        "kind": if i % 3 == 0 { "calibration" } else { "preventive-maintenance" },
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
    let r = admin
        .post(format!("https://{}/cluster/checkpoint", addrs[0]))
        .send()
        .await
        .expect("checkpoint");
    assert!(r.status().is_success(), "checkpoint: {}", r.status());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["checkpoint_size"].as_u64(), Some(size));
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
