//! Signed tree heads: a node's signature over (size, root, time, node id).

use ed25519_dalek::{Signature, Signer, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hash::Hash;

/// Domain separator for a tree head signature.
pub const TREE_HEAD_DOMAIN: &[u8] = b"medledger/tree-head/v1\0";

/// A tree head and the signature of the node that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTreeHead {
    pub size: u64,
    #[serde(with = "crate::entry::hex32")]
    pub root: Hash,
    /// When the head was signed, Unix milliseconds.
    pub time_ms: i64,
    pub node_id: u64,
    #[serde(with = "hex64")]
    pub signature: [u8; 64],
}

impl SignedTreeHead {
    /// The signed message: domain, size, root, time, node id.
    pub fn message(size: u64, root: &Hash, time_ms: i64, node_id: u64) -> Vec<u8> {
        let mut m = Vec::with_capacity(TREE_HEAD_DOMAIN.len() + 56);
        m.extend_from_slice(TREE_HEAD_DOMAIN);
        m.extend_from_slice(&size.to_be_bytes());
        m.extend_from_slice(root);
        m.extend_from_slice(&time_ms.to_be_bytes());
        m.extend_from_slice(&node_id.to_be_bytes());
        m
    }

    /// Signs a head.
    pub fn sign(
        size: u64,
        root: Hash,
        time_ms: i64,
        node_id: u64,
        key: &impl Signer<Signature>,
    ) -> Self {
        let signature = key
            .sign(&Self::message(size, &root, time_ms, node_id))
            .to_bytes();
        Self {
            size,
            root,
            time_ms,
            node_id,
            signature,
        }
    }

    /// Checks the signature with the node's public key.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let sig = Signature::from_bytes(&self.signature);
        key.verify_strict(
            &Self::message(self.size, &self.root, self.time_ms, self.node_id),
            &sig,
        )
        .is_ok()
    }
}

/// A checkpoint co-signed by the cluster's voters (docs/ledger-format.md §9.6): the recording
/// gateway's tree head, the voter set of the Raft membership in force at the checkpoint's log
/// entry (as every gateway's apply checked it), and the other gateways' signatures of the same
/// size and root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cosigned {
    pub tree_head: SignedTreeHead,
    /// Node ids of the voting members, ascending.
    pub voters: Vec<u64>,
    pub cosignatures: Vec<SignedTreeHead>,
}

/// How many of `voters` voters are a majority.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// Whether `voters` is a voter set as the format writes it: not empty, ascending, no node twice.
pub fn is_voter_set(voters: &[u64]) -> bool {
    !voters.is_empty() && voters.windows(2).all(|w| w[0] < w[1])
}

/// The sentence naming who of `voters` signed (`signers`) and who did not, for refusals:
/// "signed by 1 of its 3 voters (nodes 1, 2, 3): node 1 signed it, nodes 2, 3 did not".
pub fn describe_signers(voters: &[u64], signers: &[u64]) -> String {
    let nodes = |ids: &[u64]| {
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        match ids.len() {
            0 => "no node".to_owned(),
            1 => format!("node {}", list[0]),
            _ => format!("nodes {}", list.join(", ")),
        }
    };
    let (signed, missing): (Vec<u64>, Vec<u64>) = voters.iter().partition(|v| signers.contains(v));
    format!(
        "signed by {} of its {} voters ({}): {} signed it, {} did not",
        signed.len(),
        voters.len(),
        nodes(voters),
        nodes(&signed),
        nodes(&missing)
    )
}

/// Serde helper: a 64-byte signature as 128 hex digits.
pub mod hex64 {
    use serde::{Deserializer, Serializer};
    /// Serialises as hex in text formats, as raw bytes in binary ones (see
    /// [`crate::entry::fixed_bytes`]).
    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        crate::entry::fixed_bytes::serialize(v, s)
    }
    /// Parses 128 lowercase hex digits, or (binary formats) 64 raw bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        crate::entry::fixed_bytes::deserialize(d)
    }
}

/// An optional 64-byte signature: absent (skip it when serialising) or as [`hex64`].
pub mod opt_hex64 {
    use serde::{Deserializer, Serializer};
    /// Writes the signature as [`super::hex64`] does; call with `skip_serializing_if =
    /// "Option::is_none"` so that `None` is never written.
    pub fn serialize<S: Serializer>(v: &Option<[u8; 64]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::hex64::serialize(v, s),
            None => s.serialize_none(),
        }
    }
    /// Reads a present signature (with `default` for an absent one).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 64]>, D::Error> {
        super::hex64::deserialize(d).map(Some)
    }
}
