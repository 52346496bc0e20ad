//! Replication benchmark (issue 4): a 3-gateway MedLedger cluster (`medledger run`, openraft over
//! sled, mutual-TLS HTTPS) beside a 3-member etcd cluster (client and peer TLS with client
//! certificates from the same site CA), all on loopback on this machine, in the same run.
//!
//! Each point is N closed-loop clients (send, wait for the answer, send the next) writing one
//! realistic maintenance event per request: `POST /v1/events` to our leader, `POST /v3/kv/put`
//! (etcd's JSON gateway, the same event bytes as the value, base64 as the gateway requires) to
//! etcd's leader. Both sides are durable as shipped: an answer means a quorum has the write on
//! disk (fsync). Points alternate between the two systems so background load on the shared
//! machine hits both alike. Prints a Markdown table.
//!
//! ```text
//! cargo build --release -p medledger-tests --bin cluster-bench -p medledger-gateway --bin medledger
//! target/release/cluster-bench [--seconds 10] [--warmup 2] [--clients 1,16,256]
//!     [--medledger PATH] [--etcd PATH] [--dir DIR] [--gateway-config TOML] [--only ours|etcd] [--keep]
//! ```
//!
//! `--keep` leaves the state directory (data, logs, certificates) in place for inspection.
//! All clients share one staff certificate, so the gateways' `max_connections_per_identity` is
//! set to the largest client count plus 8 (at least 64) unless `--gateway-config` sets it.
//!
//! `--receipts N` (with our cluster) then writes N events one at a time and, after each
//! acknowledgement, polls `GET /v1/entries/{seq}/receipt` until the receipt is cut at a
//! co-signed checkpoint (it carries `voters`): the delay from the acknowledgement to a receipt
//! that a majority of the gateways signed (docs/ledger-format.md §4.5, §9.6). The writes are
//! spread over the checkpoint interval by a pause of 0 to 990 ms between them.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use certs::{CertSpec, IssuingCa, StaffRole, Validity};
use medledger_tests::cluster::{poll, staff_tls, status, write_gateway_files};
use medledger_tests::{free_port, ChildGuard};
use serde_json::{json, Value};

struct Args {
    seconds: f64,
    warmup: f64,
    clients: Vec<usize>,
    medledger: PathBuf,
    etcd: PathBuf,
    dir: Option<PathBuf>,
    gateway_config: String,
    only: Option<String>,
    keep: bool,
    receipts: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut a = Args {
        seconds: 10.0,
        warmup: 2.0,
        clients: vec![1, 16, 256],
        medledger: exe_dir.join("medledger"),
        etcd: PathBuf::from("etcd"),
        dir: None,
        gateway_config: String::new(),
        only: None,
        keep: false,
        receipts: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = val()?.parse().context("--seconds")?,
            "--warmup" => a.warmup = val()?.parse().context("--warmup")?,
            "--clients" => {
                a.clients = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--clients")?
            }
            "--medledger" => a.medledger = val()?.into(),
            "--etcd" => a.etcd = val()?.into(),
            "--dir" => a.dir = Some(val()?.into()),
            "--gateway-config" => a.gateway_config = val()?.replace("\\n", "\n"),
            "--only" => a.only = Some(val()?),
            "--keep" => a.keep = true,
            "--receipts" => a.receipts = val()?.parse().context("--receipts")?,
            "-h" | "--help" => {
                println!(
                    "usage: cluster-bench [--seconds S] [--warmup S] [--clients 1,16,256] \
                     [--medledger PATH] [--etcd PATH] [--dir DIR] [--gateway-config TOML] \
                     [--only ours|etcd] [--keep] [--receipts N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if a.clients.is_empty() || a.clients.contains(&0) {
        bail!("--clients must list positive numbers");
    }
    if !a.medledger.exists() {
        bail!(
            "medledger binary not found at {} (build it with cargo build --release -p \
             medledger-gateway --bin medledger, or pass --medledger PATH)",
            a.medledger.display()
        );
    }
    Ok(a)
}

/// The site CA and the HTTPS clients made from it.
struct Site {
    dir: PathBuf,
    ca: IssuingCa,
}

impl Site {
    fn client(&self, id: &str, role: StaffRole, pool: usize) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(staff_tls(&self.ca, id, role)?)
            .http1_only()
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(120))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()?)
    }

    /// Writes a certificate (gateway profile: server and client, valid for 127.0.0.1) and key.
    fn server_cert(&self, id: &str, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let issued = self
            .ca
            .issue(&CertSpec::gateway(id.to_string()), Validity::days(2)?)?;
        let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
        issued.write_files(&crt, &key)?;
        Ok((crt, key))
    }
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<ChildGuard> {
    let log = std::fs::File::create(log)?;
    let child = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    Ok(ChildGuard(child))
}

/// Three `medledger run` processes made into one cluster of voters; returns the processes and the
/// leader's address.
async fn start_ours(
    site: &Site,
    medledger: &Path,
    extra: &str,
) -> anyhow::Result<(Vec<ChildGuard>, Vec<u32>, String)> {
    let admin = site.client("bench-admin", StaffRole::Admin, 4)?;
    let mut children = Vec::new();
    let mut pids = Vec::new();
    let mut addrs = Vec::new();
    let mut configs = Vec::new();
    for id in 1..=3u64 {
        let dir = site.dir.join(format!("medledger{id}"));
        let (port, config) = write_gateway_files(&site.ca, &dir, id, Ipv4Addr::LOCALHOST, extra)?;
        let child = spawn_logged(
            Command::new(medledger)
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn"),
            &dir.join("gateway.log"),
        )?;
        pids.push(child.0.id());
        children.push(child);
        addrs.push(format!("127.0.0.1:{port}"));
        configs.push(config);
    }
    for a in &addrs {
        poll(
            &format!("gateway {a} to listen"),
            Duration::from_secs(30),
            || status(&admin, a),
        )
        .await?;
    }
    let mut cmd = Command::new(medledger);
    cmd.args(["cluster", "init", "--config"]).arg(&configs[0]);
    for (i, a) in addrs.iter().enumerate() {
        cmd.arg("--voter").arg(format!("{}={a}", i + 1));
    }
    let out = cmd.output().context("medledger cluster init")?;
    if !out.status.success() {
        bail!("cluster init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let leader = poll("a medledger leader", Duration::from_secs(30), || {
        let admin = admin.clone();
        let addrs = addrs.clone();
        async move {
            let s = status(&admin, &addrs[0]).await?;
            let id = s["leader"].as_u64()?;
            let addr = s["nodes"][id.to_string()]["addr"].as_str()?.to_string();
            // All three must know it before we measure.
            for a in &addrs {
                let s = status(&admin, a).await?;
                (s["leader"].as_u64()? == id).then_some(())?;
            }
            Some(addr)
        }
    })
    .await?;
    Ok((children, pids, leader))
}

/// Three etcd members with client and peer TLS (client certificates required on both), default
/// durability. Returns the processes and the leader's client URL.
async fn start_etcd(
    site: &Site,
    etcd: &Path,
    client: &reqwest::Client,
) -> anyhow::Result<(Vec<ChildGuard>, Vec<u32>, String)> {
    let ca = site.dir.join("ca-root.crt");
    std::fs::write(&ca, site.ca.root_pem())?;
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{}=https://127.0.0.1:{peer}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    let mut pids = Vec::new();
    let mut urls = Vec::new();
    for (i, (cport, pport)) in ports.iter().enumerate() {
        let name = format!("e{}", i + 1);
        let dir = site.dir.join(format!("etcd{}", i + 1));
        let (crt, key) = site.server_cert(&format!("etcd-{}", i + 1), &dir.join("pki"))?;
        let curl = format!("https://127.0.0.1:{cport}");
        let purl = format!("https://127.0.0.1:{pport}");
        let child = spawn_logged(
            Command::new(etcd)
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.join("data"))
                .args(["--listen-client-urls", &curl])
                .args(["--advertise-client-urls", &curl])
                .args(["--listen-peer-urls", &purl])
                .args(["--initial-advertise-peer-urls", &purl])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "medledger-bench"])
                .arg("--cert-file")
                .arg(&crt)
                .arg("--key-file")
                .arg(&key)
                .arg("--trusted-ca-file")
                .arg(&ca)
                .arg("--client-cert-auth")
                .arg("--peer-cert-file")
                .arg(&crt)
                .arg("--peer-key-file")
                .arg(&key)
                .arg("--peer-trusted-ca-file")
                .arg(&ca)
                .arg("--peer-client-cert-auth")
                .args(["--logger", "zap", "--log-level", "warn"]),
            &dir.join("etcd.log"),
        )?;
        pids.push(child.0.id());
        children.push(child);
        urls.push(curl);
    }
    let leader = poll("an etcd leader", Duration::from_secs(30), || {
        let client = client.clone();
        let urls = urls.clone();
        async move {
            let mut leader_url = None;
            for u in &urls {
                let r = client
                    .post(format!("{u}/v3/maintenance/status"))
                    .json(&json!({}))
                    .send()
                    .await
                    .ok()?;
                let v: Value = r.json().await.ok()?;
                let me = v["header"]["member_id"].as_str()?;
                let leader = v["leader"].as_str()?;
                if me == leader {
                    leader_url = Some(u.clone());
                }
            }
            leader_url
        }
    })
    .await?;
    Ok((children, pids, leader))
}

/// A realistic maintenance event (~360 bytes of JSON); `id` has a fixed width so every request
/// carries the same number of bytes.
/// `--receipts N`: the delay from each acknowledgement to a receipt cut at a co-signed checkpoint.
async fn receipt_delays(
    client: &reqwest::Client,
    url: &str,
    leader: &str,
    n: usize,
) -> anyhow::Result<()> {
    let mut delays = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis((i as u64 * 370) % 1000)).await;
        let r = client
            .post(url)
            .header("content-type", "application/json")
            .body(event(&format!("bench-receipt-{i:06}"), i as u64))
            .send()
            .await?;
        let acked = Instant::now();
        let v: Value = r.json().await?;
        let seq = v["seq"]
            .as_u64()
            .with_context(|| format!("no seq in {v}"))?;
        let deadline = acked + Duration::from_secs(30);
        loop {
            let r = client
                .get(format!("https://{leader}/v1/entries/{seq}/receipt"))
                .send()
                .await?;
            let receipt: Value = r.json().await?;
            if receipt["voters"].as_array().is_some_and(|v| !v.is_empty()) {
                delays.push(acked.elapsed());
                break;
            }
            if Instant::now() > deadline {
                bail!("entry {seq}: no co-signed receipt within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    delays.sort();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    println!(
        "\nco-signed receipt after the acknowledgement, {n} events: p50 {:.0} ms, p90 {:.0} ms, \
         p99 {:.0} ms, max {:.0} ms",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    Ok(())
}

fn event(id: &str, n: u64) -> String {
    json!({
        "event_id": id,
        "kind": "preventive-maintenance",
        "device_id": format!("(01)00884838035249(21)PMP{:06}", n % 1000),
        "occurred_at": "2026-01-05T10:00:00Z",
        "components": [
            {"name": "result", "class": "maintenance", "value": "pass"},
            {"name": "flow_error_pct", "class": "maintenance", "value": "1.8"},
            {"name": "technician", "class": "maintenance", "value": format!("biomed:{:04}", n % 97)},
        ],
    })
    .to_string()
}

#[derive(Clone, Copy, PartialEq)]
enum System {
    Ours,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Ours => "medledger",
            System::Etcd => "etcd",
        }
    }
}

struct Point {
    system: System,
    clients: usize,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    server_cpu_s: f64,
    client_cpu_s: f64,
}

/// CPU time (user + system) of a process so far, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(&p.to_string())).sum()
}

async fn one_request(
    system: System,
    client: &reqwest::Client,
    url: &str,
    id: &str,
    n: u64,
) -> Result<(), String> {
    let body = event(id, n);
    let req = match system {
        System::Ours => client
            .post(url)
            .header("content-type", "application/json")
            .body(body),
        System::Etcd => {
            let b64 = base64::engine::general_purpose::STANDARD;
            client.post(url).json(&json!({
                "key": b64.encode(format!("events/{id}")),
                "value": b64.encode(body),
            }))
        }
    };
    let r = req.send().await.map_err(|e| format!("{e:?}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| e.to_string())?;
    let ok = match system {
        System::Ours => status == reqwest::StatusCode::CREATED && text.contains("\"seq\""),
        System::Etcd => status.is_success() && text.contains("\"header\""),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{status}: {text}"))
    }
}

/// Runs `clients` closed loops against `url` for warm-up + measured time; only requests that end
/// inside the measured window count.
#[allow(clippy::too_many_arguments)]
async fn run_point(
    system: System,
    client: &reqwest::Client,
    url: &str,
    clients: usize,
    warmup: Duration,
    measure: Duration,
    tag: &str,
    server_pids: &[u32],
) -> Point {
    let start = Instant::now();
    let t0 = start + warmup;
    let t1 = t0 + measure;
    let cpu_before = Arc::new(std::sync::Mutex::new((0.0f64, 0.0f64)));
    // Samples CPU at the start of the measured window.
    let sampler = {
        let pids = server_pids.to_vec();
        let cpu_before = cpu_before.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(t0.into()).await;
            *cpu_before.lock().unwrap_or_else(|p| p.into_inner()) =
                (cpu_of(&pids), cpu_seconds("self"));
        })
    };
    let mut tasks = Vec::new();
    for w in 0..clients {
        let client = client.clone();
        let url = url.to_string();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let (mut errors, mut first_error) = (0u64, None);
            let mut i = 0u64;
            loop {
                let s = Instant::now();
                if s >= t1 {
                    break;
                }
                let id = format!("bench-{tag}-w{w:04}-{i:08}");
                let r = one_request(system, &client, &url, &id, i).await;
                let e = Instant::now();
                i += 1;
                let counted = e >= t0 && e <= t1;
                match r {
                    Ok(()) if counted => lat.push((e - s).as_micros() as u64),
                    Ok(()) => {}
                    Err(msg) => {
                        if counted {
                            errors += 1;
                        }
                        first_error.get_or_insert(msg);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (lat, errors, first_error)
        }));
    }
    let mut lat = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for t in tasks {
        if let Ok((l, e, f)) = t.await {
            lat.extend(l);
            errors += e;
            if first_error.is_none() {
                first_error = f;
            }
        }
    }
    let _ = sampler.await;
    let (server_before, client_before) = *cpu_before.lock().unwrap_or_else(|p| p.into_inner());
    let server_cpu_s = cpu_of(server_pids) - server_before;
    let client_cpu_s = cpu_seconds("self") - client_before;
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1]
        }
    };
    Point {
        system,
        clients,
        ok: lat.len() as u64,
        errors,
        first_error,
        seconds: measure.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: lat.last().copied().unwrap_or(0),
        server_cpu_s,
        client_cpu_s,
    }
}

/// Median latency of 4 KiB write + fdatasync in `dir`, for the machine facts.
fn fsync_probe(dir: &Path) -> anyhow::Result<(f64, f64)> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = vec![0x5au8; 4096];
    let mut t = Vec::new();
    for _ in 0..100 {
        let s = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        t.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    std::fs::remove_file(&path)?;
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], t[t.len() * 99 / 100]))
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let tmp;
    let base = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::tempdir_in(d)?
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp
        }
    };
    let site = Site {
        dir: base.path().to_path_buf(),
        ca: certs::init_site_ca(
            &base.path().join("ca"),
            &certs::CaInit::new("bench hospital", "1"),
        )?,
    };
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let etcd_version = Command::new(&args.etcd)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let (p50, p99) = fsync_probe(base.path())?;
    eprintln!("state under {}", base.path().display());
    eprintln!("4 KiB write+fdatasync there: p50 {p50:.2} ms, p99 {p99:.2} ms");
    eprintln!("{etcd_version}");
    eprintln!(
        "event body / etcd value: {} bytes (1 client) to {} bytes (256 clients)",
        event("bench-c1-w0000-00000000", 0).len(),
        event("bench-c256-w0255-00000000", 0).len()
    );

    let want = |s: System| match args.only.as_deref() {
        None => true,
        Some("ours" | "medledger") => s == System::Ours,
        Some(_) => s == System::Etcd,
    };
    let ours_client = site.client("bench-biomed", StaffRole::Biomed, max_clients + 8)?;
    let etcd_client = site.client("bench-etcd", StaffRole::Biomed, max_clients + 8)?;
    let admin = site.client("bench-admin", StaffRole::Admin, 2)?;
    let mut ours = None;
    if want(System::Ours) {
        // All the bench's clients share one staff certificate: the gateway's per-identity limit
        // (64 by default, against one client opening hundreds of connections) is raised to fit
        // them, as a site would for a known integration, unless --gateway-config sets it.
        let mut config = args.gateway_config.clone();
        if !config.contains("max_connections_per_identity") {
            config = format!(
                "max_connections_per_identity = {}\n{config}",
                (max_clients + 8).max(64)
            );
        }
        let (children, pids, leader) = start_ours(&site, &args.medledger, &config).await?;
        eprintln!("medledger leader at {leader}");
        ours = Some((
            children,
            pids,
            format!("https://{leader}/v1/events"),
            leader,
        ));
    }
    let mut etcd = None;
    if want(System::Etcd) {
        let (children, pids, leader) = start_etcd(&site, &args.etcd, &etcd_client).await?;
        eprintln!("etcd leader at {leader}");
        etcd = Some((children, pids, format!("{leader}/v3/kv/put"), leader));
    }

    let warmup = Duration::from_secs_f64(args.warmup);
    let measure = Duration::from_secs_f64(args.seconds);
    let mut points = Vec::new();
    for (k, &c) in args.clients.iter().enumerate() {
        // Alternate which system goes first at each client count.
        let order = if k % 2 == 0 {
            [System::Etcd, System::Ours]
        } else {
            [System::Ours, System::Etcd]
        };
        for sys in order {
            let (client, target) = match sys {
                System::Ours => (&ours_client, ours.as_ref()),
                System::Etcd => (&etcd_client, etcd.as_ref()),
            };
            let Some((_, pids, url, leader)) = target else {
                continue;
            };
            let before = match sys {
                System::Ours => status(&admin, leader).await,
                System::Etcd => None,
            };
            let p = run_point(sys, client, url, c, warmup, measure, &format!("c{c}"), pids).await;
            eprintln!(
                "{:>9} {:>4} clients: {:>8.0} events/s  p50 {:>7} ms  p99 {:>7} ms  max {:>7} ms  \
                 errors {}{}  server CPU {:.2} s, client CPU {:.2} s",
                sys.name(),
                c,
                p.ok as f64 / p.seconds,
                ms(p.p50_us),
                ms(p.p99_us),
                ms(p.max_us),
                p.errors,
                p.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {})", e.chars().take(200).collect::<String>()))
                    .unwrap_or_default(),
                p.server_cpu_s,
                p.client_cpu_s,
            );
            if let (Some(b), Some(a)) = (before, status(&admin, leader).await) {
                let d = |k: &str| {
                    a[k].as_u64()
                        .unwrap_or(0)
                        .saturating_sub(b[k].as_u64().unwrap_or(0))
                };
                let (entries, events) = (d("last_log_index"), d("ledger_size"));
                eprintln!(
                    "          raft entries {entries}, events {events} ({:.1} events/entry), \
                     term {} -> {}, state now {}",
                    events as f64 / entries.max(1) as f64,
                    b["term"],
                    a["term"],
                    a["state"]
                );
            }
            points.push(p);
        }
    }
    if let (Some((_, _, url, leader)), true) = (ours.as_ref(), args.receipts > 0) {
        receipt_delays(&ours_client, url, leader, args.receipts).await?;
    }

    println!(
        "\n| clients | system | events/s | p50 ms | p99 ms | max ms | errors | server CPU ms/event | client CPU ms/event |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for p in &points {
        let per = |cpu: f64| {
            if p.ok == 0 {
                "-".to_string()
            } else {
                format!("{:.3}", cpu * 1000.0 / p.ok as f64)
            }
        };
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            p.clients,
            p.system.name(),
            p.ok as f64 / p.seconds,
            ms(p.p50_us),
            ms(p.p99_us),
            ms(p.max_us),
            p.errors,
            per(p.server_cpu_s),
            per(p.client_cpu_s),
        );
    }
    let find = |s: System, c: usize| points.iter().find(|p| p.system == s && p.clients == c);
    println!();
    for &c in &args.clients {
        if let (Some(o), Some(e)) = (find(System::Ours, c), find(System::Etcd, c)) {
            let ratio = if e.ok == 0 {
                f64::INFINITY
            } else {
                o.ok as f64 / e.ok as f64
            };
            println!(
                "{c} clients: throughput medledger/etcd = {ratio:.2}x; p99 medledger {} ms vs etcd {} ms",
                ms(o.p99_us),
                ms(e.p99_us)
            );
        }
    }
    drop(ours);
    drop(etcd);
    if args.keep {
        eprintln!("kept {}", base.keep().display());
    }
    Ok(())
}
