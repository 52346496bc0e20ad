//! systemd integration: what a real `medledger run` tells systemd (sd_notify over a real unix
//! datagram socket, as systemd passes it in `NOTIFY_SOCKET`), how it stops on SIGTERM, and the
//! Debian package (`systemd/build-deb.sh`) checked with dpkg-deb, systemd-sysusers,
//! systemd-tmpfiles and systemd-analyze on the unpacked layout.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certs::StaffRole;
use medledger_tests::cluster::{eventually, staff_tls, status, Gateway, Site};
use medledger_tests::{bin, workspace_root, ChildGuard};
use serde_json::{json, Value};

/// The messages a service sends to `NOTIFY_SOCKET`, as systemd receives them.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    /// Every message received so far, in order.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        NotifySocket {
            sock,
            path,
            seen: Vec::new(),
        }
    }

    /// Receives until a message satisfies `pred` (returns it) or `timeout` passes (panics with
    /// `what` and everything received).
    fn wait(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push(msg.clone());
                    if pred(&msg) {
                        return msg;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; received: {:?}",
                self.seen
            );
        }
    }
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn status_of(msg: &str) -> Option<&str> {
    msg.lines().find_map(|l| l.strip_prefix("STATUS="))
}

/// `medledger run` as systemd starts it under `Type=notify` and `WatchdogSec=`: `NOTIFY_SOCKET`,
/// `WATCHDOG_USEC` and `WATCHDOG_PID` (its own pid: the shell execs the gateway).
fn spawn_notified(g: &Gateway, notify: &Path, watchdog: Duration) -> ChildGuard {
    let log = std::fs::File::create(g.dir.join("gateway.log")).expect("log");
    let child = Command::new("sh")
        .args(["-c", r#"WATCHDOG_PID=$$ exec "$0" run --config "$1""#])
        .arg(bin("medledger"))
        .arg(&g.config)
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .env("RUST_LOG", "warn,medledger=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn medledger run");
    ChildGuard(child)
}

fn drain_event(i: u64) -> Value {
    json!({
        "event_id": format!("drain-{i}"),
        "kind": "calibration",
        "device_id": "pump-drain",
        "occurred_at": "2026-01-05T10:00:00Z",
        "components": [{"name": "result", "class": "maintenance", "value": "pass"}],
    })
}

/// What a write got: acknowledged (event id, seq, whether the answer came after SIGTERM was
/// sent), refused with an HTTP status, or no answer (connection refused or closed before the
/// request was read).
#[derive(Default)]
struct Outcomes {
    acked: Vec<(String, u64, bool)>,
    http_errors: Vec<(String, u16, String)>,
    transport_errors: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_ready_watchdog_status_then_drain_and_stopping_on_sigterm() {
    let site = Site::new();
    let mut g = Gateway::new(&site, 1, "");
    let mut notify = NotifySocket::bind(site.dir.path());
    let watchdog = Duration::from_millis(600);
    let mut child = spawn_notified(&g, &notify.path, watchdog);

    // READY=1 comes once the listener is bound: a connection succeeds at once.
    let ready = notify.wait("READY=1", Duration::from_secs(60), |m| {
        has_line(m, "READY=1")
    });
    std::net::TcpStream::connect(g.addr()).expect("listener bound when READY=1 arrives");
    let st = status_of(&ready).expect("READY=1 comes with a STATUS= line");
    assert!(st.contains("not in a cluster yet"), "status at start: {st}");

    // Watchdog pings at about half of WATCHDOG_USEC, each with a fresh STATUS= line.
    let first = Instant::now();
    for _ in 0..3 {
        let m = notify.wait("WATCHDOG=1", Duration::from_secs(10), |m| {
            has_line(m, "WATCHDOG=1")
        });
        assert!(
            status_of(&m).is_some(),
            "watchdog ping without status: {m:?}"
        );
    }
    assert!(
        first.elapsed() < watchdog * 4,
        "3 watchdog pings took {:?} with WATCHDOG_USEC = {watchdog:?}",
        first.elapsed()
    );

    // A one-node cluster: the status line follows Raft.
    let out = Command::new(bin("medledger"))
        .args(["cluster", "init", "--config"])
        .arg(&g.config)
        .arg("--voter")
        .arg(format!("1={}", g.addr()))
        .output()
        .expect("cluster init");
    assert!(
        out.status.success(),
        "cluster init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = notify.wait(
        "STATUS= naming this node the leader",
        Duration::from_secs(30),
        |m| {
            has_line(m, "WATCHDOG=1")
                && status_of(m).is_some_and(|s| s.starts_with("node 1 leader, term "))
        },
    );
    let st = status_of(&m).unwrap_or_default();
    assert!(st.contains(" entries"), "status: {st}");

    // Writers with a new connection per request (no idle keep-alive connection to race the
    // shutdown), SIGTERM while they write.
    let tls = staff_tls(&site.ca, "it-biomed", StaffRole::Biomed).expect("staff tls");
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..6 {
        let (client, outcomes, killed, next, addr) = (
            client.clone(),
            outcomes.clone(),
            killed.clone(),
            next.clone(),
            g.addr(),
        );
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let r = client
                    .post(format!("https://{addr}/v1/events"))
                    .json(&drain_event(i))
                    .send()
                    .await;
                let after_kill = killed.load(std::sync::atomic::Ordering::SeqCst);
                match r {
                    Ok(r) if r.status().is_success() => {
                        let v: Value = r.json().await.expect("json");
                        let seq = v["seq"].as_u64().expect("seq");
                        let o = &mut outcomes.lock().expect("lock");
                        o.acked.push((format!("drain-{i}"), seq, after_kill));
                    }
                    Ok(r) => {
                        let code = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        let o = &mut outcomes.lock().expect("lock");
                        o.http_errors.push((format!("drain-{i}"), code, body));
                    }
                    // The listener is gone: the gateway stopped.
                    Err(_) if after_kill => {
                        outcomes.lock().expect("lock").transport_errors += 1;
                        return;
                    }
                    Err(e) => panic!("write drain-{i} before SIGTERM: {e}"),
                }
            }
        }));
    }
    eventually("20 writes acknowledged", Duration::from_secs(30), || {
        let n = outcomes.lock().expect("lock").acked.len();
        async move { (n >= 20).then_some(()) }
    })
    .await;
    let pid = child.0.id();
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    let term = Instant::now();
    // The shell's own kill: no procps needed.
    let kill = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .expect("kill");
    assert!(kill.success(), "kill -TERM {pid}");

    let stopping = notify.wait("STOPPING=1", Duration::from_secs(10), |m| {
        has_line(m, "STOPPING=1")
    });
    assert!(status_of(&stopping).is_some(), "{stopping:?}");
    let code = medledger_tests::wait_for(
        "the gateway to exit after SIGTERM",
        Duration::from_secs(30),
        || child.0.try_wait().expect("try_wait"),
    );
    let stop_time = term.elapsed();
    assert_eq!(code.code(), Some(0), "exit status after SIGTERM: {code}");
    // Well inside the unit's TimeoutStopSec=30s.
    assert!(
        stop_time < Duration::from_secs(20),
        "stopped after {stop_time:?}"
    );
    for w in writers {
        w.await.expect("writer");
    }

    let o = std::mem::take(&mut *outcomes.lock().expect("lock"));
    assert!(
        o.http_errors.is_empty(),
        "writes in flight at SIGTERM were refused instead of drained: {:?}",
        o.http_errors
    );
    let after = o.acked.iter().filter(|a| a.2).count();
    eprintln!(
        "drain: {} writes acknowledged ({after} answered after SIGTERM was sent), {} refused connections, stopped in {stop_time:?}",
        o.acked.len(),
        o.transport_errors
    );
    assert!(
        after >= 1,
        "no write was in flight when SIGTERM arrived: the drain was not exercised"
    );

    // Every acknowledged write is in the ledger after a restart.
    let acked: HashMap<String, u64> = o.acked.iter().map(|a| (a.0.clone(), a.1)).collect();
    g.start();
    let reader = site.staff_client("it-reader", StaffRole::Biomed);
    let addr = g.addr();
    eventually("the restarted gateway", Duration::from_secs(60), || {
        status(&reader, &addr)
    })
    .await;
    let history: Value = eventually("the device history", Duration::from_secs(30), || {
        let reader = reader.clone();
        let url = format!("https://{addr}/v1/devices/pump-drain/history?limit=10000");
        async move {
            let r = reader.get(url).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json().await.ok()
        }
    })
    .await;
    let found: HashMap<String, u64> = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap_or_default().to_string(),
                e["seq"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    for (id, seq) in &acked {
        assert_eq!(
            found.get(id),
            Some(seq),
            "acknowledged {id} (seq {seq}) missing after the restart"
        );
    }
}

/// The Debian package from the binary the tests use: its files, owners, modes and conffiles,
/// the SBOM beside it, and the unit on the unpacked layout: `systemd-analyze verify` and
/// `security --offline=true` within 1.5, the user and state directory the maintainer scripts
/// create (`systemd-sysusers` / `systemd-tmpfiles` with `--root`), and no start while
/// unconfigured.
#[test]
fn deb_package_contents_unit_verify_and_security() {
    let out = tempfile::tempdir().expect("tempdir");
    let build = Command::new("bash")
        .arg(workspace_root().join("systemd/build-deb.sh"))
        .arg("--bin")
        .arg(bin("medledger"))
        .arg("--out")
        .arg(out.path())
        // The debug binary is large and the test reads the package at once.
        .args(["--compress", "none"])
        .output()
        .expect("build-deb.sh");
    assert!(
        build.status.success(),
        "build-deb.sh: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&build.stdout).trim());
    let version = String::from_utf8_lossy(
        &Command::new(bin("medledger"))
            .arg("--version")
            .output()
            .expect("medledger --version")
            .stdout,
    )
    .split_whitespace()
    .nth(1)
    .expect("version")
    .to_string();
    let arch = run_ok("dpkg", &["--print-architecture"]).trim().to_string();
    assert_eq!(
        deb.file_name().and_then(|n| n.to_str()),
        Some(format!("medledger_{version}_{arch}.deb").as_str())
    );

    // Files, owners and modes.
    let listing = run_ok("dpkg-deb", &["-c", deb.to_str().expect("utf8")]);
    let mut files = HashMap::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols.len() >= 6, "dpkg-deb -c line: {line}");
        assert_eq!(cols[1], "root/root", "owner of {line}");
        let path = cols[5].trim_start_matches('.').to_string();
        if cols[0].starts_with('d') {
            assert_eq!(cols[0], "drwxr-xr-x", "mode of {line}");
        } else {
            files.insert(path, cols[0].to_string());
        }
    }
    for (path, mode) in [
        ("/usr/bin/medledger", "-rwxr-xr-x"),
        (
            "/lib/systemd/system/medledger-gateway.service",
            "-rw-r--r--",
        ),
        ("/usr/lib/sysusers.d/medledger.conf", "-rw-r--r--"),
        ("/usr/lib/tmpfiles.d/medledger.conf", "-rw-r--r--"),
        ("/etc/medledger/gateway.toml", "-rw-r--r--"),
        ("/usr/share/doc/medledger/copyright", "-rw-r--r--"),
        ("/usr/share/doc/medledger/operations.md", "-rw-r--r--"),
    ] {
        assert_eq!(
            files.get(path).map(String::as_str),
            Some(mode),
            "{path} in the package:\n{listing}"
        );
    }
    assert!(
        files.keys().all(|f| !f.starts_with("/var/")),
        "the package ships no state:\n{listing}"
    );

    // Control data: the example config is a conffile; dependencies; maintainer scripts.
    let deb_s = deb.to_str().expect("utf8");
    let package = run_ok("dpkg-deb", &["-f", deb_s, "Package"]);
    assert_eq!(package.trim(), "medledger");
    let ctl = tempfile::tempdir().expect("tempdir");
    run_ok(
        "dpkg-deb",
        &["-e", deb_s, ctl.path().to_str().expect("utf8")],
    );
    let read = |name: &str| std::fs::read_to_string(ctl.path().join(name)).expect(name);
    assert_eq!(read("conffiles").trim(), "/etc/medledger/gateway.toml");
    let depends = run_ok("dpkg-deb", &["-f", deb_s, "Depends"]);
    assert!(depends.contains("libc6 (>= "), "Depends: {depends}");
    let postinst = read("postinst");
    assert!(postinst.contains("systemd-sysusers"), "{postinst}");
    assert!(
        postinst.contains("deb-systemd-helper enable medledger-gateway.service"),
        "{postinst}"
    );
    // Never started by an install: the only start-like verb restarts a gateway that runs.
    for line in postinst
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        for verb in [
            " start ",
            " restart ",
            "enable --now",
            " reload-or-restart ",
        ] {
            assert!(!line.contains(verb), "postinst starts the gateway: {line}");
        }
    }
    let mode = |name: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(ctl.path().join(name))
            .expect(name)
            .permissions()
            .mode()
            & 0o777
    };
    for script in ["postinst", "prerm", "postrm"] {
        assert_eq!(mode(script), 0o755, "{script} mode");
        let sh = Command::new("sh")
            .arg("-n")
            .arg(ctl.path().join(script))
            .status()
            .expect("sh -n");
        assert!(sh.success(), "{script} is not valid sh");
    }
    let info = run_ok("dpkg-deb", &["-I", deb_s]);
    assert!(info.contains("Package: medledger"), "{info}");

    // The SBOM beside the package.
    let sbom_path = deb.with_file_name(format!("medledger_{version}_{arch}.cdx.json"));
    let sbom: Value =
        serde_json::from_slice(&std::fs::read(&sbom_path).expect("sbom beside the package"))
            .expect("sbom json");
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.5");
    assert_eq!(sbom["metadata"]["component"]["name"], "medledger");
    let components = sbom["components"].as_array().expect("components");
    let tokio = components
        .iter()
        .find(|c| c["name"] == "tokio")
        .expect("tokio in the sbom");
    assert!(tokio["purl"]
        .as_str()
        .is_some_and(|p| p.starts_with("pkg:cargo/tokio@")));
    assert_eq!(tokio["hashes"][0]["alg"], "SHA-256");
    let unlicensed: Vec<&Value> = components
        .iter()
        .filter(|c| !c["licenses"].is_array())
        .map(|c| &c["name"])
        .collect();
    assert!(
        unlicensed.is_empty(),
        "components without a licence: {unlicensed:?}"
    );

    // The unpacked layout, with this machine's own systemd units beside it (verify follows the
    // unit's dependencies: network-online.target, multi-user.target, sysinit.target).
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path().to_str().expect("utf8");
    run_ok("dpkg-deb", &["-x", deb_s, r]);
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir");
    run_ok(
        "cp",
        &[
            "-a",
            "/usr/lib/systemd/system/.",
            units.to_str().expect("utf8"),
        ],
    );
    let unpacked = root.path().join("usr/bin/medledger");
    let v = run_ok(unpacked.to_str().expect("utf8"), &["--version"]);
    assert!(v.starts_with("medledger "), "{v}");

    // What postinst does, into the unpacked root.
    run_ok(
        "systemd-sysusers",
        &[
            &format!("--root={r}"),
            &format!("{r}/usr/lib/sysusers.d/medledger.conf"),
        ],
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("medledger:"))
        .unwrap_or_else(|| panic!("no medledger user: {passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid > 0 && uid < 1000, "a system user: {user}");
    assert_eq!(fields[5], "/var/lib/medledger", "{user}");
    assert!(fields[6].ends_with("nologin"), "{user}");
    run_ok(
        "systemd-tmpfiles",
        &[
            &format!("--root={r}"),
            "--create",
            &format!("{r}/usr/lib/tmpfiles.d/medledger.conf"),
        ],
    );
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let state = std::fs::metadata(root.path().join("var/lib/medledger")).expect("state dir");
        assert_eq!(state.permissions().mode() & 0o7777, 0o700);
        assert_eq!(
            state.uid(),
            uid,
            "state directory owned by the gateway's user"
        );
    }

    // systemd-analyze verify: no complaint at all (unknown keys, missing binary, bad paths).
    let verify = Command::new("systemd-analyze")
        .args([
            "verify",
            &format!("--root={r}"),
            "medledger-gateway.service",
        ])
        .output()
        .expect("systemd-analyze verify");
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify: {} {}{}",
        verify.status,
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // systemd-analyze security: --threshold compares with the exposure level times 10, so 15
    // is the bound 1.5 (a unit above it makes the command fail).
    let security = Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=true",
            &format!("--root={r}"),
            "--threshold=15",
            "--no-pager",
            "medledger-gateway.service",
        ])
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&security.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for medledger-gateway.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security --offline=true: exposure level {level}");
    assert!(
        security.status.success() && level <= 1.5,
        "exposure level {level} over 1.5 ({}):\n{text}",
        security.status
    );

    // Not started while unconfigured: the unit's conditions, evaluated on the unpacked layout,
    // fail with the example config alone and hold once the gateway's certificate exists.
    let unit = std::fs::read_to_string(
        root.path()
            .join("lib/systemd/system/medledger-gateway.service"),
    )
    .expect("unit");
    let conditions: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ConditionPathExists="))
        .map(|p| format!("ConditionPathExists={r}{p}"))
        .collect();
    assert!(
        conditions
            .iter()
            .any(|c| c.ends_with("/etc/medledger/gateway.toml")),
        "{conditions:?}"
    );
    let evaluate = || {
        Command::new("systemd-analyze")
            .arg("condition")
            .args(&conditions)
            .output()
            .expect("systemd-analyze condition")
            .status
            .success()
    };
    assert!(
        !evaluate(),
        "an installed, unconfigured gateway would start: {conditions:?}"
    );
    std::fs::create_dir_all(root.path().join("var/lib/medledger/pki")).expect("mkdir");
    std::fs::write(root.path().join("var/lib/medledger/pki/gateway.crt"), "").expect("write");
    assert!(
        evaluate(),
        "a configured gateway would not start: {conditions:?}"
    );
}

/// Runs a command, asserts it succeeded and returns its stdout.
fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The system calls a group of `systemd-analyze syscall-filter` stands for, groups expanded.
fn syscall_group(group: &str, out: &mut std::collections::BTreeSet<String>) {
    let text = run_ok("systemd-analyze", &["syscall-filter", "--no-pager", group]);
    for line in text.lines().skip(1) {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if name.starts_with('@') {
            syscall_group(name, out);
        } else {
            out.insert(name.to_string());
        }
    }
}

/// The unit's `SystemCallFilter=` refuses nothing the gateway calls. The unit cannot run here
/// (no systemd as PID 1), so a real `medledger run` runs under strace through what a gateway
/// does (listener, cluster init, writes, reads, health, SIGTERM) and every system call it made
/// must be in the unit's allow list and not in its deny list: a refused call would fail with
/// EPERM only in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_syscall_filter_allows_every_call_the_gateway_makes() {
    // The filter, from the unit.
    let unit = std::fs::read_to_string(workspace_root().join("systemd/medledger-gateway.service"))
        .expect("unit");
    let (mut allow, mut deny) = (Default::default(), Default::default());
    for value in unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
    {
        let (set, names) = match value.strip_prefix('~') {
            Some(rest) => (&mut deny, rest),
            None => (&mut allow, value),
        };
        for name in names.split_whitespace() {
            if name.starts_with('@') {
                syscall_group(name, set);
            } else {
                set.insert(name.to_string());
            }
        }
    }
    assert!(
        allow.len() > 100 && !deny.is_empty(),
        "the unit's filter: {} allowed, {} denied",
        allow.len(),
        deny.len()
    );

    let site = Site::new();
    let health = medledger_tests::free_port();
    let g = Gateway::new(&site, 1, &format!("health_listen = \"127.0.0.1:{health}\""));
    let trace = g.dir.join("strace.txt");
    let log = std::fs::File::create(g.dir.join("gateway.log")).expect("log");
    let mut strace = ChildGuard(
        Command::new("strace")
            .args(["-f", "-qq", "-o"])
            .arg(&trace)
            .arg(bin("medledger"))
            .args(["run", "--config"])
            .arg(&g.config)
            .env("RUST_LOG", "warn,medledger=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("strace (apt install strace)"),
    );
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let addr = g.addr();
    if let Err(e) = medledger_tests::cluster::poll(
        "the traced gateway to listen",
        Duration::from_secs(90),
        || status(&admin, &addr),
    )
    .await
    {
        let log = std::fs::read_to_string(g.dir.join("gateway.log")).unwrap_or_default();
        panic!("{e}; its log:\n{log}");
    }
    let out = Command::new(bin("medledger"))
        .args(["cluster", "init", "--config"])
        .arg(&g.config)
        .arg("--voter")
        .arg(format!("1={addr}"))
        .output()
        .expect("cluster init");
    assert!(
        out.status.success(),
        "cluster init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let writer = site.staff_client("it-biomed", StaffRole::Biomed);
    for i in 0..10 {
        let url = format!("https://{addr}/v1/events");
        eventually("a write", Duration::from_secs(30), || {
            let (writer, url) = (writer.clone(), url.clone());
            async move {
                let r = writer.post(url).json(&drain_event(i)).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }
    let history = writer
        .get(format!("https://{addr}/v1/devices/pump-drain/history"))
        .send()
        .await
        .expect("history");
    assert!(
        history.status().is_success(),
        "history: {}",
        history.status()
    );
    // The plain-HTTP loopback health listener.
    let healthz = {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", health)).expect("health listener");
        c.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .expect("send");
        let mut r = String::new();
        c.read_to_string(&mut r).expect("read");
        r
    };
    assert!(
        healthz.starts_with("HTTP/1.0 200") || healthz.starts_with("HTTP/1.1 200"),
        "{healthz}"
    );

    // SIGTERM to the gateway itself (strace's child), which then drains and exits.
    let strace_pid = strace.0.id();
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
            .expect("strace's children");
    let pid: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the traced gateway's pid");
    let kill = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .expect("kill");
    assert!(kill.success());
    let code = medledger_tests::wait_for(
        "the traced gateway to exit",
        Duration::from_secs(60),
        || strace.0.try_wait().expect("try_wait"),
    );
    assert_eq!(code.code(), Some(0), "traced gateway exit: {code}");

    let text = std::fs::read_to_string(&trace).expect("strace output");
    let mut used = std::collections::BTreeSet::new();
    for line in text.lines() {
        // "1234  openat(AT_FDCWD, ..." or "1234  <... futex resumed>..."
        let rest = line.split_once(char::is_whitespace).map_or("", |(_, r)| r);
        let rest = rest.trim_start();
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && rest[name.len()..].starts_with('(') {
            used.insert(name);
        }
    }
    assert!(
        used.contains("fdatasync") && used.contains("accept4"),
        "the trace misses the gateway's own calls: {used:?}"
    );
    let refused: Vec<&String> = used
        .iter()
        .filter(|s| !allow.contains(*s) || deny.contains(*s))
        .collect();
    eprintln!(
        "{} distinct system calls, all allowed by the unit's filter",
        used.len()
    );
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter= would refuse {refused:?} (used: {used:?})"
    );
}
