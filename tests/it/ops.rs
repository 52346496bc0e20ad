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

    // Three members: healthy, ready, and `medledger status` exits 0.
    let mut nodes = Vec::new();
    let mut health = Vec::new();
    for id in 1..=3 {
        let (g, h) = gateway_with_health(&site, id);
        nodes.push(g);
        health.push(h);
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
