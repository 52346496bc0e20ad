//! A three-gateway site set up from `docs/operations.md` alone: the test reads the document's
//! `sh` blocks marked `<!-- site-setup: first -->`, `<!-- site-setup: new -->` and
//! `<!-- site-setup: root -->` and runs their commands in order, with only mechanical
//! substitutions for running three "machines" in one test:
//!
//! - each gateway is a machine with a root directory of its own: `/etc/medledger`,
//!   `/var/lib/medledger` and `/tmp` are mapped under it, commands run in its `root` (the home
//!   directory), and the package's installation is a copy of `systemd/gateway.toml` with its
//!   paths mapped, `listen`'s host and port made `127.0.0.1:<free port>`, and `warn_free_mb`
//!   set just above the write reserve (a test machine may have less than 2 GiB free);
//! - `gwN.hospital.example:8443` becomes `127.0.0.1:<gateway N's port>`, a bare
//!   `gwN.hospital.example` (a certificate's `--dns`) `localhost`, and `scp` a copy between the
//!   machines' directories (`root@gwN...:PATH`: PATH on machine N, relative to its home);
//! - `medledger init` and `medledger status` without `--config` get the mapped default
//!   `/etc/medledger/gateway.toml`;
//! - `runuser -u medledger --` is dropped (the test runs as one user);
//! - `systemctl start medledger-gateway` starts `medledger run --config FILE` in the background
//!   and waits until its listener accepts connections (the unit's READY);
//! - `editor FILE   # set [sec] key = value and [sec] key = value` writes those values;
//! - a command commented `# repeat until OK` or `# repeat until node N's lag is 0` runs again
//!   until it exits 0 (and shows that lag in its table), for at most a minute;
//! - the `new` blocks are written for gateway 2 (`gw2`, `--node-id 2`, `issuing-2.*`); gateway 3
//!   runs them with 3.
//!
//! Every documented command must exit 0, and every command the CLI prints as a next step (one
//! without placeholders such as `ROOT_DIR`) must be one of the document's commands for that
//! machine. Afterwards an event written through gateway 1 is read on all three, `cluster status`
//! shows three voters, and the certificates issued before a gateway first ran (its own, and a
//! device certificate from `cert issue --data-dir` while it was stopped) are in the replicated
//! ledger: `GET /v1/certificates/{serial}` answers on every gateway and `cert revoke` on another
//! gateway revokes it, so the issuing gateway's CRL lists it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use medledger_tests::cluster::eventually;
use medledger_tests::{bin, free_port, workspace_root, ChildGuard};
use serde_json::{json, Value};

/// One marked block of the document.
struct Block {
    role: String,
    lines: Vec<String>,
}

/// The `sh` blocks preceded by `<!-- site-setup: ROLE -->`, in document order, with
/// continuation lines joined.
fn setup_blocks(doc: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(role) = line
            .trim()
            .strip_prefix("<!-- site-setup:")
            .and_then(|r| r.strip_suffix("-->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next().map(str::trim),
            Some("```sh"),
            "a site-setup marker must stand right before a ```sh block"
        );
        let mut cmds = Vec::new();
        let mut cur = String::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            match l.trim_end().strip_suffix('\\') {
                Some(head) => cur.push_str(head),
                None => {
                    cur.push_str(l);
                    if !cur.trim().is_empty() && !cur.trim_start().starts_with('#') {
                        cmds.push(std::mem::take(&mut cur));
                    }
                    cur.clear();
                }
            }
        }
        blocks.push(Block {
            role: role.trim().to_owned(),
            lines: cmds,
        });
    }
    blocks
}

/// A command line split into its words and its trailing `# comment`.
fn split_comment(line: &str) -> (String, String) {
    let mut quote = None;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => {
                return (line[..i].trim().to_owned(), line[i + 1..].trim().to_owned())
            }
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    (line.trim().to_owned(), String::new())
}

/// The system paths each machine has under its own root directory.
const SYSTEM_PATHS: [&str; 3] = ["/etc/medledger", "/var/lib/medledger", "/tmp/"];

/// One gateway's machine.
struct Machine {
    n: u64,
    root: PathBuf,
    port: u16,
    child: Option<ChildGuard>,
}

impl Machine {
    fn new(base: &Path, n: u64) -> Self {
        let root = base.join(format!("gw{n}"));
        for d in ["etc/medledger", "var/lib/medledger", "tmp", "root"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        let port = free_port();
        // The package's installation: the example configuration in /etc/medledger.
        let example = std::fs::read_to_string(workspace_root().join("systemd/gateway.toml"))
            .expect("systemd/gateway.toml");
        let listen = "listen = \"0.0.0.0:8443\"";
        assert!(example.contains(listen), "the example config's listener");
        let m = Machine {
            n,
            root,
            port,
            child: None,
        };
        let mut config = example.replace(listen, &format!("listen = \"127.0.0.1:{port}\""));
        // The one change besides paths and port: the disk warning just above the write reserve,
        // so that `medledger status` (which the document runs) does not say `degraded` on a test
        // machine with less than 2 GiB free.
        let warn = "# warn_free_mb = 2048";
        assert!(config.contains(warn), "the example config's disk warning");
        config = config.replace(
            warn,
            &format!(
                "warn_free_mb = {}",
                medledger_tests::cluster::TEST_WARN_FREE_MB
            ),
        );
        for p in SYSTEM_PATHS {
            config = config.replace(&format!("\"{p}"), &format!("\"{}{p}", m.root.display()));
        }
        std::fs::write(m.config(), config).expect("write config");
        m
    }

    fn config(&self) -> PathBuf {
        self.root.join("etc/medledger/gateway.toml")
    }

    fn home(&self) -> PathBuf {
        self.root.join("root")
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("var/lib/medledger")
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The machine's path for a system path (`/etc/medledger...`, `/var/lib/medledger...`,
    /// `/tmp/...`); other words unchanged.
    fn map_paths(&self, w: &str) -> String {
        if SYSTEM_PATHS.iter().any(|p| w.starts_with(p)) {
            format!("{}{w}", self.root.display())
        } else {
            w.to_owned()
        }
    }

    /// A file name on this machine: absolute ones under its root, others in its home.
    fn file(&self, p: &str) -> PathBuf {
        match p.strip_prefix('/') {
            Some(rel) => self.root.join(rel),
            None => self.home().join(p),
        }
    }
}

/// The site: the machines and the ports their names map to.
struct Site {
    machines: Vec<Machine>,
}

impl Site {
    fn by_host(&self, host: &str) -> &Machine {
        let n: u64 = host
            .strip_prefix("gw")
            .and_then(|h| h.strip_suffix(".hospital.example"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unknown host {host} in the document"));
        &self.machines[(n - 1) as usize]
    }

    /// Maps one word of a command run on `m`: system paths, host names.
    fn map_word(&self, m: &Machine, w: &str) -> String {
        for other in &self.machines {
            let host = format!("gw{}.hospital.example", other.n);
            if w == format!("{host}:8443") {
                return other.addr();
            }
            if w == host {
                return "localhost".into();
            }
        }
        m.map_paths(w)
    }
}

/// The document's commands with this gateway's id and name in place of gateway 2's.
fn for_gateway(line: &str, n: u64) -> String {
    line.replace("gw2.", &format!("gw{n}."))
        .replace("issuing-2.", &format!("issuing-{n}."))
        .replace("--node-id 2", &format!("--node-id {n}"))
        .replace("--node 2", &format!("--node {n}"))
        .replace("id = 2", &format!("id = {n}"))
        .replace("node 2's", &format!("node {n}'s"))
}

/// What a documented command becomes on `m`: its words after the substitutions.
fn substitute(site: &Site, m: &Machine, cmd: &str) -> Vec<String> {
    let mut words = shlex::split(cmd).unwrap_or_else(|| panic!("cannot split {cmd:?}"));
    if words.starts_with(&["runuser".into(), "-u".into()]) {
        let sep = words.iter().position(|w| w == "--").expect("runuser --");
        words.drain(..=sep);
    }
    if words == ["systemctl", "start", "medledger-gateway"] {
        return vec![
            "medledger".into(),
            "run".into(),
            "--config".into(),
            m.config().display().to_string(),
        ];
    }
    if words.first().map(String::as_str) == Some("scp") {
        return words;
    }
    let mut words: Vec<String> = words.iter().map(|w| site.map_word(m, w)).collect();
    let defaults_config = matches!(words.get(1).map(String::as_str), Some("init" | "status"));
    if words[0] == "medledger" && defaults_config && !words.iter().any(|w| w == "--config") {
        words.push("--config".into());
        words.push(m.config().display().to_string());
    }
    words
}

/// The commands a CLI output tells the user to run next (`...: medledger ...` or a line that is
/// a command), without the ones holding placeholders.
fn printed_commands(out: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in out.lines() {
        let t = line.trim();
        let start = ["medledger ", "systemctl "]
            .iter()
            .filter_map(|p| {
                if t.starts_with(p) {
                    Some(0)
                } else {
                    t.find(&format!(": {p}")).map(|i| i + 2)
                }
            })
            .min();
        let Some(start) = start else { continue };
        let cmd = t[start..].split("   (").next().unwrap_or_default();
        let Some(words) = shlex::split(cmd) else {
            continue;
        };
        let placeholder = |w: &String| {
            w.len() >= 2
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c == '/' || c == '.')
                || w.contains("ROOT_DIR")
                || w.contains("HOST:PORT")
        };
        if !words.iter().any(placeholder) {
            found.push(words);
        }
    }
    found
}

fn run_cli(m: &Machine, words: &[String]) -> Output {
    let mut cmd = Command::new(bin("medledger"));
    cmd.args(&words[1..]).current_dir(m.home());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {words:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes `[section] key = value` settings (as an editor would) into a TOML file.
fn edit(path: &Path, settings: &str, map: impl Fn(&str) -> String) {
    let mut toml = std::fs::read_to_string(path).expect("read config");
    for setting in settings.split(" and ") {
        let setting = setting.trim();
        let (section, rest) = setting
            .strip_prefix('[')
            .and_then(|s| s.split_once(']'))
            .unwrap_or_else(|| panic!("editor step {setting:?}: expected [section] key = value"));
        let (key, value) = rest
            .split_once('=')
            .unwrap_or_else(|| panic!("editor step {setting:?}: expected key = value"));
        let (key, value) = (key.trim(), value.trim());
        let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(v) => format!("\"{}\"", map(v)),
            None => value.to_owned(),
        };
        let header = format!("[{section}]\n");
        let at = toml
            .find(&header)
            .unwrap_or_else(|| panic!("no [{section}] in {}", path.display()))
            + header.len();
        let end = toml[at..].find("\n[").map_or(toml.len(), |i| at + i + 1);
        let line = format!("{key} = {value}\n");
        let existing = toml[at..end]
            .match_indices('\n')
            .map(|(i, _)| at + i + 1)
            .chain([at])
            .find(|&i| toml[i..].starts_with(&format!("{key} =")));
        match existing {
            Some(i) => {
                let eol = toml[i..].find('\n').map_or(toml.len(), |j| i + j + 1);
                toml.replace_range(i..eol, &line);
            }
            None => toml.insert_str(at, &line),
        }
    }
    std::fs::write(path, toml).expect("write config");
}

/// Runs one documented command on machine `mi`; returns its output's next-step commands.
fn run_step(site: &mut Site, mi: usize, line: &str) -> Vec<Vec<String>> {
    let (cmd, comment) = split_comment(line);
    eprintln!("gw{}$ {cmd}", mi + 1);
    let raw = shlex::split(&cmd).unwrap_or_else(|| panic!("cannot split {cmd:?}"));
    if raw[0] == "editor" {
        let settings = comment
            .strip_prefix("set ")
            .unwrap_or_else(|| panic!("an editor step says what to set: {line}"));
        let path = site.machines[mi].file(&raw[1]);
        let site_ref = &*site;
        edit(&path, settings, |v| {
            site_ref.map_word(&site_ref.machines[mi], v)
        });
        return Vec::new();
    }
    if raw[0] == "scp" {
        let (dest, srcs) = raw[1..].split_last().expect("scp SRC.. DEST");
        let (host, path) = dest
            .split_once('@')
            .and_then(|(_, d)| d.split_once(':'))
            .unwrap_or_else(|| panic!("scp destination {dest}: expected user@host:path"));
        let to = site.by_host(host);
        let target = to.file(path);
        for src in srcs {
            let from = site.machines[mi].file(src);
            let dst = if path.ends_with('/') || path.is_empty() {
                target.join(from.file_name().expect("file name"))
            } else {
                target.clone()
            };
            std::fs::copy(&from, &dst)
                .unwrap_or_else(|e| panic!("scp {} -> {}: {e}", from.display(), dst.display()));
        }
        return Vec::new();
    }
    let words = substitute(site, &site.machines[mi], &cmd);
    let m = &mut site.machines[mi];
    if words[1] == "run" {
        let log = std::fs::File::create(m.root.join("gateway.log")).expect("log");
        let child = Command::new(bin("medledger"))
            .args(&words[1..])
            .env("RUST_LOG", "warn,medledger=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("medledger run");
        m.child = Some(ChildGuard(child));
        let addr = m.addr();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            if let Some(Some(status)) = m.child.as_mut().map(|c| c.0.try_wait().ok().flatten()) {
                panic!(
                    "gateway {} exited ({status}): {}",
                    m.n,
                    std::fs::read_to_string(m.root.join("gateway.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gateway {} does not listen on {addr}",
                m.n
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        return Vec::new();
    }
    let repeat = comment.contains("repeat until");
    let lag_of = comment
        .split("node ")
        .nth(1)
        .and_then(|r| r.split_once("'s lag is 0"))
        .map(|(n, _)| n.to_owned());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run_cli(m, &words);
        let stdout = text(&out.stdout);
        let shows_lag = |n: &str| {
            stdout.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&n) && w.last() == Some(&"0")
            })
        };
        let done = out.status.success() && lag_of.as_deref().is_none_or(shows_lag);
        if done {
            eprint!("{stdout}");
            return printed_commands(&stdout);
        }
        if !repeat || Instant::now() > deadline {
            panic!(
                "documented command failed on gw{}: {cmd}\n({words:?})\nexit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
                m.n,
                out.status.code(),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs blocks written for gateway 2 on machine `mi` for gateway `n`, checking the next steps
/// the CLI printed.
fn run_blocks(
    site: &mut Site,
    mi: usize,
    n: u64,
    blocks: &[&Block],
    all_of_machine: &[Vec<String>],
) {
    for b in blocks {
        for line in &b.lines {
            let line = for_gateway(line, n);
            for printed in run_step(site, mi, &line) {
                // Printed system paths (`/tmp/...`) are this machine's, as in the document.
                let printed: Vec<String> = printed
                    .iter()
                    .map(|w| site.map_word(&site.machines[mi], w))
                    .collect();
                assert!(
                    all_of_machine.contains(&printed),
                    "gw{} printed the next step {:?}, which docs/operations.md does not say \
                     (its commands there: {all_of_machine:?})",
                    mi + 1,
                    printed.join(" ")
                );
            }
        }
    }
}

fn https(site: &Site, cert: &Path, key: &Path) -> reqwest::Client {
    let root = certs::pem::load_certs(&site.machines[0].data_dir().join("pki/root.crt"))
        .expect("root.crt");
    let key = certs::CertifiedKey::from_files(cert, key).expect("staff certificate");
    let tls = certs::client_config(&root, &key, &certs::RevocationPolicy::default(), &[])
        .expect("client config");
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

async fn get_json(http: &reqwest::Client, url: String) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// The serial of the first certificate of a PEM file (lowercase hex, as the ledger has it).
fn serial_of(path: &Path) -> String {
    let chain = certs::pem::load_certs(path).expect("certificate");
    certs::parse_identity(&chain[0]).expect("identity").serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_from_the_operations_document() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let doc = std::fs::read_to_string(workspace_root().join("docs/operations.md"))
        .expect("docs/operations.md");
    let blocks = setup_blocks(&doc);
    let of = |role: &str| -> Vec<&Block> { blocks.iter().filter(|b| b.role == role).collect() };
    let (first, new, root) = (of("first"), of("new"), of("root"));
    assert!(
        !first.is_empty() && new.len() == 2 && root.len() == 1,
        "docs/operations.md: expected the site-setup blocks first, new, root, new; found {:?}",
        blocks.iter().map(|b| &b.role).collect::<Vec<_>>()
    );
    // Not under /tmp: the machines' own /tmp is mapped, and a path printed by the CLI must not
    // look like one of them.
    let base = tempfile::Builder::new()
        .prefix("opsdoc-")
        .tempdir_in(workspace_root().join("target"))
        .expect("tempdir");
    let mut site = Site {
        machines: (1..=3).map(|n| Machine::new(base.path(), n)).collect(),
    };
    let started = Instant::now();
    // What each machine runs, after substitution: the next steps its CLI prints must be among
    // them.
    let commands_of = |site: &Site, mi: usize, n: u64, bs: &[&Block]| -> Vec<Vec<String>> {
        bs.iter()
            .flat_map(|b| b.lines.iter())
            .map(|l| for_gateway(l, n))
            .filter(|l| !l.trim_start().starts_with("editor") && !l.starts_with("scp"))
            .map(|l| substitute(site, &site.machines[mi], &split_comment(&l).0))
            .collect()
    };

    let gw1_commands = commands_of(&site, 0, 1, &first[..]);
    run_blocks(&mut site, 0, 1, &first, &gw1_commands);
    let mut offline_serial = None;
    for mi in [1usize, 2] {
        let n = mi as u64 + 1;
        let mine = commands_of(&site, mi, n, &new[..]);
        run_blocks(&mut site, mi, n, &new[..1], &mine);
        let root_commands = commands_of(&site, 0, n, &root[..]);
        run_blocks(&mut site, 0, n, &root, &root_commands);
        // The first command of the second block installs the issuing CA; on gateway 3 a device
        // certificate is issued while it is stopped, before the rest of the block starts it.
        let (install, rest) = new[1].lines.split_first().expect("install step");
        let one = Block {
            role: "new".into(),
            lines: vec![install.clone()],
        };
        run_blocks(&mut site, mi, n, &[&one], &mine);
        if mi == 2 {
            let m = &site.machines[mi];
            let out = run_cli(
                m,
                &[
                    "medledger",
                    "cert",
                    "issue",
                    "--data-dir",
                    m.data_dir().display().to_string().as_str(),
                    "--profile",
                    "device",
                    "--id",
                    "pump-offline",
                    "--out",
                    "pump-offline",
                ]
                .map(String::from),
            );
            assert!(out.status.success(), "{}", text(&out.stderr));
            offline_serial = Some(serial_of(&m.home().join("pump-offline.crt")));
        }
        let rest = Block {
            role: "new".into(),
            lines: rest.to_vec(),
        };
        run_blocks(&mut site, mi, n, &[&rest], &mine);
    }
    eprintln!(
        "site set up from docs/operations.md in {:.1?}",
        started.elapsed()
    );

    // Three voters, as `cluster status` shows them.
    let c3 = site.machines[2].config().display().to_string();
    let out = run_cli(
        &site.machines[2],
        &["medledger", "cluster", "status", "--config", c3.as_str()].map(String::from),
    );
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    let voters: Vec<&str> = table
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("voter"))
        .collect();
    assert_eq!(voters.len(), 3, "cluster status:\n{table}");

    // An event written through gateway 1 with the staff certificate the document issued is on
    // all three.
    let home1 = site.machines[0].home();
    let staff = https(&site, &home1.join("jdoe.crt"), &home1.join("jdoe.key"));
    let event = json!({
        "event_id": "opsdoc-pm-1",
        "kind": "preventive-maintenance",
        "device_id": "pump-opsdoc",
        "occurred_at": "2026-01-05T10:00:00Z",
        "components": [{"name": "result", "class": "maintenance", "value": "pass"}],
    });
    let r = staff
        .post(format!("https://{}/v1/events", site.machines[0].addr()))
        .json(&event)
        .send()
        .await
        .expect("post event");
    let status = r.status();
    assert!(
        status.is_success(),
        "POST /v1/events: {status}: {}",
        r.text().await.unwrap_or_default()
    );
    for m in &site.machines {
        let url = format!("https://{}/v1/devices/pump-opsdoc/history", m.addr());
        eventually(
            &format!("the event on gateway {}", m.n),
            Duration::from_secs(20),
            || {
                let (staff, url) = (staff.clone(), url.clone());
                async move {
                    let h = get_json(&staff, url).await?;
                    h["entries"]
                        .as_array()?
                        .iter()
                        .any(|e| e["kind"] == "preventive-maintenance")
                        .then_some(())
                }
            },
        )
        .await;
    }

    // Certificates issued before their gateway first ran are in the replicated ledger: each
    // gateway's own, found on every gateway.
    for owner in &site.machines {
        let serial = serial_of(&owner.data_dir().join("pki/gateway.crt"));
        for m in &site.machines {
            let url = format!("https://{}/v1/certificates/{serial}", m.addr());
            let c = eventually(
                &format!(
                    "gateway {}'s certificate {serial} on gateway {}",
                    owner.n, m.n
                ),
                Duration::from_secs(30),
                || get_json(&staff, url.clone()),
            )
            .await;
            assert_eq!(
                c["issued"]["subject"],
                format!("gateway:{}", owner.n),
                "{c}"
            );
        }
    }
    // The device certificate issued on gateway 3 while it was stopped: revoked on gateway 1,
    // it is listed by gateway 3's CRL.
    let serial = offline_serial.expect("issued while stopped");
    let url = format!(
        "https://{}/v1/certificates/{serial}",
        site.machines[0].addr()
    );
    let c = eventually(
        "the certificate issued while gateway 3 was stopped, on gateway 1",
        Duration::from_secs(30),
        || get_json(&staff, url.clone()),
    )
    .await;
    assert_eq!(c["issued"]["subject"], "pump-offline", "{c}");
    let m1 = &site.machines[0];
    let out = run_cli(
        m1,
        &[
            "medledger",
            "cert",
            "revoke",
            "--config",
            m1.config().display().to_string().as_str(),
            serial.as_str(),
            "--reason",
            "key-compromise",
        ]
        .map(String::from),
    );
    assert!(
        out.status.success(),
        "cert revoke on gateway 1 of a certificate gateway 3 issued: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let crl3 = site.machines[2].data_dir().join("pki/crl.pem");
    eventually(
        "gateway 3's CRL to list the revoked serial",
        Duration::from_secs(30),
        || {
            let crl3 = crl3.clone();
            let serial = serial.clone();
            async move {
                let pem = std::fs::read(&crl3).ok()?;
                let (_, p) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
                let (_, crl) = x509_parser::parse_x509_crl(&p.contents).ok()?;
                let listed = crl.iter_revoked_certificates().any(|r| {
                    let raw = r.raw_serial();
                    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
                    hex::encode(&raw[start..]) == serial
                });
                listed.then_some(())
            }
        },
    )
    .await;
    eprintln!(
        "three gateways from docs/operations.md: set up, event on all three, certificates \
         replicated and revoked across gateways in {:.1?}",
        started.elapsed()
    );
}
