//! Identities carried in MedLedger certificates, and the parser the gateway uses for
//! authorization after rustls has verified a peer's chain.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::error::{Error, Result};

/// OID of the Modbus/TCP Security role extension (value: ASN.1 UTF8String).
pub const MODBUS_ROLE_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 50316, 802, 1];
/// Prefix of the SAN URI that names a MedLedger identity: `urn:medledger:<profile>:<id>`.
pub const URI_PREFIX: &str = "urn:medledger:";

/// Which certificate profile an identity was issued under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A medical device (MQTT publisher, Modbus/TCP Security client or server).
    Device,
    /// A person (clinical engineering, auditor, ...).
    Staff,
    /// A MedLedger gateway node (Raft peer, MQTT subscriber, HTTPS server).
    Gateway,
    /// A TLS server that is not a gateway, e.g. the MQTT broker.
    Service,
}

impl Profile {
    /// The lowercase name used in SAN URIs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Device => "device",
            Profile::Staff => "staff",
            Profile::Gateway => "gateway",
            Profile::Service => "service",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "device" => Ok(Profile::Device),
            "staff" => Ok(Profile::Staff),
            "gateway" => Ok(Profile::Gateway),
            "service" => Ok(Profile::Service),
            other => Err(Error::input(
                "profile",
                format!("{other:?} is not one of device, staff, gateway, service"),
            )),
        }
    }
}

/// A staff member's role, carried in the subject OU of a staff certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaffRole {
    /// Clinical engineering / biomedical technician: records maintenance.
    Biomed,
    /// Supervisor: approves, corrects.
    Supervisor,
    /// Auditor / surveyor: read-only with disclosure limits.
    Auditor,
    /// Insurer: read-only, financial view.
    Insurer,
    /// Site administrator.
    Admin,
}

impl StaffRole {
    /// All roles, for help texts.
    pub const ALL: [StaffRole; 5] = [
        StaffRole::Biomed,
        StaffRole::Supervisor,
        StaffRole::Auditor,
        StaffRole::Insurer,
        StaffRole::Admin,
    ];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            StaffRole::Biomed => "biomed",
            StaffRole::Supervisor => "supervisor",
            StaffRole::Auditor => "auditor",
            StaffRole::Insurer => "insurer",
            StaffRole::Admin => "admin",
        }
    }
}

impl fmt::Display for StaffRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StaffRole {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        StaffRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::input(
                    "staff role",
                    format!("{s:?} is not one of biomed, supervisor, auditor, insurer, admin"),
                )
            })
    }
}

/// Who a verified peer certificate names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// The profile the certificate was issued under.
    pub profile: Profile,
    /// Device id / UDI, staff id, gateway node id or service name (from the SAN URI).
    pub id: String,
    /// Staff role (subject OU) for staff; the Modbus/TCP Security role for devices that have one.
    pub role: Option<String>,
    /// The person's name (X.520 `name` attribute) for staff certificates.
    pub name: Option<String>,
    /// SHA-256 of the certificate DER, lowercase hex: the author identity in ledger entries.
    pub fingerprint: String,
    /// Serial number, lowercase hex without leading zero bytes: the key for revocation.
    pub serial: String,
    /// The certificate allows TLS server use (EKU serverAuth): gateways, services, Modbus
    /// servers.
    pub server_auth: bool,
    /// DNS names in the subject alternative name (gateways, services, Modbus/TCP Security
    /// servers), so a renewal keeps them.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// IP addresses in the subject alternative name.
    #[serde(default)]
    pub ip_addrs: Vec<std::net::IpAddr>,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

impl Identity {
    /// Refuse the identity unless its profile is one of `allowed`.
    ///
    /// This is the authorization check a listener makes after the TLS handshake: e.g. the Raft
    /// listener calls `require(&[Profile::Gateway])`, so a valid staff certificate is refused.
    pub fn require(&self, allowed: &[Profile]) -> Result<()> {
        if allowed.contains(&self.profile) {
            return Ok(());
        }
        Err(Error::WrongProfile {
            expected: allowed
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
            found: self.profile.to_string(),
            id: self.id.clone(),
        })
    }

    /// The staff role, if this is a staff identity with a known role.
    pub fn staff_role(&self) -> Option<StaffRole> {
        if self.profile != Profile::Staff {
            return None;
        }
        self.role.as_deref().and_then(|r| r.parse().ok())
    }
}

/// SHA-256 of `der`, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Serial number bytes as lowercase hex without leading zero bytes (at least one byte).
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[start.min(raw.len())..])
}

/// Characters that stay literal in our URN's id part; everything else is percent-encoded.
fn uri_literal(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.'
                | '_'
                | '~'
                | '!'
                | '$'
                | '&'
                | '\''
                | '('
                | ')'
                | '*'
                | '+'
                | ','
                | ';'
                | '='
                | ':'
                | '@'
                | '/'
        )
}

/// The SAN URI for a profile and id: `urn:medledger:<profile>:<id>` with the id percent-encoded
/// where it holds characters not allowed in a URI (e.g. the space and `%` of HIBCC).
pub fn identity_uri(profile: Profile, id: &str) -> String {
    let mut out = format!("{URI_PREFIX}{}:", profile.as_str());
    for b in id.bytes() {
        let c = char::from(b);
        if b.is_ascii() && uri_literal(c) {
            out.push(c);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parse `urn:medledger:<profile>:<id>`.
pub fn parse_identity_uri(uri: &str) -> Option<(Profile, String)> {
    let rest = uri.strip_prefix(URI_PREFIX)?;
    let (profile, id) = rest.split_once(':')?;
    let profile = profile.parse().ok()?;
    let id = percent_decode(id)?;
    if id.is_empty() {
        return None;
    }
    Some((profile, id))
}

fn not_identity(reason: impl Into<String>) -> Error {
    Error::NotAnIdentity {
        reason: reason.into(),
    }
}

/// Decode a DER UTF8String (tag 12) with short or one/two-byte long length.
pub(crate) fn decode_utf8string(der: &[u8]) -> Option<String> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x0c {
        return None;
    }
    let (&l0, rest) = rest.split_first()?;
    let (len, body) = match l0 {
        0..=0x7f => (usize::from(l0), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    if body.len() != len {
        return None;
    }
    String::from_utf8(body.to_vec()).ok()
}

/// Encode a DER UTF8String.
pub(crate) fn encode_utf8string(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = vec![0x0c];
    if b.len() < 0x80 {
        // guarded: fits in 7 bits
        out.push(b.len() as u8);
    } else if b.len() <= 0xff {
        out.push(0x81);
        out.push(b.len() as u8);
    } else {
        out.push(0x82);
        out.push((b.len() >> 8) as u8);
        out.push((b.len() & 0xff) as u8);
    }
    out.extend_from_slice(b);
    out
}

fn modbus_role(cert: &X509Certificate<'_>) -> Result<Option<String>> {
    for ext in cert.extensions() {
        let Some(arcs) = ext.oid.iter() else { continue };
        if arcs.eq(MODBUS_ROLE_OID.iter().copied()) {
            return decode_utf8string(ext.value)
                .map(Some)
                .ok_or_else(|| not_identity("modbus role extension is not a utf8string"));
        }
    }
    Ok(None)
}

/// The Modbus/TCP Security role (OID 1.3.6.1.4.1.50316.802.1) a certificate (DER) carries, if
/// any: what a Modbus/TCP Security server authorises a client by.
pub fn modbus_role_of(der: &[u8]) -> Result<Option<String>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| not_identity(format!("certificate does not parse: {e}")))?;
    modbus_role(&cert)
}

/// Parse a peer certificate (DER) into its MedLedger identity.
///
/// This does NOT verify the chain, validity period or revocation: call it on a certificate
/// rustls has already verified (e.g. `ServerConnection::peer_certificates()[0]`).
pub fn parse_identity(der: &[u8]) -> Result<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| not_identity(format!("certificate does not parse: {e}")))?;
    let mut found: Option<(Profile, String)> = None;
    let mut dns_names = Vec::new();
    let mut ip_addrs = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push((*d).to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ip_addrs.push(std::net::IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ip_addrs.push(std::net::IpAddr::from(a));
                    }
                }
                _ => {}
            }
            if let GeneralName::URI(uri) = name {
                if uri.starts_with(URI_PREFIX) {
                    let parsed = parse_identity_uri(uri)
                        .ok_or_else(|| not_identity(format!("malformed identity uri {uri:?}")))?;
                    if found.is_some() {
                        return Err(not_identity("more than one medledger identity uri"));
                    }
                    found = Some(parsed);
                }
            }
        }
    }
    let (profile, id) =
        found.ok_or_else(|| not_identity("no urn:medledger: uri in subject alternative name"))?;
    if cert.is_ca() {
        return Err(not_identity("certificate is a ca"));
    }
    let subject = cert.subject();
    let ou = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    let name = subject
        .iter_by_oid(&x509_parser::oid_registry::OID_X509_NAME)
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    let role = match profile {
        Profile::Staff => {
            let role = ou.ok_or_else(|| not_identity("staff certificate has no role (OU)"))?;
            role.parse::<StaffRole>().map_err(|_| {
                not_identity(format!("staff certificate has unknown role {role:?}"))
            })?;
            Some(role)
        }
        Profile::Device => modbus_role(&cert)?,
        _ => None,
    };
    let ts = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t).map_err(|e| not_identity(format!("validity: {e}")))
    };
    Ok(Identity {
        profile,
        id,
        role,
        name: if profile == Profile::Staff {
            name
        } else {
            None
        },
        fingerprint: fingerprint(der),
        server_auth: cert
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|e| e.value.server_auth),
        serial: serial_hex(cert.raw_serial()),
        dns_names,
        ip_addrs,
        not_before: ts(cert.validity().not_before.timestamp())?,
        not_after: ts(cert.validity().not_after.timestamp())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip() {
        for id in [
            "pump-0042",
            "(01)00884838035249(21)SN123",
            "+A123 BJC%5/$$G",
            "=<E0001V00",
            "é",
        ] {
            for p in [Profile::Device, Profile::Staff, Profile::Gateway] {
                let uri = identity_uri(p, id);
                assert!(uri.is_ascii() && !uri.contains(' '), "{uri}");
                assert_eq!(parse_identity_uri(&uri), Some((p, id.to_string())));
            }
        }
        assert_eq!(
            identity_uri(Profile::Device, "a b%"),
            "urn:medledger:device:a%20b%25"
        );
        assert_eq!(parse_identity_uri("urn:medledger:robot:x"), None);
        assert_eq!(parse_identity_uri("urn:medledger:device:"), None);
        assert_eq!(parse_identity_uri("urn:medledger:device:%zz"), None);
    }

    #[test]
    fn utf8string_round_trip() {
        for s in ["", "operator", &"r".repeat(200), &"x".repeat(300)] {
            assert_eq!(decode_utf8string(&encode_utf8string(s)).as_deref(), Some(s));
        }
        assert_eq!(encode_utf8string("ab"), vec![0x0c, 2, b'a', b'b']);
        assert_eq!(decode_utf8string(&[0x13, 1, b'a']), None);
        assert_eq!(decode_utf8string(&[0x0c, 5, b'a']), None);
    }

    #[test]
    fn serial_hex_strips_leading_zeros() {
        assert_eq!(serial_hex(&[0, 0x80, 1]), "8001");
        assert_eq!(serial_hex(&[0]), "00");
        assert_eq!(serial_hex(&[0x12]), "12");
    }

    #[test]
    fn roles_parse() {
        for r in StaffRole::ALL {
            assert_eq!(r.as_str().parse::<StaffRole>().ok(), Some(r));
        }
        assert!("nurse".parse::<StaffRole>().is_err());
        assert_eq!("gateway".parse::<Profile>().ok(), Some(Profile::Gateway));
    }
}
