//! Prometheus metrics of the gateway (prometheus-client), served in the text format at
//! `/metrics` on the health listener. Gauges of Raft and the ledger are read from the node at
//! each scrape; counters and the commit-latency histogram are updated where things happen.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::service::status::ClusterStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabel {
    identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabel {
    what: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdapterLabel {
    adapter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// Reads the outbox's size at a scrape: (events, bytes, bound in bytes).
type OutboxProbe = Box<dyn Fn() -> (u64, u64, u64) + Send + Sync>;

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Seconds from handing a command to the proposer to its outcome (committed by a quorum and
    /// applied, or refused).
    pub commit_latency: Histogram,
    writes: Family<OutcomeLabel, Counter>,
    ledger_size: Gauge,
    last_applied: Gauge,
    term: Gauge,
    leader: Gauge,
    role: Family<RoleLabel, Gauge>,
    peer_lag: Family<PeerLabel, Gauge>,
    peer_reachable: Family<PeerLabel, Gauge>,
    snapshot_index: Gauge,
    snapshot_age: Gauge<f64, AtomicU64>,
    cert_expiry: Family<IdentityLabel, Gauge>,
    tls_refused: Family<ReasonLabel, Counter>,
    ingest: Family<AdapterLabel, Counter>,
    rule_events: Family<RuleLabel, Counter>,
    outbox_events: Gauge,
    outbox_bytes: Gauge,
    outbox_max_bytes: Gauge,
    disk_free: Gauge,
    disk_reserve: Gauge,
    /// Version refusals (issue 16, upgrades), by what was refused.
    version_refused: Family<WhatLabel, Counter>,
    cluster_format: Gauge,
    /// 1 while an applied erasure's value may still be in this gateway's Raft log or snapshot
    /// file (until the snapshot and purge that follow it).
    erasure_pending: Gauge,
    /// Erasures whose log and snapshot copies were removed, and the seconds the last took.
    erasure_purges: Counter,
    erasure_purge_seconds: Gauge<f64, AtomicU64>,
    /// Set by telemetry when it runs; no outbox gauges without it.
    outbox_probe: std::sync::OnceLock<OutboxProbe>,
    /// The data directory's free-space reserve, read at each scrape.
    disk: std::sync::OnceLock<std::sync::Arc<crate::service::disk::DiskGuard>>,
    /// The snapshot index last seen, and when it was first seen (Unix seconds).
    snapshot_seen: Mutex<(Option<u64>, i64)>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("medledger");
        let commit_latency = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
        ]);
        registry.register(
            "commit_latency_seconds",
            "Time from proposing a command to its outcome (committed on a quorum and applied)",
            commit_latency.clone(),
        );
        let writes = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "writes",
            "Commands proposed by this gateway, by outcome",
            writes.clone(),
        );
        let ledger_size = Gauge::default();
        registry.register(
            "ledger_entries",
            "Entries in the ledger",
            ledger_size.clone(),
        );
        let last_applied = Gauge::default();
        registry.register(
            "raft_last_applied_index",
            "Last Raft log index applied here",
            last_applied.clone(),
        );
        let term = Gauge::default();
        registry.register("raft_term", "Current Raft term", term.clone());
        let leader = Gauge::default();
        registry.register(
            "raft_leader_id",
            "Node id of the leader this gateway knows, 0 when none",
            leader.clone(),
        );
        let role = Family::<RoleLabel, Gauge>::default();
        registry.register(
            "raft_role",
            "1 for this gateway's current Raft role (leader, follower, candidate, learner, shutdown)",
            role.clone(),
        );
        let peer_lag = Family::<PeerLabel, Gauge>::default();
        registry.register(
            "raft_peer_lag_entries",
            "On the leader: how many log entries each member is behind",
            peer_lag.clone(),
        );
        let peer_reachable = Family::<PeerLabel, Gauge>::default();
        registry.register(
            "raft_peer_replicating",
            "On the leader: 1 when a member has acknowledged replication, 0 otherwise",
            peer_reachable.clone(),
        );
        let snapshot_index = Gauge::default();
        registry.register(
            "raft_snapshot_index",
            "Last log index covered by this gateway's snapshot, -1 when none",
            snapshot_index.clone(),
        );
        let snapshot_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "raft_snapshot_age_seconds",
            "Seconds since this gateway's snapshot last changed (as seen by this process)",
            snapshot_age.clone(),
        );
        let cert_expiry = Family::<IdentityLabel, Gauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Unix time at which a certificate this gateway presents or trusts expires",
            cert_expiry.clone(),
        );
        let tls_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "tls_handshakes_refused",
            "TLS clients refused on the mutual-TLS listener, by reason (unknown_ca, revoked, \
             expired, not_yet_valid, revocation_unknown, bad_signature, wrong_role, \
             no_certificate, timeout, \
             client_alert, other)",
            tls_refused.clone(),
        );
        let ingest = Family::<AdapterLabel, Counter>::default();
        registry.register(
            "telemetry_samples",
            "Telemetry values that went through the rules, by adapter (mqtt, modbus)",
            ingest.clone(),
        );
        let rule_events = Family::<RuleLabel, Counter>::default();
        registry.register(
            "telemetry_rule_events",
            "Events the telemetry rules raised (written to the outbox), by rule",
            rule_events.clone(),
        );
        let outbox_events = Gauge::default();
        registry.register(
            "outbox_events",
            "Rule events in the telemetry outbox, waiting for the ledger",
            outbox_events.clone(),
        );
        let outbox_bytes = Gauge::default();
        registry.register(
            "outbox_bytes",
            "Bytes in the telemetry outbox",
            outbox_bytes.clone(),
        );
        let outbox_max_bytes = Gauge::default();
        registry.register(
            "outbox_max_bytes",
            "The telemetry outbox's bound in bytes (telemetry.outbox_max_bytes)",
            outbox_max_bytes.clone(),
        );
        let disk_free = Gauge::default();
        registry.register(
            "disk_free_bytes",
            "Bytes available under the data directory",
            disk_free.clone(),
        );
        let disk_reserve = Gauge::default();
        registry.register(
            "disk_reserve_bytes",
            "Free space under which writes are refused (node.reserve_mb)",
            disk_reserve.clone(),
        );
        let version_refused = Family::<WhatLabel, Counter>::default();
        registry.register(
            "version_refusals",
            "Things another release sent that this gateway refused, by what (peer: a Raft RPC \
             of an unknown peer protocol or malformed version header, command: a Raft entry of \
             an unknown command format, snapshot: an unknown snapshot format)",
            version_refused.clone(),
        );
        let cluster_format = Gauge::default();
        registry.register(
            "cluster_command_format",
            "On the leader: the command format it proposes at, the highest every member applies",
            cluster_format.clone(),
        );
        let erasure_pending = Gauge::default();
        registry.register(
            "erasure_purge_pending",
            "1 while a value erased by an applied erasure may still be in this gateway's Raft log \
             or snapshot file (until the snapshot and log purge that follow it)",
            erasure_pending.clone(),
        );
        let erasure_purges = Counter::default();
        registry.register(
            "erasure_purges",
            "Times this gateway took a snapshot and purged its Raft log after an erasure",
            erasure_purges.clone(),
        );
        let erasure_purge_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "erasure_purge_seconds",
            "Seconds from seeing the last erasure applied to its log purge being on disk",
            erasure_purge_seconds.clone(),
        );
        Self {
            version_refused,
            cluster_format,
            erasure_pending,
            erasure_purges,
            erasure_purge_seconds,
            registry,
            commit_latency,
            writes,
            ledger_size,
            last_applied,
            term,
            leader,
            role,
            peer_lag,
            peer_reachable,
            snapshot_index,
            snapshot_age,
            cert_expiry,
            tls_refused,
            ingest,
            rule_events,
            outbox_events,
            outbox_bytes,
            outbox_max_bytes,
            disk_free,
            disk_reserve,
            outbox_probe: std::sync::OnceLock::new(),
            disk: std::sync::OnceLock::new(),
            snapshot_seen: Mutex::new((None, now_s())),
        }
    }

    /// Counts a proposed command's outcome (`appended`, `duplicate`, `refused`, `failed`, ...).
    pub fn write_outcome(&self, outcome: &str) {
        self.writes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a version refusal (`peer`, `command`, `snapshot`).
    pub fn version_refused(&self, what: &str) {
        self.version_refused
            .get_or_create(&WhatLabel {
                what: what.to_owned(),
            })
            .inc();
    }

    /// An erasure's value may be in the Raft log or snapshot file until it is purged.
    pub fn erasure_pending(&self, pending: bool) {
        self.erasure_pending.set(i64::from(pending));
    }

    /// The snapshot and log purge after an erasure are on disk, `seconds` after it was seen.
    pub fn erasure_purged(&self, seconds: f64) {
        self.erasure_purges.inc();
        self.erasure_purge_seconds.set(seconds);
        self.erasure_pending.set(0);
    }

    /// The command format the leader proposes at.
    pub fn cluster_format(&self, format: u8) {
        self.cluster_format.set(i64::from(format));
    }

    /// Records when a certificate (`identity`: e.g. `gateway:1`, `root`) expires.
    pub fn certificate(&self, identity: &str, not_after_unix: i64) {
        self.cert_expiry
            .get_or_create(&IdentityLabel {
                identity: identity.to_owned(),
            })
            .set(not_after_unix);
    }

    /// Counts a TLS client refused at the handshake; `reason` is the refusal's text, sorted
    /// into a few kinds by [`refusal_kind`].
    pub fn tls_refused(&self, reason: &str) {
        self.tls_refused
            .get_or_create(&ReasonLabel {
                reason: refusal_kind(reason).to_owned(),
            })
            .inc();
    }

    /// Counts `n` telemetry values from `adapter` (`mqtt`, `modbus`).
    pub fn ingested(&self, adapter: &str, n: u64) {
        self.ingest
            .get_or_create(&AdapterLabel {
                adapter: adapter.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts an event raised by the telemetry rule `rule`.
    pub fn rule_event(&self, rule: &str) {
        self.rule_events
            .get_or_create(&RuleLabel {
                rule: rule.to_owned(),
            })
            .inc();
    }

    /// How to read the outbox's size at each scrape (telemetry sets it when it starts).
    pub fn set_outbox_probe(&self, probe: impl Fn() -> (u64, u64, u64) + Send + Sync + 'static) {
        let _ = self.outbox_probe.set(Box::new(probe));
    }

    /// The data directory's guard, read at each scrape.
    pub fn set_disk(&self, disk: std::sync::Arc<crate::service::disk::DiskGuard>) {
        let _ = self.disk.set(disk);
    }

    /// The metrics in the Prometheus text format, with the gauges set from `s` (the node's
    /// status now).
    pub fn render(&self, s: &ClusterStatus) -> String {
        if let Some(probe) = self.outbox_probe.get() {
            let (events, bytes, max) = probe();
            let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.outbox_events.set(g(events));
            self.outbox_bytes.set(g(bytes));
            self.outbox_max_bytes.set(g(max));
        }
        if let Some(disk) = self.disk.get() {
            if let Ok(free) = disk.free() {
                self.disk_free.set(i64::try_from(free).unwrap_or(i64::MAX));
            }
            self.disk_reserve
                .set(i64::try_from(disk.reserve()).unwrap_or(i64::MAX));
        }
        self.ledger_size
            .set(i64::try_from(s.ledger_size).unwrap_or(i64::MAX));
        self.last_applied.set(
            s.last_applied
                .map_or(-1, |i| i64::try_from(i).unwrap_or(i64::MAX)),
        );
        self.term.set(i64::try_from(s.term).unwrap_or(i64::MAX));
        self.leader
            .set(s.leader.map_or(0, |l| i64::try_from(l).unwrap_or(0)));
        for r in ["leader", "follower", "candidate", "learner", "shutdown"] {
            let on = s.state.eq_ignore_ascii_case(r);
            self.role
                .get_or_create(&RoleLabel { role: r.into() })
                .set(i64::from(on));
        }
        for (id, n) in &s.nodes {
            if *id == s.node_id {
                continue;
            }
            let label = PeerLabel {
                peer: id.to_string(),
            };
            self.peer_lag
                .get_or_create(&label)
                .set(n.lag.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)));
            self.peer_reachable
                .get_or_create(&label)
                .set(i64::from(n.matched_index.is_some()));
        }
        let snap = s.snapshot_index;
        self.snapshot_index
            .set(snap.map_or(-1, |i| i64::try_from(i).unwrap_or(i64::MAX)));
        {
            let mut seen = self.snapshot_seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.0 != snap {
                *seen = (snap, now_s());
            }
            self.snapshot_age.set((now_s() - seen.1) as f64);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Sorts a TLS refusal (the text of rustls's error, or of the identity check after it) into a
/// label value with few values, so that a scanner cannot grow the series without bound.
pub fn refusal_kind(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("unknownissuer") {
        "unknown_ca"
    } else if r.contains("revocationlist") || r.contains("unknownrevocationstatus") {
        "revocation_unknown"
    } else if r.contains("revoked") {
        "revoked"
    } else if r.contains("expired") {
        "expired"
    } else if r.contains("notvalidyet") || r.contains("not valid yet") {
        "not_yet_valid"
    } else if r.contains("badsignature") {
        // A chain that names a trusted CA but was not signed by it (an impostor CA).
        "bad_signature"
    } else if r.contains("wrong certificate profile") {
        "wrong_role"
    } else if r.contains("no certificate") {
        "no_certificate"
    } else if r.contains("timed out") {
        "timeout"
    } else if r.contains("received fatal alert") {
        // The client gave up on us (e.g. it does not trust this gateway's certificate).
        "client_alert"
    } else {
        "other"
    }
}

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::refusal_kind;

    #[test]
    fn refusals_sort_into_few_kinds() {
        for (text, kind) in [
            (
                "handshake failed: invalid peer certificate: UnknownIssuer",
                "unknown_ca",
            ),
            (
                "handshake failed: invalid peer certificate: Revoked",
                "revoked",
            ),
            (
                "handshake failed: invalid peer certificate: certificate expired: verification \
                 time 2 (UNIX), but certificate is not valid after 1 (1 seconds ago)",
                "expired",
            ),
            (
                "handshake failed: invalid peer certificate: ExpiredRevocationList",
                "revocation_unknown",
            ),
            (
                "wrong certificate profile: expected gateway, staff, device, got service (x)",
                "wrong_role",
            ),
            (
                "handshake failed: peer sent no certificates",
                "no_certificate",
            ),
            ("peer sent no certificate", "no_certificate"),
            ("handshake timed out", "timeout"),
            (
                "handshake failed: invalid peer certificate: BadSignature",
                "bad_signature",
            ),
            (
                "handshake failed: received fatal alert: UnknownCA",
                "client_alert",
            ),
            ("handshake failed: received corrupt message", "other"),
        ] {
            assert_eq!(refusal_kind(text), kind, "{text}");
        }
    }
}
