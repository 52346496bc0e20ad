//! Exports, receipts and their offline verification.
//!
//! An export is JSON Lines: a header (format, size, node keys), one line per entry (sequence
//! number, entry bytes in hex, the openings of its components or `null` where withheld or erased),
//! and a last line with the signed tree head over exactly those entries. A receipt is one JSON
//! document: the node keys, one entry line, its inclusion proof and the signed tree head.
//! `docs/ledger-format.md` is the normative description.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, Write};

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::entry::{commitment, DisclosureClass, Entry, Opening, ENTRY_SIGNING_DOMAIN};
use crate::error::LedgerError;
use crate::hash::{leaf_hash, Hash};
use crate::merkle::{verify_inclusion, Frontier};
use crate::sth::SignedTreeHead;
use crate::store::Store;

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
    /// One per component: value and salt, or `null` where withheld or erased.
    pub openings: Vec<Option<Opening>>,
}

/// Last line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportTail {
    pub tree_head: SignedTreeHead,
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
    let mut openings = store.openings(seq)?;
    openings.resize(entry.body.components.len(), None);
    for (o, c) in openings.iter_mut().zip(&entry.body.components) {
        if let Some(classes) = disclose {
            if !classes.contains(&c.class) {
                *o = None;
            }
        }
    }
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
    line(
        out,
        &ExportTail {
            tree_head: head.clone(),
        },
    )?;
    out.flush().map_err(io_err)
}

/// Builds a receipt for entry `seq` against `head`.
pub fn make_receipt(
    store: &Store,
    seq: u64,
    head: &SignedTreeHead,
    disclose: &Disclosure,
) -> Result<Receipt<'static>, LedgerError> {
    if seq >= head.size {
        return Err(LedgerError::NoSuchEntry {
            seq,
            size: head.size,
        });
    }
    let proof = store.inclusion_proof(seq, head.size)?;
    Ok(Receipt {
        format: RECEIPT_FORMAT.into(),
        node_keys: node_keys(store)?,
        entry: record(store, seq, disclose)?,
        inclusion_proof: proof.into_iter().map(HexHash).collect(),
        tree_head: head.clone(),
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

/// What was verified.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// `export` or `receipt`.
    pub document: &'static str,
    pub tree_head: SignedTreeHead,
    pub node_keys: Vec<NodeKey>,
    /// Entries whose hash, signature and commitments were checked.
    pub entries: u64,
    /// Components whose values were present and matched their commitments.
    pub disclosed_components: u64,
    /// Components present only as a commitment.
    pub withheld_components: u64,
    /// For a receipt, the entry it proves.
    pub entry: Option<(Entry, Vec<Option<Opening>>)>,
}

/// Why a document does not verify: the first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", match (.line, .seq) {
    (_, Some(s)) => format!("entry {s}: "),
    (Some(l), None) => format!("line {l}: "),
    _ => String::new(),
})]
pub struct VerifyFailure {
    /// Sequence number of the first bad entry, where the problem is in an entry.
    pub seq: Option<u64>,
    /// Line of the file, where known.
    pub line: Option<u64>,
    pub reason: String,
}

fn fail(seq: Option<u64>, line: Option<u64>, reason: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
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
}

struct Keys(HashMap<u64, VerifyingKey>);

impl Keys {
    fn new(keys: &[NodeKey], opts: &VerifyOptions) -> Result<Self, VerifyFailure> {
        let mut map = HashMap::new();
        for k in keys {
            let vk = VerifyingKey::from_bytes(&k.public_key).map_err(|_| {
                fail(
                    None,
                    None,
                    format!("public key of node {} is not a valid key", k.node_id),
                )
            })?;
            if map.insert(k.node_id, vk).is_some() {
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
        Ok(Keys(map))
    }
}

/// Checks one entry record; returns the leaf hash and counts of disclosed/withheld components.
fn check_record(
    rec: &EntryRecord<'_>,
    expected_seq: u64,
    keys: &Keys,
    line: Option<u64>,
    disclosed_classes: Option<&BTreeSet<DisclosureClass>>,
) -> Result<(Hash, Entry, u64, u64), VerifyFailure> {
    let seq = Some(expected_seq);
    if rec.seq != expected_seq {
        return Err(fail(
            seq,
            line,
            format!("line carries sequence number {}", rec.seq),
        ));
    }
    let bytes = hex::decode(rec.entry.as_bytes())
        .map_err(|_| fail(seq, line, "entry bytes are not hex"))?;
    if rec.entry.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(fail(seq, line, "entry bytes are not lowercase hex"));
    }
    let entry = Entry::decode(&bytes).map_err(|e| fail(seq, line, e.to_string()))?;
    if entry.seq != expected_seq {
        return Err(fail(
            seq,
            line,
            format!("entry bytes carry sequence number {}", entry.seq),
        ));
    }
    let key = keys.0.get(&entry.body.node_id).ok_or_else(|| {
        fail(
            seq,
            line,
            format!(
                "signed by node {}, whose key is not in the document",
                entry.body.node_id
            ),
        )
    })?;
    // The signed message is the domain separator and the body, which sits between the 9-byte
    // prefix (version, seq) and the 64-byte signature.
    let body = &bytes[9..bytes.len() - 64];
    let mut msg = Vec::with_capacity(ENTRY_SIGNING_DOMAIN.len() + body.len());
    msg.extend_from_slice(ENTRY_SIGNING_DOMAIN);
    msg.extend_from_slice(body);
    if key
        .verify_strict(&msg, &Signature::from_bytes(&entry.signature))
        .is_err()
    {
        return Err(fail(seq, line, "entry signature does not verify"));
    }
    if let Some(c) = entry.body.corrects {
        if c >= expected_seq {
            return Err(fail(
                seq,
                line,
                format!("corrects entry {c}, which is not earlier"),
            ));
        }
    }
    if rec.openings.len() != entry.body.components.len() {
        return Err(fail(
            seq,
            line,
            format!(
                "{} openings for {} components",
                rec.openings.len(),
                entry.body.components.len()
            ),
        ));
    }
    let (mut disclosed, mut withheld) = (0, 0);
    for (o, c) in rec.openings.iter().zip(&entry.body.components) {
        match o {
            None => withheld += 1,
            Some(o) => {
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
                if commitment(&o.salt, &c.name, c.class, &o.value) != c.commitment {
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
        }
    }
    Ok((leaf_hash(&bytes), entry, disclosed, withheld))
}

fn check_head(head: &SignedTreeHead, keys: &Keys) -> Result<(), VerifyFailure> {
    let key = keys.0.get(&head.node_id).ok_or_else(|| {
        fail(
            None,
            None,
            format!(
                "tree head signed by node {}, whose key is not in the document",
                head.node_id
            ),
        )
    })?;
    if !head.verify(key) {
        return Err(fail(None, None, "tree head signature does not verify"));
    }
    Ok(())
}

/// Verifies an export or a receipt read from `input`. `progress(done, total)` is called now and
/// then while entries are checked.
pub fn verify(
    input: &mut dyn BufRead,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, VerifyFailure> {
    let mut first = String::new();
    input
        .read_line(&mut first)
        .map_err(|e| fail(None, Some(1), format!("cannot read: {e}")))?;
    let probe: serde_json::Value = serde_json::from_str(&first).unwrap_or(serde_json::Value::Null);
    if probe.get("format").and_then(|f| f.as_str()) == Some(EXPORT_FORMAT) {
        verify_export(&first, input, opts, progress)
    } else {
        let mut all = first;
        input
            .read_to_string(&mut all)
            .map_err(|e| fail(None, None, format!("cannot read: {e}")))?;
        verify_receipt(&all, opts)
    }
}

fn verify_export(
    first: &str,
    input: &mut dyn BufRead,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, VerifyFailure> {
    let header: ExportHeader = serde_json::from_str(first)
        .map_err(|e| fail(None, Some(1), format!("bad export header: {e}")))?;
    let keys = Keys::new(&header.node_keys, opts)?;
    let disclosed_set: BTreeSet<DisclosureClass> =
        header.disclosed_classes.iter().copied().collect();
    let mut frontier = Frontier::new();
    let (mut disclosed, mut withheld) = (0u64, 0u64);
    let mut line = String::new();
    let mut lineno = 1u64;
    progress(0, header.size);
    for seq in 0..header.size {
        line.clear();
        lineno += 1;
        let n = input
            .read_line(&mut line)
            .map_err(|e| fail(Some(seq), Some(lineno), format!("cannot read: {e}")))?;
        if n == 0 {
            return Err(fail(
                Some(seq),
                Some(lineno),
                format!("export ends after {seq} of {} entries", header.size),
            ));
        }
        let rec: EntryRecord<'_> = serde_json::from_str(&line)
            .map_err(|e| fail(Some(seq), Some(lineno), format!("bad entry line: {e}")))?;
        let (leaf, _, d, w) = check_record(&rec, seq, &keys, Some(lineno), Some(&disclosed_set))?;
        disclosed += d;
        withheld += w;
        frontier.push(leaf, |_, _, _| {});
        if seq % 1024 == 1023 {
            progress(seq + 1, header.size);
        }
    }
    line.clear();
    lineno += 1;
    input
        .read_line(&mut line)
        .map_err(|e| fail(None, Some(lineno), format!("cannot read: {e}")))?;
    let tail: ExportTail = serde_json::from_str(&line)
        .map_err(|e| fail(None, Some(lineno), format!("bad tree head line: {e}")))?;
    let mut rest = String::new();
    if input
        .read_line(&mut rest)
        .map_err(|e| fail(None, None, e.to_string()))?
        != 0
    {
        return Err(fail(None, Some(lineno + 1), "data after the tree head"));
    }
    let head = tail.tree_head;
    if head.size != header.size {
        return Err(fail(
            None,
            Some(lineno),
            format!(
                "tree head is for {} entries, the export has {}",
                head.size, header.size
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
    check_head(&head, &keys)?;
    progress(header.size, header.size);
    Ok(VerifyReport {
        document: "export",
        tree_head: head,
        node_keys: header.node_keys,
        entries: header.size,
        disclosed_components: disclosed,
        withheld_components: withheld,
        entry: None,
    })
}

fn verify_receipt(text: &str, opts: &VerifyOptions) -> Result<VerifyReport, VerifyFailure> {
    let r: Receipt<'_> = serde_json::from_str(text).map_err(|e| {
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
    let seq = r.entry.seq;
    let (leaf, entry, d, w) = check_record(&r.entry, seq, &keys, None, None)?;
    let proof: Vec<Hash> = r.inclusion_proof.iter().map(|h| h.0).collect();
    verify_inclusion(&leaf, seq, r.tree_head.size, &proof, &r.tree_head.root)
        .map_err(|e| fail(Some(seq), None, format!("inclusion proof: {e}")))?;
    check_head(&r.tree_head, &keys)?;
    Ok(VerifyReport {
        document: "receipt",
        tree_head: r.tree_head,
        node_keys: r.node_keys,
        entries: 1,
        disclosed_components: d,
        withheld_components: w,
        entry: Some((entry, r.entry.openings)),
    })
}
