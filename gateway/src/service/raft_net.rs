//! Raft RPC between gateways: JSON over HTTPS with gateway certificates on both sides.

use std::time::Duration;

use ledger_node::raft::TypeConfig;
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
