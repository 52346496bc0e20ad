//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the device adapters.
///
/// Per-message problems (a malformed MQTT payload, a Modbus exception from one device) are not
/// errors of the adapter: they are counted in the stats and logged, and ingestion goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A device profile file could not be read.
    #[error("cannot read device profile {path}: {source}")]
    ProfileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A device profile is not valid TOML or does not match the profile schema.
    #[error("invalid device profile {name}: {message}")]
    ProfileInvalid { name: String, message: String },
    /// Register words could not be decoded into the declared type.
    #[error("cannot decode register {name}: {message}")]
    Decode { name: String, message: String },
    /// A value could not be encoded into registers (simulator and tests).
    #[error("cannot encode value for {name}: {message}")]
    Encode { name: String, message: String },
    /// Adapter configuration is invalid.
    #[error("invalid adapter config field {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    /// A socket could not be bound or used.
    #[error("i/o error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The MQTT client failed in a way reconnecting cannot fix.
    #[error("mqtt client error: {0}")]
    Mqtt(String),
    /// The consumer dropped the receiving end of the telemetry channel.
    #[error("telemetry channel closed by the consumer")]
    ChannelClosed,
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
