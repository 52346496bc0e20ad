//! Every rustls configuration MedLedger uses, built with the ring provider explicitly (no
//! process-wide default is read or installed), TLS 1.2 and 1.3 only.
//!
//! Servers always require a client certificate chaining to the site root
//! ([`WebPkiClientVerifier`] without `allow_unauthenticated`), check CRLs for the end-entity
//! certificate with `enforce_revocation_expiration` (an expired CRL refuses everyone, so a
//! gateway that stopped refreshing its CRL fails closed), and additionally refuse any serial in
//! the ledger's revoked set, which covers certificates from other gateways' issuing CAs whose
//! CRLs this gateway may not hold. After the handshake, [`MtlsAcceptor`] reads the peer's
//! [`Identity`] and refuses profiles the listener does not accept.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::identity::{parse_identity, serial_hex, Identity, Profile};
use crate::pem;

/// The crypto provider for every config in the workspace: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn tls_err(reason: impl std::fmt::Display) -> Error {
    Error::TlsConfig {
        reason: reason.to_string(),
    }
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .map_err(|e| tls_err(format!("bad trust anchor: {e}")))?;
    }
    if store.is_empty() {
        return Err(tls_err("no trust anchor (site root certificate) given"));
    }
    Ok(Arc::new(store))
}

/// A certificate chain and its key: what an endpoint presents.
pub struct CertifiedKey {
    /// Leaf first, then the issuing CA (the root may follow; it is harmless).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for CertifiedKey {
    fn clone(&self) -> Self {
        CertifiedKey {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("chain_len", &self.chain.len())
            .field("key", &"[elided]")
            .finish()
    }
}

impl CertifiedKey {
    /// Load a chain PEM and key PEM; errors name the file.
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Self> {
        Ok(CertifiedKey {
            chain: pem::load_certs(cert_path)?,
            key: pem::load_private_key(key_path)?,
        })
    }

    /// From PEM text (e.g. an [`crate::IssuedCert`]'s `chain_pem` and `key_pem`).
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self> {
        let what = Path::new("<pem>");
        Ok(CertifiedKey {
            chain: pem::certs_from_pem(chain_pem.as_bytes(), what)?,
            key: pem::key_from_pem(key_pem.as_bytes(), what)?,
        })
    }
}

/// Revocation inputs of a server (or client) config; rebuild the config when they change.
#[derive(Debug, Clone, Default)]
pub struct RevocationPolicy {
    /// CRLs (DER) of the issuing CAs this node knows, at least its own
    /// ([`crate::IssuingCa::build_crl`]).
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Serials (hex, as [`Identity::serial`]) revoked according to the ledger, from any issuer.
    pub revoked_serials: HashSet<String>,
    /// Accept an end-entity certificate whose issuer has no CRL in `crls` (e.g. a device
    /// enrolled by another gateway whose CRL this node does not have; `revoked_serials` still
    /// applies). Default false: such certificates are refused.
    pub allow_unknown_revocation_status: bool,
}

/// Wraps the webpki client verifier with the ledger's revoked-serial set.
#[derive(Debug)]
struct LedgerRevocationVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: HashSet<String>,
}

fn check_serial(
    revoked: &HashSet<String>,
    end_entity: &CertificateDer<'_>,
) -> Result<(), rustls::Error> {
    if revoked.is_empty() {
        return Ok(());
    }
    let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if revoked.contains(&serial_hex(cert.raw_serial())) {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
    }
    Ok(())
}

impl ClientCertVerifier for LedgerRevocationVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_serial(&self.revoked, end_entity)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Build a server config that requires client certificates chaining to `roots`.
///
/// `alpn` is offered as-is (empty for none).
pub fn server_config(
    roots: &[CertificateDer<'static>],
    server: &CertifiedKey,
    revocation: &RevocationPolicy,
    alpn: &[Vec<u8>],
) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let mut b = WebPkiClientVerifier::builder_with_provider(root_store(roots)?, provider.clone())
        .with_crls(revocation.crls.iter().cloned())
        // our CRLs are signed by issuing CAs; the root's own revocation list (for issuing CAs)
        // is not distributed, so only the end entity is checked against CRLs
        .only_check_end_entity_revocation()
        .enforce_revocation_expiration();
    if revocation.allow_unknown_revocation_status {
        b = b.allow_unknown_revocation_status();
    }
    let inner = b.build().map_err(tls_err)?;
    let verifier = Arc::new(LedgerRevocationVerifier {
        inner,
        revoked: revocation
            .revoked_serials
            .iter()
            .map(|s| crate::crl::normalize_serial(s))
            .collect::<Result<_>>()?,
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain.clone(), server.key.clone_key())
        .map_err(|e| tls_err(format!("server certificate: {e}")))?;
    cfg.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(cfg))
}

/// Server config for the device enrollment listener ONLY: TLS 1.2/1.3 with the gateway's
/// certificate and **no client authentication**, because a device that enrolls has no
/// certificate yet. Everything served with it must be authenticated by other means (the
/// one-time enrollment token of [`crate::sign_csr`]); never serve staff, device or Raft routes
/// with this config — those use [`server_config`] / [`ReloadableServerConfig`].
pub fn enrollment_server_config(server: &CertifiedKey) -> Result<Arc<ServerConfig>> {
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(server.chain.clone(), server.key.clone_key())
        .map_err(|e| tls_err(format!("server certificate: {e}")))?;
    Ok(Arc::new(cfg))
}

/// Server config for the staff web page: the gateway's certificate, and a client certificate
/// **optionally** (`WebPkiClientVerifier::allow_unauthenticated`): a browser that presents one
/// must prove its key and chain it to `roots`, a browser without one still connects (staff sign
/// in with a password then). Revocation and the certificate's profile are the page's to check
/// after the handshake, so that a revoked or non-staff certificate gets a page saying so rather
/// than a failed handshake; the page must treat a connection without a verified certificate as
/// anonymous.
pub fn web_server_config(
    roots: &[CertificateDer<'static>],
    server: &CertifiedKey,
) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(roots)?, provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(tls_err)?;
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain.clone(), server.key.clone_key())
        .map_err(|e| tls_err(format!("server certificate: {e}")))?;
    Ok(Arc::new(cfg))
}

/// A server config that can be rebuilt while the listener runs: each accepted connection reads
/// [`ReloadableServerConfig::current`], so a new CRL or revoked serial takes effect for the next
/// handshake without a restart.
pub struct ReloadableServerConfig {
    roots: Vec<CertificateDer<'static>>,
    alpn: Vec<Vec<u8>>,
    state: RwLock<(CertifiedKey, Arc<ServerConfig>)>,
}

impl std::fmt::Debug for ReloadableServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableServerConfig")
            .finish_non_exhaustive()
    }
}

impl ReloadableServerConfig {
    /// Build the first config.
    pub fn new(
        roots: Vec<CertificateDer<'static>>,
        server: CertifiedKey,
        revocation: &RevocationPolicy,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Self> {
        let cfg = server_config(&roots, &server, revocation, &alpn)?;
        Ok(ReloadableServerConfig {
            roots,
            alpn,
            state: RwLock::new((server, cfg)),
        })
    }

    /// The config to use for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        // a poisoned lock only means a writer panicked; the stored config is still whole
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        guard.1.clone()
    }

    /// Rebuild with new revocation inputs (new CRL, newly revoked serials). On error the old
    /// config stays in force.
    pub fn update_revocation(&self, revocation: &RevocationPolicy) -> Result<()> {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        let cfg = server_config(&self.roots, &guard.0, revocation, &self.alpn)?;
        guard.1 = cfg;
        tracing::info!(
            crls = revocation.crls.len(),
            revoked = revocation.revoked_serials.len(),
            "tls server config reloaded with new revocation data"
        );
        Ok(())
    }

    /// Replace the server certificate (renewal), keeping the revocation inputs given.
    pub fn update_certificate(
        &self,
        server: CertifiedKey,
        revocation: &RevocationPolicy,
    ) -> Result<()> {
        let cfg = server_config(&self.roots, &server, revocation, &self.alpn)?;
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        *guard = (server, cfg);
        Ok(())
    }
}

/// Accepts TLS connections with a [`ReloadableServerConfig`], then enforces the listener's
/// allowed profiles. Every refusal is logged at `warn` with the peer and the reason.
#[derive(Debug, Clone)]
pub struct MtlsAcceptor {
    config: Arc<ReloadableServerConfig>,
    allowed: Vec<Profile>,
    handshake_timeout: Duration,
}

impl MtlsAcceptor {
    /// `allowed`: the profiles this listener serves (e.g. `[Profile::Gateway]` for Raft,
    /// `[Profile::Staff]` for the staff API). Handshake timeout 10 s.
    pub fn new(config: Arc<ReloadableServerConfig>, allowed: &[Profile]) -> Self {
        MtlsAcceptor {
            config,
            allowed: allowed.to_vec(),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// Change the handshake timeout.
    pub fn with_handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// The reloadable config (to push new revocation data).
    pub fn config(&self) -> &Arc<ReloadableServerConfig> {
        &self.config
    }

    /// Run the handshake on `io` and return the stream and the peer's identity, or refuse
    /// (logged at `warn` with the peer and the reason).
    pub async fn accept<IO>(
        &self,
        io: IO,
        peer: SocketAddr,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, Identity)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let r = self.try_accept(io, peer).await;
        if let Err(Error::PeerRefused { reason, .. }) = &r {
            tracing::warn!(%peer, %reason, "tls client refused");
        }
        r
    }

    /// Like [`MtlsAcceptor::accept`] but leaves logging a refusal to the caller: a listener
    /// facing many hostile connections rate-limits those warnings per source.
    pub async fn try_accept<IO>(
        &self,
        io: IO,
        peer: SocketAddr,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, Identity)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let refuse = |reason: String| Error::PeerRefused {
            peer: peer.to_string(),
            reason,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.current());
        let mut stream =
            match tokio::time::timeout(self.handshake_timeout, acceptor.accept(io)).await {
                Err(_) => return Err(refuse("handshake timed out".into())),
                Ok(Err(e)) => return Err(refuse(format!("handshake failed: {e}"))),
                Ok(Ok(s)) => s,
            };
        let identity = match peer_identity(stream.get_ref().1) {
            Ok(id) => id,
            Err(e) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
                return Err(refuse(e.to_string()));
            }
        };
        if let Err(e) = identity.require(&self.allowed) {
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
            return Err(refuse(e.to_string()));
        }
        tracing::debug!(%peer, profile = %identity.profile, id = %identity.id, "tls client accepted");
        Ok((stream, identity))
    }
}

/// The identity of the peer of an established connection (server or client side).
pub fn peer_identity(conn: &rustls::CommonState) -> Result<Identity> {
    let certs = conn
        .peer_certificates()
        .ok_or_else(|| Error::NotAnIdentity {
            reason: "peer sent no certificate".into(),
        })?;
    let leaf = certs.first().ok_or_else(|| Error::NotAnIdentity {
        reason: "peer sent no certificate".into(),
    })?;
    parse_identity(leaf)
}

/// Verifies a server against the site root and then refuses a server whose revoked serial is in
/// the ledger's set.
#[derive(Debug)]
struct LedgerServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    revoked: HashSet<String>,
}

impl ServerCertVerifier for LedgerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_serial(&self.revoked, end_entity)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client config that verifies the server against `roots` (and `revocation`, when it holds
/// CRLs or serials) and presents `client` as its certificate.
///
/// rustls checks the server's DNS name / IP against the name you connect with; to check *which*
/// identity the server has (e.g. that a Raft peer is a gateway), call [`peer_identity`] on the
/// connection and [`Identity::require`].
pub fn client_config(
    roots: &[CertificateDer<'static>],
    client: &CertifiedKey,
    revocation: &RevocationPolicy,
    alpn: &[Vec<u8>],
) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let mut b = WebPkiServerVerifier::builder_with_provider(root_store(roots)?, provider.clone());
    if !revocation.crls.is_empty() {
        b = b
            .with_crls(revocation.crls.iter().cloned())
            .only_check_end_entity_revocation()
            .enforce_revocation_expiration();
        if revocation.allow_unknown_revocation_status {
            b = b.allow_unknown_revocation_status();
        }
    }
    let verifier = Arc::new(LedgerServerVerifier {
        inner: b.build().map_err(tls_err)?,
        revoked: revocation
            .revoked_serials
            .iter()
            .map(|s| crate::crl::normalize_serial(s))
            .collect::<Result<_>>()?,
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err)?
        .dangerous() // only to install our wrapper around the standard webpki verifier
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
        .map_err(|e| tls_err(format!("client certificate: {e}")))?;
    cfg.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(cfg))
}

/// Client config for Raft traffic to a peer gateway, presenting this gateway's certificate.
/// After connecting, require the peer to be [`Profile::Gateway`] via [`peer_identity`].
pub fn raft_peer_client_config(
    roots: &[CertificateDer<'static>],
    gateway: &CertifiedKey,
    revocation: &RevocationPolicy,
) -> Result<Arc<ClientConfig>> {
    client_config(roots, gateway, revocation, &[])
}

/// Client config for the gateway's MQTT connection to the broker (whose certificate is a
/// [`Profile::Service`] certificate from our CA). The broker maps our CN (`gateway:<node-id>`)
/// to the MQTT username, which the generated ACL allows to read `medledger/#`.
pub fn mqtt_client_config(
    roots: &[CertificateDer<'static>],
    gateway: &CertifiedKey,
) -> Result<Arc<ClientConfig>> {
    client_config(roots, gateway, &RevocationPolicy::default(), &[])
}

/// Client config for a Modbus/TCP Security client (port 802): presents a certificate carrying the
/// role extension (a device-profile certificate issued with `modbus_role`). Modbus/TCP Security
/// requires TLS 1.2 or later, which is all rustls speaks.
pub fn modbus_client_config(
    roots: &[CertificateDer<'static>],
    role_cert: &CertifiedKey,
) -> Result<Arc<ClientConfig>> {
    client_config(roots, role_cert, &RevocationPolicy::default(), &[])
}
