//! PEM loading and encoding; every error names the file.

use std::path::Path;

use base64::Engine;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::error::{Error, Result};
use crate::fsutil;

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadPem {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Parse all certificates from PEM bytes; `path` names the source in errors.
pub fn certs_from_pem(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let mut rd = pem;
    let certs = rustls_pemfile::certs(&mut rd)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("bad pem: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "no certificate in file"));
    }
    Ok(certs)
}

/// Load all certificates (a chain: leaf first) from a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    certs_from_pem(&fsutil::read(path)?, path)
}

/// Parse the first private key (PKCS#8, SEC1 or PKCS#1) from PEM bytes.
pub fn key_from_pem(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>> {
    let mut rd = pem;
    rustls_pemfile::private_key(&mut rd)
        .map_err(|e| Error::BadKey {
            path: path.to_path_buf(),
            reason: format!("bad pem: {e}"),
        })?
        .ok_or_else(|| Error::BadKey {
            path: path.to_path_buf(),
            reason: "no private key in file".into(),
        })
}

/// Load a private key from a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    key_from_pem(&fsutil::read(path)?, path)
}

/// Parse CRLs from PEM bytes (zero or more).
pub fn crls_from_pem(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let mut rd = pem;
    rustls_pemfile::crls(&mut rd)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("bad pem: {e}")))
}

/// Load CRLs from a PEM file (zero or more).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    crls_from_pem(&fsutil::read(path)?, path)
}

/// Encode DER as PEM with the given label.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A certificate as PEM.
pub fn cert_pem(der: &[u8]) -> String {
    to_pem("CERTIFICATE", der)
}
