//! The identity layer of the real gateway process: a mutual-TLS matrix against `medledger run`'s
//! own HTTPS listener (every refusal also found in the gateway's log, naming the peer), a
//! revocation recorded with `medledger cert revoke` while the gateway runs and enforced without a
//! restart, per-route profile checks (403), TLS 1.1 offered by `openssl s_client`, and device
//! enrollment end to end (`device add` token, `POST /enroll`, `openssl verify`, one-time token,
//! renewal, the issuance in the device's history).
//!
//! Every request is made over a raw TCP connection whose local address the test knows, so the
//! gateway's `tls client refused peer=<addr>` log line can be matched to the exact case.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use certs::{
    init_site_ca, CaInit, CertSpec, CertifiedKey, IssuingCa, Profile, StaffRole, Validity,
};
use medledger_tests::{bin, free_port};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::mtls::{standard_cases, Expect, Pki};
use medledger_tests::cluster::{eventually, start_cluster, Gateway, Site};

const IO_DEADLINE: Duration = Duration::from_secs(5);
const ALL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn days(n: u32) -> Validity {
    Validity::days(n).expect("validity")
}

/// A single-node cluster whose issuing CA lives in the node's own `pki` directory (the
/// `[tls] pki_dir` default), so that `device add --data-dir`, `cert revoke --config`, the
/// revocation watcher and enrollment all use the same CA as the test.
async fn single_node(extra: &str) -> (Site, Gateway) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = init_site_ca(
        &dir.path().join("node1").join("pki"),
        &CaInit::new("test hospital", "1"),
    )
    .expect("site ca");
    let site = Site { dir, ca };
    let mut nodes = start_cluster(&site, 1, extra).await;
    let gw = nodes.pop().expect("one node");
    (site, gw)
}

fn log_path(gw: &Gateway) -> PathBuf {
    gw.dir.join("gateway.log")
}

fn sock(gw: &Gateway) -> SocketAddr {
    gw.addr().parse().expect("socket address")
}

/// A rustls client trusting `root`, offering `versions`, presenting `client` if given.
fn client_config(
    root: &CertificateDer<'static>,
    client: Option<&CertifiedKey>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).expect("root");
    let b = ClientConfig::builder_with_provider(certs::tls::provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    Arc::new(match client {
        Some(ck) => b
            .with_client_auth_cert(ck.chain.clone(), ck.key.clone_key())
            .expect("client cert"),
        None => b.with_no_client_auth(),
    })
}

/// An HTTP answer over TLS.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    version: Option<ProtocolVersion>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.body))
    }
}

/// Whether `buf` holds a whole HTTP/1.1 response; returns (status, body) if so.
fn parse_response(buf: &[u8], eof: bool) -> Option<(u16, String)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = &buf[end + 4..];
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    match length {
        Some(n) if body.len() >= n => Some((status, String::from_utf8_lossy(&body[..n]).into())),
        Some(_) => None,
        None => eof.then(|| (status, String::from_utf8_lossy(body).into())),
    }
}

/// One HTTP/1.1 request over a fresh TLS connection. Returns the connection's local address (the
/// peer address the gateway logs) and the answer, or why there was none (refused handshake, alert
/// after the handshake, closed without answering).
async fn call(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (SocketAddr, Result<Reply, String>) {
    let tcp = tokio::time::timeout(IO_DEADLINE, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let local = tcp.local_addr().expect("local addr");
    let work = async move {
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let version = tls.get_ref().1.protocol_version();
        // Raft RPC between gateways is MessagePack; everything else is JSON.
        let (content_type, body) = match body {
            Some(v) if path.starts_with("/raft/") => (
                "application/msgpack",
                rmp_serde::to_vec_named(v).map_err(|e| e.to_string())?,
            ),
            Some(v) => ("application/json", v.to_string().into_bytes()),
            None => ("application/json", Vec::new()),
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
             content-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        tls.write_all(&body)
            .await
            .map_err(|e| format!("write: {e}"))?;
        tls.flush().await.map_err(|e| format!("flush: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) => {
                    return parse_response(&buf, true)
                        .map(|(status, body)| Reply {
                            status,
                            body,
                            version,
                        })
                        .ok_or_else(|| "closed by the server without an answer".to_string())
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some((status, body)) = parse_response(&buf, false) {
                        return Ok(Reply {
                            status,
                            body,
                            version,
                        });
                    }
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    };
    let r = tokio::time::timeout(IO_DEADLINE, work)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()));
    (local, r)
}

async fn whoami(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    client: Option<&CertifiedKey>,
) -> (SocketAddr, Result<Reply, String>) {
    call(
        addr,
        client_config(root, client, ALL_VERSIONS),
        "GET",
        "/v1/whoami",
        None,
    )
    .await
}

/// The gateway log without ANSI colour sequences.
fn read_log(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-letter
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits for the gateway's refusal line naming `peer` and checks that it gives `reason`.
async fn refusal_logged(log: &Path, peer: SocketAddr, reason: &str, case: &str) -> String {
    let needle = format!("peer={peer}");
    let line = eventually(
        &format!("case {case}: a refusal naming {peer} in {}", log.display()),
        IO_DEADLINE,
        || {
            let line = read_log(log)
                .lines()
                .find(|l| l.contains("tls client refused") && l.contains(&needle))
                .map(str::to_string);
            async move { line }
        },
    )
    .await;
    assert!(line.contains("WARN"), "case {case}: not a warning: {line}");
    assert!(
        line.contains(reason),
        "case {case}: the logged reason does not name {reason:?}: {line}"
    );
    line
}

/// Checks an accepted whoami answer.
fn check_identity(case: &str, got: &Result<Reply, String>, profile: Profile, id: &str) -> Value {
    let reply = got
        .as_ref()
        .unwrap_or_else(|e| panic!("case {case}: refused: {e}"));
    assert_eq!(reply.status, 200, "case {case}: {}", reply.body);
    let v = reply.json();
    assert_eq!(v["profile"], profile.as_str(), "case {case}: {v}");
    assert_eq!(v["id"], id, "case {case}: {v}");
    v
}

/// Checks a refused case: no answer, and the gateway logged why, naming this peer.
async fn check_refused(
    case: &str,
    log: &Path,
    (peer, got): (SocketAddr, Result<Reply, String>),
    reason: &str,
) {
    if let Ok(r) = &got {
        panic!(
            "case {case}: expected a refusal, got HTTP {} {}",
            r.status, r.body
        );
    }
    let line = refusal_logged(log, peer, reason, case).await;
    eprintln!("refused {case}: {line}");
}

async fn medledger(args: &[&str]) -> std::process::Output {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin("medledger"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("medledger timed out")
    .expect("run medledger");
    assert!(
        out.status.success(),
        "medledger {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn still_running(gw: &mut Gateway) {
    let child = gw.child.as_mut().expect("gateway child");
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "the gateway exited (log: {})",
        read_log(&log_path(gw))
    );
}

/// Relays one TCP connection to `target`; the receiver yields the relay's own address towards
/// `target` (the peer address the gateway sees and logs).
async fn relay_once(
    target: SocketAddr,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<SocketAddr>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let at = l.local_addr().expect("relay addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut inbound, _)) = l.accept().await else {
            return;
        };
        let Ok(mut outbound) = TcpStream::connect(target).await else {
            return;
        };
        if let Ok(a) = outbound.local_addr() {
            let _ = tx.send(a);
        }
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    (at, rx)
}

/// Sends a hand-made TLS 1.1 ClientHello (client_version 3.2, no supported_versions, but a
/// signature_algorithms extension) and returns the local address and the bytes answered.
async fn tls11_hello_with_sigalgs(addr: SocketAddr) -> (SocketAddr, Vec<u8>) {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x09]); // ECDHE-ECDSA AES128-GCM, AES128-SHA
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
                                           // extensions: signature_algorithms = ecdsa_secp256r1_sha256, rsa_pkcs1_sha256
    body.extend_from_slice(&[
        0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01,
    ]);
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x02];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let local = tcp.local_addr().expect("local addr");
    let work = async {
        tcp.write_all(&record).await.expect("write hello");
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out).await;
        out
    };
    let out = tokio::time::timeout(IO_DEADLINE, work)
        .await
        .expect("tls 1.1 probe timed out");
    (local, out)
}

fn staff_key(ca: &IssuingCa, id: &str, role: StaffRole) -> CertifiedKey {
    key_of(ca, CertSpec::staff(id, id, role))
}

fn key_of(ca: &IssuingCa, spec: CertSpec) -> CertifiedKey {
    let issued = ca.issue(&spec, days(2)).expect("issue");
    CertifiedKey::from_pem(&issued.chain_pem, issued.key_pem.as_deref().expect("key"))
        .expect("certified key")
}

fn event_for(device: &str) -> Value {
    json!({
        "kind": "preventive-maintenance",
        "device_id": device,
        "occurred_at": "2026-01-05T10:00:00Z",
        "components": [{"name": "result", "class": "maintenance", "value": "pass"}],
    })
}

/// Mutual-TLS matrix against `medledger run`'s HTTPS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_mtls_matrix_live_revocation_and_route_profiles() {
    let (site, mut gw) = single_node("").await;
    let addr = sock(&gw);
    let log = log_path(&gw);
    let root = site.ca.root_der().clone();
    let other_dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki {
        ca: IssuingCa::load(&gw.dir.join("pki")).expect("load the gateway's ca"),
        other_ca: init_site_ca(
            &other_dir.path().join("pki"),
            &CaInit::new("Elsewhere", "9"),
        )
        .expect("other ca"),
        dir: other_dir,
    };
    let mut cases_run = 0;

    // --- revoked while the gateway runs: accepted, `cert revoke --config`, refused -----------
    let (stolen, stolen_key) = pki.issue(CertSpec::device("pump-stolen"), days(30));
    let (_, got) = whoami(addr, &root, Some(&stolen_key)).await;
    check_identity("before revocation", &got, Profile::Device, "pump-stolen");
    let config = gw.config.display().to_string();
    let out = medledger(&[
        "cert",
        "revoke",
        "--config",
        &config,
        &stolen.identity.serial,
        "--reason",
        "key-compromise",
    ])
    .await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("revoked certificate"), "{said}");
    let (peer, got) = eventually(
        "the running gateway to refuse the revoked certificate",
        Duration::from_secs(10),
        || {
            let (root, key) = (root.clone(), stolen_key.clone());
            async move {
                let (peer, got) = whoami(addr, &root, Some(&key)).await;
                got.is_err().then_some((peer, got))
            }
        },
    )
    .await;
    check_refused("revoked while running", &log, (peer, got), "Revoked").await;
    still_running(&mut gw);
    cases_run += 1;
    // the gateway rewrote its CRL file: openssl refuses the certificate with it too
    let chain = site.dir.path().join("stolen.pem");
    std::fs::write(&chain, &stolen.chain_pem).expect("write chain");
    let pki_dir = gw.dir.join("pki");
    let s = |p: &Path| p.display().to_string();
    let crl = eventually("pki/crl.pem to list the serial", IO_DEADLINE, || {
        let (root_crt, crl, chain) = (
            s(&pki_dir.join("root.crt")),
            s(&pki_dir.join("crl.pem")),
            s(&chain),
        );
        async move {
            let out = std::process::Command::new("openssl")
                .args(["verify", "-CAfile", &root_crt, "-untrusted", &chain])
                .args(["-crl_check", "-CRLfile", &crl, &chain])
                .output()
                .expect("openssl verify");
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            (!out.status.success() && text.contains("certificate revoked")).then_some(text)
        }
    })
    .await;
    assert!(crl.contains("certificate revoked"), "{crl}");

    // --- the standard matrix of tests/it/mtls.rs, against the gateway ------------------------
    let all = [Profile::Device, Profile::Staff, Profile::Gateway];
    let cases = standard_cases(&pki, &all, &stolen_key);
    assert!(cases.len() >= 10);
    for c in &cases {
        let (peer, got) = whoami(addr, &root, c.client.as_ref()).await;
        match &c.expect {
            Expect::Accept(profile, id) => {
                let v = check_identity(c.name, &got, *profile, id);
                if *profile == Profile::Staff {
                    assert_eq!(v["role"], "biomed", "case {}: {v}", c.name);
                    assert_eq!(v["name"], "Ada Lovelace", "case {}: {v}", c.name);
                }
            }
            Expect::Refuse(reason) => check_refused(c.name, &log, (peer, got), reason).await,
        }
        cases_run += 1;
    }

    // --- TLS 1.2 only and TLS 1.3 only clients are both served ------------------------------
    let admin = staff_key(&pki.ca, "it-admin", StaffRole::Admin);
    for (name, version, want) in [
        ("tls 1.2", &rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        ("tls 1.3", &rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let cfg = client_config(&root, Some(&admin), &[version]);
        let (_, got) = call(addr, cfg, "GET", "/v1/whoami", None).await;
        let v = check_identity(name, &got, Profile::Staff, "it-admin");
        assert_eq!(v["role"], "admin", "{name}: {v}");
        assert_eq!(
            got.as_ref().ok().and_then(|r| r.version),
            Some(want),
            "{name}"
        );
        cases_run += 1;
    }

    // --- TLS 1.1 offered by openssl: refused with an alert, logged naming the peer ------------
    let (relay, outgoing) = relay_once(addr).await;
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &relay.to_string(), "-tls1_1"])
            .args(["-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("openssl s_client timed out")
    .expect("run openssl s_client");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tls 1.1 was not refused: {text}");
    assert!(text.contains("alert"), "no alert from the gateway: {text}");
    assert!(
        text.contains("Cipher is (NONE)"),
        "a tls 1.1 session was established: {text}"
    );
    let peer = tokio::time::timeout(IO_DEADLINE, outgoing)
        .await
        .expect("relay connected")
        .expect("relay address");
    let line = refusal_logged(&log, peer, "peer is incompatible", "tls 1.1").await;
    eprintln!("refused tls 1.1: {line}");
    cases_run += 1;
    // openssl's TLS 1.1 hello carries no signature_algorithms, which rustls refuses first; a
    // TLS 1.1 hello WITH that extension reaches the version check: protocol_version alert
    let (peer, answer) = tls11_hello_with_sigalgs(addr).await;
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "not an alert record: {answer:?}"
    );
    assert_eq!(
        answer.get(5..7),
        Some(&[2u8, 70][..]),
        "not a fatal protocol_version alert: {answer:?}"
    );
    let line = refusal_logged(
        &log,
        peer,
        "Tls12NotOffered",
        "tls 1.1 with signature_algorithms",
    )
    .await;
    eprintln!("refused tls 1.1 with signature_algorithms: {line}");
    cases_run += 1;

    // --- valid certificates, wrong profile for the route: HTTP 403 ---------------------------
    let device = key_of(&pki.ca, CertSpec::device("pump-0001"));
    let biomed = staff_key(&pki.ca, "it-biomed", StaffRole::Biomed);
    let auditor = staff_key(&pki.ca, "it-auditor", StaffRole::Auditor);
    let gateway2 = key_of(&pki.ca, CertSpec::gateway("2"));
    let vote = json!({
        "vote": {"leader_id": {"term": 1, "node_id": 2}, "committed": false},
        "last_log_id": null,
    });
    // (case, client, method, path, body, status, text the answer contains)
    type RouteCase<'a> = (
        &'a str,
        &'a CertifiedKey,
        &'a str,
        &'a str,
        Option<Value>,
        u16,
        &'a str,
    );
    let route_cases: Vec<RouteCase> = vec![
        (
            "device reads a device history (staff route)",
            &device,
            "GET",
            "/v1/devices/pump-0001/history",
            None,
            403,
            "device pump-0001 may not read the ledger or the cluster's state",
        ),
        (
            "device reads the export",
            &device,
            "GET",
            "/v1/export",
            None,
            403,
            "may not read the ledger",
        ),
        (
            "device reads a receipt",
            &device,
            "GET",
            "/v1/entries/0/receipt",
            None,
            403,
            "may not read the ledger",
        ),
        (
            "device reads the cluster status",
            &device,
            "GET",
            "/cluster/status",
            None,
            403,
            "may not read the ledger",
        ),
        (
            "staff calls /raft/vote with a body that is not a vote",
            &biomed,
            "POST",
            "/raft/vote",
            Some(json!({})),
            403,
            "may not use a route of the gateways' replication",
        ),
        (
            "device records an event (staff route)",
            &device,
            "POST",
            "/v1/events",
            Some(event_for("pump-0001")),
            403,
            "device pump-0001 may not record preventive-maintenance events",
        ),
        (
            "staff calls /raft/vote",
            &biomed,
            "POST",
            "/raft/vote",
            Some(vote.clone()),
            403,
            "staff it-biomed (biomed) may not use a route of the gateways' replication",
        ),
        (
            "device calls /raft/vote",
            &device,
            "POST",
            "/raft/vote",
            Some(vote.clone()),
            403,
            "device pump-0001 may not use a route of the gateways' replication",
        ),
        (
            "auditor takes a checkpoint (admin route)",
            &auditor,
            "POST",
            "/cluster/checkpoint",
            None,
            403,
            "may not administer identities, membership or erasure",
        ),
        (
            "staff calls /v1/renew (device route)",
            &biomed,
            "POST",
            "/v1/renew",
            Some(json!({"csr_pem": "x"})),
            403,
            "may not use a route for devices only",
        ),
        // the same routes with the right profile, so that the 403s above are about the profile
        (
            "biomed records an event",
            &biomed,
            "POST",
            "/v1/events",
            Some(event_for("pump-0001")),
            201,
            "\"seq\"",
        ),
        (
            "biomed reads a device history",
            &biomed,
            "GET",
            "/v1/devices/pump-0001/history",
            None,
            200,
            "\"device_id\":\"pump-0001\"",
        ),
        (
            "admin takes a checkpoint",
            &admin,
            "POST",
            "/cluster/checkpoint",
            None,
            200,
            "checkpoint_size",
        ),
    ];
    for (name, key, method, path, body, status, text) in &route_cases {
        let cfg = client_config(&root, Some(key), ALL_VERSIONS);
        let (_, got) = call(addr, cfg, method, path, body.as_ref()).await;
        let r = got.unwrap_or_else(|e| panic!("case {name}: refused at the tls layer: {e}"));
        assert_eq!(r.status, *status, "case {name}: {}", r.body);
        assert!(r.body.contains(text), "case {name}: {}", r.body);
        cases_run += 1;
    }
    // a gateway certificate may call /raft/vote (answered by Raft, not refused): a stale term
    let (_, got) = call(
        addr,
        client_config(&root, Some(&gateway2), ALL_VERSIONS),
        "POST",
        "/raft/vote",
        Some(&vote),
    )
    .await;
    let r = got.expect("gateway calls /raft/vote");
    assert_eq!(r.status, 200, "gateway /raft/vote: {}", r.body);
    cases_run += 1;

    // the revocation is in the ledger, as the subject's history
    let cfg = client_config(&root, Some(&admin), ALL_VERSIONS);
    let (_, got) = call(addr, cfg, "GET", "/v1/devices/pump-stolen/history", None).await;
    let h = got.expect("history").json();
    let revoked: Vec<&Value> = h["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["kind"] == "certificate-revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{h}");
    assert_eq!(
        revoked[0]["fields"]["serial"],
        stolen.identity.serial.as_str()
    );
    assert_eq!(revoked[0]["fields"]["reason"], "key-compromise");

    // Certificates issued while the gateway was stopped (its own, from the CA's local record)
    // reach the replicated ledger once it runs.
    eventually(
        "the gateway's own certificate in the ledger",
        Duration::from_secs(20),
        || {
            let cfg = client_config(&root, Some(&admin), ALL_VERSIONS);
            async move {
                let (_, got) = call(addr, cfg, "GET", "/v1/devices/gateway:1/history", None).await;
                let h = got.ok()?.json();
                h["entries"]
                    .as_array()?
                    .iter()
                    .any(|e| {
                        e["kind"] == "certificate-issued" && e["fields"]["profile"] == "gateway"
                    })
                    .then_some(())
            }
        },
    )
    .await;

    still_running(&mut gw);
    assert!(cases_run >= 12, "{cases_run} cases");
    eprintln!("gateway mutual-tls matrix: {cases_run} cases");
}

/// `POST /enroll` on the enrollment listener: status and body.
async fn enroll(
    http: &reqwest::Client,
    at: SocketAddr,
    device_id: &str,
    token: &str,
    csr_pem: &str,
) -> (u16, String) {
    let r = http
        .post(format!("https://{at}/enroll"))
        .json(&json!({"device_id": device_id, "token": token, "csr_pem": csr_pem}))
        .send()
        .await
        .expect("post /enroll");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

async fn token_for(data_dir: &Path, id: &str) -> String {
    let out = medledger(&[
        "device",
        "add",
        "--data-dir",
        &data_dir.display().to_string(),
        "--id",
        id,
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("mlt_"))
        .unwrap_or_else(|| panic!("no token printed: {text}"))
        .to_string()
}

fn openssl_csr(dir: &Path, id: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{id}.key"));
    let csr = dir.join(format!("{id}.csr"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .args(["-subj", &format!("/CN={id}")])
        .arg("-out")
        .arg(&csr)
        .output()
        .expect("openssl req");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, std::fs::read_to_string(&csr).expect("csr"))
}

fn leaf_identity(chain_pem: &str) -> certs::Identity {
    let chain =
        certs::pem::certs_from_pem(chain_pem.as_bytes(), Path::new("<answer>")).expect("chain pem");
    certs::parse_identity(chain.first().expect("leaf")).expect("identity")
}

/// Enrollment end to end against the running gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_enrollment_token_renewal_and_history() {
    let enroll_port = free_port();
    let (site, mut gw) = single_node(&format!("enroll_listen = \"127.0.0.1:{enroll_port}\"")).await;
    let addr = sock(&gw);
    let enroll_at: SocketAddr = format!("127.0.0.1:{enroll_port}").parse().expect("addr");
    let root = site.ca.root_der().clone();
    let work = site.dir.path().join("device");
    std::fs::create_dir_all(&work).expect("mkdir");
    // a device has only the site root: no client certificate
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*client_config(&root, None, ALL_VERSIONS)).clone())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");

    // the enrollment listener serves /enroll only, never the mutual-TLS routes
    eventually("the enrollment listener", Duration::from_secs(10), || {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("https://{enroll_at}/v1/whoami"))
                .send()
                .await
                .ok()?;
            assert_eq!(
                r.status().as_u16(),
                404,
                "/v1/whoami on the enrollment listener"
            );
            Some(())
        }
    })
    .await;

    // the CRL is public: served on the enrollment listener without a client certificate
    let r = http
        .get(format!("https://{enroll_at}/crl.pem"))
        .send()
        .await
        .expect("get /crl.pem");
    assert_eq!(r.status().as_u16(), 200);
    let crl = r.text().await.expect("crl");
    assert!(crl.contains("-----BEGIN X509 CRL-----"), "{crl}");

    // a token from the CLI while the gateway runs, a CSR made by openssl
    let id = "pump-enr-1";
    let token = token_for(&gw.dir, id).await;
    let (key_path, csr) = openssl_csr(&work, id);
    // a token for one device does not enroll another, and is not burnt by trying
    let (_, other_csr) = openssl_csr(&work, "pump-enr-9");
    let (status, body) = enroll(&http, enroll_at, "pump-enr-9", &token, &other_csr).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("is for device pump-enr-1"), "{body}");
    let (status, chain_pem) = enroll(&http, enroll_at, id, &token, &csr).await;
    assert_eq!(status, 200, "{chain_pem}");
    let chain = work.join(format!("{id}.crt"));
    std::fs::write(&chain, &chain_pem).expect("write chain");
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(gw.dir.join("pki").join("root.crt"))
        .arg("-untrusted")
        .arg(&chain)
        .args(["-purpose", "sslclient"])
        .arg(&chain)
        .output()
        .expect("openssl verify");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK"),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let enrolled = leaf_identity(&chain_pem);
    assert_eq!(
        (enrolled.profile, enrolled.id.as_str()),
        (Profile::Device, id)
    );

    // the same token again, an unknown token, an expired token: 403
    let (status, body) = enroll(&http, enroll_at, id, &token, &csr).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("already used"), "{body}");
    let unknown = format!("mlt_{}", "0".repeat(64));
    let (status, body) = enroll(&http, enroll_at, id, &unknown, &csr).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("unknown"), "{body}");
    let late = "pump-enr-2";
    let late_token = token_for(&gw.dir, late).await;
    let tokens = gw.dir.join("pki").join("tokens.json");
    let mut store: Value =
        serde_json::from_str(&std::fs::read_to_string(&tokens).expect("tokens")).expect("json");
    let past = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let past = past
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    for t in store["tokens"].as_array_mut().expect("tokens") {
        if t["device_id"] == late {
            t["expires_at"] = json!(past);
        }
    }
    std::fs::write(&tokens, store.to_string()).expect("write tokens");
    let (_, late_csr) = openssl_csr(&work, late);
    let (status, body) = enroll(&http, enroll_at, late, &late_token, &late_csr).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("expired"), "{body}");

    // one token, five devices racing with it: exactly one certificate
    let racer = "pump-enr-3";
    let race_token = token_for(&gw.dir, racer).await;
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (http, token) = (http.clone(), race_token.clone());
        let (_, csr) = certs::device_csr(racer).expect("csr");
        racing.spawn(async move { enroll(&http, enroll_at, racer, &token, &csr).await });
    }
    let mut statuses = Vec::new();
    while let Some(r) = racing.join_next().await {
        let (status, body) = r.expect("racer");
        assert!(
            status == 200 || (status == 403 && body.contains("already used")),
            "{status} {body}"
        );
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );

    // the new certificate works on the mutual-TLS listener
    let device = CertifiedKey::from_files(&chain, &key_path).expect("enrolled key");
    let (_, got) = whoami(addr, &root, Some(&device)).await;
    let v = check_identity("enrolled device", &got, Profile::Device, id);
    assert_eq!(v["serial"], enrolled.serial.as_str(), "{v}");

    // renewal with the current certificate: same id, new serial, and the new one works
    let (new_key, new_csr) = certs::device_csr(id).expect("csr");
    let (_, got) = call(
        addr,
        client_config(&root, Some(&device), ALL_VERSIONS),
        "POST",
        "/v1/renew",
        Some(&json!({"csr_pem": new_csr})),
    )
    .await;
    let r = got.expect("renew");
    assert_eq!(r.status, 200, "{}", r.body);
    let renewed = leaf_identity(&r.body);
    assert_eq!(renewed.id, id);
    assert_ne!(renewed.serial, enrolled.serial);
    let renewed_key = CertifiedKey::from_pem(&r.body, &new_key).expect("renewed key");
    let (_, got) = whoami(addr, &root, Some(&renewed_key)).await;
    let v = check_identity("renewed device", &got, Profile::Device, id);
    assert_eq!(v["serial"], renewed.serial.as_str(), "{v}");
    // the old one stays valid until it expires or is revoked
    let (_, got) = whoami(addr, &root, Some(&device)).await;
    check_identity(
        "previous certificate after renewal",
        &got,
        Profile::Device,
        id,
    );

    // renewal with revoke_previous: the certificate used for it is refused from then on
    let (third_key, third_csr) = certs::device_csr(id).expect("csr");
    let (_, got) = call(
        addr,
        client_config(&root, Some(&renewed_key), ALL_VERSIONS),
        "POST",
        "/v1/renew",
        Some(&json!({"csr_pem": third_csr, "revoke_previous": true})),
    )
    .await;
    let r = got.expect("renew with revoke_previous");
    assert_eq!(r.status, 200, "{}", r.body);
    let third = leaf_identity(&r.body);
    let third_ck = CertifiedKey::from_pem(&r.body, &third_key).expect("third key");
    let (peer, got) = eventually(
        "the superseded certificate to be refused",
        Duration::from_secs(10),
        || {
            let (root, key) = (root.clone(), renewed_key.clone());
            async move {
                let (peer, got) = whoami(addr, &root, Some(&key)).await;
                got.is_err().then_some((peer, got))
            }
        },
    )
    .await;
    check_refused(
        "superseded by renewal",
        &log_path(&gw),
        (peer, got),
        "Revoked",
    )
    .await;
    let (_, got) = whoami(addr, &root, Some(&third_ck)).await;
    check_identity("third certificate", &got, Profile::Device, id);

    // every issuance is a certificate-issued entry of the device's history (staff view)
    let staff = staff_key(&site.ca, "it-biomed", StaffRole::Biomed);
    let h = eventually(
        "the issuances in the history",
        Duration::from_secs(10),
        || {
            let cfg = client_config(&root, Some(&staff), ALL_VERSIONS);
            let want = [
                enrolled.serial.clone(),
                renewed.serial.clone(),
                third.serial.clone(),
            ];
            async move {
                let (_, got) =
                    call(addr, cfg, "GET", &format!("/v1/devices/{id}/history"), None).await;
                let r = got.ok()?;
                assert_eq!(r.status, 200, "{}", r.body);
                let h = r.json();
                let issued: Vec<String> = h["entries"]
                    .as_array()?
                    .iter()
                    .filter(|e| e["kind"] == "certificate-issued")
                    .filter_map(|e| e["fields"]["serial"].as_str().map(str::to_string))
                    .collect();
                want.iter().all(|s| issued.contains(s)).then_some(h)
            }
        },
    )
    .await;
    let entries = h["entries"].as_array().expect("entries");
    let first = entries
        .iter()
        .find(|e| e["fields"]["serial"] == enrolled.serial.as_str())
        .expect("enrollment entry");
    assert_eq!(first["kind"], "certificate-issued", "{first}");
    assert_eq!(first["fields"]["profile"], "device", "{first}");
    assert_eq!(
        first["fields"]["fingerprint"],
        enrolled.fingerprint.as_str(),
        "{first}"
    );
    // token enrollment is recorded by the gateway; renewal by the device itself
    let gateway_fp = leaf_identity(
        &std::fs::read_to_string(gw.dir.join("pki").join("gateway.crt")).expect("gateway.crt"),
    )
    .fingerprint;
    assert_eq!(first["author"], format!("sha256:{gateway_fp}"), "{first}");
    let second = entries
        .iter()
        .find(|e| e["fields"]["serial"] == renewed.serial.as_str())
        .expect("renewal entry");
    assert_eq!(
        second["author"],
        format!("sha256:{}", enrolled.fingerprint),
        "{second}"
    );
    let superseded = entries
        .iter()
        .find(|e| e["kind"] == "certificate-revoked")
        .expect("revocation entry");
    assert_eq!(superseded["fields"]["serial"], renewed.serial.as_str());
    assert_eq!(superseded["fields"]["reason"], "superseded");
    // a failed enrollment recorded nothing for the other devices
    let cfg = client_config(&root, Some(&staff), ALL_VERSIONS);
    let (_, got) = call(addr, cfg, "GET", "/v1/devices/pump-enr-2/history", None).await;
    let h2 = got.expect("history");
    assert_eq!(h2.status, 404, "{}", h2.body);
    still_running(&mut gw);
}

/// A certificate revoked with `medledger cert revoke --data-dir` while the gateway is stopped
/// (the revocation sits in the CA's local ledger only) is refused from the gateway's first
/// handshake on, stays in the CRL file the gateway rewrites, reaches the replicated ledger, and
/// is still refused after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_while_stopped_holds_after_start_and_restart() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki_dir = dir.path().join("node1").join("pki");
    let ca = init_site_ca(&pki_dir, &CaInit::new("test hospital", "1")).expect("site ca");
    let site = Site { dir, ca };
    let gw = Gateway::new(&site, 1, "");
    let data_dir = gw.dir.display().to_string();
    // Issued and revoked before the gateway ever ran.
    let ca = IssuingCa::load(&pki_dir).expect("load ca");
    let issued = ca
        .issue(&CertSpec::device("pump-early"), days(30))
        .expect("issue");
    let key = CertifiedKey::from_pem(&issued.chain_pem, issued.key_pem.as_deref().expect("key"))
        .expect("key");
    let serial = issued.identity.serial.clone();
    let out = medledger(&[
        "cert",
        "revoke",
        "--data-dir",
        &data_dir,
        &serial,
        "--reason",
        "key-compromise",
    ])
    .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked certificate"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let root = site.ca.root_der().clone();
    let crl_refuses = |pki_dir: PathBuf, chain: PathBuf| async move {
        let s = |p: &Path| p.display().to_string();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-CAfile", &s(&pki_dir.join("root.crt"))])
            .args(["-untrusted", &s(&chain)])
            .args([
                "-crl_check",
                "-CRLfile",
                &s(&pki_dir.join("crl.pem")),
                &s(&chain),
            ])
            .output()
            .expect("openssl verify");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        !out.status.success() && text.contains("certificate revoked")
    };
    let chain = site.dir.path().join("early.pem");
    std::fs::write(&chain, &issued.chain_pem).expect("write chain");
    assert!(
        crl_refuses(pki_dir.clone(), chain.clone()).await,
        "the CLI's CRL"
    );

    // Started and made a cluster: refused from the first request on.
    let voters = [(1, gw.addr())];
    let mut nodes = medledger_tests::cluster::start_nodes(&site, vec![gw], &voters).await;
    let gw = &mut nodes[0];
    let addr = sock(gw);
    let (_, got) = whoami(addr, &root, Some(&key)).await;
    assert!(got.is_err(), "accepted right after start: {got:?}");
    // The revocation reaches the replicated ledger ...
    let staff = site.staff_client("rv-admin", StaffRole::Admin);
    let history = format!("https://{}/v1/devices/pump-early/history", gw.addr());
    eventually(
        "the local revocation in the replicated ledger",
        Duration::from_secs(30),
        || {
            let (staff, url) = (staff.clone(), history.clone());
            async move {
                let v: Value = staff.get(&url).send().await.ok()?.json().await.ok()?;
                v["entries"]
                    .as_array()?
                    .iter()
                    .any(|e| e["kind"] == "certificate-revoked")
                    .then_some(())
            }
        },
    )
    .await;
    // ... and the CRL the gateway rewrote at start and since still has it.
    assert!(
        crl_refuses(pki_dir.clone(), chain.clone()).await,
        "the gateway's CRL lost a revocation made while it was stopped"
    );
    let (_, got) = whoami(addr, &root, Some(&key)).await;
    assert!(
        got.is_err(),
        "accepted once the ledger has the revocation: {got:?}"
    );

    // After a restart: still refused, still in the CRL.
    gw.kill();
    gw.start();
    let url = format!("https://{}/cluster/status", gw.addr());
    eventually("the gateway back", Duration::from_secs(30), || {
        let (staff, url) = (staff.clone(), url.clone());
        async move { staff.get(&url).send().await.ok().map(|_| ()) }
    })
    .await;
    let (_, got) = whoami(addr, &root, Some(&key)).await;
    assert!(got.is_err(), "accepted after a restart: {got:?}");
    assert!(crl_refuses(pki_dir, chain).await, "the CRL after a restart");
}

/// `verify --site-root`: a gateway with an issuing CA endorses its ledger key at start (a
/// `certificate-issued` entry, profile `ledger-key`), so its exports and receipts verify against
/// the site's root; against another site's root, or without the endorsement, they are refused
/// with a message naming the node. `GET /v1/keys` serves the endorsement and its chain.
#[tokio::test(flavor = "multi_thread")]
async fn exports_verify_against_the_site_root_that_endorsed_their_keys() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let (site, gw) = single_node("[ledger]\ncheckpoint_interval_ms = 500\n").await;
    let admin = site.staff_client("sr-admin", StaffRole::Admin);
    let url = format!("https://{}/v1/export", gw.addr());
    let dir = site.dir.path();
    let export = dir.join("export.jsonl");
    // An export that holds the endorsement and verifies on its own (a gateway may sign entries
    // before its key's registration is applied: such an export names a key it lacks, a defect
    // of its own, seen once; the check here is the site root's).
    let bytes = eventually(
        "an export holding the gateway's ledger key endorsement",
        Duration::from_secs(60),
        || {
            let (admin, url, export) = (admin.clone(), url.clone(), export.clone());
            async move {
                let r = admin.get(&url).send().await.ok()?;
                let b = r.bytes().await.ok()?;
                if !String::from_utf8_lossy(&b).contains("ledger-key") {
                    return None;
                }
                std::fs::write(&export, &b).ok()?;
                let ok = std::process::Command::new(bin("medledger"))
                    .arg("verify")
                    .arg(&export)
                    .output()
                    .ok()?
                    .status
                    .success();
                ok.then_some(b)
            }
        },
    )
    .await;
    std::fs::write(&export, &bytes).expect("write export");
    let root = dir.join("node1/pki/root.crt");
    let verify = |root: &Path, file: &Path| {
        let out = std::process::Command::new(bin("medledger"))
            .arg("verify")
            .arg("--site-root")
            .arg(root)
            .arg(file)
            .output()
            .expect("verify");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = verify(&root, &export);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("against the site root") && out.contains("the keys of node 1 are endorsed"),
        "{out}"
    );

    // Another site's root: refused, naming the node.
    let other = tempfile::tempdir().expect("tempdir");
    init_site_ca(other.path(), &CaInit::new("another hospital", "1")).expect("other ca");
    let (code, out) = verify(&other.path().join("root.crt"), &export);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("node 1's key") && out.contains("is not endorsed by the site root"),
        "{out}"
    );

    // The key and its endorsement as the API serves them: PEM and DER, and the chain up to the
    // site root, which checks under that root.
    let keys: Value =
        serde_json::from_slice(&get_bytes(&admin, &format!("https://{}/v1/keys", gw.addr())).await)
            .expect("keys json");
    let k = &keys[0];
    assert_eq!(k["node_id"], 1, "{keys}");
    let e = &k["endorsement"];
    let cert_pem = e["certificate_pem"].as_str().expect("certificate_pem");
    let chain: Vec<&str> = e["chain_pem"]
        .as_array()
        .expect("chain_pem")
        .iter()
        .map(|c| c.as_str().expect("pem"))
        .collect();
    let root_pem = std::fs::read_to_string(&root).expect("root");
    assert_eq!(chain.len(), 2, "{e}");
    assert_eq!(chain[1], root_pem, "the chain ends at the site root");
    let der = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(e["certificate_der"].as_str().expect("certificate_der"))
            .expect("base64")
    };
    let from_pem =
        certs::pem::certs_from_pem(cert_pem.as_bytes(), Path::new("endorsement")).expect("pem");
    assert_eq!(
        from_pem[0].as_ref(),
        der.as_slice(),
        "PEM and DER are one certificate"
    );
    let public_key: [u8; 32] = hex::decode(k["public_key"].as_str().expect("key"))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let root_der = certs::pem::load_certs(&root).expect("root der");
    certs::endorse::verify_endorsement(&root_der[0], chain[0], cert_pem, 1, &public_key, None)
        .expect("the served endorsement checks under the site root");

    // A receipt carries the endorsements of its keys: it verifies against the site root alone.
    let receipt = get_bytes(
        &admin,
        &format!("https://{}/v1/entries/0/receipt", gw.addr()),
    )
    .await;
    let receipt_path = dir.join("receipt.json");
    std::fs::write(&receipt_path, &receipt).expect("write");
    let (code, out) = verify(&root, &receipt_path);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("valid receipt") && out.contains("the keys of node 1 are endorsed"),
        "{out}"
    );
    let (code, out) = verify(&other.path().join("root.crt"), &receipt_path);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("node 1's key") && out.contains("is not endorsed by the site root"),
        "{out}"
    );
    // Without its endorsements (stripped, or made without them): refused, naming the node.
    let mut stripped: Value = serde_json::from_slice(&receipt).expect("receipt json");
    stripped
        .as_object_mut()
        .expect("object")
        .remove("endorsements")
        .expect("the receipt had endorsements");
    std::fs::write(&receipt_path, stripped.to_string()).expect("write");
    let (code, out) = verify(&root, &receipt_path);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("node 1's key") && out.contains("has no endorsement in the receipt"),
        "{out}"
    );

    // An insurer's export (commitments only for patient data) carries the endorsement too.
    let insurer = site.staff_client("sr-insurer", StaffRole::Insurer);
    let partial = insurer
        .get(&url)
        .send()
        .await
        .expect("export")
        .bytes()
        .await
        .expect("body");
    let partial_path = dir.join("partial.jsonl");
    std::fs::write(&partial_path, &partial).expect("write");
    let (code, out) = verify(&root, &partial_path);
    assert_eq!(code, Some(0), "an insurer sees the device class: {out}");

    // A ledger no site endorsed (made by `medledger import`): refused.
    let data = dir.join("local");
    let events = dir.join("events.jsonl");
    std::fs::write(
        &events,
        "{\"event_id\":\"x1\",\"kind\":\"repair\",\"device_id\":\"pump-1\"}\n",
    )
    .expect("write");
    medledger(&[
        "import",
        "--data-dir",
        &data.display().to_string(),
        &events.display().to_string(),
    ])
    .await;
    let local_export = dir.join("local.jsonl");
    medledger(&[
        "ledger",
        "export",
        "--data-dir",
        &data.display().to_string(),
        "--out",
        &local_export.display().to_string(),
    ])
    .await;
    let (code, out) = verify(&root, &local_export);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("node 1's key") && out.contains("has no endorsement in the file"),
        "{out}"
    );
}

/// The body of a GET of `url` by `client`.
async fn get_bytes(client: &reqwest::Client, url: &str) -> Vec<u8> {
    client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .to_vec()
}

/// Writes `path` and runs `medledger verify` on it with `args` before the file; returns the exit
/// code and what it printed.
fn verify_with(path: &Path, bytes: &[u8], args: &[&str]) -> (Option<i32>, String) {
    std::fs::write(path, bytes).expect("write document");
    let out = std::process::Command::new(bin("medledger"))
        .arg("verify")
        .args(args)
        .arg(path)
        .output()
        .expect("verify");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A gateway signs nothing before its own key's registration is applied on it: a write made on
/// a gateway before it even joined waits for that, so it lands after the key in the Raft log,
/// and a receipt or an export made by another gateway the moment the write is acknowledged
/// carries the key. (Before, the write usually won the race with the registration, and such a
/// receipt failed with "key not in the document".)
#[tokio::test(flavor = "multi_thread")]
async fn a_write_on_a_joining_gateway_verifies_in_another_gateways_receipt_and_export() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let (site, gw1) = single_node("[ledger]\ncheckpoint_interval_ms = 60000\n").await;
    let admin = site.staff_client("join-admin", StaffRole::Admin);
    let writer = site.staff_client("join-biomed", StaffRole::Biomed);
    let mut gw2 = Gateway::new(&site, 2, "");
    gw2.start();
    let addr2 = gw2.addr();
    eventually("gateway 2 to listen", Duration::from_secs(30), || {
        medledger_tests::cluster::status(&admin, &addr2)
    })
    .await;
    // Posted while gateway 2 is in no cluster: it waits for a leader (and, now, for its key).
    let write = {
        let (writer, addr2) = (writer.clone(), addr2.clone());
        tokio::spawn(async move {
            writer
                .post(format!("https://{addr2}/v1/events"))
                .json(&event_for("pump-joined"))
                .send()
                .await
        })
    };
    medledger(&[
        "cluster",
        "join",
        "--config",
        gw2.config.to_str().expect("utf8"),
        "--via",
        &gw1.addr(),
    ])
    .await;
    let r = write.await.expect("writer").expect("post on gateway 2");
    assert!(
        r.status().is_success(),
        "write on gateway 2: {}",
        r.status()
    );
    let ack: Value = r.json().await.expect("json");
    let seq = ack["seq"].as_u64().expect("seq");
    // At once, from gateway 1 (the leader applied the entry before the write was acknowledged).
    let receipt = get_bytes(
        &admin,
        &format!("https://{}/v1/entries/{seq}/receipt", gw1.addr()),
    )
    .await;
    let dir = site.dir.path();
    let (code, out) = verify_with(&dir.join("joined-receipt.json"), &receipt, &[]);
    assert_eq!(
        code,
        Some(0),
        "receipt of entry {seq} from gateway 1: {out}"
    );
    let entry: Value = serde_json::from_slice(&receipt).expect("receipt json");
    let bytes = hex::decode(entry["entry"]["entry"].as_str().expect("entry hex")).expect("hex");
    let signer = ledger_node::entry::Entry::decode(&bytes)
        .expect("entry")
        .body
        .node_id;
    assert_eq!(
        signer, 2,
        "the entry is signed by the gateway it was written on"
    );
    // An export cut at a checkpoint that covers it, from gateway 1.
    medledger(&[
        "cluster",
        "checkpoint",
        "--config",
        gw1.config.to_str().expect("utf8"),
    ])
    .await;
    let export = get_bytes(&admin, &format!("https://{}/v1/export", gw1.addr())).await;
    let (code, out) = verify_with(&dir.join("joined-export.jsonl"), &export, &[]);
    assert_eq!(code, Some(0), "export from gateway 1: {out}");
    assert!(
        String::from_utf8_lossy(&export).contains(&format!("\"seq\":{seq},")),
        "the export covers entry {seq}"
    );
    drop(gw2);
}

/// Checkpoints co-signed by a majority of the voters (docs/ledger-format.md §9.6), on a site
/// whose gateways each hold an issuing CA of their own under one site root (gateway 1 `ca
/// init`, gateways 2 and 3 the `ca init --issuing-only` flow). The checkpoint a gateway records
/// carries the voter set and the co-signatures of the other voters, which each gave only for
/// the head it applied itself; every gateway's export, an API receipt, the web page's receipt
/// and `ledger export --data-dir` of a stopped gateway are cut at it and verify with the default
/// quorum (a majority of the voter set) and with `--site-root` and `--quorum 2` (each key
/// endorsed by its own node's CA); the Python verifier agrees on the same files. With its
/// co-signatures dropped, the export is refused naming who did not sign. A co-signed
/// checkpoint sent straight to Raft with a voter set of one (a gateway claiming a cluster of its
/// own) is refused by apply on every gateway. A history that gateway 1's key alone signed (a
/// ledger made with a copy of its key) verifies on its own but is refused with `--quorum 2`.
#[tokio::test(flavor = "multi_thread")]
async fn a_history_cosigned_by_a_quorum_verifies_and_one_gateways_own_does_not() {
    use ledger_node::raft::types::RaftRequest;
    use medledger_gateway::service::raft_net;
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let root_dir = tmp.path().join("node1").join("pki");
    let ca = init_site_ca(&root_dir, &CaInit::new("test hospital", "1")).expect("site ca");
    let site = Site { dir: tmp, ca };
    let web_port = free_port();
    // No checkpoint of its own during the test: the test records the one it checks.
    let extra = "[ledger]\ncheckpoint_interval_ms = 3600000\n";
    let mut nodes: Vec<Gateway> = (1..=3)
        .map(|i| {
            let web = if i == 2 {
                format!("[web]\nlisten = \"127.0.0.1:{web_port}\"\n")
            } else {
                String::new()
            };
            Gateway::new(&site, i, &format!("{extra}{web}"))
        })
        .collect();
    let root_pem = site.ca.root_pem();
    for g in &mut nodes[1..] {
        let pki = g.dir.join("pki");
        let csr = certs::request_issuing_ca(&pki, &g.id.to_string()).expect("issuing csr");
        let cert = certs::RootCa::load(&root_dir)
            .expect("root")
            .sign_issuing_csr(&csr, 365)
            .expect("sign issuing ca");
        certs::install_issuing_ca(&pki, &cert, root_pem).expect("install issuing ca");
    }
    let voters: Vec<(u64, String)> = nodes.iter().map(|g| (g.id, g.addr())).collect();
    let mut nodes = medledger_tests::cluster::start_nodes(&site, nodes, &voters).await;
    let admin = site.staff_client("q-admin", StaffRole::Admin);
    let writer = site.staff_client("q-biomed", StaffRole::Biomed);
    // Each gateway endorses its key with its own CA at start: wait for all three.
    let keys = medledger_tests::cluster::endorsed_keys(&admin, &nodes[0].addr(), 3).await;
    // The head a reader saw before the writes, as the API serves it (§9.4: `--known-head`).
    let head_before = get_bytes(&admin, &format!("https://{}/v1/head", nodes[0].addr())).await;
    for i in 0..6 {
        let r = writer
            .post(format!("https://{}/v1/events", nodes[i % 3].addr()))
            .json(&event_for(&format!("pump-q{i}")))
            .send()
            .await
            .expect("post");
        assert!(r.status().is_success(), "write {i}: {}", r.status());
    }
    medledger(&[
        "cluster",
        "checkpoint",
        "--config",
        nodes[0].config.to_str().expect("utf8"),
    ])
    .await;
    let dir = site.dir.path();
    let root = root_dir.join("root.crt");
    let root_arg = root.to_str().expect("utf8");
    let mut trusted = Vec::new();
    for k in keys.as_array().expect("keys") {
        trusted.push("--trusted-key".to_owned());
        trusted.push(format!(
            "{}={}",
            k["node_id"],
            k["public_key"].as_str().expect("key")
        ));
    }
    let mut args: Vec<&str> = trusted.iter().map(String::as_str).collect();
    args.extend(["--quorum", "2"]);
    let site_args = ["--site-root", root_arg, "--quorum", "2"];
    // Gateway 3 serves the same checkpoint, with its voter set and co-signatures, once it has
    // applied it.
    let export_of = |addr: String| {
        let admin = admin.clone();
        async move { get_bytes(&admin, &format!("https://{addr}/v1/export")).await }
    };
    let export = eventually(
        "gateway 3's export cut at the co-signed checkpoint",
        Duration::from_secs(30),
        || async {
            let b = export_of(nodes[2].addr()).await;
            String::from_utf8_lossy(&b)
                .contains("\"cosignatures\"")
                .then_some(b)
        },
    )
    .await;
    let text = String::from_utf8(export.to_vec()).expect("utf-8");
    let tail = text.lines().last().expect("tail").to_owned();
    assert!(tail.contains("\"voters\":[1,2,3]"), "{tail}");
    let export_path = dir.join("cosigned.jsonl");
    for a in [&args[..], &site_args[..], &[][..]] {
        let (code, out) = verify_with(&export_path, &export, a);
        assert_eq!(code, Some(0), "{a:?}: {out}");
        assert!(out.contains("of its 3 voters (nodes 1, 2, 3)"), "{out}");
    }
    let (_, out) = verify_with(&export_path, &export, &site_args);
    assert!(
        out.contains("the keys of node 1, 2, 3 are endorsed") || out.contains("endorsed"),
        "{out}"
    );
    // A receipt of an entry the checkpoint holds is cut at it too, endorsements beside it.
    let receipt = get_bytes(
        &admin,
        &format!("https://{}/v1/entries/2/receipt", nodes[1].addr()),
    )
    .await;
    let receipt_path = dir.join("cosigned-receipt.json");
    for a in [&args[..], &site_args[..]] {
        let (code, out) = verify_with(&receipt_path, &receipt, a);
        assert_eq!(code, Some(0), "{a:?}: {out}");
    }
    // Co-signatures dropped from the export: refused by default, naming who did not sign.
    let stripped = {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let last = lines.last_mut().expect("tail");
        let mut v: Value = serde_json::from_str(last).expect("tail json");
        let signer = v["tree_head"]["node_id"].as_u64().expect("signer");
        v["cosignatures"] = json!([]);
        *last = v.to_string();
        (lines.join("\n") + "\n", signer)
    };
    let stripped_path = dir.join("stripped.jsonl");
    let (code, out) = verify_with(&stripped_path, stripped.0.as_bytes(), &[]);
    assert_eq!(code, Some(1), "{out}");
    let others: Vec<String> = (1..=3u64)
        .filter(|n| *n != stripped.1)
        .map(|n| n.to_string())
        .collect();
    assert!(
        out.contains(&format!(
            "signed by 1 of its 3 voters (nodes 1, 2, 3): node {} signed it, nodes {} did not",
            stripped.1,
            others.join(", ")
        )),
        "{out}"
    );

    // A co-signed checkpoint straight to Raft, signed by gateway 1 with a voter set of its own:
    // refused by apply (the membership applied at its entry is 1, 2, 3), on every gateway alike.
    let key_hex = std::fs::read_to_string(nodes[0].dir.join("node.key")).expect("node.key");
    let mut seed = [0u8; 32];
    hex::decode_to_slice(key_hex.trim(), &mut seed).expect("key hex");
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let head: Value = serde_json::from_str(&tail).expect("tail json");
    let head: ledger_node::SignedTreeHead =
        serde_json::from_value(head["tree_head"].clone()).expect("head");
    let forged_head = ledger_node::SignedTreeHead::sign(head.size, head.root, 1, 1, &key);
    let body = raft_net::encode(&RaftRequest::new(vec![
        ledger_node::Command::CosignedCheckpoint {
            head: forged_head,
            voters: vec![1],
            cosignatures: vec![],
        },
    ]))
    .expect("encode");
    let gateway = site.client_for(&CertSpec::gateway("9"));
    let addrs: Vec<String> = nodes.iter().map(Gateway::addr).collect();
    let answer = medledger_tests::cluster::raft_forward(&gateway, &addrs, &body).await;
    match answer.outcomes.as_slice() {
        [ledger_node::ApplyOutcome::Refused { reason }] => assert!(
            reason.contains("voter set [1] is not the cluster's voters [1, 2, 3]"),
            "{reason}"
        ),
        other => panic!("a forged voter set was not refused: {other:?}"),
    }
    // Every gateway, once it applied past it (a write after it, read with Medledger-Min-Seq),
    // still cuts its export at the same co-signed checkpoint.
    let r = writer
        .post(format!("https://{}/v1/events", addrs[0]))
        .json(&event_for("pump-after"))
        .send()
        .await
        .expect("post");
    let after: Value = r.json().await.expect("json");
    let after = after["seq"].as_u64().expect("seq").to_string();
    for addr in &addrs {
        let b = admin
            .get(format!("https://{addr}/v1/export"))
            .header("medledger-min-seq", &after)
            .send()
            .await
            .expect("export")
            .bytes()
            .await
            .expect("export");
        let tail_now = String::from_utf8_lossy(&b)
            .lines()
            .last()
            .map(str::to_owned);
        assert_eq!(tail_now.as_deref(), Some(tail.as_str()), "gateway {addr}");
    }

    // The web page's receipt (certificate sign-in on gateway 2's web listener): cut at the
    // checkpoint, with the voter set, co-signatures and endorsements.
    let web = reqwest::Client::builder()
        .use_preconfigured_tls(
            medledger_tests::cluster::client_tls(
                &site.ca,
                &CertSpec::staff("q-web", "Quinn Web", StaffRole::Biomed),
            )
            .expect("client tls"),
        )
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let base = format!("https://127.0.0.1:{web_port}");
    let r = web
        .get(format!("{base}/login?next=/devices"))
        .send()
        .await
        .expect("certificate sign-in");
    assert_eq!(r.status(), 303, "sign-in");
    let cookie = crate::web::cookie_set(&r, "__Host-medledger-session").expect("session cookie");
    let web_receipt = web
        .get(format!("{base}/data/entries/2/receipt"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("web receipt")
        .bytes()
        .await
        .expect("body");
    let w: Value = serde_json::from_slice(&web_receipt).expect("web receipt json");
    assert_eq!(w["voters"], json!([1, 2, 3]), "{w}");
    assert_eq!(
        w["tree_head"],
        serde_json::to_value(&head).expect("head"),
        "{w}"
    );
    assert!(
        w["cosignatures"].as_array().is_some_and(|c| !c.is_empty()),
        "{w}"
    );
    let web_path = dir.join("web-receipt.json");
    for a in [&[][..], &site_args[..]] {
        let (code, out) = verify_with(&web_path, &web_receipt, a);
        assert_eq!(code, Some(0), "{a:?}: {out}");
        assert!(out.contains("of its 3 voters"), "{out}");
    }

    // `ledger export --data-dir` of gateway 3, stopped: cut at the same checkpoint.
    nodes[2].kill();
    let offline = dir.join("offline.jsonl");
    medledger(&[
        "ledger",
        "export",
        "--data-dir",
        nodes[2].dir.to_str().expect("utf8"),
        "--out",
        offline.to_str().expect("utf8"),
    ])
    .await;
    let offline_bytes = std::fs::read(&offline).expect("offline export");
    let offline_text = String::from_utf8_lossy(&offline_bytes).to_string();
    assert_eq!(offline_text.lines().last(), Some(tail.as_str()));
    for a in [&[][..], &site_args[..]] {
        let (code, out) = verify_with(&offline, &offline_bytes, a);
        assert_eq!(code, Some(0), "{a:?}: {out}");
    }
    // And `ledger receipt --data-dir` of it: cut at the same checkpoint, endorsements beside it.
    let offline_receipt = dir.join("offline-receipt.json");
    medledger(&[
        "ledger",
        "receipt",
        "--data-dir",
        nodes[2].dir.to_str().expect("utf8"),
        "--seq",
        "2",
        "--out",
        offline_receipt.to_str().expect("utf8"),
    ])
    .await;
    let offline_receipt_bytes = std::fs::read(&offline_receipt).expect("offline receipt");
    let r: Value = serde_json::from_slice(&offline_receipt_bytes).expect("receipt json");
    assert_eq!(r["tree_head"], w["tree_head"], "{r}");
    assert_eq!(r["voters"], json!([1, 2, 3]), "{r}");
    let (code, out) = verify_with(&offline_receipt, &offline_receipt_bytes, &site_args);
    assert_eq!(code, Some(0), "{out}");

    // The Python verifier, on the same files.
    for (path, extra) in [
        (&export_path, &[][..]),
        (&export_path, &["--site-root", root_arg][..]),
        (
            &receipt_path,
            &["--site-root", root_arg, "--quorum", "2"][..],
        ),
        (&web_path, &["--site-root", root_arg][..]),
        (&offline, &["--site-root", root_arg][..]),
        (&offline_receipt, &["--site-root", root_arg][..]),
    ] {
        let (code, out, err) = crate::format::python_verify(path, extra);
        assert_eq!(code, 0, "{} {extra:?}: {out}{err}", path.display());
        assert!(out.contains("of its 3 voters"), "{out}");
    }
    let (code, _, err) = crate::format::python_verify(&stripped_path, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did not"), "{err}");
    // Against a head seen before (§9.4), both verifiers alike: the export cut at the checkpoint
    // extends the head gateway 1 served before the writes, the receipt is the export's tree,
    // and the receipt, newer than the served head, needs a consistency proof it does not carry.
    let head_before_path = dir.join("head-before.json");
    std::fs::write(&head_before_path, &head_before).expect("write head");
    for (path, known, code_want, want) in [
        (
            &export_path,
            &head_before_path,
            0,
            "this tree extends it by",
        ),
        (&receipt_path, &export_path, 0, "the same tree"),
        (&receipt_path, &head_before_path, 1, "--since-size"),
    ] {
        let known = known.to_str().expect("utf8");
        let bytes = std::fs::read(path).expect("read");
        let (code, out) = verify_with(path, &bytes, &["--known-head", known]);
        let (py_code, py_out, py_err) =
            crate::format::python_verify(path, &["--known-head", known]);
        assert_eq!(
            code,
            Some(code_want),
            "{} against {known}: {out}",
            path.display()
        );
        assert_eq!(
            py_code,
            code_want,
            "{} against {known}: {py_out}{py_err}",
            path.display()
        );
        assert!(
            out.contains(want) && format!("{py_out}{py_err}").contains(want),
            "{out}\n{py_out}{py_err}"
        );
    }
    let other_root = tempfile::tempdir().expect("tempdir");
    init_site_ca(other_root.path(), &CaInit::new("another hospital", "1")).expect("other ca");
    let other = other_root.path().join("root.crt");
    let (code, _, err) = crate::format::python_verify(
        &export_path,
        &["--site-root", other.to_str().expect("utf8")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not endorsed by the site root"), "{err}");

    // Gateway 1's key alone: a history of its own.
    let forged = dir.join("forged");
    std::fs::create_dir_all(&forged).expect("mkdir");
    std::fs::copy(nodes[0].dir.join("node.key"), forged.join("node.key")).expect("copy key");
    let events = dir.join("forged-events.jsonl");
    std::fs::write(
        &events,
        "{\"event_id\":\"f1\",\"kind\":\"calibration\",\"device_id\":\"pump-q0\"}\n",
    )
    .expect("write");
    let forged_dir = forged.display().to_string();
    medledger(&[
        "import",
        "--data-dir",
        &forged_dir,
        &events.display().to_string(),
    ])
    .await;
    let forged_export = dir.join("forged.jsonl");
    medledger(&[
        "ledger",
        "export",
        "--data-dir",
        &forged_dir,
        "--out",
        &forged_export.display().to_string(),
    ])
    .await;
    let forged_bytes = std::fs::read(&forged_export).expect("read");
    let (code, out) = verify_with(&forged_export, &forged_bytes, &args[..6]);
    assert_eq!(
        code,
        Some(0),
        "signed by a trusted key, it verifies alone: {out}"
    );
    let (code, out) = verify_with(&forged_export, &forged_bytes, &args);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("signed by node 1 only") && out.contains("2 gateways the quorum requires"),
        "{out}"
    );
}
