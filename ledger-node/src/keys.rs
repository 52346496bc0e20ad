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
            Ok(key)
        }
        Err(source) => Err(LedgerError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}
