//! The site root CA, this gateway's issuing CA, and the files they live in.
//!
//! Layout of a CA directory (e.g. `DATA_DIR/pki/`):
//!
//! | file | what | mode |
//! |---|---|---|
//! | `root.crt` | site root CA certificate (PEM) | 0644 |
//! | `root.key` | site root CA key (PKCS#8 PEM); may be moved offline after init | 0600 |
//! | `issuing.crt` | this gateway's issuing CA certificate, signed by the root | 0644 |
//! | `issuing.key` | issuing CA key | 0600 |
//! | `issuing.csr` | request for an issuing CA (the `issuing-only` flow, until installed) | 0644 |
//! | `issued.jsonl` | local record of issued certificates (serial, profile, id, not_after) | 0644 |
//!
//! All keys are ECDSA P-256 (accepted by Mosquitto, OpenSSL, rustls and embedded TLS stacks).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::X509Certificate;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::pem;

/// Root CA certificate file name.
pub const ROOT_CERT: &str = "root.crt";
/// Root CA key file name.
pub const ROOT_KEY: &str = "root.key";
/// Issuing CA certificate file name.
pub const ISSUING_CERT: &str = "issuing.crt";
/// Issuing CA key file name.
pub const ISSUING_KEY: &str = "issuing.key";
/// Pending issuing CA request file name.
pub const ISSUING_CSR: &str = "issuing.csr";
/// Local record of issued certificates.
pub const ISSUED_LOG: &str = "issued.jsonl";
/// The number of the last CRL this issuing CA signed (decimal), so CRL numbers only grow.
pub const CRL_NUMBER: &str = "crl_number";

const ORG: &str = "MedLedger";

/// Options for [`init_site_ca`].
#[derive(Debug, Clone)]
pub struct CaInit {
    /// Human name of the site, written into the root CA's subject (e.g. "St. Elsewhere").
    pub site_name: String,
    /// This gateway's node id, written into its issuing CA's subject.
    pub node_id: String,
    /// Root CA validity in days (default 7300, 20 years).
    pub root_days: u32,
    /// Issuing CA validity in days (default 1825, 5 years).
    pub issuing_days: u32,
}

impl CaInit {
    /// Defaults: root 20 years, issuing CA 5 years.
    pub fn new(site_name: impl Into<String>, node_id: impl Into<String>) -> Self {
        CaInit {
            site_name: site_name.into(),
            node_id: node_id.into(),
            root_days: 7300,
            issuing_days: 1825,
        }
    }
}

/// A validity window for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start.
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From now (backdated 5 minutes for clock skew) for `days` days; 1..=7300.
    pub fn days(days: u32) -> Result<Self> {
        if days == 0 || days > 7300 {
            return Err(Error::input("days", format!("{days} is not in 1..=7300")));
        }
        let now = OffsetDateTime::now_utc();
        Ok(Validity {
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(i64::from(days)),
        })
    }

    /// An explicit window (used by tests for expired and not-yet-valid certificates).
    pub fn between(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<Self> {
        if not_after <= not_before {
            return Err(Error::input(
                "validity",
                "not_after must be after not_before",
            ));
        }
        Ok(Validity {
            not_before,
            not_after,
        })
    }
}

/// A fresh random positive 16-byte serial number (RFC 5280 allows up to 20 octets).
pub(crate) fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    // positive and without a leading zero byte, so DER and our hex form agree
    b[0] = (b[0] & 0x7f).max(1);
    SerialNumber::from_slice(&b)
}

pub(crate) fn generate_key() -> Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(Error::gen("generating key"))
}

fn ca_params(cn: String, pathlen: u8, validity: Validity) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORG);
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(pathlen));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    p
}

pub(crate) fn issuing_cn(node_id: &str) -> String {
    format!("MedLedger issuing CA {node_id}")
}

/// A certificate loaded from disk, with both encodings.
#[derive(Clone)]
pub(crate) struct LoadedCert {
    pub der: CertificateDer<'static>,
    pub pem: String,
    pub path: PathBuf,
}

fn load_cert(path: &Path) -> Result<LoadedCert> {
    let certs = pem::load_certs(path)?;
    let der = certs.into_iter().next().ok_or_else(|| Error::BadPem {
        path: path.to_path_buf(),
        reason: "no certificate in file".into(),
    })?;
    Ok(LoadedCert {
        pem: pem::cert_pem(&der),
        der,
        path: path.to_path_buf(),
    })
}

fn load_key(path: &Path) -> Result<KeyPair> {
    let text = fsutil::read_string(path)?;
    KeyPair::from_pem(&text).map_err(|e| Error::BadKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn parse_x509<'a>(der: &'a [u8], what: &Path) -> Result<X509Certificate<'a>> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| Error::BadCertificate {
            what: what.display().to_string(),
            reason: e.to_string(),
        })
}

fn key_matches(key: &KeyPair, cert: &X509Certificate<'_>) -> bool {
    key.public_key_raw() == cert.public_key().subject_public_key.data.as_ref()
}

/// Check that `cert` is a CA whose signature verifies under `issuer`'s key.
fn check_signed_by(cert: &LoadedCert, issuer: &LoadedCert) -> Result<()> {
    let c = parse_x509(&cert.der, &cert.path)?;
    let i = parse_x509(&issuer.der, &issuer.path)?;
    let bad = |reason: String| Error::BadCertificate {
        what: cert.path.display().to_string(),
        reason,
    };
    if !c.is_ca() {
        return Err(bad("not a ca certificate".into()));
    }
    c.verify_signature(Some(i.public_key()))
        .map_err(|_| bad(format!("not signed by {}", issuer.path.display())))?;
    Ok(())
}

/// The site root CA, with its private key (only on the machine that holds it).
pub struct RootCa {
    cert: LoadedCert,
    key: KeyPair,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("cert", &self.cert.path)
            .field("key", &"[elided]")
            .finish()
    }
}

impl RootCa {
    /// Load `root.crt` and `root.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cert = load_cert(&dir.join(ROOT_CERT))?;
        let key_path = dir.join(ROOT_KEY);
        let key = load_key(&key_path)?;
        let parsed = parse_x509(&cert.der, &cert.path)?;
        if !key_matches(&key, &parsed) {
            return Err(Error::BadKey {
                path: key_path,
                reason: format!("does not match {}", cert.path.display()),
            });
        }
        Ok(RootCa { cert, key })
    }

    /// The root certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert.pem
    }

    /// Sign a new gateway's issuing-CA request (made by [`request_issuing_ca`]) with the root
    /// key, e.g. on the offline machine that holds `root.key`. Returns the issuing CA
    /// certificate PEM to hand to [`install_issuing_ca`] on the new gateway.
    ///
    /// Only the request's subject CN and public key are used; its extensions are ignored and the
    /// CA constraints (path length 0, keyCertSign + cRLSign) are ours.
    pub fn sign_issuing_csr(&self, csr_pem: &str, days: u32) -> Result<String> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| Error::CsrRefused {
                reason: e.to_string(),
            })?;
        let cn = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .and_then(dn_value_string)
            .ok_or_else(|| Error::CsrRefused {
                reason: "no subject cn".into(),
            })?;
        let Some(node) = cn.strip_prefix("MedLedger issuing CA ") else {
            return Err(Error::CsrRefused {
                reason: format!("subject cn {cn:?} is not \"MedLedger issuing CA <node-id>\""),
            });
        };
        crate::udi::validate_plain_id(node, "node id")?;
        let validity = Validity::days(days)?;
        let params = ca_params(cn.clone(), 0, validity);
        let issuer = Issuer::from_ca_cert_der(&self.cert.der, &self.key)
            .map_err(Error::gen("reading root ca"))?;
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(Error::gen("signing issuing ca"))?;
        tracing::info!(node_id = node, "signed issuing ca request");
        Ok(cert.pem())
    }
}

pub(crate) fn dn_value_string(v: &rcgen::DnValue) -> Option<String> {
    match v {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn refuse_existing(dir: &Path, names: &[&str]) -> Result<()> {
    for n in names {
        let p = dir.join(n);
        if p.exists() {
            return Err(Error::input(
                "ca directory",
                format!("{} already exists; refusing to overwrite a ca", p.display()),
            ));
        }
    }
    Ok(())
}

/// Create the site root CA and this gateway's issuing CA in `dir` (created 0700 if missing).
///
/// Refuses to overwrite an existing root or issuing key.
pub fn init_site_ca(dir: &Path, init: &CaInit) -> Result<IssuingCa> {
    crate::udi::validate_plain_id(&init.node_id, "node id")?;
    let site = init.site_name.trim();
    if site.is_empty() || site.len() > 48 || site.chars().any(char::is_control) {
        return Err(Error::input(
            "site name",
            "must be 1..48 printable characters",
        ));
    }
    fsutil::create_private_dir(dir)?;
    refuse_existing(dir, &[ROOT_KEY, ROOT_CERT, ISSUING_KEY, ISSUING_CERT])?;
    let root_key = generate_key()?;
    let root_params = ca_params(
        format!("MedLedger root CA {site}"),
        1,
        Validity::days(init.root_days)?,
    );
    let root_cert = root_params
        .self_signed(&root_key)
        .map_err(Error::gen("signing root ca"))?;
    let issuing_key = generate_key()?;
    let mut issuing_validity = Validity::days(init.issuing_days)?;
    issuing_validity.not_after = issuing_validity.not_after.min(root_params.not_after);
    let issuing_params = ca_params(issuing_cn(&init.node_id), 0, issuing_validity);
    let root_issuer = Issuer::from_params(&root_params, &root_key);
    let issuing_cert = issuing_params
        .signed_by(&issuing_key, &root_issuer)
        .map_err(Error::gen("signing issuing ca"))?;
    fsutil::write_private(&dir.join(ROOT_KEY), root_key.serialize_pem().as_bytes())?;
    fsutil::write_private(
        &dir.join(ISSUING_KEY),
        issuing_key.serialize_pem().as_bytes(),
    )?;
    fsutil::atomic_write(&dir.join(ROOT_CERT), root_cert.pem().as_bytes())?;
    fsutil::atomic_write(&dir.join(ISSUING_CERT), issuing_cert.pem().as_bytes())?;
    tracing::info!(dir = %dir.display(), node_id = %init.node_id, "created site root ca and issuing ca");
    IssuingCa::load(dir)
}

/// `issuing-only` flow, step 1 (on the new gateway): create `issuing.key` (0600) and
/// `issuing.csr` in `dir` and return the CSR PEM, to be signed with [`RootCa::sign_issuing_csr`].
pub fn request_issuing_ca(dir: &Path, node_id: &str) -> Result<String> {
    crate::udi::validate_plain_id(node_id, "node id")?;
    fsutil::create_private_dir(dir)?;
    refuse_existing(dir, &[ISSUING_KEY, ISSUING_CERT])?;
    let key = generate_key()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORG);
    dn.push(DnType::CommonName, issuing_cn(node_id));
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(Error::gen("making issuing ca request"))?;
    let csr_pem = csr
        .pem()
        .map_err(Error::gen("encoding issuing ca request"))?;
    fsutil::write_private(&dir.join(ISSUING_KEY), key.serialize_pem().as_bytes())?;
    fsutil::atomic_write(&dir.join(ISSUING_CSR), csr_pem.as_bytes())?;
    Ok(csr_pem)
}

/// `issuing-only` flow, step 3 (on the new gateway): check and install the signed issuing CA
/// certificate and the site root certificate into `dir`, next to the `issuing.key` made by
/// [`request_issuing_ca`].
pub fn install_issuing_ca(
    dir: &Path,
    issuing_cert_pem: &str,
    root_cert_pem: &str,
) -> Result<IssuingCa> {
    let parse_one = |text: &str, what: &str| -> Result<LoadedCert> {
        let path = PathBuf::from(what);
        let der = pem::certs_from_pem(text.as_bytes(), &path)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::BadPem {
                path: path.clone(),
                reason: "no certificate".into(),
            })?;
        Ok(LoadedCert {
            pem: pem::cert_pem(&der),
            der,
            path,
        })
    };
    let root = parse_one(root_cert_pem, "root certificate")?;
    let issuing = parse_one(issuing_cert_pem, "issuing certificate")?;
    check_signed_by(&root, &root)?;
    check_signed_by(&issuing, &root)?;
    let key_path = dir.join(ISSUING_KEY);
    let key = load_key(&key_path)?;
    if !key_matches(&key, &parse_x509(&issuing.der, &issuing.path)?) {
        return Err(Error::BadKey {
            path: key_path,
            reason: "does not match the issuing certificate being installed".into(),
        });
    }
    fsutil::atomic_write(&dir.join(ROOT_CERT), root.pem.as_bytes())?;
    fsutil::atomic_write(&dir.join(ISSUING_CERT), issuing.pem.as_bytes())?;
    let _ = std::fs::remove_file(dir.join(ISSUING_CSR));
    IssuingCa::load(dir)
}

/// This gateway's issuing CA: issues device, staff, gateway and service certificates and signs
/// CRLs. Holds the issuing key in memory; never the root key.
pub struct IssuingCa {
    dir: PathBuf,
    root: LoadedCert,
    cert: LoadedCert,
    key: KeyPair,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuingCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuingCa")
            .field("dir", &self.dir)
            .field("key", &"[elided]")
            .finish()
    }
}

impl IssuingCa {
    /// Load `root.crt`, `issuing.crt` and `issuing.key` from `dir`, checking that the key
    /// matches the certificate and the certificate is signed by the root. Errors name the file.
    pub fn load(dir: &Path) -> Result<Self> {
        let root = load_cert(&dir.join(ROOT_CERT))?;
        let cert = load_cert(&dir.join(ISSUING_CERT))?;
        let key_path = dir.join(ISSUING_KEY);
        let key = load_key(&key_path)?;
        check_signed_by(&root, &root)?;
        check_signed_by(&cert, &root)?;
        let parsed = parse_x509(&cert.der, &cert.path)?;
        if !key_matches(&key, &parsed) {
            return Err(Error::BadKey {
                path: key_path,
                reason: format!("does not match {}", cert.path.display()),
            });
        }
        let not_after = OffsetDateTime::from_unix_timestamp(
            parsed.validity().not_after.timestamp(),
        )
        .map_err(|e| Error::BadCertificate {
            what: cert.path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(IssuingCa {
            dir: dir.to_path_buf(),
            root,
            cert,
            key,
            not_after,
        })
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Root certificate DER (the trust anchor for every listener and client).
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root.der
    }

    /// Root certificate PEM.
    pub fn root_pem(&self) -> &str {
        &self.root.pem
    }

    /// Issuing CA certificate DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert.der
    }

    /// Issuing CA certificate PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert.pem
    }

    /// Path of `root.crt` (for Mosquitto's `cafile`, `openssl verify -CAfile`).
    pub fn root_path(&self) -> PathBuf {
        self.dir.join(ROOT_CERT)
    }

    /// End of the issuing CA's validity; no leaf may outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    pub(crate) fn issuer(&self) -> Result<Issuer<'static, &KeyPair>> {
        Issuer::from_ca_cert_der(&self.cert.der, &self.key)
            .map_err(Error::gen("reading issuing ca"))
    }

    pub(crate) fn record_issued(&self, rec: &IssuedRecord) -> Result<()> {
        let path = self.dir.join(ISSUED_LOG);
        let mut line = serde_json::to_string(rec).map_err(|e| Error::BadState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        f.write_all(line.as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        f.sync_data().map_err(|e| Error::io(&path, e))
    }

    /// The local record of certificates this CA issued (the ledger is the source of truth;
    /// this is a convenience for `cert list` and for finding a serial by id).
    pub fn issued_records(&self) -> Result<Vec<IssuedRecord>> {
        let path = self.dir.join(ISSUED_LOG);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| Error::BadState {
                    path: path.clone(),
                    reason: format!("line {}: {e}", i + 1),
                })
            })
            .collect()
    }
}

/// One line of `issued.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssuedRecord {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Profile.
    pub profile: crate::identity::Profile,
    /// Id (device id, staff id, node id, service name).
    pub id: String,
    /// SHA-256 fingerprint of the certificate.
    pub fingerprint: String,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Time of issuance.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
}
