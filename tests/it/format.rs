//! The published byte format (`docs/ledger-format.md`) against the code.
//!
//! Every test vector written in the document is a constant here; the test recomputes it from the
//! fixed inputs, both with `ledger-node` and with an independent encoder that follows the
//! document's tables byte by byte, and checks that the document still contains it. So the code,
//! the document and this test cannot drift apart silently. A second test runs the independent
//! Python verifier `docs/examples/verify_export.py` on real exports and receipts, and on tampered
//! copies of them.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::{Signer, SigningKey};
use ledger_node::entry::{
    commitment, CommittedComponent, DisclosureClass, Entry, EntryBody, EventKind, Opening,
};
use ledger_node::export::{self, VerifyOptions};
use ledger_node::hash::{empty_root, leaf_hash, node_hash, Hash};
use ledger_node::merkle::{self, Frontier, NodeReader};
use ledger_node::sth::SignedTreeHead;
use ledger_node::{ComponentInput, EventInput, Ledger, LedgerOptions};
use sha2::{Digest, Sha256};

/// Seed of the ed25519 key of node 1 in every vector.
const SEED: [u8; 32] = [0x07; 32];
/// Salt of every component in the vectors (a real ledger draws 32 random bytes per component).
const SALT: [u8; 32] = [0x09; 32];

const PUBLIC_KEY: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
const EMPTY_ROOT: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const COMMITMENT_0_RESULT: &str =
    "158b6191a5298eef070abd1b93ddc02f11203994ee91f961269af69bc880957c";
const COMMITMENT_0_COST: &str = "5ed366ca4172b1efb42819d946867e19455f4460c22c7730ccadbe3a6426b851";
const SIGNATURE_0: &str =
    "a8619a0bd7e8a8f2d04d659521513ec44c29d70469739a68158b19925a37e585a2843bb6d423d1dd533f2b8e9ebf2eddcaa4a3c8abc283403df944079550570d";
const ENTRY_0: &str =
    "0100000000000000000000019b8d2b8c0000000000000000010000000c6c6f63616c3a696d706f72740000000b63616c6962726174696f6e0000001f28303129303038383438333830333532343928323129504d503938353631370100000014323032362d30312d30345431343a33303a30305a000100000007574f2d323030310000000200000006726573756c740000000b6d61696e74656e616e6365158b6191a5298eef070abd1b93ddc02f11203994ee91f961269af69bc880957c00000004636f73740000000966696e616e6369616c5ed366ca4172b1efb42819d946867e19455f4460c22c7730ccadbe3a6426b851a8619a0bd7e8a8f2d04d659521513ec44c29d70469739a68158b19925a37e585a2843bb6d423d1dd533f2b8e9ebf2eddcaa4a3c8abc283403df944079550570d";
const ENTRY_1: &str =
    "0100000000000000010000019b8d301fe000000000000000010000000c6c6f63616c3a696d706f727400000005616c61726d0000001f28303129303038383438333830333532343928323129504d503938353631370100000014323032362d30312d30355430373a35383a30305a00000000000200000005616c61726d0000000b6d61696e74656e616e636561bf5b8fa090453c654b5a2324e383b86e9da828631a6b14792406e2a14475fa0000000b70617469656e745f6d726e0000000770617469656e748261a0a04264b66d6e12b07a28c24628d9a1cfc41e71c2255734875fee8f8bbf9d52ce63dc07524543f82cd81ae0f66d513ec350c374189f93e52b53f4b02ed713bc1d7e072ad2576199395e63e29e6a991576f0d543c38e579ce92740b6db0f";
const ENTRY_2: &str =
    "0100000000000000020000019b8d34b3c000000000000000010000000c6c6f63616c3a696d706f72740000000b63616c6962726174696f6e0000001f28303129303038383438333830333532343928323129504d5039383536313700010000000000000000010000000a574f2d323030312d43310000000100000006726573756c740000000b6d61696e74656e616e6365fc63301df08fb4e2d08227c56f9d2caa3e017483cb724c43926fb4c5cb1a6aff89427dc66ef40c4bbb956670fa63a52c1c6ab39cc751c0f6a97d6bdf37328669804a204753d7257c250ded1e3113c31ae9052ae5c20fe8a6bcac3934365cbf0a";
const LEAF_0: &str = "cbfd5d1b4d1a92a15d3fc7a337acb37c8c1001ded83bd618309d186ce8a0e093";
const LEAF_1: &str = "dac40b24becb2026185d98e2a69c0b57b03e276f44c2b4f11441d348ded875ab";
const LEAF_2: &str = "0e7e0d42944de1004bb0c4203d66a3276bb1e2d27ab97d0700265ae05a5bffb9";
const NODE_01: &str = "8fc954f93ad16b42b095544945670fa6acd2f50f5ecb2bb6a795f88a6ca6dd58";
const ROOT_3: &str = "248b538d56d6f777306b382bae3077932e10031fc7f04afe3d3ee4d334630662";
const INCLUSION_0_OF_3: [&str; 2] = [
    "dac40b24becb2026185d98e2a69c0b57b03e276f44c2b4f11441d348ded875ab",
    "0e7e0d42944de1004bb0c4203d66a3276bb1e2d27ab97d0700265ae05a5bffb9",
];
const INCLUSION_2_OF_3: [&str; 1] =
    ["8fc954f93ad16b42b095544945670fa6acd2f50f5ecb2bb6a795f88a6ca6dd58"];
const CONSISTENCY_1_TO_3: [&str; 2] = [
    "dac40b24becb2026185d98e2a69c0b57b03e276f44c2b4f11441d348ded875ab",
    "0e7e0d42944de1004bb0c4203d66a3276bb1e2d27ab97d0700265ae05a5bffb9",
];
const CONSISTENCY_2_TO_3: [&str; 1] =
    ["0e7e0d42944de1004bb0c4203d66a3276bb1e2d27ab97d0700265ae05a5bffb9"];
const TREE_HEAD_MESSAGE: &str =
    "6d65646c65646765722f747265652d686561642f7631000000000000000003248b538d56d6f777306b382bae3077932e10031fc7f04afe3d3ee4d3346306620000019b8d627a800000000000000001";
const TREE_HEAD_SIGNATURE: &str =
    "71e76716c194fb51ac7b541bf4f538d5f9d58b1ca607c53eed460058b90ff2634858246dce4523bd2853cd071e885bf0f3a0fd707925c103687a9120d79f8108";
const TREE_HEAD_JSON: &str =
    "{\"size\":3,\"root\":\"248b538d56d6f777306b382bae3077932e10031fc7f04afe3d3ee4d334630662\",\"time_ms\":1767603600000,\"node_id\":1,\"signature\":\"71e76716c194fb51ac7b541bf4f538d5f9d58b1ca607c53eed460058b90ff2634858246dce4523bd2853cd071e885bf0f3a0fd707925c103687a9120d79f8108\"}";

const DEVICE: &str = "(01)00884838035249(21)PMP985617";

// Version 2 (docs/ledger-format.md §11.6): the same three entries without signatures, computed
// independently of ledger-node (Python's hashlib and the `cryptography` package's Ed25519).
const ENTRY_V2: [&str; 3] = [
    "0200000000000000000000019b8d2b8c0000000000000000010000000c6c6f63616c3a696d706f72740000000b63616c6962726174696f6e0000001f28303129303038383438333830333532343928323129504d503938353631370100000014323032362d30312d30345431343a33303a30305a000100000007574f2d323030310000000200000006726573756c740000000b6d61696e74656e616e6365158b6191a5298eef070abd1b93ddc02f11203994ee91f961269af69bc880957c00000004636f73740000000966696e616e6369616c5ed366ca4172b1efb42819d946867e19455f4460c22c7730ccadbe3a6426b851",
    "0200000000000000010000019b8d301fe000000000000000010000000c6c6f63616c3a696d706f727400000005616c61726d0000001f28303129303038383438333830333532343928323129504d503938353631370100000014323032362d30312d30355430373a35383a30305a00000000000200000005616c61726d0000000b6d61696e74656e616e636561bf5b8fa090453c654b5a2324e383b86e9da828631a6b14792406e2a14475fa0000000b70617469656e745f6d726e0000000770617469656e748261a0a04264b66d6e12b07a28c24628d9a1cfc41e71c2255734875fee8f8bbf",
    "0200000000000000020000019b8d34b3c000000000000000010000000c6c6f63616c3a696d706f72740000000b63616c6962726174696f6e0000001f28303129303038383438333830333532343928323129504d5039383536313700010000000000000000010000000a574f2d323030312d43310000000100000006726573756c740000000b6d61696e74656e616e6365fc63301df08fb4e2d08227c56f9d2caa3e017483cb724c43926fb4c5cb1a6aff",
];
const LEAF_V2: [&str; 3] = [
    "5064dc82138c6e45cb62fea417bfb3e0bae188c421d468de7bc2b9cd1ead4f5b",
    "879a1d606fa029a17a6fc36169a7c6402ffa366486ce3967336b247ee70845c3",
    "9cc11ef26a5f9c1cb8dd535673cf8045c3a6dcee5f08ff636f6c99f03567b36a",
];
const NODE_V2_01: &str = "5f793c343fd537ec74e03bd6766feb6c368e76b6bbcabbe14794578f5c44a6d9";
const ROOT_V2_3: &str = "fec54fc93d1dbd786e511db339d984b5740a4bb3a7865f44ee9bb82c2079aadc";
const TREE_HEAD_V2_MESSAGE: &str = "6d65646c65646765722f747265652d686561642f7631000000000000000003fec54fc93d1dbd786e511db339d984b5740a4bb3a7865f44ee9bb82c2079aadc0000019b8d627a800000000000000001";
const TREE_HEAD_V2_JSON: &str = r#"{"size":3,"root":"fec54fc93d1dbd786e511db339d984b5740a4bb3a7865f44ee9bb82c2079aadc","time_ms":1767603600000,"node_id":1,"signature":"e97245a17ef0c01dc42faa44047bfed04427353f9d258bbd75e5f919758cc643784349a7d04b1bd650006623ba07bb2e865ec9d3d085603bf3ce78f28aed3509"}"#;

fn key() -> SigningKey {
    SigningKey::from_bytes(&SEED)
}

/// One component of a vector entry: name, class, value (compact JSON text).
type Comp = (&'static str, DisclosureClass, &'static str);

/// The three vector entries, as (seq, body fields, components).
struct Spec {
    seq: u64,
    recorded_at_ms: i64,
    kind: EventKind,
    occurred_at: Option<&'static str>,
    corrects: Option<u64>,
    event_id: Option<&'static str>,
    components: Vec<Comp>,
}

fn specs() -> Vec<Spec> {
    vec![
        Spec {
            seq: 0,
            recorded_at_ms: 1_767_600_000_000,
            kind: EventKind::Calibration,
            occurred_at: Some("2026-01-04T14:30:00Z"),
            corrects: None,
            event_id: Some("WO-2001"),
            components: vec![
                ("result", DisclosureClass::Maintenance, "\"pass\""),
                (
                    "cost",
                    DisclosureClass::Financial,
                    "{\"amount\":90,\"currency\":\"EUR\"}",
                ),
            ],
        },
        Spec {
            seq: 1,
            recorded_at_ms: 1_767_600_300_000,
            kind: EventKind::Alarm,
            occurred_at: Some("2026-01-05T07:58:00Z"),
            corrects: None,
            event_id: None,
            components: vec![
                (
                    "alarm",
                    DisclosureClass::Maintenance,
                    "\"occlusion downstream\"",
                ),
                ("patient_mrn", DisclosureClass::Patient, "\"MRN0000001\""),
            ],
        },
        Spec {
            seq: 2,
            recorded_at_ms: 1_767_600_600_000,
            kind: EventKind::Calibration,
            occurred_at: None,
            corrects: Some(0),
            event_id: Some("WO-2001-C1"),
            components: vec![("result", DisclosureClass::Maintenance, "\"fail\"")],
        },
    ]
}

/// The entry built with `ledger-node`.
fn entry_with_ledger_node(s: &Spec) -> Entry {
    let body = EntryBody {
        recorded_at_ms: s.recorded_at_ms,
        node_id: 1,
        author: "local:import".into(),
        kind: s.kind,
        device_id: DEVICE.into(),
        occurred_at: s.occurred_at.map(Into::into),
        corrects: s.corrects,
        event_id: s.event_id.map(Into::into),
        components: s
            .components
            .iter()
            .map(|(name, class, value)| CommittedComponent {
                name: (*name).into(),
                class: *class,
                commitment: commitment(&SALT, name, *class, value),
            })
            .collect(),
    };
    let signature = Some(body.sign(&key()));
    Entry {
        seq: s.seq,
        body,
        signature,
    }
}

// ---- An encoder written from the document's tables alone, sharing no code with ledger-node. ----

fn doc_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn doc_commitment(name: &str, class: &str, value: &str) -> [u8; 32] {
    let mut m = b"medledger/component/v1\0".to_vec();
    m.extend_from_slice(&SALT);
    doc_str(&mut m, name);
    doc_str(&mut m, class);
    doc_str(&mut m, value);
    Sha256::digest(&m).into()
}

fn class_name(c: DisclosureClass) -> &'static str {
    match c {
        DisclosureClass::Device => "device",
        DisclosureClass::Maintenance => "maintenance",
        DisclosureClass::Patient => "patient",
        DisclosureClass::Financial => "financial",
        other => panic!("class {other:?} is not in the document"),
    }
}

fn doc_body(s: &Spec) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&s.recorded_at_ms.to_be_bytes());
    b.extend_from_slice(&1u64.to_be_bytes());
    doc_str(&mut b, "local:import");
    doc_str(
        &mut b,
        match s.kind {
            EventKind::Calibration => "calibration",
            EventKind::Alarm => "alarm",
            other => panic!("kind {other:?} not used by the vectors"),
        },
    );
    doc_str(&mut b, DEVICE);
    match s.occurred_at {
        None => b.push(0),
        Some(t) => {
            b.push(1);
            doc_str(&mut b, t);
        }
    }
    match s.corrects {
        None => b.push(0),
        Some(c) => {
            b.push(1);
            b.extend_from_slice(&c.to_be_bytes());
        }
    }
    match s.event_id {
        None => b.push(0),
        Some(id) => {
            b.push(1);
            doc_str(&mut b, id);
        }
    }
    b.extend_from_slice(&(s.components.len() as u32).to_be_bytes());
    for (name, class, value) in &s.components {
        doc_str(&mut b, name);
        doc_str(&mut b, class_name(*class));
        b.extend_from_slice(&doc_commitment(name, class_name(*class), value));
    }
    b
}

fn doc_entry(s: &Spec) -> Vec<u8> {
    let body = doc_body(s);
    let mut msg = b"medledger/entry/v1\0".to_vec();
    msg.extend_from_slice(&body);
    let sig = key().sign(&msg).to_bytes();
    let mut e = vec![0x01];
    e.extend_from_slice(&s.seq.to_be_bytes());
    e.extend_from_slice(&body);
    e.extend_from_slice(&sig);
    e
}

fn doc_leaf(entry: &[u8]) -> Hash {
    let mut m = vec![0x00];
    m.extend_from_slice(entry);
    Sha256::digest(&m).into()
}

fn doc_node(l: &Hash, r: &Hash) -> Hash {
    let mut m = vec![0x01];
    m.extend_from_slice(l);
    m.extend_from_slice(r);
    Sha256::digest(&m).into()
}

// ---- Perfect-subtree store in memory, filled the way the ledger's store fills it. ----

#[derive(Default)]
struct Mem {
    nodes: HashMap<(u8, u64), Hash>,
    frontier: Frontier,
}

impl Mem {
    fn push(&mut self, leaf: Hash) {
        let nodes = &mut self.nodes;
        self.frontier.push(leaf, |l, i, h| {
            nodes.insert((l, i), *h);
        });
    }
}

impl NodeReader for Mem {
    type Error = Infallible;
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, Infallible> {
        Ok(self.nodes[&(level, index)])
    }
}

fn ok<T>(r: Result<Result<T, merkle::ProofRequestError>, Infallible>) -> T {
    match r {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{e}"),
        Err(e) => match e {},
    }
}

fn hexes(v: &[Hash]) -> Vec<String> {
    v.iter().map(hex::encode).collect()
}

/// Fails unless docs/ledger-format.md (`doc`) contains the hex string or line `v`.
fn assert_in_doc(doc: &str, name: &str, v: &str) {
    assert!(
        doc.contains(v),
        "docs/ledger-format.md does not contain {name} = {v}"
    );
}

fn doc_text() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ledger-format.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

#[test]
fn test_vectors_match_code_and_document() {
    let doc = doc_text();
    let in_doc = |name: &str, v: &str| assert_in_doc(&doc, name, v);

    let pk = hex::encode(key().verifying_key().to_bytes());
    assert_eq!(pk, PUBLIC_KEY);
    in_doc("public key", PUBLIC_KEY);
    assert_eq!(hex::encode(empty_root()), EMPTY_ROOT);
    assert_eq!(hex::encode(Sha256::digest([])), EMPTY_ROOT);
    in_doc("empty root", EMPTY_ROOT);

    let specs = specs();
    let entries: Vec<Entry> = specs.iter().map(entry_with_ledger_node).collect();

    // Commitments of entry 0, both encoders.
    let c = &entries[0].body.components;
    assert_eq!(hex::encode(c[0].commitment), COMMITMENT_0_RESULT);
    assert_eq!(hex::encode(c[1].commitment), COMMITMENT_0_COST);
    assert_eq!(
        hex::encode(doc_commitment("result", "maintenance", "\"pass\"")),
        COMMITMENT_0_RESULT
    );
    in_doc("commitment of result", COMMITMENT_0_RESULT);
    in_doc("commitment of cost", COMMITMENT_0_COST);
    assert_eq!(
        hex::encode(entries[0].signature.expect("version 1")),
        SIGNATURE_0
    );
    in_doc("signature of entry 0", SIGNATURE_0);

    // Entries: ledger-node's encoder, the document's encoder and the decoder agree.
    let expected = [ENTRY_0, ENTRY_1, ENTRY_2];
    let leaves_expected = [LEAF_0, LEAF_1, LEAF_2];
    let mut mem = Mem::default();
    let mut leaves = Vec::new();
    for (i, (e, s)) in entries.iter().zip(&specs).enumerate() {
        let bytes = e.encode();
        assert_eq!(hex::encode(&bytes), expected[i], "entry {i}");
        assert_eq!(
            hex::encode(doc_entry(s)),
            expected[i],
            "entry {i}, doc encoder"
        );
        assert_eq!(Entry::decode(&bytes).as_ref(), Ok(e), "entry {i} decodes");
        assert!(e.verify_signature(&key().verifying_key()));
        in_doc("entry bytes", expected[i]);
        let leaf = leaf_hash(&bytes);
        assert_eq!(leaf, doc_leaf(&bytes));
        assert_eq!(hex::encode(leaf), leaves_expected[i], "leaf {i}");
        in_doc("leaf hash", leaves_expected[i]);
        mem.push(leaf);
        leaves.push(leaf);
    }

    // The 3-entry tree, its proofs, and their verification.
    let n01 = doc_node(&leaves[0], &leaves[1]);
    assert_eq!(node_hash(&leaves[0], &leaves[1]), n01);
    assert_eq!(hex::encode(n01), NODE_01);
    in_doc("interior node", NODE_01);
    let root = doc_node(&n01, &leaves[2]);
    assert_eq!(mem.frontier.root(), root);
    match merkle::root(&mem, 3) {
        Ok(r) => assert_eq!(r, root),
        Err(e) => match e {},
    }
    assert_eq!(hex::encode(root), ROOT_3);
    in_doc("root of 3", ROOT_3);

    let p0 = ok(merkle::inclusion_proof(&mem, 0, 3));
    assert_eq!(hexes(&p0), INCLUSION_0_OF_3);
    assert_eq!(
        merkle::verify_inclusion(&leaves[0], 0, 3, &p0, &root),
        Ok(())
    );
    let p2 = ok(merkle::inclusion_proof(&mem, 2, 3));
    assert_eq!(hexes(&p2), INCLUSION_2_OF_3);
    assert_eq!(
        merkle::verify_inclusion(&leaves[2], 2, 3, &p2, &root),
        Ok(())
    );
    for h in INCLUSION_0_OF_3.iter().chain(&INCLUSION_2_OF_3) {
        in_doc("inclusion proof hash", h);
    }
    let root1 = leaves[0];
    let root2 = n01;
    let c13 = ok(merkle::consistency_proof(&mem, 1, 3, 3));
    assert_eq!(hexes(&c13), CONSISTENCY_1_TO_3);
    assert_eq!(
        merkle::verify_consistency(1, 3, &c13, &root1, &root),
        Ok(())
    );
    let c23 = ok(merkle::consistency_proof(&mem, 2, 3, 3));
    assert_eq!(hexes(&c23), CONSISTENCY_2_TO_3);
    assert_eq!(
        merkle::verify_consistency(2, 3, &c23, &root2, &root),
        Ok(())
    );

    // The signed tree head over the 3 entries.
    let sth = SignedTreeHead::sign(3, root, 1_767_603_600_000, 1, &key());
    let msg = SignedTreeHead::message(3, &root, 1_767_603_600_000, 1);
    let mut doc_msg = b"medledger/tree-head/v1\0".to_vec();
    doc_msg.extend_from_slice(&3u64.to_be_bytes());
    doc_msg.extend_from_slice(&root);
    doc_msg.extend_from_slice(&1_767_603_600_000i64.to_be_bytes());
    doc_msg.extend_from_slice(&1u64.to_be_bytes());
    assert_eq!(msg, doc_msg);
    assert_eq!(hex::encode(&msg), TREE_HEAD_MESSAGE);
    in_doc("tree head message", TREE_HEAD_MESSAGE);
    assert_eq!(hex::encode(sth.signature), TREE_HEAD_SIGNATURE);
    in_doc("tree head signature", TREE_HEAD_SIGNATURE);
    assert!(sth.verify(&key().verifying_key()));
    let json = serde_json::to_string(&sth).expect("tree head serialises");
    assert_eq!(json, TREE_HEAD_JSON);
    in_doc("tree head JSON", TREE_HEAD_JSON);

    // The example export of the document: these entries, disclosing device and maintenance.
    let disclosed = [DisclosureClass::Device, DisclosureClass::Maintenance];
    let header = export::ExportHeader {
        format: export::EXPORT_FORMAT.into(),
        size: 3,
        node_keys: vec![export::NodeKey {
            node_id: 1,
            public_key: key().verifying_key().to_bytes(),
        }],
        disclosed_classes: disclosed.to_vec(),
    };
    let mut lines = vec![serde_json::to_string(&header).expect("header json")];
    for (e, s) in entries.iter().zip(&specs) {
        let openings = s
            .components
            .iter()
            .map(|(_, class, value)| {
                disclosed.contains(class).then(|| {
                    export::ExportOpening::Open(Opening {
                        value: (*value).into(),
                        salt: SALT,
                    })
                })
            })
            .collect();
        let record = export::EntryRecord {
            seq: e.seq,
            entry: hex::encode(e.encode()).into(),
            openings,
        };
        lines.push(serde_json::to_string(&record).expect("record json"));
    }
    example_export_verifies(lines, sth, &doc);
}

/// Ends an example export of the document (`lines`: header and entry lines) with the line of
/// `tree_head`, checks that every line is in the document and that both verifiers accept it
/// (the example discloses 3 values and withholds 2).
fn example_export_verifies(mut lines: Vec<String>, tree_head: SignedTreeHead, doc: &str) {
    let tail = export::ExportTail {
        tree_head,
        voters: vec![],
        cosignatures: vec![],
    };
    lines.push(serde_json::to_string(&tail).expect("tail json"));
    for l in &lines {
        assert!(
            doc.contains(l.as_str()),
            "docs/ledger-format.md does not contain the example export line {l}"
        );
    }
    let text = lines.join("\n") + "\n";
    let report = rust_verify(&text).expect("the example export verifies");
    assert_eq!(
        (report.disclosed_components, report.withheld_components),
        (3, 2)
    );
    let files = tempfile::tempdir().expect("tempdir");
    let path = files.path().join("example.jsonl");
    std::fs::write(&path, &text).expect("write example");
    let (code, stdout, stderr) = python_verify(&path, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// §11.6: entries of version 2 (no signature), their leaves, tree and signed head, from
/// ledger-node's encoder and from one written from the document's tables; both verifiers accept
/// the version 2 example export.
#[test]
fn version_2_vectors_match_code_and_document() {
    let doc = doc_text();
    let in_doc = |name: &str, v: &str| assert_in_doc(&doc, name, v);
    let specs = specs();
    let mut leaves = Vec::new();
    let mut lines = vec![serde_json::to_string(&export::ExportHeader {
        format: export::EXPORT_FORMAT.into(),
        size: 3,
        node_keys: vec![export::NodeKey {
            node_id: 1,
            public_key: key().verifying_key().to_bytes(),
        }],
        disclosed_classes: vec![DisclosureClass::Device, DisclosureClass::Maintenance],
    })
    .expect("header json")];
    for (i, s) in specs.iter().enumerate() {
        let mut e = entry_with_ledger_node(s);
        e.signature = None;
        let bytes = e.encode();
        assert_eq!(hex::encode(&bytes), ENTRY_V2[i], "entry {i}");
        // The document's encoder: version byte 2, seq, body; nothing after the body.
        let mut doc_bytes = vec![0x02];
        doc_bytes.extend_from_slice(&s.seq.to_be_bytes());
        doc_bytes.extend_from_slice(&doc_body(s));
        assert_eq!(doc_bytes, bytes, "entry {i}, doc encoder");
        assert_eq!(Entry::decode(&bytes).as_ref(), Ok(&e), "entry {i} decodes");
        in_doc("version 2 entry bytes", ENTRY_V2[i]);
        let leaf = leaf_hash(&bytes);
        assert_eq!(leaf, doc_leaf(&bytes));
        assert_eq!(hex::encode(leaf), LEAF_V2[i], "leaf {i}");
        in_doc("version 2 leaf hash", LEAF_V2[i]);
        leaves.push(leaf);
        let openings = s
            .components
            .iter()
            .map(|(_, class, value)| {
                matches!(
                    class,
                    DisclosureClass::Device | DisclosureClass::Maintenance
                )
                .then(|| {
                    export::ExportOpening::Open(Opening {
                        value: (*value).into(),
                        salt: SALT,
                    })
                })
            })
            .collect();
        lines.push(
            serde_json::to_string(&export::EntryRecord {
                seq: e.seq,
                entry: hex::encode(&bytes).into(),
                openings,
            })
            .expect("record json"),
        );
    }
    let n01 = doc_node(&leaves[0], &leaves[1]);
    assert_eq!(hex::encode(n01), NODE_V2_01);
    in_doc("version 2 interior node", NODE_V2_01);
    let root = doc_node(&n01, &leaves[2]);
    assert_eq!(hex::encode(root), ROOT_V2_3);
    in_doc("version 2 root of 3", ROOT_V2_3);
    let msg = SignedTreeHead::message(3, &root, 1_767_603_600_000, 1);
    assert_eq!(hex::encode(&msg), TREE_HEAD_V2_MESSAGE);
    in_doc("version 2 tree head message", TREE_HEAD_V2_MESSAGE);
    let sth = SignedTreeHead::sign(3, root, 1_767_603_600_000, 1, &key());
    let json = serde_json::to_string(&sth).expect("tree head serialises");
    assert_eq!(json, TREE_HEAD_V2_JSON);
    in_doc("version 2 tree head JSON", TREE_HEAD_V2_JSON);
    example_export_verifies(lines, sth, &doc);
}

/// A single-node ledger in `dir` with the key of the test vectors (node 1), so that its exports
/// carry that key.
async fn vector_key_ledger(dir: &Path) -> Ledger {
    std::fs::write(dir.join("node.key"), hex::encode(SEED)).expect("write key");
    Ledger::open(
        dir,
        LedgerOptions {
            node_id: 1,
            ..LedgerOptions::default()
        },
    )
    .await
    .expect("ledger opens")
}

/// A ledger of version 1 entries followed by version 2 entries (a cluster that moved to command
/// format 3): exports and receipts of both kinds verify with both verifiers, and every tamper
/// the version 2 entries open is refused by both, naming what is wrong.
#[tokio::test]
async fn mixed_version_exports_verify_and_version_2_tampering_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = vector_key_ledger(dir.path()).await;
    let ev = |i: u64| {
        event(
            EventKind::Calibration,
            vec![
                comp("result", DisclosureClass::Maintenance, &format!("\"r{i}\"")),
                comp("cost", DisclosureClass::Financial, &format!("{i}")),
            ],
            None,
        )
    };
    // Entries 0 and 1 signed (version 1, as a cluster below format 3 writes them), 2 and 3 not.
    for i in 0..4u64 {
        let cmd = if i < 2 {
            ledger_node::ledger::prepare(ev(i), "local:test", 1, &key(), 1_767_600_000_000)
        } else {
            ledger.prepare(ev(i), "local:test")
        }
        .expect("prepare");
        let outcome = ledger
            .submit(ledger_node::Command::Append(cmd))
            .await
            .expect("append");
        assert!(
            matches!(outcome, ledger_node::ApplyOutcome::Appended { .. }),
            "{outcome:?}"
        );
    }
    let head = ledger.tree_head().expect("tree head");
    let versions: Vec<u8> = (0..4)
        .map(|s| ledger.store().entry_bytes(s).expect("entry")[0])
        .collect();
    assert_eq!(versions, [1, 1, 2, 2]);
    let mut buf = Vec::new();
    export::write_export(ledger.store(), &head, &None, &mut buf).expect("export");
    let full = String::from_utf8(buf).expect("utf-8");
    let receipt = |seq: u64| {
        serde_json::to_string_pretty(
            &export::make_receipt(ledger.store(), seq, &head, &None).expect("receipt"),
        )
        .expect("receipt json")
            + "\n"
    };
    let files = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| -> PathBuf {
        let p = files.path().join(name);
        std::fs::write(&p, text).expect("write document");
        p
    };
    for (name, text) in [
        ("mixed.jsonl", full.clone()),
        ("receipt-v1.json", receipt(1)),
        ("receipt-v2.json", receipt(3)),
    ] {
        let report = rust_verify(&text).unwrap_or_else(|e| panic!("{name}: rust verifier: {e}"));
        assert_eq!(report.tree_head.size, 4, "{name}");
        let (code, stdout, stderr) = python_verify(&write(name, &text), &[]);
        assert_eq!(code, 0, "{name}: {stdout}{stderr}");
    }
    // The CLI says the same of the mixed export, and which entries rest on the tree head.
    let (code, stdout, stderr) = medledger(&["verify", &write("m.jsonl", &full).to_string_lossy()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("2 of version 1 (each with its own signature, checked), 2 of version 2"),
        "{stdout}"
    );
    assert_eq!(rust_verify(&full).expect("verifies").signed_entries, 2);

    let entry_hex = |text: &str, line: usize| -> String {
        let v: serde_json::Value =
            serde_json::from_str(text.lines().nth(line).expect("line")).expect("json");
        v["entry"].as_str().expect("entry").to_owned()
    };
    let set_entry =
        |text: &str, line: usize, hex: String| edit_line(text, line, |v| v["entry"] = hex.into());
    // Line 3 holds entry 2 (version 2), line 2 entry 1 (version 1); line 5 the tree head.
    let v2 = entry_hex(&full, 3);
    let v1 = entry_hex(&full, 2);
    let tamper: Vec<(&str, String, &str)> = vec![
        (
            "a byte of a version 2 entry changed",
            {
                // A byte of the author field: still decodes, its leaf is no longer the signed one.
                let mut e = v2.clone();
                let at = 2 * 35;
                let flipped = if &e[at..at + 1] == "6" { "7" } else { "6" };
                e.replace_range(at..at + 1, flipped);
                set_entry(&full, 3, e)
            },
            "root of the entries does not match the signed tree head",
        ),
        (
            "a version 2 entry beyond the signed head",
            {
                let mut lines: Vec<String> = full.lines().map(str::to_owned).collect();
                let mut extra: serde_json::Value =
                    serde_json::from_str(&lines[4]).expect("entry line");
                let mut e = v2.clone();
                // Entry 2's body again, as entry 4.
                e.replace_range(2..18, "0000000000000004");
                extra["seq"] = 4.into();
                extra["entry"] = e.into();
                extra["openings"] = serde_json::from_str(&lines[3])
                    .map(|v: serde_json::Value| v["openings"].clone())
                    .expect("openings");
                lines.insert(5, extra.to_string());
                let text = lines.join("\n") + "\n";
                edit_line(&text, 0, |v| v["size"] = 5.into())
            },
            "tree head is for 4 entries, the export has 5",
        ),
        (
            "a version 1 entry's version byte changed to 2",
            set_entry(&full, 2, format!("02{}", &v1[2..])),
            "64 trailing bytes after the entry",
        ),
        (
            "a version 2 entry's version byte changed to 1",
            set_entry(&full, 3, format!("01{}", &v2[2..])),
            "entry bytes end early",
        ),
        (
            "a version 2 entry given a signature",
            set_entry(&full, 3, format!("01{}{}", &v2[2..], "00".repeat(64))),
            "entry signature does not verify",
        ),
        (
            "the signature of the tree head changed",
            edit_line(&full, 5, |v| {
                let s = v["tree_head"]["signature"]
                    .as_str()
                    .expect("sig")
                    .to_owned();
                let flipped = if s.starts_with('0') { "1" } else { "0" };
                v["tree_head"]["signature"] = format!("{flipped}{}", &s[1..]).into();
            }),
            "tree head signature does not verify",
        ),
    ];
    for (what, text, why) in &tamper {
        assert_ne!(text, &full, "{what}: the tamper changed nothing");
        let err = rust_verify(text).expect_err(what).to_string();
        assert!(err.contains(why), "{what}: rust verifier said {err}");
        let (code, stdout, stderr) = python_verify(&write("tampered", text), &[]);
        assert_eq!(code, 1, "{what}: {stdout}{stderr}");
        assert!(
            stderr.contains(why),
            "{what}: python verifier said {stderr}"
        );
    }
    // A receipt of a version 2 entry whose byte changed: its leaf no longer leads to the root.
    let mut r: serde_json::Value = serde_json::from_str(&receipt(3)).expect("receipt");
    let mut e = r["entry"]["entry"].as_str().expect("entry").to_owned();
    e.replace_range(70..71, if &e[70..71] == "6" { "7" } else { "6" });
    r["entry"]["entry"] = e.into();
    let text = serde_json::to_string_pretty(&r).expect("json");
    let err = rust_verify(&text)
        .expect_err("tampered receipt")
        .to_string();
    assert!(err.contains("inclusion proof"), "{err}");
    let (code, _, stderr) = python_verify(&write("r.json", &text), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("inclusion proof"), "{stderr}");
}

// ---- The independent Python verifier against real exports and receipts. ----

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/verify_export.py")
}

/// Runs the Python verifier; returns (exit code, stdout, stderr).
pub(crate) fn python_verify(file: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new("python3")
        .arg(script())
        .args(extra)
        .arg(file)
        .output()
        .expect("python3 runs (the verifier needs Python 3)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rust_verify(text: &str) -> Result<export::VerifyReport, export::VerifyFailure> {
    export::verify(
        &mut std::io::Cursor::new(text.as_bytes()),
        &VerifyOptions::default(),
        &mut |_, _| {},
    )
}

fn comp(name: &str, class: DisclosureClass, value: &str) -> ComponentInput {
    ComponentInput {
        name: name.into(),
        class,
        value: value.into(),
    }
}

fn event(kind: EventKind, components: Vec<ComponentInput>, corrects: Option<u64>) -> EventInput {
    EventInput {
        kind,
        device_id: DEVICE.into(),
        occurred_at: Some("2026-01-04T15:30:00+01:00".into()),
        components,
        corrects,
        event_id: None,
    }
}

/// Replaces line `i` (0-based) of a JSON Lines text by `f(value)`.
fn edit_line(text: &str, i: usize, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut v: serde_json::Value = serde_json::from_str(&lines[i]).expect("line is JSON");
    f(&mut v);
    lines[i] = v.to_string();
    lines.join("\n") + "\n"
}

#[tokio::test]
async fn python_verifier_accepts_real_exports_and_refuses_tampered_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = vector_key_ledger(dir.path()).await;
    let events = [
        event(
            EventKind::DeviceRegistered,
            vec![comp("type", DisclosureClass::Device, "\"infusion-pump\"")],
            None,
        ),
        event(
            EventKind::Calibration,
            vec![
                comp("result", DisclosureClass::Maintenance, "\"pass\""),
                comp("cost", DisclosureClass::Financial, "{ \"amount\": 90 }"),
            ],
            None,
        ),
        event(
            EventKind::Alarm,
            vec![
                comp(
                    "alarm",
                    DisclosureClass::Maintenance,
                    "\"occlusion downstream\"",
                ),
                comp("patient_mrn", DisclosureClass::Patient, "\"MRN0000001\""),
            ],
            None,
        ),
        event(
            EventKind::Calibration,
            vec![comp("result", DisclosureClass::Maintenance, "\"fail\"")],
            Some(1),
        ),
    ];
    for ev in events {
        let outcome = ledger.append(ev, "local:test").await.expect("append");
        assert!(
            matches!(outcome, ledger_node::ApplyOutcome::Appended { .. }),
            "{outcome:?}"
        );
    }
    let head = ledger.tree_head().expect("tree head");
    assert_eq!(head.size, 4);

    let export_text = |disclose: &export::Disclosure| -> String {
        let mut buf = Vec::new();
        export::write_export(ledger.store(), &head, disclose, &mut buf).expect("export");
        String::from_utf8(buf).expect("utf-8")
    };
    let full = export_text(&None);
    let partial = export_text(&Some(BTreeSet::from([
        DisclosureClass::Device,
        DisclosureClass::Maintenance,
    ])));
    let receipt = serde_json::to_string_pretty(
        &export::make_receipt(
            ledger.store(),
            2,
            &head,
            &Some(BTreeSet::from([DisclosureClass::Maintenance])),
        )
        .expect("receipt"),
    )
    .expect("receipt json")
        + "\n";

    // The partial export withholds the financial and patient values as null openings.
    assert!(!partial.contains("MRN0000001") && full.contains("MRN0000001"));
    assert_eq!(
        partial.lines().nth(3).map(|l| l.contains("null")),
        Some(true)
    );
    assert!(partial.lines().next().is_some_and(|l| l.contains(&format!(
        "{{\"node_id\":1,\"public_key\":\"{PUBLIC_KEY}\"}}"
    ))));

    let files = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| -> PathBuf {
        let p = files.path().join(name);
        std::fs::write(&p, text).expect("write document");
        p
    };

    for (name, text, withheld) in [
        ("full.jsonl", &full, 0),
        ("partial.jsonl", &partial, 2),
        ("receipt.json", &receipt, 1),
    ] {
        let report = rust_verify(text).unwrap_or_else(|e| panic!("{name}: rust verifier: {e}"));
        assert_eq!(report.withheld_components, withheld, "{name}");
        let (code, stdout, stderr) = python_verify(&write(name, text), &[]);
        assert_eq!(code, 0, "{name}: {stdout}{stderr}");
        assert!(stdout.starts_with("valid "), "{name}: {stdout}");
        assert!(
            stdout.contains(&format!("{withheld} withheld")),
            "{name}: {stdout}"
        );
        assert!(!stdout.contains("NOT checked"), "{name}: {stdout}");
    }

    let tail = 5; // header, 4 entries, tree head
    let tampered: Vec<(&str, String)> = vec![
        (
            "disclosed value changed",
            partial.replace("occlusion downstream", "occlusion upstream"),
        ),
        (
            "entry byte changed",
            edit_line(&partial, 2, |v| {
                let mut e = v["entry"].as_str().expect("entry hex").to_owned();
                // A byte inside the author field: still decodes, no longer matches the signature.
                let at = 2 * 35;
                let flipped = if &e[at..at + 1] == "6" { "7" } else { "6" };
                e.replace_range(at..at + 1, flipped);
                v["entry"] = e.into();
            }),
        ),
        ("entries swapped", {
            let mut l: Vec<&str> = partial.lines().collect();
            l.swap(1, 2);
            l.join("\n") + "\n"
        }),
        ("last entry dropped", {
            let l: Vec<&str> = partial.lines().collect();
            let shorter = [&l[..4], &l[5..]].concat().join("\n") + "\n";
            edit_line(&shorter, 0, |v| v["size"] = 3.into())
        }),
        (
            "tree head time changed",
            edit_line(&partial, tail, |v| {
                let t = v["tree_head"]["time_ms"].as_i64().expect("time");
                v["tree_head"]["time_ms"] = (t + 1).into();
            }),
        ),
        ("data after the tree head", partial.clone() + "{}\n"),
        ("receipt proof changed", {
            let mut v: serde_json::Value = serde_json::from_str(&receipt).expect("receipt");
            let h = v["inclusion_proof"][0]
                .as_str()
                .expect("proof hash")
                .to_owned();
            let flipped = if h.starts_with('0') { "1" } else { "0" };
            v["inclusion_proof"][0] = format!("{flipped}{}", &h[1..]).into();
            serde_json::to_string_pretty(&v).expect("json") + "\n"
        }),
    ];
    for (what, text) in &tampered {
        assert_ne!(text, &partial, "{what}: the tamper changed nothing");
        assert_ne!(text, &receipt, "{what}: the tamper changed nothing");
        assert!(
            rust_verify(text).is_err(),
            "{what}: rust verifier accepted it"
        );
        let (code, stdout, stderr) = python_verify(&write("tampered", text), &[]);
        assert_eq!(code, 1, "{what}: {stdout}{stderr}");
        assert!(stderr.starts_with("invalid: "), "{what}: {stderr}");
    }

    // --skip-signatures says that it skipped them, and still catches changed bytes through the
    // Merkle root; a changed signed time is (only) a signature failure.
    let (code, stdout, _) = python_verify(&write("t", &tampered[4].1), &["--skip-signatures"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("NOT checked"), "{stdout}");
    let (code, _, stderr) = python_verify(&write("t", &tampered[1].1), &["--skip-signatures"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("root"), "{stderr}");

    // Pinned keys: the right key passes, another key is refused.
    let p = write("partial.jsonl", &partial);
    let (code, _, _) = python_verify(&p, &["--trusted-key", &format!("1={PUBLIC_KEY}")]);
    assert_eq!(code, 0);
    let other = hex::encode(SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes());
    let (code, _, stderr) = python_verify(&p, &["--trusted-key", &format!("1={other}")]);
    assert_eq!(code, 1, "{stderr}");

    // The script's own self-test: RFC 8032 vectors and this document's vectors.
    let out = Command::new("python3")
        .arg(script())
        .arg("--self-test")
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- `medledger verify --known-head`: rollback, fork, receipts with a consistency proof. ----

fn medledger(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(medledger_tests::bin("medledger"))
        .args(args)
        .output()
        .expect("run medledger");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Imports `lines` (JSON Lines text) into the CLI ledger in `data`.
fn import_lines(dir: &Path, data: &Path, name: &str, lines: &[&str]) {
    let file = dir.join(name);
    std::fs::write(&file, lines.join("\n") + "\n").expect("write import");
    let (code, out, err) = medledger(&[
        "import",
        "--data-dir",
        data.to_str().expect("utf8"),
        file.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "import: {out}{err}");
}

fn cli_export(data: &Path, out: &Path) {
    let (code, o, e) = medledger(&[
        "ledger",
        "export",
        "--data-dir",
        data.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "export: {o}{e}");
}

/// `medledger verify --known-head KNOWN FILE`, and the Python verifier with the same
/// arguments: both must give the same verdict (exit code, and for a refusal the same kind,
/// rollback or fork, and the same reason). Returns the CLI's (exit code, stdout, stderr).
fn verify_known(file: &Path, known: &Path) -> (i32, String, String) {
    let known_arg = known.to_str().expect("utf8");
    let (code, out, err) = medledger(&[
        "verify",
        "--known-head",
        known_arg,
        file.to_str().expect("utf8"),
    ]);
    let (py_code, py_out, py_err) = python_verify(file, &["--known-head", known_arg]);
    assert_eq!(
        code, py_code,
        "the two verifiers disagree on {} against {}:\nmedledger: {out}{err}\npython: {py_out}{py_err}",
        file.display(),
        known.display()
    );
    if code == 0 {
        // The same relation to the known head, in the same words.
        let relation = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("consistent with the known head"))
                .map(|l| l.rsplit(": ").next().unwrap_or_default().to_owned())
        };
        assert!(relation(&out).is_some(), "{out}");
        assert_eq!(
            relation(&out),
            relation(&py_out),
            "medledger: {out}\npython: {py_out}"
        );
    } else {
        // The CLI prints `INVALID FILE: reason`, the Python verifier `invalid: reason`; both
        // name a rollback or a fork the same way (the details of a failed proof may differ).
        let reason = out
            .split_once(": ")
            .map(|(_, r)| r.trim())
            .unwrap_or_default();
        let py_reason = py_err.trim().trim_start_matches("invalid: ");
        let kind = |r: &str| {
            ["rollback:", "fork:"]
                .into_iter()
                .find(|k| r.starts_with(k))
                .unwrap_or("invalid")
        };
        assert!(
            !reason.is_empty() && !py_reason.is_empty(),
            "{out}{err}{py_err}"
        );
        assert_eq!(
            kind(reason),
            kind(py_reason),
            "medledger: {out}\npython: {py_err}"
        );
        if kind(reason) == "rollback:" {
            assert_eq!(reason, py_reason);
        }
    }
    (code, out, err)
}

#[test]
fn verify_known_head_refuses_rollback_and_fork_and_takes_receipt_proofs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let sample = std::fs::read_to_string(
        medledger_tests::workspace_root().join("docs/examples/maintenance-history.jsonl"),
    )
    .expect("sample");
    let lines: Vec<&str> = sample.lines().collect();
    let data = p.join("a");
    std::fs::create_dir_all(&data).expect("mkdir");
    // A fixed node key, so that a second ledger can be signed with the same key.
    std::fs::write(data.join("node.key"), hex::encode(SEED)).expect("write key");

    import_lines(p, &data, "first.jsonl", &lines[..40]);
    let old = p.join("old.jsonl");
    cli_export(&data, &old);
    import_lines(p, &data, "second.jsonl", &lines[40..70]);
    let new = p.join("new.jsonl");
    cli_export(&data, &new);

    // The head as `GET /v1/head` serves it: the signed tree head object.
    let old_text = std::fs::read_to_string(&old).expect("old export");
    let tail: serde_json::Value =
        serde_json::from_str(old_text.lines().last().expect("tail")).expect("tail json");
    let head = p.join("head.json");
    std::fs::write(&head, tail["tree_head"].to_string()).expect("write head");

    // Newer than the known head (given as an export, or as a served head): consistent.
    for known in [&old, &head] {
        let (code, out, err) = verify_known(&new, known);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("consistent with the known head of 40 entries")
                && out.contains("extends it by 30 entries"),
            "{out}"
        );
    }
    // The same tree as the known head: consistent.
    let (code, out, _) = verify_known(&old, &head);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the same tree"), "{out}");

    // Rollback: the older export after the newer head, naming both sizes.
    let (code, out, _) = verify_known(&old, &new);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("INVALID")
            && out.contains("rollback")
            && out.contains("40 entries")
            && out.contains("70 entries"),
        "{out}"
    );

    // Fork: a second ledger with the same node key, whose history diverges after 20 events.
    let forked = p.join("b");
    std::fs::create_dir_all(&forked).expect("mkdir");
    std::fs::write(forked.join("node.key"), hex::encode(SEED)).expect("write key");
    let mut other: Vec<&str> = lines[..20].to_vec();
    other.extend(&lines[50..110]);
    import_lines(p, &forked, "other.jsonl", &other);
    let fork = p.join("fork.jsonl");
    cli_export(&forked, &fork);
    let (code, out, _) = medledger(&["verify", fork.to_str().expect("utf8")]);
    assert_eq!(code, 0, "the fork verifies on its own: {out}");
    for known in [&old, &new] {
        let (code, out, _) = verify_known(&fork, known);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("INVALID") && out.contains("fork"), "{out}");
    }

    // A receipt newer than the known head carries the consistency proof from its size.
    let receipt = p.join("receipt.json");
    let (code, o, e) = medledger(&[
        "ledger",
        "receipt",
        "--data-dir",
        data.to_str().expect("utf8"),
        "--seq",
        "55",
        "--since-size",
        "40",
        "--out",
        receipt.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "receipt: {o}{e}");
    let (code, out, err) = verify_known(&receipt, &old);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("consistent with the known head of 40 entries"),
        "{out}"
    );
    // A receipt as the known head: its tree head is used.
    let (code, out, err) = verify_known(&new, &receipt);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the same tree"), "{out}");
    // Against the forked ledger's head it is refused.
    let fork_head = p.join("fork-old.jsonl");
    {
        // The forked ledger's head at 40 entries: export a copy of its first 40 events.
        let d = p.join("c");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("node.key"), hex::encode(SEED)).expect("write key");
        import_lines(p, &d, "other40.jsonl", &other[..40]);
        cli_export(&d, &fork_head);
    }
    let (code, out, _) = verify_known(&receipt, &fork_head);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("fork"), "{out}");
    // A tampered consistency proof is refused.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&receipt).expect("receipt")).expect("json");
    let h = v["consistency"]["proof"][0]
        .as_str()
        .expect("a proof hash")
        .to_owned();
    let flipped = if h.starts_with('0') { "1" } else { "0" };
    v["consistency"]["proof"][0] = format!("{flipped}{}", &h[1..]).into();
    let bad = p.join("bad-receipt.json");
    std::fs::write(&bad, serde_json::to_string_pretty(&v).expect("json")).expect("write");
    let (code, out, _) = verify_known(&bad, &old);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("consistency proof"), "{out}");
    // A receipt without the proof (version 1) still verifies on its own, and says what is
    // missing against a known head.
    let plain = p.join("plain.json");
    let (code, o, e) = medledger(&[
        "ledger",
        "receipt",
        "--data-dir",
        data.to_str().expect("utf8"),
        "--seq",
        "55",
        "--out",
        plain.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "receipt: {o}{e}");
    assert!(!std::fs::read_to_string(&plain)
        .expect("receipt")
        .contains("consistency"));
    let (code, out, _) = medledger(&["verify", plain.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = verify_known(&plain, &old);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--since-size 40"), "{out}");
}

#[test]
fn verdict_says_whether_a_trust_anchor_was_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let data = p.join("a");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("node.key"), hex::encode(SEED)).expect("write key");
    let sample = std::fs::read_to_string(
        medledger_tests::workspace_root().join("docs/examples/maintenance-history.jsonl"),
    )
    .expect("sample");
    let lines: Vec<&str> = sample.lines().take(5).collect();
    import_lines(p, &data, "five.jsonl", &lines);
    let exp = p.join("export.jsonl");
    cli_export(&data, &exp);
    let e = exp.to_str().expect("utf8");
    for args in [vec!["verify", e], vec!["verify", "--quiet", e]] {
        let (code, out, _) = medledger(&args);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("verified against the keys the file carries, not against a trust anchor"),
            "{args:?}: {out}"
        );
    }
    let pin = format!("1={PUBLIC_KEY}");
    let (code, out, _) = medledger(&["verify", "--trusted-key", &pin, e]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("verified against the trusted keys given"),
        "{out}"
    );
    assert!(!out.contains("not against a trust anchor"), "{out}");
}

/// §9.6: a checkpoint co-signed by other gateways. Every replica's apply records the
/// co-signatures only if each verifies over the same size and root, its voter set is the
/// membership applied at its entry and a majority of it signed; the export and receipt cut at it
/// carry the voter set and co-signatures; `verify` requires a majority of that voter set by
/// default (naming who signed and who did not) and `--quorum N` raises it; one gateway's own
/// history (no co-signatures, as every version 1 file) verifies alone and is refused with
/// `--quorum 2`; the Python verifier agrees on every file.
#[test]
fn cosigned_checkpoints_meet_a_quorum_and_one_gateways_history_does_not() {
    use ledger_node::{ApplyOutcome, Command, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let keys: Vec<SigningKey> = (1..=3u8)
        .map(|i| SigningKey::from_bytes(&[i; 32]))
        .collect();
    let mut cmds: Vec<Command> = keys
        .iter()
        .zip(1u64..)
        .map(|(k, id)| Command::RegisterNode {
            node_id: id,
            public_key: k.verifying_key().to_bytes(),
        })
        .collect();
    let append = |i: u64| {
        let ev = event(
            EventKind::Calibration,
            vec![comp("result", DisclosureClass::Maintenance, "\"pass\"")],
            None,
        );
        let node = i % 3;
        Command::Append(
            ledger_node::ledger::prepare(ev, "local:test", node + 1, &keys[node as usize], 1)
                .expect("prepare"),
        )
    };
    cmds.extend((0..5u64).map(append));
    store.apply(&cmds, &[]).expect("apply");
    // Readers see what is flushed.
    store.flush_blocking().expect("flush");
    let root = store.root(5).expect("root");
    let sign = |node: u64, root: Hash| {
        SignedTreeHead::sign(5, root, 1_767_603_600_000, node, &keys[node as usize - 1])
    };
    let head = sign(1, root);
    // As in Raft: the voter set applied at the checkpoint's entry is 1, 2, 3.
    let cosigned = |voters: Vec<u64>, cosignatures: Vec<SignedTreeHead>| {
        [Command::CosignedCheckpoint {
            head: head.clone(),
            voters,
            cosignatures,
        }]
    };
    let apply_in_raft = |cmds: &[Command]| {
        store
            .apply_in(cmds, |_| 2, |_| Some(vec![1, 2, 3]), &[])
            .expect("apply")
    };
    // A co-signature over another root, twice by one node, a voter set that is not the
    // membership applied (one gateway claiming a cluster of its own, or one of five), one out
    // of order, co-signers short of a majority, or no membership known at all (outside Raft):
    // the whole checkpoint is refused.
    for (bad, why) in [
        (
            cosigned(vec![1, 2, 3], vec![sign(2, [7; 32])]),
            "co-signature of node 2 is over another tree",
        ),
        (
            cosigned(vec![1, 2, 3], vec![sign(2, root), sign(2, root)]),
            "node 2 signs the checkpoint twice",
        ),
        (
            cosigned(vec![1], vec![sign(2, root)]),
            "voter set [1] is not the cluster's voters [1, 2, 3]",
        ),
        (
            cosigned(vec![1, 2, 3, 4, 5], vec![sign(2, root), sign(3, root)]),
            "voter set [1, 2, 3, 4, 5] is not the cluster's voters [1, 2, 3]",
        ),
        (
            cosigned(vec![2, 1, 3], vec![sign(2, root)]),
            "not a set of node ids in ascending order",
        ),
        // As development builds before voter sets wrote it: it still decodes, and is refused.
        (
            [
                serde_json::from_value(serde_json::json!({"CosignedCheckpoint": {
                "head": head, "cosignatures": [sign(2, root)]}}))
                .expect("an old co-signed checkpoint decodes"),
            ],
            "without a voter set",
        ),
    ] {
        let out = apply_in_raft(&bad);
        assert!(
            matches!(&out[..], [ApplyOutcome::Refused { reason }] if reason.contains(why)),
            "{why}: {out:?}"
        );
    }
    let out = store
        .apply_in(
            &cosigned(vec![1, 2, 3, 4], vec![sign(2, root)]),
            |_| 2,
            |_| Some(vec![1, 2, 3, 4]),
            &[],
        )
        .expect("apply");
    assert!(
        matches!(&out[..], [ApplyOutcome::Refused { reason }]
            if reason.contains("signed by 2 of its 4 voters (nodes 1, 2, 3, 4): nodes 1, 2 \
                                signed it, nodes 3, 4 did not: fewer than a majority")),
        "{out:?}"
    );
    let out = store
        .apply(&cosigned(vec![1, 2, 3], vec![sign(2, root)]), &[])
        .expect("apply");
    assert!(
        matches!(&out[..], [ApplyOutcome::Refused { reason }] if reason.contains("outside Raft")),
        "{out:?}"
    );
    assert!(store.latest_checkpoint().expect("checkpoint").is_none());
    let out = apply_in_raft(&cosigned(vec![1, 2, 3], vec![sign(2, root), sign(3, root)]));
    assert_eq!(out, vec![ApplyOutcome::Checkpointed { size: 5 }]);
    // A plain checkpoint after it: exports stay cut at the co-signed one, a receipt of the
    // newer entry at the plain one.
    store.apply(&[append(5)], &[]).expect("apply");
    store.flush_blocking().expect("flush");
    let plain = SignedTreeHead::sign(6, store.root(6).expect("root"), 2, 1, &keys[0]);
    let out = store
        .apply(&[Command::Checkpoint(plain.clone())], &[])
        .expect("apply");
    assert_eq!(out, vec![ApplyOutcome::Checkpointed { size: 6 }]);
    store.flush_blocking().expect("flush");
    assert_eq!(
        export::recorded_cut(&store, 0).expect("cut"),
        Some(head.clone())
    );
    assert_eq!(export::recorded_cut(&store, 6).expect("cut"), Some(plain));
    let mut buf = Vec::new();
    export::write_export(&store, &head, &None, &mut buf).expect("export");
    let cosigned = String::from_utf8(buf).expect("utf-8");
    let tail = cosigned.lines().last().expect("tail");
    assert!(
        tail.contains("\"voters\":[1,2,3]") && tail.contains("\"cosignatures\""),
        "{tail}"
    );
    let verify_known = |text: &str, quorum: usize, known: Option<&str>| {
        let mut opts = VerifyOptions {
            quorum,
            ..VerifyOptions::default()
        };
        if let Some(k) = known {
            let k = export::read_known(&mut std::io::Cursor::new(k.as_bytes())).expect("known");
            opts.known_head = Some(k.head);
            opts.known_voters = k.voters;
            opts.known_cosignatures = k.cosignatures;
        }
        export::verify(
            &mut std::io::Cursor::new(text.as_bytes()),
            &opts,
            &mut |_, _| {},
        )
    };
    let verify = |text: &str, quorum: usize| verify_known(text, quorum, None);
    let report = verify(&cosigned, 3).expect("three gateways signed it");
    assert_eq!(report.head_signers, vec![1, 2, 3]);
    assert_eq!(report.voters, vec![1, 2, 3]);
    // The receipt cut at the checkpoint carries the voter set and co-signatures too.
    let receipt = serde_json::to_string_pretty(
        &export::make_receipt(&store, 3, &head, &None).expect("receipt"),
    )
    .expect("json");
    assert_eq!(
        verify(&receipt, 0).expect("receipt").head_signers,
        vec![1, 2, 3]
    );
    // Co-signatures dropped from the file: a majority of its voters is required by default,
    // naming who signed and who did not; a higher --quorum is required when asked.
    let (tail_line, receipt_seq) = (6, 3);
    let one_of_three = edit_line(&cosigned, tail_line, |v| {
        v["cosignatures"] = serde_json::json!([]);
    });
    let err = verify(&one_of_three, 0).expect_err("one of three voters");
    assert!(
        err.reason.contains(
            "signed by 1 of its 3 voters (nodes 1, 2, 3): node 1 signed it, nodes 2, 3 did not: \
             fewer than a majority (2)"
        ),
        "{err}"
    );
    let two_of_three = edit_line(&cosigned, tail_line, |v| {
        v["cosignatures"].as_array_mut().expect("array").pop();
    });
    verify(&two_of_three, 0).expect("two of three is a majority");
    let err = verify(&two_of_three, 3).expect_err("--quorum 3");
    assert!(
        err.reason.contains("node 3 did not")
            && err
                .reason
                .contains("fewer than the 3 gateways the quorum requires"),
        "{err}"
    );
    let receipt_short = {
        let mut v: serde_json::Value = serde_json::from_str(&receipt).expect("json");
        v["cosignatures"] = serde_json::json!([]);
        assert_eq!(v["entry"]["seq"], receipt_seq);
        serde_json::to_string_pretty(&v).expect("json")
    };
    let err = verify(&receipt_short, 0).expect_err("receipt of one of three");
    assert!(err.reason.contains("nodes 2, 3 did not"), "{err}");
    // Co-signatures without the voter set they were meant to meet.
    let no_voters = edit_line(&cosigned, tail_line, |v| {
        v.as_object_mut().expect("object").remove("voters");
    });
    let err = verify(&no_voters, 0).expect_err("no voter set");
    assert!(err.reason.contains("no voter set"), "{err}");
    // A known head is held to its own voter set as well.
    verify_known(&cosigned, 0, Some(&two_of_three)).expect("known head of two of three");
    let err = verify_known(&cosigned, 0, Some(&one_of_three)).expect_err("known head short");
    assert!(
        err.reason
            .contains("the known head of 5 entries is signed by 1 of its 3 voters"),
        "{err}"
    );
    // A co-signature tampered with: refused, naming its node.
    let tampered = edit_line(&cosigned, 6, |v| {
        v["cosignatures"][1]["time_ms"] = serde_json::json!(1);
    });
    let err = verify(&tampered, 0).expect_err("tampered co-signature");
    assert!(
        err.reason
            .contains("co-signature of node 3 signature does not verify"),
        "{err}"
    );

    // One gateway's own history: node 1's key alone signed it (another ledger, same key).
    let forged_dir = tempfile::tempdir().expect("tempdir");
    let forged = Store::open(forged_dir.path()).expect("store");
    let mut cmds = vec![Command::RegisterNode {
        node_id: 1,
        public_key: keys[0].verifying_key().to_bytes(),
    }];
    cmds.push(Command::Append(
        ledger_node::ledger::prepare(
            event(
                EventKind::Calibration,
                vec![comp("result", DisclosureClass::Maintenance, "\"fail\"")],
                None,
            ),
            "local:test",
            1,
            &keys[0],
            1,
        )
        .expect("prepare"),
    ));
    forged.apply(&cmds, &[]).expect("apply");
    forged.flush_blocking().expect("flush");
    let forged_head = SignedTreeHead::sign(1, forged.root(1).expect("root"), 2, 1, &keys[0]);
    let mut buf = Vec::new();
    export::write_export(&forged, &forged_head, &None, &mut buf).expect("export");
    let forged_text = String::from_utf8(buf).expect("utf-8");
    verify(&forged_text, 0).expect("on its own, it verifies");
    let err = verify(&forged_text, 2).expect_err("one gateway's history");
    assert!(
        err.reason.contains("signed by node 1 only") && err.reason.contains("2 gateways"),
        "{err}"
    );
    // Like every version 1 export, it carries no co-signatures, and verifies as before.
    assert!(!forged_text.contains("cosignatures"));

    // The Python verifier, written from the document, agrees.
    let files = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let (c, o, e) = python_verify(&write("cosigned.jsonl", &cosigned), &["--quorum", "3"]);
    assert_eq!(c, 0, "{e}");
    assert!(o.contains("signed by 3 of its 3 voters"), "{o}");
    let (c, _, e) = python_verify(&write("receipt.json", &receipt), &[]);
    assert_eq!(c, 0, "{e}");
    for (name, text, args, why) in [
        (
            "one-of-three.jsonl",
            &one_of_three,
            &[][..],
            "signed by 1 of its 3 voters (nodes 1, 2, 3): node 1 signed it, nodes 2, 3 did not",
        ),
        (
            "two-of-three.jsonl",
            &two_of_three,
            &["--quorum", "3"][..],
            "fewer than the 3 gateways the quorum requires",
        ),
        (
            "receipt-short.json",
            &receipt_short,
            &[][..],
            "nodes 2, 3 did not",
        ),
        ("no-voters.jsonl", &no_voters, &[][..], "no voter set"),
    ] {
        let (c, _, e) = python_verify(&write(name, text), args);
        assert_eq!(c, 1, "{name}: {e}");
        assert!(e.contains(why), "{name}: {e}");
    }
    let (c, _, e) = python_verify(&write("two-of-three.jsonl", &two_of_three), &[]);
    assert_eq!(c, 0, "{e}");
    let (c, _, e) = python_verify(&write("tampered.jsonl", &tampered), &[]);
    assert_eq!(c, 1, "{e}");
    assert!(
        e.contains("co-signature of node 3 signature does not verify"),
        "{e}"
    );
    let (c, _, e) = python_verify(&write("forged.jsonl", &forged_text), &["--quorum", "2"]);
    assert_eq!(c, 1, "{e}");
    assert!(e.contains("signed by node(s) 1 only"), "{e}");
    // Its known head is held to its own voter set too (§9.4), and one key's own history is a
    // fork of the co-signed one.
    let cosigned_path = write("cosigned.jsonl", &cosigned);
    let known = |name: &str, text: &str| {
        let k = write(name, text);
        python_verify(&cosigned_path, &["--known-head", k.to_str().expect("utf8")])
    };
    let (c, o, e) = known("known-two.jsonl", &two_of_three);
    assert_eq!(c, 0, "{e}");
    assert!(o.contains("the same tree"), "{o}");
    let (c, o, e) = known("known-receipt.json", &receipt);
    assert_eq!(c, 0, "{e}");
    assert!(o.contains("the same tree"), "{o}");
    let (c, _, e) = known("known-one.jsonl", &one_of_three);
    assert_eq!(c, 1, "{e}");
    assert!(
        e.contains("the known head of 5 entries is signed by 1 of its 3 voters"),
        "{e}"
    );
    let (c, _, e) = known("forged-known.jsonl", &forged_text);
    assert_eq!(c, 1, "{e}");
    assert!(
        e.contains("fork: the export's first 1 entries have root"),
        "{e}"
    );
    let err = verify_known(&cosigned, 0, Some(&forged_text)).expect_err("fork");
    assert_eq!(err.kind, export::FailureKind::Fork, "{err}");
}
