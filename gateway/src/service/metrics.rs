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
struct OutcomeLabel {
    outcome: String,
}

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
        Self {
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

    /// Records when a certificate (`identity`: e.g. `gateway:1`, `root`) expires.
    pub fn certificate(&self, identity: &str, not_after_unix: i64) {
        self.cert_expiry
            .get_or_create(&IdentityLabel {
                identity: identity.to_owned(),
            })
            .set(not_after_unix);
    }

    /// The metrics in the Prometheus text format, with the gauges set from `s` (the node's
    /// status now).
    pub fn render(&self, s: &ClusterStatus) -> String {
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

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
