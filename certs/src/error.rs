//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the identity layer.
///
/// Messages are lowercase and name the file, field, id or peer that was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read, created or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file held no usable item of the expected kind, or garbage.
    #[error("{path}: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A private key could not be parsed or does not match its certificate.
    #[error("bad private key {path}: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A certificate could not be parsed or is not what it should be.
    #[error("bad certificate {what}: {reason}")]
    BadCertificate {
        /// The file or a description of the certificate.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A device, staff or gateway id was refused.
    #[error("invalid id {id:?}: {reason}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// Why it was refused.
        reason: String,
    },
    /// A caller-supplied parameter was refused.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The parameter name.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A certificate signing request was refused.
    #[error("certificate signing request refused: {reason}")]
    CsrRefused {
        /// Why.
        reason: String,
    },
    /// Certificate or CRL generation failed inside rcgen.
    #[error("{what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// The enrollment token is not in the store.
    #[error("enrollment token unknown")]
    TokenUnknown,
    /// The enrollment token was already used.
    #[error("enrollment token already used (device {device_id})")]
    TokenUsed {
        /// The device the token was for.
        device_id: String,
    },
    /// The enrollment token has expired.
    #[error("enrollment token expired (device {device_id})")]
    TokenExpired {
        /// The device the token was for.
        device_id: String,
    },
    /// The enrollment token was issued for another device.
    #[error("enrollment token is for device {expected}, not {got}")]
    TokenDeviceMismatch {
        /// The device the token was issued for.
        expected: String,
        /// The device that presented it.
        got: String,
    },
    /// A state file (token store, CRL number) is locked by another process for too long.
    #[error("{path} is locked by another process")]
    StoreLocked {
        /// The lock file.
        path: PathBuf,
    },
    /// A JSON state file is corrupt.
    #[error("{path}: {reason}")]
    BadState {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A peer certificate is not a MedLedger identity.
    #[error("not a medledger identity: {reason}")]
    NotAnIdentity {
        /// Why.
        reason: String,
    },
    /// A peer presented an identity of the wrong profile.
    #[error("wrong certificate profile: expected {expected}, got {found} ({id})")]
    WrongProfile {
        /// Allowed profiles.
        expected: String,
        /// The profile presented.
        found: String,
        /// The presented id.
        id: String,
    },
    /// A TLS configuration could not be built.
    #[error("tls config: {reason}")]
    TlsConfig {
        /// Why.
        reason: String,
    },
    /// A TLS handshake with a peer failed or the peer was refused.
    #[error("tls peer {peer} refused: {reason}")]
    PeerRefused {
        /// The peer address.
        peer: String,
        /// Why it was refused.
        reason: String,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn gen(what: &'static str) -> impl FnOnce(rcgen::Error) -> Self {
        move |source| Error::Generate { what, source }
    }

    pub(crate) fn input(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            reason: reason.into(),
        }
    }
}
