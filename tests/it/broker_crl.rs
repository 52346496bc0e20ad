//! The site broker's CRL kept fresh by the gateway (`[broker_crl]`, `[tls] crl_validity_s`),
//! with the real Mosquitto: a device revoked through the running gateway is refused by the
//! broker at its next connection with no manual step, and with a CRL lifetime of 20 s the broker
//! keeps accepting a valid device across several lifetimes, while a CRL left to expire (gateway
//! stopped) makes it refuse everyone. Also the systemd hook for sites whose gateway may not
//! signal the broker (`systemd/medledger-broker-crl.{path,service}`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use medledger_tests::mosquitto::{is_root, require, Mosquitto};
use medledger_tests::{bin, free_port, wait_for, workspace_root, ChildGuard};

/// CRL lifetime for these tests, seconds: the gateway renews every quarter of it.
const LIFETIME_S: u64 = 20;

fn medledger(args: &[&str]) -> String {
    let out = Command::new(bin("medledger"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run medledger");
    assert!(
        out.status.success(),
        "medledger {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// A device publishing one QoS 1 message on a new connection; whether the broker took it.
fn publish(port: u16, cafile: &Path, prefix: &Path, id: &str) -> Result<(), String> {
    let out = Command::new(require("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", &device_adapters::mqtt::telemetry_topic(id)])
        .args(["-m", r#"{"seq":1,"metrics":[{"name":"x","value":1}]}"#])
        .arg("--cafile")
        .arg(cafile)
        .arg("--cert")
        .arg(prefix.with_extension("crt"))
        .arg("--key")
        .arg(prefix.with_extension("key"))
        .output()
        .expect("mosquitto_pub");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// nextUpdate of a PEM CRL, as `openssl crl` prints it.
fn next_update(crl: &Path) -> String {
    let out = Command::new("openssl")
        .args(["crl", "-noout", "-nextupdate", "-in", s(crl)])
        .output()
        .expect("openssl crl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct Site {
    _dir: tempfile::TempDir,
    gw: PathBuf,
    config: PathBuf,
    api: String,
    mq: PathBuf,
    port: u16,
    pump_a: PathBuf,
    pump_b: PathBuf,
}

/// A gateway with its own CA (`ca init`), two device certificates, the broker's files
/// (`mosquitto-config`, plus a `pid_file` line as Debian's mosquitto.conf has), and a gateway
/// config whose `[broker_crl]` names the broker's crlfile and pid file.
fn site() -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = dir.path().join("gw");
    let mq = dir.path().join("mq");
    medledger(&["ca", "init", "--data-dir", s(&gw), "--node-id", "1"]);
    let pump_a = dir.path().join("pump-a");
    let pump_b = dir.path().join("pump-b");
    for (id, p) in [("pump-a", &pump_a), ("pump-b", &pump_b)] {
        medledger(&[
            "cert",
            "issue",
            "--data-dir",
            s(&gw),
            "--profile",
            "device",
            "--id",
            id,
            "--out",
            s(p),
        ]);
    }
    let port = free_port();
    let mut args = vec![
        "mosquitto-config".to_string(),
        "--data-dir".into(),
        s(&gw).into(),
        "--out".into(),
        s(&mq).into(),
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
    ];
    if is_root() {
        args.extend(["--run-as-user".into(), "root".into()]);
    }
    medledger(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let conf = mq.join("mosquitto.conf");
    let mut text = std::fs::read_to_string(&conf).expect("mosquitto.conf");
    text.push_str(&format!("pid_file {}\n", s(&mq.join("mosquitto.pid"))));
    std::fs::write(&conf, text).expect("mosquitto.conf");
    let api = format!("127.0.0.1:{}", free_port());
    let config = gw.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = 1\ndata_dir = \"{}\"\n[api]\nlisten = \"{api}\"\n[tls]\ncrl_validity_s = {LIFETIME_S}\n\
             [broker_crl]\nfile = \"{}\"\npid_file = \"{}\"\n",
            s(&gw),
            s(&mq.join("crl.pem")),
            s(&mq.join("mosquitto.pid")),
        ),
    )
    .expect("gateway.toml");
    Site {
        _dir: dir,
        gw,
        config,
        api,
        mq,
        port,
        pump_a,
        pump_b,
    }
}

fn start_gateway(site: &Site) -> ChildGuard {
    let log = std::fs::File::create(site.gw.join("gateway.log")).expect("log");
    let child = Command::new(bin("medledger"))
        .args(["run", "--config", s(&site.config)])
        .env("RUST_LOG", "warn,medledger=info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("medledger run");
    ChildGuard(child)
}

fn gateway_log(site: &Site) -> String {
    std::fs::read_to_string(site.gw.join("gateway.log")).unwrap_or_default()
}

/// Revocation through the running gateway reaches the broker without a restart or any manual
/// step; renewals keep a valid device accepted across three CRL lifetimes; and the control: once
/// the gateway is stopped, the broker's last CRL expires and the broker refuses every device.
#[test]
fn the_broker_refuses_a_revoked_device_and_keeps_a_fresh_crl() {
    require("mosquitto");
    let site = site();
    // The gateway first, so the broker's first CRL is already one of the short-lived ones (a
    // 7-day CRL loaded at start would stay valid in its store and hide a missed renewal).
    let mut gw = start_gateway(&site);
    let crl = site.mq.join("crl.pem");
    let first = next_update(&crl);
    wait_for(
        "the gateway to write the broker's CRL",
        Duration::from_secs(60),
        || {
            let n = next_update(&crl);
            (n != first && !n.is_empty()).then_some(())
        },
    );
    let broker = Mosquitto::start(site.mq.join("mosquitto.conf"), site.port);
    let cafile = site.mq.join("ca.crt");
    let out = Command::new(bin("medledger"))
        .args(["cluster", "init", "--config", s(&site.config)])
        .args(["--voter", &format!("1={}", site.api)])
        .output()
        .expect("cluster init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    publish(site.port, &cafile, &site.pump_a, "pump-a").expect("pump-a before revocation");

    // Three lifetimes: every connection of the valid device is accepted, and the CRL the broker
    // reads was renewed (its nextUpdate moved on).
    let start = Instant::now();
    let mut next_updates = std::collections::BTreeSet::new();
    while start.elapsed() < Duration::from_secs(3 * LIFETIME_S) {
        if let Err(e) = publish(site.port, &cafile, &site.pump_b, "pump-b") {
            panic!(
                "a valid device was refused after {:?}: {e}\nbroker:\n{}\ngateway:\n{}",
                start.elapsed(),
                broker.log(),
                gateway_log(&site)
            );
        }
        next_updates.insert(next_update(&crl));
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        next_updates.len() >= 3,
        "the broker's CRL was renewed: {next_updates:?}"
    );
    assert!(
        broker.log().matches("Reloading config.").count() >= 3,
        "the broker reloaded on SIGHUP:\n{}",
        broker.log()
    );

    // Revoked through the running gateway: refused at its next connection.
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(site.pump_a.with_extension("crt"))
        .output()
        .expect("openssl x509");
    let serial = String::from_utf8_lossy(&serial.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned();
    medledger(&[
        "cert",
        "revoke",
        "--config",
        s(&site.config),
        &serial,
        "--reason",
        "key-compromise",
    ]);
    wait_for(
        "the broker to refuse the revoked device",
        Duration::from_secs(30),
        || publish(site.port, &cafile, &site.pump_a, "pump-a").err(),
    );
    publish(site.port, &cafile, &site.pump_b, "pump-b").expect("pump-b after the revocation");

    // Control: with no gateway renewing it, the broker's CRL runs out and every device is
    // refused (what a 7-day CRL did to every site a week after start).
    gw.kill();
    wait_for(
        "the broker to refuse everyone once its CRL expired",
        Duration::from_secs(2 * LIFETIME_S + 30),
        || publish(site.port, &cafile, &site.pump_b, "pump-b").err(),
    );
}

/// The hook for a gateway that may not signal the broker (Debian: the gateway runs as
/// `medledger`, Mosquitto as `mosquitto`): a path unit on the gateway's crl.pem starts a oneshot
/// that copies it to the broker's crlfile and reloads mosquitto.service (whose ExecReload sends
/// SIGHUP). `systemd-analyze verify` finds nothing to complain about.
#[test]
fn the_broker_crl_units_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let units = dir.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).expect("units dir");
    for name in ["medledger-broker-crl.path", "medledger-broker-crl.service"] {
        std::fs::copy(
            workspace_root().join("systemd").join(name),
            units.join(name),
        )
        .expect(name);
    }
    let text = std::fs::read_to_string(units.join("medledger-broker-crl.path")).expect("path");
    assert!(
        text.contains("PathChanged=/var/lib/medledger/pki/crl.pem"),
        "{text}"
    );
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(units.join("medledger-broker-crl.path"))
        .arg(units.join("medledger-broker-crl.service"))
        .output()
        .expect("systemd-analyze");
    let noise = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !noise.contains("medledger-broker-crl"),
        "systemd-analyze verify: {}\n{noise}",
        out.status
    );
}
