//! The demo site's files, made the way hospital IT makes them (docs/operations.md,
//! docs/identity.md): by running this same `medledger` binary's commands (`ca init`,
//! `cert issue`, `mosquitto-config`), then writing each gateway's config file.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// One simulated device.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub id: String,
    /// A built-in profile (`infusion-pump`, `ventilator`, `patient-monitor`).
    pub profile: &'static str,
    pub transport: Transport,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Publishes over MQTT through the broker with its own certificate (`devices/<id>.crt`).
    Mqtt,
    /// A Modbus TCP server polled by gateway `gateway` (1-based).
    Modbus { gateway: u64 },
}

/// The demo's devices. The first pump carries the README's GS1 UDI, to show that an id with
/// parentheses travels from its certificate through the broker's ACL to the ledger.
pub fn devices() -> Vec<DeviceSpec> {
    let mqtt = |id: &str, profile| DeviceSpec {
        id: id.into(),
        profile,
        transport: Transport::Mqtt,
    };
    let modbus = |id: &str, profile, gateway| DeviceSpec {
        id: id.into(),
        profile,
        transport: Transport::Modbus { gateway },
    };
    vec![
        mqtt("(01)00884838035249(21)PMP1", "infusion-pump"),
        mqtt("pump-icu-02", "infusion-pump"),
        mqtt("vent-icu-01", "ventilator"),
        mqtt("vent-icu-02", "ventilator"),
        mqtt("monitor-icu-01", "patient-monitor"),
        mqtt("monitor-icu-02", "patient-monitor"),
        modbus("pump-ward-03", "infusion-pump", 1),
        modbus("vent-ward-03", "ventilator", 2),
        modbus("monitor-ward-03", "patient-monitor", 3),
    ]
}

/// The rules every gateway runs (docs/device-adapters.md). Intervals are short so that
/// something happens while one watches: the counters stand for operating-hour service intervals.
pub const RULES: &str = r#"
[[rules]]
name = "flow-high"
kind = "above"
metric = "flow_rate"
limit = 130.0
hysteresis = 2.0

[[rules]]
name = "peak-pressure-high"
kind = "above"
metric = "peak_pressure"
limit = 30.0
hysteresis = 1.0

[[rules]]
name = "heart-rate-high"
kind = "above"
metric = "heart_rate"
limit = 120.0
hysteresis = 3.0

[[rules]]
name = "device-alarm"
kind = "above"
metric = "alarm_bits"
limit = 0.5

# 0.01 h of operating time = 36 s: a preventive maintenance falls due about every half minute
[[rules]]
name = "pm-hours-pump"
kind = "counter"
device = "pump-icu-02"
metric = "operating_hours"
interval = 0.01

[[rules]]
name = "pm-hours-ventilator"
kind = "counter"
device = "vent-ward-03"
metric = "operating_hours"
interval = 0.02

[[rules]]
name = "silent"
kind = "offline"
expected_interval_ms = 1000
silent_intervals = 5
"#;

/// Where everything of one demo site lives.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn gateway_dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("gateway{id}"))
    }
    pub fn config(&self, id: u64) -> PathBuf {
        self.gateway_dir(id).join("gateway.toml")
    }
    pub fn root_crt(&self) -> PathBuf {
        self.gateway_dir(1).join("pki").join("root.crt")
    }
    pub fn mosquitto_dir(&self) -> PathBuf {
        self.root.join("mosquitto")
    }
    pub fn devices_dir(&self) -> PathBuf {
        self.root.join("devices")
    }
    pub fn device_prefix(&self, id: &str) -> PathBuf {
        self.devices_dir().join(certs::mqtt_segment(id))
    }
    pub fn staff_prefix(&self) -> PathBuf {
        self.root.join("staff").join(STAFF_ID)
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
}

/// The staff member the demo signs in as.
pub const STAFF_ID: &str = "demo-biomed";

/// Gives the staff member a web account on gateway `id` (its `staff.json`) with a new random
/// password, returned for the sign-in the demo prints.
pub async fn add_web_account(l: &Layout, id: u64) -> anyhow::Result<String> {
    use rand::Rng;
    let password: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    let accounts = crate::accounts::Accounts::in_data_dir(&l.gateway_dir(id));
    let pw = password.clone();
    tokio::task::spawn_blocking(move || {
        accounts.add(STAFF_ID, "Demo Biomed", certs::StaffRole::Biomed, &pw)
    })
    .await?
    .context("adding the demo's staff account")?;
    Ok(password)
}

/// Runs `medledger ARGS` (this binary) to its end; an error carries its output.
pub async fn medledger(args: &[String]) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find the medledger binary")?;
    let out = tokio::process::Command::new(&exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "medledger {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn a(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// `medledger cert issue` on gateway 1's CA (its local ledger: the gateways do not run yet):
/// a certificate of `profile` for `id`, valid `days`, written to `out`.crt/.key.
async fn cert_issue(
    l: &Layout,
    profile: &str,
    id: &str,
    days: u32,
    out: &Path,
    extra: &[&str],
) -> anyhow::Result<()> {
    let mut args = a(&["cert", "issue", "--data-dir", &s(&l.gateway_dir(1))]);
    args.extend(a(&[
        "--profile",
        profile,
        "--id",
        id,
        "--days",
        &days.to_string(),
    ]));
    args.extend(a(extra));
    args.extend(a(&["--out", &s(out)]));
    medledger(&args).await.map(|_| ())
}

/// Site CA and gateway 1's issuing CA (`ca init`), then certificates for gateways 2 and 3 from
/// it (`cert issue --profile gateway`; docs/operations.md "More gateways"), each with the site
/// root beside it, and an issuing CA of its own under the root (what `ca init --issuing-only`
/// and `ca sign-issuing` make), so that each gateway endorses its ledger key at start and the
/// web page's receipt badges find every key endorsed by the site (docs/identity.md). Their TLS
/// certificates stay gateway 1's: the broker's CRL holds gateway 1's only.
pub async fn make_ca_and_gateways(l: &Layout, n: u64) -> anyhow::Result<()> {
    medledger(&a(&[
        "ca",
        "init",
        "--data-dir",
        &s(&l.gateway_dir(1)),
        "--site",
        "MedLedger Demo Hospital",
        "--node-id",
        "1",
    ]))
    .await?;
    for id in 2..=n {
        let pki = l.gateway_dir(id).join("pki");
        create_private_dir(&pki)?;
        cert_issue(l, "gateway", &id.to_string(), 90, &pki.join("gateway"), &[]).await?;
        std::fs::copy(l.root_crt(), pki.join("root.crt"))
            .with_context(|| format!("cannot copy the site root to {}", pki.display()))?;
        let csr = certs::request_issuing_ca(&pki, &id.to_string())?;
        let issuing =
            certs::RootCa::load(&l.gateway_dir(1).join("pki"))?.sign_issuing_csr(&csr, 365)?;
        let root = std::fs::read_to_string(l.root_crt())
            .with_context(|| format!("cannot read {}", l.root_crt().display()))?;
        certs::install_issuing_ca(&pki, &issuing, &root)?;
    }
    Ok(())
}

/// A certificate for each MQTT device and one for the staff member (`cert issue`).
pub async fn make_identities(l: &Layout, devices: &[DeviceSpec]) -> anyhow::Result<()> {
    create_private_dir(&l.devices_dir())?;
    for d in devices.iter().filter(|d| d.transport == Transport::Mqtt) {
        cert_issue(l, "device", &d.id, 30, &l.device_prefix(&d.id), &[]).await?;
    }
    create_private_dir(&l.root.join("staff"))?;
    let staff = ["--name", "Demo Biomed", "--role", "biomed"];
    cert_issue(l, "staff", STAFF_ID, 30, &l.staff_prefix(), &staff).await
}

/// The broker's files (`mosquitto-config`): TLS listener on loopback `port` with the ACL that
/// lets each device write only its own topic and gateways 1..=n read.
pub async fn make_mosquitto_config(l: &Layout, port: u16, n: u64) -> anyhow::Result<PathBuf> {
    let mut args = a(&[
        "mosquitto-config",
        "--data-dir",
        &s(&l.gateway_dir(1)),
        "--out",
        &s(&l.mosquitto_dir()),
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ]);
    for id in 1..=n {
        args.push("--gateway-id".into());
        args.push(id.to_string());
    }
    if nix::unistd::geteuid().is_root() {
        // started as root, mosquitto would switch to its own user, which cannot read this
        // demo's private directory
        args.push("--run-as-user".into());
        args.push("root".into());
    }
    medledger(&args).await?;
    Ok(l.mosquitto_dir().join("mosquitto.conf"))
}

/// Gateway `id`'s config: its API on loopback `api`, the staff web page on `web` (gateway 1), the broker (port, TLS; gateway 1 only: rules keep
/// per-device state, and a device watched by two gateways would have its silence judged by two
/// clocks), its Modbus devices, the rules, and the CRL hook that keeps the broker's CRL fresh.
pub fn write_config(
    l: &Layout,
    id: u64,
    api: SocketAddr,
    broker: Option<(u16, bool)>,
    modbus: &[(DeviceSpec, SocketAddr)],
    broker_pid_file: Option<&Path>,
    web: Option<SocketAddr>,
) -> anyhow::Result<PathBuf> {
    let dir = l.gateway_dir(id);
    let mut c = String::from("# written by `medledger demo`\n");
    let _ = write!(
        c,
        "[node]\nid = {id}\ndata_dir = {}\n\n[api]\nlisten = \"{api}\"\n",
        toml_str(&s(&dir))
    );
    if let Some(web) = web {
        let _ = write!(c, "\n[web]\nlisten = \"{web}\"\n");
    }
    if let Some((port, tls)) = broker {
        let _ = write!(
            c,
            "\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ntls = {tls}\n"
        );
    }
    if let Some(pid) = broker_pid_file {
        let _ = write!(
            c,
            "\n[broker_crl]\nfile = {}\npid_file = {}\n",
            toml_str(&s(&l.mosquitto_dir().join("crl.pem"))),
            toml_str(&s(pid))
        );
    }
    for (d, addr) in modbus {
        let _ = write!(
            c,
            "\n[[modbus]]\ndevice_id = {}\naddress = \"{addr}\"\nprofile = \"{}\"\npoll_interval_ms = 1000\n",
            toml_str(&d.id),
            d.profile
        );
    }
    c.push_str(RULES);
    let path = l.config(id);
    std::fs::write(&path, c).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A TOML basic string.
fn toml_str(v: &str) -> String {
    toml::Value::String(v.to_owned()).to_string()
}

fn create_private_dir(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("cannot create {}", p.display()))
}

/// A loopback port that was free a moment ago, for the programs that cannot be handed a bound
/// socket (gateways, Mosquitto).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
