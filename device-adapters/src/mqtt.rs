//! MQTT subscriber: telemetry from devices through the site broker.
//!
//! Topic layout `medledger/devices/<segment>/telemetry`, where the segment is the device id
//! escaped for MQTT ([`certs::device_id`]: `+`, `#`, `/`, `%` ... become `%XX`); the device id is
//! taken from the topic (which the broker's ACL ties to the device's certificate), never from the
//! payload. The payload
//! schema is in `docs/device-adapters.md` and [`parse_payload`].
//!
//! Delivery: QoS 1, persistent session (clean_session false, fixed client id), manual acks.
//! A message is acknowledged to the broker only after its values were handed to the bounded
//! channel (or it was dropped as bad), so when the consumer is slow the event loop is simply not
//! polled, the broker keeps the messages, and nothing is lost or buffered without bound.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{AdapterEvent, Error, Result, Source, Telemetry, TimestampSource, Value};

/// Topic prefix before the device's segment.
pub const TOPIC_PREFIX: &str = certs::device_id::TOPIC_PREFIX;
/// The filter the gateway subscribes to.
pub const TELEMETRY_FILTER: &str = certs::device_id::TELEMETRY_FILTER;

/// The topic a device publishes its telemetry on: `medledger/devices/<segment>/telemetry`, the
/// id escaped for MQTT by the rule the certificates and the broker's ACL use
/// ([`certs::device_id`]).
pub fn telemetry_topic(device_id: &str) -> String {
    certs::device_id::telemetry_topic(device_id)
}

/// Device id from a telemetry topic, if the topic has exactly our layout and its segment is the
/// canonical MQTT form of a valid device id (GS1, HIBCC, ISBT 128 or plain,
/// [`certs::device_id::device_id_from_topic`]). A staff or gateway name (`staff:jdoe`) is not.
pub fn device_id_from_topic(topic: &str) -> Option<String> {
    certs::device_id::device_id_from_topic(topic).ok()
}

/// How to reach the broker.
#[derive(Clone)]
pub enum MqttTransport {
    /// TLS with a client config from the caller (the `certs` crate builds it, with the gateway's
    /// own certificate for client authentication).
    Tls(Arc<rustls::ClientConfig>),
    /// Plain TCP. INSECURE: no encryption, no authentication. For loopback (the demo) only.
    PlainInsecure,
}

impl std::fmt::Debug for MqttTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MqttTransport::Tls(_) => "Tls",
            MqttTransport::PlainInsecure => "PlainInsecure",
        })
    }
}

/// Broker host, port and transport.
#[derive(Debug, Clone)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub transport: MqttTransport,
}

impl BrokerAddr {
    /// rumqttc options for this broker (also used by the simulator's publishers).
    pub fn options(&self, client_id: &str, clean_session: bool) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_clean_session(clean_session);
        if let MqttTransport::Tls(cfg) = &self.transport {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                cfg.clone(),
            )));
        }
        o
    }

    /// rumqttc MQTT v5 options for this broker (the simulator's publishers: under v5 a denied
    /// publish is acknowledged with a failure reason instead of silently).
    pub fn options_v5(&self, client_id: &str, clean_start: bool) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_clean_start(clean_start);
        if let MqttTransport::Tls(cfg) = &self.transport {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                cfg.clone(),
            )));
        }
        o
    }
}

/// Subscriber configuration. [`MqttConfig::new`] fills the defaults written next to each field.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub broker: BrokerAddr,
    /// Fixed client id: the broker keeps the persistent session (subscription and queued QoS 1
    /// messages) under it while the gateway is away.
    pub client_id: String,
    /// Default [`TELEMETRY_FILTER`].
    pub topic_filter: String,
    /// Larger payloads are dropped and counted. Default 64 KiB.
    pub max_payload_bytes: usize,
    /// Default 30 s.
    pub keep_alive: Duration,
    /// First reconnect delay, doubled per failure up to `backoff_max`, with ±50 % jitter.
    /// Defaults 250 ms and 30 s.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl MqttConfig {
    pub fn new(broker: BrokerAddr, client_id: impl Into<String>) -> Self {
        Self {
            broker,
            client_id: client_id.into(),
            topic_filter: TELEMETRY_FILTER.into(),
            max_payload_bytes: 64 * 1024,
            keep_alive: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Bigger than `max_payload_bytes`.
    Oversized,
    /// Not UTF-8 JSON.
    Malformed,
    /// JSON, but not our schema (missing/mistyped field, bad timestamp, unsupported value).
    UnknownSchema,
    /// Topic is not `medledger/devices/<segment of a valid device id>/telemetry`.
    BadTopic,
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DropReason::Oversized => "oversized",
            DropReason::Malformed => "malformed",
            DropReason::UnknownSchema => "unknown schema",
            DropReason::BadTopic => "bad topic",
        })
    }
}

/// Live counters (cheap atomics); read a consistent-enough copy with [`MqttStats::snapshot`].
#[derive(Debug, Default)]
pub struct MqttStats {
    received: AtomicU64,
    delivered_messages: AtomicU64,
    delivered_values: AtomicU64,
    dropped_oversized: AtomicU64,
    dropped_malformed: AtomicU64,
    dropped_unknown_schema: AtomicU64,
    dropped_bad_topic: AtomicU64,
    connects: AtomicU64,
    connection_errors: AtomicU64,
    ack_failures: AtomicU64,
    unacked_on_reconnect: AtomicU64,
}

/// A copy of [`MqttStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttStatsSnapshot {
    /// PUBLISH packets received.
    pub received: u64,
    /// Messages whose values were handed to the channel.
    pub delivered_messages: u64,
    /// Telemetry values handed to the channel.
    pub delivered_values: u64,
    pub dropped_oversized: u64,
    pub dropped_malformed: u64,
    pub dropped_unknown_schema: u64,
    pub dropped_bad_topic: u64,
    /// Successful CONNACKs (the first connect and every reconnect).
    pub connects: u64,
    pub connection_errors: u64,
    /// PUBACKs that could not be queued; the broker redelivers those messages (duplicates, same
    /// `seq`), nothing is lost.
    pub ack_failures: u64,
    /// Messages handed to the consumer whose connection ended before their PUBACK; the broker
    /// redelivers them (duplicates, same `seq`), nothing is lost.
    #[serde(default)]
    pub unacked_on_reconnect: u64,
}

impl MqttStatsSnapshot {
    pub fn dropped(&self) -> u64 {
        self.dropped_oversized
            + self.dropped_malformed
            + self.dropped_unknown_schema
            + self.dropped_bad_topic
    }
}

impl MqttStats {
    pub fn snapshot(&self) -> MqttStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MqttStatsSnapshot {
            received: g(&self.received),
            delivered_messages: g(&self.delivered_messages),
            delivered_values: g(&self.delivered_values),
            dropped_oversized: g(&self.dropped_oversized),
            dropped_malformed: g(&self.dropped_malformed),
            dropped_unknown_schema: g(&self.dropped_unknown_schema),
            dropped_bad_topic: g(&self.dropped_bad_topic),
            connects: g(&self.connects),
            connection_errors: g(&self.connection_errors),
            ack_failures: g(&self.ack_failures),
            unacked_on_reconnect: g(&self.unacked_on_reconnect),
        }
    }

    fn count_drop(&self, r: DropReason) {
        let c = match r {
            DropReason::Oversized => &self.dropped_oversized,
            DropReason::Malformed => &self.dropped_malformed,
            DropReason::UnknownSchema => &self.dropped_unknown_schema,
            DropReason::BadTopic => &self.dropped_bad_topic,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Deserialize)]
struct PayloadIn {
    seq: u64,
    #[serde(default)]
    ts: Option<String>,
    metrics: Vec<MetricIn>,
}

#[derive(Deserialize)]
struct MetricIn {
    name: String,
    value: serde_json::Value,
    #[serde(default)]
    unit: Option<String>,
}

/// Parse one message into telemetry values (pure; no I/O).
pub fn parse_payload(
    topic: &str,
    payload: &[u8],
    max_payload_bytes: usize,
    received_at: OffsetDateTime,
) -> std::result::Result<Vec<Telemetry>, DropReason> {
    let device_id = device_id_from_topic(topic).ok_or(DropReason::BadTopic)?;
    if payload.len() > max_payload_bytes {
        return Err(DropReason::Oversized);
    }
    // Syntax first, then schema, so the two reasons stay apart.
    let json: serde_json::Value =
        serde_json::from_slice(payload).map_err(|_| DropReason::Malformed)?;
    let p: PayloadIn = serde_json::from_value(json).map_err(|_| DropReason::UnknownSchema)?;
    if p.metrics.is_empty() {
        return Err(DropReason::UnknownSchema);
    }
    let (timestamp, timestamp_source) = match &p.ts {
        Some(ts) => (
            OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .map_err(|_| DropReason::UnknownSchema)?,
            TimestampSource::Device,
        ),
        None => (received_at, TimestampSource::Gateway),
    };
    let source = Source::Mqtt {
        topic: topic.to_owned(),
    };
    p.metrics
        .into_iter()
        .map(|m| {
            if m.name.is_empty() || m.name.len() > 128 {
                return Err(DropReason::UnknownSchema);
            }
            let value = match m.value {
                serde_json::Value::Bool(b) => Value::Bool(b),
                serde_json::Value::String(s) => Value::Text(s),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Value::Integer(i),
                    None => Value::Float(n.as_f64().ok_or(DropReason::UnknownSchema)?),
                },
                _ => return Err(DropReason::UnknownSchema),
            };
            Ok(Telemetry {
                device_id: device_id.clone(),
                metric: m.name,
                value,
                unit: m.unit,
                timestamp,
                timestamp_source,
                received_at,
                source: source.clone(),
                seq: p.seq,
            })
        })
        .collect()
}

/// Delay before reconnect attempt `n` (0-based): `initial * 2^n` capped at `max`, then ±50 %
/// jitter so a site full of gateways does not reconnect in lockstep.
pub fn backoff_delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    use rand::Rng;
    let base = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let factor: f64 = rand::thread_rng().gen_range(0.5..1.5);
    base.mul_f64(factor)
}

/// One message's values for a consumer that acknowledges ([`MqttSubscriber::run_acked`]).
#[derive(Debug)]
pub struct MqttMessage {
    pub values: Vec<Telemetry>,
    ack: oneshot::Sender<()>,
}

impl MqttMessage {
    /// Lets the subscriber acknowledge the message to the broker.
    pub fn ack(self) {
        let _ = self.ack.send(());
    }
}

/// How many messages [`MqttSubscriber::run_acked`] hands out before their acknowledgements.
pub const ACK_WINDOW: usize = 256;

/// A message handed to the consumer (or dropped as malformed) whose PUBACK waits its turn.
struct Pending {
    publish: rumqttc::Publish,
    acked: oneshot::Receiver<()>,
    /// Values handed over; `None` for a dropped message (acknowledged, not delivered).
    values: Option<u64>,
}

/// Resolves when the oldest waiting message is done with (true: acknowledge it); never while
/// none waits.
async fn front_acked(pending: &mut VecDeque<Pending>) -> bool {
    match pending.front_mut() {
        Some(front) => (&mut front.acked).await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Drops what waited for an acknowledgement on a connection that is gone.
fn forget(pending: &mut VecDeque<Pending>, stats: &MqttStats) {
    if !pending.is_empty() {
        tracing::debug!(
            messages = pending.len(),
            "mqtt connection changed; unacknowledged messages will be redelivered"
        );
        stats
            .unacked_on_reconnect
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        pending.clear();
    }
}

/// Where a subscriber's values go.
enum Consumer {
    /// Value by value; acknowledged once in the channel.
    Values(mpsc::Sender<AdapterEvent>),
    /// Message by message; acknowledged when the consumer says so.
    Messages(mpsc::Sender<MqttMessage>),
}

/// The MQTT subscriber. Create, keep [`MqttSubscriber::stats`], then [`MqttSubscriber::run`].
#[derive(Debug)]
pub struct MqttSubscriber {
    config: MqttConfig,
    stats: Arc<MqttStats>,
}

impl MqttSubscriber {
    pub fn new(config: MqttConfig) -> Result<Self> {
        if config.client_id.is_empty() {
            return Err(Error::Config {
                field: "client_id",
                message: "must not be empty".into(),
            });
        }
        if config.max_payload_bytes == 0 {
            return Err(Error::Config {
                field: "max_payload_bytes",
                message: "must be > 0".into(),
            });
        }
        if config.backoff_initial.is_zero() || config.backoff_max < config.backoff_initial {
            return Err(Error::Config {
                field: "backoff_initial",
                message: "must be > 0 and <= backoff_max".into(),
            });
        }
        Ok(Self {
            config,
            stats: Arc::new(MqttStats::default()),
        })
    }

    pub fn stats(&self) -> Arc<MqttStats> {
        self.stats.clone()
    }

    /// Run until `shutdown` is cancelled (returns `Ok`) or the consumer drops the receiver
    /// (returns [`Error::ChannelClosed`]). Connection failures are retried forever with backoff.
    pub async fn run(
        self,
        tx: mpsc::Sender<AdapterEvent>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        self.run_with(Consumer::Values(tx), shutdown).await
    }

    /// Like [`MqttSubscriber::run`], but hands each message's values to the consumer as one
    /// [`MqttMessage`] and acknowledges the message to the broker only once the consumer calls
    /// [`MqttMessage::ack`] (after it made what the message caused durable). A message dropped
    /// without `ack` stays unacknowledged; the broker redelivers it after the next reconnect.
    /// Up to [`ACK_WINDOW`] messages may wait for their `ack` at once (so the consumer can make
    /// a batch of them durable together); acknowledgements reach the broker in the order the
    /// messages arrived (MQTT 3.1.1 §4.6), and beyond the window the broker keeps the rest.
    pub async fn run_acked(
        self,
        tx: mpsc::Sender<MqttMessage>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        self.run_with(Consumer::Messages(tx), shutdown).await
    }

    fn ack(&self, client: &AsyncClient, p: &rumqttc::Publish) {
        if client.try_ack(p).is_err() {
            self.stats.ack_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The oldest waiting message's consumer is done with it: acknowledged if it said so.
    fn finish(&self, client: &AsyncClient, done: Pending, acked: bool) {
        if !acked {
            tracing::debug!(topic = %done.publish.topic, "consumer released an mqtt message unacknowledged");
            return;
        }
        if let Some(n) = done.values {
            self.stats
                .delivered_messages
                .fetch_add(1, Ordering::Relaxed);
            self.stats.delivered_values.fetch_add(n, Ordering::Relaxed);
        }
        self.ack(client, &done.publish);
    }

    async fn run_with(self, consumer: Consumer, shutdown: CancellationToken) -> Result<()> {
        let cfg = &self.config;
        let mut opts = cfg.broker.options(&cfg.client_id, false);
        opts.set_keep_alive(cfg.keep_alive);
        opts.set_manual_acks(true);
        // rumqttc fails the whole connection on a packet over its limit, and the broker would
        // redeliver it forever; so its limit is generous and our own max_payload_bytes check
        // drops big payloads cleanly. The broker's max_packet_size should cap the rest.
        let limit = cfg.max_payload_bytes.saturating_mul(4).max(1 << 20);
        opts.set_max_packet_size(limit, 64 * 1024);
        // Acks go through this channel; a full one only costs a redelivery (see ack_failures).
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        let mut failures: u32 = 0;
        // Messages handed to the consumer, oldest first, with what acknowledges each.
        let mut pending: VecDeque<Pending> = VecDeque::new();
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = client.try_disconnect();
                    return Ok(());
                }
                acked = front_acked(&mut pending) => {
                    if let Some(done) = pending.pop_front() {
                        self.finish(&client, done, acked);
                    }
                    continue;
                }
                ev = eventloop.poll(), if pending.len() < ACK_WINDOW => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    // Packet ids of an earlier connection mean nothing on this one: what
                    // waited for its ack there is redelivered (the ledger's event ids make
                    // a second pass a no-op).
                    forget(&mut pending, &self.stats);
                    self.stats.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(broker = %cfg.broker.host, port = cfg.broker.port, session_present = ack.session_present, "mqtt connected");
                    // Re-subscribing is harmless when the broker kept the session, and needed
                    // when it did not.
                    if let Err(e) = client.try_subscribe(cfg.topic_filter.clone(), QoS::AtLeastOnce)
                    {
                        tracing::warn!(error = %e, "mqtt subscribe could not be queued");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    if s.return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        tracing::error!(filter = %cfg.topic_filter, "broker refused the subscription (check the ACL for the gateway identity)");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    let now = OffsetDateTime::now_utc();
                    match parse_payload(&p.topic, &p.payload, cfg.max_payload_bytes, now) {
                        Ok(values) => {
                            let n = values.len() as u64;
                            match &consumer {
                                Consumer::Values(tx) => {
                                    for t in values {
                                        // Blocking here is the backpressure: while we wait, the
                                        // event loop is not polled and the broker holds the rest.
                                        tokio::select! {
                                            _ = shutdown.cancelled() => return Ok(()),
                                            r = tx.send(AdapterEvent::Telemetry(t)) => r.map_err(|_| Error::ChannelClosed)?,
                                        }
                                    }
                                }
                                Consumer::Messages(tx) => {
                                    let (ack, acked) = oneshot::channel();
                                    tokio::select! {
                                        _ = shutdown.cancelled() => return Ok(()),
                                        r = tx.send(MqttMessage { values, ack }) => r.map_err(|_| Error::ChannelClosed)?,
                                    }
                                    pending.push_back(Pending {
                                        publish: p,
                                        acked,
                                        values: Some(n),
                                    });
                                    continue;
                                }
                            }
                            self.stats
                                .delivered_messages
                                .fetch_add(1, Ordering::Relaxed);
                            self.stats.delivered_values.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(reason) => {
                            self.stats.count_drop(reason);
                            tracing::warn!(topic = %p.topic, %reason, bytes = p.payload.len(), "dropped mqtt message");
                        }
                    }
                    if pending.is_empty() {
                        self.ack(&client, &p);
                    } else {
                        // Acknowledged in turn, after the messages before it.
                        let (done, acked) = oneshot::channel();
                        let _ = done.send(());
                        pending.push_back(Pending {
                            publish: p,
                            acked,
                            values: None,
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    forget(&mut pending, &self.stats);
                    self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff_delay(cfg.backoff_initial, cfg.backoff_max, failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "mqtt connection error");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "medledger/devices/pump-7/telemetry";

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2025-05-05 12:00:00 UTC)
    }

    #[test]
    fn good_payload_with_and_without_device_time() {
        let p = br#"{"seq":3,"ts":"2025-05-05T11:59:58Z","metrics":[{"name":"flow_rate","value":12.5,"unit":"mL/h"},{"name":"alarm","value":false},{"name":"hours","value":1234},{"name":"fw","value":"4.2"}],"extra":"ignored"}"#;
        let v = parse_payload(T, p, 1024, now()).expect("good payload");
        assert_eq!(v.len(), 4);
        assert!(v.iter().all(|t| t.device_id == "pump-7" && t.seq == 3));
        assert_eq!(v[0].value, Value::Float(12.5));
        assert_eq!(v[0].unit.as_deref(), Some("mL/h"));
        assert_eq!(
            v[0].timestamp,
            time::macros::datetime!(2025-05-05 11:59:58 UTC)
        );
        assert_eq!(v[0].timestamp_source, TimestampSource::Device);
        assert_eq!(v[1].value, Value::Bool(false));
        assert_eq!(v[2].value, Value::Integer(1234));
        assert_eq!(v[3].value, Value::Text("4.2".into()));
        let v = parse_payload(
            T,
            br#"{"seq":4,"metrics":[{"name":"x","value":1}]}"#,
            1024,
            now(),
        )
        .expect("no ts");
        assert_eq!(v[0].timestamp, now());
        assert_eq!(v[0].timestamp_source, TimestampSource::Gateway);
    }

    #[test]
    fn device_id_comes_from_the_topic_only() {
        let v = parse_payload(
            T,
            br#"{"seq":1,"device_id":"other","metrics":[{"name":"x","value":1}]}"#,
            1024,
            now(),
        )
        .expect("parses");
        assert_eq!(v[0].device_id, "pump-7");
    }

    #[test]
    fn bad_messages_get_the_right_reason() {
        let cases: [(&str, &[u8], DropReason); 9] = [
            (T, b"{\"seq\":1,\"metrics\":[", DropReason::Malformed),
            (T, b"\xff\xfe", DropReason::Malformed),
            (
                T,
                br#"{"metrics":[{"name":"x","value":1}]}"#,
                DropReason::UnknownSchema,
            ),
            (T, br#"{"seq":1,"metrics":[]}"#, DropReason::UnknownSchema),
            (
                T,
                br#"{"seq":1,"metrics":[{"name":"x","value":null}]}"#,
                DropReason::UnknownSchema,
            ),
            (
                T,
                br#"{"seq":1,"ts":"yesterday","metrics":[{"name":"x","value":1}]}"#,
                DropReason::UnknownSchema,
            ),
            (T, br#"[1,2,3]"#, DropReason::UnknownSchema),
            (
                "medledger/devices/a/b/telemetry",
                br#"{"seq":1,"metrics":[{"name":"x","value":1}]}"#,
                DropReason::BadTopic,
            ),
            (
                "medledger/devices//telemetry",
                br#"{"seq":1,"metrics":[{"name":"x","value":1}]}"#,
                DropReason::BadTopic,
            ),
        ];
        for (topic, p, want) in cases {
            assert_eq!(
                parse_payload(topic, p, 1024, now()).map(|_| ()),
                Err(want),
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        let big = format!(
            r#"{{"seq":1,"metrics":[{{"name":"x","value":"{}"}}]}}"#,
            "a".repeat(2000)
        );
        assert_eq!(
            parse_payload(T, big.as_bytes(), 1024, now()).map(|_| ()),
            Err(DropReason::Oversized)
        );
    }

    #[test]
    fn udi_topics_parse_to_their_ids_and_staff_topics_do_not() {
        let p = br#"{"seq":1,"metrics":[{"name":"x","value":1}]}"#;
        for id in [
            "(01)00884838035249(21)PMP1",
            "+A123BJC5D6E71G",
            "+H123ABC01/$$32001510X3",
            "=<E0001V00",
            "=/A9999PPIC01",
            "pump-7",
        ] {
            let topic = telemetry_topic(id);
            let v = parse_payload(&topic, p, 1024, now()).expect(id);
            assert_eq!(v[0].device_id, id, "{topic}");
        }
        for topic in [
            "medledger/devices/staff:jdoe/telemetry",
            "medledger/devices/gateway:gw1/telemetry",
            "medledger/devices/+A123BJC5D6E71G/telemetry",
            "medledger/devices/pump%2D7/telemetry",
            "medledger/devices/(01)00884838035243/telemetry",
        ] {
            assert_eq!(
                parse_payload(topic, p, 1024, now()).map(|_| ()),
                Err(DropReason::BadTopic),
                "{topic}"
            );
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(5);
        for attempt in 0..40 {
            let d = backoff_delay(i, m, attempt);
            let base = i.saturating_mul(1 << attempt.min(20)).min(m);
            assert!(
                d >= base.mul_f64(0.5) && d <= base.mul_f64(1.5),
                "{attempt}: {d:?}"
            );
        }
    }
}
