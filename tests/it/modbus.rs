//! Modbus TCP poller against simulated devices over real sockets.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use device_adapters::{
    decode::{ByteOrder, DataType, WordOrder},
    modbus::{ModbusDeviceConfig, ModbusPoller, PollerConfig},
    profile::{builtin_profile, DeviceProfile, RegisterDef, Table},
    sim::{Fault, ModbusSimServer, SimDevice},
    AdapterEvent, Source, Telemetry, TimestampSource, Value,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(15);

/// Wait for the first event matching `pred`, failing the test at the deadline.
async fn wait_for(
    rx: &mut mpsc::Receiver<AdapterEvent>,
    what: &str,
    mut pred: impl FnMut(&AdapterEvent) -> bool,
) -> AdapterEvent {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("channel closed while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// All telemetry of the next complete poll (one seq) of `device`.
async fn next_poll(
    rx: &mut mpsc::Receiver<AdapterEvent>,
    device: &str,
    metrics: usize,
) -> Vec<Telemetry> {
    let mut batch: Vec<Telemetry> = Vec::new();
    loop {
        let ev = wait_for(
            rx,
            "a full poll",
            |e| matches!(e, AdapterEvent::Telemetry(t) if t.device_id == device),
        )
        .await;
        let AdapterEvent::Telemetry(t) = ev else {
            unreachable!()
        };
        if batch.first().is_some_and(|f| f.seq != t.seq) {
            batch.clear();
        }
        batch.push(t);
        if batch.len() == metrics {
            return batch;
        }
    }
}

fn fast_config() -> PollerConfig {
    PollerConfig {
        request_timeout: Duration::from_millis(300),
        offline_after: 3,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
    }
}

fn device(id: &str, addr: SocketAddr, profile: Arc<DeviceProfile>) -> ModbusDeviceConfig {
    ModbusDeviceConfig {
        device_id: id.into(),
        addr,
        unit_id: 1,
        profile,
        tls: None,
    }
}

fn reg(
    name: String,
    table: Table,
    address: u16,
    t: DataType,
    bo: ByteOrder,
    wo: WordOrder,
    count: Option<u16>,
) -> RegisterDef {
    RegisterDef {
        name,
        table,
        address,
        data_type: t,
        count,
        byte_order: bo,
        word_order: wo,
        scale: 1.0,
        offset: 0.0,
        unit: None,
        bit: None,
        sim: None,
    }
}

/// The register layout written independently of the library: big-endian bytes of the value,
/// split into registers, bytes swapped inside each register for little byte order, register
/// order reversed for little word order.
fn layout(be: &[u8], bo: ByteOrder, wo: WordOrder) -> Vec<u16> {
    let mut words: Vec<u16> = be
        .chunks(2)
        .map(|c| match bo {
            ByteOrder::Big => (u16::from(c[0]) << 8) | u16::from(c[1]),
            ByteOrder::Little => (u16::from(c[1]) << 8) | u16::from(c[0]),
        })
        .collect();
    if wo == WordOrder::Little {
        words.reverse();
    }
    words
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_decodes_exactly_through_the_poller() {
    let orders = [
        (ByteOrder::Big, WordOrder::Big),
        (ByteOrder::Little, WordOrder::Big),
        (ByteOrder::Big, WordOrder::Little),
        (ByteOrder::Little, WordOrder::Little),
    ];
    // (type, big-endian bytes of the register image, registers, expected value)
    let samples: Vec<(DataType, Vec<u8>, Value)> = vec![
        (
            DataType::U16,
            0xBEEFu16.to_be_bytes().to_vec(),
            Value::Integer(0xBEEF),
        ),
        (
            DataType::I16,
            (-12345i16).to_be_bytes().to_vec(),
            Value::Integer(-12345),
        ),
        (
            DataType::U32,
            0xDEAD_BEEFu32.to_be_bytes().to_vec(),
            Value::Integer(0xDEAD_BEEF),
        ),
        (
            DataType::I32,
            (-123_456_789i32).to_be_bytes().to_vec(),
            Value::Integer(-123_456_789),
        ),
        (
            DataType::U64,
            0x0123_4567_89AB_CDEFu64.to_be_bytes().to_vec(),
            Value::Integer(0x0123_4567_89AB_CDEF),
        ),
        (
            DataType::I64,
            (-987_654_321_012_345i64).to_be_bytes().to_vec(),
            Value::Integer(-987_654_321_012_345),
        ),
        (
            DataType::F32,
            (-1234.5f32).to_be_bytes().to_vec(),
            Value::Float(-1234.5),
        ),
        (
            DataType::F64,
            std::f64::consts::E.to_be_bytes().to_vec(),
            Value::Float(std::f64::consts::E),
        ),
        (
            DataType::Bool,
            1u16.to_be_bytes().to_vec(),
            Value::Bool(true),
        ),
        (
            DataType::String,
            b"SN-0042\0\0\0".to_vec(),
            Value::Text("SN-0042".into()),
        ),
    ];
    assert_eq!(samples.len(), DataType::ALL.len());
    let mut regs = Vec::new();
    let mut images = Vec::new();
    let mut expected = Vec::new();
    let mut addr = 0u16;
    for (t, be, value) in &samples {
        for (bo, wo) in orders {
            let name = format!("{t:?}_{bo:?}_{wo:?}").to_lowercase();
            let words = layout(be, bo, wo);
            let count = (*t == DataType::String).then_some(words.len() as u16);
            regs.push(reg(name.clone(), Table::Holding, addr, *t, bo, wo, count));
            images.push((Table::Holding, addr, words.clone()));
            expected.push((name, value.clone()));
            // A gap between values, so each is its own read too (no accidental merging help).
            addr += words.len() as u16 + 1;
        }
    }
    // Bits from the two bit tables, a bit inside a register, and a scaled register.
    regs.push(reg(
        "coil_on".into(),
        Table::Coil,
        7,
        DataType::Bool,
        ByteOrder::Big,
        WordOrder::Big,
        None,
    ));
    images.push((Table::Coil, 7, vec![1]));
    expected.push(("coil_on".into(), Value::Bool(true)));
    regs.push(reg(
        "discrete_off".into(),
        Table::Discrete,
        3,
        DataType::Bool,
        ByteOrder::Big,
        WordOrder::Big,
        None,
    ));
    images.push((Table::Discrete, 3, vec![0]));
    expected.push(("discrete_off".into(), Value::Bool(false)));
    let mut bit = reg(
        "alarm_bit_2".into(),
        Table::Input,
        0,
        DataType::Bool,
        ByteOrder::Big,
        WordOrder::Big,
        None,
    );
    bit.bit = Some(2);
    regs.push(bit);
    images.push((Table::Input, 0, vec![0b0100]));
    expected.push(("alarm_bit_2".into(), Value::Bool(true)));
    let mut scaled = reg(
        "flow".into(),
        Table::Input,
        1,
        DataType::I16,
        ByteOrder::Big,
        WordOrder::Big,
        None,
    );
    scaled.scale = 0.1;
    scaled.offset = -5.0;
    scaled.unit = Some("mL/h".into());
    regs.push(scaled);
    images.push((Table::Input, 1, vec![1250]));
    expected.push(("flow".into(), Value::Float(120.0)));

    let profile = Arc::new(DeviceProfile {
        name: "all-types".into(),
        manufacturer: None,
        model: None,
        description: None,
        poll_interval_ms: 100,
        registers: regs,
    });
    profile.validate().expect("test profile is valid");
    let dev = SimDevice::new("typed-1", profile.clone());
    for (table, addr, words) in &images {
        dev.write_registers(*table, *addr, words);
    }
    let server = ModbusSimServer::start("127.0.0.1:0".parse().expect("addr"), dev, None)
        .await
        .expect("sim server");
    let (tx, mut rx) = mpsc::channel(256);
    let poller = ModbusPoller::new(
        fast_config(),
        vec![device("typed-1", server.local_addr(), profile.clone())],
    )
    .expect("poller");
    let stats = poller.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(poller.run(tx, stop.clone()));

    let batch = next_poll(&mut rx, "typed-1", expected.len()).await;
    for (name, want) in &expected {
        let got = batch
            .iter()
            .find(|t| &t.metric == name)
            .unwrap_or_else(|| panic!("metric {name} missing"));
        match (want, &got.value) {
            // Compare floats bit for bit: "exactly" means exactly.
            (Value::Float(w), Value::Float(g)) if name != "flow" => {
                assert_eq!(w.to_bits(), g.to_bits(), "{name}")
            }
            (Value::Float(w), Value::Float(g)) => assert!((w - g).abs() < 1e-9, "{name}: {g}"),
            _ => assert_eq!(&got.value, want, "{name}"),
        }
        assert_eq!(got.timestamp_source, TimestampSource::Gateway);
        assert!(matches!(&got.source, Source::Modbus { endpoint } if endpoint.ends_with("/1")));
    }
    assert_eq!(
        batch
            .iter()
            .find(|t| t.metric == "flow")
            .and_then(|t| t.unit.as_deref()),
        Some("mL/h")
    );
    let h = stats.device("typed-1").expect("health");
    assert_eq!(h.online, Some(true));
    assert_eq!(h.decode_errors, 0);
    stop.cancel();
    task.await.expect("join").expect("poller ends cleanly");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_device_goes_offline_and_comes_back_on_the_same_port() {
    let mut p = builtin_profile("infusion-pump").expect("profile");
    p.poll_interval_ms = 100;
    let profile = Arc::new(p);
    let n = profile.registers.len();
    let dev = SimDevice::new("pump-1", profile.clone());
    let server = ModbusSimServer::start("127.0.0.1:0".parse().expect("addr"), dev.clone(), None)
        .await
        .expect("sim");
    let addr = server.local_addr();
    let (tx, mut rx) = mpsc::channel(256);
    let poller = ModbusPoller::new(fast_config(), vec![device("pump-1", addr, profile.clone())])
        .expect("poller");
    let stats = poller.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(poller.run(tx, stop.clone()));

    let online = |on: bool| move |e: &AdapterEvent| matches!(e, AdapterEvent::Status(s) if s.device_id == "pump-1" && s.online == on);
    wait_for(&mut rx, "pump-1 online", online(true)).await;
    let first = next_poll(&mut rx, "pump-1", n).await;
    let flow = first
        .iter()
        .find(|t| t.metric == "flow_rate")
        .expect("flow_rate");
    let f = flow.value.as_f64().expect("number");
    assert!((122.0..=128.0).contains(&f), "plausible flow rate, got {f}");

    server.stop().await;
    let ev = wait_for(&mut rx, "pump-1 offline", online(false)).await;
    let AdapterEvent::Status(s) = ev else {
        unreachable!()
    };
    assert!(
        s.reason.is_some_and(|r| r.contains(&addr.to_string())),
        "reason names the endpoint"
    );
    let h = stats.device("pump-1").expect("health");
    assert_eq!(h.online, Some(false));
    assert!(h.consecutive_failures >= 3, "{h:?}");
    assert!(h.connect_errors + h.io_errors >= 3, "{h:?}");

    let server = ModbusSimServer::start(addr, dev, None)
        .await
        .expect("restart on the same port");
    wait_for(&mut rx, "pump-1 online again", online(true)).await;
    next_poll(&mut rx, "pump-1", n).await;
    assert_eq!(
        stats.device("pump-1").expect("health").consecutive_failures,
        0
    );
    stop.cancel();
    task.await.expect("join").expect("poller ends cleanly");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_and_silence_are_counted_per_device_and_others_keep_flowing() {
    let mut p = builtin_profile("ventilator").expect("profile");
    p.poll_interval_ms = 100;
    let profile = Arc::new(p);
    let n = profile.registers.len();
    let bad = SimDevice::new("vent-bad", profile.clone());
    let good = SimDevice::new("vent-good", profile.clone());
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let s_bad = ModbusSimServer::start(any, bad.clone(), None)
        .await
        .expect("sim");
    let s_good = ModbusSimServer::start(any, good.clone(), None)
        .await
        .expect("sim");
    let (tx, mut rx) = mpsc::channel(256);
    let poller = ModbusPoller::new(
        fast_config(),
        vec![
            device("vent-bad", s_bad.local_addr(), profile.clone()),
            device("vent-good", s_good.local_addr(), profile.clone()),
        ],
    )
    .expect("poller");
    let stats = poller.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(poller.run(tx, stop.clone()));
    let status = |id: &'static str, on: bool| move |e: &AdapterEvent| matches!(e, AdapterEvent::Status(s) if s.device_id == id && s.online == on);
    wait_for(&mut rx, "vent-bad online", status("vent-bad", true)).await;

    // Server device failure (exception 4) on every request.
    bad.set_fault(Fault::Exception(4));
    let ev = wait_for(
        &mut rx,
        "vent-bad offline after exceptions",
        status("vent-bad", false),
    )
    .await;
    let AdapterEvent::Status(s) = ev else {
        unreachable!()
    };
    assert!(
        s.reason
            .as_deref()
            .is_some_and(|r| r.contains("ServerDeviceFailure")),
        "{s:?}"
    );
    let h = stats.device("vent-bad").expect("health");
    assert!(h.exceptions >= 3 && h.timeouts == 0, "{h:?}");
    // The healthy device is unaffected.
    next_poll(&mut rx, "vent-good", n).await;

    bad.set_fault(Fault::Exception(0));
    wait_for(&mut rx, "vent-bad back online", status("vent-bad", true)).await;

    // A device that stops answering: timeouts, not exceptions.
    bad.set_fault(Fault::Silent(true));
    wait_for(
        &mut rx,
        "vent-bad offline after silence",
        status("vent-bad", false),
    )
    .await;
    let h2 = stats.device("vent-bad").expect("health");
    assert!(h2.timeouts >= 3, "{h2:?}");
    assert_eq!(h2.exceptions, h.exceptions, "silence is not an exception");
    bad.set_fault(Fault::Silent(false));
    wait_for(
        &mut rx,
        "vent-bad online after silence",
        status("vent-bad", true),
    )
    .await;
    next_poll(&mut rx, "vent-bad", n).await;
    assert_eq!(stats.device("vent-good").expect("health").polls_failed, 0);

    stop.cancel();
    task.await.expect("join").expect("poller ends cleanly");
    s_bad.stop().await;
    s_good.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_sheds_polls_instead_of_blocking_or_growing() {
    let mut p = builtin_profile("patient-monitor").expect("profile");
    p.poll_interval_ms = 50;
    let profile = Arc::new(p);
    let n = profile.registers.len();
    let dev = SimDevice::new("mon-1", profile.clone());
    let server = ModbusSimServer::start("127.0.0.1:0".parse().expect("addr"), dev, None)
        .await
        .expect("sim");
    // Room for exactly one poll; nobody reads for a while.
    let (tx, mut rx) = mpsc::channel(n + 1);
    let poller = ModbusPoller::new(
        fast_config(),
        vec![device("mon-1", server.local_addr(), profile.clone())],
    )
    .expect("poller");
    let stats = poller.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(poller.run(tx, stop.clone()));
    let until = tokio::time::Instant::now() + DEADLINE;
    while stats.device("mon-1").expect("health").shed < 3 {
        assert!(tokio::time::Instant::now() < until, "no polls were shed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = stats.device("mon-1").expect("health");
    assert!(h.polls_ok > h.shed, "polling went on while shedding: {h:?}");
    // What is in the channel is whole polls, and the seq gap shows the shed ones.
    let first = next_poll(&mut rx, "mon-1", n).await;
    let later = next_poll(&mut rx, "mon-1", n).await;
    assert!(
        later[0].seq > first[0].seq + 1,
        "gap expected: {} then {}",
        first[0].seq,
        later[0].seq
    );
    stop.cancel();
    task.await.expect("join").expect("poller ends cleanly");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_tcp_security_over_tls_with_certificates_from_our_ca() {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer, ServerName};
    let provider = || Arc::new(rustls::crypto::ring::default_provider());
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = certs::init_site_ca(
        &dir.path().join("ca"),
        &certs::CaInit::new("Test Hospital", "gw1"),
    )
    .expect("site ca");
    let validity = || certs::Validity::days(1).expect("validity");
    let server_cert = ca
        .issue(&certs::CertSpec::service("modbus-sim"), validity())
        .expect("server cert");
    // The gateway's Modbus client presents a certificate with the Modbus/TCP Security role
    // extension; a certificate without a role (here the gateway's own) is refused by the device.
    let role_cert = ca
        .issue(
            &certs::CertSpec::Device(certs::DeviceSpec {
                id: "gw1-modbus".into(),
                modbus_role: Some("operator".into()),
                modbus_server: false,
                dns_names: Vec::new(),
                ip_addrs: Vec::new(),
            }),
            validity(),
        )
        .expect("role cert");
    let gw_cert = ca
        .issue(&certs::CertSpec::gateway("gw1"), validity())
        .expect("gateway cert");
    let key = |c: &certs::IssuedCert| {
        PrivateKeyDer::from_pem_slice(c.key_pem.as_deref().expect("key").as_bytes())
            .expect("key pem")
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der().clone()).expect("root");
    let roots = Arc::new(roots);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .expect("verifier");
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_cert.chain_der.clone(), key(&server_cert))
        .expect("server config");
    let client = |c: &certs::IssuedCert| {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(c.chain_der.clone(), key(c))
            .expect("client config")
    };
    let client_cfg = client(&role_cert);
    let no_role_cfg = client(&gw_cert);

    let mut p = builtin_profile("patient-monitor").expect("profile");
    p.poll_interval_ms = 100;
    // Keep the simulator from rewriting the value written below.
    for r in &mut p.registers {
        if r.name == "firmware_version" {
            r.sim = None;
        }
    }
    let profile = Arc::new(p);
    let n = profile.registers.len();
    let dev = SimDevice::new("mon-tls", profile.clone());
    dev.write_value("firmware_version", &Value::Text("9.9.9".into()))
        .expect("write");
    let authorize: device_adapters::sim::PeerCheck =
        Arc::new(|der: &[u8]| match certs::modbus_role_of(der) {
            Ok(Some(role)) if role == "operator" => Ok(()),
            Ok(Some(role)) => Err(format!("role {role:?} may not read this device")),
            Ok(None) => Err("client certificate carries no Modbus/TCP Security role".into()),
            Err(e) => Err(e.to_string()),
        });
    let server = ModbusSimServer::start_with_check(
        "127.0.0.1:0".parse().expect("addr"),
        dev,
        Some(Arc::new(server_cfg)),
        Some(authorize),
    )
    .await
    .expect("tls sim");
    let mut d = device("mon-tls", server.local_addr(), profile.clone());
    d.tls = Some(device_adapters::modbus::ModbusTls {
        config: Arc::new(client_cfg),
        server_name: ServerName::try_from("localhost").expect("name"),
    });
    // A plain-TCP poller against the TLS port must fail, not decode garbage.
    let mut plain = device("mon-plain", server.local_addr(), profile.clone());
    plain.tls = None;
    let mut no_role = device("mon-norole", server.local_addr(), profile.clone());
    no_role.tls = Some(device_adapters::modbus::ModbusTls {
        config: Arc::new(no_role_cfg),
        server_name: ServerName::try_from("localhost").expect("name"),
    });
    let (tx, mut rx) = mpsc::channel(256);
    let poller = ModbusPoller::new(fast_config(), vec![d, plain, no_role]).expect("poller");
    let stats = poller.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(poller.run(tx, stop.clone()));
    let batch = next_poll(&mut rx, "mon-tls", n).await;
    let fw = batch
        .iter()
        .find(|t| t.metric == "firmware_version")
        .expect("fw");
    assert_eq!(fw.value, Value::Text("9.9.9".into()));
    // Both refused clients go offline, in whatever order.
    let mut offline = std::collections::HashSet::new();
    while offline.len() < 2 {
        let ev = wait_for(&mut rx, "plain and role-less clients offline", |e| {
            matches!(e, AdapterEvent::Status(s)
                if (s.device_id == "mon-plain" || s.device_id == "mon-norole") && !s.online)
        })
        .await;
        if let AdapterEvent::Status(s) = ev {
            offline.insert(s.device_id);
        }
    }
    assert_eq!(stats.device("mon-plain").expect("health").polls_ok, 0);
    assert_eq!(stats.device("mon-norole").expect("health").polls_ok, 0);
    stop.cancel();
    task.await.expect("join").expect("poller ends cleanly");
    server.stop().await;
}
