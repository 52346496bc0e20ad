//! A real Mosquitto configured by `certs::write_mosquitto_config`, driven with the real
//! `mosquitto_pub` / `mosquitto_sub`: a device publishes under its own topic; no certificate,
//! another CA's certificate, an expired and a revoked certificate are refused; a device cannot
//! publish under another device's topic.
//!
//! Fails (does not skip) when mosquitto or its clients are not installed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certs::{
    init_site_ca, CaInit, CertSpec, IssuingCa, MosquittoOptions, RevocationReason, Revoked,
    Validity,
};
use medledger_tests::mosquitto::{is_root, require, Mosquitto, DEADLINE};
use medledger_tests::ChildGuard;
use time::OffsetDateTime;

/// Run a command to completion, killing it after the deadline.
fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{cmd:?} did not finish within {DEADLINE:?}");
        }
    }
}

struct Client {
    cert: PathBuf,
    key: PathBuf,
}

fn write_client(dir: &Path, name: &str, issued: certs::IssuedCert) -> Client {
    let c = Client {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    issued.write_files(&c.cert, &c.key).expect("write client");
    c
}

fn publish(
    port: u16,
    cafile: &Path,
    client: Option<&Client>,
    id: &str,
    topic: &str,
    msg: &str,
) -> Output {
    let mut cmd = Command::new(require("mosquitto_pub"));
    cmd.args([
        "-h",
        "localhost",
        "-p",
        &port.to_string(),
        "-q",
        "1",
        "-i",
        id,
    ])
    .arg("--cafile")
    .arg(cafile)
    .args(["-t", topic, "-m", msg]);
    if let Some(c) = client {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    run(&mut cmd)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !f() {
        if Instant::now() > until {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn mosquitto_with_generated_config_enforces_identities() {
    require("mosquitto");
    require("mosquitto_pub");
    let sub_bin = require("mosquitto_sub");

    let dir = tempfile::tempdir().expect("tempdir");
    let ca: IssuingCa = init_site_ca(
        &dir.path().join("pki"),
        &CaInit::new("Test Hospital", "gw1"),
    )
    .expect("ca");
    let other = init_site_ca(&dir.path().join("other"), &CaInit::new("Elsewhere", "gw9"))
        .expect("other ca");
    let days = |n| Validity::days(n).expect("validity");
    let now = OffsetDateTime::now_utc();
    let clients = dir.path().join("clients");
    std::fs::create_dir_all(&clients).expect("clients dir");
    let issue = |spec: CertSpec, v: Validity| ca.issue(&spec, v).expect("issue");

    let gateway = write_client(&clients, "gw1", issue(CertSpec::gateway("gw1"), days(5)));
    let pump_a = write_client(
        &clients,
        "pump-a",
        issue(CertSpec::device("pump-a"), days(5)),
    );
    let pump_b = write_client(
        &clients,
        "pump-b",
        issue(CertSpec::device("pump-b"), days(5)),
    );
    let expired = write_client(
        &clients,
        "pump-old",
        issue(
            CertSpec::device("pump-old"),
            Validity::between(
                now - time::Duration::days(10),
                now - time::Duration::days(1),
            )
            .expect("validity"),
        ),
    );
    let revoked_cert = issue(CertSpec::device("pump-stolen"), days(5));
    let revoked_serial = revoked_cert.identity.serial.clone();
    let revoked = write_client(&clients, "pump-stolen", revoked_cert);
    let foreign = write_client(
        &clients,
        "pump-foreign",
        other
            .issue(&CertSpec::device("pump-a"), days(5))
            .expect("foreign"),
    );

    let crl = ca
        .build_crl(
            &[Revoked {
                serial: revoked_serial,
                revoked_at: now,
                reason: RevocationReason::KeyCompromise,
            }],
            now - time::Duration::minutes(1),
            now + time::Duration::days(1),
        )
        .expect("crl");
    let port = medledger_tests::free_port();
    let mut opts = MosquittoOptions::new(port, vec!["gw1".into()]);
    opts.bind_address = Some("127.0.0.1".into());
    if is_root() {
        opts.run_as_user = Some("root".into());
    }
    let files = certs::write_mosquitto_config(&ca, &dir.path().join("mosquitto"), &opts, &crl.pem)
        .expect("mosquitto config");

    let mut broker = Mosquitto::start(files.conf.clone(), port);

    // the gateway subscribes to everything under medledger/
    let mut sub = ChildGuard(
        Command::new(sub_bin)
            .args([
                "-h",
                "localhost",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-v",
                "-i",
                "gw1-sub",
            ])
            .arg("--cafile")
            .arg(&files.cafile)
            .arg("--cert")
            .arg(&gateway.cert)
            .arg("--key")
            .arg(&gateway.key)
            .args(["-t", "medledger/#"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub"),
    );
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let seen = seen.clone();
        let out = sub.0.stdout.take().expect("sub stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                seen.lock().expect("seen").push(line);
            }
        });
    }
    let has = |line: &str| seen.lock().expect("seen").iter().any(|l| l == line);

    // a device publishes under its own topic; repeat until the subscription is in place
    let topic_a = "medledger/devices/pump-a/telemetry";
    let mut n = 0;
    wait_until("the gateway to receive pump-a's telemetry", || {
        n += 1;
        let out = publish(
            port,
            &files.cafile,
            Some(&pump_a),
            "pump-a",
            topic_a,
            &format!("hello-{n}"),
        );
        assert!(
            out.status.success(),
            "pump-a publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
        has(&format!("{topic_a} hello-{n}"))
    });

    // refused at the TLS handshake: the publish fails and nothing arrives. The expired and the
    // revoked certificate differ from pump-a's, which works, only in validity and in being
    // listed in the CRL (Mosquitto logs all of these as "certificate verify failed").
    let cases: [(&str, Option<&Client>); 4] = [
        ("no certificate", None),
        ("another CA", Some(&foreign)),
        ("expired", Some(&expired)),
        ("revoked", Some(&revoked)),
    ];
    for (name, client) in cases {
        let msg = format!("from-{}", name.replace(' ', "-"));
        let out = publish(port, &files.cafile, client, "intruder", topic_a, &msg);
        assert!(
            !out.status.success(),
            "{name}: publish should be refused, stdout {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // device A tries device B's topic: the broker acknowledges (MQTT 3.1.1) but drops it
    let topic_b = "medledger/devices/pump-b/telemetry";
    let out = publish(
        port,
        &files.cafile,
        Some(&pump_a),
        "pump-a",
        topic_b,
        "spoofed-by-a",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // B's own message, published after A's attempt was acknowledged, marks the point in the
    // subscriber's ordered stream by which the spoofed one would have arrived
    let out = publish(
        port,
        &files.cafile,
        Some(&pump_b),
        "pump-b",
        topic_b,
        "marker-from-b",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("pump-b's own message", || {
        has(&format!("{topic_b} marker-from-b"))
    });

    let lines = seen.lock().expect("seen").clone();
    assert!(
        !lines.iter().any(|l| l.contains("spoofed-by-a")),
        "device A published under B's topic: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains(" from-")),
        "a refused client published: {lines:?}"
    );
    let log = broker.log();
    assert!(
        log.contains("Denied PUBLISH from pump-a"),
        "broker log does not show the ACL denial:\n{log}"
    );
    // mosquitto and mosquitto_sub are killed by their guards
    drop(sub);
    broker.kill();
}
