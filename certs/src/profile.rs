//! Certificate profiles (device, staff, gateway, service) and issuance by the issuing CA.
//!
//! | profile | subject | SAN | EKU |
//! |---|---|---|---|
//! | device | `CN=devices/<segment>` (Mosquitto maps CN to the MQTT username; [`crate::device_id`]) | `URI:urn:medledger:device:<id>` | clientAuth (+ serverAuth for a Modbus server) |
//! | staff | `CN=staff:<id>`, `OU=<role>`, `name=<person's name>` | `URI:urn:medledger:staff:<id>` | clientAuth |
//! | gateway | `CN=gateway:<node-id>` | `URI:urn:medledger:gateway:<node-id>`, `DNS:localhost`, `IP:127.0.0.1`, `IP:::1` + given names | serverAuth, clientAuth |
//! | service | `CN=service:<name>` | `URI:urn:medledger:service:<name>`, same DNS/IP as gateway | serverAuth |
//!
//! Every subject also has `O=MedLedger`; key usage is digitalSignature; keys are ECDSA P-256.
//! Only device CNs start with `devices/`: staff, gateway and service CNs carry a `profile:`
//! prefix and no `/`, so no staff member or service can ever have a device's MQTT username
//! (= CN) or write below `medledger/devices/` (see [`crate::device_id`]).
//! The identity is read from the SAN URI, never the CN ([`crate::parse_identity`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::ca::{generate_key, random_serial, IssuedRecord, IssuingCa, Validity};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::identity::{
    encode_utf8string, identity_uri, parse_identity, Identity, Profile, StaffRole, MODBUS_ROLE_OID,
};
use crate::udi::{validate_device_id, validate_plain_id};

/// X.520 `name` attribute (2.5.4.41), holding a staff member's name.
const NAME_ATTR_OID: &[u64] = &[2, 5, 4, 41];

/// Device profile parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Plain asset id or UDI (validated by [`crate::udi::validate_device_id`]).
    pub id: String,
    /// Modbus/TCP Security role, written into extension 1.3.6.1.4.1.50316.802.1.
    pub modbus_role: Option<String>,
    /// The device is a Modbus/TCP Security server (adds EKU serverAuth).
    pub modbus_server: bool,
    /// DNS names a Modbus/TCP Security server is reached by (SAN `DNS:`), so OpenSSL and
    /// rustls can verify it by name; only with `modbus_server`.
    pub dns_names: Vec<String>,
    /// IP addresses a Modbus/TCP Security server is reached by (SAN `IP:`); only with
    /// `modbus_server`.
    pub ip_addrs: Vec<IpAddr>,
}

/// Staff profile parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffSpec {
    /// Staff id (plain id, e.g. an employee number or login).
    pub id: String,
    /// The person's name, for display.
    pub name: String,
    /// Role.
    pub role: StaffRole,
}

/// Gateway or service profile parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Node id (gateway) or service name (e.g. `broker`).
    pub id: String,
    /// Extra DNS names (`localhost` is always included).
    pub dns_names: Vec<String>,
    /// Extra IP addresses (127.0.0.1 and ::1 are always included).
    pub ip_addrs: Vec<IpAddr>,
}

/// What to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSpec {
    /// A device certificate.
    Device(DeviceSpec),
    /// A staff certificate.
    Staff(StaffSpec),
    /// A gateway certificate (server and client).
    Gateway(ServerSpec),
    /// A server certificate for a non-gateway service such as the MQTT broker.
    Service(ServerSpec),
}

impl CertSpec {
    /// A device certificate without Modbus role.
    pub fn device(id: impl Into<String>) -> Self {
        CertSpec::Device(DeviceSpec {
            id: id.into(),
            modbus_role: None,
            modbus_server: false,
            dns_names: Vec::new(),
            ip_addrs: Vec::new(),
        })
    }

    /// A staff certificate.
    pub fn staff(id: impl Into<String>, name: impl Into<String>, role: StaffRole) -> Self {
        CertSpec::Staff(StaffSpec {
            id: id.into(),
            name: name.into(),
            role,
        })
    }

    /// A gateway certificate valid for localhost / loopback.
    pub fn gateway(node_id: impl Into<String>) -> Self {
        CertSpec::Gateway(ServerSpec {
            id: node_id.into(),
            dns_names: Vec::new(),
            ip_addrs: Vec::new(),
        })
    }

    /// A service (server-only) certificate valid for localhost / loopback.
    pub fn service(name: impl Into<String>) -> Self {
        CertSpec::Service(ServerSpec {
            id: name.into(),
            dns_names: Vec::new(),
            ip_addrs: Vec::new(),
        })
    }

    /// The profile.
    pub fn profile(&self) -> Profile {
        match self {
            CertSpec::Device(_) => Profile::Device,
            CertSpec::Staff(_) => Profile::Staff,
            CertSpec::Gateway(_) => Profile::Gateway,
            CertSpec::Service(_) => Profile::Service,
        }
    }

    /// The id.
    pub fn id(&self) -> &str {
        match self {
            CertSpec::Device(d) => &d.id,
            CertSpec::Staff(s) => &s.id,
            CertSpec::Gateway(g) | CertSpec::Service(g) => &g.id,
        }
    }

    /// The subject CN this spec produces (the MQTT username under `use_identity_as_username`).
    pub fn common_name(&self) -> String {
        common_name(self.profile(), self.id())
    }

    /// Check every field; the error names the bad one.
    pub fn validate(&self) -> Result<()> {
        match self {
            CertSpec::Device(d) => {
                validate_device_id(&d.id)?;
                if let Some(role) = &d.modbus_role {
                    check_text("modbus role", role, 64)?;
                }
                let has_names = !d.dns_names.is_empty() || !d.ip_addrs.is_empty();
                if has_names && !d.modbus_server {
                    return Err(Error::input(
                        "dns name",
                        "dns names and ip addresses go only into the certificate of a modbus/tcp security server (modbus_server)",
                    ));
                }
                for n in &d.dns_names {
                    check_dns_name(n)?;
                }
            }
            CertSpec::Staff(s) => {
                validate_plain_id(&s.id, "staff id")?;
                check_text("staff name", &s.name, 64)?;
            }
            CertSpec::Gateway(g) | CertSpec::Service(g) => {
                validate_plain_id(
                    &g.id,
                    if matches!(self, CertSpec::Gateway(_)) {
                        "node id"
                    } else {
                        "service name"
                    },
                )?;
                for n in &g.dns_names {
                    check_dns_name(n)?;
                }
            }
        }
        Ok(())
    }
}

/// The subject CN for a profile and id (see the module table): for a device its MQTT username
/// `devices/<segment>`, otherwise `<profile>:<id>`.
pub fn common_name(profile: Profile, id: &str) -> String {
    match profile {
        Profile::Device => crate::device_id::mqtt_username(id),
        other => format!("{}:{id}", other.as_str()),
    }
}

/// How the ledger names the subject of a certificate (`device_id` of its `certificate-issued`
/// entry): the device id itself for a device, `<profile>:<id>` otherwise.
pub fn subject_label(profile: Profile, id: &str) -> String {
    match profile {
        Profile::Device => id.to_string(),
        other => format!("{}:{id}", other.as_str()),
    }
}

fn check_text(field: &'static str, s: &str, max: usize) -> Result<()> {
    if s.trim().is_empty() || s.len() > max || s.chars().any(char::is_control) || s.trim() != s {
        return Err(Error::input(
            field,
            format!("{s:?} must be 1..{max} printable characters without surrounding spaces"),
        ));
    }
    Ok(())
}

fn check_dns_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::input(
            "dns name",
            format!("{n:?} is not a valid host name"),
        ))
    }
}

/// A certificate issued by [`IssuingCa::issue`] or for a CSR.
#[derive(Clone)]
pub struct IssuedCert {
    /// What the certificate says (as [`parse_identity`] reads it back).
    pub identity: Identity,
    /// Leaf certificate DER.
    pub cert_der: CertificateDer<'static>,
    /// Leaf certificate PEM.
    pub cert_pem: String,
    /// Leaf + issuing CA + root, PEM: what a TLS endpoint presents (and `openssl verify` reads).
    pub chain_pem: String,
    /// Leaf + issuing CA DER (what to hand rustls as the certificate chain).
    pub chain_der: Vec<CertificateDer<'static>>,
    /// Private key PKCS#8 PEM, when the key was generated here (None for CSR issuance).
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("identity", &self.identity)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "[elided]"))
            .finish()
    }
}

impl IssuedCert {
    /// Write the chain PEM to `cert_path` and, when present, the key to `key_path` (created 0600).
    pub fn write_files(&self, cert_path: &Path, key_path: &Path) -> Result<()> {
        if let Some(key) = &self.key_pem {
            fsutil::write_private(key_path, key.as_bytes())?;
        }
        fsutil::atomic_write(cert_path, self.chain_pem.as_bytes())
    }
}

impl IssuingCa {
    /// Issue a certificate for `spec` with a freshly generated key (the key is in
    /// [`IssuedCert::key_pem`]; write it with [`IssuedCert::write_files`]).
    pub fn issue(&self, spec: &CertSpec, validity: Validity) -> Result<IssuedCert> {
        let key = generate_key()?;
        let key_pem = key.serialize_pem();
        self.issue_for_key(spec, validity, &key, Some(key_pem))
    }

    /// Issue a certificate for `spec` binding an existing public key (e.g. from a verified CSR).
    pub fn issue_for_key(
        &self,
        spec: &CertSpec,
        validity: Validity,
        public_key: &impl PublicKeyData,
        key_pem: Option<String>,
    ) -> Result<IssuedCert> {
        spec.validate()?;
        if validity.not_after > self.not_after() {
            return Err(Error::input(
                "validity",
                format!("ends after the issuing ca ({})", self.not_after()),
            ));
        }
        let params = leaf_params(spec, validity)?;
        let issuer = self.issuer()?;
        let cert = params
            .signed_by(public_key, &issuer)
            .map_err(Error::gen("signing certificate"))?;
        let cert_der = cert.der().clone();
        let identity = parse_identity(&cert_der)?;
        let cert_pem = cert.pem();
        let chain_pem = format!("{cert_pem}{}{}", self.cert_pem(), self.root_pem());
        self.record_issued(&IssuedRecord {
            serial: identity.serial.clone(),
            profile: identity.profile,
            id: identity.id.clone(),
            fingerprint: identity.fingerprint.clone(),
            not_after: identity.not_after,
            issued_at: OffsetDateTime::now_utc(),
        })?;
        tracing::info!(profile = %identity.profile, id = %identity.id, serial = %identity.serial, "issued certificate");
        Ok(IssuedCert {
            chain_der: vec![cert_der.clone(), self.cert_der().clone()],
            identity,
            cert_der,
            cert_pem,
            chain_pem,
            key_pem,
        })
    }
}

fn push_dns_names(p: &mut CertificateParams, names: &[String]) -> Result<()> {
    for n in names {
        if p.subject_alt_names
            .iter()
            .any(|s| matches!(s, SanType::DnsName(d) if d.as_str() == n))
        {
            continue;
        }
        p.subject_alt_names.push(SanType::DnsName(
            n.clone()
                .try_into()
                .map_err(|_| Error::input("dns name", format!("{n:?} is not ascii")))?,
        ));
    }
    Ok(())
}

fn leaf_params(spec: &CertSpec, validity: Validity) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "MedLedger");
    if let CertSpec::Staff(s) = spec {
        dn.push(DnType::OrganizationalUnitName, s.role.as_str());
        dn.push(DnType::CustomDnType(NAME_ATTR_OID.to_vec()), s.name.clone());
    }
    dn.push(DnType::CommonName, spec.common_name());
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    let uri = identity_uri(spec.profile(), spec.id());
    p.subject_alt_names.push(SanType::URI(
        uri.clone()
            .try_into()
            .map_err(|_| Error::input("id", format!("{uri:?} is not a valid uri")))?,
    ));
    match spec {
        CertSpec::Device(d) => {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
            if d.modbus_server {
                p.extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth);
            }
            if let Some(role) = &d.modbus_role {
                p.custom_extensions.push(CustomExtension::from_oid_content(
                    MODBUS_ROLE_OID,
                    encode_utf8string(role),
                ));
            }
            // a Modbus/TCP Security server is verified by the address its clients dial; unlike
            // a gateway, it is not localhost, so only the names given are added
            push_dns_names(&mut p, &d.dns_names)?;
            let mut ips: Vec<IpAddr> = Vec::new();
            for ip in &d.ip_addrs {
                if !ips.contains(ip) {
                    ips.push(*ip);
                }
            }
            p.subject_alt_names
                .extend(ips.into_iter().map(SanType::IpAddress));
        }
        CertSpec::Staff(_) => p
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth),
        CertSpec::Gateway(g) | CertSpec::Service(g) => {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            if matches!(spec, CertSpec::Gateway(_)) {
                p.extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth);
            }
            let mut dns = vec!["localhost".to_string()];
            dns.extend(
                g.dns_names
                    .iter()
                    .filter(|n| n.as_str() != "localhost")
                    .cloned(),
            );
            push_dns_names(&mut p, &dns)?;
            let mut ips = vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ];
            for ip in &g.ip_addrs {
                if !ips.contains(ip) {
                    ips.push(*ip);
                }
            }
            p.subject_alt_names
                .extend(ips.into_iter().map(SanType::IpAddress));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{init_site_ca, install_issuing_ca, request_issuing_ca, CaInit, RootCa};
    use std::os::unix::fs::PermissionsExt;

    fn ca() -> (tempfile::TempDir, IssuingCa) {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_site_ca(&dir.path().join("pki"), &CaInit::new("Test Site", "gw1")).unwrap();
        (dir, ca)
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_private_keys_0600_and_reloads() {
        let (dir, ca) = ca();
        let pki = dir.path().join("pki");
        assert_eq!(mode(&pki.join("root.key")), 0o600);
        assert_eq!(mode(&pki.join("issuing.key")), 0o600);
        assert_eq!(mode(&pki), 0o700);
        let again = IssuingCa::load(&pki).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        // refuses to overwrite
        let err = init_site_ca(&pki, &CaInit::new("Test Site", "gw1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
    }

    #[test]
    fn load_errors_name_the_file() {
        let (dir, _ca) = ca();
        let pki = dir.path().join("pki");
        std::fs::write(
            pki.join("issuing.key"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = IssuingCa::load(&pki).unwrap_err().to_string();
        assert!(err.contains("issuing.key"), "{err}");
        // a valid key that belongs to another certificate
        std::fs::copy(pki.join("root.key"), pki.join("issuing.key")).unwrap();
        let err = IssuingCa::load(&pki).unwrap_err().to_string();
        assert!(
            err.contains("issuing.key") && err.contains("does not match"),
            "{err}"
        );
        std::fs::remove_file(pki.join("issuing.crt")).unwrap();
        let err = IssuingCa::load(&pki).unwrap_err().to_string();
        assert!(err.contains("issuing.crt"), "{err}");
    }

    #[test]
    fn device_profile_round_trip() {
        let (dir, ca) = ca();
        let spec = CertSpec::Device(DeviceSpec {
            id: "(01)00884838035249(21)SN 1".replace(' ', ""),
            modbus_role: Some("operator".into()),
            modbus_server: true,
            dns_names: vec!["pump-1.devices.hospital.local".into()],
            ip_addrs: vec!["10.20.0.7".parse().unwrap()],
        });
        let issued = ca.issue(&spec, Validity::days(30).unwrap()).unwrap();
        assert_eq!(
            issued.identity.dns_names,
            vec!["pump-1.devices.hospital.local".to_string()]
        );
        assert_eq!(
            issued.identity.ip_addrs,
            vec!["10.20.0.7".parse::<IpAddr>().unwrap()]
        );
        let id = &issued.identity;
        assert_eq!(id.profile, Profile::Device);
        assert_eq!(id.id, "(01)00884838035249(21)SN1");
        assert_eq!(id.role.as_deref(), Some("operator"));
        assert_eq!(
            id.fingerprint,
            crate::identity::fingerprint(&issued.cert_der)
        );
        assert_eq!(id.serial.len(), 32);
        assert_eq!(parse_identity(&issued.cert_der).unwrap(), *id);
        assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 3);
        let cert = dir.path().join("d.crt");
        let key = dir.path().join("d.key");
        issued.write_files(&cert, &key).unwrap();
        assert_eq!(mode(&key), 0o600);
        // the local record
        let recs = ca.issued_records().unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].serial, id.serial);
        assert_eq!(recs[0].id, id.id);
    }

    #[test]
    fn staff_and_gateway_profiles() {
        let (_dir, ca) = ca();
        let s = ca
            .issue(
                &CertSpec::staff("e1234", "Ada Lovelace", StaffRole::Biomed),
                Validity::days(30).unwrap(),
            )
            .unwrap();
        assert_eq!(s.identity.profile, Profile::Staff);
        assert_eq!(s.identity.id, "e1234");
        assert_eq!(s.identity.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(s.identity.staff_role(), Some(StaffRole::Biomed));
        let err = s
            .identity
            .require(&[Profile::Gateway])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "wrong certificate profile: expected gateway, got staff (e1234)"
        );
        let g = ca
            .issue(&CertSpec::gateway("gw1"), Validity::days(30).unwrap())
            .unwrap();
        assert_eq!(g.identity.profile, Profile::Gateway);
        assert_eq!(g.identity.role, None);
        assert!(g.identity.require(&[Profile::Gateway]).is_ok());
        assert_eq!(CertSpec::gateway("gw1").common_name(), "gateway:gw1");
        assert_eq!(CertSpec::device("pump-1").common_name(), "devices/pump-1");
        assert_eq!(
            CertSpec::device("+A123BJC5D6E71G").common_name(),
            "devices/%2BA123BJC5D6E71G"
        );
        assert_eq!(subject_label(Profile::Device, "pump-1"), "pump-1");
        assert_eq!(subject_label(Profile::Staff, "e1"), "staff:e1");
    }

    #[test]
    fn inputs_are_validated() {
        let (_dir, ca) = ca();
        let v = Validity::days(30).unwrap();
        let err = ca
            .issue(&CertSpec::device("(01)00884838035243"), v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gtin check digit is 3, expected 9"), "{err}");
        assert!(ca.issue(&CertSpec::device("bad id"), v).is_err());
        // names only for a Modbus/TCP Security server
        let mut d = DeviceSpec {
            id: "pump-1".into(),
            modbus_role: None,
            modbus_server: false,
            dns_names: vec!["pump-1.local".into()],
            ip_addrs: vec![],
        };
        let err = ca
            .issue(&CertSpec::Device(d.clone()), v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("modbus/tcp security server"), "{err}");
        d.modbus_server = true;
        d.dns_names = vec!["-bad".into()];
        assert!(ca.issue(&CertSpec::Device(d.clone()), v).is_err());
        d.dns_names = vec!["pump-1.local".into()];
        assert!(ca.issue(&CertSpec::Device(d), v).is_ok());
        assert!(ca
            .issue(&CertSpec::staff("e1", " ", StaffRole::Admin), v)
            .is_err());
        assert!(ca.issue(&CertSpec::gateway("gw/1"), v).is_err());
        let mut g = ServerSpec {
            id: "gw1".into(),
            dns_names: vec!["-bad".into()],
            ip_addrs: vec![],
        };
        assert!(ca.issue(&CertSpec::Gateway(g.clone()), v).is_err());
        g.dns_names = vec!["gw1.hospital.local".into()];
        assert!(ca.issue(&CertSpec::Gateway(g), v).is_ok());
        assert!(Validity::days(0).is_err());
        let long = Validity::days(7300).unwrap();
        let err = ca
            .issue(&CertSpec::device("p1"), long)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ends after the issuing ca"), "{err}");
    }

    #[test]
    fn issuing_only_flow_with_offline_root() {
        let (dir, _ca1) = ca();
        let root = RootCa::load(&dir.path().join("pki")).unwrap();
        let pki2 = dir.path().join("pki2");
        let csr = request_issuing_ca(&pki2, "gw2").unwrap();
        assert_eq!(mode(&pki2.join("issuing.key")), 0o600);
        let cert = root.sign_issuing_csr(&csr, 365).unwrap();
        let ca2 = install_issuing_ca(&pki2, &cert, root.cert_pem()).unwrap();
        assert!(!pki2.join("root.key").exists());
        let d = ca2
            .issue(&CertSpec::device("pump-2"), Validity::days(10).unwrap())
            .unwrap();
        assert_eq!(d.identity.id, "pump-2");
        // a certificate for another key is refused at install
        let pki3 = dir.path().join("pki3");
        request_issuing_ca(&pki3, "gw3").unwrap();
        let err = install_issuing_ca(&pki3, &cert, root.cert_pem())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("issuing.key") && err.contains("does not match"),
            "{err}"
        );
        // a CSR that does not name an issuing CA is refused
        let err = root
            .sign_issuing_csr("garbage", 365)
            .unwrap_err()
            .to_string();
        assert!(err.contains("refused"), "{err}");
    }
}
