//! The versions a gateway carries and checks, so that a cluster can move to new code one
//! gateway at a time (docs/operations.md "Releases").
//!
//! Three numbers, each checked where bytes from another gateway (or another release) arrive:
//!
//! - the **release** (`0.3.0`, the workspace version): named in every message, carried on every
//!   Raft RPC between gateways;
//! - the **peer protocol** ([`PROTOCOL`]): the shape of the Raft RPCs themselves (openraft's
//!   append, vote and snapshot messages in MessagePack). A gateway refuses an RPC of a protocol
//!   it does not speak, naming both releases, instead of failing to decode it;
//! - the **command format** ([`FORMAT`]): what the commands of a Raft entry may contain and how
//!   they are applied. Each Raft entry carries the format it was proposed at
//!   ([`crate::raft::RaftRequest::format`]); the leader proposes at the highest format every
//!   member reads (the cluster format), so a gateway of an older release never receives a
//!   command it cannot apply the way the others do.
//!
//! Entries carry their own version byte ([`crate::entry::ENTRY_VERSION`], [`crate::entry::ENTRY_VERSION_2`]) and snapshots their
//! magic (`MLSNAP02`); both are checked by their decoders.

/// This release, as in `Cargo.toml` (`medledger --version`).
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// The peer protocol this release speaks. Release 0.1.0 sent no version header and speaks
/// protocol 1; so does this release (the RPCs' shape did not change).
pub const PROTOCOL: u32 = 1;

/// Peer protocols this release accepts.
pub const PROTOCOLS_READ: [u32; 1] = [1];

/// The command format this release writes when the whole cluster reads it.
///
/// - format 1 (release 0.1.0): appends, node registrations and checkpoints; a correction may
///   concern another device than the entry it corrects; the event kinds `review`, `approval`
///   and `erasure` do not exist (release 0.1.0 refuses such an entry as "unknown event kind").
/// - format 2 (release 0.2.0): the kinds `review`, `approval` and `erasure` (an erasure drops a
///   component's value and salt from an earlier entry); a correction concerns the same device
///   as the entry it corrects; only an erasure has an event id starting with `erasure:`.
/// - format 3 (release 0.3.0): an append may carry no signature of its own; it is then written
///   as an entry of version 2 ([`crate::entry::ENTRY_VERSION_2`]), which release 0.2.0 cannot
///   decode, authenticated by the signed tree heads (checkpoints) that cover it. The leader
///   writes such entries only at format 3 and strips the signatures of the appends it proposes
///   then; below it every append is signed (version 1), as before.
pub const FORMAT: u8 = 3;

/// The format of a Raft entry that says none: what release 0.1.0 wrote.
pub const FORMAT_V1: u8 = 1;

/// The first release that wrote command format `format`, for messages.
pub fn format_release(format: u8) -> String {
    match format {
        0 | 1 => "0.1.0".to_owned(),
        2 => "0.2.0".to_owned(),
        3 => "0.3.0".to_owned(),
        _ => format!("newer than {RELEASE}"),
    }
}

/// The first release that spoke peer protocol `protocol`, for messages.
pub fn protocol_release(protocol: u32) -> String {
    match protocol {
        1 => "0.1.0".to_owned(),
        _ => format!("newer than {RELEASE}"),
    }
}

/// Why a gateway refuses something another release sent it. Every message names this
/// gateway's release and what the other side says of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// A peer gateway speaks a protocol this release does not.
    #[error(
        "peer gateway{peer} runs release {peer_release} (peer protocol {protocol}), which this \
         gateway (release {RELEASE}, peer protocol {PROTOCOL}) does not speak: upgrade this \
         gateway"
    )]
    Protocol {
        /// ` 3` or empty when the caller is not known.
        peer: String,
        peer_release: String,
        protocol: u32,
    },
    /// A Raft entry or forwarded batch was proposed at a command format this release does not
    /// apply.
    #[error(
        "raft command of format {format} (release {}) is newer than this gateway's release \
         {RELEASE}, which applies formats 1 to {FORMAT}: upgrade this gateway",
        format_release(*format)
    )]
    Format { format: u8 },
    /// A snapshot of a format this release does not read.
    #[error(
        "snapshot format {found:?} (written by a release newer than this one) is not one this \
         gateway's release {RELEASE} reads (\"MLSNAP01\", \"MLSNAP02\"): upgrade this gateway"
    )]
    Snapshot { found: String },
    /// A version header that does not parse.
    #[error("version header {header}: {value:?} is not {expected}")]
    Header {
        header: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// Checks a Raft entry's command format.
pub fn check_format(format: u8) -> Result<(), VersionError> {
    if (FORMAT_V1..=FORMAT).contains(&format) {
        Ok(())
    } else {
        Err(VersionError::Format { format })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_both_versions() {
        let e = check_format(9).expect_err("format 9").to_string();
        assert!(e.contains("format 9") && e.contains(RELEASE), "{e}");
        let e = VersionError::Protocol {
            peer: " 3".into(),
            peer_release: "0.9.0".into(),
            protocol: 7,
        }
        .to_string();
        assert!(
            e.contains("0.9.0") && e.contains("protocol 7") && e.contains(RELEASE),
            "{e}"
        );
        assert!(check_format(1).is_ok() && check_format(FORMAT).is_ok());
        assert!(check_format(0).is_err());
    }
}
