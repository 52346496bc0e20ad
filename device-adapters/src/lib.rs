//! device-adapters: the gateway's eyes on the device network.
//!
//! It turns MQTT messages (through the site broker, [`mqtt`]) and Modbus TCP polls
//! ([`modbus`], register maps in [`profile`], decoding in [`decode`]) into plain
//! [`Telemetry`] values and [`DeviceStatus`] changes on a bounded tokio channel
//! ([`AdapterEvent`]). It also holds the simulated devices ([`sim`]) behind `medledger-sim`.
//!
//! It deliberately knows nothing of the ledger, rules, HTTP, the gateway's config file or how
//! certificates are made: TLS client configs are handed in by the caller. It never blocks the
//! consumer and never buffers without bound (see the backpressure notes in [`mqtt`] and
//! [`modbus`]), and no device or network input can panic it.
#![forbid(unsafe_code)]

pub mod decode;
mod error;
pub mod modbus;
pub mod mqtt;
pub mod profile;
pub mod sim;
mod telemetry;

pub use error::{Error, Result};
pub use telemetry::{AdapterEvent, DeviceStatus, Source, Telemetry, TimestampSource, Value};
