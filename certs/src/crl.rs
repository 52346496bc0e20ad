//! Certificate revocation lists, built from the revoked serials the caller supplies.
//!
//! The ledger is the source of truth for revocation: the gateway collects the
//! `certificate-revoked` entries and calls [`IssuingCa::build_crl`] whenever the set changes
//! (and before the previous CRL's `next_update`). The PEM form is what Mosquitto's `crlfile`
//! wants; the DER form goes to [`crate::tls::RevocationPolicy::crls`].

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::CertificateRevocationListDer;
use time::OffsetDateTime;

use crate::ca::{IssuingCa, CRL_NUMBER};
use crate::error::{Error, Result};
use crate::fsutil;

/// Why a certificate was revoked (RFC 5280 CRLReason, the codes that make sense for us).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    /// No reason given.
    Unspecified,
    /// The private key leaked (device stolen, key extracted).
    KeyCompromise,
    /// An issuing CA key leaked.
    CaCompromise,
    /// The holder moved (staff left the department).
    AffiliationChanged,
    /// Replaced by a newer certificate (renewal, re-enrollment).
    Superseded,
    /// Device decommissioned, staff left.
    CessationOfOperation,
    /// Temporarily suspended.
    CertificateHold,
    /// Role or privilege withdrawn.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::CaCompromise => "ca-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
            RevocationReason::CertificateHold => "certificate-hold",
            RevocationReason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    const ALL: [RevocationReason; 8] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn,
    ];

    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::CaCompromise => rcgen::RevocationReason::CaCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::CertificateHold => rcgen::RevocationReason::CertificateHold,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::input(
                    "revocation reason",
                    format!(
                        "{s:?} is not one of {}",
                        Self::ALL.map(|r| r.as_str()).join(", ")
                    ),
                )
            })
    }
}

/// One revoked certificate, as recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revoked {
    /// Serial, hex as in [`crate::Identity::serial`] (case and a leading `0x`/colons tolerated).
    pub serial: String,
    /// When the revocation was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
}

/// Normalise a hex serial: lowercase, no `0x`, no colons, no leading zero bytes.
pub fn normalize_serial(serial: &str) -> Result<String> {
    let bytes = serial_bytes(serial)?;
    Ok(crate::identity::serial_hex(&bytes))
}

fn serial_bytes(serial: &str) -> Result<Vec<u8>> {
    let s: String = serial
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let s = if s.len() % 2 == 1 { format!("0{s}") } else { s };
    let bytes =
        hex::decode(&s).map_err(|_| Error::input("serial", format!("{serial:?} is not hex")))?;
    if bytes.is_empty() || bytes.len() > 20 {
        return Err(Error::input(
            "serial",
            format!("{serial:?} must be 1..20 bytes"),
        ));
    }
    Ok(bytes)
}

/// A signed CRL in both encodings.
#[derive(Debug, Clone)]
pub struct Crl {
    /// DER, for rustls.
    pub der: CertificateRevocationListDer<'static>,
    /// PEM (`X509 CRL`), for Mosquitto's `crlfile` and `openssl crl`.
    pub pem: String,
}

impl Crl {
    /// Write the PEM form atomically (Mosquitto reads `crlfile` at start and on SIGHUP).
    pub fn write_pem(&self, path: &Path) -> Result<()> {
        fsutil::atomic_write(path, self.pem.as_bytes())
    }
}

impl IssuingCa {
    /// Sign a CRL listing `revoked`, valid from `this_update` until `next_update`.
    ///
    /// The CRL number increases with every CRL this CA signs (RFC 5280 §5.2.3): it is one more
    /// than the last one, kept in `DIR/crl_number` under a lock file (the CLI and the running
    /// gateway may both sign), and at least `this_update` in Unix seconds, so it also stays above
    /// the numbers of CRLs signed before the counter existed (they used those seconds).
    pub fn build_crl(
        &self,
        revoked: &[Revoked],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<Crl> {
        if next_update <= this_update {
            return Err(Error::input("next_update", "must be after this_update"));
        }
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for r in revoked {
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial_bytes(&r.serial)?),
                revocation_time: r.revoked_at,
                reason_code: Some(r.reason.to_rcgen()),
                invalidity_date: None,
            });
        }
        let _lock = fsutil::FileLock::acquire(&self.dir().join(format!("{CRL_NUMBER}.lock")))?;
        let number = self.next_crl_number(this_update)?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = self.issuer()?;
        let crl = params
            .signed_by(&issuer)
            .map_err(Error::gen("signing crl"))?;
        let pem = crl.pem().map_err(Error::gen("encoding crl"))?;
        // written only once the CRL is signed: a failed build leaves no gap-causing state,
        // and a crash after this write costs an unused number, never a repeated one
        fsutil::atomic_write(&self.dir().join(CRL_NUMBER), number.to_string().as_bytes())?;
        tracing::info!(revoked = revoked.len(), %next_update, crl_number = number, "built crl");
        Ok(Crl {
            der: crl.der().clone(),
            pem,
        })
    }
}

impl IssuingCa {
    /// max(last + 1, this_update in Unix seconds); the caller holds the lock.
    fn next_crl_number(&self, this_update: OffsetDateTime) -> Result<u64> {
        let path = self.dir().join(CRL_NUMBER);
        let last = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t.trim().parse::<u64>().map_err(|_| Error::BadState {
                path: path.clone(),
                reason: format!("crl number {:?} is not a decimal number", t.trim()),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&path, e)),
        };
        let seconds = u64::try_from(this_update.unix_timestamp()).unwrap_or(0);
        let next = match last {
            Some(l) => l.checked_add(1).ok_or_else(|| Error::BadState {
                path: path.clone(),
                reason: "crl number is at its maximum".into(),
            })?,
            None => 1,
        };
        Ok(next.max(seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{init_site_ca, CaInit, CertSpec, Validity};
    use time::Duration;
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;

    #[test]
    fn crl_lists_the_revoked_serials_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_site_ca(dir.path(), &CaInit::new("Site", "gw1")).unwrap();
        let a = ca
            .issue(&CertSpec::device("a"), Validity::days(5).unwrap())
            .unwrap();
        let b = ca
            .issue(&CertSpec::device("b"), Validity::days(5).unwrap())
            .unwrap();
        let now = OffsetDateTime::now_utc();
        let crl = ca
            .build_crl(
                &[Revoked {
                    serial: a.identity.serial.to_uppercase(),
                    revoked_at: now,
                    reason: RevocationReason::KeyCompromise,
                }],
                now,
                now + Duration::days(1),
            )
            .unwrap();
        assert!(crl.pem.starts_with("-----BEGIN X509 CRL-----"));
        let (_, parsed) = CertificateRevocationList::from_der(&crl.der).unwrap();
        let serials: Vec<String> = parsed
            .iter_revoked_certificates()
            .map(|r| crate::identity::serial_hex(r.raw_serial()))
            .collect();
        assert_eq!(serials, vec![a.identity.serial.clone()]);
        assert!(!serials.contains(&b.identity.serial));
        let (_, issuing) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        parsed.verify_signature(issuing.public_key()).unwrap();
        // the first CRL's number is this_update in seconds (above those of older versions)
        assert_eq!(
            parsed.crl_number().map(|n| n.to_string()),
            Some(now.unix_timestamp().to_string())
        );
        // next_update before this_update is refused
        assert!(ca.build_crl(&[], now, now - Duration::hours(1)).is_err());
        // a bad serial is refused with the serial named
        let err = ca
            .build_crl(
                &[Revoked {
                    serial: "zz".into(),
                    revoked_at: now,
                    reason: RevocationReason::Unspecified,
                }],
                now,
                now + Duration::days(1),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"zz\""), "{err}");
    }

    #[test]
    fn reasons_and_serials_parse() {
        assert_eq!(
            "superseded".parse::<RevocationReason>().ok(),
            Some(RevocationReason::Superseded)
        );
        assert!("stolen".parse::<RevocationReason>().is_err());
        assert_eq!(normalize_serial("0x00:AB:01").unwrap(), "ab01");
        assert_eq!(normalize_serial("abc").unwrap(), "0abc");
    }

    fn crl_number(crl: &Crl) -> u64 {
        let (_, parsed) = CertificateRevocationList::from_der(&crl.der).unwrap();
        parsed.crl_number().unwrap().to_string().parse().unwrap()
    }

    #[test]
    fn crl_numbers_increase_within_one_second_and_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_site_ca(dir.path(), &CaInit::new("Site", "gw1")).unwrap();
        // one this_update for all: what two CRLs built within the same second look like
        let now = OffsetDateTime::now_utc();
        let next = now + Duration::days(1);
        let mut numbers = Vec::new();
        for _ in 0..3 {
            numbers.push(crl_number(&ca.build_crl(&[], now, next).unwrap()));
        }
        // a CRL with an earlier this_update (clock stepped back) still gets a larger number
        numbers.push(crl_number(
            &ca.build_crl(&[], now - Duration::hours(1), next).unwrap(),
        ));
        // another process (the CLI while the gateway runs) loads the same CA directory
        let again = crate::IssuingCa::load(dir.path()).unwrap();
        numbers.push(crl_number(&again.build_crl(&[], now, next).unwrap()));
        for w in numbers.windows(2) {
            assert!(w[1] > w[0], "crl numbers do not increase: {numbers:?}");
        }
        assert_eq!(numbers[0], u64::try_from(now.unix_timestamp()).unwrap());
        assert_eq!(numbers[4], numbers[0] + 4);
        // concurrent builders never share a number
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let ca = crate::IssuingCa::load(&dir).unwrap();
                    (0..5)
                        .map(|_| crl_number(&ca.build_crl(&[], now, next).unwrap()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 20);
        assert!(all[0] > numbers[4]);
        // a corrupt counter is reported, not silently restarted
        std::fs::write(dir.path().join(CRL_NUMBER), "seven").unwrap();
        let err = ca.build_crl(&[], now, next).unwrap_err().to_string();
        assert!(err.contains("crl_number") && err.contains("seven"), "{err}");
    }
}
