//! The plain telemetry values the adapters hand out.
//!
//! This is the only thing the consumer (the gateway) sees: no MQTT packets, no Modbus frames.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One measured value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Value {
    /// A floating point measurement (also every scaled register value).
    Float(f64),
    /// A whole number (unscaled integer registers, JSON integers).
    Integer(i64),
    /// A flag (coils, discrete inputs, alarm bits, JSON booleans).
    Bool(bool),
    /// Text (string registers, JSON strings).
    Text(String),
}

impl Value {
    /// The value as f64 where that is meaningful (bool as 0/1); `None` for text.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Integer(v) => Some(*v as f64),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Text(_) => None,
        }
    }
}

/// Whose clock the timestamp comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampSource {
    /// The device put its own time in the message.
    Device,
    /// The device gave no time; the gateway's receive (or poll) time is used.
    Gateway,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// An MQTT message on this topic.
    Mqtt { topic: String },
    /// A Modbus TCP poll of this endpoint (`host:port/unit`).
    Modbus { endpoint: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Mqtt { topic } => write!(f, "mqtt:{topic}"),
            Source::Modbus { endpoint } => write!(f, "modbus:{endpoint}"),
        }
    }
}

/// One value of one metric of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// The device id: from the MQTT topic (never the payload) or the Modbus device config.
    pub device_id: String,
    /// Metric name, e.g. `flow_rate`.
    pub metric: String,
    pub value: Value,
    /// Unit, e.g. `mL/h`, when known.
    pub unit: Option<String>,
    /// The device's own time if it sent one, else the gateway's receive time.
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    /// Which of the two `timestamp` is.
    pub timestamp_source: TimestampSource,
    /// When the gateway received the value (always the gateway's clock).
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub source: Source,
    /// Per-source sequence number. MQTT: the device's own `seq` from the payload (so broker
    /// redeliveries show up as duplicates and lost messages as gaps). Modbus: the poller's poll
    /// counter for that device (all metrics of one poll share it; failed or shed polls leave gaps).
    pub seq: u64,
}

/// A device went online or offline (Modbus: answered again / N consecutive failed polls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device_id: String,
    pub source: Source,
    pub online: bool,
    /// Why it went offline (the last error), `None` when it came online.
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What travels on the bounded channel from the adapters to the consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AdapterEvent {
    Telemetry(Telemetry),
    Status(DeviceStatus),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_round_trips_through_json() {
        let t = Telemetry {
            device_id: "pump-1".into(),
            metric: "flow_rate".into(),
            value: Value::Float(12.5),
            unit: Some("mL/h".into()),
            timestamp: time::macros::datetime!(2025-01-02 03:04:05 UTC),
            timestamp_source: TimestampSource::Device,
            received_at: time::macros::datetime!(2025-01-02 03:04:06 UTC),
            source: Source::Mqtt {
                topic: "medledger/devices/pump-1/telemetry".into(),
            },
            seq: 7,
        };
        let json = serde_json::to_string(&AdapterEvent::Telemetry(t.clone())).expect("serialize");
        assert!(
            json.contains("\"timestamp\":\"2025-01-02T03:04:05Z\""),
            "{json}"
        );
        let back: AdapterEvent = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, AdapterEvent::Telemetry(t));
    }
}
