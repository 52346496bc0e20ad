//! Endorsements of ledger signing keys.
//!
//! A gateway signs ledger entries and tree heads with an Ed25519 key of its own (`node.key`),
//! which is not its TLS key. An endorsement is an X.509 certificate, issued by the gateway's
//! issuing CA, whose subject public key is that Ed25519 key and whose SAN URI names the node
//! (`urn:medledger:ledger-key:node:N`). The gateway records it in the ledger (a
//! `certificate-issued` entry with profile `ledger-key`), so an export carries the endorsement of
//! every key it was signed with, and `medledger verify --site-root root.crt` checks the file
//! against the site's root rather than against the keys the file brings along. Any verifier can
//! check one with OpenSSL: `openssl verify -CAfile root.crt -untrusted issuing.crt key.crt`.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose, PublicKeyData, SanType,
    SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::ca::{random_serial, IssuingCa};
use crate::error::{Error, Result};

/// The SAN URI of the endorsement of node `node_id`'s ledger key.
pub fn ledger_key_uri(node_id: u64) -> String {
    format!("urn:medledger:ledger-key:node:{node_id}")
}

/// The `profile` the ledger records an endorsement under.
pub const LEDGER_KEY_PROFILE: &str = "ledger-key";

/// OID of Ed25519 public keys (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";

/// A raw Ed25519 public key, as rcgen signs it into a certificate.
struct Ed25519Public([u8; 32]);

impl PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// An endorsement as issued.
#[derive(Debug, Clone)]
pub struct Endorsement {
    /// Serial, lowercase hex.
    pub serial: String,
    /// SHA-256 fingerprint of the certificate, lowercase hex.
    pub fingerprint: String,
    /// The endorsement certificate, PEM.
    pub cert_pem: String,
    /// The issuing CA's certificate (the chain's middle), PEM.
    pub issuer_pem: String,
    pub not_after: OffsetDateTime,
}

impl IssuingCa {
    /// Endorses node `node_id`'s ledger key, valid until this issuing CA expires.
    pub fn endorse_ledger_key(&self, node_id: u64, key: &[u8; 32]) -> Result<Endorsement> {
        let now = OffsetDateTime::now_utc();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "MedLedger");
        dn.push(
            DnType::CommonName,
            format!("ledger signing key of gateway {node_id}"),
        );
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = now - Duration::minutes(5);
        p.not_after = self.not_after();
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        let uri = ledger_key_uri(node_id);
        p.subject_alt_names.push(SanType::URI(
            uri.clone()
                .try_into()
                .map_err(|_| Error::input("node id", format!("{uri:?} is not a valid uri")))?,
        ));
        let cert = p
            .signed_by(&Ed25519Public(*key), &self.issuer()?)
            .map_err(Error::gen("signing a ledger key endorsement"))?;
        let der = cert.der().to_vec();
        let parsed = X509Certificate::from_der(&der)
            .map_err(|e| Error::BadCertificate {
                what: "the new endorsement".into(),
                reason: e.to_string(),
            })?
            .1;
        Ok(Endorsement {
            serial: hex::encode(parsed.raw_serial()),
            fingerprint: crate::identity::fingerprint(&der),
            cert_pem: cert.pem(),
            issuer_pem: self.cert_pem().to_owned(),
            not_after: p.not_after,
        })
    }
}

/// Checks that `cert_pem` endorses `key` as node `node_id`'s ledger key under the site root
/// `root_der`, through the issuing CA certificate `issuer_pem`, at `at` (Unix seconds) when
/// given. The error says what did not hold.
pub fn verify_endorsement(
    root_der: &[u8],
    issuer_pem: &str,
    cert_pem: &str,
    node_id: u64,
    key: &[u8; 32],
    at: Option<i64>,
) -> std::result::Result<(), String> {
    let der_of = |pem: &str, what: &str| -> std::result::Result<Vec<u8>, String> {
        let certs = crate::pem::certs_from_pem(pem.as_bytes(), std::path::Path::new(what))
            .map_err(|e| format!("{what}: {e}"))?;
        match certs.as_slice() {
            [one] => Ok(one.to_vec()),
            _ => Err(format!(
                "{what}: expected one certificate, found {}",
                certs.len()
            )),
        }
    };
    let parse = |der: &'_ [u8], what: &str| -> std::result::Result<(), String> {
        X509Certificate::from_der(der)
            .map(|_| ())
            .map_err(|e| format!("{what}: {e}"))
    };
    let issuer_der = der_of(issuer_pem, "the issuing CA certificate")?;
    let cert_der = der_of(cert_pem, "the endorsement")?;
    parse(root_der, "the site root")?;
    parse(&issuer_der, "the issuing CA certificate")?;
    parse(&cert_der, "the endorsement")?;
    let root = X509Certificate::from_der(root_der)
        .map_err(|e| e.to_string())?
        .1;
    let issuer = X509Certificate::from_der(&issuer_der)
        .map_err(|e| e.to_string())?
        .1;
    let cert = X509Certificate::from_der(&cert_der)
        .map_err(|e| e.to_string())?
        .1;
    if !issuer.is_ca() {
        return Err(format!(
            "the endorsement's issuer {} is not a CA certificate",
            issuer.subject()
        ));
    }
    issuer
        .verify_signature(Some(root.public_key()))
        .map_err(|_| {
            format!(
                "the issuing CA {} is not signed by the site root {}",
                issuer.subject(),
                root.subject()
            )
        })?;
    // Each gateway's issuing CA is named after its node: it may endorse its own node's key
    // only, so that one gateway's CA cannot vouch for keys it made up for the others.
    let want_cn = crate::ca::issuing_cn(&node_id.to_string());
    let issuer_cn = issuer
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    if issuer_cn != Some(want_cn.as_str()) {
        return Err(format!(
            "the endorsement's issuer {} is not node {node_id}'s issuing CA ({want_cn:?}): a \
             gateway's CA endorses its own node's key only",
            issuer.subject()
        ));
    }
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|_| format!("the endorsement is not signed by {}", issuer.subject()))?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm.to_id_string() != ED25519_OID
        || spki.subject_public_key.data.as_ref() != key.as_slice()
    {
        return Err(format!(
            "the endorsement certifies another key than node {node_id}'s {}",
            hex::encode(key)
        ));
    }
    let want = ledger_key_uri(node_id);
    let names_node = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::URI(u) if *u == want))
        });
    if !names_node {
        return Err(format!(
            "the endorsement does not name node {node_id} ({want})"
        ));
    }
    if let Some(at) = at {
        for (c, what) in [(&issuer, "the issuing CA"), (&cert, "the endorsement")] {
            let v = c.validity();
            if at < v.not_before.timestamp() || at > v.not_after.timestamp() {
                return Err(format!(
                    "{what} was not valid at the tree head's time (valid {} to {})",
                    v.not_before, v.not_after
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{init_site_ca, CaInit};

    #[test]
    fn an_endorsement_verifies_under_its_root_only_for_its_key_and_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = init_site_ca(dir.path(), &CaInit::new("Test site", "1")).expect("ca");
        let other = tempfile::tempdir().expect("tempdir");
        let other_ca = init_site_ca(other.path(), &CaInit::new("Other site", "1")).expect("ca");
        let key = [7u8; 32];
        // `ca` is node 1's issuing CA.
        let e = ca.endorse_ledger_key(1, &key).expect("endorse");
        let root = ca.root_der().to_vec();
        verify_endorsement(&root, &e.issuer_pem, &e.cert_pem, 1, &key, None).expect("valid");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        verify_endorsement(&root, &e.issuer_pem, &e.cert_pem, 1, &key, Some(now)).expect("now");
        let err = verify_endorsement(&root, &e.issuer_pem, &e.cert_pem, 1, &[8u8; 32], None)
            .expect_err("other key");
        assert!(err.contains("another key"), "{err}");
        // Node 1's CA endorsing a key as node 3's (one gateway vouching for another's key).
        let third = ca.endorse_ledger_key(3, &key).expect("endorse");
        let err = verify_endorsement(&root, &third.issuer_pem, &third.cert_pem, 3, &key, None)
            .expect_err("another node's CA");
        assert!(err.contains("is not node 3's issuing CA"), "{err}");
        let other_root = other_ca.root_der().to_vec();
        let err = verify_endorsement(&other_root, &e.issuer_pem, &e.cert_pem, 1, &key, None)
            .expect_err("other site");
        assert!(err.contains("not signed by the site root"), "{err}");
        // An endorsement by another site's CA, presented with this site's issuing certificate.
        let forged = other_ca.endorse_ledger_key(1, &key).expect("endorse");
        let err = verify_endorsement(&root, &e.issuer_pem, &forged.cert_pem, 1, &key, None)
            .expect_err("forged");
        assert!(err.contains("not signed by"), "{err}");
        let err = verify_endorsement(&root, &e.issuer_pem, &e.cert_pem, 1, &key, Some(0))
            .expect_err("too early");
        assert!(err.contains("not valid at"), "{err}");
    }
}
