//! `medledger-sim`: simulated medical devices for demos, tests and benchmarks.
//!
//! Runs N devices as Modbus TCP servers (one port each) and/or M devices publishing over MQTT.
//! Prints one JSON line per device on stdout (`{"event":"modbus","device_id":..,"port":..}`,
//! `{"event":"mqtt",..}`) then `{"event":"ready"}`. Faults can be set with `--fault` and changed
//! at run time with commands on stdin, one per line: `<device-id|*> <fault> <arg>`, where fault is
//! `alarm on|off`, `drift <per-minute>`, `silent on|off`, `exception <code|0>`, `malformed <n>`;
//! `quit` stops. Each command is answered with `{"event":"ok"}` or `{"event":"error",..}`.
//!
//! Over TLS every MQTT device has its own certificate (the broker's ACL ties a topic to one
//! device identity): `--mqtt-cert-dir DIR` holds `NAME.crt` + `NAME.key` pairs, and each device
//! takes its id from its certificate. A publish the broker denies (MQTT v5 PUBACK reason) and a
//! refused connection are reported as `{"event":"denied",..}` (first per device) and
//! `{"event":"connect_failed",..}` lines; `quit` ends with one `{"event":"mqtt_stats",..}` line
//! per device.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use clap::Parser;
use device_adapters::{
    mqtt::{telemetry_topic, BrokerAddr, MqttTransport},
    profile::{builtin_profile, DeviceProfile},
    sim::{run_mqtt_publisher, Fault, ModbusSimServer, PublishReport, PublisherStats, SimDevice},
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "medledger-sim",
    about = "Simulated medical devices (Modbus TCP servers and MQTT publishers)"
)]
struct Args {
    /// Number of Modbus TCP devices.
    #[arg(long, default_value_t = 0)]
    modbus: usize,
    /// Address the Modbus servers listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// First Modbus port; device i listens on base+i. 0 = let the OS choose each port.
    #[arg(long, default_value_t = 0)]
    base_port: u16,
    /// Profiles (built-in name: infusion-pump, ventilator, patient-monitor, or a TOML file),
    /// assigned round robin. Default: all three built-ins.
    #[arg(long = "profile")]
    profiles: Vec<String>,
    /// Serve Modbus/TCP Security (TLS) with this certificate chain (PEM) ...
    #[arg(long, requires_all = ["modbus_tls_key", "modbus_tls_ca"])]
    modbus_tls_cert: Option<PathBuf>,
    /// ... and key (PEM) ...
    #[arg(long)]
    modbus_tls_key: Option<PathBuf>,
    /// ... and require client certificates from this CA (PEM).
    #[arg(long)]
    modbus_tls_ca: Option<PathBuf>,
    /// Number of MQTT publishing devices.
    #[arg(long, default_value_t = 0)]
    mqtt: usize,
    #[arg(long, default_value = "127.0.0.1")]
    mqtt_host: String,
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// Publish period per MQTT device, milliseconds.
    #[arg(long, default_value_t = 1000)]
    mqtt_interval_ms: u64,
    /// CA certificate (PEM) to verify the broker; with --mqtt-cert-dir (or --mqtt-cert and
    /// --mqtt-key) enables TLS. Without it the connection is plain TCP (insecure, loopback only).
    #[arg(long)]
    mqtt_ca: Option<PathBuf>,
    /// Directory of per-device identities: NAME.crt (chain PEM) + NAME.key, taken in name order,
    /// one per MQTT device; each device's id is the one in its certificate.
    #[arg(long, conflicts_with_all = ["mqtt_cert", "mqtt_key"])]
    mqtt_cert_dir: Option<PathBuf>,
    /// One device's certificate chain (PEM), only with --mqtt 1: the device's id is the one in
    /// the certificate.
    #[arg(long, requires = "mqtt_key")]
    mqtt_cert: Option<PathBuf>,
    #[arg(long, requires = "mqtt_cert")]
    mqtt_key: Option<PathBuf>,
    /// Device id prefix; ids are <prefix><profile>-<n>.
    #[arg(long, default_value = "sim-")]
    id_prefix: String,
    /// Initial fault, `<device-id|*>:<fault> <arg>`, e.g. `*:alarm on`. Repeatable.
    #[arg(long = "fault")]
    faults: Vec<String>,
}

fn load_profiles(names: &[String]) -> anyhow::Result<Vec<Arc<DeviceProfile>>> {
    let names: Vec<String> = if names.is_empty() {
        vec![
            "infusion-pump".into(),
            "ventilator".into(),
            "patient-monitor".into(),
        ]
    } else {
        names.to_vec()
    };
    names
        .iter()
        .map(|n| {
            let p = if n.ends_with(".toml") {
                DeviceProfile::load(n.as_ref())?
            } else {
                builtin_profile(n)?
            };
            Ok(Arc::new(p))
        })
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &PathBuf) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let v = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad certificate pem in {}", path.display()))?;
    if v.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(v)
}

fn key(path: &PathBuf) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read private key from {}", path.display()))
}

fn roots(path: &PathBuf) -> anyhow::Result<Arc<rustls::RootCertStore>> {
    let mut r = rustls::RootCertStore::empty();
    for c in certs(path)? {
        r.add(c)
            .with_context(|| format!("bad ca certificate in {}", path.display()))?;
    }
    Ok(Arc::new(r))
}

/// One simulated MQTT device's TLS identity.
struct MqttIdentity {
    id: String,
    transport: MqttTransport,
}

fn load_identity(ca: &PathBuf, cert: &PathBuf, k: &PathBuf) -> anyhow::Result<MqttIdentity> {
    let chain = certs(cert)?;
    let who = certs::parse_identity(&chain[0])
        .with_context(|| format!("{}: not a medledger certificate", cert.display()))?;
    if who.profile != certs::Profile::Device {
        // kept: the simulator also shows what the broker does with a wrong identity
        tracing::warn!(cert = %cert.display(), profile = %who.profile, id = %who.id, "not a device certificate: the broker will deny its telemetry");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(chain, key(k)?)
        .with_context(|| {
            format!(
                "{} and {} do not make a client identity",
                cert.display(),
                k.display()
            )
        })?;
    Ok(MqttIdentity {
        id: who.id,
        transport: MqttTransport::Tls(Arc::new(cfg)),
    })
}

/// The TLS identities of the MQTT devices, or `None` for plain TCP.
fn mqtt_identities(a: &Args) -> anyhow::Result<Option<Vec<MqttIdentity>>> {
    let Some(ca) = &a.mqtt_ca else {
        if a.mqtt_cert_dir.is_some() || a.mqtt_cert.is_some() {
            bail!("--mqtt-cert-dir and --mqtt-cert need --mqtt-ca");
        }
        return Ok(None);
    };
    if let (Some(cert), Some(k)) = (&a.mqtt_cert, &a.mqtt_key) {
        if a.mqtt > 1 {
            bail!(
                "--mqtt-cert gives all {} devices one identity, and the broker lets only that device publish; use --mqtt-cert-dir with one NAME.crt/NAME.key per device",
                a.mqtt
            );
        }
        return Ok(Some(vec![load_identity(ca, cert, k)?]));
    }
    let Some(dir) = &a.mqtt_cert_dir else {
        bail!("--mqtt-ca needs --mqtt-cert-dir (or --mqtt-cert and --mqtt-key)");
    };
    let mut pairs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "crt") {
            let key = path.with_extension("key");
            if !key.exists() {
                bail!("{} has no key {}", path.display(), key.display());
            }
            pairs.push((path, key));
        }
    }
    pairs.sort();
    if pairs.len() < a.mqtt {
        bail!(
            "--mqtt {} but {} holds {} certificate(s) (NAME.crt + NAME.key, one per device)",
            a.mqtt,
            dir.display(),
            pairs.len()
        );
    }
    pairs
        .iter()
        .take(a.mqtt)
        .map(|(c, k)| load_identity(ca, c, k))
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

fn modbus_tls(a: &Args) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let (Some(cert), Some(k), Some(ca)) = (&a.modbus_tls_cert, &a.modbus_tls_key, &a.modbus_tls_ca)
    else {
        return Ok(None);
    };
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
            .build()?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert)?, key(k)?)?;
    Ok(Some(Arc::new(cfg)))
}

fn apply(devices: &[Arc<SimDevice>], spec: &str) -> Result<usize, String> {
    let (target, fault) = spec
        .split_once(char::is_whitespace)
        .ok_or("expected <device-id|*> <fault> <arg>")?;
    let target = target.trim_end_matches(':');
    let fault: Fault = fault.trim().parse()?;
    let mut n = 0;
    for d in devices.iter().filter(|d| target == "*" || d.id() == target) {
        d.set_fault(fault.clone());
        n += 1;
    }
    if n == 0 {
        return Err(format!("no device {target}"));
    }
    Ok(n)
}

fn line(v: serde_json::Value) {
    // stdout is the simulator's interface: one JSON object per line.
    println!("{v}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let profiles = load_profiles(&args.profiles)?;
    let tls = modbus_tls(&args)?;
    let shutdown = CancellationToken::new();
    let mut all: Vec<Arc<SimDevice>> = Vec::new();
    let mut servers = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();

    for i in 0..args.modbus {
        let p = profiles[i % profiles.len()].clone();
        let id = format!("{}{}-{:04}", args.id_prefix, p.name, i + 1);
        let port = if args.base_port == 0 {
            0
        } else {
            u16::try_from(usize::from(args.base_port) + i)
                .context("--base-port + --modbus past 65535")?
        };
        let dev = SimDevice::new(id.clone(), p.clone());
        let server =
            ModbusSimServer::start(SocketAddr::new(args.bind, port), dev.clone(), tls.clone())
                .await?;
        let addr = server.local_addr();
        line(
            serde_json::json!({"event": "modbus", "device_id": id, "profile": p.name, "addr": addr.to_string(), "port": addr.port(), "tls": tls.is_some()}),
        );
        servers.push(server);
        all.push(dev);
    }

    let (report_tx, mut reports) = tokio::sync::mpsc::channel::<PublishReport>(1024);
    let mut mqtt_devices: Vec<(Arc<SimDevice>, Arc<PublisherStats>)> = Vec::new();
    if args.mqtt > 0 {
        let identities = mqtt_identities(&args)?;
        for i in 0..args.mqtt {
            let p = profiles[i % profiles.len()].clone();
            let (id, transport) = match &identities {
                Some(ids) => (ids[i].id.clone(), ids[i].transport.clone()),
                None => (
                    format!("{}{}-m{:04}", args.id_prefix, p.name, i + 1),
                    MqttTransport::PlainInsecure,
                ),
            };
            let broker = BrokerAddr {
                host: args.mqtt_host.clone(),
                port: args.mqtt_port,
                transport,
            };
            let dev = SimDevice::new(id.clone(), p.clone());
            line(
                serde_json::json!({"event": "mqtt", "device_id": id, "profile": p.name, "topic": telemetry_topic(&id)}),
            );
            let stats = Arc::new(PublisherStats::default());
            tasks.spawn(run_mqtt_publisher(
                dev.clone(),
                broker,
                Duration::from_millis(args.mqtt_interval_ms),
                stats.clone(),
                Some(report_tx.clone()),
                shutdown.clone(),
            ));
            mqtt_devices.push((dev.clone(), stats));
            all.push(dev);
        }
    }
    drop(report_tx);
    let mut denied_reported = std::collections::HashSet::new();

    for f in &args.faults {
        let spec = f.replacen(':', " ", 1);
        apply(&all, &spec).map_err(|e| anyhow::anyhow!("--fault {f}: {e}"))?;
    }
    line(serde_json::json!({"event": "ready", "devices": all.len()}));

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            l = stdin.next_line(), if stdin_open => match l {
                Ok(Some(l)) => {
                    let l = l.trim();
                    if l.is_empty() { continue; }
                    if l == "quit" || l == "stop" { break; }
                    match apply(&all, l) {
                        Ok(n) => line(serde_json::json!({"event": "ok", "devices": n})),
                        Err(e) => line(serde_json::json!({"event": "error", "message": e})),
                    }
                }
                // stdin closed (e.g. started from a script): keep serving until a signal.
                _ => stdin_open = false,
            },
            Some(r) = reports.recv() => match r {
                // the first denial per device; the count is in the stats line at the end
                PublishReport::Denied { device_id, topic, reason } => {
                    if denied_reported.insert(device_id.clone()) {
                        line(serde_json::json!({"event": "denied", "device_id": device_id, "topic": topic, "reason": reason}));
                    }
                }
                PublishReport::ConnectFailed { device_id, error } => {
                    line(serde_json::json!({"event": "connect_failed", "device_id": device_id, "error": error}));
                }
            },
        }
    }
    shutdown.cancel();
    for s in servers {
        s.stop().await;
    }
    while tasks.join_next().await.is_some() {}
    for (dev, st) in &mqtt_devices {
        let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        line(
            serde_json::json!({"event": "mqtt_stats", "device_id": dev.id(), "published": g(&st.published), "acked": g(&st.acked), "denied": g(&st.denied), "connect_failures": g(&st.connect_failures)}),
        );
    }
    Ok(())
}
