//! Whether this gateway is healthy, and why not: one evaluation shared by `/healthz`,
//! `/readyz` (health listener), `GET /cluster/health` (mutual TLS) and `medledger status`.
//!
//! Each check is ok, a warning (degraded: keeps serving, needs attention) or critical (failing:
//! this gateway cannot acknowledge writes, or soon will not).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::service::status::ClusterStatus;

/// How bad one check is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

/// One check and what it found.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub detail: String,
}

/// The verdict and every check behind it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthReport {
    pub node_id: u64,
    /// `ok`, `degraded` (a warning) or `failing` (a critical check).
    pub status: String,
    /// Whether the gateway takes reads and writes now: a cluster member that knows a leader with
    /// a quorum and is not far behind it.
    pub ready: bool,
    pub checks: Vec<Check>,
}

impl HealthReport {
    /// The worst level of any check.
    pub fn level(&self) -> Level {
        self.checks
            .iter()
            .map(|c| c.level)
            .max()
            .unwrap_or(Level::Ok)
    }
}

/// What the evaluation needs besides the node.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub data_dir: PathBuf,
    /// `[node] reserve_mb` in bytes: below it writes are refused (critical).
    pub disk_reserve: u64,
    /// `[node] warn_free_mb` in bytes: below it the disk check warns (degraded).
    pub disk_warn: u64,
    /// This gateway's CRL file, rewritten by the revocation watcher; `None` for a gateway without
    /// an issuing CA, which signs no CRL.
    pub crl_path: Option<PathBuf>,
    /// Certificates to watch: (name, not after, Unix seconds).
    pub certificates: Vec<(String, i64)>,
    /// An election timeout: a leader without a quorum's acknowledgement for longer has lost it.
    pub election_timeout: Duration,
}

/// A follower this far behind its own log (entries) is not ready.
pub const MAX_APPLY_LAG: u64 = 10_000;
/// Certificates expiring within this many days are a warning.
pub const CERT_WARN_DAYS: i64 = 30;
/// A CRL not rewritten for this long means the watcher is stuck (it rewrites it daily).
pub const CRL_MAX_AGE: Duration = Duration::from_secs(2 * 24 * 3600);

fn check(name: &str, level: Level, detail: String) -> Check {
    Check {
        name: name.to_owned(),
        level,
        detail,
    }
}

/// Evaluates every check now, from the node's status `s` and, on a leader, the milliseconds
/// since a quorum last acknowledged it.
pub fn evaluate(
    s: &ClusterStatus,
    millis_since_quorum_ack: Option<u64>,
    inputs: &Inputs,
) -> HealthReport {
    use Level::{Critical, Warning};
    let mut checks = Vec::new();
    let member = s.nodes.contains_key(&s.node_id);
    let mut ready = true;
    // Membership and quorum.
    if !member {
        ready = false;
        checks.push(check(
            "membership",
            Critical,
            "not a member of any cluster (run `medledger cluster init` or `cluster join`)".into(),
        ));
    } else {
        let role = s.state.to_lowercase();
        checks.push(check(
            "membership",
            Level::Ok,
            format!("{role} in a cluster of {} member(s)", s.nodes.len()),
        ));
        match s.leader {
            None => {
                ready = false;
                checks.push(check(
                    "quorum",
                    Critical,
                    format!(
                        "no leader in term {} ({role}): a majority of voters is down or \
                         unreachable, or an election is under way",
                        s.term
                    ),
                ));
            }
            Some(l) if l == s.node_id => {
                let limit = inputs.election_timeout.as_millis() as u64 * 2;
                match millis_since_quorum_ack {
                    Some(ms) if ms > limit => {
                        ready = false;
                        checks.push(check(
                            "quorum",
                            Critical,
                            format!("leader without a quorum's acknowledgement for {ms} ms"),
                        ));
                    }
                    _ => checks.push(check(
                        "quorum",
                        Level::Ok,
                        format!("leader in term {}", s.term),
                    )),
                }
            }
            Some(l) => checks.push(check(
                "quorum",
                Level::Ok,
                format!("leader is node {l} in term {}", s.term),
            )),
        }
    }
    // Lag: on the leader, every member; everywhere, this node's own apply backlog.
    let last_log = s.last_log_index.unwrap_or(0);
    let applied = s.last_applied.unwrap_or(0);
    if last_log.saturating_sub(applied) > MAX_APPLY_LAG {
        ready = false;
        checks.push(check(
            "lag",
            Warning,
            format!(
                "{} log entries not yet applied here",
                last_log.saturating_sub(applied)
            ),
        ));
    } else if s.leader == Some(s.node_id) {
        let behind: Vec<String> = s
            .nodes
            .iter()
            .filter(|(id, _)| **id != s.node_id)
            .filter_map(|(id, n)| match n.lag {
                None => Some(format!("node {id} not replicating")),
                Some(l) if l > MAX_APPLY_LAG => Some(format!("node {id} {l} entries behind")),
                _ => None,
            })
            .collect();
        if behind.is_empty() {
            checks.push(check("lag", Level::Ok, "every member is up to date".into()));
        } else {
            checks.push(check("lag", Warning, behind.join(", ")));
        }
    } else {
        checks.push(check("lag", Level::Ok, format!("applied up to {applied}")));
    }
    // Disk.
    match fs2::available_space(&inputs.data_dir) {
        Ok(free) => {
            let mib = |b: u64| b / (1024 * 1024);
            let reserve = inputs.disk_reserve;
            let (level, detail) = if free < reserve {
                ready = false;
                (
                    Critical,
                    format!(
                        "{} MiB free under {}, below the write reserve of {} MiB: writes are \
                         refused until space is freed (reads go on)",
                        mib(free),
                        inputs.data_dir.display(),
                        mib(reserve)
                    ),
                )
            } else if free < inputs.disk_warn {
                (
                    Warning,
                    format!(
                        "{} MiB free under {}, below {} MiB ([node] warn_free_mb); writes are \
                         refused below {} MiB",
                        mib(free),
                        inputs.data_dir.display(),
                        mib(inputs.disk_warn),
                        mib(reserve)
                    ),
                )
            } else {
                (
                    Level::Ok,
                    format!("{} MiB free under {}", mib(free), inputs.data_dir.display()),
                )
            };
            checks.push(check("disk", level, detail));
        }
        Err(e) => checks.push(check(
            "disk",
            Warning,
            format!(
                "cannot read free space of {}: {e}",
                inputs.data_dir.display()
            ),
        )),
    }
    // Certificates.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (name, not_after) in &inputs.certificates {
        let days = (not_after - now) / 86_400;
        let (level, detail) = if *not_after <= now {
            (Critical, format!("{name}: expired"))
        } else if days < CERT_WARN_DAYS {
            (Warning, format!("{name}: expires in {days} day(s)"))
        } else {
            (Level::Ok, format!("{name}: {days} days left"))
        };
        checks.push(check("certificate", level, detail));
    }
    // CRL age.
    match inputs
        .crl_path
        .as_ref()
        .map(|p| (p, std::fs::metadata(p).and_then(|m| m.modified())))
    {
        None => {}
        Some((path, Ok(t))) => {
            let age = SystemTime::now().duration_since(t).unwrap_or_default();
            let level = if age > CRL_MAX_AGE {
                Warning
            } else {
                Level::Ok
            };
            checks.push(check(
                "crl",
                level,
                format!(
                    "{} rewritten {} min ago",
                    path.display(),
                    age.as_secs() / 60
                ),
            ));
        }
        Some((path, Err(e))) => {
            checks.push(check("crl", Warning, format!("{}: {e}", path.display())))
        }
    }
    let mut report = HealthReport {
        node_id: s.node_id,
        status: String::new(),
        ready,
        checks,
    };
    report.status = match report.level() {
        Level::Ok => "ok",
        Warning => "degraded",
        Critical => "failing",
    }
    .into();
    report
}
