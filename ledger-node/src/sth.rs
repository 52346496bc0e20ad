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
