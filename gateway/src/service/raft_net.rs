//! Raft RPC between gateways: MessagePack over HTTPS with gateway certificates on both sides.
//!
//! Every request and every answer carries the sender's release, peer protocol and command
//! format in headers ([`RELEASE_HEADER`], [`PROTOCOL_HEADER`], [`FORMAT_HEADER`]; release 0.1.0
//! sent none, which reads as 0.1.0, protocol 1, format 1). A gateway refuses a peer whose
//! protocol it does not speak, and a Raft entry of a format it does not apply, with a message
//! naming both releases; the leader learns each member's format from its answers
//! ([`PeerVersions`]) and proposes at the lowest of them (`Node::cluster_format`), so that a
//! cluster in the middle of a rolling upgrade keeps writing what its oldest member reads.

use std::time::Duration;

use ledger_node::raft::TypeConfig;
use ledger_node::version::{self, VersionError};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

type NodeId = u64;

/// The HTTPS client this gateway uses towards its peers, rebuilt when the ledger revokes a
/// certificate: a revoked peer's server certificate is then refused too, so it can neither
/// receive the ledger nor count towards a quorum.
pub struct PeerHttp {
    /// The members' versions, as their answers said.
    pub versions: PeerVersions,
    /// Where version refusals are counted; set once the node's metrics exist.
    pub metrics: std::sync::OnceLock<std::sync::Arc<crate::service::metrics::Metrics>>,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    gateway: certs::CertifiedKey,
    source: Option<std::net::IpAddr>,
    timeout: Duration,
    current: std::sync::RwLock<reqwest::Client>,
}

impl PeerHttp {
    /// A client presenting `gateway` and trusting `roots`, with the revocation inputs given.
    pub fn new(
        roots: Vec<rustls_pki_types::CertificateDer<'static>>,
        gateway: certs::CertifiedKey,
        revocation: &certs::RevocationPolicy,
        source: Option<std::net::IpAddr>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let tls = certs::raft_peer_client_config(&roots, &gateway, revocation)?;
        let current = std::sync::RwLock::new(http_client((*tls).clone(), source, timeout)?);
        Ok(Self {
            versions: PeerVersions::default(),
            metrics: std::sync::OnceLock::new(),
            roots,
            gateway,
            source,
            timeout,
            current,
        })
    }

    /// The client to use for the next request.
    pub fn get(&self) -> reqwest::Client {
        // A poisoned lock only means a writer panicked between two whole clients.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuilds the client with new revocation inputs; on error the old client stays.
    pub fn update_revocation(&self, revocation: &certs::RevocationPolicy) -> anyhow::Result<()> {
        let tls = certs::raft_peer_client_config(&self.roots, &self.gateway, revocation)?;
        let client = http_client((*tls).clone(), self.source, self.timeout)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = client;
        Ok(())
    }
}

/// Header naming the sender's release (`0.2.0`).
pub const RELEASE_HEADER: &str = "x-medledger-release";
/// Header naming the sender's peer protocol ([`version::PROTOCOL`]).
pub const PROTOCOL_HEADER: &str = "x-medledger-protocol";
/// Header naming the newest command format the sender applies ([`version::FORMAT`]).
pub const FORMAT_HEADER: &str = "x-medledger-format";

/// What a gateway says of its own code on a Raft RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerVersion {
    pub release: String,
    pub protocol: u32,
    pub format: u8,
}

impl PeerVersion {
    /// This gateway's.
    pub fn ours() -> Self {
        PeerVersion {
            release: version::RELEASE.to_owned(),
            protocol: version::PROTOCOL,
            format: version::FORMAT,
        }
    }

    /// What a release that sends no version headers is: 0.1.0.
    pub fn unlabelled() -> Self {
        PeerVersion {
            release: "0.1.0".to_owned(),
            protocol: 1,
            format: version::FORMAT_V1,
        }
    }

    /// Reads the version headers; none at all means release 0.1.0. A header that does not
    /// parse is an error naming it.
    pub fn from_headers(h: &reqwest::header::HeaderMap) -> Result<Self, VersionError> {
        let text = |name: &'static str, expected: &'static str| {
            h.get(name)
                .map(|v| {
                    v.to_str()
                        .map(str::to_owned)
                        .map_err(|_| VersionError::Header {
                            header: name,
                            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            expected,
                        })
                })
                .transpose()
        };
        let release = text(RELEASE_HEADER, "a release such as 0.2.0")?;
        let protocol = text(PROTOCOL_HEADER, "a protocol number")?;
        let format = text(FORMAT_HEADER, "a format number")?;
        if release.is_none() && protocol.is_none() && format.is_none() {
            return Ok(Self::unlabelled());
        }
        let release = release.unwrap_or_else(|| "(not named)".to_owned());
        if release.is_empty()
            || release.len() > 64
            || !release
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-+".contains(&b))
        {
            return Err(VersionError::Header {
                header: RELEASE_HEADER,
                value: release,
                expected: "a release such as 0.2.0",
            });
        }
        let number = |v: Option<String>, header: &'static str, expected: &'static str| {
            let v = v.ok_or(VersionError::Header {
                header,
                value: String::new(),
                expected,
            })?;
            v.parse::<u64>().map_err(|_| VersionError::Header {
                header,
                value: v,
                expected,
            })
        };
        let protocol = number(protocol, PROTOCOL_HEADER, "a protocol number")?;
        let format = number(format, FORMAT_HEADER, "a format number")?;
        Ok(PeerVersion {
            release,
            // Out of range is as unknown as any other number we do not speak.
            protocol: u32::try_from(protocol).unwrap_or(u32::MAX),
            format: u8::try_from(format).unwrap_or(u8::MAX),
        })
    }

    /// Refuses a peer whose protocol this release does not speak; `peer` names it when known.
    pub fn check(&self, peer: Option<u64>) -> Result<(), VersionError> {
        if version::PROTOCOLS_READ.contains(&self.protocol) {
            Ok(())
        } else {
            Err(VersionError::Protocol {
                peer: peer.map(|p| format!(" {p}")).unwrap_or_default(),
                peer_release: self.release.clone(),
                protocol: self.protocol,
            })
        }
    }
}

impl std::fmt::Display for PeerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "release {} (protocol {}, format {})",
            self.release, self.protocol, self.format
        )
    }
}

/// This gateway's version headers, for every Raft RPC it sends or answers.
pub fn version_headers() -> [(&'static str, String); 3] {
    [
        (RELEASE_HEADER, version::RELEASE.to_owned()),
        (PROTOCOL_HEADER, version::PROTOCOL.to_string()),
        (FORMAT_HEADER, version::FORMAT.to_string()),
    ]
}

/// The members' versions as the leader learns them from their answers.
#[derive(Default)]
pub struct PeerVersions {
    seen: std::sync::Mutex<std::collections::HashMap<NodeId, PeerVersion>>,
}

impl PeerVersions {
    /// Records what `peer` said of itself; a change is logged (once per change).
    pub fn record(&self, peer: NodeId, v: PeerVersion) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(&peer) != Some(&v) {
            tracing::info!(peer, version = %v, "peer gateway's version");
            seen.insert(peer, v);
        }
    }

    /// What `peer` last said of itself.
    pub fn get(&self, peer: NodeId) -> Option<PeerVersion> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .cloned()
    }

    /// The highest command format every one of `members` applies, this gateway (`me`)
    /// included: a member not heard from yet counts as format 1.
    pub fn cluster_format(&self, me: NodeId, members: impl IntoIterator<Item = NodeId>) -> u8 {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        members
            .into_iter()
            .filter(|m| *m != me)
            .map(|m| seen.get(&m).map_or(version::FORMAT_V1, |v| v.format))
            .fold(version::FORMAT, u8::min)
    }

    /// Whether one of `members` (other than `me`) has not answered yet.
    pub fn any_unheard(&self, me: NodeId, members: impl IntoIterator<Item = NodeId>) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        members
            .into_iter()
            .any(|m| m != me && !seen.contains_key(&m))
    }

    /// The members (other than `me`) that hold the cluster below this release's format, with
    /// their versions, for messages.
    pub fn behind(&self, me: NodeId, members: impl IntoIterator<Item = NodeId>) -> String {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for m in members.into_iter().filter(|m| *m != me) {
            match seen.get(&m) {
                Some(v) if v.format >= version::FORMAT => {}
                Some(v) => out.push(format!("gateway {m} runs {v}")),
                None => out.push(format!("gateway {m} has not answered yet")),
            }
        }
        out.join(", ")
    }
}

/// Logs a version refusal at most once a minute per peer and kind, and counts it in /metrics
/// (`medledger_version_refusals_total{what}`).
pub fn refused(
    metrics: Option<&crate::service::metrics::Metrics>,
    who: &str,
    what: &'static str,
    e: &VersionError,
) {
    static WARN: std::sync::OnceLock<crate::service::limits::WarnLimiter> =
        std::sync::OnceLock::new();
    if let Some(m) = metrics {
        m.version_refused(what);
    }
    let warn =
        WARN.get_or_init(|| crate::service::limits::WarnLimiter::new(Duration::from_secs(60), 1));
    if let Some(left_out) = warn.allow(who, what) {
        tracing::error!(peer = who, what, left_out, "refused: {e}");
    }
}

/// Creates one client per peer; all share the gateway's [`PeerHttp`].
#[derive(Clone)]
pub struct Network {
    pub http: std::sync::Arc<PeerHttp>,
}

impl Network {
    /// The Raft network of a gateway of `config`, with its TLS material.
    pub fn new(
        config: &crate::config::Config,
        tls: &crate::service::tls::TlsMaterial,
        revocation: &certs::RevocationPolicy,
    ) -> anyhow::Result<Self> {
        Ok(Network {
            http: std::sync::Arc::new(PeerHttp::new(
                tls.roots.clone(),
                tls.gateway.clone(),
                revocation,
                config.api.source_address,
                Duration::from_millis(config.raft.rpc_timeout_ms),
            )?),
        })
    }
}

/// An HTTPS client with our TLS configuration.
pub fn http_client(
    tls: rustls::ClientConfig,
    source: Option<std::net::IpAddr>,
    timeout: Duration,
) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true);
    if let Some(ip) = source {
        b = b.local_address(ip);
    }
    Ok(b.build()?)
}

/// The client of one peer.
pub struct PeerClient {
    http: std::sync::Arc<PeerHttp>,
    target: NodeId,
    base: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            http: self.http.clone(),
            target,
            base: format!("https://{}", node.addr),
        }
    }
}

/// Header that carries a snapshot chunk's metadata (JSON); the chunk's bytes are the body.
pub const SNAPSHOT_HEADER: &str = "x-medledger-snapshot";

/// Content type of Raft RPC bodies between gateways: MessagePack (with field names), which costs
/// far less CPU than JSON for batches of signed entries.
pub const MSGPACK: &str = "application/msgpack";

/// Encodes a Raft RPC body.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(v)
}

/// Decodes a Raft RPC body.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(b)
}

/// [`version_headers`] as a header map for requests.
pub fn request_headers() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    for (name, value) in version_headers() {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    h
}

impl PeerClient {
    async fn answer<Resp, E>(
        &self,
        url: &str,
        resp: reqwest::Response,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        // What the peer says of its code, whatever its answer: the leader proposes at the
        // lowest format its members apply.
        let peer = PeerVersion::from_headers(resp.headers()).and_then(|v| {
            v.check(Some(self.target))?;
            Ok(v)
        });
        match peer {
            Ok(v) => self.http.versions.record(self.target, v),
            Err(e) => {
                refused(
                    self.http.metrics.get().map(|m| &**m),
                    &format!("gateway {}", self.target),
                    "peer",
                    &e,
                );
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            let e = std::io::Error::other(format!("{url}: {status}: {body}"));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}{}", self.base, path);
        let body = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let resp = self
            .http
            .get()
            .post(&url)
            .timeout(option.hard_ttl())
            .header(reqwest::header::CONTENT_TYPE, MSGPACK)
            .headers(request_headers())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_timeout() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        self.answer(&url, resp).await
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let InstallSnapshotRequest {
            vote,
            meta,
            offset,
            data,
            done,
        } = rpc;
        let header = InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta,
            offset,
            data: Vec::new(),
            done,
        };
        let header =
            serde_json::to_string(&header).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let url = format!("{}/raft/snapshot", self.base);
        let resp = self
            .http
            .get()
            .post(&url)
            .timeout(option.hard_ttl())
            .header(SNAPSHOT_HEADER, header)
            .headers(request_headers())
            .body(data)
            .send()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.answer(&url, resp).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("/raft/vote", &rpc, &option).await
    }
}
