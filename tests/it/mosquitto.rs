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

/// Telemetry received by our own subscriber (device-adapters) from the broker.
struct Gateway {
    rx: tokio::sync::mpsc::Receiver<device_adapters::AdapterEvent>,
    got: Vec<device_adapters::Telemetry>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<device_adapters::Result<()>>,
}

impl Gateway {
    /// Subscribes as gateway `gw` with its certificate, through TLS to the broker on `port`.
    fn start(ca: &IssuingCa, gw: &certs::IssuedCert, port: u16) -> Gateway {
        use device_adapters::mqtt::{BrokerAddr, MqttConfig, MqttSubscriber, MqttTransport};
        let key = certs::CertifiedKey::from_pem(
            &gw.chain_pem,
            gw.key_pem.as_deref().expect("gateway key"),
        )
        .expect("gateway key pair");
        let tls = certs::mqtt_client_config(&[ca.root_der().clone()], &key).expect("tls");
        let mut cfg = MqttConfig::new(
            BrokerAddr {
                host: "127.0.0.1".into(),
                port,
                transport: MqttTransport::Tls(tls),
            },
            "gw1-it",
        );
        cfg.backoff_initial = Duration::from_millis(50);
        cfg.backoff_max = Duration::from_millis(500);
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let sub = MqttSubscriber::new(cfg).expect("subscriber");
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(sub.run(tx, stop.clone()));
        Gateway {
            rx,
            got: Vec::new(),
            stop,
            task,
        }
    }

    fn drain(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            if let device_adapters::AdapterEvent::Telemetry(t) = ev {
                self.got.push(t);
            }
        }
    }

    /// Whether a value of `metric` from `device_id` arrived.
    fn has(&mut self, device_id: &str, metric: &str) -> bool {
        self.drain();
        self.got
            .iter()
            .any(|t| t.device_id == device_id && t.metric == metric)
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("join")
            .expect("subscriber ends cleanly");
    }
}

fn payload(metric: &str) -> String {
    format!(r#"{{"seq":1,"metrics":[{{"name":"{metric}","value":1}}]}}"#)
}

/// Makes `dir` and its contents reachable by other users (a tempdir is 0700), as an operator
/// would pick a directory Mosquitto can reach (e.g. /etc/mosquitto/medledger).
fn open_for_others(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udi_device_ids_publish_through_mosquitto_as_its_own_user_and_staff_is_denied() {
    require("mosquitto");
    require("mosquitto_pub");
    let dir = tempfile::tempdir().expect("tempdir");
    open_for_others(dir.path());
    let ca = init_site_ca(
        &dir.path().join("pki"),
        &CaInit::new("Test Hospital", "gw1"),
    )
    .expect("ca");
    let days = Validity::days(5).expect("validity");
    let clients = dir.path().join("clients");
    std::fs::create_dir_all(&clients).expect("clients dir");
    open_for_others(&clients);
    let issue = |spec: CertSpec| ca.issue(&spec, days).expect("issue");
    // the README's GS1 example, a HIBCC UDI (leading '+', an MQTT wildcard), a HIBCC UDI with
    // secondary data ('/' and '$'), an ISBT 128 product code and a plain asset id
    let ids = [
        "(01)00884838035249(21)PMP1",
        "+A123BJC5D6E71G",
        "+H123ABC01/$$32001510X3",
        "=<E0001V00",
        "pump-0042",
    ];
    let devices: Vec<(&str, Client)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                *id,
                write_client(&clients, &format!("dev{i}"), issue(CertSpec::device(*id))),
            )
        })
        .collect();
    let staff = write_client(
        &clients,
        "jdoe",
        issue(CertSpec::staff("jdoe", "J. Doe", certs::StaffRole::Biomed)),
    );
    let other_gw = write_client(&clients, "gw2", issue(CertSpec::gateway("gw2")));
    let gw = issue(CertSpec::gateway("gw1"));

    let now = OffsetDateTime::now_utc();
    let crl = ca
        .build_crl(
            &[],
            now - time::Duration::minutes(1),
            now + time::Duration::days(1),
        )
        .expect("crl");
    let port = medledger_tests::free_port();
    let mut opts = MosquittoOptions::new(port, vec!["gw1".into()]);
    opts.bind_address = Some("127.0.0.1".into());
    // as root (the tests' normal case) the files are written for Debian's mosquitto group and
    // the broker, started as root like Debian's service does, switches to the mosquitto user
    // before it reads the ACL; no `user root` workaround
    if is_root() {
        opts.group = Some(certs::mosquitto::DEBIAN_GROUP.into());
    }
    let files = certs::write_mosquitto_config(&ca, &dir.path().join("mosquitto"), &opts, &crl.pem)
        .expect("mosquitto config");
    if is_root() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let key = std::fs::metadata(&files.keyfile).expect("key");
        assert_eq!(key.permissions().mode() & 0o777, 0o640);
        let gid = certs::files::group_id("mosquitto")
            .expect("group")
            .expect("gid");
        assert_eq!(key.gid(), gid);
        let conf = std::fs::read_to_string(&files.conf).expect("conf");
        assert!(!conf.contains("\nuser "), "{conf}");
    }
    let broker = Mosquitto::start(files.conf.clone(), port);
    if is_root() {
        wait_until("mosquitto to switch to its own user", || {
            broker.process_user().as_deref() == Some("mosquitto")
        });
    }

    let mut gateway = Gateway::start(&ca, &gw, port);
    for (id, client) in &devices {
        let topic = certs::telemetry_topic(id);
        let client_id = certs::mqtt_segment(id);
        let until = Instant::now() + DEADLINE;
        // repeat until the subscription is in place
        while !gateway.has(id, "flow_rate") {
            assert!(
                Instant::now() < until,
                "{id}: telemetry on {topic} never reached the subscriber\n{}",
                broker.log()
            );
            let out = publish(
                port,
                &files.cafile,
                Some(client),
                &client_id,
                &topic,
                &payload("flow_rate"),
            );
            assert!(
                out.status.success(),
                "{id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // a staff certificate and another gateway's certificate try device topics: their own
    // "device" topic (what used to be accepted) and a real device's topic
    let attempts = [
        (
            &staff,
            "staff-jdoe",
            "medledger/devices/staff:jdoe/telemetry",
        ),
        (
            &staff,
            "staff-jdoe",
            "medledger/devices/pump-0042/telemetry",
        ),
        (&other_gw, "gw2", "medledger/devices/gateway:gw2/telemetry"),
        (&other_gw, "gw2", "medledger/devices/pump-0042/telemetry"),
    ];
    for (client, client_id, topic) in attempts {
        let out = publish(
            port,
            &files.cafile,
            Some(client),
            client_id,
            topic,
            &payload("intruder"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // a device's message published after the attempts were acknowledged marks the point in the
    // subscriber's ordered stream by which they would have arrived
    let (pump, pump_client) = &devices[4];
    let out = publish(
        port,
        &files.cafile,
        Some(pump_client),
        pump,
        &certs::telemetry_topic(pump),
        &payload("marker"),
    );
    assert!(out.status.success());
    let until = Instant::now() + DEADLINE;
    while !gateway.has(pump, "marker") {
        assert!(Instant::now() < until, "the marker never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.drain();
    assert!(
        !gateway.got.iter().any(|t| t.metric == "intruder"),
        "a staff or gateway certificate published device telemetry: {:?}",
        gateway
            .got
            .iter()
            .filter(|t| t.metric == "intruder")
            .collect::<Vec<_>>()
    );
    let log = broker.log();
    for client_id in ["staff-jdoe", "gw2"] {
        assert!(
            log.contains(&format!("Denied PUBLISH from {client_id}")),
            "no ACL denial for {client_id} in the broker log:\n{log}"
        );
    }
    // every device arrived under its own id and nothing else did
    let seen: std::collections::BTreeSet<&str> =
        gateway.got.iter().map(|t| t.device_id.as_str()).collect();
    assert_eq!(seen, ids.iter().copied().collect());
    gateway.stop().await;
}

/// JSON lines the simulator prints, collected by a reader thread.
fn collect_lines(out: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                l.lock().expect("lines").push(v);
            }
        }
    });
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_devices_each_have_their_own_certificate_and_denials_are_reported() {
    require("mosquitto");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = init_site_ca(
        &dir.path().join("pki"),
        &CaInit::new("Test Hospital", "gw1"),
    )
    .expect("ca");
    let days = Validity::days(5).expect("validity");
    let issue = |spec: CertSpec| ca.issue(&spec, days).expect("issue");
    // one certificate per simulated device, plus a staff certificate the broker must refuse
    // to let publish device telemetry (the file names decide the order: staff last)
    let ids_dir = dir.path().join("sim-ids");
    std::fs::create_dir(&ids_dir).expect("mkdir");
    let gs1 = "(01)00884838035249(21)PMP1";
    let hibcc = "+A123BJC5D6E71G";
    write_client(&ids_dir, "a-gs1", issue(CertSpec::device(gs1)));
    write_client(&ids_dir, "b-hibcc", issue(CertSpec::device(hibcc)));
    write_client(
        &ids_dir,
        "c-staff",
        issue(CertSpec::staff("jdoe", "J. Doe", certs::StaffRole::Biomed)),
    );
    // and a revoked device, which the broker refuses at the TLS handshake
    let stolen = issue(CertSpec::device("pump-stolen"));
    let stolen_serial = stolen.identity.serial.clone();
    write_client(&ids_dir, "d-stolen", stolen);
    let gw = issue(CertSpec::gateway("gw1"));
    let now = OffsetDateTime::now_utc();
    let crl = ca
        .build_crl(
            &[Revoked {
                serial: stolen_serial,
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
    let broker = Mosquitto::start(files.conf.clone(), port);
    let mut gateway = Gateway::start(&ca, &gw, port);

    let sim_bin = medledger_tests::bin("medledger-sim");
    let sim_args = |n: &str| -> Vec<String> {
        vec![
            "--mqtt".into(),
            n.into(),
            "--mqtt-host".into(),
            "127.0.0.1".into(),
            "--mqtt-port".into(),
            port.to_string(),
            "--mqtt-interval-ms".into(),
            "100".into(),
            "--mqtt-ca".into(),
            files.cafile.display().to_string(),
        ]
    };
    // one certificate for two devices is refused up front, naming the way out
    let out = Command::new(&sim_bin)
        .args(sim_args("2"))
        .arg("--mqtt-cert")
        .arg(ids_dir.join("a-gs1.crt"))
        .arg("--mqtt-key")
        .arg(ids_dir.join("a-gs1.key"))
        .output()
        .expect("run medledger-sim");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--mqtt-cert-dir"),
        "{err}"
    );

    let mut sim = ChildGuard(
        Command::new(&sim_bin)
            .args(sim_args("4"))
            .arg("--mqtt-cert-dir")
            .arg(&ids_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start medledger-sim"),
    );
    let lines = collect_lines(sim.0.stdout.take().expect("stdout"));
    let has_line =
        |f: &dyn Fn(&serde_json::Value) -> bool| lines.lock().expect("lines").iter().any(f);

    // both devices' telemetry reaches the subscriber under their own ids
    let until = Instant::now() + DEADLINE;
    let arrived = |g: &mut Gateway, id: &str| {
        g.drain();
        g.got.iter().any(|t| t.device_id == id)
    };
    while !(arrived(&mut gateway, gs1) && arrived(&mut gateway, hibcc)) {
        assert!(
            Instant::now() < until,
            "simulated devices' telemetry did not arrive: {:?}\n{}",
            gateway
                .got
                .iter()
                .map(|t| &t.device_id)
                .collect::<std::collections::BTreeSet<_>>(),
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the staff certificate's publishes are denied, and the simulator says so
    let until = Instant::now() + DEADLINE;
    while !has_line(&|v| v["event"] == "denied" && v["device_id"] == "jdoe") {
        assert!(
            Instant::now() < until,
            "no denial reported: {:?}",
            lines.lock().expect("lines")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the revoked device's refused connection is reported too
    let until = Instant::now() + DEADLINE;
    while !has_line(&|v| v["event"] == "connect_failed" && v["device_id"] == "pump-stolen") {
        assert!(
            Instant::now() < until,
            "no refused connection reported: {:?}",
            lines.lock().expect("lines")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !has_line(&|v| v["event"] == "connect_failed" && v["device_id"] != "pump-stolen"),
        "a good identity's connection failed: {:?}",
        lines.lock().expect("lines")
    );
    assert!(
        !has_line(&|v| v["event"] == "denied" && v["device_id"] != "jdoe"),
        "a device's own publish was reported denied: {:?}",
        lines.lock().expect("lines")
    );
    {
        use std::io::Write;
        let stdin = sim.0.stdin.as_mut().expect("stdin");
        writeln!(stdin, "quit").expect("quit");
    }
    let until = Instant::now() + DEADLINE;
    while sim.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < until, "medledger-sim did not quit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the stdout reader may still be draining the last lines after exit
    let stats = |id: &str| {
        let until = Instant::now() + DEADLINE;
        loop {
            let found = lines
                .lock()
                .expect("lines")
                .iter()
                .find(|v| v["event"] == "mqtt_stats" && v["device_id"] == id)
                .cloned();
            if let Some(v) = found {
                return v;
            }
            assert!(Instant::now() < until, "no mqtt_stats line for {id}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for id in [gs1, hibcc] {
        let s = stats(id);
        assert!(
            s["acked"].as_u64() > Some(0) && s["denied"] == 0,
            "{id}: {s}"
        );
    }
    let s = stats("jdoe");
    assert!(
        s["denied"].as_u64() > Some(0) && s["acked"] == 0,
        "jdoe: {s}"
    );
    let s = stats("pump-stolen");
    assert!(
        s["connect_failures"].as_u64() > Some(0) && s["acked"] == 0,
        "pump-stolen: {s}"
    );
    assert!(
        !gateway.has("pump-stolen", "flow_rate"),
        "the revoked device's telemetry arrived"
    );
    assert!(broker.log().contains("Denied PUBLISH from sim-jdoe"));
    gateway.stop().await;
}
