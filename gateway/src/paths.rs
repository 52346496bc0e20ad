//! Names of the files in a gateway's data and PKI directories, in one place: the CLI writes them
//! on a stopped gateway and the service reads and rewrites them while it runs.

/// Enrollment token store, next to the issuing CA.
pub const TOKENS_FILE: &str = "tokens.json";
/// This gateway's CRL (PEM), kept current by the running gateway.
pub const CRL_FILE: &str = "crl.pem";
/// The single-node ledger of the CLI (`import`, `cert issue/revoke --data-dir` on a gateway that
/// is not running yet), inside the data directory.
pub const LOCAL_LEDGER_DIR: &str = "ledger";
