//! Exports, receipts and their offline verification.
//!
//! An export is JSON Lines: a header (format, size, node keys), one line per entry (sequence
//! number, entry bytes in hex, the openings of its components, `null` where withheld, or
//! `{"erased_by": seq}` where the erasure entry `seq` erased them),
//! and a last line with the signed tree head over exactly those entries. A receipt is one JSON
//! document: the node keys, one entry line, its inclusion proof and the signed tree head.
//! `docs/ledger-format.md` is the normative description.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};

use crate::entry::{
    commitment, parse_erasure_event_id, DisclosureClass, Entry, EntryRef, EventKind, Opening,
    ENTRY_SIGNING_DOMAIN,
};
use crate::error::LedgerError;
use crate::hash::{leaf_hash, Hash};
use crate::merkle::{verify_consistency, verify_inclusion, Frontier};
use crate::sigcheck::StrictKey;
use crate::sth::SignedTreeHead;
use crate::store::{OpeningState, Store};

/// Format name in an export header.
pub const EXPORT_FORMAT: &str = "medledger-export/1";
/// Format name in a receipt.
pub const RECEIPT_FORMAT: &str = "medledger-receipt/1";

/// A node's public key as exports and receipts carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeKey {
    pub node_id: u64,
    #[serde(with = "crate::entry::hex32")]
    pub public_key: [u8; 32],
}

/// First line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    pub format: String,
    /// Number of entry lines that follow.
    pub size: u64,
    pub node_keys: Vec<NodeKey>,
    /// The disclosure classes whose values the export carries (others are withheld).
    pub disclosed_classes: Vec<DisclosureClass>,
}

/// One entry as exports and receipts carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryRecord<'a> {
    pub seq: u64,
    /// Entry bytes, lowercase hex.
    #[serde(borrow)]
    pub entry: Cow<'a, str>,
    /// One per component: value and salt, `null` where withheld, or the erasure marker.
    pub openings: Vec<Option<ExportOpening>>,
}

/// A component's opening in an export or receipt line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExportOpening {
    /// Value and salt.
    Open(Opening),
    /// The value and salt were erased by the erasure entry `erased_by` (docs/ledger-format.md
    /// §10), which names this entry and component in its event id.
    Erased(ErasedMarker),
}

/// `{"erased_by": seq}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasedMarker {
    pub erased_by: u64,
}

impl ExportOpening {
    /// The opening, if the value is there.
    pub fn open(&self) -> Option<&Opening> {
        match self {
            ExportOpening::Open(o) => Some(o),
            ExportOpening::Erased(_) => None,
        }
    }
}

/// Last line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportTail {
    pub tree_head: SignedTreeHead,
    /// The voter set of the cluster when the co-signed checkpoint the export is cut at was
    /// recorded (ascending node ids, §9.6): a verifier requires a majority of them to have
    /// signed `tree_head`. Absent when there are no co-signatures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voters: Vec<u64>,
    /// The co-signatures of the checkpoint the export is cut at: tree heads over the same size
    /// and root signed by other gateways that applied it (docs/ledger-format.md §9.6). Absent
    /// when there are none (every export before this field existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cosignatures: Vec<SignedTreeHead>,
}

/// A gateway's ledger key endorsement as a receipt carries it: the certificate of the key and
/// the issuing CA's certificate that signed it, both PEM (docs/ledger-format.md §9.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEndorsement {
    pub node_id: u64,
    pub certificate: String,
    pub issuer_certificate: String,
}

/// A receipt for one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt<'a> {
    pub format: String,
    pub node_keys: Vec<NodeKey>,
    #[serde(borrow)]
    pub entry: EntryRecord<'a>,
    pub inclusion_proof: Vec<HexHash>,
    pub tree_head: SignedTreeHead,
    /// When the receipt was made for a reader who had seen an older head: the RFC 9162
    /// consistency proof from that head's size to `tree_head.size`. Absent in receipts made
    /// without one (all receipts before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyProof>,
    /// The voter set of the co-signed checkpoint `tree_head` is, as in an export's tree head
    /// line (§9.6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub voters: Vec<u64>,
    /// Co-signatures of `tree_head` by other gateways, when it is a co-signed checkpoint (§9.6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cosignatures: Vec<SignedTreeHead>,
    /// The endorsements of the document's node keys by the site, so that the receipt can be
    /// checked against the site root offline (`verify --site-root`, §9.5). Filled in by the
    /// gateway, which knows where the ledger records them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endorsements: Vec<KeyEndorsement>,
}

/// A consistency proof carried by a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// The size of the older tree (`0 < from_size <= tree_head.size`).
    pub from_size: u64,
    /// RFC 9162 §2.1.4.1 proof from `from_size` to `tree_head.size`.
    pub proof: Vec<HexHash>,
}

/// A hash as 64 hex digits in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HexHash(#[serde(with = "crate::entry::hex32")] pub Hash);

/// Which classes' values to include; `None` means all.
pub type Disclosure = Option<BTreeSet<DisclosureClass>>;

fn node_keys(store: &Store) -> Result<Vec<NodeKey>, LedgerError> {
    Ok(store
        .node_keys()?
        .into_iter()
        .map(|(node_id, public_key)| NodeKey {
            node_id,
            public_key,
        })
        .collect())
}

fn record(
    store: &Store,
    seq: u64,
    disclose: &Disclosure,
) -> Result<EntryRecord<'static>, LedgerError> {
    let bytes = store.entry_bytes(seq)?;
    let entry = Entry::decode(&bytes).map_err(|e| LedgerError::corrupt(store.path(), e))?;
    let states = store.opening_states(seq)?;
    let openings = entry
        .body
        .components
        .iter()
        .enumerate()
        .map(|(i, c)| match states.get(i) {
            // An erased value is marked as erased whatever the reader's classes: the erasure
            // entry is in the ledger for everyone to see anyway.
            Some(OpeningState::Erased { by: Some(by) }) => {
                Some(ExportOpening::Erased(ErasedMarker { erased_by: *by }))
            }
            Some(OpeningState::Open(o))
                if disclose.as_ref().is_none_or(|d| d.contains(&c.class)) =>
            {
                Some(ExportOpening::Open(o.clone()))
            }
            _ => None,
        })
        .collect();
    Ok(EntryRecord {
        seq,
        entry: Cow::Owned(hex::encode(bytes)),
        openings,
    })
}

fn io_err(e: std::io::Error) -> LedgerError {
    LedgerError::Io {
        path: "export output".into(),
        source: e,
    }
}

/// Writes an export of the first `head.size` entries, checked against `head`.
pub fn write_export(
    store: &Store,
    head: &SignedTreeHead,
    disclose: &Disclosure,
    out: &mut dyn Write,
) -> Result<(), LedgerError> {
    let header = ExportHeader {
        format: EXPORT_FORMAT.into(),
        size: head.size,
        node_keys: node_keys(store)?,
        disclosed_classes: match disclose {
            None => DisclosureClass::ALL.to_vec(),
            Some(c) => c.iter().copied().collect(),
        },
    };
    let line = |out: &mut dyn Write, v: &dyn erased::Json| -> Result<(), LedgerError> {
        out.write_all(v.json().as_bytes()).map_err(io_err)?;
        out.write_all(b"\n").map_err(io_err)
    };
    line(out, &header)?;
    for seq in 0..head.size {
        line(out, &record(store, seq, disclose)?)?;
    }
    let (voters, cosignatures) = cosigned_parts(store, head)?;
    line(
        out,
        &ExportTail {
            tree_head: head.clone(),
            voters,
            cosignatures,
        },
    )?;
    out.flush().map_err(io_err)
}

/// The voter set and co-signatures the ledger recorded for `head`, when it is the latest
/// co-signed checkpoint; none otherwise.
fn cosigned_parts(
    store: &Store,
    head: &SignedTreeHead,
) -> Result<(Vec<u64>, Vec<SignedTreeHead>), LedgerError> {
    Ok(match store.cosigned_checkpoint()? {
        Some(c) if &c.tree_head == head => (c.voters, c.cosignatures),
        _ => (Vec::new(), Vec::new()),
    })
}

/// The recorded head to cut an export, or a receipt of the first `min_size` entries, at
/// (docs/ledger-format.md §9.6): the latest co-signed checkpoint when it holds them, else the
/// latest checkpoint when it does. `None`: no recorded head holds them, and the caller signs
/// its own over what it applied. Exports and receipts cut so carry the checkpoint's voter set
/// and co-signatures ([`write_export`], [`make_receipt`]).
pub fn recorded_cut(store: &Store, min_size: u64) -> Result<Option<SignedTreeHead>, LedgerError> {
    if let Some(c) = store.cosigned_checkpoint()? {
        if c.tree_head.size >= min_size && c.tree_head.size <= store.size() {
            return Ok(Some(c.tree_head));
        }
    }
    Ok(store
        .latest_checkpoint()?
        .filter(|c| c.size >= min_size && c.size <= store.size()))
}

/// Builds a receipt for entry `seq` against `head`.
pub fn make_receipt(
    store: &Store,
    seq: u64,
    head: &SignedTreeHead,
    disclose: &Disclosure,
) -> Result<Receipt<'static>, LedgerError> {
    make_receipt_since(store, seq, head, disclose, None)
}

/// Builds a receipt for entry `seq` against `head` that also carries the consistency proof from
/// a tree of `since_size` entries (a head its reader saw before) to `head`, when given.
pub fn make_receipt_since(
    store: &Store,
    seq: u64,
    head: &SignedTreeHead,
    disclose: &Disclosure,
    since_size: Option<u64>,
) -> Result<Receipt<'static>, LedgerError> {
    if seq >= head.size {
        return Err(LedgerError::NoSuchEntry {
            seq,
            size: head.size,
        });
    }
    let proof = store.inclusion_proof(seq, head.size)?;
    let consistency = match since_size {
        None => None,
        Some(old) if old == 0 || old > head.size => {
            return Err(LedgerError::Refused(format!(
                "no consistency proof from size {old} to the tree head's size {}",
                head.size
            )))
        }
        Some(old) => Some(ConsistencyProof {
            from_size: old,
            proof: store
                .consistency_proof(old, head.size)?
                .into_iter()
                .map(HexHash)
                .collect(),
        }),
    };
    let (voters, cosignatures) = cosigned_parts(store, head)?;
    Ok(Receipt {
        format: RECEIPT_FORMAT.into(),
        node_keys: node_keys(store)?,
        entry: record(store, seq, disclose)?,
        inclusion_proof: proof.into_iter().map(HexHash).collect(),
        tree_head: head.clone(),
        consistency,
        voters,
        cosignatures,
        endorsements: Vec::new(),
    })
}

mod erased {
    /// Object-safe JSON serialisation for the line writer.
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            // Serialising these plain structs to a String cannot fail: no maps with non-string
            // keys, no failing Serialize impls.
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// Whose keys a verified document was checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trust {
    /// Only the keys the document carries: it is consistent in itself and signed by those keys,
    /// which says nothing about whose keys they are.
    DocumentKeys,
    /// Every key of the document is one of the keys pinned out of band (`trusted_keys`).
    TrustedKeys,
}

/// How a verified document relates to the known head it was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHeadCheck {
    /// The head seen before.
    pub known: SignedTreeHead,
    /// How many entries the document's head has beyond it (0: the same tree).
    pub newer_by: u64,
}

/// What was verified.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// `export` or `receipt`.
    pub document: &'static str,
    pub tree_head: SignedTreeHead,
    pub node_keys: Vec<NodeKey>,
    /// Entries whose hash, signature and commitments were checked.
    pub entries: u64,
    /// Of those, the entries of version 1, each with its own signature checked; the others are
    /// of version 2 and rest on the tree head's signature(s) alone (docs/ledger-format.md §4.5).
    pub signed_entries: u64,
    /// Components whose values were present and matched their commitments.
    pub disclosed_components: u64,
    /// Components present only as a commitment.
    pub withheld_components: u64,
    /// Components marked as erased (in an export, each checked against its erasure entry).
    pub erased_components: u64,
    /// For a receipt, the entry it proves.
    pub entry: Option<(Entry, Vec<Option<ExportOpening>>)>,
    /// Whose keys the signatures were checked against.
    pub trust: Trust,
    /// The known head the document was found consistent with, when one was given.
    pub known_head: Option<KnownHeadCheck>,
    /// The nodes whose signatures on the tree head verified: its signer, then its co-signers.
    pub head_signers: Vec<u64>,
    /// The voter set the document's co-signed head carries (§9.6), empty when it has none; a
    /// majority of it signed the head.
    pub voters: Vec<u64>,
}

/// What kind of problem a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The document does not verify in itself.
    Invalid,
    /// The document verifies, but its head is older than the known head.
    Rollback,
    /// The document verifies, but its tree is not an extension of the known head's tree.
    Fork,
}

/// Why a document does not verify: the first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", match (.line, .seq) {
    (_, Some(s)) => format!("entry {s}: "),
    (Some(l), None) => format!("line {l}: "),
    _ => String::new(),
})]
pub struct VerifyFailure {
    pub kind: FailureKind,
    /// Sequence number of the first bad entry, where the problem is in an entry.
    pub seq: Option<u64>,
    /// Line of the file, where known.
    pub line: Option<u64>,
    pub reason: String,
}

fn fail(seq: Option<u64>, line: Option<u64>, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        kind: FailureKind::Invalid,
        seq,
        line,
        reason: reason.into(),
    }
}

/// Options of verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// When not empty, the document's node keys must be exactly these (pinned out of band);
    /// otherwise the keys the document carries are used and reported.
    pub trusted_keys: Vec<NodeKey>,
    /// A signed tree head seen before: the document must be consistent with it (the same tree
    /// or an extension of it); an older head is refused as a rollback, a different tree as a
    /// fork.
    pub known_head: Option<SignedTreeHead>,
    /// Threads that check entries; 0 means one per core.
    pub threads: usize,
    /// When not 0: the tree head must carry valid signatures (its own and co-signatures, §9.6)
    /// of at least this many distinct nodes whose keys the verifier trusts, so that a history
    /// one gateway signed alone is refused. A document whose head carries a voter set needs a
    /// majority of those voters in any case; this can only raise it.
    pub quorum: usize,
    /// The voter set and co-signatures `known_head` came with (an earlier export or receipt cut
    /// at a co-signed checkpoint, [`read_known`]): they are checked like the document's own.
    pub known_voters: Vec<u64>,
    pub known_cosignatures: Vec<SignedTreeHead>,
}

struct Keys {
    map: HashMap<u64, StrictKey>,
    trust: Trust,
}

impl Keys {
    fn new(keys: &[NodeKey], opts: &VerifyOptions) -> Result<Self, VerifyFailure> {
        let mut map = HashMap::new();
        for k in keys {
            // Every key is checked, used or not: a document carrying a key that no conforming
            // verifier accepts is malformed whatever it signs.
            let key = StrictKey::new(&k.public_key)
                .map_err(|p| fail(None, None, format!("public key of node {} {p}", k.node_id)))?;
            if map.insert(k.node_id, key).is_some() {
                return Err(fail(None, None, format!("node {} has two keys", k.node_id)));
            }
            if !opts.trusted_keys.is_empty() && !opts.trusted_keys.contains(k) {
                return Err(fail(
                    None,
                    None,
                    format!("key of node {} is not one of the trusted keys", k.node_id),
                ));
            }
        }
        let trust = if opts.trusted_keys.is_empty() {
            Trust::DocumentKeys
        } else {
            Trust::TrustedKeys
        };
        Ok(Keys { map, trust })
    }

    fn head_key(&self, head: &SignedTreeHead, what: &str) -> Result<&StrictKey, VerifyFailure> {
        self.map.get(&head.node_id).ok_or_else(|| {
            fail(
                None,
                None,
                format!(
                    "{what} signed by node {}, whose key is not in the document",
                    head.node_id
                ),
            )
        })
    }

    /// Checks the co-signatures of `head` (already checked itself) and the quorum: a majority
    /// of `voters` when the head carries a voter set, and at least `quorum` signers (of those
    /// voters, when there are any). Returns the nodes that signed it, its own signer first.
    fn check_cosignatures(
        &self,
        head: &SignedTreeHead,
        cosignatures: &[SignedTreeHead],
        voters: &[u64],
        quorum: usize,
        what_head: &str,
    ) -> Result<Vec<u64>, VerifyFailure> {
        let mut signers = vec![head.node_id];
        for c in cosignatures {
            let what = format!("co-signature of node {}", c.node_id);
            if c.size != head.size || c.root != head.root {
                return Err(fail(
                    None,
                    None,
                    format!(
                        "{what} is over another tree ({} entries, root {}) than the {what_head}'s",
                        c.size,
                        hex::encode(c.root)
                    ),
                ));
            }
            if signers.contains(&c.node_id) {
                return Err(fail(
                    None,
                    None,
                    format!("node {} signs the {what_head} twice", c.node_id),
                ));
            }
            self.check_head(c, &what)?;
            signers.push(c.node_id);
        }
        if voters.is_empty() {
            if !cosignatures.is_empty() {
                return Err(fail(
                    None,
                    None,
                    format!(
                        "the {what_head} carries co-signatures but no voter set: a verifier \
                         cannot know the quorum they were meant to meet"
                    ),
                ));
            }
            if signers.len() < quorum {
                let names: Vec<String> = signers.iter().map(u64::to_string).collect();
                return Err(fail(
                    None,
                    None,
                    format!(
                        "the {what_head} of {} entries is signed by node{} {} only, fewer than \
                         the {quorum} gateways the quorum requires: a history that no quorum of \
                         gateways applied (one gateway's own) is not accepted",
                        head.size,
                        if names.len() == 1 { "" } else { "s" },
                        names.join(", ")
                    ),
                ));
            }
            return Ok(signers);
        }
        if !crate::sth::is_voter_set(voters) {
            return Err(fail(
                None,
                None,
                format!("the {what_head}'s voter set {voters:?} is not in ascending order"),
            ));
        }
        let majority = crate::sth::majority(voters.len());
        let need = majority.max(quorum);
        let signed = voters.iter().filter(|v| signers.contains(v)).count();
        if signed < need {
            return Err(fail(
                None,
                None,
                format!(
                    "the {what_head} of {} entries is {}: {}",
                    head.size,
                    crate::sth::describe_signers(voters, &signers),
                    if need == majority {
                        format!("fewer than a majority ({majority})")
                    } else {
                        format!("fewer than the {quorum} gateways the quorum requires")
                    }
                ),
            ));
        }
        Ok(signers)
    }

    /// The known head's signature, and its co-signatures and quorum when it came with them, with
    /// the document's keys.
    fn check_known_head(&self, opts: &VerifyOptions) -> Result<(), VerifyFailure> {
        if let Some(k) = &opts.known_head {
            self.check_head(k, "known head")?;
            self.check_cosignatures(
                k,
                &opts.known_cosignatures,
                &opts.known_voters,
                0,
                "known head",
            )?;
        }
        Ok(())
    }

    fn check_head(&self, head: &SignedTreeHead, what: &str) -> Result<(), VerifyFailure> {
        let key = self.head_key(head, what)?;
        let msg = SignedTreeHead::message(head.size, &head.root, head.time_ms, head.node_id);
        if !key.verify(&msg, &head.signature) {
            return Err(fail(
                None,
                None,
                format!("{what} signature does not verify"),
            ));
        }
        Ok(())
    }
}

/// An opening as a verifier reads it, borrowing the line where it can: value and salt, or an
/// erasure marker (one or the other, checked in [`check_entry`]; one struct rather than an
/// untagged enum, which would buffer every opening).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpeningRef<'a> {
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
    #[serde(default, with = "opt_hex32")]
    salt: Option<[u8; 32]>,
    #[serde(default)]
    erased_by: Option<u64>,
}

mod opt_hex32 {
    use serde::{Deserialize, Deserializer};
    #[derive(Deserialize)]
    struct H(#[serde(with = "crate::entry::hex32")] [u8; 32]);
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        Ok(Option::<H>::deserialize(d)?.map(|h| h.0))
    }
}

/// What one entry says about erasure, for the checks across entries of an export.
#[derive(Debug, Default)]
struct ErasureFacts {
    /// (component name, erasure seq) of each opening marked as erased.
    claims: Vec<(String, u64)>,
    /// For an erasure entry: the entry and component it erases.
    erases: Option<(u64, String)>,
}

/// Counts and erasure facts of one checked entry.
struct EntryCheck {
    leaf: Hash,
    /// Whether the entry carried a signature of its own (version 1), which was checked.
    signed: bool,
    disclosed: u64,
    withheld: u64,
    facts: ErasureFacts,
}

/// An entry line as a verifier reads it: no owned copy of the entry hex, nor of the values
/// where they need no unescaping.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordRef<'a> {
    seq: u64,
    #[serde(borrow)]
    entry: Cow<'a, str>,
    #[serde(borrow)]
    openings: Vec<Option<OpeningRef<'a>>>,
}

/// Buffers one checking thread reuses from entry to entry.
#[derive(Default)]
struct Scratch {
    bytes: Vec<u8>,
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes lowercase hex into `out`; `Err` names what is wrong.
fn decode_lower_hex(s: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    let bad = |s: &[u8]| {
        if s.len().is_multiple_of(2) && s.iter().all(u8::is_ascii_hexdigit) {
            "entry bytes are not lowercase hex"
        } else {
            "entry bytes are not hex"
        }
    };
    if !s.len().is_multiple_of(2) {
        return Err(bad(s));
    }
    out.reserve(s.len() / 2);
    for pair in s.chunks_exact(2) {
        match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(h), Some(l)) => out.push(h << 4 | l),
            _ => return Err(bad(s)),
        }
    }
    Ok(())
}

/// Checks one entry (§9.1 step 3): returns its leaf hash, the numbers of disclosed and
/// withheld components and what it says about erasure.
fn check_entry(
    expected_seq: u64,
    entry_hex: &str,
    openings: &[Option<OpeningRef<'_>>],
    keys: &Keys,
    line: Option<u64>,
    disclosed_classes: Option<&BTreeSet<DisclosureClass>>,
    scratch: &mut Scratch,
) -> Result<EntryCheck, VerifyFailure> {
    let seq = Some(expected_seq);
    decode_lower_hex(entry_hex.as_bytes(), &mut scratch.bytes)
        .map_err(|why| fail(seq, line, why))?;
    let bytes = &scratch.bytes;
    let entry = EntryRef::decode(bytes).map_err(|e| fail(seq, line, e.to_string()))?;
    if entry.seq != expected_seq {
        return Err(fail(
            seq,
            line,
            format!("entry bytes carry sequence number {}", entry.seq),
        ));
    }
    // A version 1 entry carries its node's signature; a version 2 entry none: the signed tree
    // head whose root covers its leaf hash (checked by the caller) authenticates it.
    if let Some(signature) = &entry.signature {
        let key = keys.map.get(&entry.node_id).ok_or_else(|| {
            fail(
                seq,
                line,
                format!(
                    "signed by node {}, whose key is not in the document",
                    entry.node_id
                ),
            )
        })?;
        if !key.verify_parts(&[ENTRY_SIGNING_DOMAIN, entry.body], signature) {
            return Err(fail(seq, line, "entry signature does not verify"));
        }
    }
    if let Some(c) = entry.corrects {
        if c >= expected_seq {
            return Err(fail(
                seq,
                line,
                format!("corrects entry {c}, which is not earlier"),
            ));
        }
    }
    if openings.len() != entry.components.len() {
        return Err(fail(
            seq,
            line,
            format!(
                "{} openings for {} components",
                openings.len(),
                entry.components.len()
            ),
        ));
    }
    let (mut disclosed, mut withheld) = (0, 0);
    let mut facts = ErasureFacts::default();
    if entry.kind == EventKind::Erasure {
        let target = entry.event_id.and_then(parse_erasure_event_id);
        let Some((target, name)) = target.filter(|(t, _)| *t < expected_seq) else {
            return Err(fail(
                seq,
                line,
                "erasure entry does not name an earlier entry and component in its event id",
            ));
        };
        facts.erases = Some((target, name.to_owned()));
    }
    for (o, c) in openings.iter().zip(&entry.components) {
        match o {
            None if disclosed_classes.is_some_and(|d| d.contains(&c.class)) => {
                return Err(fail(
                    seq,
                    line,
                    format!(
                        "component {:?} of class {} has no value although the export discloses \
                         that class, and it is not marked as erased: a value stripped without \
                         an erasure entry",
                        c.name,
                        c.class.as_str()
                    ),
                ));
            }
            None => withheld += 1,
            Some(OpeningRef {
                value: None,
                salt: None,
                erased_by: Some(by),
            }) => {
                if *by <= expected_seq {
                    return Err(fail(
                        seq,
                        line,
                        format!(
                            "component {:?} is marked as erased by entry {by}, which is not later",
                            c.name
                        ),
                    ));
                }
                facts.claims.push((c.name.to_owned(), *by));
            }
            Some(OpeningRef {
                value: Some(value),
                salt: Some(salt),
                erased_by: None,
            }) => {
                let o = (value, salt);
                if disclosed_classes.is_some_and(|d| !d.contains(&c.class)) {
                    return Err(fail(
                        seq,
                        line,
                        format!(
                            "component {:?} of class {} is disclosed, but the export withholds that class",
                            c.name,
                            c.class.as_str()
                        ),
                    ));
                }
                if commitment(o.1, c.name, c.class, o.0) != c.commitment {
                    return Err(fail(
                        seq,
                        line,
                        format!(
                            "value of component {:?} does not match its commitment",
                            c.name
                        ),
                    ));
                }
                disclosed += 1;
            }
            Some(_) => {
                return Err(fail(
                    seq,
                    line,
                    format!(
                        "opening of component {:?} is neither value and salt nor an erasure marker",
                        c.name
                    ),
                ))
            }
        }
    }
    Ok(EntryCheck {
        leaf: leaf_hash(bytes),
        signed: entry.signature.is_some(),
        disclosed,
        withheld,
        facts,
    })
}

/// Largest first line or receipt read whole: a receipt is a few KB; anything this large is
/// neither.
const MAX_DOCUMENT: u64 = 64 << 20;

/// Verifies an export or a receipt read from `input`. `progress(done, total)` is called now and
/// then while entries are checked.
pub fn verify(
    input: &mut dyn BufRead,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, VerifyFailure> {
    let mut first = Vec::new();
    input
        .take(MAX_DOCUMENT)
        .read_until(b'\n', &mut first)
        .map_err(|e| fail(None, Some(1), format!("cannot read: {e}")))?;
    if is_export_header(&first) {
        verify_export(&first, input, opts, progress)
    } else {
        let mut all = first;
        input
            .take(MAX_DOCUMENT)
            .read_to_end(&mut all)
            .map_err(|e| fail(None, None, format!("cannot read: {e}")))?;
        verify_receipt(&all, opts)
    }
}

/// Whether a first line is meant as an export header: it names an export format, even if it
/// is malformed otherwise (so that it is reported as a bad export header, not as a bad receipt).
fn is_export_header(first: &[u8]) -> bool {
    let probe: Option<serde_json::Value> = serde_json::from_slice(first).ok();
    match probe.as_ref().and_then(|v| v.get("format")) {
        Some(f) => f
            .as_str()
            .is_some_and(|f| f.starts_with("medledger-export/")),
        // A pretty-printed receipt's first line is `{`; a line that does not parse but names
        // an export format is a damaged header.
        None => first
            .windows(b"\"medledger-export/".len())
            .any(|w| w == b"\"medledger-export/"),
    }
}

/// Entries per unit of work handed to a checking thread.
const CHUNK_ENTRIES: usize = 512;

/// Consecutive entry lines of an export.
struct Chunk {
    first_seq: u64,
    first_line: u64,
    text: Vec<u8>,
    /// End offset in `text` of each line.
    ends: Vec<usize>,
}

struct Checked {
    leaves: Vec<Hash>,
    /// Entries of version 1 among them.
    signed: u64,
    disclosed: u64,
    withheld: u64,
    /// (seq, component, erasure seq) of each opening marked as erased.
    claims: Vec<(u64, String, u64)>,
    /// (erasure seq, erased entry, component) of each erasure entry.
    erasures: Vec<(u64, u64, String)>,
}

fn check_chunk(
    c: &Chunk,
    keys: &Keys,
    disclosed: &BTreeSet<DisclosureClass>,
    scratch: &mut Scratch,
) -> Result<Checked, VerifyFailure> {
    let mut out = Checked {
        leaves: Vec::with_capacity(c.ends.len()),
        signed: 0,
        disclosed: 0,
        withheld: 0,
        claims: Vec::new(),
        erasures: Vec::new(),
    };
    let mut start = 0;
    for (i, &end) in c.ends.iter().enumerate() {
        let seq = c.first_seq + i as u64;
        let lineno = c.first_line + i as u64;
        let line = c.text.get(start..end).unwrap_or_default();
        start = end;
        let rec: RecordRef<'_> = serde_json::from_slice(line)
            .map_err(|e| fail(Some(seq), Some(lineno), format!("bad entry line: {e}")))?;
        if rec.seq != seq {
            return Err(fail(
                Some(seq),
                Some(lineno),
                format!("line carries sequence number {}", rec.seq),
            ));
        }
        let checked = check_entry(
            seq,
            &rec.entry,
            &rec.openings,
            keys,
            Some(lineno),
            Some(disclosed),
            scratch,
        )?;
        out.leaves.push(checked.leaf);
        out.signed += u64::from(checked.signed);
        out.disclosed += checked.disclosed;
        out.withheld += checked.withheld;
        let facts = checked.facts;
        out.claims
            .extend(facts.claims.into_iter().map(|(name, by)| (seq, name, by)));
        if let Some((target, name)) = facts.erases {
            out.erasures.push((seq, target, name));
        }
    }
    Ok(out)
}

/// Reads up to `want` lines into `c` (cleared first); fewer only at the end of the input.
fn read_chunk(input: &mut dyn BufRead, c: &mut Chunk, want: usize) -> std::io::Result<()> {
    c.text.clear();
    c.ends.clear();
    while c.ends.len() < want {
        let n = input.read_until(b'\n', &mut c.text)?;
        if n == 0 {
            break;
        }
        c.ends.push(c.text.len());
    }
    Ok(())
}

type WorkResult = (usize, Chunk, Result<Checked, VerifyFailure>);

fn verify_export(
    first: &[u8],
    input: &mut dyn BufRead,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, VerifyFailure> {
    let header: ExportHeader = serde_json::from_slice(first)
        .map_err(|e| fail(None, Some(1), format!("malformed export header: {e}")))?;
    if header.format != EXPORT_FORMAT {
        return Err(fail(
            None,
            Some(1),
            format!(
                "unsupported export format {:?} (this verifier reads {EXPORT_FORMAT})",
                header.format
            ),
        ));
    }
    let keys = Keys::new(&header.node_keys, opts)?;
    keys.check_known_head(opts)?;
    let disclosed_set: BTreeSet<DisclosureClass> =
        header.disclosed_classes.iter().copied().collect();
    let size = header.size;
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // At most this many chunks are read and not yet folded into the tree: memory stays a few
    // MB whatever the export's size.
    let max_in_flight = 4 * threads;

    let mut frontier = Frontier::new();
    // The root of the first `known.size` entries, once they have been folded in.
    let mut prefix_root = match &opts.known_head {
        Some(k) if k.size == 0 => Some(frontier.root()),
        _ => None,
    };
    let (mut disclosed, mut withheld, mut signed) = (0u64, 0u64, 0u64);
    // Erasure markers and erasure entries: as many as there were erasures, never per entry.
    let mut claims: Vec<(u64, String, u64)> = Vec::new();
    let mut erasures: std::collections::HashSet<(u64, u64, String)> = Default::default();
    progress(0, size);

    let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<(usize, Chunk)>(max_in_flight);
    let work_rx = std::sync::Mutex::new(work_rx);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<WorkResult>();
    let entries_read = std::thread::scope(|s| -> Result<u64, VerifyFailure> {
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let (work_rx, keys, disclosed_set) = (&work_rx, &keys, &disclosed_set);
            s.spawn(move || {
                let mut scratch = Scratch::default();
                loop {
                    // Holding the lock only to take one chunk; a poisoned lock or a closed
                    // channel both mean the verification is over.
                    let next = match work_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((index, chunk)) = next else { return };
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        check_chunk(&chunk, keys, disclosed_set, &mut scratch)
                    }))
                    .unwrap_or_else(|_| {
                        Err(fail(
                            Some(chunk.first_seq),
                            Some(chunk.first_line),
                            "internal error while checking these entries",
                        ))
                    });
                    if done_tx.send((index, chunk, result)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // Moved in, so that it is dropped (and the workers stop) however this returns.
        let work_tx = work_tx;
        let mut spare: Vec<Chunk> = Vec::new();
        let mut pending: std::collections::BTreeMap<
            usize,
            (Chunk, Result<Checked, VerifyFailure>),
        > = std::collections::BTreeMap::new();
        let (mut next_index, mut next_fold, mut in_flight) = (0usize, 0usize, 0usize);
        let (mut next_seq, mut next_line) = (0u64, 2u64);
        let mut at_end = false;
        loop {
            while in_flight < max_in_flight && !at_end && next_seq < size {
                let mut c = spare.pop().unwrap_or(Chunk {
                    first_seq: 0,
                    first_line: 0,
                    text: Vec::new(),
                    ends: Vec::new(),
                });
                c.first_seq = next_seq;
                c.first_line = next_line;
                let want = (size - next_seq).min(CHUNK_ENTRIES as u64) as usize;
                read_chunk(input, &mut c, want).map_err(|e| {
                    fail(Some(next_seq), Some(next_line), format!("cannot read: {e}"))
                })?;
                let got = c.ends.len();
                at_end = got < want;
                next_seq += got as u64;
                next_line += got as u64;
                if got == 0 {
                    break;
                }
                work_tx
                    .send((next_index, c))
                    .map_err(|_| fail(None, None, "the checking threads stopped"))?;
                next_index += 1;
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            let (index, chunk, result) = done_rx
                .recv()
                .map_err(|_| fail(None, None, "the checking threads stopped"))?;
            in_flight -= 1;
            pending.insert(index, (chunk, result));
            while let Some((chunk, result)) = pending.remove(&next_fold) {
                next_fold += 1;
                let checked = result?;
                for leaf in checked.leaves {
                    frontier.push(leaf, |_, _, _| {});
                    if opts
                        .known_head
                        .as_ref()
                        .is_some_and(|k| k.size == frontier.size())
                    {
                        prefix_root = Some(frontier.root());
                    }
                }
                disclosed += checked.disclosed;
                withheld += checked.withheld;
                signed += checked.signed;
                claims.extend(checked.claims);
                erasures.extend(checked.erasures);
                progress(frontier.size(), size);
                spare.push(chunk);
            }
        }
        Ok(next_seq)
    })?;
    let mut lineno = entries_read + 2;
    if entries_read < size {
        return Err(fail(
            Some(entries_read),
            Some(lineno),
            format!("export ends after {entries_read} of {size} entries"),
        ));
    }
    let mut line = Vec::new();
    input
        .take(MAX_DOCUMENT)
        .read_until(b'\n', &mut line)
        .map_err(|e| fail(None, Some(lineno), format!("cannot read: {e}")))?;
    let tail: ExportTail = serde_json::from_slice(&line)
        .map_err(|e| fail(None, Some(lineno), format!("bad tree head line: {e}")))?;
    let mut rest = [0u8; 1];
    if input
        .read(&mut rest)
        .map_err(|e| fail(None, None, e.to_string()))?
        != 0
    {
        lineno += 1;
        return Err(fail(None, Some(lineno), "data after the tree head"));
    }
    let head = tail.tree_head;
    if head.size != size {
        return Err(fail(
            None,
            Some(lineno),
            format!(
                "tree head is for {} entries, the export has {size}",
                head.size
            ),
        ));
    }
    if frontier.root() != head.root {
        return Err(fail(
            None,
            Some(lineno),
            "root of the entries does not match the signed tree head",
        ));
    }
    keys.check_head(&head, "tree head")?;
    let head_signers = keys
        .check_cosignatures(
            &head,
            &tail.cosignatures,
            &tail.voters,
            opts.quorum,
            "tree head",
        )
        .map_err(|f| VerifyFailure {
            line: Some(lineno),
            ..f
        })?;
    // Every erasure marker points at an erasure entry of this export that names its entry and
    // component (the entry bytes are signed; the marker is not).
    for (seq, name, by) in &claims {
        if !erasures.contains(&(*by, *seq, name.clone())) {
            return Err(fail(
                Some(*seq),
                None,
                format!(
                    "component {name:?} is marked as erased by entry {by}, but entry {by} is not \
                     an erasure of entry {seq}'s component {name:?}"
                ),
            ));
        }
    }
    let known_head = match &opts.known_head {
        None => None,
        Some(k) => Some(relate_export(k, &head, prefix_root)?),
    };
    progress(size, size);
    Ok(VerifyReport {
        document: "export",
        tree_head: head,
        node_keys: header.node_keys,
        entries: size,
        signed_entries: signed,
        disclosed_components: disclosed,
        withheld_components: withheld,
        erased_components: claims.len() as u64,
        entry: None,
        trust: keys.trust,
        known_head,
        head_signers,
        voters: tail.voters,
    })
}

fn rollback(doc: &str, head: &SignedTreeHead, known: &SignedTreeHead) -> VerifyFailure {
    VerifyFailure {
        kind: FailureKind::Rollback,
        seq: None,
        line: None,
        reason: format!(
            "rollback: the {doc}'s tree head has {} entries, older than the known head of {} \
             entries",
            head.size, known.size
        ),
    }
}

fn fork(reason: String) -> VerifyFailure {
    VerifyFailure {
        kind: FailureKind::Fork,
        seq: None,
        line: None,
        reason: format!("fork: {reason}"),
    }
}

/// An export carries every leaf: its tree extends the known head's exactly when the root of its
/// first `known.size` entries is the known root.
fn relate_export(
    known: &SignedTreeHead,
    head: &SignedTreeHead,
    prefix_root: Option<Hash>,
) -> Result<KnownHeadCheck, VerifyFailure> {
    if head.size < known.size {
        return Err(rollback("export", head, known));
    }
    match prefix_root {
        Some(r) if r == known.root => Ok(KnownHeadCheck {
            known: known.clone(),
            newer_by: head.size - known.size,
        }),
        _ => Err(fork(format!(
            "the export's first {} entries have root {}, the known head of {} entries has root {}",
            known.size,
            prefix_root.map(hex::encode).unwrap_or_default(),
            known.size,
            hex::encode(known.root)
        ))),
    }
}

/// A receipt carries one leaf: its head extends the known head when it is the same head, or when
/// the receipt's consistency proof from the known size verifies between the two roots.
fn relate_receipt(
    known: &SignedTreeHead,
    head: &SignedTreeHead,
    consistency: Option<&ConsistencyProof>,
) -> Result<KnownHeadCheck, VerifyFailure> {
    let check = KnownHeadCheck {
        known: known.clone(),
        newer_by: head.size.saturating_sub(known.size),
    };
    if head.size < known.size {
        return Err(rollback("receipt", head, known));
    }
    if head.size == known.size {
        if head.root == known.root {
            return Ok(check);
        }
        return Err(fork(format!(
            "the receipt's tree head and the known head both have {} entries but different roots \
             ({} and {})",
            head.size,
            hex::encode(head.root),
            hex::encode(known.root)
        )));
    }
    if known.size == 0 {
        // Every tree extends the empty one.
        return Ok(check);
    }
    let Some(c) = consistency else {
        return Err(fail(
            None,
            None,
            format!(
                "the receipt's tree head ({} entries) is newer than the known head ({} entries) \
                 and the receipt carries no consistency proof from it (make it with \
                 `medledger ledger receipt --since-size {}`)",
                head.size, known.size, known.size
            ),
        ));
    };
    if c.from_size != known.size {
        return Err(fail(
            None,
            None,
            format!(
                "the receipt's consistency proof starts at size {}, the known head has {} entries",
                c.from_size, known.size
            ),
        ));
    }
    let proof: Vec<Hash> = c.proof.iter().map(|h| h.0).collect();
    verify_consistency(known.size, head.size, &proof, &known.root, &head.root).map_err(|e| {
        fork(format!(
            "the receipt's tree head ({} entries) is not consistent with the known head ({} \
             entries): consistency proof: {e}",
            head.size, known.size
        ))
    })?;
    Ok(check)
}

fn verify_receipt(text: &[u8], opts: &VerifyOptions) -> Result<VerifyReport, VerifyFailure> {
    let r: Receipt<'_> = serde_json::from_slice(text).map_err(|e| {
        fail(
            None,
            None,
            format!("not a medledger export or receipt: {e}"),
        )
    })?;
    if r.format != RECEIPT_FORMAT {
        return Err(fail(None, None, format!("unknown format {:?}", r.format)));
    }
    let keys = Keys::new(&r.node_keys, opts)?;
    keys.check_known_head(opts)?;
    let seq = r.entry.seq;
    let openings: Vec<Option<OpeningRef<'_>>> = r
        .entry
        .openings
        .iter()
        .map(|o| {
            o.as_ref().map(|o| match o {
                ExportOpening::Open(o) => OpeningRef {
                    value: Some(Cow::Borrowed(o.value.as_str())),
                    salt: Some(o.salt),
                    erased_by: None,
                },
                ExportOpening::Erased(m) => OpeningRef {
                    value: None,
                    salt: None,
                    erased_by: Some(m.erased_by),
                },
            })
        })
        .collect();
    let mut scratch = Scratch::default();
    // A receipt carries one entry: an erasure marker in it is reported, but the erasure entry
    // it points at is not in the document to check it against (an export is).
    let checked = check_entry(
        seq,
        &r.entry.entry,
        &openings,
        &keys,
        None,
        None,
        &mut scratch,
    )?;
    let leaf = checked.leaf;
    // check_entry decoded these very bytes.
    let entry = Entry::decode(&scratch.bytes).map_err(|e| fail(Some(seq), None, e.to_string()))?;
    let proof: Vec<Hash> = r.inclusion_proof.iter().map(|h| h.0).collect();
    verify_inclusion(&leaf, seq, r.tree_head.size, &proof, &r.tree_head.root)
        .map_err(|e| fail(Some(seq), None, format!("inclusion proof: {e}")))?;
    keys.check_head(&r.tree_head, "tree head")?;
    let head_signers = keys.check_cosignatures(
        &r.tree_head,
        &r.cosignatures,
        &r.voters,
        opts.quorum,
        "tree head",
    )?;
    if let Some(c) = &r.consistency {
        if c.from_size == 0 || c.from_size > r.tree_head.size {
            return Err(fail(
                None,
                None,
                format!(
                    "consistency proof from size {} to a tree head of {} entries",
                    c.from_size, r.tree_head.size
                ),
            ));
        }
    }
    let known_head = match &opts.known_head {
        None => None,
        Some(k) => Some(relate_receipt(k, &r.tree_head, r.consistency.as_ref())?),
    };
    Ok(VerifyReport {
        document: "receipt",
        tree_head: r.tree_head,
        node_keys: r.node_keys,
        entries: 1,
        signed_entries: u64::from(checked.signed),
        disclosed_components: checked.disclosed,
        withheld_components: checked.withheld,
        erased_components: checked.facts.claims.len() as u64,
        entry: Some((entry, r.entry.openings)),
        trust: keys.trust,
        known_head,
        head_signers,
        voters: r.voters,
    })
}

/// A head a reader saw before, with the voter set and co-signatures it came with (none for a
/// bare signed tree head).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHead {
    pub head: SignedTreeHead,
    pub voters: Vec<u64>,
    pub cosignatures: Vec<SignedTreeHead>,
}

/// Reads the head a reader saw before from `file`: a signed tree head as the API serves it
/// (`GET /v1/head`), an export (its last line) or a receipt (its tree head). The head's
/// signature is checked later, against the keys of the document being verified.
pub fn read_known_head<F: Read + Seek>(file: &mut F) -> Result<SignedTreeHead, VerifyFailure> {
    read_known(file).map(|k| k.head)
}

/// [`read_known_head`] with the voter set and co-signatures an export or receipt carries with
/// its head, to be checked as the document's own are (§9.6).
pub fn read_known<F: Read + Seek>(file: &mut F) -> Result<KnownHead, VerifyFailure> {
    let len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| fail(None, None, format!("cannot read: {e}")))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| fail(None, None, format!("cannot read: {e}")))?;
    let mut first = Vec::new();
    std::io::BufReader::new(&mut *file)
        .take(MAX_DOCUMENT)
        .read_until(b'\n', &mut first)
        .map_err(|e| fail(None, Some(1), format!("cannot read: {e}")))?;
    if is_export_header(&first) {
        // The tree head is the last line; it is far shorter than this.
        let back = len.min(64 * 1024);
        file.seek(SeekFrom::Start(len - back))
            .map_err(|e| fail(None, None, format!("cannot read: {e}")))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)
            .map_err(|e| fail(None, None, format!("cannot read: {e}")))?;
        let last = tail
            .split(|b| *b == b'\n')
            .rfind(|l| !l.iter().all(u8::is_ascii_whitespace))
            .unwrap_or_default();
        let t: ExportTail = serde_json::from_slice(last)
            .map_err(|e| fail(None, None, format!("the export's last line: {e}")))?;
        return Ok(KnownHead {
            head: t.tree_head,
            voters: t.voters,
            cosignatures: t.cosignatures,
        });
    }
    if len > MAX_DOCUMENT {
        return Err(fail(
            None,
            None,
            "neither a tree head, an export nor a receipt",
        ));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| fail(None, None, format!("cannot read: {e}")))?;
    let mut all = Vec::new();
    file.read_to_end(&mut all)
        .map_err(|e| fail(None, None, format!("cannot read: {e}")))?;
    if let Ok(head) = serde_json::from_slice::<SignedTreeHead>(&all) {
        return Ok(KnownHead {
            head,
            voters: Vec::new(),
            cosignatures: Vec::new(),
        });
    }
    match serde_json::from_slice::<Receipt<'_>>(&all) {
        Ok(r) => Ok(KnownHead {
            head: r.tree_head,
            voters: r.voters,
            cosignatures: r.cosignatures,
        }),
        Err(e) => Err(fail(
            None,
            None,
            format!("neither a signed tree head, an export nor a receipt: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{ComponentInput, EventInput, EventKind};
    use crate::ledger::prepare;
    use crate::store::{ApplyOutcome, Command};
    use ed25519_dalek::SigningKey;

    fn event(tag: &str, i: u64) -> EventInput {
        EventInput {
            kind: EventKind::Repair,
            device_id: format!("pump-{}", i % 3),
            occurred_at: None,
            components: vec![
                ComponentInput {
                    name: "action".into(),
                    class: DisclosureClass::Maintenance,
                    value: format!("\"{tag} {i}\""),
                },
                ComponentInput {
                    name: "patient".into(),
                    class: DisclosureClass::Patient,
                    value: "\"MRN1\"".into(),
                },
            ],
            corrects: None,
            event_id: Some(format!("{tag}-{i}")),
        }
    }

    /// A store of `n` entries signed by `key`; entries from `diverge_at` on carry other events
    /// (a second ledger that forks from the first at that entry).
    fn store(dir: &std::path::Path, key: &SigningKey, n: u64, diverge_at: u64) -> Store {
        let s = Store::open(dir).expect("store opens");
        let reg = s
            .apply(
                &[Command::RegisterNode {
                    node_id: 1,
                    public_key: key.verifying_key().to_bytes(),
                }],
                &[],
            )
            .expect("register");
        assert!(matches!(reg[0], ApplyOutcome::NodeRegistered { .. }));
        let cmds: Vec<Command> = (0..n)
            .map(|i| {
                let tag = if i < diverge_at { "a" } else { "b" };
                prepare(event(tag, i), "biomed:test", 1, key, 1_700_000_000_000)
                    .map(Command::Append)
                    .expect("prepare")
            })
            .collect();
        for o in s.apply(&cmds, &[]).expect("apply") {
            assert!(matches!(o, ApplyOutcome::Appended { .. }), "{o:?}");
        }
        // Readers see only flushed entries.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(s.flush())
            .expect("flush");
        s
    }

    fn head(s: &Store, key: &SigningKey, size: u64) -> SignedTreeHead {
        SignedTreeHead::sign(size, s.root(size).expect("root"), 1_767_600_000_000, 1, key)
    }

    fn export_text(s: &Store, h: &SignedTreeHead) -> Vec<u8> {
        let mut out = Vec::new();
        write_export(s, h, &None, &mut out).expect("export");
        out
    }

    fn check(doc: &[u8], opts: &VerifyOptions) -> Result<VerifyReport, VerifyFailure> {
        verify(&mut &doc[..], opts, &mut |_, _| {})
    }

    fn known(h: &SignedTreeHead) -> VerifyOptions {
        VerifyOptions {
            known_head: Some(h.clone()),
            ..VerifyOptions::default()
        }
    }

    fn receipt_text(r: &Receipt<'_>) -> Vec<u8> {
        serde_json::to_vec_pretty(r).expect("json")
    }

    #[test]
    fn export_against_a_known_head_rollback_and_fork() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let (da, db) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let a = store(da.path(), &key, 8, u64::MAX);
        // The same key signs a second ledger that diverges at entry 3.
        let b = store(db.path(), &key, 8, 3);
        let (a5, a8, b8) = (head(&a, &key, 5), head(&a, &key, 8), head(&b, &key, 8));

        // A newer export than the known head, and the same head, are consistent.
        let r = check(&export_text(&a, &a8), &known(&a5)).expect("extends");
        assert_eq!(r.known_head.map(|k| k.newer_by), Some(3));
        let r = check(&export_text(&a, &a5), &known(&a5)).expect("same");
        assert_eq!(r.known_head.map(|k| k.newer_by), Some(0));
        // An empty known head is extended by everything.
        let a0 = head(&a, &key, 0);
        check(&export_text(&a, &a5), &known(&a0)).expect("extends the empty tree");

        // Rollback: a genuine older export shown after a newer head, named with both sizes.
        let e = check(&export_text(&a, &a5), &known(&a8)).expect_err("rollback");
        assert_eq!(e.kind, FailureKind::Rollback);
        assert!(
            e.reason.contains("5 entries") && e.reason.contains("8 entries"),
            "{e}"
        );

        // Fork: the second ledger is refused against a head of the first, longer or as long.
        for k in [&a5, &a8] {
            let e = check(&export_text(&b, &b8), &known(k)).expect_err("fork");
            assert_eq!(e.kind, FailureKind::Fork, "{e}");
            assert!(e.reason.starts_with("fork: "), "{e}");
        }
        // ... and it verifies on its own: only the known head shows the fork.
        check(&export_text(&b, &b8), &VerifyOptions::default()).expect("valid alone");

        // A known head whose signature does not verify is refused as such.
        let mut bad = a5.clone();
        bad.time_ms += 1;
        let e = check(&export_text(&a, &a8), &known(&bad)).expect_err("bad known head");
        assert!(e.reason.contains("known head signature"), "{e}");
    }

    #[test]
    fn receipt_against_a_known_head() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let (da, db) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let a = store(da.path(), &key, 8, u64::MAX);
        let b = store(db.path(), &key, 8, 3);
        let (a5, a8, b5) = (head(&a, &key, 5), head(&a, &key, 8), head(&b, &key, 5));

        // A version 1 receipt (no consistency proof) verifies, and has no such field.
        let plain = make_receipt(&a, 6, &a8, &None).expect("receipt");
        let text = receipt_text(&plain);
        assert!(!String::from_utf8_lossy(&text).contains("consistency"));
        check(&text, &VerifyOptions::default()).expect("v1 receipt");
        // Without a proof it cannot be related to an older known head: refused, saying how.
        let e = check(&text, &known(&a5)).expect_err("no proof");
        assert!(e.reason.contains("--since-size 5"), "{e}");

        // With the proof from size 5, it is accepted against the head of 5.
        let since = make_receipt_since(&a, 6, &a8, &None, Some(5)).expect("receipt");
        let text = receipt_text(&since);
        let r = check(&text, &known(&a5)).expect("consistent");
        assert_eq!(r.known_head.map(|k| k.newer_by), Some(3));
        // ... and still verifies without a known head.
        check(&text, &VerifyOptions::default()).expect("alone");

        // A tampered proof is refused.
        let mut tampered = since.clone();
        if let Some(c) = tampered.consistency.as_mut() {
            c.proof[0].0[0] ^= 1;
        }
        let e = check(&receipt_text(&tampered), &known(&a5)).expect_err("tampered");
        assert_eq!(e.kind, FailureKind::Fork, "{e}");
        // A proof from another size than the known head's is refused.
        let from4 = make_receipt_since(&a, 6, &a8, &None, Some(4)).expect("receipt");
        check(&receipt_text(&from4), &known(&a5)).expect_err("wrong size");

        // Fork: a receipt of the first ledger against a head of the second (same key).
        let e = check(&text, &known(&b5)).expect_err("fork");
        assert_eq!(e.kind, FailureKind::Fork, "{e}");
        // Rollback: a receipt older than the known head.
        let old = make_receipt(&a, 2, &a5, &None).expect("receipt");
        let e = check(&receipt_text(&old), &known(&a8)).expect_err("rollback");
        assert_eq!(e.kind, FailureKind::Rollback);
        assert!(
            e.reason.contains("5 entries") && e.reason.contains("8 entries"),
            "{e}"
        );
        // The same head: accepted without a proof.
        check(&receipt_text(&old), &known(&a5)).expect("same head");
    }

    #[test]
    fn known_head_from_a_head_an_export_or_a_receipt() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let d = tempfile::tempdir().expect("dir");
        let a = store(d.path(), &key, 4, u64::MAX);
        let h = head(&a, &key, 4);
        let docs = [
            serde_json::to_vec(&h).expect("json"),
            export_text(&a, &h),
            receipt_text(&make_receipt(&a, 1, &h, &None).expect("receipt")),
        ];
        for doc in docs {
            let got = read_known_head(&mut std::io::Cursor::new(doc)).expect("a head");
            assert_eq!(got, h);
        }
        assert!(read_known_head(&mut std::io::Cursor::new(b"{}".to_vec())).is_err());
    }

    #[test]
    fn trust_parallel_order_and_malformed_headers() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let d = tempfile::tempdir().expect("dir");
        let n = 3 * CHUNK_ENTRIES as u64 + 17;
        let a = store(d.path(), &key, n, u64::MAX);
        let h = head(&a, &key, n);
        let text = export_text(&a, &h);
        let r = check(&text, &VerifyOptions::default()).expect("valid");
        assert_eq!(r.trust, Trust::DocumentKeys);
        assert_eq!((r.entries, r.disclosed_components), (n, 2 * n));
        let pinned = VerifyOptions {
            trusted_keys: vec![NodeKey {
                node_id: 1,
                public_key: key.verifying_key().to_bytes(),
            }],
            ..VerifyOptions::default()
        };
        assert_eq!(
            check(&text, &pinned).expect("pinned").trust,
            Trust::TrustedKeys
        );

        // Two bad entries in different chunks: every thread count reports the first.
        let s = String::from_utf8(text.clone()).expect("utf-8");
        let mut lines: Vec<String> = s.lines().map(str::to_owned).collect();
        for seq in [CHUNK_ENTRIES + 3, 2 * CHUNK_ENTRIES + 5] {
            lines[seq + 1] = lines[seq + 1].replace("\"a ", "\"A ");
        }
        let bad = lines.join("\n") + "\n";
        for threads in [1, 2, 5] {
            let opts = VerifyOptions {
                threads,
                ..VerifyOptions::default()
            };
            let e = check(bad.as_bytes(), &opts).expect_err("tampered");
            assert_eq!(
                e.seq,
                Some(CHUNK_ENTRIES as u64 + 3),
                "{threads} threads: {e}"
            );
            assert!(e.reason.contains("commitment"), "{e}");
            check(&text, &opts).expect("valid");
        }
        // A truncated export names where it ends.
        let orig: Vec<&str> = s.lines().collect();
        let cut = orig[..orig.len() - 10].join("\n") + "\n";
        let e = check(cut.as_bytes(), &VerifyOptions::default()).expect_err("cut");
        assert!(
            e.reason.contains(&format!("ends after {} of {n}", n - 9)),
            "{e}"
        );

        // A damaged header is reported as an export header, not as a receipt.
        let broken = s.replacen("\"size\":", "\"size\":\"", 1);
        let e = check(broken.as_bytes(), &VerifyOptions::default()).expect_err("header");
        assert!(e.reason.starts_with("malformed export header"), "{e}");
        let broken = s.replacen("{", "{{", 1);
        let e = check(broken.as_bytes(), &VerifyOptions::default()).expect_err("header");
        assert!(e.reason.starts_with("malformed export header"), "{e}");

        // A non-canonical public key is refused even when nothing it signs is in the export.
        let mut y = [0xffu8; 32];
        y[31] = 0x7f;
        let mut noncanonical = None;
        for d in 0..19u8 {
            y[0] = 0xed + d;
            if ed25519_dalek::VerifyingKey::from_bytes(&y).is_ok() {
                noncanonical = Some(y);
            }
        }
        let y = noncanonical.expect("a non-canonical encoding that decodes");
        let header_end = s.find('\n').expect("header line");
        let mut hv: serde_json::Value = serde_json::from_str(&s[..header_end]).expect("header");
        hv["node_keys"]
            .as_array_mut()
            .expect("keys")
            .push(serde_json::json!({"node_id": 9, "public_key": hex::encode(y)}));
        let extra = format!("{hv}{}", &s[header_end..]);
        let e = check(extra.as_bytes(), &VerifyOptions::default()).expect_err("bad key");
        assert!(
            e.reason.contains("node 9") && e.reason.contains("canonical"),
            "{e}"
        );
    }
}
