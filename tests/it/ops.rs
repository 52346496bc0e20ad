//! Operations: health that tells the truth and metrics a monitoring system can read, against real
//! `medledger run` processes. `/healthz`, `/readyz` and `medledger status` fail on a gateway
//! never made a cluster member and on one that lost its quorum, and recover when it returns;
//! `/metrics` parses as the Prometheus text format.

use std::process::Command;
use std::time::Duration;

use certs::StaffRole;
use medledger_tests::cluster::{eventually, start_nodes, Gateway, Site};
use medledger_tests::{bin, free_port};
use serde_json::Value;

/// A gateway with a health listener on a free loopback port; returns it and that address.
pub(crate) fn gateway_with_health(site: &Site, id: u64) -> (Gateway, String) {
    let health = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::new(site, id, &format!("health_listen = \"{health}\""));
    (gw, health)
}

/// `GET http://{addr}{path}` on the plain health listener (HTTP/1.0 over a real TCP
/// connection): status and body.
pub(crate) async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .ok()
        .flatten()
}

/// `medledger status --config` of a gateway: exit code and output.
pub(crate) async fn status_cmd(gw: &Gateway) -> (i32, String) {
    let config = gw.config.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin("medledger"))
            .args(["status", "--config"])
            .arg(&config)
            .output()
            .expect("run medledger status")
    })
    .await
    .expect("join");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_status_follow_membership_and_quorum() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();

    // A gateway that was never made a cluster member is not healthy.
    let (mut lone, lone_health) = gateway_with_health(&site, 7);
    lone.start();
    let (code, body) = eventually(
        "the lone gateway's /healthz",
        Duration::from_secs(30),
        || {
            let a = lone_health.clone();
            async move { get(&a, "/healthz").await }
        },
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not a member"), "{body}");
    // The service started itself again so that mimalloc returns freed memory at once (the same
    // process id), unless the environment chose a delay.
    let pid = lone.child.as_ref().expect("running").0.id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let want = match std::env::var("MIMALLOC_PURGE_DELAY") {
        Ok(v) => format!("MIMALLOC_PURGE_DELAY={v}"),
        Err(_) => "MIMALLOC_PURGE_DELAY=0".to_owned(),
    };
    assert!(
        environ.split(|b| *b == 0).any(|v| v == want.as_bytes()),
        "the gateway runs without {want}"
    );
    let (code, _) = get(&lone_health, "/readyz").await.expect("readyz");
    assert_eq!(code, 503);
    let (code, out) = status_cmd(&lone).await;
    assert_eq!(code, 2, "medledger status on a lone gateway: {out}");
    assert!(
        out.contains("FAILING") && out.contains("not a member"),
        "{out}"
    );
    // SIGHUP (systemctl kill -s HUP) reloads telemetry; a gateway without telemetry must not
    // die of it (the signal's default action).
    let pid = lone.child.as_ref().expect("child").0.id();
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let answered = get(&lone_health, "/healthz").await;
    let exited = lone
        .child
        .as_mut()
        .expect("child")
        .0
        .try_wait()
        .expect("try_wait");
    assert!(
        answered.is_some() && exited.is_none(),
        "the gateway ended on SIGHUP: {exited:?}"
    );
    drop(lone);

    // Three members: healthy, ready, and `medledger status` exits 0. The first polls a
    // simulated Modbus device, with a rule that raises an alarm at its first value.
    let device = device_adapters::sim::SimDevice::new(
        "vent-ops",
        std::sync::Arc::new(
            device_adapters::profile::builtin_profile("infusion-pump").expect("profile"),
        ),
    );
    let sim = device_adapters::sim::ModbusSimServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        device,
        None,
    )
    .await
    .expect("modbus simulator");
    let telemetry = format!(
        "[[modbus]]\ndevice_id = \"vent-ops\"\naddress = \"{}\"\nprofile = \"infusion-pump\"\n\
         poll_interval_ms = 200\n[[rules]]\nname = \"flow-below-ops\"\nkind = \"below\"\n\
         metric = \"flow_rate\"\nlimit = 1000000.0\n",
        sim.local_addr()
    );
    let mut nodes = Vec::new();
    let mut health = Vec::new();
    for id in 1..=3 {
        let health_addr = format!("127.0.0.1:{}", free_port());
        let mut extra = format!("health_listen = \"{health_addr}\"\n");
        if id == 1 {
            extra.push_str(&telemetry);
        }
        nodes.push(Gateway::new(&site, id, &extra));
        health.push(health_addr);
    }
    let voters: Vec<(u64, String)> = nodes.iter().map(|g| (g.id, g.addr())).collect();
    let mut nodes = start_nodes(&site, nodes, &voters).await;
    for (g, h) in nodes.iter().zip(&health) {
        eventually(
            &format!("node {} healthy and ready", g.id),
            Duration::from_secs(30),
            || {
                let h = h.clone();
                async move {
                    let (c, _) = get(&h, "/readyz").await?;
                    let (c2, b) = get(&h, "/healthz").await?;
                    (c == 200 && c2 == 200).then_some(b)
                }
            },
        )
        .await;
    }
    let (code, out) = status_cmd(&nodes[2]).await;
    assert_eq!(code, 0, "medledger status on a healthy member: {out}");
    assert!(out.contains("OK") && out.contains("leader"), "{out}");

    // Metrics parse as the Prometheus text format and say what the cluster status says.
    let writer = site.staff_client("ops-biomed", StaffRole::Biomed);
    for i in 0..5 {
        let r = writer
            .post(format!("https://{}/v1/events", nodes[0].addr()))
            .json(&serde_json::json!({"kind": "inspection", "device_id": format!("pump-{i}")}))
            .send()
            .await
            .expect("post");
        assert!(r.status().is_success(), "{}", r.status());
    }
    // Refused TLS clients: a certificate from another CA (the client trusts this site's root),
    // and none at all.
    // (Another site's CA under other names: one with this site's names but another key is
    // refused as a bad signature.)
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = certs::init_site_ca(
        &other_dir.path().join("ca"),
        &certs::CaInit::new("another hospital", "9"),
    )
    .expect("other site ca");
    let issued = other
        .issue(
            &certs::CertSpec::staff("stranger", "stranger", StaffRole::Admin),
            certs::Validity::days(2).expect("validity"),
        )
        .expect("stranger certificate");
    let stranger_tls = certs::client_config(
        &[site.ca.root_der().clone()],
        &certs::CertifiedKey::from_pem(&issued.chain_pem, issued.key_pem.as_deref().expect("key"))
            .expect("stranger key"),
        &certs::RevocationPolicy::default(),
        &[],
    )
    .expect("client config");
    let stranger = reqwest::Client::builder()
        .use_preconfigured_tls((*stranger_tls).clone())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    assert!(stranger
        .get(format!("https://{}/v1/whoami", nodes[0].addr()))
        .send()
        .await
        .is_err());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(site.ca.root_der().clone()).expect("root");
    let no_cert = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let anonymous = reqwest::Client::builder()
        .use_preconfigured_tls(no_cert)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    assert!(anonymous
        .get(format!("https://{}/v1/whoami", nodes[0].addr()))
        .send()
        .await
        .is_err());
    // The rule's alarm is in the ledger (so it went through the outbox).
    let biomed = site.staff_client("ops-biomed", StaffRole::Biomed);
    eventually(
        "the Modbus rule's alarm in the ledger",
        Duration::from_secs(60),
        || {
            let (c, a) = (biomed.clone(), nodes[0].addr());
            async move {
                let h: Value = c
                    .get(format!("https://{a}/v1/devices/vent-ops/history"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (h.to_string().contains("alarm")).then_some(())
            }
        },
    )
    .await;
    let (code, text) = get(&health[0], "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("prometheus text format");
    let value = |name: &str, label: Option<(&str, &str)>| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let status: Value = site
        .staff_client("ops-admin", StaffRole::Admin)
        .get(format!("https://{}/cluster/status", nodes[0].addr()))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert!(
        value("medledger_ledger_entries", None).is_some_and(|v| v >= 5.0),
        "{text}"
    );
    assert_eq!(
        value("medledger_raft_term", None),
        status["term"].as_f64(),
        "{text}"
    );
    let role = status["state"].as_str().unwrap_or("").to_lowercase();
    assert_eq!(
        value("medledger_raft_role", Some(("role", &role))),
        Some(1.0),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("medledger_commit_latency_seconds")),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "medledger_certificate_expiry_timestamp_seconds"),
        "{text}"
    );

    for (name, label) in [
        (
            "medledger_tls_handshakes_refused_total",
            ("reason", "unknown_ca"),
        ),
        (
            "medledger_tls_handshakes_refused_total",
            ("reason", "no_certificate"),
        ),
        ("medledger_telemetry_samples_total", ("adapter", "modbus")),
        (
            "medledger_telemetry_rule_events_total",
            ("rule", "flow-below-ops"),
        ),
    ] {
        assert!(
            value(name, Some(label)).is_some_and(|v| v >= 1.0),
            "{name}{label:?} not counted: {text}"
        );
    }
    for name in [
        "medledger_outbox_events",
        "medledger_outbox_max_bytes",
        "medledger_disk_free_bytes",
        "medledger_disk_reserve_bytes",
    ] {
        assert!(value(name, None).is_some(), "{name} missing: {text}");
    }
    assert!(
        value("medledger_outbox_max_bytes", None).is_some_and(|v| v > 0.0),
        "{text}"
    );

    // Two of three voters gone: the last one has no quorum, and says so.
    nodes[0].kill();
    nodes[1].kill();
    let body = eventually(
        "node 3's /healthz to fail without a quorum",
        Duration::from_secs(60),
        || {
            let h = health[2].clone();
            async move {
                let (c, b) = get(&h, "/healthz").await?;
                (c == 503).then_some(b)
            }
        },
    )
    .await;
    assert!(body.contains("quorum"), "{body}");
    let (code, _) = get(&health[2], "/readyz").await.expect("readyz");
    assert_eq!(code, 503);
    let (code, out) = status_cmd(&nodes[2]).await;
    assert_eq!(code, 2, "medledger status without a quorum: {out}");

    // They come back: healthy again.
    nodes[0].start();
    nodes[1].start();
    eventually(
        "node 3's /healthz to recover with the quorum",
        Duration::from_secs(60),
        || {
            let h = health[2].clone();
            async move {
                let (c, _) = get(&h, "/healthz").await?;
                (c == 200).then_some(())
            }
        },
    )
    .await;
    let (code, out) = eventually(
        "medledger status to say OK",
        Duration::from_secs(30),
        || {
            let g = &nodes[2];
            async move {
                let (c, o) = status_cmd(g).await;
                (c == 0).then_some((c, o))
            }
        },
    )
    .await;
    assert_eq!(code, 0, "{out}");
}

/// Runs `line` (a command `medledger init` printed) with `sh`, the built `medledger` first on
/// the PATH: status and output.
fn sh(line: &str) -> (i32, String) {
    let dir = bin("medledger")
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    let path = format!("{dir}:{}", std::env::var("PATH").unwrap_or_default());
    let out = Command::new("sh")
        .args(["-c", line])
        .env("PATH", path)
        .output()
        .expect("sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The text of the printed next step that starts with `label`, up to `until` (or the line's
/// end).
fn step<'a>(out: &'a str, label: &str, until: &str) -> &'a str {
    let line = out
        .lines()
        .find_map(|l| l.split_once(label).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no next step {label:?} in: {out}"));
    line.split(until).next().unwrap_or(line).trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_makes_a_site_that_runs_and_refuses_to_overwrite_it() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let config = tmp.path().join("gateway.toml");
    let health = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &config,
        format!(
            "[node]\nid = 1\ndata_dir = \"{}\"\nwarn_free_mb = {}\n[api]\nlisten = \"127.0.0.1:{}\"\nhealth_listen = \"{health}\"\n",
            data.display(),
            medledger_tests::cluster::TEST_WARN_FREE_MB,
            free_port()
        ),
    )
    .expect("config");
    let init = format!(
        "medledger init --config {} --site \"Init Test Hospital\"",
        config.display()
    );
    let (code, out) = sh(&init);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("next steps:"), "{out}");
    let cert = std::fs::read(data.join("pki/gateway.crt")).expect("gateway.crt");

    // A second init refuses, says why, and leaves the site as it was.
    let (code, again) = sh(&init);
    assert_eq!(code, 73, "{again}");
    assert!(
        again.contains("already holds a site") && again.contains("refusing to overwrite"),
        "{again}"
    );
    assert_eq!(
        std::fs::read(data.join("pki/gateway.crt")).expect("gateway.crt"),
        cert
    );

    // The printed next steps, as printed: run, status, a staff certificate, a write.
    let run = step(&out, "start the gateway: ", "\n");
    assert!(run.starts_with("medledger run --config"), "{out}");
    let dir = bin("medledger");
    let args: Vec<&str> = run.split_whitespace().skip(1).collect();
    let _gateway = medledger_tests::ChildGuard(
        Command::new(&dir)
            .args(&args)
            .env("RUST_LOG", "warn,medledger=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("gateway.log")).expect("log file"))
            .spawn()
            .expect("medledger run"),
    );
    let status = step(&out, "check it: ", "   (").to_owned();
    eventually("medledger status OK", Duration::from_secs(60), || {
        let status = status.clone();
        async move {
            let (code, text) = tokio::task::spawn_blocking(move || sh(&status))
                .await
                .expect("join");
            (code == 0).then_some(text)
        }
    })
    .await;
    let (code, body) = get(&health, "/readyz").await.expect("readyz");
    assert_eq!(code, 200, "{body}");
    let issue = step(&out, "issue staff certificates: ", "\n")
        .replace("--id ID", "--id jo")
        .replace("\"NAME\"", "\"Jo Doe\"")
        .replace(
            "--out ID",
            &format!("--out {}", tmp.path().join("jo").display()),
        );
    let (code, text) = sh(&issue);
    assert_eq!(code, 0, "{issue}: {text}");
    let chain = std::fs::read_to_string(tmp.path().join("jo.crt")).expect("jo.crt");
    let key = std::fs::read_to_string(tmp.path().join("jo.key")).expect("jo.key");
    let root = std::fs::read(data.join("pki/root.crt")).expect("root.crt");
    let roots: Vec<_> = rustls_pemfile_roots(&root);
    let tls = certs::client_config(
        &roots,
        &certs::CertifiedKey::from_pem(&chain, &key).expect("staff key"),
        &certs::RevocationPolicy::default(),
        &[],
    )
    .expect("client config");
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let listen = std::fs::read_to_string(&config)
        .expect("config")
        .lines()
        .find_map(|l| {
            l.strip_prefix("listen = \"")
                .map(|r| r.trim_end_matches('"').to_owned())
        })
        .expect("listen");
    let r = client
        .post(format!("https://{listen}/v1/events"))
        .json(&serde_json::json!({"kind": "inspection", "device_id": "pump-init"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
}

/// The certificates of a PEM file, DER.
fn rustls_pemfile_roots(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("root pem")
}
