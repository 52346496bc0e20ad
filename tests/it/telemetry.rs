//! Telemetry to ledger end to end: a real Mosquitto with TLS and an ACL from our CA, devices
//! publishing with their own certificates (`mosquitto_pub`), simulated Modbus devices served
//! over real sockets, and real `medledger run` processes whose ledgers are read through the API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use certs::{CertSpec, StaffRole, Validity};
use device_adapters::profile::{builtin_profile, Table};
use device_adapters::sim::{Fault, ModbusSimServer, SimDevice};
use medledger_tests::cluster::{eventually, status, Gateway, Site};
use medledger_tests::mosquitto::{is_root, require, Mosquitto};
use medledger_tests::{bin, free_port, one_cluster_at_a_time};
use serde_json::Value;
use time::OffsetDateTime;

const WAIT: Duration = Duration::from_secs(45);

/// A TLS broker whose ACL lets gateway 1..=3 read and each device write its own topic.
pub(crate) struct Broker {
    port: u16,
    cafile: PathBuf,
    _mosquitto: Mosquitto,
}

/// Where a device publishes to (port and the CA file to trust).
#[derive(Clone)]
pub(crate) struct BrokerAt {
    port: u16,
    cafile: PathBuf,
}

impl Broker {
    pub(crate) fn at(&self) -> BrokerAt {
        BrokerAt {
            port: self.port,
            cafile: self.cafile.clone(),
        }
    }
}

pub(crate) fn start_broker(site: &Site) -> Broker {
    require("mosquitto");
    let port = free_port();
    let mut opts = certs::MosquittoOptions::new(port, vec!["1".into(), "2".into(), "3".into()]);
    opts.bind_address = Some("127.0.0.1".into());
    if is_root() {
        opts.run_as_user = Some("root".into());
    }
    let now = OffsetDateTime::now_utc();
    let crl = site
        .ca
        .build_crl(
            &[],
            now - time::Duration::minutes(1),
            now + time::Duration::days(1),
        )
        .expect("crl");
    let files = certs::write_mosquitto_config(
        &site.ca,
        &site.dir.path().join("mosquitto"),
        &opts,
        &crl.pem,
    )
    .expect("mosquitto config");
    let m = Mosquitto::start(files.conf.clone(), port);
    Broker {
        port,
        cafile: files.cafile,
        _mosquitto: m,
    }
}

/// A device with its own certificate, publishing through `mosquitto_pub`.
#[derive(Clone)]
pub(crate) struct Device {
    id: String,
    cert: PathBuf,
    key: PathBuf,
}

impl Device {
    pub(crate) fn new(site: &Site, id: &str) -> Device {
        let dir = site.dir.path().join("devices");
        std::fs::create_dir_all(&dir).expect("devices dir");
        let issued = site
            .ca
            .issue(&CertSpec::device(id), Validity::days(2).expect("validity"))
            .expect("device cert");
        let d = Device {
            id: id.into(),
            cert: dir.join(format!("{id}.crt")),
            key: dir.join(format!("{id}.key")),
        };
        issued.write_files(&d.cert, &d.key).expect("device files");
        d
    }

    /// Publishes one QoS 1 message per payload, in order; returns once the broker has them all.
    fn publish(&self, broker: &Broker, payloads: &[String]) {
        self.publish_to(&broker.at(), payloads)
    }

    pub(crate) fn publish_to(&self, broker: &BrokerAt, payloads: &[String]) {
        let topic = device_adapters::mqtt::telemetry_topic(&self.id);
        let mut child = Command::new(require("mosquitto_pub"))
            .args(["-h", "localhost", "-p", &broker.port.to_string()])
            .args(["-q", "1", "-t", &topic, "-l"])
            .arg("--cafile")
            .arg(&broker.cafile)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
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
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One telemetry payload at `t0 + offset_s` seconds (device time), sequence `seq`.
pub(crate) fn payload(seq: u64, t0: i64, offset_s: i64, metrics: &[(&str, f64)]) -> String {
    let ts = OffsetDateTime::from_unix_timestamp(t0 + offset_s)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    let m: Vec<Value> = metrics
        .iter()
        .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
        .collect();
    serde_json::json!({"seq": seq, "ts": ts, "metrics": m}).to_string()
}

pub(crate) fn mqtt_config(broker: &Broker, extra: &str) -> String {
    format!(
        "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n{extra}\n\
         [[rules]]\nname = \"flow-high\"\nkind = \"above\"\nmetric = \"flow_rate\"\nlimit = 130.0\nhysteresis = 5.0\n\
         [[rules]]\nname = \"pm-hours\"\nkind = \"counter\"\nmetric = \"operating_hours\"\ninterval = 500.0\n",
        broker.port
    )
}

/// The device's ledger history as (kind, state-or-status, event id), in ledger order (every
/// page of it).
pub(crate) async fn history(
    client: &reqwest::Client,
    addr: &str,
    device: &str,
) -> Option<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let r = client
            .get(format!(
                "https://{addr}/v1/devices/{device}/history?limit=10000{after}"
            ))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        out.extend(v["entries"].as_array()?.iter().map(|e| {
            let f = &e["fields"];
            let what = f["state"]
                .as_str()
                .or(f["status"].as_str())
                .or(f["due_at"].as_f64().map(|_| "due"))
                .unwrap_or("")
                .to_owned();
            (
                e["kind"].as_str().unwrap_or("").to_owned(),
                what,
                e["event_id"].as_str().unwrap_or("").to_owned(),
            )
        }));
        match v["next"].as_u64() {
            Some(n) => after = format!("&after={n}"),
            None => return Some(out),
        }
    }
}

async fn telemetry_status(client: &reqwest::Client, addr: &str) -> Option<Value> {
    let r = client
        .get(format!("https://{addr}/v1/telemetry/status"))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Waits until the device's history satisfies `f`; returns it.
async fn wait_history(
    client: &reqwest::Client,
    addr: &str,
    device: &str,
    what: &str,
    f: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    eventually(what, WAIT, || async {
        history(client, addr, device).await.filter(|h| f(h))
    })
    .await
}

fn kinds(h: &[(String, String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, w, _)| (k.as_str(), w.as_str())).collect()
}

/// `medledger cluster init` making `g` a one-voter cluster.
fn init_single(g: &Gateway) {
    let out = Command::new(bin("medledger"))
        .args(["cluster", "init", "--config"])
        .arg(&g.config)
        .arg("--voter")
        .arg(format!("{}={}", g.id, g.addr()))
        .output()
        .expect("cluster init");
    assert!(
        out.status.success(),
        "cluster init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_listening(client: &reqwest::Client, g: &Gateway) {
    let addr = g.addr();
    eventually(&format!("gateway {} to listen", g.id), WAIT, || {
        status(client, &addr)
    })
    .await;
}

pub(crate) fn outbox_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("outbox"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hovering_value_raises_one_alarm_and_counters_one_maintenance_due() {
    let _turn = one_cluster_at_a_time().await;
    let site = Site::new();
    let broker = start_broker(&site);
    let mut g = Gateway::new(&site, 1, &mqtt_config(&broker, ""));
    g.start();
    let client = site.staff_client("biomed-1", StaffRole::Biomed);
    wait_listening(&client, &g).await;
    init_single(&g);
    let addr = g.addr();
    let pump = Device::new(&site, "pump-1");
    let t0 = OffsetDateTime::now_utc().unix_timestamp() - 3600;
    // 20 crossings of the limit inside the hysteresis band, then back below the band; operating
    // hours pass 500 once.
    let mut msgs = Vec::new();
    for i in 0..21 {
        let flow = if i % 2 == 0 { 130.6 } else { 128.2 };
        let hours = 499.0 + 0.1 * i as f64;
        msgs.push(payload(
            i as u64 + 1,
            t0,
            i,
            &[("flow_rate", flow), ("operating_hours", hours)],
        ));
    }
    msgs.push(payload(
        22,
        t0,
        30,
        &[("flow_rate", 120.0), ("operating_hours", 501.5)],
    ));
    pump.publish(&broker, &msgs);
    let h = wait_history(&client, &addr, "pump-1", "raise, due, clear", |h| {
        h.len() >= 3
    })
    .await;
    assert_eq!(
        kinds(&h),
        [
            ("alarm", "raised"),
            ("maintenance-due", "due"),
            ("alarm", "cleared")
        ]
    );
    // The broker delivering everything again (as after a crash before the acks) adds nothing:
    // same samples, same event ids. A later crossing marks the end of the replay.
    msgs.push(payload(23, t0, 40, &[("flow_rate", 140.0)]));
    pump.publish(&broker, &msgs);
    let h = wait_history(&client, &addr, "pump-1", "the second raise", |h| {
        h.len() >= 4
    })
    .await;
    assert_eq!(
        kinds(&h),
        [
            ("alarm", "raised"),
            ("maintenance-due", "due"),
            ("alarm", "cleared"),
            ("alarm", "raised")
        ]
    );
    assert!(h.iter().all(|(_, _, id)| id.starts_with("rule:")), "{h:?}");
    // Recent values for the staff view; none of the raw samples is in the ledger.
    let r: Value = client
        .get(format!("https://{addr}/v1/devices/pump-1/telemetry"))
        .send()
        .await
        .expect("telemetry")
        .json()
        .await
        .expect("json");
    assert_eq!(r["metrics"]["flow_rate"]["last"]["value"], 140.0, "{r}");
    let s = telemetry_status(&client, &addr).await.expect("status");
    assert_eq!(s["outbox"]["events"], 0, "{s}");
    assert!(s["events_duplicate"].as_u64().is_some(), "{s}");
    assert_eq!(s["samples_dropped"], 0, "{s}");
    assert!(s["sample_to_outbox_ms"]["p99"].as_u64() >= Some(1), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_between_outbox_and_ledger_leaves_the_alarm_in_the_ledger_once() {
    let _turn = one_cluster_at_a_time().await;
    let site = Site::new();
    let broker = start_broker(&site);
    let mut g = Gateway::new(&site, 1, &mqtt_config(&broker, ""));
    // Not yet a cluster: no leader, no quorum, so the alarm waits in the outbox.
    g.start();
    let client = site.staff_client("biomed-1", StaffRole::Biomed);
    wait_listening(&client, &g).await;
    let addr = g.addr();
    let pump = Device::new(&site, "pump-7");
    let t0 = OffsetDateTime::now_utc().unix_timestamp() - 600;
    let raise = vec![
        payload(1, t0, 0, &[("flow_rate", 125.0)]),
        payload(2, t0, 1, &[("flow_rate", 133.0)]),
    ];
    pump.publish(&broker, &raise);
    eventually("the alarm in the outbox", WAIT, || async {
        (outbox_files(&g.dir) == 1).then_some(())
    })
    .await;
    g.kill();
    assert_eq!(outbox_files(&g.dir), 1, "the outbox survives kill -9");
    g.start();
    wait_listening(&client, &g).await;
    // The device repeats itself (a redelivery after a reconnect looks the same).
    pump.publish(&broker, &raise);
    init_single(&g);
    let h = wait_history(&client, &addr, "pump-7", "the alarm", |h| !h.is_empty()).await;
    assert_eq!(kinds(&h), [("alarm", "raised")]);
    pump.publish(&broker, &[payload(3, t0, 2, &[("flow_rate", 110.0)])]);
    let h = wait_history(&client, &addr, "pump-7", "the clear", |h| h.len() >= 2).await;
    assert_eq!(kinds(&h), [("alarm", "raised"), ("alarm", "cleared")]);
    eventually("an empty outbox", WAIT, || async {
        (outbox_files(&g.dir) == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_outbox_drops_samples_and_keeps_every_rule_event_in_order() {
    let _turn = one_cluster_at_a_time().await;
    let site = Site::new();
    let broker = start_broker(&site);
    let mut g = Gateway::new(
        &site,
        1,
        &format!(
            "{}[telemetry]\noutbox_max_bytes = 4096\n",
            mqtt_config(&broker, "")
        ),
    );
    g.start();
    let client = site.staff_client("biomed-1", StaffRole::Biomed);
    wait_listening(&client, &g).await;
    let addr = g.addr();
    let pump = Device::new(&site, "pump-9");
    let t0 = OffsetDateTime::now_utc().unix_timestamp() - 600;
    // 16 transitions (raise, clear, ...), each followed by two values that change nothing.
    let transitions = 16;
    let mut msgs = Vec::new();
    let mut seq = 0;
    for i in 0..transitions {
        let flow = if i % 2 == 0 { 140.0 } else { 100.0 };
        for k in 0..3 {
            seq += 1;
            msgs.push(payload(
                seq,
                t0,
                seq as i64,
                &[("flow_rate", flow + k as f64 * 0.1)],
            ));
        }
    }
    // Published in the background: the broker holds what the gateway does not acknowledge.
    let publisher = {
        let (msgs, at, pump) = (msgs.clone(), broker.at(), pump.clone());
        std::thread::spawn(move || pump.publish_to(&at, &msgs))
    };
    let s = eventually("a full outbox and dropped samples", WAIT, || async {
        telemetry_status(&client, &addr).await.filter(|s| {
            s["samples_dropped"].as_u64() > Some(0)
                && s["outbox"]["bytes"].as_u64()
                    >= s["outbox"]["max_bytes"].as_u64().map(|m| m * 3 / 4)
        })
    })
    .await;
    assert!(
        s["outbox"]["events"].as_u64() < Some(transitions),
        "the outbox is bounded: {s}"
    );
    // The quorum comes: every transition lands, in order, none twice.
    init_single(&g);
    let h = wait_history(&client, &addr, "pump-9", "every transition", |h| {
        h.len() >= transitions as usize
    })
    .await;
    let want: Vec<(&str, &str)> = (0..transitions)
        .map(|i| ("alarm", if i % 2 == 0 { "raised" } else { "cleared" }))
        .collect();
    assert_eq!(kinds(&h), want);
    publisher.join().expect("publisher");
    let s = telemetry_status(&client, &addr).await.expect("status");
    assert!(s["samples_dropped"].as_u64() > Some(0), "{s}");
    assert_eq!(s["rule_events"], transitions, "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn modbus_device_goes_offline_and_online_and_a_refused_block_keeps_the_other_values() {
    let _turn = one_cluster_at_a_time().await;
    let site = Site::new();
    let profile = Arc::new(builtin_profile("infusion-pump").expect("profile"));
    let dev = SimDevice::new("vent-1", profile);
    let server = ModbusSimServer::start("127.0.0.1:0".parse().expect("addr"), dev.clone(), None)
        .await
        .expect("sim server");
    let extra = format!(
        "[telemetry]\nmodbus_request_timeout_ms = 300\nmodbus_offline_after = 2\n\
         [[modbus]]\ndevice_id = \"vent-1\"\naddress = \"{}\"\nprofile = \"infusion-pump\"\npoll_interval_ms = 200\n\
         [[rules]]\nname = \"link\"\nkind = \"offline\"\nexpected_interval_ms = 200\nsilent_intervals = 10\n",
        server.local_addr()
    );
    let mut g = Gateway::new(&site, 1, &extra);
    g.start();
    let client = site.staff_client("biomed-1", StaffRole::Biomed);
    wait_listening(&client, &g).await;
    init_single(&g);
    let addr = g.addr();
    let recent = |metric: &'static str| {
        let client = client.clone();
        let addr = addr.clone();
        async move {
            let v: Value = client
                .get(format!("https://{addr}/v1/devices/vent-1/telemetry"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            v["metrics"][metric]["last_at"].as_str().map(str::to_owned)
        }
    };
    eventually("values from the device", WAIT, || recent("flow_rate")).await;
    // One register block refused (the serial number's input registers 10..16): the others go on.
    dev.set_fault(Fault::Refuse(Some((Table::Input, 10))));
    let health = eventually("a poll with a block missing", WAIT, || async {
        let s = telemetry_status(&client, &addr).await?;
        let h = s["modbus"]["vent-1"].clone();
        (h["missing_blocks"].as_u64() > Some(0)).then_some(h)
    })
    .await;
    assert_eq!(health["online"], true, "{health}");
    let before = recent("flow_rate").await.expect("flow");
    eventually("newer flow values", WAIT, || async {
        recent("flow_rate").await.filter(|t| *t > before)
    })
    .await;
    let serial_then = recent("serial_number").await;
    // The device stops answering: offline; answers again: online.
    dev.set_fault(Fault::Silent(true));
    let h = wait_history(&client, &addr, "vent-1", "offline", |h| !h.is_empty()).await;
    assert_eq!(kinds(&h), [("status-change", "offline")]);
    dev.set_fault(Fault::Silent(false));
    let h = wait_history(&client, &addr, "vent-1", "online", |h| h.len() >= 2).await;
    assert_eq!(
        kinds(&h),
        [("status-change", "offline"), ("status-change", "online")]
    );
    // Still refused: the serial number has not been read since.
    assert_eq!(recent("serial_number").await, serial_then);
    server.stop().await;
}

/// A 3-gateway cluster loses its quorum while alarms fire at gateway 1; they wait in its outbox
/// and land in order once the quorum returns, after the 60 s outage the issue names.
#[tokio::test(flavor = "multi_thread")]
async fn alarms_during_a_lost_quorum_land_in_order_when_it_returns() {
    let _turn = one_cluster_at_a_time().await;
    let site = Site::new();
    let broker = start_broker(&site);
    let cfg = mqtt_config(&broker, "");
    let mut nodes = vec![
        Gateway::new(&site, 1, &cfg),
        Gateway::new(&site, 2, ""),
        Gateway::new(&site, 3, ""),
    ];
    let voters: Vec<(u64, String)> = nodes.iter().map(|g| (g.id, g.addr())).collect();
    nodes = medledger_tests::cluster::start_nodes(&site, nodes, &voters).await;
    let client = site.staff_client("biomed-1", StaffRole::Biomed);
    let addr = nodes[0].addr();
    let pump = Device::new(&site, "pump-q");
    let t0 = OffsetDateTime::now_utc().unix_timestamp() - 3600;
    pump.publish(&broker, &[payload(1, t0, 0, &[("flow_rate", 140.0)])]);
    wait_history(&client, &addr, "pump-q", "the first alarm", |h| {
        h.len() == 1
    })
    .await;
    nodes[1].kill();
    nodes[2].kill();
    let outage = 60;
    let start = std::time::Instant::now();
    let mut seq = 1;
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(outage) {
        seq += 1;
        i += 1;
        let flow = if i % 2 == 0 { 140.0 } else { 100.0 };
        pump.publish(
            &broker,
            &[payload(seq, t0, seq as i64, &[("flow_rate", flow)])],
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let fired = i;
    let h = history(&client, &addr, "pump-q").await.expect("history");
    assert_eq!(h.len(), 1, "nothing commits without a quorum: {h:?}");
    eventually("the outage's alarms in the outbox", WAIT, || async {
        (outbox_files(&nodes[0].dir) == fired).then_some(())
    })
    .await;
    nodes[1].start();
    nodes[2].start();
    let h = wait_history(&client, &addr, "pump-q", "every alarm", |h| h.len() > fired).await;
    let want: Vec<(&str, &str)> = (0..=fired)
        .map(|i| ("alarm", if i % 2 == 0 { "raised" } else { "cleared" }))
        .collect();
    assert_eq!(kinds(&h), want);
}

/// SIGHUP reloads rules (and adapters) from the config file without touching the ledger; a
/// config that does not check out is refused and the running one kept.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_rules_and_refuses_a_bad_config() {
    let _turn = one_cluster_at_a_time().await;
    let site = Site::new();
    let broker = start_broker(&site);
    let mut g = Gateway::new(&site, 1, &mqtt_config(&broker, ""));
    g.start();
    let client = site.staff_client("biomed-1", StaffRole::Biomed);
    wait_listening(&client, &g).await;
    init_single(&g);
    let addr = g.addr();
    let pump = Device::new(&site, "pump-h");
    let t0 = OffsetDateTime::now_utc().unix_timestamp() - 600;
    pump.publish(&broker, &[payload(1, t0, 0, &[("flow_rate", 140.0)])]);
    wait_history(&client, &addr, "pump-h", "the raise", |h| h.len() == 1).await;
    let pid = g.child.as_ref().expect("running").0.id().to_string();
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill -HUP");
        assert!(ok.success());
    };
    let original = std::fs::read_to_string(&g.config).expect("config");
    // A broken rule: refused, the gateway and its rules go on.
    std::fs::write(
        &g.config,
        format!("{original}\n[[rules]]\nname = \"broken\"\nkind = \"above\"\nmetric = \"x\"\n"),
    )
    .expect("write config");
    hup();
    eventually("the refused reload", WAIT, || async {
        let s = telemetry_status(&client, &addr).await?;
        (s["reloads_refused"] == 1).then_some(())
    })
    .await;
    // A new rule: flow below 50 raises an alarm of its own.
    std::fs::write(
        &g.config,
        format!(
            "{original}\n[[rules]]\nname = \"flow-low\"\nkind = \"below\"\nmetric = \"flow_rate\"\nlimit = 50.0\n"
        ),
    )
    .expect("write config");
    hup();
    eventually("the reload", WAIT, || async {
        let s = telemetry_status(&client, &addr).await?;
        (s["reloads"] == 1).then_some(())
    })
    .await;
    pump.publish(&broker, &[payload(2, t0, 1, &[("flow_rate", 40.0)])]);
    let h = wait_history(&client, &addr, "pump-h", "clear and low", |h| h.len() >= 3).await;
    let mut got = kinds(&h);
    got[1..].sort();
    assert_eq!(
        got,
        [
            ("alarm", "raised"),
            ("alarm", "cleared"),
            ("alarm", "raised")
        ]
    );
    // The flow-high alarm raised before the reload was remembered across it: cleared, not
    // raised again.
    let raised_again = h.iter().filter(|(_, w, _)| w == "raised").count();
    assert_eq!(raised_again, 2, "{h:?}");
    assert_eq!(status(&client, &addr).await.expect("alive")["node_id"], 1);
}

/// The outbox on a full disk (docs/operations.md "A full disk"): below the data directory's
/// reserve, values that raise nothing are dropped and counted, and a value that raises a rule
/// event is held with its MQTT message unacknowledged. A gateway killed (-9) while it holds one
/// and restarted once space is back gets the message again from the broker: every transition
/// lands, in order, none twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_drops_samples_and_holds_rule_events_unacknowledged() {
    let _turn = one_cluster_at_a_time().await;
    let site = Site::new();
    let fs = crate::disk::SmallFs::mount(
        &site.dir.path().join("disk.img"),
        &site.dir.path().join("node1"),
    );
    let broker = start_broker(&site);
    let mut g = Gateway::new(&site, 1, &mqtt_config(&broker, ""));
    crate::disk::set_reserve(&g);
    g.start();
    let client = site.staff_client("biomed-1", StaffRole::Biomed);
    wait_listening(&client, &g).await;
    init_single(&g);
    let addr = g.addr();
    let pump = Device::new(&site, "pump-full");
    let t0 = OffsetDateTime::now_utc().unix_timestamp() - 600;
    pump.publish(&broker, &[payload(1, t0, 1, &[("flow_rate", 140.0)])]);
    wait_history(&client, &addr, "pump-full", "the first alarm", |h| {
        !h.is_empty()
    })
    .await;

    // The disk fills below the reserve.
    let filler = fs.mount.join("filler.bin");
    crate::disk::fill(&fs, &filler, crate::disk::RESERVE_MB * 1024 * 1024 / 2);
    let dropped_before = telemetry_status(&client, &addr).await.expect("status")["samples_dropped"]
        .as_u64()
        .expect("samples_dropped");
    let quiet: Vec<String> = (2..=5)
        .map(|i| payload(i, t0, i as i64, &[("flow_rate", 140.0 + i as f64 * 0.1)]))
        .collect();
    pump.publish(&broker, &quiet);
    eventually(
        "values that raise nothing dropped and counted",
        WAIT,
        || async {
            telemetry_status(&client, &addr)
                .await
                .filter(|s| s["samples_dropped"].as_u64() >= Some(dropped_before + 4))
        },
    )
    .await;
    // A clear and a new raise: the first is held (nothing lands), the second waits behind it.
    pump.publish(
        &broker,
        &[
            payload(6, t0, 6, &[("flow_rate", 100.0)]),
            payload(7, t0, 7, &[("flow_rate", 140.0)]),
        ],
    );
    eventually("the held rule event logged", WAIT, || {
        let log = std::fs::read_to_string(g.dir.join("gateway.log")).unwrap_or_default();
        async move {
            log.contains("outbox write held until space is freed")
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        outbox_files(&g.dir),
        0,
        "an outbox file was written below the reserve"
    );
    let h = history(&client, &addr, "pump-full").await.expect("history");
    assert_eq!(kinds(&h), [("alarm", "raised")], "{h:?}");

    // Killed while it holds the event, restarted once space is back: the broker redelivers.
    g.kill();
    std::fs::remove_file(&filler).expect("remove filler");
    g.start();
    let h = wait_history(&client, &addr, "pump-full", "every transition", |h| {
        h.len() >= 3
    })
    .await;
    assert_eq!(
        kinds(&h),
        [
            ("alarm", "raised"),
            ("alarm", "cleared"),
            ("alarm", "raised")
        ],
        "{h:?}"
    );
    drop(g);
    drop(fs);
}
