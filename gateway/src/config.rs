//! The gateway's configuration file (TOML). One `Config` of per-subsystem sections, parsed into
//! validated types; every default is written in `systemd/gateway.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The release this file was written for (`version = "0.2.0"`), optional: a file for a
    /// newer release than this gateway's is refused naming both, before its keys are read.
    pub version: Option<String>,
    pub node: NodeConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub raft: RaftConfig,
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// `[mqtt]`: the site broker; no MQTT ingestion when absent.
    pub mqtt: Option<MqttSection>,
    /// `[[modbus]]`: devices this gateway polls.
    #[serde(default)]
    pub modbus: Vec<ModbusDeviceSection>,
    #[serde(default)]
    pub telemetry: TelemetrySection,
    /// `[[rules]]`: telemetry rules (threshold alarms, maintenance counters, offline detection).
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    /// `[web]`: the staff web page; off when absent.
    pub web: Option<WebSection>,
    /// `[broker_crl]`: keep the site broker's CRL file fresh; nothing is written when absent.
    pub broker_crl: Option<BrokerCrlSection>,
    /// Device profiles named by `[[modbus]]` devices, resolved at load (`telemetry.profiles_dir`
    /// first, then the built-in ones), so a missing profile is a config error, not a runtime one.
    #[serde(skip)]
    pub profiles:
        std::collections::BTreeMap<String, std::sync::Arc<device_adapters::profile::DeviceProfile>>,
    /// The file this config was loaded from (SIGHUP reads it again).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[node]`: who this gateway is and where it keeps its state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft node id, unique in the cluster, never reused; also written into every entry.
    pub id: u64,
    /// State directory: ledger, Raft log, keys, PKI.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Free space (MiB) kept under `data_dir`: below it the gateway refuses new writes (507)
    /// so that its storage never meets a full disk mid-write; reads go on, and writes resume
    /// by themselves once space is freed.
    #[serde(default = "default_reserve_mb")]
    pub reserve_mb: u64,
    /// Free space (MiB) under `data_dir` below which health says `degraded` (the disk check
    /// warns) while writes go on. Unset: 2048 MiB, or twice `reserve_mb` when that is more.
    /// Must be above `reserve_mb`.
    #[serde(default)]
    pub warn_free_mb: Option<u64>,
}

impl NodeConfig {
    /// Free space in bytes under which the disk check warns (`warn_free_mb` or its default).
    pub fn warn_free_bytes(&self) -> u64 {
        self.warn_free_mb
            .unwrap_or_else(|| 2048.max(self.reserve_mb.saturating_mul(2)))
            .saturating_mul(1024 * 1024)
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/medledger")
}

fn default_reserve_mb() -> u64 {
    256
}

/// `[api]`: the HTTPS listener (staff API, Raft RPC between gateways, cluster administration).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Mutual-TLS listener for staff, devices and peer gateways.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address peers and the CLI use to reach this node (host:port); defaults to `listen`.
    pub advertise: Option<String>,
    /// TLS listener without client certificates, only for device enrollment with a one-time
    /// token. Off when absent.
    pub enroll_listen: Option<SocketAddr>,
    /// Plain-HTTP health and metrics listener; must be a loopback address.
    pub health_listen: Option<SocketAddr>,
    /// Most staff and device connections open at once, all identities together; a connection
    /// beyond it is closed after its handshake. Peer gateways do not count (`peer_connections`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections one staff member or device (certificate profile and id) holds open at
    /// once: one certificate cannot take the whole pool.
    #[serde(default = "default_max_connections_per_identity")]
    pub max_connections_per_identity: usize,
    /// Connections reserved for peer gateways (Raft replication, forwarding), counted apart from
    /// `max_connections`, so staff and device connections never starve replication.
    #[serde(default = "default_peer_connections")]
    pub peer_connections: usize,
    /// Most TLS handshakes in progress at once, from all sources (a client has no identity until
    /// its handshake ends); a connection beyond it is closed at once.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Most TLS handshakes in progress at once from one source IP address.
    #[serde(default = "default_max_handshakes_per_ip")]
    pub max_handshakes_per_ip: usize,
    /// Time a client has to finish its TLS handshake, ms.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
    /// Time a request's head (request line and headers) has to arrive once its first byte has,
    /// and the first request's once the handshake is done, ms; then the connection is closed.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_ms: u64,
    /// Time a request's whole body has to arrive once its head has, ms; then the request is
    /// answered 408 and the connection closed.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_ms: u64,
    /// A connection with no request in progress is closed after this long, ms.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Source address for outgoing connections to peers (for multi-homed appliances).
    pub source_address: Option<std::net::IpAddr>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_identity() -> usize {
    64
}
fn default_peer_connections() -> usize {
    64
}
fn default_max_handshakes() -> usize {
    256
}
fn default_max_handshakes_per_ip() -> usize {
    16
}
fn default_handshake_timeout() -> u64 {
    5_000
}
fn default_header_read_timeout() -> u64 {
    10_000
}
fn default_body_read_timeout() -> u64 {
    30_000
}
fn default_idle_timeout() -> u64 {
    60_000
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            advertise: None,
            enroll_listen: None,
            health_listen: None,
            max_connections: default_max_connections(),
            max_connections_per_identity: default_max_connections_per_identity(),
            peer_connections: default_peer_connections(),
            max_handshakes: default_max_handshakes(),
            max_handshakes_per_ip: default_max_handshakes_per_ip(),
            handshake_timeout_ms: default_handshake_timeout(),
            header_read_timeout_ms: default_header_read_timeout(),
            body_read_timeout_ms: default_body_read_timeout(),
            idle_timeout_ms: default_idle_timeout(),
            source_address: None,
        }
    }
}

impl ApiConfig {
    /// Checks the limits and timeouts; an error names the field.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let at_least_one = [
            ("api.max_connections", self.max_connections),
            (
                "api.max_connections_per_identity",
                self.max_connections_per_identity,
            ),
            ("api.peer_connections", self.peer_connections),
            ("api.max_handshakes", self.max_handshakes),
            ("api.max_handshakes_per_ip", self.max_handshakes_per_ip),
        ];
        for (field, v) in at_least_one {
            if v == 0 {
                return Err((field, "must be at least 1".into()));
            }
        }
        if self.max_connections_per_identity > self.max_connections {
            return Err((
                "api.max_connections_per_identity",
                format!(
                    "{} is more than api.max_connections ({})",
                    self.max_connections_per_identity, self.max_connections
                ),
            ));
        }
        if self.max_handshakes_per_ip > self.max_handshakes {
            return Err((
                "api.max_handshakes_per_ip",
                format!(
                    "{} is more than api.max_handshakes ({})",
                    self.max_handshakes_per_ip, self.max_handshakes
                ),
            ));
        }
        // Below 100 ms a loaded appliance would cut honest clients; above an hour a timeout no
        // longer protects anything.
        let timeouts = [
            ("api.handshake_timeout_ms", self.handshake_timeout_ms),
            ("api.header_read_timeout_ms", self.header_read_timeout_ms),
            ("api.body_read_timeout_ms", self.body_read_timeout_ms),
            ("api.idle_timeout_ms", self.idle_timeout_ms),
        ];
        for (field, ms) in timeouts {
            if !(100..=3_600_000).contains(&ms) {
                return Err((field, format!("{ms} is outside 100..=3600000 ms")));
            }
        }
        Ok(())
    }
}

/// `[tls]`: certificate files; relative paths are relative to `node.data_dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The site root CA certificate (PEM) every peer, staff member and device chains to.
    #[serde(default = "default_ca")]
    pub ca_file: PathBuf,
    /// This gateway's certificate chain (gateway profile).
    #[serde(default = "default_cert")]
    pub cert_file: PathBuf,
    /// Its private key.
    #[serde(default = "default_key")]
    pub key_file: PathBuf,
    /// This gateway's issuing CA directory, for enrollment and CRLs.
    #[serde(default = "default_pki")]
    pub pki_dir: PathBuf,
    /// How long each CRL this gateway signs is valid (its nextUpdate), seconds. The gateway
    /// signs a new one every quarter of this (at most daily) and on every revocation, so a
    /// broker or peer never holds an expired one while the gateway runs.
    #[serde(default = "default_crl_validity")]
    pub crl_validity_s: u64,
}

fn default_crl_validity() -> u64 {
    7 * 86_400
}

fn default_ca() -> PathBuf {
    "pki/root.crt".into()
}
fn default_cert() -> PathBuf {
    "pki/gateway.crt".into()
}
fn default_key() -> PathBuf {
    "pki/gateway.key".into()
}
fn default_pki() -> PathBuf {
    "pki".into()
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_file: default_ca(),
            cert_file: default_cert(),
            key_file: default_key(),
            pki_dir: default_pki(),
            crl_validity_s: default_crl_validity(),
        }
    }
}

/// `[raft]`: replication timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftConfig {
    /// Leader heartbeat interval, ms.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// Election timeout range, ms: a follower that hears nothing for a random time in this range
    /// starts an election.
    #[serde(default = "default_election_min")]
    pub election_timeout_min_ms: u64,
    #[serde(default = "default_election_max")]
    pub election_timeout_max_ms: u64,
    /// Take a snapshot only after at least this many log entries since the last one...
    #[serde(default = "default_snapshot_logs")]
    pub snapshot_after_logs: u64,
    /// ...and once the events applied since the last snapshot are at least this percentage of
    /// the ledger's events at that snapshot (each snapshot copies the whole ledger, so its
    /// interval grows with the ledger; 0 = by log entries only).
    #[serde(default = "default_snapshot_growth")]
    pub snapshot_growth_percent: u64,
    /// Log entries kept behind a snapshot (a peer further behind catches up from the snapshot).
    #[serde(default = "default_keep_logs")]
    pub keep_logs_after_snapshot: u64,
    /// Timeout of one Raft RPC, ms.
    #[serde(default = "default_rpc_timeout")]
    pub rpc_timeout_ms: u64,
}

fn default_heartbeat() -> u64 {
    250
}
fn default_election_min() -> u64 {
    1000
}
fn default_election_max() -> u64 {
    2000
}
fn default_snapshot_logs() -> u64 {
    20_000
}
fn default_snapshot_growth() -> u64 {
    50
}
fn default_keep_logs() -> u64 {
    1000
}
fn default_rpc_timeout() -> u64 {
    2000
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: default_heartbeat(),
            election_timeout_min_ms: default_election_min(),
            election_timeout_max_ms: default_election_max(),
            snapshot_after_logs: default_snapshot_logs(),
            snapshot_growth_percent: default_snapshot_growth(),
            keep_logs_after_snapshot: default_keep_logs(),
            rpc_timeout_ms: default_rpc_timeout(),
        }
    }
}

/// `[ledger]`: group commit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Most events in one Raft entry.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Most Raft entries this node has proposed and not yet seen committed. Few in flight let
    /// the next batch grow while the previous one commits (group commit); more help only when
    /// the network, not the disk, is slow.
    #[serde(default = "default_inflight")]
    pub max_inflight_batches: usize,
    /// How often the leader records a signed tree head through Raft (a checkpoint), ms, when the
    /// ledger has grown. Exports are cut at the latest checkpoint, and entries of version 2 (no
    /// signature of their own) are covered by a co-signed head within this interval of their
    /// acknowledgement: 1,000 ms by default (receipts within 1 s, issue 17).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_ms: u64,
    /// sled's page cache (ledger and Raft log together), MiB. It bounds the memory the ledger
    /// takes, whatever its size on disk.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u64,
}

fn default_cache_mib() -> u64 {
    ledger_node::store::DEFAULT_CACHE_BYTES / (1024 * 1024)
}

fn default_checkpoint_interval() -> u64 {
    1_000
}

fn default_max_batch() -> usize {
    256
}
fn default_inflight() -> usize {
    2
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            max_batch: default_max_batch(),
            max_inflight_batches: default_inflight(),
            checkpoint_interval_ms: default_checkpoint_interval(),
            cache_mib: default_cache_mib(),
        }
    }
}

mod telemetry;
pub use telemetry::*;
mod web;
pub use web::WebSection;

/// A configuration problem, naming the file and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// `MAJOR.MINOR.PATCH` as numbers.
fn release_numbers(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.').map(|p| p.parse::<u64>().ok());
    let r = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(r)
}

/// The `version` key: a release `MAJOR.MINOR.PATCH` not newer than this gateway's.
fn check_version(v: &toml::Value) -> Result<(), String> {
    let ours = ledger_node::version::RELEASE;
    let Some(text) = v.as_str() else {
        return Err(format!(
            "{v} is not a release such as \"{ours}\" (a string MAJOR.MINOR.PATCH)"
        ));
    };
    let (Some(theirs), Some(mine)) = (release_numbers(text), release_numbers(ours)) else {
        return Err(format!(
            "{text:?} is not a release such as \"{ours}\" (MAJOR.MINOR.PATCH)"
        ));
    };
    if theirs > mine {
        return Err(format!(
            "this file is written for release {text}, newer than this gateway's release {ours}: \
             upgrade the gateway first (or write the file for {ours})"
        ));
    }
    Ok(())
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut c = Self::parse(path, &text)?;
        c.source = Some(path.to_owned());
        Ok(c)
    }

    /// Parses and validates config text (`path` is only used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        // The version first: a file for a newer release may have keys this one does not know,
        // and "unknown field" alone would not say why.
        if let Ok(table) = text.parse::<toml::Table>() {
            if let Some(v) = table.get("version") {
                check_version(v).map_err(|m| invalid("version", m))?;
            }
        }
        let mut c: Config = toml::from_str(text).map_err(|e| {
            let mut message = e.to_string();
            if message.contains("unknown field") {
                message.push_str(&format!(
                    "(this gateway runs release {}; a key a newer release introduced needs that \
                     release, see the `version` key)",
                    ledger_node::version::RELEASE
                ));
            }
            ConfigError::Parse {
                path: path.to_owned(),
                message,
            }
        })?;
        if c.node.id == 0 {
            return Err(invalid("node.id", "must be a positive number".into()));
        }
        if c.node.reserve_mb == 0 {
            return Err(invalid(
                "node.reserve_mb",
                "must be at least 1: a write that meets a full disk stops the ledger's storage"
                    .into(),
            ));
        }
        if let Some(warn) = c.node.warn_free_mb {
            if warn <= c.node.reserve_mb {
                return Err(invalid(
                    "node.warn_free_mb",
                    format!(
                        "{warn} must be above node.reserve_mb ({}): the warning comes before \
                         writes are refused",
                        c.node.reserve_mb
                    ),
                ));
            }
        }
        if let Some(h) = c.api.health_listen {
            if !h.ip().is_loopback() {
                return Err(invalid(
                    "api.health_listen",
                    format!("{h} is not a loopback address: the health listener is plain HTTP"),
                ));
            }
        }
        c.api
            .check()
            .map_err(|(field, message)| invalid(field, message))?;
        if c.api.idle_timeout_ms <= c.raft.heartbeat_ms {
            return Err(invalid(
                "api.idle_timeout_ms",
                format!(
                    "must be larger than raft.heartbeat_ms ({}): peers' connections would be \
                     closed between heartbeats",
                    c.raft.heartbeat_ms
                ),
            ));
        }
        let r = &c.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                "must be larger than raft.heartbeat_ms".into(),
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                "must be larger than raft.election_timeout_min_ms".into(),
            ));
        }
        if r.snapshot_after_logs == 0 {
            return Err(invalid(
                "raft.snapshot_after_logs",
                "must be at least 1".into(),
            ));
        }
        if r.snapshot_growth_percent > 1000 {
            return Err(invalid(
                "raft.snapshot_growth_percent",
                format!(
                    "{} would let the Raft log grow to {} times the ledger; at most 1000",
                    r.snapshot_growth_percent,
                    r.snapshot_growth_percent / 100
                ),
            ));
        }
        if c.ledger.checkpoint_interval_ms < 100 {
            return Err(invalid(
                "ledger.checkpoint_interval_ms",
                "must be at least 100".into(),
            ));
        }
        if c.ledger.max_inflight_batches == 0 {
            return Err(invalid(
                "ledger.max_inflight_batches",
                "must be at least 1".into(),
            ));
        }
        if !(8..=65_536).contains(&c.ledger.cache_mib) {
            return Err(invalid(
                "ledger.cache_mib",
                format!("{} MiB: must be between 8 and 65536", c.ledger.cache_mib),
            ));
        }
        if c.ledger.max_batch == 0 {
            return Err(invalid("ledger.max_batch", "must be at least 1".into()));
        }
        if !(10..=366 * 86_400).contains(&c.tls.crl_validity_s) {
            return Err(invalid(
                "tls.crl_validity_s",
                format!("{} is outside 10..=31622400 s", c.tls.crl_validity_s),
            ));
        }
        let base = c.node.data_dir.clone();
        for p in [
            &mut c.tls.ca_file,
            &mut c.tls.cert_file,
            &mut c.tls.key_file,
            &mut c.tls.pki_dir,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        telemetry::check(&mut c, &invalid)?;
        if let Some(w) = &c.web {
            w.check()
                .map_err(|(field, message)| invalid(field, message))?;
        }
        Ok(c)
    }

    /// The address peers use to reach this node.
    pub fn advertise(&self) -> String {
        self.api
            .advertise
            .clone()
            .unwrap_or_else(|| self.api.listen.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_relative_paths() {
        let c = Config::parse(
            Path::new("t.toml"),
            "[node]\nid = 3\ndata_dir = \"/srv/ml\"\n",
        )
        .expect("valid");
        assert_eq!(c.tls.ca_file, PathBuf::from("/srv/ml/pki/root.crt"));
        assert_eq!(c.api.listen.port(), 8443);
        assert_eq!(c.advertise(), "0.0.0.0:8443");
        // The disk warning: 2 GiB, or twice a larger reserve, unless set.
        let mib = 1024 * 1024;
        assert_eq!(c.node.warn_free_bytes(), 2048 * mib);
        let big = Config::parse(Path::new("t.toml"), "[node]\nid = 3\nreserve_mb = 4000\n")
            .expect("valid");
        assert_eq!(big.node.warn_free_bytes(), 8000 * mib);
        let set = Config::parse(Path::new("t.toml"), "[node]\nid = 3\nwarn_free_mb = 500\n")
            .expect("valid");
        assert_eq!(set.node.warn_free_bytes(), 500 * mib);
    }

    /// The commented example in systemd/ writes every default: keep it true.
    #[test]
    fn the_shipped_example_states_the_defaults() {
        let text = include_str!("../../systemd/gateway.toml");
        let example = Config::parse(Path::new("systemd/gateway.toml"), text).expect("valid");
        let defaults = Config::parse(Path::new("x"), "[node]\nid = 1\n").expect("valid");
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn a_file_for_this_release_or_an_older_one_loads() {
        for v in ["0.1.0", "0.2.0", "0.3.0"] {
            let c = Config::parse(
                Path::new("t.toml"),
                &format!("version = \"{v}\"\n[node]\nid = 3\n"),
            )
            .expect(v);
            assert_eq!(c.version.as_deref(), Some(v));
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("[node]\nid = 0\n", "node.id"),
            (
                "[node]\nid = 1\nreserve_mb = 300\nwarn_free_mb = 300\n",
                "node.warn_free_mb: 300 must be above node.reserve_mb (300)",
            ),
            (
                "[node]\nid = 1\n[api]\nhealth_listen = \"0.0.0.0:9\"\n",
                "api.health_listen",
            ),
            (
                "[node]\nid = 1\n[raft]\nheartbeat_ms = 1500\n",
                "raft.election_timeout_min_ms",
            ),
            ("[node]\nid = 1\ncolour = 2\n", "unknown field `colour`"),
            (
                "version = \"99.0.0\"\n[node]\nid = 1\n[node.new_thing]\nx = 1\n",
                "version: this file is written for release 99.0.0, newer than this gateway's \
                 release",
            ),
            (
                "version = \"0.2\"\n[node]\nid = 1\n",
                "version: \"0.2\" is not a release",
            ),
            (
                "version = 2\n[node]\nid = 1\n",
                "version: 2 is not a release",
            ),
            ("[node]\nid = 1\nfuture = 1\n", "this gateway runs release"),
            ("[node]\nid = \"x\"\n", "invalid type"),
            ("[api]\nlisten = \"1.2.3.4:1\"\n", "missing field `node`"),
            (
                "[node]\nid = 1\n[api]\nmax_connections_per_identity = 0\n",
                "api.max_connections_per_identity",
            ),
            (
                "[node]\nid = 1\n[api]\nmax_connections = 10\n",
                "api.max_connections_per_identity",
            ),
            (
                "[node]\nid = 1\n[api]\nmax_handshakes_per_ip = 300\n",
                "api.max_handshakes_per_ip",
            ),
            (
                "[node]\nid = 1\n[api]\nbody_read_timeout_ms = 5\n",
                "api.body_read_timeout_ms",
            ),
            (
                "[node]\nid = 1\n[api]\nidle_timeout_ms = 200\n",
                "api.idle_timeout_ms",
            ),
        ];
        for (text, want) in cases {
            let e = Config::parse(Path::new("gw.toml"), text)
                .expect_err(text)
                .to_string();
            assert!(e.contains(want) && e.contains("gw.toml"), "{text}: {e}");
        }
    }
}
