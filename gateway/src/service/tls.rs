//! The TLS material of this gateway (its certificate, key and the site roots) and the revocation
//! policy every listener and client of the gateway starts with.

use std::sync::Arc;

use anyhow::Context;
use certs::{CertifiedKey, RevocationPolicy};

use crate::config::Config;

/// Loads the TLS material named by the config.
pub struct TlsMaterial {
    pub roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub gateway: CertifiedKey,
}

impl TlsMaterial {
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let pem = std::fs::read(&config.tls.ca_file).with_context(|| {
            format!("tls.ca_file {}: cannot read", config.tls.ca_file.display())
        })?;
        let roots = certs::pem::certs_from_pem(&pem, &config.tls.ca_file)?;
        let gateway = CertifiedKey::from_files(&config.tls.cert_file, &config.tls.key_file)
            .with_context(|| "tls.cert_file / tls.key_file".to_string())?;
        Ok(Self { roots, gateway })
    }

    /// The client config this gateway presents to peers and to itself (CLI).
    pub fn client_config(
        &self,
        revocation: &RevocationPolicy,
    ) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(certs::raft_peer_client_config(
            &self.roots,
            &self.gateway,
            revocation,
        )?)
    }
}

/// The revocation policy a gateway starts with: serials revoked according to the ledger are
/// refused whatever CA issued them; certificates of other gateways' issuing CAs are accepted
/// without a CRL of theirs because the replicated ledger is the revocation source of truth.
pub fn base_revocation() -> RevocationPolicy {
    RevocationPolicy {
        allow_unknown_revocation_status: true,
        ..RevocationPolicy::default()
    }
}
