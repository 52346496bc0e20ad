//! A running gateway node: the replicated ledger (openraft over the sled store), the proposer
//! that batches events into Raft entries (group commit) and forwards them to the leader, and
//! the node's signing key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_node::keys::NodeKey;
use ledger_node::raft::types::Raft;
use ledger_node::raft::{RaftRequest, RaftResponse};
use ledger_node::{ApplyOutcome, Command, SignedTreeHead, Store};
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
pub use crate::service::status::{ClusterStatus, NodeStatus};

/// Why a write was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// No leader could be reached before the deadline: nothing was acknowledged.
    #[error("no leader reachable: {0}")]
    NoLeader(String),
    /// The node is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The ledger refused the command (a stale checkpoint, an unknown key...).
    #[error("refused: {0}")]
    Refused(String),
    /// Raft or storage failed.
    #[error("write failed: {0}")]
    Failed(String),
    /// This gateway's (or the leader's) data directory is below its free-space reserve.
    #[error("{0}")]
    DiskFull(String),
}

type Reply = oneshot::Sender<Result<ApplyOutcome, WriteError>>;

/// Why forwarding a batch to the leader failed.
enum Forwarded {
    /// The leader refused it: its disk is below the reserve (the problem's detail).
    DiskFull(String),
    /// The leader could not be reached, or answered otherwise (retried while time is left).
    Other(anyhow::Error),
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Forwarded {
    fn from(e: E) -> Self {
        Forwarded::Other(e.into())
    }
}

/// A running node.
pub struct Node {
    pub id: u64,
    pub raft: Raft,
    pub store: Arc<Store>,
    pub key: NodeKey,
    /// HTTPS client with the gateway certificate, for forwarding to the leader.
    pub peers: Arc<crate::service::raft_net::PeerHttp>,
    /// The address peers reach this node at.
    pub advertise: String,
    /// Prometheus metrics (`/metrics`).
    pub metrics: Arc<crate::service::metrics::Metrics>,
    /// What the health checks read besides the node; set once the TLS material is loaded.
    pub health: std::sync::OnceLock<crate::service::health::Inputs>,
    /// The device registry derived from the ledger (`service::registry`).
    pub registry: Arc<crate::service::registry::Registry>,
    /// The data directory's free-space reserve, checked before every write is stored.
    pub disk: Arc<crate::service::disk::DiskGuard>,
    proposals: mpsc::Sender<(Command, Reply)>,
    write_timeout: Duration,
    /// Whether the registration of this node's own key is in the ledger: applied here, or
    /// committed and applied by the leader ([`register_key`]). Until it is, nothing this node
    /// signs is proposed: an entry or checkpoint signed with a key the ledger does not hold yet
    /// would make an export or receipt cut after it name a key it does not carry. Proposed only
    /// after the registration is committed, it comes after the registration in the Raft log, so
    /// every replica applies the key first.
    /// `None` while the registration is pending, then `Ok` or why the cluster refused it.
    key_registered: tokio::sync::watch::Sender<Option<Result<(), String>>>,
    /// The site root this gateway trusts (`[tls] ca_file`, PEM), which `GET /v1/keys` serves at
    /// the top of each endorsement's chain; `None` if it could not be read.
    site_root: Option<String>,
}

impl Node {
    /// Opens the storage and starts Raft and the proposer.
    pub async fn start(
        config: &Config,
        network: crate::service::raft_net::Network,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Node>> {
        let dir = &config.node.data_dir;
        // Durable (directory synced), as everything the node writes here must survive a power cut.
        ledger_node::store::create_dir_durable(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
        let key = NodeKey::new(ledger_node::keys::load_or_create(&dir.join("node.key"))?)?;
        let (log_store, state_machine, store) =
            ledger_node::raft::open_storage_with_cache(dir, config.ledger.cache_mib * 1024 * 1024)?;
        let r = &config.raft;
        let raft_config = openraft::Config {
            cluster_name: "medledger".into(),
            heartbeat_interval: r.heartbeat_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            // Snapshots are triggered by `snapshot_policy` below, which also weighs the ledger.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: r.keep_logs_after_snapshot,
            install_snapshot_timeout: r.rpc_timeout_ms.max(10_000),
            max_payload_entries: 64,
            snapshot_max_chunk_size: 4 * 1024 * 1024,
            ..Default::default()
        }
        .validate()?;
        let peers = network.http.clone();
        let erasures = state_machine.erasures();
        let raft = Raft::new(
            config.node.id,
            Arc::new(raft_config),
            network,
            log_store,
            state_machine,
        )
        .await?;
        let (tx, rx) = mpsc::channel(16 * 1024);
        let node = Arc::new(Node {
            id: config.node.id,
            raft,
            store,
            key,
            peers,
            advertise: config.advertise(),
            metrics: Arc::new(crate::service::metrics::Metrics::new()),
            health: std::sync::OnceLock::new(),
            registry: Default::default(),
            disk: Arc::new(crate::service::disk::DiskGuard::new(
                dir,
                config.node.reserve_mb,
            )),
            proposals: tx,
            write_timeout: Duration::from_secs(10),
            key_registered: tokio::sync::watch::Sender::new(None),
            site_root: std::fs::read_to_string(&config.tls.ca_file).ok(),
        });
        let _ = node.peers.metrics.set(node.metrics.clone());
        tokio::spawn(proposer(
            node.clone(),
            rx,
            config.ledger.max_batch,
            config.ledger.max_inflight_batches,
            shutdown.clone(),
        ));
        tokio::spawn(snapshot_policy(
            node.clone(),
            SnapshotRule {
                min_logs: r.snapshot_after_logs,
                growth_percent: r.snapshot_growth_percent,
            },
            erasures,
            shutdown.clone(),
        ));
        tokio::spawn(register_key(node.clone(), shutdown.clone()));
        // Builds the registry index from the ledger now rather than at the first read.
        let (registry, store) = (node.registry.clone(), node.store.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = registry.read(&store) {
                tracing::warn!(error = %e, "cannot build the device registry from the ledger");
            }
        });
        tokio::spawn(checkpointer(
            node.clone(),
            Duration::from_millis(config.ledger.checkpoint_interval_ms),
            shutdown,
        ));
        Ok(node)
    }

    /// Submits a prepared command and waits until it is committed by a quorum and applied.
    pub async fn submit(&self, cmd: Command) -> Result<ApplyOutcome, WriteError> {
        let started = Instant::now();
        if !matches!(cmd, Command::RegisterNode { .. }) {
            self.key_applied().await?;
        }
        let r = match self.disk.check() {
            Err(full) => Err(WriteError::DiskFull(full.to_string())),
            Ok(()) => {
                let (reply, rx) = oneshot::channel();
                self.proposals
                    .send((cmd, reply))
                    .await
                    .map_err(|_| WriteError::ShuttingDown)?;
                rx.await.map_err(|_| WriteError::ShuttingDown)?
            }
        };
        self.metrics
            .commit_latency
            .observe(started.elapsed().as_secs_f64());
        self.metrics.write_outcome(match &r {
            Ok(o) => outcome_label(o),
            Err(e) => error_label(e),
        });
        r
    }

    /// Submits commands as one Raft entry, applied in the order given (for a writer whose
    /// events must land in its own order, such as the telemetry outbox), and waits until it is
    /// committed and applied: one outcome per command.
    pub async fn submit_in_order(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<ApplyOutcome>, WriteError> {
        let started = Instant::now();
        let n = commands.len();
        self.key_applied().await?;
        let r = match self.disk.check() {
            Err(full) => Err(WriteError::DiskFull(full.to_string())),
            Ok(()) => match self.write_batch(commands).await {
                Ok(outcomes) if outcomes.len() == n => Ok(outcomes),
                Ok(outcomes) => Err(WriteError::Failed(format!(
                    "{} outcomes for {n} commands",
                    outcomes.len()
                ))),
                Err(e) => Err(e),
            },
        };
        self.metrics
            .commit_latency
            .observe(started.elapsed().as_secs_f64());
        match &r {
            Ok(outcomes) => outcomes
                .iter()
                .for_each(|o| self.metrics.write_outcome(outcome_label(o))),
            Err(e) => (0..n).for_each(|_| self.metrics.write_outcome(error_label(e))),
        }
        r
    }

    /// Waits (up to the write timeout) until this node has applied its own key's registration;
    /// see [`Node::key_registered`].
    async fn key_applied(&self) -> Result<(), WriteError> {
        let mut rx = self.key_registered.subscribe();
        let state = tokio::time::timeout(self.write_timeout, rx.wait_for(Option::is_some))
            .await
            .map(|r| r.map(|state| state.clone()));
        match state {
            Ok(Ok(Some(Err(reason)))) => Err(WriteError::Refused(format!(
                "this gateway's ledger key (node {}) was refused by the cluster, so it signs \
                 nothing: {reason}",
                self.id
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(WriteError::ShuttingDown),
            Err(_) => Err(WriteError::NoLeader(format!(
                "this gateway's ledger key (node {}) is not registered in the ledger yet, so it \
                 signs nothing: no leader has accepted the registration within {:?}",
                self.id, self.write_timeout
            ))),
        }
    }

    /// Waits until this node has applied entry `seq`, at most `max`; `Err` with the entries
    /// applied when it has not.
    pub async fn wait_applied(&self, seq: u64, max: Duration) -> Result<(), u64> {
        let deadline = tokio::time::Instant::now() + max;
        // Raft's metrics change after every apply: wake on them, and at least every 50 ms.
        let mut metrics = self.raft.metrics();
        loop {
            let size = self.store.size();
            if size > seq {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(size);
            }
            let step = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(step, metrics.changed()).await;
        }
    }

    /// The site root this gateway trusts, PEM (see [`Node::site_root`]).
    pub fn site_root_pem(&self) -> Option<String> {
        self.site_root.clone()
    }

    /// The data directory.
    pub fn disk_dir(&self) -> std::path::PathBuf {
        self.disk.dir().to_owned()
    }

    /// This gateway's health now (`/healthz`, `/cluster/health`, `medledger status`).
    pub fn health_report(&self) -> crate::service::health::HealthReport {
        match self.health.get() {
            Some(inputs) => {
                let quorum_ack = self.raft.metrics().borrow().millis_since_quorum_ack;
                crate::service::health::evaluate(&self.status(), quorum_ack, inputs)
            }
            None => crate::service::health::HealthReport {
                node_id: self.id,
                status: "failing".into(),
                ready: false,
                checks: vec![crate::service::health::Check {
                    name: "startup".into(),
                    level: crate::service::health::Level::Critical,
                    detail: "the gateway is still starting".into(),
                }],
            },
        }
    }

    /// The command for an event recorded through this gateway: its clock, salts and, while the
    /// cluster applies a command format below 3, its signature (an entry of version 1). Once the
    /// cluster applied format 3 (the store's format only goes up) the entry is of version 2,
    /// unsigned, authenticated by the checkpoints that cover it: no Ed25519 signature per event.
    pub fn prepare(
        &self,
        event: ledger_node::EventInput,
        author: &str,
        recorded_at_ms: i64,
    ) -> Result<ledger_node::store::AppendCommand, ledger_node::LedgerError> {
        ledger_node::ledger::prepare_at(
            self.store.format(),
            event,
            author,
            self.id,
            &self.key,
            recorded_at_ms,
        )
    }

    /// The command format this gateway proposes at when it leads: the highest format every
    /// member of the cluster applies (as their answers said, see `raft_net::PeerVersions`),
    /// or the store's own once the cluster has moved to it (it never goes back).
    pub fn cluster_format(&self) -> u8 {
        let format = self
            .store
            .format()
            .max(self.peers.versions.cluster_format(self.id, self.members()));
        self.metrics.cluster_format(format);
        format
    }

    /// The members of the cluster (voters and learners) in the membership this node knows.
    fn members(&self) -> Vec<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect()
    }

    /// Proposes `req` through this node's Raft. On the leader, the entry carries the cluster
    /// format ([`Node::cluster_format`]) and a command that needs a newer format is held back:
    /// answered with a refusal naming the members that are behind, never proposed, so that
    /// no gateway of an older release receives what it would apply otherwise than the others.
    /// Elsewhere openraft answers `ForwardToLeader`.
    pub async fn propose(
        &self,
        req: &RaftRequest,
    ) -> Result<Vec<ApplyOutcome>, RaftError<u64, ClientWriteError<u64, BasicNode>>> {
        let leads = self.raft.metrics().borrow().current_leader == Some(self.id);
        let mut format = if leads {
            self.cluster_format()
        } else {
            ledger_node::version::FORMAT_V1
        };
        // A leader elected a moment ago may not have heard from every member yet; rather than
        // hold a command back for that, give them a few heartbeats to answer.
        if leads && format < ledger_node::version::FORMAT {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline
                && self.peers.versions.any_unheard(self.id, self.members())
                && req
                    .commands
                    .iter()
                    .any(|c| self.store.required_format(c).unwrap_or(format) > format)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                format = self.cluster_format();
            }
        }
        let mut held: Vec<Option<ApplyOutcome>> = vec![None; req.commands.len()];
        let mut commands = Vec::with_capacity(req.commands.len());
        for (i, c) in req.commands.iter().enumerate() {
            let needs = if leads && format < ledger_node::version::FORMAT {
                // A store read failing here only loses the better message: apply decides.
                self.store.required_format(c).unwrap_or(format)
            } else {
                format
            };
            if needs > format {
                let members = self.members();
                held[i] = Some(ApplyOutcome::Refused {
                    reason: format!(
                        "held back until every gateway of the cluster runs release {} or later \
                         (command format {needs}): {}",
                        ledger_node::version::format_release(needs),
                        self.peers.versions.behind(self.id, members)
                    ),
                });
            } else {
                let mut c = c.clone();
                // At format 3 every member reads entries of version 2: the leader drops the
                // signatures of appends prepared before the cluster moved (or by a gateway that
                // did not know yet), so that a ledger holds no signed entry after its first
                // unsigned one.
                if let (Command::Append(a), true) =
                    (&mut c, format >= ledger_node::ledger::UNSIGNED_FORMAT)
                {
                    a.signature = None;
                }
                commands.push(c);
            }
        }
        let mut outcomes = if commands.is_empty() {
            Vec::new().into_iter()
        } else {
            let resp = self
                .raft
                .client_write(RaftRequest { commands, format })
                .await?;
            resp.data.outcomes.into_iter()
        };
        Ok(held
            .into_iter()
            .map(|h| {
                h.or_else(|| outcomes.next())
                    .unwrap_or(ApplyOutcome::Refused {
                        reason: "no outcome for this command".into(),
                    })
            })
            .collect())
    }

    /// Writes a batch as one Raft entry on this node if it leads, otherwise forwards it to the
    /// leader; retries until the write timeout while there is no leader.
    async fn write_batch(&self, commands: Vec<Command>) -> Result<Vec<ApplyOutcome>, WriteError> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let req = RaftRequest::new(commands);
        let mut last;
        loop {
            match self.propose(&req).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    match (f.leader_id, f.leader_node) {
                        (Some(id), Some(n)) if id != self.id => {
                            match self.forward(&n, &req).await {
                                Ok(outcomes) => return Ok(outcomes),
                                // The leader's disk is below its reserve: retrying does not
                                // help until space is freed there.
                                Err(Forwarded::DiskFull(detail)) => {
                                    return Err(WriteError::DiskFull(format!(
                                        "leader {id} at {}: {detail}",
                                        n.addr
                                    )))
                                }
                                Err(Forwarded::Other(e)) => {
                                    last = format!("forwarding to leader {id} at {}: {e}", n.addr)
                                }
                            }
                        }
                        _ => last = "no leader elected yet".into(),
                    }
                }
                Err(RaftError::APIError(e)) => return Err(WriteError::Failed(e.to_string())),
                Err(RaftError::Fatal(e)) => return Err(WriteError::Failed(e.to_string())),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WriteError::NoLeader(last));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn forward(
        &self,
        leader: &BasicNode,
        req: &RaftRequest,
    ) -> Result<Vec<ApplyOutcome>, Forwarded> {
        let resp = self
            .peers
            .get()
            .post(format!("https://{}/raft/forward", leader.addr))
            .header(
                reqwest::header::CONTENT_TYPE,
                crate::service::raft_net::MSGPACK,
            )
            .headers(crate::service::raft_net::request_headers())
            .body(crate::service::raft_net::encode(req)?)
            .send()
            .await?;
        let status = resp.status();
        if status == reqwest::StatusCode::INSUFFICIENT_STORAGE {
            let problem: serde_json::Value = resp.json().await.unwrap_or_default();
            let detail = problem["detail"].as_str().unwrap_or("insufficient storage");
            return Err(Forwarded::DiskFull(detail.to_owned()));
        }
        if !status.is_success() {
            return Err(Forwarded::Other(anyhow::anyhow!(
                "{status}: {}",
                resp.text().await.unwrap_or_default()
            )));
        }
        let r: RaftResponse = crate::service::raft_net::decode(&resp.bytes().await?)?;
        Ok(r.outcomes)
    }

    /// Records a checkpoint over everything applied here, unless the latest one already covers
    /// it. Returns the checkpoint's size.
    pub async fn checkpoint(&self) -> Result<u64, WriteError> {
        let failed = |e: &dyn std::fmt::Display| WriteError::Failed(e.to_string());
        let size = self.store.size();
        // A checkpoint of this size went without a majority's co-signatures (a voter busy
        // beyond COSIGN_WAIT): co-signing it is tried again at the next round rather than
        // only once the ledger grows, so that exports and receipts reach the newest entries.
        let cosigning = self.store.format() >= 2 && self.membership().voter_ids().nth(1).is_some();
        let covered = match self.store.latest_checkpoint().map_err(|e| failed(&e))? {
            Some(c) if c.size >= size => Some(c.size),
            _ => None,
        };
        if let Some(covered) = covered {
            let cosigned = self
                .store
                .cosigned_checkpoint()
                .map_err(|e| failed(&e))?
                .is_some_and(|k| k.tree_head.size >= covered);
            if cosigned || !cosigning {
                return Ok(covered);
            }
        }
        let head = self.tree_head().map_err(|e| failed(&e))?;
        // Co-signed checkpoints are command format 2: while the ledger applies format 1 (a
        // cluster still running release 0.1.0 somewhere), the checkpoint is a plain one.
        let cosignatures = if self.store.format() >= 2 {
            self.collect_cosignatures(&head).await
        } else {
            Vec::new()
        };
        // The voter set every replica checks the checkpoint against (the membership in force at
        // its log entry, §9.6); recorded as co-signed only when a majority of it signed, else as
        // a plain checkpoint (exports stay cut at the previous co-signed one).
        let voters = ledger_node::raft::state_machine::voter_set(&self.membership());
        let signed = voters
            .iter()
            .filter(|v| **v == head.node_id || cosignatures.iter().any(|c| c.node_id == **v))
            .count();
        let cmd = if cosignatures.is_empty() || signed < ledger_node::sth::majority(voters.len()) {
            if let Some(covered) = covered {
                // A plain checkpoint of this size is recorded already.
                return Ok(covered);
            }
            Command::Checkpoint(head)
        } else {
            Command::CosignedCheckpoint {
                head,
                voters,
                cosignatures,
            }
        };
        match self.submit(cmd).await? {
            ApplyOutcome::Checkpointed { size } => Ok(size),
            ApplyOutcome::Refused { reason } => Err(WriteError::Refused(reason)),
            other => Err(WriteError::Failed(format!("unexpected outcome {other:?}"))),
        }
    }

    /// Asks every other voter to co-sign `head` (`POST /raft/cosign`: each signs the same size
    /// and root once it has applied those entries and found that root itself) and returns the
    /// co-signatures that verify with the keys the ledger holds. A voter that does not answer
    /// within [`COSIGN_WAIT`] is left out: the checkpoint is recorded with fewer co-signatures
    /// rather than later.
    async fn collect_cosignatures(&self, head: &SignedTreeHead) -> Vec<SignedTreeHead> {
        let m = self.membership();
        let keys: BTreeMap<u64, [u8; 32]> = match self.store.node_keys() {
            Ok(k) => k.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the node keys to check co-signatures");
                return Vec::new();
            }
        };
        let req = CosignRequest {
            size: head.size,
            root: head.root,
        };
        let Ok(body) = crate::service::raft_net::encode(&req) else {
            return Vec::new();
        };
        let mut asks = tokio::task::JoinSet::new();
        for id in m.voter_ids().filter(|id| *id != self.id) {
            let Some(addr) = m.get_node(&id).map(|n| n.addr.clone()) else {
                continue;
            };
            let (client, body) = (self.peers.get(), body.clone());
            asks.spawn(async move {
                let ask = async {
                    let resp = client
                        .post(format!("https://{addr}/raft/cosign"))
                        .header(
                            reqwest::header::CONTENT_TYPE,
                            crate::service::raft_net::MSGPACK,
                        )
                        .body(body)
                        .send()
                        .await?;
                    let status = resp.status();
                    let bytes = resp.bytes().await?;
                    if !status.is_success() {
                        anyhow::bail!("{status}: {}", String::from_utf8_lossy(&bytes));
                    }
                    Ok(crate::service::raft_net::decode::<SignedTreeHead>(&bytes)?)
                };
                let r = match tokio::time::timeout(COSIGN_WAIT, ask).await {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!("no answer within {COSIGN_WAIT:?}")),
                };
                (id, r)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = asks.join_next().await {
            let Ok((id, r)) = joined else { continue };
            let c = match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(node = id, error = %e, size = head.size, "no co-signature");
                    continue;
                }
            };
            let verifies = keys
                .get(&id)
                .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(k).ok())
                .is_some_and(|k| c.verify(&k));
            if c.node_id == id && c.size == head.size && c.root == head.root && verifies {
                out.push(c);
            } else {
                tracing::warn!(
                    node = id,
                    size = head.size,
                    "a co-signature that does not verify, left out"
                );
            }
        }
        out.sort_by_key(|c| c.node_id);
        out
    }

    /// Co-signs the head of `size` entries with root `root` for the leader's checkpoint, once
    /// this node has applied that many entries (waiting up to [`COSIGN_WAIT`]) and only if its
    /// own tree of that size has that root.
    pub async fn cosign(&self, size: u64, root: [u8; 32]) -> Result<SignedTreeHead, WriteError> {
        if !matches!(*self.key_registered.borrow(), Some(Ok(()))) {
            return Err(WriteError::Refused(format!(
                "node {}'s key is not registered in the ledger yet",
                self.id
            )));
        }
        let deadline = tokio::time::Instant::now() + COSIGN_WAIT;
        let mut metrics = self.raft.metrics();
        while self.store.size() < size {
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(WriteError::ShuttingDown),
                Err(_) => {
                    return Err(WriteError::NoLeader(format!(
                        "node {} has applied {} entries, not the {size} to co-sign, after \
                         {COSIGN_WAIT:?}",
                        self.id,
                        self.store.size()
                    )))
                }
            }
        }
        let mine = self
            .store
            .root(size)
            .map_err(|e| WriteError::Failed(e.to_string()))?;
        if mine != root {
            return Err(WriteError::Refused(format!(
                "node {}'s first {size} entries have root {}, not {}: it does not co-sign another \
                 history",
                self.id,
                hex::encode(mine),
                hex::encode(root)
            )));
        }
        Ok(self.sign_head(size, root))
    }

    /// This node's signature, now, on the tree of `size` entries with root `root`.
    fn sign_head(&self, size: u64, root: [u8; 32]) -> SignedTreeHead {
        SignedTreeHead::sign(
            size,
            root,
            ledger_node::ledger::now_ms(),
            self.id,
            &self.key,
        )
    }

    /// The cluster's membership (voters and learners) as this node last saw it.
    pub fn membership(&self) -> openraft::Membership<u64, BasicNode> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    /// Whether this node is a member but not a voter (a read-only follower).
    pub fn is_learner(&self) -> bool {
        let m = self.membership();
        m.nodes().any(|(id, _)| *id == self.id) && !m.voter_ids().any(|id| id == self.id)
    }

    /// Signs a tree head over what this node has applied.
    pub fn tree_head(&self) -> anyhow::Result<SignedTreeHead> {
        let size = self.store.size();
        Ok(self.sign_head(size, self.store.root(size)?))
    }

    /// Raft's view: leader, term, membership, and (on the leader) every node's matched index.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let last_log = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let mut nodes = BTreeMap::new();
        for (id, node) in membership.nodes() {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index);
            let matched = if *id == self.id {
                m.last_applied.map(|l| l.index)
            } else {
                matched
            };
            nodes.insert(
                *id,
                NodeStatus {
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag: matched.map(|i| last_log.saturating_sub(i)),
                },
            );
        }
        ClusterStatus {
            node_id: self.id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            ledger_size: self.store.size(),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            nodes,
        }
    }
}

/// The `writes_total` label of an outcome.
fn outcome_label(o: &ApplyOutcome) -> &'static str {
    match o {
        ApplyOutcome::Appended { .. } => "appended",
        ApplyOutcome::Duplicate { .. } => "duplicate",
        ApplyOutcome::Refused { .. } => "refused",
        ApplyOutcome::Checkpointed { .. } => "checkpointed",
        ApplyOutcome::NodeRegistered { .. } => "node_registered",
    }
}

/// The `writes_total` label of a write that was not acknowledged.
fn error_label(e: &WriteError) -> &'static str {
    match e {
        WriteError::NoLeader(_) => "no_leader",
        WriteError::ShuttingDown => "shutting_down",
        WriteError::Refused(_) => "refused",
        WriteError::Failed(_) => "failed",
        WriteError::DiskFull(_) => "disk_full",
    }
}

/// How long a checkpoint waits for a voter's co-signature, and a voter for the entries to
/// co-sign.
pub const COSIGN_WAIT: Duration = Duration::from_secs(2);

/// What the leader asks a voter to co-sign (`POST /raft/cosign`, MessagePack).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CosignRequest {
    pub size: u64,
    pub root: [u8; 32],
}

/// Gathers concurrent commands into batches and keeps at most `inflight` batches in flight:
/// while they commit, the next batch grows, so that many events share one Raft entry, one
/// AppendEntries per follower and one flush on each node.
async fn proposer(
    node: Arc<Node>,
    mut rx: mpsc::Receiver<(Command, Reply)>,
    max_batch: usize,
    inflight: usize,
    shutdown: CancellationToken,
) {
    let inflight = Arc::new(Semaphore::new(inflight));
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let mut cmds = vec![first.0];
        let mut replies = vec![first.1];
        while cmds.len() < max_batch {
            match rx.try_recv() {
                Ok((c, r)) => {
                    cmds.push(c);
                    replies.push(r);
                }
                Err(_) => break,
            }
        }
        let node = node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let n = cmds.len();
            match node.write_batch(cmds).await {
                Ok(outcomes) if outcomes.len() == n => {
                    for (r, o) in replies.into_iter().zip(outcomes) {
                        let _ = r.send(Ok(o));
                    }
                }
                Ok(outcomes) => {
                    let e =
                        WriteError::Failed(format!("{} outcomes for {n} commands", outcomes.len()));
                    for r in replies {
                        let _ = r.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for r in replies {
                        let _ = r.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// When this node takes a Raft snapshot. A snapshot is a copy of the whole ledger, so taking one
/// every N log entries (openraft's own policy) would cost more and more as the ledger grows; a
/// snapshot is due once the log since the last one has at least `min_logs` entries **and** the
/// events applied since then are at least `growth_percent` % of the ledger at the last snapshot.
/// The Raft log then stays within about `growth_percent` % of the ledger (or `min_logs` entries),
/// and each event pays for a bounded number of snapshot copies.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotRule {
    pub min_logs: u64,
    pub growth_percent: u64,
}

impl SnapshotRule {
    /// `logs_since`: log entries applied since the last snapshot; `events_since` and
    /// `events_at_snapshot`: ledger entries applied since it and contained in it.
    pub fn due(&self, logs_since: u64, events_since: u64, events_at_snapshot: u64) -> bool {
        logs_since >= self.min_logs
            && u128::from(events_since) * 100
                >= u128::from(events_at_snapshot) * u128::from(self.growth_percent)
    }
}

/// Triggers snapshots by [`SnapshotRule`] (openraft's own policy is off), and after an erasure
/// (see [`ErasurePurge`]).
async fn snapshot_policy(
    node: Arc<Node>,
    rule: SnapshotRule,
    mut erasures: tokio::sync::watch::Receiver<Option<openraft::LogId<u64>>>,
    shutdown: CancellationToken,
) {
    let mut metrics = node.raft.metrics();
    let mut last = metrics.borrow().snapshot;
    // How many ledger entries the last snapshot holds. Not recorded across restarts: then the
    // ledger's size now, which errs towards a later snapshot.
    let mut events_at_snapshot = if last.is_some() { node.store.size() } else { 0 };
    let mut requested: Option<Instant> = None;
    let mut purge = ErasurePurge::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
            changed = erasures.changed() => if changed.is_err() { return },
            // While an erased value is being purged, look again now and then even when Raft's
            // metrics stand still (a purge the leader held back for a replication in flight).
            _ = tokio::time::sleep(Duration::from_secs(1)), if purge.working.is_some() => {}
        }
        let (snapshot, applied, purged) = {
            let m = metrics.borrow_and_update();
            (m.snapshot, m.last_applied, m.purged)
        };
        if snapshot != last {
            last = snapshot;
            events_at_snapshot = node.store.size();
            requested = None;
        }
        let erased = *erasures.borrow_and_update();
        match purge.step(&node, erased, snapshot, purged, requested).await {
            Step::Stop => return,
            Step::SnapshotRequested => {
                requested = Some(Instant::now());
                continue;
            }
            Step::Idle => {}
        }
        // A requested snapshot is being built; ask again only if it never came.
        if requested.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            continue;
        }
        let next_index = |l: Option<openraft::LogId<u64>>| l.map_or(0, |l| l.index + 1);
        let logs_since = next_index(applied).saturating_sub(next_index(snapshot));
        let events_since = node.store.size().saturating_sub(events_at_snapshot);
        if rule.due(logs_since, events_since, events_at_snapshot) {
            // A snapshot is a copy of the ledger written beside it; building one on a disk
            // without room for it would meet ENOSPC inside the state machine, which openraft
            // treats as fatal. Wait for room instead (checked again at the next change).
            let need = snapshot_estimate(&node);
            if let Err(full) = node.disk.check_room(need) {
                tracing::warn!(needed_bytes = need, "snapshot postponed: {full}");
                continue;
            }
            tracing::info!(
                logs_since,
                events_since,
                events_at_snapshot,
                "taking a snapshot"
            );
            if node.raft.trigger().snapshot().await.is_err() {
                return;
            }
            requested = Some(Instant::now());
        }
    }
}

/// What [`ErasurePurge::step`] did.
enum Step {
    /// Nothing for the snapshot rule to wait for.
    Idle,
    /// A snapshot was asked for.
    SnapshotRequested,
    /// Raft has shut down.
    Stop,
}

/// Removes an erased value from this gateway's Raft log and snapshot file soon after the
/// erasure is applied, on every gateway (each runs this for itself): the log entry that carried
/// the value and a snapshot built before the erasure keep it, while the ledger dropped it at
/// once. As soon as an erasure is applied (at log id E), the gateway takes a snapshot (built
/// from the ledger, so without the value; it replaces the older snapshot file), asks Raft to
/// purge its log up to E (allowed once a snapshot covers E; on the leader Raft holds the purge
/// until no replication is sending those entries, and a follower that lacks them catches up
/// from the snapshot), and flushes the database so that the purge is on disk. A restart
/// finds E in the store's metadata and finishes the job. What remains: sled may keep the old
/// bytes in its log-structured segment files until it rewrites them (docs/operations.md,
/// "Erasure").
#[derive(Default)]
struct ErasurePurge {
    /// The erasure being purged and when this gateway first saw it.
    working: Option<(openraft::LogId<u64>, Instant)>,
    /// The purge asked of Raft, up to this log id.
    asked: Option<openraft::LogId<u64>>,
}

impl ErasurePurge {
    async fn step(
        &mut self,
        node: &Node,
        erased: Option<openraft::LogId<u64>>,
        snapshot: Option<openraft::LogId<u64>>,
        purged: Option<openraft::LogId<u64>>,
        requested: Option<Instant>,
    ) -> Step {
        let Some(erased) = erased.filter(|e| purged < Some(*e)) else {
            if let Some((e, since)) = self.working.take() {
                // The purge is done: make it durable before saying so.
                if let Err(err) = node.store.flush().await {
                    tracing::error!(error = %err, "cannot flush the purge of an erased value");
                    self.working = Some((e, since));
                    return Step::Idle;
                }
                let seconds = since.elapsed().as_secs_f64();
                node.metrics.erasure_purged(seconds);
                tracing::info!(
                    erasure = %e,
                    seconds,
                    "erased value removed from the raft log and snapshot file"
                );
            }
            return Step::Idle;
        };
        if self.working.is_none_or(|(e, _)| e != erased) {
            let since = self.working.map_or_else(Instant::now, |(_, t)| t);
            self.working = Some((erased, since));
            node.metrics.erasure_pending(true);
            tracing::info!(erasure = %erased, "erasure applied: taking a snapshot and purging the raft log up to it");
        }
        if snapshot >= Some(erased) {
            if self.asked < Some(erased) {
                self.asked = Some(erased);
                if node.raft.trigger().purge_log(erased.index).await.is_err() {
                    return Step::Stop;
                }
            }
            return Step::Idle;
        }
        // A snapshot asked for a moment ago (by the rule or for an erasure) may still cover it.
        if requested.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return Step::Idle;
        }
        let need = snapshot_estimate(node);
        if let Err(full) = node.disk.check_room(need) {
            tracing::warn!(
                needed_bytes = need,
                "snapshot after an erasure postponed: {full}"
            );
            return Step::Idle;
        }
        if node.raft.trigger().snapshot().await.is_err() {
            return Step::Stop;
        }
        Step::SnapshotRequested
    }
}

/// About how many bytes the next snapshot takes: twice the last one (the ledger grew since, by
/// `snapshot_growth_percent` by default 50 %), or the sled database's size when there is none
/// yet (an overestimate: it holds the Raft log too).
fn snapshot_estimate(node: &Node) -> u64 {
    let dir = &node.disk_dir();
    let len = |p: std::path::PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let last = len(dir.join("raft-snapshot.bin"));
    if last > 0 {
        last.saturating_mul(2)
    } else {
        len(dir.join("sled").join("db"))
    }
}

/// Makes this node's public key part of the replicated ledger, so that every replica and every
/// export can check the entries this node signs; once the registration is applied here or the
/// leader answers that it applied it, lets this node's writes through (see
/// [`Node::key_registered`]). One registration is proposed at a time, the next only after an
/// attempt failed.
async fn register_key(node: Arc<Node>, shutdown: CancellationToken) {
    let public_key = node.key.verifying_key().to_bytes();
    let mut applied = node.raft.metrics();
    let mut submitted: Option<Instant> = None;
    loop {
        let known = node
            .store
            .node_keys()
            .ok()
            .is_some_and(|k| k.iter().any(|(id, pk)| *id == node.id && pk == &public_key));
        if known {
            node.key_registered.send_replace(Some(Ok(())));
            return;
        }
        // After a failed attempt (no leader, a leader change), the next one waits a little: an
        // attempt whose answer was lost may still be committed, and each attempt is a log entry.
        let pending = submitted.is_some_and(|t| t.elapsed() < Duration::from_secs(2));
        if !pending && node.raft.metrics().borrow().current_leader.is_some() {
            submitted = Some(Instant::now());
            match node
                .submit(Command::RegisterNode {
                    node_id: node.id,
                    public_key,
                })
                .await
            {
                Ok(ApplyOutcome::Refused { reason }) => {
                    tracing::error!(%reason, "the cluster refused this node's public key");
                    node.key_registered.send_replace(Some(Err(reason)));
                    return;
                }
                // Committed and applied by the leader: every entry this node proposes from now
                // on comes after it in the log, so its writes may go through, even while this
                // node is still catching up to it (a learner installing a large snapshot took
                // minutes; registering again every 2 s meanwhile filled the log with
                // registrations, and each 10 of them made the leader copy its ledger into a new
                // snapshot: `registry-bench --cluster` at 1,000,000 entries).
                Ok(ApplyOutcome::NodeRegistered { .. }) => {
                    node.key_registered.send_replace(Some(Ok(())));
                    return;
                }
                Ok(other) => tracing::warn!(outcome = ?other, "unexpected answer to the node key"),
                Err(e) => tracing::debug!(error = %e, "registering the node key; will retry"),
            }
        }
        // Checked again at every apply here (or leader change), and at least every 200 ms.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// While this node leads, records a signed tree head through Raft whenever the ledger has grown
/// since the last one: every replica then holds the same signed head, exports are cut at it, and
/// a shorter or different history on any node is caught against it.
async fn checkpointer(node: Arc<Node>, every: Duration, shutdown: CancellationToken) {
    // A tick every `every` from the start of the previous checkpoint (not from its end), so that
    // an entry waits at most about one interval for a co-signed head that covers it.
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if node.raft.metrics().borrow().current_leader != Some(node.id) {
            continue;
        }
        if let Err(e) = node.checkpoint().await {
            tracing::debug!(error = %e, "checkpoint not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotRule;

    #[test]
    fn snapshots_wait_for_enough_log_and_a_share_of_new_events() {
        let rule = SnapshotRule {
            min_logs: 20_000,
            growth_percent: 50,
        };
        // A fresh ledger: by log entries alone.
        assert!(!rule.due(19_999, 19_999, 0));
        assert!(rule.due(20_000, 20_000, 0));
        // A ledger of 1,000,000 entries at the last snapshot: 500,000 new events are needed,
        // however many log entries they came in.
        assert!(!rule.due(400_000, 499_999, 1_000_000));
        assert!(rule.due(20_000, 500_000, 1_000_000));
        // ...but never fewer log entries than the minimum.
        assert!(!rule.due(19_999, 5_000_000, 1_000_000));
        // 0 % = by log entries only; large counts do not overflow.
        let by_logs = SnapshotRule {
            min_logs: 10,
            growth_percent: 0,
        };
        assert!(by_logs.due(10, 0, u64::MAX));
        let big = SnapshotRule {
            min_logs: 1,
            growth_percent: 1000,
        };
        assert!(!big.due(1, u64::MAX / 11, u64::MAX / 100));
        assert!(big.due(1, u64::MAX, u64::MAX / 10));
    }
}
