//! `certs`: MedLedger's identity layer.
//!
//! It does: the site root CA and per-gateway issuing CAs (ECDSA P-256, files under a directory
//! the caller names, keys created 0600); certificate profiles for devices (with UDI validation
//! and the Modbus/TCP Security role), staff, gateways and services; reading a verified peer
//! certificate back into an [`Identity`]; device enrollment with one-time tokens and CSRs;
//! CRLs built from a revocation list the caller supplies; every rustls client and server
//! config the workspace uses (ring provider, TLS 1.2/1.3, mandatory client certificates,
//! reloadable CRLs); and the Mosquitto listener/ACL configuration.
//!
//! It does not: decide who is revoked (the ledger is the source of truth: the gateway passes the
//! revoked serials in), store anything in the ledger, know the CLI, HTTP routes or config file,
//! or install a process-wide crypto provider.
//!
//! # API summary
//!
//! ```text
//! // CA (ca.rs) — see docs/identity.md for the directory layout
//! init_site_ca(dir, &CaInit::new(site_name, node_id)) -> Result<IssuingCa>        // `ca init`
//! request_issuing_ca(dir, node_id) -> Result<String /*CSR PEM*/>                    // `ca init --issuing-only`
//! RootCa::load(dir)?.sign_issuing_csr(csr_pem, days) -> Result<String /*cert PEM*/> // root holder
//! install_issuing_ca(dir, issuing_cert_pem, root_cert_pem) -> Result<IssuingCa>
//! IssuingCa::load(dir) -> Result<IssuingCa>;  ca.root_der(), ca.root_pem(), ca.issued_records()
//! // Profiles (profile.rs)                                                          // `cert issue`
//! ca.issue(&CertSpec::device("pump-0042"), Validity::days(365)?) -> Result<IssuedCert>
//!     CertSpec::{device(id), staff(id, name, StaffRole), gateway(node_id), service(name)}
//!     CertSpec::Device(DeviceSpec { id, modbus_role, modbus_server }), CertSpec::Gateway(ServerSpec { id, dns_names, ip_addrs })
//! issued.write_files(cert_path, key_path)  // chain PEM (leaf+issuing+root); key created 0600
//! issued.identity: Identity                // serial/fingerprint for the certificate-issued entry
//! // Identity (identity.rs)
//! parse_identity(der) -> Result<Identity { profile, id, role, name, fingerprint, serial, server_auth, not_before, not_after }>
//! identity.require(&[Profile::Gateway]) -> Result<()>   // wrong profile -> Error::WrongProfile
//! validate_device_id(id) -> Result<DeviceIdKind>          // plain id, GS1, HIBCC, ISBT 128
//! // Device ids over MQTT (device_id.rs): the one rule shared with device-adapters
//! mqtt_segment(id) / device_id_from_segment(seg)          // reversible %XX escaping of + # / % ...
//! mqtt_username(id) = device cert CN = "devices/<segment>"; telemetry_topic(id); device_id_from_topic(t)
//! // Enrollment (enroll.rs)                                                         // `device add`
//! TokenStore::open(dir.join("tokens.json")).create(&DeviceSpec, ttl) -> Result<String /*token*/>
//! sign_csr(&ca, &tokens, csr_pem, token, device_id, validity) -> Result<IssuedCert>
//! renew(&ca, csr_pem, &current_identity, validity) -> Result<IssuedCert>
//! device_csr(device_id) -> Result<(key_pem, csr_pem)>
//! // Revocation (crl.rs)                                                            // `cert crl`
//! ca.build_crl(&[Revoked { serial, revoked_at, reason }], this_update, next_update) -> Result<Crl { der, pem }>
//! // TLS (tls.rs) — ring provider, TLS 1.2/1.3, client certs mandatory
//! CertifiedKey::from_files(cert, key) / from_pem(chain_pem, key_pem)
//! RevocationPolicy { crls, revoked_serials, allow_unknown_revocation_status }
//! server_config(&roots, &server_key, &policy, &alpn) -> Result<Arc<ServerConfig>>
//! enrollment_server_config(&server_key) -> Result<Arc<ServerConfig>>   // enrollment listener only: no client auth, token-authenticated
//! web_server_config(&roots, &server_key) -> Result<Arc<ServerConfig>>  // staff web page: client certificate optional, checked by the page
//! ReloadableServerConfig::new(roots, server_key, &policy, alpn)?; .current(); .update_revocation(&policy)
//! MtlsAcceptor::new(Arc<ReloadableServerConfig>, &[Profile]).accept(tcp, peer).await -> Result<(TlsStream, Identity)>
//! client_config / raft_peer_client_config / mqtt_client_config / modbus_client_config; peer_identity(conn)
//! // Mosquitto (mosquitto.rs)                                                       // `mosquitto-config`
//! write_mosquitto_config(&ca, out_dir, &MosquittoOptions::new(port, gateway_ids), crl_pem) -> Result<MosquittoFiles>
//! ```
#![forbid(unsafe_code)]
// unwrap is fine in unit tests (CONVENTIONS: no unwrap outside tests)
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod ca;
pub mod crl;
pub mod device_id;
pub mod endorse;
pub mod enroll;
pub mod error;
mod fsutil;
pub mod identity;
pub mod mosquitto;
pub mod pem;
pub mod profile;
pub mod tls;
pub mod udi;

pub use ca::{
    init_site_ca, install_issuing_ca, request_issuing_ca, CaInit, IssuedRecord, IssuingCa, RootCa,
    Validity,
};
pub use crl::{Crl, RevocationReason, Revoked};
pub use device_id::{
    device_id_from_segment, device_id_from_topic, mqtt_segment, mqtt_username, telemetry_topic,
};
pub use enroll::{device_csr, renew, sign_csr, verify_device_csr, TokenStore};
pub use error::{Error, Result};
pub use identity::{modbus_role_of, parse_identity, Identity, Profile, StaffRole};
pub use mosquitto::{
    write_mosquitto_config, write_mosquitto_crl, MosquittoFiles, MosquittoOptions,
};
pub use profile::{CertSpec, DeviceSpec, IssuedCert, ServerSpec, StaffSpec};
pub use tls::{
    client_config, enrollment_server_config, modbus_client_config, mqtt_client_config,
    peer_identity, raft_peer_client_config, server_config, web_server_config, CertifiedKey,
    MtlsAcceptor, ReloadableServerConfig, RevocationPolicy,
};
pub use udi::{udi_parts, validate_device_id, DeviceIdKind, UdiIssuer, UdiParts};

/// File helpers that create private keys 0600 and replace files atomically.
pub mod files {
    pub use crate::fsutil::{atomic_write, group_id, write_private};
}
