//! The identity CLI of the real `medledger` binary: `ca init`, `cert issue` of every profile
//! checked with `openssl verify`, a malformed UDI refused with the reason, `cert revoke` + `cert
//! crl` checked with `openssl crl` and `-crl_check`, the ledger entries read back from the store,
//! `device add`, a cluster member's directory refused, `mosquitto-config` run as printed by a
//! real Mosquitto (as the mosquitto user, also included from Debian's own config) that accepts
//! a device and refuses the revoked one, and a Modbus/TCP Security server certificate verified
//! by address with OpenSSL and rustls.

use std::path::Path;
use std::process::{Command, Output};

use ledger_node::entry::EventKind;
use ledger_node::Store;
use medledger_tests::bin;
use medledger_tests::mosquitto::{is_root, require, Mosquitto, DEADLINE};

fn medledger(args: &[&str]) -> Output {
    Command::new(bin("medledger"))
        .args(args)
        .output()
        .expect("run medledger")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs medledger and requires success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = medledger(args);
    assert!(
        out.status.success(),
        "medledger {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `openssl verify` of a chain file (leaf + issuing + root) against the root, for a purpose.
fn verify(root: &Path, chain: &Path, purpose: &str, crl: Option<&Path>) -> Output {
    let mut args = vec![
        "verify",
        "-CAfile",
        s(root),
        "-untrusted",
        s(chain),
        "-purpose",
        purpose,
    ];
    if let Some(crl) = crl {
        args.extend(["-crl_check", "-CRLfile", s(crl)]);
    }
    args.push(s(chain));
    openssl(&args)
}

fn serial_of(cert: &Path) -> String {
    let out = openssl(&["x509", "-in", s(cert), "-noout", "-serial"]);
    assert!(out.status.success());
    text(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase()
}

/// (kind, device_id) of every entry of the data directory's single-node ledger.
fn ledger_entries(data: &Path) -> Vec<(EventKind, String)> {
    let store = Store::open(&data.join("ledger")).expect("open ledger store");
    (0..store.size())
        .map(|seq| {
            let e = store.entry(seq).expect("entry");
            (e.body.kind, e.body.device_id)
        })
        .collect()
}

#[test]
fn ca_init_issue_every_profile_revoke_and_crl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let d = s(&data);
    let pki = data.join("pki");
    let root = pki.join("root.crt");

    let out = ok(&[
        "ca",
        "init",
        "--data-dir",
        d,
        "--site",
        "Test Hospital",
        "--node-id",
        "gw1",
        "--dns",
        "gw1.example",
    ]);
    assert!(out.contains("gateway:gw1"), "{out}");
    assert!(
        !out.contains("PRIVATE KEY"),
        "a private key was printed:\n{out}"
    );
    let gw = pki.join("gateway.crt");
    let v = verify(&root, &gw, "sslserver", None);
    assert!(
        v.status.success(),
        "gateway.crt: {}{}",
        text(&v.stdout),
        text(&v.stderr)
    );
    let x = text(&openssl(&["x509", "-in", s(&gw), "-noout", "-text"]).stdout);
    assert!(
        x.contains("DNS:gw1.example")
            && x.contains("IP Address:127.0.0.1")
            && x.contains("DNS:localhost"),
        "{x}"
    );
    // a second init refuses to overwrite the CA
    let again = medledger(&["ca", "init", "--data-dir", d]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("refusing to overwrite"),
        "{}",
        text(&again.stderr)
    );

    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let prefix = |n: &str| out_dir.join(n);
    let issue = |extra: &[&str], name: &str| -> String {
        let p = prefix(name);
        let mut args = vec!["cert", "issue", "--data-dir", d, "--out", s(&p)];
        args.extend_from_slice(extra);
        ok(&args)
    };
    let out = issue(
        &[
            "--profile",
            "device",
            "--id",
            "pump-0042",
            "--modbus-role",
            "operator",
        ],
        "pump",
    );
    assert!(out.contains("certificate-issued recorded"), "{out}");
    issue(
        &["--profile", "device", "--id", "(01)00884838035249(21)SN1"],
        "udi",
    );
    issue(
        &[
            "--profile",
            "staff",
            "--id",
            "e1234",
            "--role",
            "biomed",
            "--name",
            "Ann Smith",
        ],
        "ann",
    );
    issue(
        &["--profile", "gateway", "--id", "gw2", "--ip", "10.0.0.2"],
        "gw2",
    );
    for (name, purpose) in [
        ("pump", "sslclient"),
        ("udi", "sslclient"),
        ("ann", "sslclient"),
        ("gw2", "sslserver"),
        ("gw2", "sslclient"),
    ] {
        let crt = prefix(&format!("{name}.crt"));
        let v = verify(&root, &crt, purpose, None);
        assert!(
            v.status.success(),
            "{name} {purpose}: {}{}",
            text(&v.stdout),
            text(&v.stderr)
        );
        let key = prefix(&format!("{name}.key"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).expect("key").permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    let x = text(&openssl(&["x509", "-in", s(&prefix("ann.crt")), "-noout", "-subject"]).stdout);
    assert!(
        x.contains("OU = biomed") && x.contains("CN = staff:e1234"),
        "{x}"
    );

    // a malformed UDI (wrong GTIN check digit) is refused with the reason; nothing is written
    let bad = medledger(&[
        "cert",
        "issue",
        "--data-dir",
        d,
        "--profile",
        "device",
        "--id",
        "(01)00884838035243",
        "--out",
        s(&prefix("bad")),
    ]);
    assert!(!bad.status.success());
    let err = text(&bad.stderr);
    assert!(err.contains("gtin check digit is 3, expected 9"), "{err}");
    assert!(!prefix("bad.crt").exists() && !prefix("bad.key").exists());
    // a staff certificate without a role is refused, naming the flag
    let norole = medledger(&[
        "cert",
        "issue",
        "--data-dir",
        d,
        "--profile",
        "staff",
        "--id",
        "e9",
        "--out",
        s(&prefix("e9")),
    ]);
    assert!(
        !norole.status.success() && text(&norole.stderr).contains("--role"),
        "{}",
        text(&norole.stderr)
    );

    // revoke the pump, then the CRL lists exactly its serial and openssl refuses it
    let pump_serial = serial_of(&prefix("pump.crt"));
    let ann_serial = serial_of(&prefix("ann.crt"));
    let out = ok(&[
        "cert",
        "revoke",
        "--data-dir",
        d,
        &pump_serial.to_uppercase(),
        "--reason",
        "key-compromise",
    ]);
    assert!(
        out.contains("pump-0042") && out.contains("key-compromise"),
        "{out}"
    );
    assert!(pki.join("crl.pem").exists());
    let out = ok(&[
        "cert",
        "revoke",
        "--data-dir",
        d,
        &pump_serial,
        "--reason",
        "superseded",
    ]);
    assert!(out.contains("already revoked"), "{out}");
    let unknown = medledger(&[
        "cert",
        "revoke",
        "--data-dir",
        d,
        "0badc0de",
        "--reason",
        "superseded",
    ]);
    assert!(
        !unknown.status.success() && text(&unknown.stderr).contains("0badc0de"),
        "{}",
        text(&unknown.stderr)
    );
    let bad_reason = medledger(&[
        "cert",
        "revoke",
        "--data-dir",
        d,
        &ann_serial,
        "--reason",
        "stolen",
    ]);
    assert!(!bad_reason.status.success() && text(&bad_reason.stderr).contains("stolen"));

    let crl = dir.path().join("crl.pem");
    ok(&["cert", "crl", "--data-dir", d, "--out", s(&crl)]);
    // CRL numbers only grow (RFC 5280 5.2.3), also for CRLs made right after each other
    let crl_number = |p: &Path| -> u128 {
        let t = text(&openssl(&["crl", "-in", s(p), "-noout", "-crlnumber"]).stdout);
        let hex = t
            .trim()
            .trim_start_matches("crlNumber=")
            .trim_start_matches("0x");
        u128::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("crl number {t:?}"))
    };
    let crl2 = dir.path().join("crl2.pem");
    ok(&["cert", "crl", "--data-dir", d, "--out", s(&crl2)]);
    assert!(
        crl_number(&crl2) > crl_number(&crl),
        "crl numbers {} then {}",
        crl_number(&crl),
        crl_number(&crl2)
    );
    // and above the CRL `cert revoke` wrote into pki/ before
    assert!(crl_number(&crl) > crl_number(&pki.join("crl.pem")));
    let t = text(&openssl(&["crl", "-in", s(&crl), "-noout", "-text"]).stdout).to_lowercase();
    assert!(t.contains(&pump_serial), "crl lacks {pump_serial}:\n{t}");
    assert!(
        !t.contains(&ann_serial),
        "crl lists a certificate that was not revoked:\n{t}"
    );
    assert!(t.contains("key compromise"), "{t}");
    // openssl with CRL checking: the revoked pump fails, the staff certificate passes. The CRL
    // is for the issuing CA; the root's own CRL is not distributed, so check the leaf only.
    let with_crl = |name: &str| {
        let c = prefix(&format!("{name}.crt"));
        openssl(&[
            "verify",
            "-CAfile",
            s(&root),
            "-untrusted",
            s(&c),
            "-crl_check",
            "-CRLfile",
            s(&crl),
            s(&c),
        ])
    };
    let v = with_crl("pump");
    let said = format!("{}{}", text(&v.stdout), text(&v.stderr));
    assert!(!v.status.success() && said.contains("revoked"), "{said}");
    let v = with_crl("ann");
    assert!(v.status.success(), "{}{}", text(&v.stdout), text(&v.stderr));

    // the ledger holds one certificate-issued entry per certificate and one revocation
    let entries = ledger_entries(&data);
    let issued: Vec<&str> = entries
        .iter()
        .filter(|(k, _)| *k == EventKind::CertificateIssued)
        .map(|(_, d)| d.as_str())
        .collect();
    assert_eq!(
        issued,
        vec![
            "gateway:gw1",
            "pump-0042",
            "(01)00884838035249(21)SN1",
            "staff:e1234",
            "gateway:gw2"
        ]
    );
    let revoked: Vec<&str> = entries
        .iter()
        .filter(|(k, _)| *k == EventKind::CertificateRevoked)
        .map(|(_, d)| d.as_str())
        .collect();
    assert_eq!(revoked, vec!["pump-0042"]);

    // a cluster member's data directory is refused, with the way out named
    std::fs::create_dir(data.join("sled")).expect("mkdir sled");
    let refused = medledger(&[
        "cert",
        "issue",
        "--data-dir",
        d,
        "--profile",
        "device",
        "--id",
        "pump-9",
        "--out",
        s(&prefix("p9")),
    ]);
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(
        err.contains("cluster member") && err.contains("--config"),
        "{err}"
    );
    assert!(
        !prefix("p9.crt").exists(),
        "a certificate was issued although it could not be recorded"
    );
}

#[test]
fn device_add_prints_a_one_time_token_stored_only_as_a_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let d = s(&data);
    // without a CA there is nothing to enroll with
    let early = medledger(&["device", "add", "--data-dir", d, "--id", "pump-1"]);
    assert!(
        !early.status.success() && text(&early.stderr).contains("ca init"),
        "{}",
        text(&early.stderr)
    );
    ok(&["ca", "init", "--data-dir", d, "--node-id", "gw1"]);
    let out = ok(&[
        "device",
        "add",
        "--data-dir",
        d,
        "--id",
        "pump-1",
        "--ttl-hours",
        "2",
        "--modbus-role",
        "operator",
    ]);
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("mlt_"))
        .unwrap_or_else(|| panic!("no token in:\n{out}"));
    assert_eq!(token.len(), 4 + 64, "{token}");
    assert!(
        out.contains("valid until") && out.contains("/enroll"),
        "{out}"
    );
    let stored = std::fs::read_to_string(data.join("pki/tokens.json")).expect("tokens.json");
    assert!(
        stored.contains("pump-1") && !stored.contains(token),
        "{stored}"
    );
    let bad = medledger(&[
        "device",
        "add",
        "--data-dir",
        d,
        "--id",
        "(01)00884838035243",
    ]);
    assert!(
        !bad.status.success() && text(&bad.stderr).contains("check digit"),
        "{}",
        text(&bad.stderr)
    );
    let bad = medledger(&[
        "device",
        "add",
        "--data-dir",
        d,
        "--id",
        "pump-2",
        "--ttl-hours",
        "0",
    ]);
    assert!(
        !bad.status.success() && text(&bad.stderr).contains("--ttl-hours"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn mosquitto_config_from_the_cli_runs_and_enforces_the_ledger_crl() {
    require("mosquitto");
    let publisher = require("mosquitto_pub");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let d = s(&data);
    ok(&["ca", "init", "--data-dir", d, "--node-id", "gw1"]);
    let good = dir.path().join("pump-a");
    let stolen = dir.path().join("pump-b");
    ok(&[
        "cert",
        "issue",
        "--data-dir",
        d,
        "--profile",
        "device",
        "--id",
        "pump-a",
        "--out",
        s(&good),
    ]);
    ok(&[
        "cert",
        "issue",
        "--data-dir",
        d,
        "--profile",
        "device",
        "--id",
        "pump-b",
        "--out",
        s(&stolen),
    ]);
    let serial = serial_of(&stolen.with_extension("crt"));
    ok(&[
        "cert",
        "revoke",
        "--data-dir",
        d,
        &serial,
        "--reason",
        "key-compromise",
    ]);

    let port = medledger_tests::free_port();
    // the operator picks a directory Mosquitto can reach (a tempdir is 0700)
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let conf_dir = dir.path().join("mosquitto");
    let port_s = port.to_string();
    let me = text(&Command::new("id").arg("-un").output().expect("id").stdout)
        .trim()
        .to_string();
    let mut args = vec![
        "mosquitto-config",
        "--data-dir",
        d,
        "--out",
        s(&conf_dir),
        "--port",
        &port_s,
        "--bind",
        "127.0.0.1",
    ];
    // as root, nothing but the defaults: the files are for Debian's mosquitto group and the
    // broker runs as the mosquitto user. Not as root, the caller cannot give files to that
    // group, so the broker runs as the caller.
    if !is_root() {
        args.extend(["--run-as-user", &me]);
    }
    let cfg_out = ok(&args);
    assert!(cfg_out.contains("gw1"), "{cfg_out}");
    if is_root() {
        assert!(cfg_out.contains("group mosquitto"), "{cfg_out}");
    }
    let crl = text(
        &openssl(&[
            "crl",
            "-in",
            s(&conf_dir.join("crl.pem")),
            "-noout",
            "-text",
        ])
        .stdout,
    )
    .to_lowercase();
    assert!(crl.contains(&serial), "{crl}");

    // started as printed ("start it with: mosquitto -c ..."): as root it switches to the
    // mosquitto user before it reads the ACL
    let printed = out_line(&cfg_out, "start it with: ");
    assert_eq!(
        printed,
        format!("mosquitto -c {}", conf_dir.join("mosquitto.conf").display())
    );
    let mut broker = Mosquitto::start(conf_dir.join("mosquitto.conf"), port);
    if is_root() {
        medledger_tests::wait_for("mosquitto to run as its own user", DEADLINE, || {
            (broker.process_user().as_deref() == Some("mosquitto")).then_some(())
        });
    }
    let publish = |client: &Path, id: &str| -> Output {
        Command::new(&publisher)
            .args(["-h", "localhost", "-p", &port_s, "-q", "1", "-i", id, "-t"])
            .arg(format!("medledger/devices/{id}/telemetry"))
            .args(["-m", "1"])
            .arg("--cafile")
            .arg(conf_dir.join("ca.crt"))
            .arg("--cert")
            .arg(client.with_extension("crt"))
            .arg("--key")
            .arg(client.with_extension("key"))
            .output()
            .expect("mosquitto_pub")
    };
    let out = publish(&good, "pump-a");
    assert!(
        out.status.success(),
        "pump-a refused: {}",
        text(&out.stderr)
    );
    let out = publish(&stolen, "pump-b");
    assert!(
        !out.status.success(),
        "the revoked pump-b was accepted by the broker"
    );
    broker.kill();
    if !is_root() {
        return;
    }

    // the same files, read by mosquitto running as the mosquitto user from the start
    let mut broker = Mosquitto::start_as(conf_dir.join("mosquitto.conf"), port, Some("mosquitto"));
    assert_eq!(broker.process_user().as_deref(), Some("mosquitto"));
    let out = publish(&good, "pump-a");
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        broker.log()
    );
    broker.kill();

    // and as printed for Debian's service: Debian's own /etc/mosquitto/mosquitto.conf as
    // installed, with only its pid, log, persistence and conf.d paths moved into the test's
    // directory, including the generated file from conf.d through a symlink
    let printed = out_line(&cfg_out, "or with Debian's mosquitto service: ");
    assert!(
        printed.starts_with(&format!(
            "ln -s {} /etc/mosquitto/conf.d/",
            conf_dir.join("mosquitto.conf").display()
        )),
        "{printed}"
    );
    let deb = dir.path().join("debian");
    let conf_d = deb.join("conf.d");
    std::fs::create_dir_all(&conf_d).expect("mkdir");
    std::os::unix::fs::symlink(
        conf_dir.join("mosquitto.conf"),
        conf_d.join("medledger.conf"),
    )
    .expect("symlink");
    let own = Command::new("chown")
        .args(["-R", "mosquitto:mosquitto"])
        .arg(&deb)
        .status()
        .expect("chown");
    assert!(own.success());
    let installed =
        std::fs::read_to_string("/etc/mosquitto/mosquitto.conf").expect("debian's mosquitto.conf");
    let mut main = installed.clone();
    for (from, to) in [
        (
            "pid_file /run/mosquitto/mosquitto.pid".to_string(),
            format!("pid_file {}", deb.join("mosquitto.pid").display()),
        ),
        (
            "persistence_location /var/lib/mosquitto/".to_string(),
            format!("persistence_location {}/", deb.display()),
        ),
        (
            "log_dest file /var/log/mosquitto/mosquitto.log".to_string(),
            "log_dest stderr".to_string(),
        ),
        (
            "include_dir /etc/mosquitto/conf.d".to_string(),
            format!("include_dir {}", conf_d.display()),
        ),
    ] {
        assert!(
            main.contains(&from),
            "{from:?} not in debian's config:\n{installed}"
        );
        main = main.replace(&from, &to);
    }
    let main_conf = deb.join("mosquitto.conf");
    std::fs::write(&main_conf, main).expect("write");
    let mut broker = Mosquitto::start(main_conf, port);
    medledger_tests::wait_for("mosquitto to run as its own user", DEADLINE, || {
        (broker.process_user().as_deref() == Some("mosquitto")).then_some(())
    });
    let out = publish(&good, "pump-a");
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        broker.log()
    );
    let out = publish(&stolen, "pump-b");
    assert!(!out.status.success());
    broker.kill();
}

fn out_line(out: &str, prefix: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{out}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_server_certificate_verifies_by_address() {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let d = s(&data);
    ok(&["ca", "init", "--data-dir", d, "--node-id", "gw1"]);
    let root = data.join("pki/root.crt");
    let p = dir.path().join("pump-77");
    // names only for a Modbus/TCP Security server
    let refused = medledger(&[
        "cert",
        "issue",
        "--data-dir",
        d,
        "--profile",
        "device",
        "--id",
        "pump-77",
        "--dns",
        "pump-77.devices.local",
        "--out",
        s(&p),
    ]);
    assert!(
        !refused.status.success() && text(&refused.stderr).contains("--modbus-server"),
        "{}",
        text(&refused.stderr)
    );
    ok(&[
        "cert",
        "issue",
        "--data-dir",
        d,
        "--profile",
        "device",
        "--id",
        "pump-77",
        "--modbus-server",
        "--modbus-role",
        "operator",
        "--dns",
        "pump-77.devices.local",
        "--ip",
        "127.0.0.1",
        "--out",
        s(&p),
    ]);
    let crt = p.with_extension("crt");
    let by = |how: &str, what: &str| {
        openssl(&[
            "verify",
            "-CAfile",
            s(&root),
            "-untrusted",
            s(&crt),
            "-purpose",
            "sslserver",
            how,
            what,
            s(&crt),
        ])
    };
    for (how, what, good) in [
        ("-verify_ip", "127.0.0.1", true),
        ("-verify_hostname", "pump-77.devices.local", true),
        ("-verify_ip", "10.9.9.9", false),
        ("-verify_hostname", "other.devices.local", false),
    ] {
        let v = by(how, what);
        assert_eq!(
            v.status.success(),
            good,
            "{how} {what}: {}{}",
            text(&v.stdout),
            text(&v.stderr)
        );
    }

    // rustls: a TLS server with this certificate, dialled by address and by name
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt)
        .expect("chain")
        .collect::<Result<_, _>>()
        .expect("chain pem");
    let key = PrivateKeyDer::from_pem_file(p.with_extension("key")).expect("key");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&root).expect("root") {
        roots.add(c.expect("root pem")).expect("add root");
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let dial = |name: ServerName<'static>| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
                .await
                .expect("handshake timed out")
        }
    };
    for name in ["127.0.0.1", "pump-77.devices.local"] {
        let sn = ServerName::try_from(name.to_string()).expect("server name");
        dial(sn)
            .await
            .unwrap_or_else(|e| panic!("rustls refused the modbus server as {name}: {e}"));
    }
    for name in ["127.0.0.2", "other.devices.local"] {
        let sn = ServerName::try_from(name.to_string()).expect("server name");
        assert!(
            dial(sn).await.is_err(),
            "rustls accepted the server as {name}"
        );
    }
}
