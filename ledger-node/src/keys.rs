//! The node's ed25519 signing key, kept in a file of mode 0600 in the data directory.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;

use crate::error::LedgerError;

/// Loads the signing key from `path`, creating a new random one (mode 0600) if the file does not
/// exist. The file holds the 32-byte seed as 64 hex digits.
pub fn load_or_create(path: &Path) -> Result<SigningKey, LedgerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| LedgerError::BadKeyFile {
                path: path.to_owned(),
                reason: "expected 64 hex digits".into(),
            })?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let io = |source| LedgerError::Io {
                path: path.to_owned(),
                source,
            };
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(path).map_err(io)?;
            f.write_all(hex::encode(key.to_bytes()).as_bytes())
                .map_err(io)?;
            f.sync_all().map_err(io)?;
            // Without its directory synced, a power cut could forget the key file and the node
            // would come back with a new key that its ledger does not know.
            if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                crate::store::sync_dir(dir)?;
            }
            Ok(key)
        }
        Err(source) => Err(LedgerError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A node's signing key, ready to sign entries quickly.
///
/// Signing an entry is the largest single cost of an append, so signatures are made with
/// aws-lc's Ed25519 (about 8.5 µs a signature on the benchmark machine against 15 µs for
/// ed25519-dalek). Ed25519 signatures are deterministic (RFC 8032), so both give the same bytes
/// for the same key and message (checked in the tests below); ed25519-dalek remains the type of
/// the key everywhere else and does all verification.
pub struct NodeKey {
    key: SigningKey,
    signer: aws_lc_rs::signature::Ed25519KeyPair,
}

impl NodeKey {
    /// Wraps a signing key.
    pub fn new(key: SigningKey) -> Result<Self, LedgerError> {
        let signer = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(key.as_bytes())
            .map_err(|e| LedgerError::Refused(format!("node signing key refused: {e}")))?;
        Ok(Self { key, signer })
    }

    /// The ed25519-dalek key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The public key.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }
}

impl ed25519_dalek::Signer<ed25519_dalek::Signature> for NodeKey {
    fn try_sign(
        &self,
        msg: &[u8],
    ) -> Result<ed25519_dalek::Signature, ed25519_dalek::SignatureError> {
        ed25519_dalek::Signature::from_slice(self.signer.sign(msg).as_ref())
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &hex::encode(self.key.verifying_key().as_bytes()))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, Verifier};

    #[test]
    fn aws_lc_and_dalek_sign_the_same_bytes() {
        for i in 0..64u8 {
            let key = SigningKey::from_bytes(&[i.wrapping_mul(37); 32]);
            let node = NodeKey::new(key.clone()).expect("key");
            let msg: Vec<u8> = (0..u32::from(i) * 13).map(|b| b as u8).collect();
            let a = node.sign(&msg);
            assert_eq!(a, key.sign(&msg));
            assert!(key.verifying_key().verify(&msg, &a).is_ok());
        }
    }
}
