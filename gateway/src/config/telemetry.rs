//! The telemetry sections of the config file: `[mqtt]`, `[[modbus]]`, `[telemetry]` and
//! `[[rules]]`, and their checks. Every default is written in `systemd/gateway.toml`.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use device_adapters::profile::DeviceProfile;
use serde::Deserialize;

use super::{Config, ConfigError};

/// `[mqtt]`: the site broker the gateway subscribes to (QoS 1, persistent session, manual acks).
/// TLS uses this gateway's certificate and key and the site root from `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// Broker host name or address; with TLS the broker's certificate must name it.
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// `false` = plain TCP, no encryption and no authentication: refused unless `host` is a
    /// loopback address (demo and tests on one machine).
    #[serde(default = "yes")]
    pub tls: bool,
    /// The fixed client id under which the broker keeps this gateway's persistent session
    /// (subscription and queued messages while the gateway is away). Default
    /// `medledger-gateway-<node.id>`.
    pub client_id: Option<String>,
    #[serde(default = "default_topic_filter")]
    pub topic_filter: String,
    /// Larger payloads are dropped and counted.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
}

fn default_mqtt_port() -> u16 {
    8883
}
fn yes() -> bool {
    true
}
fn default_topic_filter() -> String {
    device_adapters::mqtt::TELEMETRY_FILTER.into()
}
fn default_max_payload() -> usize {
    64 * 1024
}
fn default_keep_alive() -> u64 {
    30
}

impl MqttSection {
    /// The client id, with its default filled in.
    pub fn client_id(&self, node_id: u64) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("medledger-gateway-{node_id}"))
    }
}

/// `[broker_crl]`: the site broker's copy of this gateway's CRL. Mosquitto reads its `crlfile`
/// at start and on SIGHUP only, and refuses every client once that CRL's nextUpdate has passed;
/// so each time the gateway signs a CRL (on a revocation, and every quarter of
/// `tls.crl_validity_s`) it also writes it here and, with `pid_file`, sends the broker SIGHUP.
/// Without `pid_file`, a systemd path unit reloads the broker (`systemd/medledger-broker-crl.path`).
/// The file holds this gateway's CRL only: the broker's clients (devices and gateways) must carry
/// certificates of this gateway's issuing CA, as the CRL check refuses a client whose issuer has
/// no CRL in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerCrlSection {
    /// The broker's `crlfile` (`crl.pem` in the `mosquitto-config` output), written atomically,
    /// mode 0644.
    pub file: PathBuf,
    /// The broker's pid file (`pid_file` in mosquitto.conf): SIGHUP goes to that process after
    /// each write. The gateway must be allowed to signal it (same user, or root).
    pub pid_file: Option<PathBuf>,
}

/// `[[modbus]]`: one device this gateway polls over Modbus TCP (or Modbus/TCP Security).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDeviceSection {
    /// The device id events are recorded under (UDI where known).
    pub device_id: String,
    /// `host:port` (502 for Modbus TCP, 802 for Modbus/TCP Security).
    pub address: String,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// A profile name: `<telemetry.profiles_dir>/<profile>.toml`, else a built-in profile.
    pub profile: String,
    /// Overrides the profile's poll interval.
    pub poll_interval_ms: Option<u64>,
    /// Modbus/TCP Security: TLS 1.2+ with this gateway's certificate (or `role_cert_file`).
    #[serde(default)]
    pub tls: bool,
    /// The name the device's certificate must carry (DNS name or IP); default the address's host.
    pub server_name: Option<String>,
    /// A certificate carrying the Modbus role (OID 1.3.6.1.4.1.50316.802.1) and its key;
    /// default the gateway's own certificate.
    pub role_cert_file: Option<PathBuf>,
    pub role_key_file: Option<PathBuf>,
    /// Resolved `address` (filled in at load).
    #[serde(skip)]
    pub socket_addr: Option<SocketAddr>,
}

fn default_unit_id() -> u8 {
    1
}

/// `[telemetry]`: the path from adapters through rules to the outbox, and its bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// Directory of device profiles (`<name>.toml`); relative paths are relative to
    /// `node.data_dir`. Profiles not found there come from the built-in set.
    pub profiles_dir: Option<PathBuf>,
    /// Most bytes of rule events waiting on disk (`<data_dir>/outbox/`) for the ledger. While it
    /// is full, samples that raise no event are dropped and counted, and a sample that raises
    /// one waits (its MQTT message stays unacknowledged) until the outbox drains.
    #[serde(default = "default_outbox_bytes")]
    pub outbox_max_bytes: u64,
    /// Values kept per device and metric for the staff view, seconds back...
    #[serde(default = "default_recent_window")]
    pub recent_window_s: u64,
    /// ...as one min/max/last bucket per this many seconds (memory per metric is bounded by
    /// window / bucket buckets).
    #[serde(default = "default_recent_bucket")]
    pub recent_bucket_s: u64,
    /// Most devices kept in the recent view; values of further devices are not kept there.
    #[serde(default = "default_recent_devices")]
    pub recent_max_devices: usize,
    /// Capacity of the channel between the adapters and the rules.
    #[serde(default = "default_channel")]
    pub channel_capacity: usize,
    /// Modbus: per request and per connect, ms.
    #[serde(default = "default_modbus_timeout")]
    pub modbus_request_timeout_ms: u64,
    /// Modbus: consecutive failed polls before a device is reported offline.
    #[serde(default = "default_offline_after")]
    pub modbus_offline_after: u32,
}

fn default_outbox_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_recent_window() -> u64 {
    86_400
}
fn default_recent_bucket() -> u64 {
    600
}
fn default_recent_devices() -> usize {
    10_000
}
fn default_channel() -> usize {
    4096
}
fn default_modbus_timeout() -> u64 {
    1000
}
fn default_offline_after() -> u32 {
    3
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            profiles_dir: None,
            outbox_max_bytes: default_outbox_bytes(),
            recent_window_s: default_recent_window(),
            recent_bucket_s: default_recent_bucket(),
            recent_max_devices: default_recent_devices(),
            channel_capacity: default_channel(),
            modbus_request_timeout_ms: default_modbus_timeout(),
            modbus_offline_after: default_offline_after(),
        }
    }
}

/// What a rule watches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleKindName {
    /// An `alarm` while `metric` is above `limit`, cleared below `limit - hysteresis`.
    Above,
    /// An `alarm` while `metric` is below `limit`, cleared above `limit + hysteresis`.
    Below,
    /// A `maintenance-due` each time `metric` (operating hours, cycles) passes a multiple of
    /// `interval`.
    Counter,
    /// A `status-change` (offline) when the device is silent for `silent_intervals` ×
    /// `expected_interval_ms` or its poller reports it offline; online again on its return.
    Offline,
}

/// `[[rules]]`: one rule with a stable name (event ids derive from it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// Stable name: it is part of every event id the rule makes; renaming a rule makes a
    /// replayed sample a new event.
    pub name: String,
    pub kind: RuleKindName,
    /// Only this device...
    pub device: Option<String>,
    /// ...or only devices of this profile (Modbus devices by their `profile`); neither: every
    /// device.
    pub profile: Option<String>,
    /// The metric watched (above, below, counter).
    pub metric: Option<String>,
    /// above / below.
    pub limit: Option<f64>,
    #[serde(default)]
    pub hysteresis: f64,
    /// The condition must hold this long (sample time) before the alarm is raised or cleared.
    #[serde(default)]
    pub min_duration_ms: u64,
    /// counter: the maintenance interval in the metric's unit.
    pub interval: Option<f64>,
    /// offline: how often the device reports, ms.
    pub expected_interval_ms: Option<u64>,
    #[serde(default = "default_silent_intervals")]
    pub silent_intervals: u32,
}

fn default_silent_intervals() -> u32 {
    3
}

/// Checks the telemetry sections and resolves Modbus addresses and profiles.
pub(super) fn check(
    c: &mut Config,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if let Some(m) = &c.mqtt {
        if m.host.is_empty() {
            return Err(invalid("mqtt.host", "must not be empty".into()));
        }
        if m.port == 0 {
            return Err(invalid("mqtt.port", "must not be 0".into()));
        }
        if !m.tls && !is_loopback_host(&m.host) {
            return Err(invalid(
                "mqtt.tls",
                format!(
                    "plain TCP (tls = false) is allowed only to a loopback broker, not {}",
                    m.host
                ),
            ));
        }
        if m.client_id.as_deref() == Some("") {
            return Err(invalid("mqtt.client_id", "must not be empty".into()));
        }
        if m.topic_filter.is_empty() {
            return Err(invalid("mqtt.topic_filter", "must not be empty".into()));
        }
        if m.max_payload_bytes == 0 {
            return Err(invalid(
                "mqtt.max_payload_bytes",
                "must be at least 1".into(),
            ));
        }
        if m.keep_alive_s < 5 {
            return Err(invalid("mqtt.keep_alive_s", "must be at least 5".into()));
        }
    }
    if let Some(b) = &mut c.broker_crl {
        if b.file.as_os_str().is_empty() || b.file.is_dir() {
            return Err(invalid(
                "broker_crl.file",
                format!("{:?} is not a file path", b.file),
            ));
        }
        for p in std::iter::once(&mut b.file).chain(b.pid_file.as_mut()) {
            if p.is_relative() {
                *p = c.node.data_dir.join(&*p);
            }
        }
    }
    let t = &mut c.telemetry;
    if let Some(d) = &mut t.profiles_dir {
        if d.is_relative() {
            *d = c.node.data_dir.join(&*d);
        }
    }
    if t.outbox_max_bytes < 4096 {
        return Err(invalid(
            "telemetry.outbox_max_bytes",
            "must be at least 4096".into(),
        ));
    }
    if t.recent_bucket_s == 0 || t.recent_window_s < t.recent_bucket_s {
        return Err(invalid(
            "telemetry.recent_bucket_s",
            "must be at least 1 and at most telemetry.recent_window_s".into(),
        ));
    }
    if t.channel_capacity < 64 {
        return Err(invalid(
            "telemetry.channel_capacity",
            "must be at least 64".into(),
        ));
    }
    if t.modbus_request_timeout_ms == 0 {
        return Err(invalid(
            "telemetry.modbus_request_timeout_ms",
            "must be at least 1".into(),
        ));
    }
    if t.modbus_offline_after == 0 {
        return Err(invalid(
            "telemetry.modbus_offline_after",
            "must be at least 1".into(),
        ));
    }
    let mut profiles: BTreeMap<String, Arc<DeviceProfile>> = BTreeMap::new();
    let mut ids = HashSet::new();
    for d in &mut c.modbus {
        if let Err(e) = certs::validate_device_id(&d.device_id) {
            return Err(invalid("modbus.device_id", e.to_string()));
        }
        if !ids.insert(d.device_id.clone()) {
            return Err(invalid(
                "modbus.device_id",
                format!("{} appears twice", d.device_id),
            ));
        }
        let addr = d
            .address
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                invalid(
                    "modbus.address",
                    format!(
                        "device {}: {:?} is not a host:port that resolves",
                        d.device_id, d.address
                    ),
                )
            })?;
        d.socket_addr = Some(addr);
        if d.poll_interval_ms == Some(0) {
            return Err(invalid(
                "modbus.poll_interval_ms",
                format!("device {}: must be at least 1", d.device_id),
            ));
        }
        if d.role_cert_file.is_some() != d.role_key_file.is_some() {
            return Err(invalid(
                "modbus.role_cert_file",
                format!(
                    "device {}: role_cert_file and role_key_file go together",
                    d.device_id
                ),
            ));
        }
        if !d.tls && (d.role_cert_file.is_some() || d.server_name.is_some()) {
            return Err(invalid(
                "modbus.tls",
                format!(
                    "device {}: server_name and role certificates need tls = true",
                    d.device_id
                ),
            ));
        }
        for p in [&mut d.role_cert_file, &mut d.role_key_file]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = c.node.data_dir.join(&*p);
            }
        }
        if !profiles.contains_key(&d.profile) {
            let p = load_profile(t.profiles_dir.as_deref(), &d.profile)
                .map_err(|e| invalid("modbus.profile", format!("device {}: {e}", d.device_id)))?;
            profiles.insert(d.profile.clone(), Arc::new(p));
        }
    }
    c.profiles = profiles;
    let mut names = HashSet::new();
    for r in &c.rules {
        let bad = |field, m: &str| invalid(field, format!("rule {:?}: {m}", r.name));
        if r.name.is_empty()
            || r.name.len() > 128
            || r.name.chars().any(|ch| ch.is_control() || ch == '\0')
        {
            return Err(bad("rules.name", "must be 1..=128 printable characters"));
        }
        if !names.insert(r.name.clone()) {
            return Err(bad("rules.name", "appears twice"));
        }
        if r.device.is_some() && r.profile.is_some() {
            return Err(bad("rules.device", "give device or profile, not both"));
        }
        match r.kind {
            RuleKindName::Above | RuleKindName::Below | RuleKindName::Counter => {
                if r.metric.as_deref().is_none_or(str::is_empty) {
                    return Err(bad("rules.metric", "required for this kind"));
                }
            }
            RuleKindName::Offline => {}
        }
        match r.kind {
            RuleKindName::Above | RuleKindName::Below => {
                if !r.limit.is_some_and(f64::is_finite) {
                    return Err(bad("rules.limit", "required, a finite number"));
                }
                if !r.hysteresis.is_finite() || r.hysteresis < 0.0 {
                    return Err(bad("rules.hysteresis", "must be finite and >= 0"));
                }
            }
            RuleKindName::Counter => {
                if !r.interval.is_some_and(|i| i.is_finite() && i > 0.0) {
                    return Err(bad("rules.interval", "required, a number > 0"));
                }
            }
            RuleKindName::Offline => {
                if r.expected_interval_ms.is_none_or(|i| i == 0) {
                    return Err(bad("rules.expected_interval_ms", "required, at least 1"));
                }
                if r.silent_intervals == 0 {
                    return Err(bad("rules.silent_intervals", "must be at least 1"));
                }
            }
        }
    }
    Ok(())
}

/// A profile from `dir/<name>.toml` when that file exists, else a built-in one.
fn load_profile(
    dir: Option<&std::path::Path>,
    name: &str,
) -> Result<DeviceProfile, device_adapters::Error> {
    if let Some(dir) = dir {
        if name.contains('/') || name.contains("..") {
            return Err(device_adapters::Error::ProfileInvalid {
                name: name.into(),
                message: "a profile name is a file stem, not a path".into(),
            });
        }
        let path = dir.join(format!("{name}.toml"));
        if path.exists() {
            return DeviceProfile::load(&path);
        }
    }
    device_adapters::profile::builtin_profile(name)
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "[node]\nid = 1\ndata_dir = \"/srv/ml\"\n";

    #[test]
    fn telemetry_sections_parse_with_defaults() {
        let c = Config::parse(
            Path::new("t.toml"),
            &format!(
                "{BASE}[mqtt]\nhost = \"broker.example\"\n\
                 [[modbus]]\ndevice_id = \"vent-3\"\naddress = \"127.0.0.1:502\"\nprofile = \"ventilator\"\n\
                 [[rules]]\nname = \"flow-high\"\nkind = \"above\"\nprofile = \"infusion-pump\"\nmetric = \"flow_rate\"\nlimit = 130.0\nhysteresis = 2.0\n"
            ),
        )
        .expect("valid");
        let m = c.mqtt.as_ref().expect("mqtt");
        assert_eq!((m.port, m.tls), (8883, true));
        assert_eq!(m.client_id(1), "medledger-gateway-1");
        assert_eq!(c.modbus[0].unit_id, 1);
        assert!(c.profiles.contains_key("ventilator"));
        assert_eq!(c.telemetry.outbox_max_bytes, 64 * 1024 * 1024);
    }

    /// The commented telemetry examples in systemd/ are a valid config once uncommented.
    #[test]
    fn the_shipped_telemetry_examples_parse() {
        let text = include_str!("../../../systemd/gateway.toml");
        let part = &text[text.find("# ---- Telemetry").expect("telemetry part")..];
        let mut out = String::from("[node]\nid = 1\n");
        for line in part.lines() {
            let body = line.strip_prefix("# ").unwrap_or(line);
            let header = body.split('#').next().unwrap_or("").trim();
            let setting = (header.starts_with('[') && header.ends_with(']'))
                || body
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            if setting || !line.starts_with('#') {
                out.push_str(body);
                out.push('\n');
            }
        }
        let c = Config::parse(Path::new("systemd/gateway.toml"), &out).expect(&out);
        assert!(
            c.mqtt.is_some() && c.modbus.len() == 1 && c.rules.len() == 3,
            "{out}"
        );
    }

    #[test]
    fn telemetry_errors_name_the_field() {
        let cases = [
            ("[mqtt]\nhost = \"10.0.0.1\"\ntls = false\n", "mqtt.tls"),
            (
                "[[modbus]]\ndevice_id = \"v\"\naddress = \"nowhere\"\nprofile = \"ventilator\"\n",
                "modbus.address",
            ),
            (
                "[[modbus]]\ndevice_id = \"v\"\naddress = \"127.0.0.1:502\"\nprofile = \"toaster\"\n",
                "modbus.profile",
            ),
            (
                "[[modbus]]\ndevice_id = \"v\"\naddress = \"127.0.0.1:502\"\nprofile = \"ventilator\"\n[[modbus]]\ndevice_id = \"v\"\naddress = \"127.0.0.1:503\"\nprofile = \"ventilator\"\n",
                "modbus.device_id",
            ),
            ("[[rules]]\nname = \"r\"\nkind = \"above\"\nmetric = \"x\"\n", "rules.limit"),
            ("[[rules]]\nname = \"r\"\nkind = \"counter\"\nmetric = \"x\"\n", "rules.interval"),
            ("[[rules]]\nname = \"r\"\nkind = \"offline\"\n", "rules.expected_interval_ms"),
            ("[[rules]]\nname = \"r\"\nkind = \"sideways\"\n", "unknown variant"),
            (
                "[[rules]]\nname = \"r\"\nkind = \"offline\"\nexpected_interval_ms = 5\n[[rules]]\nname = \"r\"\nkind = \"offline\"\nexpected_interval_ms = 5\n",
                "appears twice",
            ),
            ("[telemetry]\noutbox_max_bytes = 10\n", "telemetry.outbox_max_bytes"),
        ];
        for (text, want) in cases {
            let e = Config::parse(Path::new("gw.toml"), &format!("{BASE}{text}"))
                .expect_err(text)
                .to_string();
            assert!(e.contains(want) && e.contains("gw.toml"), "{text}: {e}");
        }
    }
}
