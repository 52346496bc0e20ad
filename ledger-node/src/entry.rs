//! Entries: the byte format of one maintenance event, its component commitments and its
//! signature. `docs/ledger-format.md` is the normative description of these bytes.

use ed25519_dalek::{Signature, Signer, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hash::Hash;

/// Version byte of an entry that carries its own Ed25519 signature (docs/ledger-format.md §4).
pub const ENTRY_VERSION: u8 = 1;
/// Version byte of an entry without a signature of its own (docs/ledger-format.md §4.5): the
/// signed tree head whose root covers it authenticates it. Written only at command format 3.
pub const ENTRY_VERSION_2: u8 = 2;
/// Domain separator for an entry signature.
pub const ENTRY_SIGNING_DOMAIN: &[u8] = b"medledger/entry/v1\0";
/// Domain separator for a component commitment.
pub const COMMITMENT_DOMAIN: &[u8] = b"medledger/component/v1\0";
/// Longest string field accepted anywhere in an entry.
pub const MAX_FIELD: usize = 64 * 1024;
/// Most components in one entry.
pub const MAX_COMPONENTS: usize = 256;

/// What happened to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum EventKind {
    Calibration,
    Repair,
    PreventiveMaintenance,
    Inspection,
    Alarm,
    FirmwareUpdate,
    StatusChange,
    DeviceRegistered,
    DeviceDecommissioned,
    CertificateIssued,
    CertificateRevoked,
    /// A telemetry counter (operating hours, cycles) reached its maintenance interval: work to
    /// open, never a record of work done.
    MaintenanceDue,
    /// A signed review of an earlier record (21 CFR Part 11 §11.50 meaning "reviewed"), by
    /// someone other than its performer; its `signature` component names the reviewed entry.
    Review,
    /// A signed approval of an earlier record (meaning "approved"), by someone other than its
    /// performer; its `signature` component names the approved entry.
    Approval,
    /// The erasure of one component's value and salt from an earlier entry of the same device;
    /// its event id names the entry and the component ([`erasure_event_id`]).
    Erasure,
}

impl EventKind {
    /// Every kind, in the order of `docs/ledger-format.md`.
    pub const ALL: [EventKind; 15] = [
        EventKind::Calibration,
        EventKind::Repair,
        EventKind::PreventiveMaintenance,
        EventKind::Inspection,
        EventKind::Alarm,
        EventKind::FirmwareUpdate,
        EventKind::StatusChange,
        EventKind::DeviceRegistered,
        EventKind::DeviceDecommissioned,
        EventKind::CertificateIssued,
        EventKind::CertificateRevoked,
        EventKind::MaintenanceDue,
        EventKind::Review,
        EventKind::Approval,
        EventKind::Erasure,
    ];

    /// The kebab-case name written into entries.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Calibration => "calibration",
            EventKind::Repair => "repair",
            EventKind::PreventiveMaintenance => "preventive-maintenance",
            EventKind::Inspection => "inspection",
            EventKind::Alarm => "alarm",
            EventKind::FirmwareUpdate => "firmware-update",
            EventKind::StatusChange => "status-change",
            EventKind::DeviceRegistered => "device-registered",
            EventKind::DeviceDecommissioned => "device-decommissioned",
            EventKind::CertificateIssued => "certificate-issued",
            EventKind::CertificateRevoked => "certificate-revoked",
            EventKind::MaintenanceDue => "maintenance-due",
            EventKind::Review => "review",
            EventKind::Approval => "approval",
            EventKind::Erasure => "erasure",
        }
    }

    /// Parses a kind name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Name of the component in which the gateway records a staff signature's manifestation (21 CFR
/// Part 11 §11.50: printed name, role, meaning; the time is the entry's `recorded_at_ms`, the
/// identity its `author`). Reserved: an author cannot give a component of this name, and it
/// cannot be erased.
pub const SIGNATURE_COMPONENT: &str = "signature";

/// Prefix of the event id of an [`EventKind::Erasure`] entry; no other entry may use it.
pub const ERASURE_ID_PREFIX: &str = "erasure:";

/// The event id of the erasure of component `name` of entry `seq`: `erasure:<seq>:<name>`. The
/// target is in the signed entry bytes (not in a component a reader may not see), and erasing
/// the same component twice is a duplicate.
pub fn erasure_event_id(seq: u64, name: &str) -> String {
    format!("{ERASURE_ID_PREFIX}{seq}:{name}")
}

/// The entry and component an erasure's event id names; `None` if it is not one.
pub fn parse_erasure_event_id(id: &str) -> Option<(u64, &str)> {
    let rest = id.strip_prefix(ERASURE_ID_PREFIX)?;
    let (seq, name) = rest.split_once(':')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return None;
    }
    // Canonical decimal only, so that one target has one id.
    if seq.len() > 1 && seq.starts_with('0') {
        return None;
    }
    Some((seq.parse().ok()?, name))
}

/// Who may see a component's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DisclosureClass {
    /// Facts about the device itself: model, serial, location.
    Device,
    /// The technical content of the maintenance work.
    Maintenance,
    /// Anything that identifies or concerns a patient.
    Patient,
    /// Costs, contracts, invoices.
    Financial,
}

impl DisclosureClass {
    /// Every class.
    pub const ALL: [DisclosureClass; 4] = [
        DisclosureClass::Device,
        DisclosureClass::Maintenance,
        DisclosureClass::Patient,
        DisclosureClass::Financial,
    ];
    /// The name written into entries.
    pub fn as_str(self) -> &'static str {
        match self {
            DisclosureClass::Device => "device",
            DisclosureClass::Maintenance => "maintenance",
            DisclosureClass::Patient => "patient",
            DisclosureClass::Financial => "financial",
        }
    }
    /// Parses a class name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One field of an event as its author gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInput {
    pub name: String,
    pub class: DisclosureClass,
    /// The value as compact JSON text (a string value is `"\"text\""`).
    pub value: String,
}

/// An event as submitted: what its author says happened. Everything else in an entry (sequence
/// number, recorded time, node, author identity, salts) is fixed by the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInput {
    pub kind: EventKind,
    pub device_id: String,
    /// When the event happened, RFC 3339, as its author says; kept apart from the recorded time.
    pub occurred_at: Option<String>,
    pub components: Vec<ComponentInput>,
    /// Sequence number of an earlier entry that this one corrects.
    pub corrects: Option<u64>,
    /// A stable id (store-and-forward, imports): applying an event whose id is already in the ledger
    /// is a no-op that answers with the earlier entry.
    pub event_id: Option<String>,
}

/// Why an event is refused before it reaches the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEvent {
    #[error("device_id is empty")]
    EmptyDeviceId,
    #[error("field {field} is longer than {MAX_FIELD} bytes")]
    TooLong { field: &'static str },
    #[error("more than {MAX_COMPONENTS} components")]
    TooManyComponents,
    #[error("component {index} has an empty name")]
    EmptyComponentName { index: usize },
    #[error("component name {name:?} appears twice")]
    DuplicateComponent { name: String },
    #[error("component {name:?} value is not valid JSON: {reason}")]
    ComponentValue { name: String, reason: String },
    #[error("occurred_at {value:?} is not an RFC 3339 timestamp")]
    OccurredAt { value: String },
    #[error("event_id is empty")]
    EmptyEventId,
    #[error("field {field} contains a control character")]
    ControlCharacter { field: &'static str },
}

fn check_text(field: &'static str, s: &str) -> Result<(), InvalidEvent> {
    if s.len() > MAX_FIELD {
        return Err(InvalidEvent::TooLong { field });
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(InvalidEvent::ControlCharacter { field });
    }
    Ok(())
}

impl EventInput {
    /// Checks everything about an event that does not depend on the ledger's state, and normalises
    /// `occurred_at` to UTC RFC 3339 and component values to compact JSON.
    pub fn validate(mut self) -> Result<Self, InvalidEvent> {
        if self.device_id.trim().is_empty() {
            return Err(InvalidEvent::EmptyDeviceId);
        }
        check_text("device_id", &self.device_id)?;
        if let Some(t) = &self.occurred_at {
            let parsed =
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| InvalidEvent::OccurredAt { value: t.clone() })?;
            let utc = parsed.to_offset(time::UtcOffset::UTC);
            self.occurred_at = Some(
                utc.format(&time::format_description::well_known::Rfc3339)
                    .map_err(|_| InvalidEvent::OccurredAt { value: t.clone() })?,
            );
        }
        if let Some(id) = &self.event_id {
            if id.is_empty() {
                return Err(InvalidEvent::EmptyEventId);
            }
            check_text("event_id", id)?;
        }
        if self.components.len() > MAX_COMPONENTS {
            return Err(InvalidEvent::TooManyComponents);
        }
        for (index, c) in self.components.iter().enumerate() {
            if c.name.is_empty() {
                return Err(InvalidEvent::EmptyComponentName { index });
            }
            check_text("component name", &c.name)?;
            // At most MAX_COMPONENTS names: comparing with the earlier ones beats hashing them.
            if self.components[..index].iter().any(|e| e.name == c.name) {
                return Err(InvalidEvent::DuplicateComponent {
                    name: c.name.clone(),
                });
            }
        }
        for c in self.components.iter_mut() {
            let v: serde_json::Value =
                serde_json::from_str(&c.value).map_err(|e| InvalidEvent::ComponentValue {
                    name: c.name.clone(),
                    reason: e.to_string(),
                })?;
            c.value = v.to_string();
            if c.value.len() > MAX_FIELD {
                return Err(InvalidEvent::TooLong {
                    field: "component value",
                });
            }
        }
        Ok(self)
    }
}

/// A component as the entry carries it: name, class and commitment, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedComponent {
    pub name: String,
    pub class: DisclosureClass,
    pub commitment: Hash,
}

/// The value and salt of one component, kept beside the entry and dropped on erasure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opening {
    pub value: String,
    #[serde(with = "hex32")]
    pub salt: [u8; 32],
}

/// `SHA-256(domain || salt || u32 len || name || u32 len || class || u32 len || value)`.
pub fn commitment(salt: &[u8; 32], name: &str, class: DisclosureClass, value: &str) -> Hash {
    let mut h = Sha256::new();
    h.update(COMMITMENT_DOMAIN);
    h.update(salt);
    for part in [name.as_bytes(), class.as_str().as_bytes(), value.as_bytes()] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The signed part of an entry: everything but the sequence number and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryBody {
    /// When the ledger recorded the event, Unix milliseconds, fixed by the proposing node.
    pub recorded_at_ms: i64,
    pub node_id: u64,
    /// Identity of the author (certificate fingerprint or local operator).
    pub author: String,
    pub kind: EventKind,
    pub device_id: String,
    pub occurred_at: Option<String>,
    pub corrects: Option<u64>,
    pub event_id: Option<String>,
    pub components: Vec<CommittedComponent>,
}

/// A complete entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub body: EntryBody,
    /// The node's signature of the body: a version 1 entry. `None`: a version 2 entry, which
    /// only the signed tree heads covering it authenticate.
    pub signature: Option<[u8; 64]>,
}

/// The entry bytes of entry `seq` from its body bytes: version 1 with the signature after the
/// body, version 2 (no signature) when there is none.
pub fn entry_bytes(seq: u64, body: &[u8], signature: Option<&[u8; 64]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 73);
    out.push(match signature {
        Some(_) => ENTRY_VERSION,
        None => ENTRY_VERSION_2,
    });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(body);
    if let Some(s) = signature {
        out.extend_from_slice(s);
    }
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

impl EntryBody {
    /// The body bytes, as signed and as embedded in the entry.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.recorded_at_ms.to_be_bytes());
        out.extend_from_slice(&self.node_id.to_be_bytes());
        put_str(out, &self.author);
        put_str(out, self.kind.as_str());
        put_str(out, &self.device_id);
        put_opt_str(out, &self.occurred_at);
        match self.corrects {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&s.to_be_bytes());
            }
        }
        put_opt_str(out, &self.event_id);
        out.extend_from_slice(&(self.components.len() as u32).to_be_bytes());
        for c in &self.components {
            put_str(out, &c.name);
            put_str(out, c.class.as_str());
            out.extend_from_slice(&c.commitment);
        }
    }

    /// The message an entry signature covers: domain separator then the body bytes.
    pub fn signing_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(256);
        m.extend_from_slice(ENTRY_SIGNING_DOMAIN);
        self.encode(&mut m);
        m
    }

    /// Signs the body with the node's key.
    pub fn sign(&self, key: &impl Signer<Signature>) -> [u8; 64] {
        key.sign(&self.signing_message()).to_bytes()
    }
}

/// Why entry bytes do not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("entry bytes end early at offset {0}")]
    Truncated(usize),
    #[error(
        "unknown entry version {0}: this release ({release}) reads entry versions \
         {ENTRY_VERSION} and {ENTRY_VERSION_2}",
        release = crate::version::RELEASE
    )]
    Version(u8),
    #[error("field at offset {0} is not valid UTF-8")]
    Utf8(usize),
    #[error("unknown event kind {0:?}")]
    Kind(String),
    #[error("unknown disclosure class {0:?}")]
    Class(String),
    #[error("bad option tag {tag} at offset {offset}")]
    OptionTag { tag: u8, offset: usize },
    #[error("{0} trailing bytes after the entry")]
    Trailing(usize),
    #[error("field at offset {0} is longer than allowed")]
    TooLong(usize),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Truncated(self.pos))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated(self.pos))?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        let len = self.u32()? as usize;
        if len > MAX_FIELD {
            return Err(DecodeError::TooLong(at));
        }
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::Utf8(at))
    }
    fn tag(&mut self) -> Result<bool, DecodeError> {
        let offset = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::OptionTag { tag, offset }),
        }
    }
}

impl Entry {
    /// The entry bytes: version, sequence number, body, and (version 1) signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(256);
        self.body.encode(&mut body);
        entry_bytes(self.seq, &body, self.signature.as_ref())
    }

    /// The entry's version byte: 1 when it carries a signature, 2 when it does not.
    pub fn version(&self) -> u8 {
        match self.signature {
            Some(_) => ENTRY_VERSION,
            None => ENTRY_VERSION_2,
        }
    }

    /// Parses entry bytes; never panics on any input.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Ok(EntryRef::decode(buf)?.to_entry())
    }

    /// Checks the entry signature with the node's public key; `false` for a version 2 entry,
    /// which has none.
    pub fn verify_signature(&self, key: &VerifyingKey) -> bool {
        let Some(sig) = &self.signature else {
            return false;
        };
        let sig = Signature::from_bytes(sig);
        key.verify_strict(&self.body.signing_message(), &sig)
            .is_ok()
    }
}

/// A component as the entry bytes carry it, borrowed from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComponentRef<'a> {
    pub name: &'a str,
    pub class: DisclosureClass,
    pub commitment: Hash,
}

/// An entry decoded without copying its text fields: what a verifier of millions of entries
/// reads, where [`Entry::decode`]'s owned strings were a measurable share of the time. The one
/// parser of entry bytes; [`Entry::decode`] goes through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub seq: u64,
    pub recorded_at_ms: i64,
    pub node_id: u64,
    pub author: &'a str,
    pub kind: EventKind,
    pub device_id: &'a str,
    pub occurred_at: Option<&'a str>,
    pub corrects: Option<u64>,
    pub event_id: Option<&'a str>,
    pub components: Vec<ComponentRef<'a>>,
    /// The body bytes (the signed part without its domain separator).
    pub body: &'a [u8],
    /// `None` for a version 2 entry.
    pub signature: Option<[u8; 64]>,
}

impl<'a> EntryRef<'a> {
    /// Parses entry bytes; never panics on any input.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let v = r.u8()?;
        if v != ENTRY_VERSION && v != ENTRY_VERSION_2 {
            return Err(DecodeError::Version(v));
        }
        let seq = r.u64()?;
        let body_start = r.pos;
        let recorded_at_ms = r.u64()? as i64;
        let node_id = r.u64()?;
        let author = r.str()?;
        let kind_s = r.str()?;
        let kind = EventKind::parse(kind_s).ok_or_else(|| DecodeError::Kind(kind_s.into()))?;
        let device_id = r.str()?;
        let occurred_at = if r.tag()? { Some(r.str()?) } else { None };
        let corrects = if r.tag()? { Some(r.u64()?) } else { None };
        let event_id = if r.tag()? { Some(r.str()?) } else { None };
        let n = r.u32()? as usize;
        if n > MAX_COMPONENTS {
            return Err(DecodeError::TooLong(r.pos - 4));
        }
        let mut components = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str()?;
            let class_s = r.str()?;
            let class = DisclosureClass::parse(class_s)
                .ok_or_else(|| DecodeError::Class(class_s.into()))?;
            let commitment = r.array()?;
            components.push(ComponentRef {
                name,
                class,
                commitment,
            });
        }
        let body_end = r.pos;
        let signature = if v == ENTRY_VERSION {
            Some(r.array()?)
        } else {
            None
        };
        if r.pos != buf.len() {
            return Err(DecodeError::Trailing(buf.len() - r.pos));
        }
        Ok(EntryRef {
            seq,
            recorded_at_ms,
            node_id,
            author,
            kind,
            device_id,
            occurred_at,
            corrects,
            event_id,
            components,
            // In range: both ends are positions the reader reached within `buf`.
            body: buf.get(body_start..body_end).unwrap_or_default(),
            signature,
        })
    }

    /// An owned copy.
    pub fn to_entry(&self) -> Entry {
        Entry {
            seq: self.seq,
            body: EntryBody {
                recorded_at_ms: self.recorded_at_ms,
                node_id: self.node_id,
                author: self.author.to_owned(),
                kind: self.kind,
                device_id: self.device_id.to_owned(),
                occurred_at: self.occurred_at.map(str::to_owned),
                corrects: self.corrects,
                event_id: self.event_id.map(str::to_owned),
                components: self
                    .components
                    .iter()
                    .map(|c| CommittedComponent {
                        name: c.name.to_owned(),
                        class: c.class,
                        commitment: c.commitment,
                    })
                    .collect(),
            },
            signature: self.signature,
        }
    }
}

/// Serde helper: a 32-byte array as 64 hex digits.
pub mod hex32 {
    use serde::{Deserializer, Serializer};
    /// Serialises as hex in text formats (JSON), as raw bytes in binary ones (MessagePack).
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        super::fixed_bytes::serialize(v, s)
    }
    /// Parses 64 lowercase hex digits, or (binary formats) 32 raw bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        super::fixed_bytes::deserialize(d)
    }
}

/// Fixed-size byte strings (hashes, keys, signatures): lowercase hex in human-readable formats
/// (JSON exports, receipts, the API), raw bytes in binary ones (the Raft log and Raft RPC in
/// MessagePack), where hex doubled the size and its encoding and decoding cost a measurable
/// share of the CPU. Both forms are accepted when reading a binary format, so Raft log entries
/// written by earlier versions (hex strings) still decode.
pub mod fixed_bytes {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }

    struct Fixed<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for Fixed<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "{} lowercase hex digits or {N} bytes", 2 * N)
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<[u8; N], E> {
            if v.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(E::custom("expected lowercase hex"));
            }
            let mut out = [0u8; N];
            hex::decode_to_slice(v.as_bytes(), &mut out)
                .map_err(|_| E::custom(format!("expected {} hex digits", 2 * N)))?;
            Ok(out)
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; N], E> {
            v.try_into()
                .map_err(|_| E::custom(format!("expected {N} bytes, got {}", v.len())))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(Fixed::<N>)
        } else {
            d.deserialize_any(Fixed::<N>)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn sample() -> Entry {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let salt = [9u8; 32];
        let body = EntryBody {
            recorded_at_ms: 1_700_000_000_000,
            node_id: 1,
            author: "sha256:ab".into(),
            kind: EventKind::Calibration,
            device_id: "(01)00884838035243(21)SN1".into(),
            occurred_at: Some("2026-03-01T10:00:00Z".into()),
            corrects: Some(3),
            event_id: None,
            components: vec![CommittedComponent {
                name: "result".into(),
                class: DisclosureClass::Maintenance,
                commitment: commitment(&salt, "result", DisclosureClass::Maintenance, "\"pass\""),
            }],
        };
        let signature = Some(body.sign(&key));
        Entry {
            seq: 42,
            body,
            signature,
        }
    }

    #[test]
    fn version_2_has_no_signature_and_versions_do_not_mix() {
        let mut e = sample();
        let v1 = e.encode();
        e.signature = None;
        let v2 = e.encode();
        assert_eq!((v1[0], v2[0]), (1, 2));
        assert_eq!(v2.len() + 64, v1.len());
        assert_eq!(&v1[..v1.len() - 64][1..], &v2[1..]);
        assert_eq!(Entry::decode(&v2).expect("v2 decodes"), e);
        assert_eq!(e.version(), 2);
        assert!(!e.verify_signature(&SigningKey::from_bytes(&[7u8; 32]).verifying_key()));
        // The version byte changed, the rest kept: never another valid entry.
        let mut b = v1.clone();
        b[0] = 2;
        assert_eq!(Entry::decode(&b), Err(DecodeError::Trailing(64)));
        let mut b = v2.clone();
        b[0] = 1;
        assert!(matches!(Entry::decode(&b), Err(DecodeError::Truncated(_))));
        for n in 0..v2.len() {
            assert!(Entry::decode(&v2[..n]).is_err(), "prefix {n}");
        }
        let mut b = v2;
        b[0] = 3;
        let err = Entry::decode(&b).expect_err("version 3").to_string();
        assert!(err.contains("unknown entry version 3"), "{err}");
    }

    #[test]
    fn round_trip_and_signature() {
        let e = sample();
        let bytes = e.encode();
        let d = Entry::decode(&bytes).expect("decodes");
        assert_eq!(d, e);
        let key = SigningKey::from_bytes(&[7u8; 32]);
        assert!(d.verify_signature(&key.verifying_key()));
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(!d.verify_signature(&other.verifying_key()));
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Entry::decode(&longer), Err(DecodeError::Trailing(1)));
        let mut x = 1u32;
        for _ in 0..2000 {
            let mut b = bytes.clone();
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let i = (x as usize) % b.len();
            b[i] = (x >> 8) as u8;
            let _ = Entry::decode(&b);
        }
    }

    #[test]
    fn validation_normalises_and_refuses() {
        let ok = EventInput {
            kind: EventKind::Repair,
            device_id: "pump-1".into(),
            occurred_at: Some("2026-03-01T12:00:00+02:00".into()),
            components: vec![ComponentInput {
                name: "cost".into(),
                class: DisclosureClass::Financial,
                value: "{ \"eur\" : 120 }".into(),
            }],
            corrects: None,
            event_id: None,
        }
        .validate()
        .expect("valid");
        assert_eq!(ok.occurred_at.as_deref(), Some("2026-03-01T10:00:00Z"));
        assert_eq!(ok.components[0].value, "{\"eur\":120}");
        let mut bad = ok.clone();
        bad.occurred_at = Some("last march".into());
        assert!(matches!(
            bad.validate(),
            Err(InvalidEvent::OccurredAt { .. })
        ));
        let mut dup = ok.clone();
        dup.components.push(dup.components[0].clone());
        assert!(matches!(
            dup.validate(),
            Err(InvalidEvent::DuplicateComponent { .. })
        ));
        let mut empty = ok;
        empty.device_id = " ".into();
        assert_eq!(empty.validate(), Err(InvalidEvent::EmptyDeviceId));
    }
}
