//! The cluster harness shared by the replication tests (`tests/it/cluster.rs`,
//! `tests/it/gateway_tls.rs`) and the `cluster-bench` binary: a site CA, staff HTTPS clients,
//! gateway directories with their certificate and config, real `medledger run` processes made
//! into one cluster through the CLI, and polling of `/cluster/status`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use certs::{CertSpec, IssuingCa, StaffRole, Validity};
use serde_json::Value;

use crate::{bin, free_port, ChildGuard};

/// The TLS client config of a staff member `id` with `role`, certified by `ca` and trusting only
/// `ca`'s root.
pub fn staff_tls(
    ca: &IssuingCa,
    id: &str,
    role: StaffRole,
) -> anyhow::Result<rustls::ClientConfig> {
    client_tls(ca, &CertSpec::staff(id, id, role))
}

/// The TLS client config of a certificate of `spec` from `ca`, trusting only `ca`'s root.
pub fn client_tls(ca: &IssuingCa, spec: &CertSpec) -> anyhow::Result<rustls::ClientConfig> {
    let issued = ca.issue(spec, Validity::days(2)?)?;
    let key = certs::CertifiedKey::from_pem(
        &issued.chain_pem,
        issued.key_pem.as_deref().context("issued key")?,
    )?;
    let cfg = certs::client_config(
        &[ca.root_der().clone()],
        &key,
        &certs::RevocationPolicy::default(),
        &[],
    )?;
    Ok((*cfg).clone())
}

/// `[node] warn_free_mb` of the test gateways: just above the default write reserve (256 MiB), so
/// that a test machine with less than the production 2 GiB free does not make every healthy
/// gateway `degraded`; the host's free space is not what these tests check (tests/it/disk.rs
/// fills a file system of its own).
pub const TEST_WARN_FREE_MB: u64 = 300;

/// Prepares a gateway directory `dir`: `pki/gateway.{crt,key}` (gateway profile for `ip`),
/// `pki/root.crt`, and `gateway.toml` listening on `ip` and a free port, followed by
/// `extra_config`. Returns the port and the config path.
pub fn write_gateway_files(
    ca: &IssuingCa,
    dir: &Path,
    id: u64,
    ip: Ipv4Addr,
    extra_config: &str,
) -> anyhow::Result<(u16, PathBuf)> {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).with_context(|| format!("mkdir {}", pki.display()))?;
    let spec = CertSpec::Gateway(certs::ServerSpec {
        id: id.to_string(),
        dns_names: vec![],
        ip_addrs: vec![ip.into()],
    });
    // Long enough that health checks do not warn of an expiring certificate (30 days).
    let issued = ca.issue(&spec, Validity::days(90)?)?;
    issued.write_files(&pki.join("gateway.crt"), &pki.join("gateway.key"))?;
    std::fs::write(pki.join("root.crt"), ca.root_pem()).context("write root.crt")?;
    let port = free_port();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = {id}\ndata_dir = \"{}\"\nwarn_free_mb = {TEST_WARN_FREE_MB}\n[api]\nlisten = \"{ip}:{port}\"\n{extra_config}\n",
            dir.display()
        ),
    )
    .context("write gateway.toml")?;
    Ok((port, config))
}

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
        self.client_for(&CertSpec::staff(id, id, role))
    }

    /// An HTTPS client presenting a certificate of `spec` (any profile) from the site CA.
    pub fn client_for(&self, spec: &CertSpec) -> reqwest::Client {
        let tls = client_tls(&self.ca, spec).expect("client config");
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("client")
    }
}

impl Default for Site {
    fn default() -> Self {
        Site::new()
    }
}

/// One gateway process.
pub struct Gateway {
    pub id: u64,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub child: Option<ChildGuard>,
}

impl Gateway {
    /// Prepares a node's data directory, certificate and config file.
    pub fn new(site: &Site, id: u64, extra_config: &str) -> Self {
        Self::with_ip(site, id, Ipv4Addr::LOCALHOST, extra_config)
    }

    /// Like [`Gateway::new`], listening on another loopback address (its certificate names it).
    pub fn with_ip(site: &Site, id: u64, ip: Ipv4Addr, extra_config: &str) -> Self {
        let dir = site.dir.path().join(format!("node{id}"));
        let (port, config) =
            write_gateway_files(&site.ca, &dir, id, ip, extra_config).expect("gateway files");
        Gateway {
            id,
            ip,
            port,
            dir,
            config,
            child: None,
        }
    }

    /// The last `n` lines of the gateway's log, after its first panic lines (the line that
    /// explains the rest, even when it scrolled away): for a failing test's message.
    pub fn log_tail(&self, n: usize) -> String {
        let t = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        let panics = lines.iter().filter(|l| l.contains("panicked")).take(3);
        let tail = lines[lines.len().saturating_sub(n)..].iter();
        panics.chain(tail).copied().collect::<Vec<_>>().join("\n")
    }

    /// The address the gateway listens on.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
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
            .env(
                "RUST_LOG",
                std::env::var("MEDLEDGER_TEST_RUST_LOG")
                    .unwrap_or_else(|_| "warn,medledger=info".into()),
            )
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

/// `GET /cluster/status` of the gateway at `addr`, or `None` while it does not answer with
/// success.
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

/// Sends a raw Raft request (`body`, MessagePack) to `/raft/forward` of each of `addrs` in turn
/// with `client` (a gateway certificate) until one takes it (the leader, or a follower that
/// forwards it), as a forged command from a gateway would arrive; returns what apply answered.
pub async fn raft_forward(
    client: &reqwest::Client,
    addrs: &[String],
    body: &[u8],
) -> ledger_node::raft::types::RaftResponse {
    use medledger_gateway::service::raft_net;
    eventually(
        "the leader to take the raw command",
        Duration::from_secs(30),
        || async {
            for addr in addrs {
                let r = client
                    .post(format!("https://{addr}/raft/forward"))
                    .header("content-type", raft_net::MSGPACK)
                    .body(body.to_vec())
                    .send()
                    .await
                    .ok()?;
                if r.status().is_success() {
                    return raft_net::decode(&r.bytes().await.ok()?).ok();
                }
            }
            None
        },
    )
    .await
}

/// Polls `f` every 50 ms until it returns `Some`; an error naming `what` after `timeout`.
pub async fn poll<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `f` holds, or panics naming `what` after `timeout`.
pub async fn eventually<F, Fut, T>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(what, timeout, f)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `GET /v1/keys` of the gateway at `addr` lists `n` keys, each with its
/// endorsement by the site (a gateway with an issuing CA endorses its key at start); returns
/// the keys.
pub async fn endorsed_keys(client: &reqwest::Client, addr: &str, n: usize) -> Value {
    eventually(
        &format!("the {n} gateways' keys endorsed"),
        Duration::from_secs(60),
        || async move {
            let r = client.get(format!("https://{addr}/v1/keys")).send().await;
            let v: Value = r.ok()?.json().await.ok()?;
            let all = v.as_array()?;
            (all.len() == n && all.iter().all(|k| k["endorsement"].is_object())).then_some(v)
        },
    )
    .await
}

/// Starts `n` gateways and makes them one cluster of voters through the CLI.
pub async fn start_cluster(site: &Site, n: u64, extra: &str) -> Vec<Gateway> {
    let nodes: Vec<Gateway> = (1..=n).map(|i| Gateway::new(site, i, extra)).collect();
    let voters: Vec<(u64, String)> = nodes.iter().map(|g| (g.id, g.addr())).collect();
    start_nodes(site, nodes, &voters).await
}

/// Starts prepared gateways and initialises them as one cluster with `voters` (id, address
/// peers use).
pub async fn start_nodes(
    site: &Site,
    mut nodes: Vec<Gateway>,
    voters: &[(u64, String)],
) -> Vec<Gateway> {
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
    for (id, addr) in voters {
        args.push("--voter".into());
        args.push(format!("{id}={addr}"));
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
