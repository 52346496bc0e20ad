//! `medledger demo` as a newcomer runs it: the whole site (Mosquitto, three gateway processes,
//! simulated devices) comes up, an alarm reaches the ledger and is read through the HTTPS API
//! with the staff certificate the demo printed, and when the demo ends (its `--duration`,
//! SIGTERM, Ctrl-C, or even SIGKILL) no process of it is left.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use medledger_tests::mosquitto::require;
use medledger_tests::{bin, one_cluster_at_a_time, wait_for, ChildGuard};
use serde_json::Value;

/// How long building the site may take on a loaded machine.
const READY: Duration = Duration::from_secs(240);

/// A running `medledger demo` and what it printed.
struct Demo {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    out: Vec<String>,
    /// The site's directory (printed on the first line).
    root: PathBuf,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        require("mosquitto");
        let mut child = Command::new(bin("medledger"))
            .arg("demo")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start medledger demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut d = Demo {
            child: ChildGuard(child),
            lines,
            out: Vec::new(),
            root: PathBuf::new(),
        };
        let first = d.wait_line("the first line", Duration::from_secs(60), |l| {
            l.starts_with("MedLedger demo")
        });
        d.root = PathBuf::from(
            first
                .rsplit_once(" in ")
                .map(|(_, p)| p.trim())
                .expect("the site's directory on the first line"),
        );
        d
    }

    /// Reads lines until one satisfies `f`; panics with everything printed so far after
    /// `timeout` or when the demo ends first.
    fn wait_line(&mut self, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(l) => {
                    self.out.push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Err(e) => panic!(
                    "waiting for {what}: {e:?}; the demo printed:\n{}",
                    self.out.join("\n")
                ),
            }
        }
    }

    /// Waits for "The site is running." and returns gateway 1's API address.
    fn wait_ready(&mut self) -> String {
        self.wait_line("the site to run", READY, |l| l == "The site is running.");
        let gw1 = self.wait_line("gateway 1's address", Duration::from_secs(5), |l| {
            l.trim_start().starts_with("gateway 1: https://")
        });
        gw1.trim_start()
            .trim_start_matches("gateway 1: https://")
            .split_whitespace()
            .next()
            .expect("address")
            .to_owned()
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits for the demo to exit; returns its status and what it printed until then.
    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            while let Ok(l) = self.lines.try_recv() {
                self.out.push(l);
            }
            if let Some(s) = self.child.0.try_wait().expect("try_wait") {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.out.push(l);
                }
                return s;
            }
            if Instant::now() > until {
                panic!(
                    "the demo did not end within {timeout:?}; it printed:\n{}",
                    self.out.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }
}

/// One process: pid, parent pid, start time (clock ticks since boot: with the pid, it names the
/// process even if the pid is reused) and command line.
#[derive(Debug, Clone, PartialEq)]
struct Proc {
    pid: u32,
    ppid: u32,
    start: u64,
    cmdline: String,
}

fn processes() -> Vec<Proc> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // the command name (2nd field) is in parentheses and may hold spaces
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // after ')': state(0) ppid(1) ... starttime is field 22 of stat, index 19 here
        let (Some(ppid), Some(start)) = (
            f.get(1).and_then(|s| s.parse().ok()),
            f.get(19).and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        if f.first() == Some(&"Z") {
            // a zombie is gone but for its parent's wait; its parent is checked instead
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        v.push(Proc {
            pid,
            ppid,
            start,
            cmdline,
        });
    }
    v
}

/// Every live descendant of `root`.
fn descendants(root: u32) -> Vec<Proc> {
    let all = processes();
    let mut out: Vec<Proc> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in all.iter().filter(|c| c.ppid == p) {
            frontier.push(c.pid);
            out.push(c.clone());
        }
    }
    out
}

/// Processes that belong to the demo: one of `seen` (its children, by pid and start time) still
/// alive, or any process whose command line names the site's directory.
fn leftovers(seen: &[Proc], root: &Path) -> Vec<Proc> {
    let root = root.display().to_string();
    processes()
        .into_iter()
        .filter(|p| {
            seen.iter().any(|s| s.pid == p.pid && s.start == p.start) || p.cmdline.contains(&root)
        })
        .collect()
}

/// Polls until nothing of the demo is left; panics listing what is.
fn assert_nothing_left(seen: &[Proc], root: &Path, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let left = leftovers(seen, root);
        if left.is_empty() {
            return;
        }
        if Instant::now() > until {
            panic!("processes of the demo are still running: {left:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The demo's children while it runs: three gateways, and Mosquitto unless the broker is the
/// embedded one.
fn children_of(demo: &Demo, mosquitto: bool) -> Vec<Proc> {
    let kids = descendants(demo.pid());
    let names: Vec<&str> = kids.iter().map(|p| p.cmdline.as_str()).collect();
    let gateways = kids
        .iter()
        .filter(|p| p.cmdline.contains(" run --config "))
        .count();
    assert!(
        gateways == 3 && kids.iter().any(|p| p.cmdline.contains("mosquitto")) == mosquitto,
        "expected three gateways (and mosquitto: {mosquitto}) among the demo's children: {names:#?}"
    );
    kids
}

fn staff_client(root: &Path) -> reqwest::Client {
    let staff = root.join("staff").join("demo-biomed");
    let key =
        certs::CertifiedKey::from_files(&staff.with_extension("crt"), &staff.with_extension("key"))
            .expect("the staff certificate the demo printed");
    let roots = certs::pem::load_certs(&root.join("gateway1/pki/root.crt")).expect("site root");
    let tls = certs::client_config(&roots, &key, &Default::default(), &[]).expect("tls");
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Signs in on the web page of the demo's line `Web page: https://ADDR/  sign in as ID with
/// password PW` as a browser without a certificate would (the sign-in form, its CSRF cookie,
/// the session cookie) and returns the device list's HTML.
async fn web_device_list(root: &Path, line: &str) -> String {
    let rest = line.trim_start().trim_start_matches("Web page: https://");
    let (addr, rest) = rest.split_once('/').expect("address");
    let account = rest
        .split_once("sign in as ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .expect("account");
    let password = rest.rsplit_once("password ").expect("password").1.trim();
    let mut store = rustls::RootCertStore::empty();
    for c in certs::pem::load_certs(&root.join("gateway1/pki/root.crt")).expect("site root") {
        store.add(c).expect("root");
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let cookie_of = crate::web::cookie_set;
    let r = http
        .get(format!("https://{addr}/login"))
        .send()
        .await
        .expect("sign-in page");
    assert_eq!(r.status(), 200);
    let login = cookie_of(&r, "__Host-medledger-login").expect("the sign-in form's cookie");
    let csrf = login.split_once('=').expect("cookie").1.to_owned();
    let r = http
        .post(format!("https://{addr}/login"))
        .header("cookie", &login)
        .form(&[
            ("account", account),
            ("password", password),
            ("csrf", csrf.as_str()),
            ("next", "/devices"),
        ])
        .send()
        .await
        .expect("sign in");
    assert_eq!(
        r.status(),
        303,
        "sign-in as {account}: {:?}",
        r.text().await
    );
    let session = cookie_of(&r, "__Host-medledger-session").expect("a session cookie");
    let r = http
        .get(format!("https://{addr}/devices"))
        .header("cookie", &session)
        .send()
        .await
        .expect("device list");
    assert_eq!(r.status(), 200);
    r.text().await.expect("body")
}

/// The first alarm entry among the demo's devices, read through the API.
async fn an_alarm(client: &reqwest::Client, addr: &str) -> Option<Value> {
    for dev in ["%2801%2900884838035249%2821%29PMP1", "vent-ward-03"] {
        let r = client
            .get(format!("https://{addr}/v1/devices/{dev}/history"))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            continue;
        }
        let v: Value = r.json().await.ok()?;
        if let Some(e) = v["entries"]
            .as_array()?
            .iter()
            .find(|e| e["kind"] == "alarm" && e["fields"]["state"] == "raised")
        {
            return Some(e.clone());
        }
    }
    None
}

/// `medledger demo --duration 60 --data-dir DIR`: an alarm entry is read through the API within
/// 60 s of the site running, the demo ends by itself, keeps the site, and leaves no process.
#[tokio::test(flavor = "multi_thread")]
async fn demo_records_an_alarm_read_through_the_api_and_leaves_no_process() {
    let _turn = one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    let mut demo = Demo::start(&[
        "--duration",
        "60",
        "--data-dir",
        site.to_str().expect("utf8"),
    ]);
    assert_eq!(demo.root, site);
    let addr = demo.wait_ready();
    let seen = children_of(&demo, true);
    let client = staff_client(&site);
    let start = Instant::now();
    let alarm = medledger_tests::cluster::eventually(
        "an alarm entry through the API",
        Duration::from_secs(60),
        || an_alarm(&client, &addr),
    )
    .await;
    assert!(start.elapsed() <= Duration::from_secs(60));
    assert!(alarm["fields"]["rule"].is_string(), "{alarm}");
    // Each gateway has an issuing CA of its own and endorsed its ledger key with it, so the web
    // page's receipt badges find every key endorsed by the site.
    medledger_tests::cluster::endorsed_keys(&client, &addr, 3).await;
    // The web page the demo printed: sign in with the printed account, see the device list.
    let is_web = |l: &str| l.trim_start().starts_with("Web page: https://");
    let web = match demo.out.iter().find(|l| is_web(l)).cloned() {
        Some(l) => l,
        None => demo.wait_line("the web page's line", Duration::from_secs(10), is_web),
    };
    let list = web_device_list(&site, &web).await;
    assert!(
        list.contains("vent-ward-03") || list.contains("PMP1"),
        "the device list lacks the demo's devices: {list}"
    );
    let status = demo.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "{status}: {}", demo.out.join("\n"));
    assert!(
        demo.out
            .iter()
            .any(|l| l.contains("no process of it is left")),
        "{}",
        demo.out.join("\n")
    );
    assert!(
        demo.out.iter().any(|l| l.contains("alarms raised")),
        "a summary line: {}",
        demo.out.join("\n")
    );
    assert_nothing_left(&seen, &site, Duration::from_secs(1));
    assert!(
        site.join("gateway1/gateway.toml").exists(),
        "--data-dir keeps the site"
    );
}

/// SIGTERM and Ctrl-C (SIGINT) while the site runs stop it cleanly: exit 0, no process left,
/// and the temporary site directory removed; a SIGKILLed demo leaves no orphan either (its
/// children get SIGTERM from the kernel: PR_SET_PDEATHSIG). The SIGINT round runs with the
/// embedded broker (what a machine without Mosquitto gets), and an alarm reaches the ledger
/// through it first.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_sigint_and_sigkill_mid_run_leave_no_process() {
    let _turn = one_cluster_at_a_time().await;
    for (sig, args) in [
        ("TERM", &[][..]),
        ("INT", &["--broker", "embedded"][..]),
        ("KILL", &[][..]),
    ] {
        let embedded = !args.is_empty();
        let mut demo = Demo::start(args);
        let root = demo.root.clone();
        assert!(
            root.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("medledger-demo-")),
            "{root:?}"
        );
        let addr = demo.wait_ready();
        let seen = children_of(&demo, !embedded);
        if embedded {
            assert!(
                demo.out.iter().any(|l| l.contains("embedded")),
                "{}",
                demo.out.join("\n")
            );
            let client = staff_client(&root);
            medledger_tests::cluster::eventually(
                "an alarm entry through the embedded broker",
                Duration::from_secs(60),
                || an_alarm(&client, &addr),
            )
            .await;
        }
        demo.signal(sig);
        let status = demo.wait_exit(Duration::from_secs(90));
        if sig == "KILL" {
            // the gateways drain for up to 16 s after the kernel's SIGTERM
            assert_nothing_left(&seen, &root, Duration::from_secs(40));
            let _ = std::fs::remove_dir_all(&root);
            continue;
        }
        assert!(
            status.success(),
            "SIG{sig}: {status}: {}",
            demo.out.join("\n")
        );
        assert_nothing_left(&seen, &root, Duration::from_secs(1));
        wait_for(
            "the temporary site to be removed",
            Duration::from_secs(5),
            || (!root.exists()).then_some(()),
        );
    }
}
