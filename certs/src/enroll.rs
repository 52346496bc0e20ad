//! Device enrollment: one-time tokens and CSR signing, and renewal.
//!
//! `medledger device add` calls [`TokenStore::create`] and shows the token once; the device
//! posts a CSR with the token; the gateway calls [`sign_csr`]. The store keeps only the SHA-256
//! of each token, its device, expiry and use; a used or expired token is refused. The file is
//! replaced atomically and guarded by a lock file, so the CLI and the running gateway can both
//! use it.

use std::path::{Path, PathBuf};

use rcgen::{CertificateSigningRequestParams, DnType, SanType};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::ca::{dn_value_string, IssuingCa, Validity};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::identity::{identity_uri, Identity, Profile};
use crate::profile::{CertSpec, DeviceSpec, IssuedCert};
use crate::udi::validate_device_id;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TokenRecord {
    /// SHA-256 of the token, hex.
    sha256: String,
    device_id: String,
    modbus_role: Option<String>,
    modbus_server: bool,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    used_at: Option<OffsetDateTime>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct StoreFile {
    tokens: Vec<TokenRecord>,
}

/// A pending (unused, unexpired) enrollment, as listed by [`TokenStore::pending`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEnrollment {
    /// Device id.
    pub device_id: String,
    /// Expiry.
    pub expires_at: OffsetDateTime,
}

/// File-backed one-time enrollment tokens (e.g. `DATA_DIR/pki/tokens.json`).
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
    lock: PathBuf,
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

impl TokenStore {
    /// Use the store at `path` (created on first write).
    pub fn open(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        TokenStore {
            path,
            lock: PathBuf::from(lock),
        }
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> Result<fsutil::FileLock> {
        fsutil::FileLock::acquire(&self.lock)
    }

    fn load(&self) -> Result<StoreFile> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::BadState {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StoreFile::default()),
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    fn save(&self, f: &StoreFile) -> Result<()> {
        let data = serde_json::to_vec_pretty(f).map_err(|e| Error::BadState {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        // only hashes are stored, but the file still says which devices are about to enroll
        fsutil::write_private(&self.path, &data)
    }

    /// Create a one-time token for `device` valid for `ttl`; returns the token (shown once;
    /// only its hash is stored). Expired and used tokens are pruned on the way.
    pub fn create(&self, device: &DeviceSpec, ttl: Duration) -> Result<String> {
        CertSpec::Device(device.clone()).validate()?;
        if ttl <= Duration::ZERO || ttl > Duration::days(30) {
            return Err(Error::input(
                "token ttl",
                "must be between 1 second and 30 days",
            ));
        }
        let token = format!("mlt_{}", hex::encode(rand::random::<[u8; 32]>()));
        let now = OffsetDateTime::now_utc();
        let _lock = self.lock()?;
        let mut f = self.load()?;
        f.tokens
            .retain(|t| t.used_at.is_none() && t.expires_at > now);
        f.tokens.push(TokenRecord {
            sha256: hash_token(&token),
            device_id: device.id.clone(),
            modbus_role: device.modbus_role.clone(),
            modbus_server: device.modbus_server,
            created_at: now,
            expires_at: now + ttl,
            used_at: None,
        });
        self.save(&f)?;
        tracing::info!(device_id = %device.id, expires_at = %(now + ttl), "enrollment token created");
        Ok(token)
    }

    /// Check `token` for `device_id`, run `issue` with the device spec the token was created
    /// for, and mark the token used only if `issue` succeeded. The lock is held throughout, so a
    /// token can be redeemed once even under concurrent requests.
    pub fn redeem<T>(
        &self,
        token: &str,
        device_id: &str,
        issue: impl FnOnce(&DeviceSpec) -> Result<T>,
    ) -> Result<T> {
        let hash = hash_token(token);
        let now = OffsetDateTime::now_utc();
        let _lock = self.lock()?;
        let mut f = self.load()?;
        let rec = f
            .tokens
            .iter_mut()
            .find(|t| t.sha256 == hash)
            .ok_or(Error::TokenUnknown)?;
        if rec.used_at.is_some() {
            return Err(Error::TokenUsed {
                device_id: rec.device_id.clone(),
            });
        }
        if rec.expires_at <= now {
            return Err(Error::TokenExpired {
                device_id: rec.device_id.clone(),
            });
        }
        if rec.device_id != device_id {
            return Err(Error::TokenDeviceMismatch {
                expected: rec.device_id.clone(),
                got: device_id.to_string(),
            });
        }
        let spec = DeviceSpec {
            id: rec.device_id.clone(),
            modbus_role: rec.modbus_role.clone(),
            modbus_server: rec.modbus_server,
            dns_names: Vec::new(),
            ip_addrs: Vec::new(),
        };
        let out = issue(&spec)?;
        rec.used_at = Some(now);
        self.save(&f)?;
        Ok(out)
    }

    /// Unused, unexpired enrollments.
    pub fn pending(&self) -> Result<Vec<PendingEnrollment>> {
        let now = OffsetDateTime::now_utc();
        Ok(self
            .load()?
            .tokens
            .into_iter()
            .filter(|t| t.used_at.is_none() && t.expires_at > now)
            .map(|t| PendingEnrollment {
                device_id: t.device_id,
                expires_at: t.expires_at,
            })
            .collect())
    }
}

fn refuse(reason: impl Into<String>) -> Error {
    Error::CsrRefused {
        reason: reason.into(),
    }
}

/// Parse and verify a CSR (signature, key type) and check it names `device_id`: subject CN equal
/// to the id or to its MQTT username `devices/<segment>` (the CN the certificate gets either
/// way), and SAN URIs (if any) only `urn:medledger:device:<id>`.
pub fn verify_device_csr(
    csr_pem: &str,
    device_id: &str,
) -> Result<CertificateSigningRequestParams> {
    let csr =
        CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| refuse(e.to_string()))?;
    let cn = csr
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .and_then(dn_value_string)
        .ok_or_else(|| refuse("no subject cn"))?;
    if cn != device_id && cn != crate::device_id::mqtt_username(device_id) {
        return Err(refuse(format!(
            "subject cn {cn:?} does not match device id {device_id:?}"
        )));
    }
    let want = identity_uri(Profile::Device, device_id);
    for san in &csr.params.subject_alt_names {
        match san {
            SanType::URI(u) if u.as_str() == want => {}
            other => {
                return Err(refuse(format!(
                    "unexpected subject alternative name {other:?}"
                )))
            }
        }
    }
    if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256
        && csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P384_SHA384
        && csr.public_key.algorithm() != &rcgen::PKCS_ED25519
    {
        return Err(refuse("key must be ecdsa p-256, p-384 or ed25519"));
    }
    Ok(csr)
}

/// Enrollment: verify the CSR, redeem the one-time token for `device_id` and issue the device
/// certificate (profile and Modbus role from the token) for the CSR's key.
///
/// The token is consumed only when the certificate was issued, so a device that sent a bad CSR
/// can try again with the same token.
pub fn sign_csr(
    ca: &IssuingCa,
    tokens: &TokenStore,
    csr_pem: &str,
    token: &str,
    device_id: &str,
    validity: Validity,
) -> Result<IssuedCert> {
    validate_device_id(device_id)?;
    let csr = verify_device_csr(csr_pem, device_id)?;
    tokens.redeem(token, device_id, |spec| {
        ca.issue_for_key(
            &CertSpec::Device(spec.clone()),
            validity,
            &csr.public_key,
            None,
        )
    })
}

/// Renewal: issue a fresh device certificate for the same id to a device that authenticated
/// with its current, valid certificate (`current`, from [`crate::tls::peer_identity`]). The
/// Modbus role and server flag carry over. The old certificate stays valid until it expires or
/// the caller revokes it (reason `superseded`).
pub fn renew(
    ca: &IssuingCa,
    csr_pem: &str,
    current: &Identity,
    validity: Validity,
) -> Result<IssuedCert> {
    if current.profile != Profile::Device {
        return Err(Error::WrongProfile {
            expected: "device".into(),
            found: current.profile.to_string(),
            id: current.id.clone(),
        });
    }
    if current.not_after <= OffsetDateTime::now_utc() {
        return Err(refuse(format!(
            "current certificate of {} has expired",
            current.id
        )));
    }
    let csr = verify_device_csr(csr_pem, &current.id)?;
    let spec = CertSpec::Device(DeviceSpec {
        id: current.id.clone(),
        modbus_role: current.role.clone(),
        modbus_server: current.server_auth,
        // a Modbus/TCP Security server keeps the names it is verified by
        dns_names: if current.server_auth {
            current.dns_names.clone()
        } else {
            Vec::new()
        },
        ip_addrs: if current.server_auth {
            current.ip_addrs.clone()
        } else {
            Vec::new()
        },
    });
    ca.issue_for_key(&spec, validity, &csr.public_key, None)
}

/// Make a device key and CSR (for devices enrolled by the CLI or simulated devices): returns
/// (key PEM, CSR PEM). Real devices make their own.
pub fn device_csr(device_id: &str) -> Result<(String, String)> {
    validate_device_id(device_id)?;
    let key = crate::ca::generate_key()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        crate::device_id::mqtt_username(device_id),
    );
    let csr = params
        .serialize_request(&key)
        .map_err(Error::gen("making device request"))?;
    Ok((
        key.serialize_pem(),
        csr.pem().map_err(Error::gen("encoding device request"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{init_site_ca, parse_identity, CaInit};

    fn setup() -> (tempfile::TempDir, IssuingCa, TokenStore) {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_site_ca(&dir.path().join("pki"), &CaInit::new("Site", "gw1")).unwrap();
        let store = TokenStore::open(dir.path().join("pki/tokens.json"));
        (dir, ca, store)
    }

    fn dev(id: &str) -> DeviceSpec {
        DeviceSpec {
            id: id.into(),
            modbus_role: None,
            modbus_server: false,
            dns_names: Vec::new(),
            ip_addrs: Vec::new(),
        }
    }

    #[test]
    fn token_is_one_time_and_only_hash_is_stored() {
        let (_d, ca, store) = setup();
        let token = store.create(&dev("pump-1"), Duration::hours(1)).unwrap();
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains(&token) && text.contains(&hash_token(&token)));
        assert_eq!(store.pending().unwrap().len(), 1);
        let (key_pem, csr) = device_csr("pump-1").unwrap();
        let issued = sign_csr(
            &ca,
            &store,
            &csr,
            &token,
            "pump-1",
            Validity::days(30).unwrap(),
        )
        .unwrap();
        assert_eq!(issued.identity.id, "pump-1");
        assert!(issued.key_pem.is_none());
        // the certificate carries the CSR's key
        let kp = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&issued.cert_der).unwrap();
        assert_eq!(
            kp.public_key_raw(),
            x.public_key().subject_public_key.data.as_ref()
        );
        let err = sign_csr(
            &ca,
            &store,
            &csr,
            &token,
            "pump-1",
            Validity::days(30).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::TokenUsed { .. }), "{err}");
        assert!(store.pending().unwrap().is_empty());
    }

    #[test]
    fn wrong_id_expired_unknown_and_bad_csr() {
        let (_d, ca, store) = setup();
        let v = Validity::days(30).unwrap();
        let token = store.create(&dev("pump-1"), Duration::hours(1)).unwrap();
        // a CSR for another device with the token
        let (_, csr2) = device_csr("pump-2").unwrap();
        let err = sign_csr(&ca, &store, &csr2, &token, "pump-2", v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "enrollment token is for device pump-1, not pump-2"
        );
        // a CSR whose CN does not match the claimed id; the token survives the bad request
        let err = sign_csr(&ca, &store, &csr2, &token, "pump-1", v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match device id"), "{err}");
        // a tampered CSR fails signature verification
        let (_, csr1) = device_csr("pump-1").unwrap();
        let mut der = crate::pem::certs_from_pem(
            csr1.replace("CERTIFICATE REQUEST", "CERTIFICATE")
                .as_bytes(),
            Path::new("csr"),
        )
        .unwrap()[0]
            .to_vec();
        let at = der.windows(6).position(|w| w == b"pump-1").unwrap();
        der[at + 5] = b'9';
        let tampered = crate::pem::to_pem("CERTIFICATE REQUEST", &der);
        let err = sign_csr(&ca, &store, &tampered, &token, "pump-1", v).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
        assert!(sign_csr(&ca, &store, &csr1, &token, "pump-1", v).is_ok());
        // unknown token
        let err = sign_csr(&ca, &store, &csr1, "mlt_nope", "pump-1", v).unwrap_err();
        assert!(matches!(err, Error::TokenUnknown));
        // expired token: write an already-expired record through the same code path
        let t2 = store.create(&dev("pump-3"), Duration::seconds(1)).unwrap();
        let mut f = store.load().unwrap();
        for r in &mut f.tokens {
            r.expires_at = OffsetDateTime::now_utc() - Duration::seconds(1);
        }
        store.save(&f).unwrap();
        let (_, csr3) = device_csr("pump-3").unwrap();
        let err = sign_csr(&ca, &store, &csr3, &t2, "pump-3", v).unwrap_err();
        assert!(matches!(err, Error::TokenExpired { .. }), "{err}");
        assert!(store.create(&dev("bad id"), Duration::hours(1)).is_err());
    }

    #[test]
    fn token_carries_modbus_role_and_renewal_keeps_it() {
        let (_d, ca, store) = setup();
        let spec = DeviceSpec {
            id: "plc-7".into(),
            modbus_role: Some("operator".into()),
            modbus_server: true,
            dns_names: Vec::new(),
            ip_addrs: Vec::new(),
        };
        let token = store.create(&spec, Duration::hours(1)).unwrap();
        let (_, csr) = device_csr("plc-7").unwrap();
        let issued = sign_csr(
            &ca,
            &store,
            &csr,
            &token,
            "plc-7",
            Validity::days(30).unwrap(),
        )
        .unwrap();
        assert_eq!(issued.identity.role.as_deref(), Some("operator"));
        assert!(issued.identity.server_auth);
        let (_, csr2) = device_csr("plc-7").unwrap();
        let renewed = renew(&ca, &csr2, &issued.identity, Validity::days(60).unwrap()).unwrap();
        assert_eq!(renewed.identity.id, "plc-7");
        assert_eq!(renewed.identity.role.as_deref(), Some("operator"));
        assert!(renewed.identity.server_auth);
        assert_ne!(renewed.identity.serial, issued.identity.serial);
        assert_eq!(parse_identity(&renewed.cert_der).unwrap(), renewed.identity);
        // renewal for another id or another profile is refused
        let (_, other) = device_csr("plc-8").unwrap();
        assert!(renew(&ca, &other, &issued.identity, Validity::days(60).unwrap()).is_err());
        let staff = ca
            .issue(
                &CertSpec::staff("e1", "Ann", crate::StaffRole::Admin),
                Validity::days(5).unwrap(),
            )
            .unwrap();
        let err = renew(&ca, &csr2, &staff.identity, Validity::days(5).unwrap()).unwrap_err();
        assert!(matches!(err, Error::WrongProfile { .. }));
    }

    #[test]
    fn live_lock_times_out_naming_the_file() {
        let (_d, _ca, store) = setup();
        let g = store.lock().unwrap();
        // a live lock blocks (LOCK_WAIT), then errors naming the lock file
        let err = store.lock().err().unwrap().to_string();
        assert!(err.contains("tokens.json.lock"), "{err}");
        drop(g);
        assert!(store.lock().is_ok());
    }
}
