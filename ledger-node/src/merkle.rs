//! Merkle tree algorithms of RFC 9162 section 2.1: tree hash, inclusion and consistency proofs, and
//! their verification.
//!
//! Proof generation reads only hashes of *perfect* subtrees (a power-of-two number of leaves starting
//! at a multiple of that power), which the store writes as entries are appended. Every subtree the
//! RFC recursion asks for is either perfect (one read) or the one ragged right edge of the tree,
//! which is the fold of at most log2(n) perfect subtrees; so a proof costs O(log n) reads.

use crate::hash::{empty_root, node_hash, Hash};

/// Source of perfect-subtree hashes: `perfect(level, index)` is the hash of leaves
/// `[index << level, (index + 1) << level)`.
pub trait NodeReader {
    /// The error a failed read gives.
    type Error;
    /// Hash of the perfect subtree at `level` and `index`.
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// Why a proof request cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofRequestError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// A consistency proof was asked for sizes that are not `0 < old <= new <= size`.
    #[error("no consistency proof from size {old} to size {new} (tree size {size})")]
    BadSizes { old: u64, new: u64, size: u64 },
}

/// Largest power of two strictly smaller than `n` (for `n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[start:end]) as defined by RFC 9162, for the ranges the RFC recursion produces
/// (`start` a multiple of the largest power of two below `end - start`).
pub fn subtree_hash<R: NodeReader>(r: &R, start: u64, end: u64) -> Result<Hash, R::Error> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return r.perfect(n.trailing_zeros() as u8, start / n);
    }
    let k = split(n);
    let left = subtree_hash(r, start, start + k)?;
    let right = subtree_hash(r, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// Root hash of the first `size` leaves.
pub fn root<R: NodeReader>(r: &R, size: u64) -> Result<Hash, R::Error> {
    subtree_hash(r, 0, size)
}

/// Inclusion proof (audit path) of leaf `index` in the tree of `size` leaves, leaf side first.
pub fn inclusion_proof<R: NodeReader>(
    r: &R,
    index: u64,
    size: u64,
) -> Result<Result<Vec<Hash>, ProofRequestError>, R::Error> {
    if index >= size {
        return Ok(Err(ProofRequestError::IndexOutOfRange { index, size }));
    }
    let mut path = Vec::new();
    let (mut start, mut end) = (0u64, size);
    // Walk from the root down; siblings are collected root-first and reversed at the end.
    while end - start > 1 {
        let k = split(end - start);
        if index < start + k {
            path.push(subtree_hash(r, start + k, end)?);
            end = start + k;
        } else {
            path.push(subtree_hash(r, start, start + k)?);
            start += k;
        }
    }
    path.reverse();
    Ok(Ok(path))
}

/// Consistency proof between the tree of `old` leaves and the tree of `new` leaves
/// (RFC 9162 section 2.1.4.1), in the RFC's order.
pub fn consistency_proof<R: NodeReader>(
    r: &R,
    old: u64,
    new: u64,
    size: u64,
) -> Result<Result<Vec<Hash>, ProofRequestError>, R::Error> {
    if old == 0 || old > new || new > size {
        return Ok(Err(ProofRequestError::BadSizes { old, new, size }));
    }
    let mut proof = Vec::new();
    if old == new {
        return Ok(Ok(proof));
    }
    // SUBPROOF(m, D[start:end], b), iteratively; siblings are gathered root-first.
    let (mut start, mut end) = (0u64, new);
    let m = old;
    let mut complete = true;
    loop {
        let n = end - start;
        let mm = m - start;
        if mm == n {
            if !complete {
                proof.push(subtree_hash(r, start, end)?);
            }
            break;
        }
        let k = split(n);
        if mm <= k {
            proof.push(subtree_hash(r, start + k, end)?);
            end = start + k;
        } else {
            proof.push(subtree_hash(r, start, start + k)?);
            start += k;
            complete = false;
        }
    }
    proof.reverse();
    Ok(Ok(proof))
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The proof has the wrong number of hashes for the sizes it claims.
    #[error("proof has the wrong length")]
    WrongLength,
    /// The proof does not lead to the expected root.
    #[error("proof does not lead to the expected root")]
    RootMismatch,
    /// Sizes or indexes out of range.
    #[error("index or sizes out of range")]
    OutOfRange,
}

/// RFC 9162 section 2.1.3.2: verifies that `leaf` is leaf `index` of the tree of `size` leaves
/// with root `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange);
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 section 2.1.4.2: verifies that the tree of `old` leaves with root `old_root` is a prefix
/// of the tree of `new` leaves with root `new_root`.
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::OutOfRange);
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    if fn_ & 1 == 1 {
        while fn_ & 1 == 1 {
            fn_ >>= 1;
            sn >>= 1;
        }
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// An append-only accumulator of leaf hashes that keeps only the perfect subtrees on the right edge
/// (at most 64 hashes): what a verifier streaming an export needs to recompute the root, and what
/// the writer uses to produce perfect-subtree hashes as leaves arrive.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// `stack[i]` is the hash of the perfect subtree of the level given by the i-th set bit of
    /// `size`, from the highest level (leftmost) down.
    stack: Vec<(u8, Hash)>,
}

impl Frontier {
    /// An empty frontier.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Rebuilds the frontier of a tree of `size` leaves from its perfect subtrees.
    pub fn from_reader<R: NodeReader>(r: &R, size: u64) -> Result<Self, R::Error> {
        let mut stack = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1u64 << level) != 0 {
                stack.push((level, r.perfect(level, start >> level)?));
                start += 1u64 << level;
            }
        }
        Ok(Self { size, stack })
    }

    /// Appends one leaf hash; calls `emit(level, index, hash)` for every perfect subtree completed,
    /// the leaf itself included.
    pub fn push(&mut self, leaf: Hash, mut emit: impl FnMut(u8, u64, &Hash)) {
        let index = self.size;
        emit(0, index, &leaf);
        let mut h = leaf;
        let mut level = 0u8;
        while let Some((l, left)) = self.stack.last() {
            if *l != level {
                break;
            }
            h = node_hash(left, &h);
            self.stack.pop();
            level += 1;
            emit(level, index >> level, &h);
        }
        self.stack.push((level, h));
        self.size += 1;
    }

    /// Root of the leaves appended so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.stack.iter().rev();
        let Some((_, last)) = iter.next() else {
            return empty_root();
        };
        let mut acc = *last;
        for (_, left) in iter {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;
    use std::collections::HashMap;
    use std::convert::Infallible;

    /// In-memory perfect-subtree map filled through `Frontier::push`, as the store does.
    #[derive(Default)]
    struct Mem {
        nodes: HashMap<(u8, u64), Hash>,
        frontier: Frontier,
    }
    impl Mem {
        fn push(&mut self, data: &[u8]) {
            let nodes = &mut self.nodes;
            self.frontier.push(leaf_hash(data), |l, i, h| {
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

    /// The reference definition of MTH from RFC 9162, straight recursion over leaf hashes.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn unwrap<T>(r: Result<Result<T, ProofRequestError>, Infallible>) -> T {
        match r {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => match e {},
        }
    }

    /// RFC 6962 test vectors (the eight leaves used by Certificate Transparency's reference
    /// implementations: empty, 0x00, 0x10, 0x2021, 0x3031, 0x40414243, 0x5051525354555657,
    /// 0x606162636465666768696a6b6c6d6e6f).
    fn rfc_leaves() -> Vec<Vec<u8>> {
        vec![
            vec![],
            vec![0x00],
            vec![0x10],
            vec![0x20, 0x21],
            vec![0x30, 0x31],
            vec![0x40, 0x41, 0x42, 0x43],
            vec![0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            (0x60..=0x6f).collect(),
        ]
    }

    #[test]
    fn rfc6962_roots() {
        let expected = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut mem = Mem::default();
        assert_eq!(
            crate::hash::to_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (i, leaf) in rfc_leaves().iter().enumerate() {
            mem.push(leaf);
            let size = i as u64 + 1;
            assert_eq!(
                crate::hash::to_hex(&unwrap_root(&mem, size)),
                expected[i],
                "size {size}"
            );
            assert_eq!(mem.frontier.root(), unwrap_root(&mem, size));
        }
    }

    fn unwrap_root(mem: &Mem, size: u64) -> Hash {
        match root(mem, size) {
            Ok(h) => h,
            Err(e) => match e {},
        }
    }

    #[test]
    fn rfc6962_inclusion_vectors() {
        let mut mem = Mem::default();
        for leaf in rfc_leaves() {
            mem.push(&leaf);
        }
        let hex = |v: &[&str]| -> Vec<Hash> {
            v.iter()
                .map(|s| crate::hash::from_hex(s).expect("vector hex"))
                .collect()
        };
        // (index, size, path) from the RFC 6962 reference tests.
        let cases: Vec<(u64, u64, Vec<Hash>)> = vec![
            (0, 1, vec![]),
            (
                0,
                8,
                hex(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                5,
                8,
                hex(&[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                2,
                3,
                hex(&["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
            ),
            (
                1,
                5,
                hex(&[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
        ];
        for (index, size, path) in cases {
            assert_eq!(
                unwrap(inclusion_proof(&mem, index, size)),
                path,
                "{index}/{size}"
            );
        }
    }

    #[test]
    fn rfc6962_consistency_vectors() {
        let mut mem = Mem::default();
        for leaf in rfc_leaves() {
            mem.push(&leaf);
        }
        let hex = |v: &[&str]| -> Vec<Hash> {
            v.iter()
                .map(|s| crate::hash::from_hex(s).expect("vector hex"))
                .collect()
        };
        let cases: Vec<(u64, u64, Vec<Hash>)> = vec![
            (1, 1, vec![]),
            (
                1,
                8,
                hex(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                6,
                8,
                hex(&[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                2,
                5,
                hex(&[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
        ];
        for (old, new, proof) in cases {
            assert_eq!(
                unwrap(consistency_proof(&mem, old, new, 8)),
                proof,
                "{old}->{new}"
            );
        }
    }

    /// Every (index, size) pair up to 300 and every (old, new) pair up to 300: proofs generated from
    /// perfect subtrees verify against the reference MTH, and a proof for the wrong leaf, root or
    /// length is refused.
    #[test]
    fn all_pairs_up_to_300() {
        const N: u64 = 300;
        let mut mem = Mem::default();
        let mut leaves = Vec::new();
        for i in 0..N {
            mem.push(&i.to_be_bytes());
            leaves.push(leaf_hash(&i.to_be_bytes()));
        }
        let roots: Vec<Hash> = (0..=N as usize).map(|n| mth(&leaves[..n])).collect();
        for size in 1..=N {
            assert_eq!(unwrap_root(&mem, size), roots[size as usize]);
            for index in 0..size {
                let p = unwrap(inclusion_proof(&mem, index, size));
                let leaf = &leaves[index as usize];
                let root = &roots[size as usize];
                assert_eq!(verify_inclusion(leaf, index, size, &p, root), Ok(()));
                let other = leaf_hash(b"forged");
                assert!(verify_inclusion(&other, index, size, &p, root).is_err());
                if !p.is_empty() {
                    let mut short = p.clone();
                    short.pop();
                    assert!(verify_inclusion(leaf, index, size, &short, root).is_err());
                }
                let mut long = p.clone();
                long.push(*leaf);
                assert!(verify_inclusion(leaf, index, size, &long, root).is_err());
            }
            for old in 1..=size {
                let p = unwrap(consistency_proof(&mem, old, size, N));
                let (ro, rn) = (&roots[old as usize], &roots[size as usize]);
                assert_eq!(
                    verify_consistency(old, size, &p, ro, rn),
                    Ok(()),
                    "{old}->{size}"
                );
                if old < size {
                    assert!(verify_consistency(old, size, &p, rn, rn).is_err());
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(verify_consistency(old, size, &bad, ro, rn).is_err());
                }
            }
        }
    }

    /// Sampled pairs up to 100,000 leaves.
    #[test]
    fn sampled_pairs_up_to_100k() {
        const N: u64 = 100_000;
        let mut mem = Mem::default();
        let mut leaves = Vec::new();
        let mut roots = vec![empty_root()];
        for i in 0..N {
            mem.push(&i.to_le_bytes());
            leaves.push(leaf_hash(&i.to_le_bytes()));
            roots.push(mem.frontier.root());
        }
        // Reference roots at a few sizes from the plain definition.
        for size in [1u64, 2, 1023, 1024, 1025, 65_536, 99_999, 100_000] {
            assert_eq!(roots[size as usize], mth(&leaves[..size as usize]));
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..3_000 {
            let size = next(N) + 1;
            let index = next(size);
            let p = unwrap(inclusion_proof(&mem, index, size));
            assert!(p.len() <= 17);
            let root = &roots[size as usize];
            assert_eq!(
                verify_inclusion(&leaves[index as usize], index, size, &p, root),
                Ok(())
            );
            let old = next(size) + 1;
            let c = unwrap(consistency_proof(&mem, old, size, N));
            assert_eq!(
                verify_consistency(old, size, &c, &roots[old as usize], root),
                Ok(())
            );
        }
    }
}
