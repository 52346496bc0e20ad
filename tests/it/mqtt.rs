//! MQTT subscriber against a real Mosquitto broker (Debian package `mosquitto`), with TLS
//! certificates from our own CA and with a broker restart.

use std::{
    collections::BTreeSet,
    io::Write,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use device_adapters::{
    mqtt::{BrokerAddr, MqttConfig, MqttStats, MqttSubscriber, MqttTransport},
    AdapterEvent, Telemetry, TimestampSource, Value,
};
use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use medledger_tests::free_port;
use medledger_tests::mosquitto::{require, Mosquitto, DEADLINE};

/// mosquitto_pub one message per line of `payloads`, QoS 1, with extra args (TLS options).
fn publish(port: u16, topic: &str, payloads: &[String], extra: &[String]) {
    let mut child = Command::new(require("mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-l",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mosquitto_pub");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for p in payloads {
            writeln!(stdin, "{p}").expect("write to mosquitto_pub");
        }
    }
    let out = child.wait_with_output().expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn good(seq: u64, flow: f64) -> String {
    format!(
        r#"{{"seq":{seq},"ts":"2025-03-01T10:00:00Z","metrics":[{{"name":"flow_rate","value":{flow},"unit":"mL/h"}},{{"name":"occlusion","value":false}}]}}"#
    )
}

async fn recv_until(
    rx: &mut mpsc::Receiver<AdapterEvent>,
    what: &str,
    got: &mut Vec<Telemetry>,
    mut done: impl FnMut(&[Telemetry]) -> bool,
) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while !done(got) {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(AdapterEvent::Telemetry(t))) => got.push(t),
            Ok(Some(_)) => {}
            Ok(None) => panic!("channel closed waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; got {} values", got.len()),
        }
    }
}

fn spawn_sub(
    cfg: MqttConfig,
    tx: mpsc::Sender<AdapterEvent>,
) -> (
    Arc<MqttStats>,
    CancellationToken,
    tokio::task::JoinHandle<device_adapters::Result<()>>,
) {
    let sub = MqttSubscriber::new(cfg).expect("subscriber");
    let stats = sub.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(sub.run(tx, stop.clone()));
    (stats, stop, task)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_our_ca_good_payloads_flow_bad_ones_are_counted_and_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let ca =
        certs::init_site_ca(&ca_dir, &certs::CaInit::new("Test Hospital", "gw1")).expect("site ca");
    let validity = || certs::Validity::days(1).expect("validity");
    let broker_cert = ca
        .issue(&certs::CertSpec::service("broker"), validity())
        .expect("broker cert");
    let gw_cert = ca
        .issue(&certs::CertSpec::gateway("gw1"), validity())
        .expect("gateway cert");
    let dev_cert = ca
        .issue(&certs::CertSpec::device("pump-0042"), validity())
        .expect("device cert");
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("root.pem"), ca.root_pem()).expect("root");
    broker_cert
        .write_files(&p("broker.pem"), &p("broker.key"))
        .expect("broker files");
    dev_cert
        .write_files(&p("dev.pem"), &p("dev.key"))
        .expect("device files");

    let port = free_port();
    let broker = Mosquitto::with_config(
        p("mosquitto.conf"),
        port,
        &format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n",
            p("root.pem").display(),
            p("broker.pem").display(),
            p("broker.key").display()
        ),
    );

    // The gateway's client config from our CA: trust the site root, present the gateway chain.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der().clone()).expect("root");
    let key = PrivateKeyDer::from_pem_slice(gw_cert.key_pem.as_deref().expect("key").as_bytes())
        .expect("key pem");
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(gw_cert.chain_der.clone(), key)
        .expect("client config");
    let broker_addr = BrokerAddr {
        host: "127.0.0.1".into(),
        port,
        transport: MqttTransport::Tls(Arc::new(client)),
    };
    let mut cfg = MqttConfig::new(broker_addr, "gw1-tls-test");
    cfg.max_payload_bytes = 1024;
    let (tx, mut rx) = mpsc::channel(64);
    let (stats, stop, task) = spawn_sub(cfg, tx);

    let topic = "medledger/devices/pump-0042/telemetry";
    let tls_args: Vec<String> = vec![
        "--cafile".into(),
        p("root.pem").display().to_string(),
        "--cert".into(),
        p("dev.pem").display().to_string(),
        "--key".into(),
        p("dev.key").display().to_string(),
    ];
    // Until the subscription is in place, publish probes; the first that arrives proves it.
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + DEADLINE;
    while stats.snapshot().delivered_messages == 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "no probe arrived over TLS: {:?}",
            stats.snapshot()
        );
        publish(port, topic, &[good(0, 1.0)], &tls_args);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Ok(AdapterEvent::Telemetry(_)) = rx.try_recv() {}
    let base = stats.snapshot();

    let oversized = format!(
        r#"{{"seq":99,"metrics":[{{"name":"x","value":"{}"}}]}}"#,
        "a".repeat(2000)
    );
    let batch = vec![
        good(1, 10.5),
        r#"{"seq":2,"metrics":[{"name":"flow_rate","val"#.to_string(), // truncated: malformed
        good(3, 11.5),
        oversized,
        r#"{"sequence":4,"metrics":[]}"#.to_string(), // valid JSON, not our schema
        "not json at all".to_string(),
        good(5, 12.5),
    ];
    publish(port, topic, &batch, &tls_args);
    // A payload claiming another device id still counts for the topic's device.
    publish(
        port,
        topic,
        &[
            r#"{"seq":6,"device_id":"someone-else","metrics":[{"name":"flow_rate","value":13}]}"#
                .into(),
        ],
        &tls_args,
    );

    recv_until(&mut rx, "good values", &mut got, |g| {
        g.iter().filter(|t| t.metric == "flow_rate").count() >= 4
    })
    .await;
    let flows: Vec<(u64, Value)> = got
        .iter()
        .filter(|t| t.metric == "flow_rate")
        .map(|t| (t.seq, t.value.clone()))
        .collect();
    assert_eq!(
        flows,
        vec![
            (1, Value::Float(10.5)),
            (3, Value::Float(11.5)),
            (5, Value::Float(12.5)),
            (6, Value::Integer(13))
        ]
    );
    assert!(got.iter().all(|t| t.device_id == "pump-0042"));
    let t1 = &got[0];
    assert_eq!(t1.timestamp_source, TimestampSource::Device);
    assert_eq!(t1.unit.as_deref(), Some("mL/h"));
    let s = stats.snapshot();
    assert_eq!(s.delivered_messages - base.delivered_messages, 4, "{s:?}");
    assert_eq!(s.dropped_malformed - base.dropped_malformed, 2, "{s:?}");
    assert_eq!(s.dropped_oversized - base.dropped_oversized, 1, "{s:?}");
    assert_eq!(
        s.dropped_unknown_schema - base.dropped_unknown_schema,
        1,
        "{s:?}"
    );
    assert_eq!(s.connects, 1);

    stop.cancel();
    task.await.expect("join").expect("subscriber ends cleanly");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_and_offline_subscriber_lose_no_qos1_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // Plain TCP on loopback: this test is about sessions, not TLS.
    let mut broker = Mosquitto::with_config(
        dir.path().join("mosquitto.conf"),
        port,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 10000\n",
            dir.path().display()
        ),
    );
    let addr = BrokerAddr {
        host: "127.0.0.1".into(),
        port,
        transport: MqttTransport::PlainInsecure,
    };
    let mut cfg = MqttConfig::new(addr, "gw-persistent");
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(400);
    let topic = "medledger/devices/vent-7/telemetry";
    let seqs = |r: std::ops::RangeInclusive<u64>| r.map(|s| good(s, s as f64)).collect::<Vec<_>>();

    let (tx, mut rx) = mpsc::channel(64);
    let (stats, stop, task) = spawn_sub(cfg.clone(), tx);
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + DEADLINE;
    while stats.snapshot().delivered_messages == 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "no probe arrived: {:?}",
            stats.snapshot()
        );
        publish(port, topic, &[good(0, 0.0)], &[]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. The broker restarts under a connected subscriber; it reconnects with backoff, and what
    //    is published after the restart arrives.
    broker.restart();
    let until = tokio::time::Instant::now() + DEADLINE;
    while stats.snapshot().connects < 2 {
        assert!(
            tokio::time::Instant::now() < until,
            "no reconnect: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(port, topic, &seqs(1..=20), &[]);
    let has = |g: &[Telemetry], r: std::ops::RangeInclusive<u64>| {
        let s: BTreeSet<u64> = g.iter().map(|t| t.seq).collect();
        r.clone().all(|x| s.contains(&x))
    };
    recv_until(&mut rx, "seq 1..=20 after restart", &mut got, |g| {
        has(g, 1..=20)
    })
    .await;
    assert!(stats.snapshot().connection_errors >= 1);

    // 2. The subscriber goes away; QoS 1 messages queue in its persistent session, survive a
    //    broker restart on disk, and arrive when the same client id comes back.
    stop.cancel();
    task.await.expect("join").expect("subscriber ends cleanly");
    drop(rx);
    publish(port, topic, &seqs(21..=40), &[]);
    broker.restart();
    let (tx, mut rx) = mpsc::channel(64);
    let (stats2, stop, task) = spawn_sub(cfg, tx);
    recv_until(&mut rx, "queued seq 21..=40", &mut got, |g| has(g, 21..=40)).await;
    assert_eq!(stats2.snapshot().dropped(), 0);
    stop.cancel();
    task.await.expect("join").expect("subscriber ends cleanly");
}

/// `run_acked` hands several messages to the consumer before any is acknowledged (so the
/// gateway can make a batch durable at once), acknowledges them in arrival order only after
/// the consumer says so, and a message the consumer released without `ack` is the only one the
/// broker sends again to the same client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_wait_in_a_window_and_only_a_released_one_comes_back() {
    use device_adapters::mqtt::MqttMessage;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _broker = Mosquitto::with_config(
        dir.path().join("mosquitto.conf"),
        port,
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 20\n"),
    );
    let addr = BrokerAddr {
        host: "127.0.0.1".into(),
        port,
        transport: MqttTransport::PlainInsecure,
    };
    let mut cfg = MqttConfig::new(addr, "gw-acked");
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(400);
    let topic = "medledger/devices/pump-9/telemetry";
    let start = |cfg: MqttConfig| {
        let (tx, rx) = mpsc::channel::<MqttMessage>(64);
        let sub = MqttSubscriber::new(cfg).expect("subscriber");
        let stats = sub.stats();
        let stop = CancellationToken::new();
        let task = tokio::spawn(sub.run_acked(tx, stop.clone()));
        (rx, stats, stop, task)
    };
    let seq = |m: &MqttMessage| m.values.first().map(|t| t.seq).expect("a value");

    let (mut rx, stats, stop, task) = start(cfg.clone());
    // Probes (seq 0) until the subscription stands; each is acknowledged.
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(tokio::time::Instant::now() < until, "no probe arrived");
        publish(port, topic, &[good(0, 0.0)], &[]);
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            m.ack();
            break;
        }
    }
    publish(
        port,
        topic,
        &(1..=5).map(|s| good(s, s as f64)).collect::<Vec<_>>(),
        &[],
    );
    // All five reach the consumer while none of them is acknowledged.
    let mut held = Vec::new();
    while held.len() < 5 {
        let m = tokio::time::timeout_at(until, rx.recv())
            .await
            .expect("five messages held at once")
            .expect("channel open");
        if seq(&m) == 0 {
            m.ack();
        } else {
            held.push(m);
        }
    }
    assert_eq!(held.iter().map(seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    let before = stats.snapshot().delivered_messages;
    let mut held = held.into_iter();
    for _ in 0..3 {
        held.next().expect("1..=3").ack();
    }
    drop(held.next().expect("4: released without ack"));
    held.next().expect("5").ack();
    while stats.snapshot().delivered_messages < before + 4 {
        assert!(
            tokio::time::Instant::now() < until,
            "acks not sent: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the PUBACKs leave before the connection closes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    task.await.expect("join").expect("subscriber ends cleanly");
    drop(rx);

    // The same client id again: only the released message comes back.
    let (mut rx, _stats, stop, task) = start(cfg);
    let back = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("the released message is redelivered")
        .expect("channel open");
    assert_eq!(seq(&back), 4);
    back.ack();
    let more = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert!(
        more.is_err(),
        "only message 4 was unacknowledged, got {:?} again",
        more.ok().flatten().map(|m| seq(&m))
    );
    stop.cancel();
    task.await.expect("join").expect("subscriber ends cleanly");
}
