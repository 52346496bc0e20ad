//! Simulated medical devices: the device logic behind the `medledger-sim` binary, also usable
//! in-process by tests (which still talk to it over real sockets).
//!
//! A [`SimDevice`] holds a Modbus register image driven by its profile's `sim` hints (sine,
//! ramp, decay, alarm) and a set of injectable [`Fault`]s. It can be served as a Modbus TCP (or
//! Modbus/TCP Security, TLS) server with [`ModbusSimServer`], and published over MQTT with
//! [`run_mqtt_publisher`].

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use tokio::net::TcpListener;
use tokio_modbus::{server::tcp::Server, ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

use crate::{
    profile::{DeviceProfile, RegisterDef, Table},
    Error, Result, Value,
};

/// Something that can go wrong with a device, switched on and off at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Alarm registers show their alarm bits.
    Alarm(bool),
    /// Measured (sine) values drift by this much per minute, as an uncalibrated sensor would.
    Drift(f64),
    /// The device stops answering (Modbus: no response; MQTT: no publishes).
    Silent(bool),
    /// Every Modbus request is answered with this exception code (0 = off).
    Exception(u8),
    /// The next n MQTT payloads are malformed.
    Malformed(u32),
    /// Reads of this table that include this address are answered with exception 2 (illegal
    /// data address), as a device does for a block it cannot serve; `None` = off.
    Refuse(Option<(Table, u16)>),
}

impl std::str::FromStr for Fault {
    type Err = String;
    /// `alarm on|off`, `drift <per-minute>`, `silent on|off`, `exception <code>`,
    /// `malformed <n>`, `refuse <table>:<address>|off`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut it = s.split_whitespace();
        let kind = it.next().ok_or("empty fault")?;
        let arg = it
            .next()
            .ok_or_else(|| format!("fault {kind} needs an argument"))?;
        let onoff = |a: &str| match a {
            "on" | "true" | "1" => Ok(true),
            "off" | "false" | "0" => Ok(false),
            _ => Err(format!("fault {kind}: expected on or off, got {a}")),
        };
        let num = |a: &str| {
            a.parse::<f64>()
                .map_err(|_| format!("fault {kind}: bad number {a}"))
        };
        Ok(match kind {
            "alarm" => Fault::Alarm(onoff(arg)?),
            "silent" => Fault::Silent(onoff(arg)?),
            "drift" => Fault::Drift(num(arg)?),
            "exception" => Fault::Exception(
                arg.parse()
                    .map_err(|_| format!("fault exception: bad code {arg}"))?,
            ),
            "malformed" => Fault::Malformed(
                arg.parse()
                    .map_err(|_| format!("fault malformed: bad count {arg}"))?,
            ),
            "refuse" => Fault::Refuse(match arg {
                "off" => None,
                _ => {
                    let (t, a) = arg.split_once(':').ok_or_else(|| {
                        format!("fault refuse: expected table:address, got {arg}")
                    })?;
                    let table = match t {
                        "holding" => Table::Holding,
                        "input" => Table::Input,
                        "coil" => Table::Coil,
                        "discrete" => Table::Discrete,
                        _ => return Err(format!("fault refuse: unknown table {t}")),
                    };
                    let address = a
                        .parse()
                        .map_err(|_| format!("fault refuse: bad address {a}"))?;
                    Some((table, address))
                }
            }),
            _ => return Err(format!("unknown fault {kind}")),
        })
    }
}

#[derive(Debug, Default)]
struct Faults {
    alarm: bool,
    drift_per_min: f64,
    drift_since: Option<Instant>,
    silent: bool,
    exception: u8,
    malformed: u32,
    refuse: Option<(Table, u16)>,
}

#[derive(Debug, Default)]
struct Image {
    holding: HashMap<u16, u16>,
    input: HashMap<u16, u16>,
    coil: HashMap<u16, bool>,
    discrete: HashMap<u16, bool>,
}

impl Image {
    fn words(&mut self, t: Table) -> Option<&mut HashMap<u16, u16>> {
        match t {
            Table::Holding => Some(&mut self.holding),
            Table::Input => Some(&mut self.input),
            _ => None,
        }
    }
    fn bits(&mut self, t: Table) -> Option<&mut HashMap<u16, bool>> {
        match t {
            Table::Coil => Some(&mut self.coil),
            Table::Discrete => Some(&mut self.discrete),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct State {
    image: Image,
    faults: Faults,
    mqtt_seq: u64,
}

/// One simulated device.
#[derive(Debug)]
pub struct SimDevice {
    id: String,
    profile: Arc<DeviceProfile>,
    started: Instant,
    state: Mutex<State>,
}

impl SimDevice {
    /// A device whose registers exist (zeroed) for every register of `profile`; values with `sim`
    /// hints evolve, the others keep what is written to them.
    pub fn new(id: impl Into<String>, profile: Arc<DeviceProfile>) -> Arc<Self> {
        let mut image = Image::default();
        for r in &profile.registers {
            for a in 0..r.words() {
                let addr = r.address.saturating_add(a);
                if let Some(m) = image.words(r.table) {
                    m.insert(addr, 0);
                } else if let Some(m) = image.bits(r.table) {
                    m.insert(addr, false);
                }
            }
        }
        let dev = Arc::new(Self {
            id: id.into(),
            profile,
            started: Instant::now(),
            state: Mutex::new(State {
                image,
                faults: Faults::default(),
                mqtt_seq: 0,
            }),
        });
        dev.tick();
        dev
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn profile(&self) -> &Arc<DeviceProfile> {
        &self.profile
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the image half-valid in a way that matters
        // for a simulator, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Switch a fault on or off.
    pub fn set_fault(&self, fault: Fault) {
        let mut s = self.lock();
        match fault {
            Fault::Alarm(on) => s.faults.alarm = on,
            Fault::Drift(d) => {
                s.faults.drift_per_min = d;
                s.faults.drift_since = (d != 0.0).then(Instant::now);
            }
            Fault::Silent(on) => s.faults.silent = on,
            Fault::Exception(c) => s.faults.exception = c,
            Fault::Malformed(n) => s.faults.malformed = n,
            Fault::Refuse(r) => s.faults.refuse = r,
        }
        drop(s);
        self.tick();
    }

    /// The value the model gives `r` now, or `None` if `r` has no sim hint.
    fn model_value(&self, r: &RegisterDef, faults: &Faults) -> Option<Value> {
        let sim = r.sim.as_ref()?;
        let t = self.started.elapsed().as_secs_f64();
        let drift = faults
            .drift_since
            .map(|s| s.elapsed().as_secs_f64() / 60.0 * faults.drift_per_min)
            .unwrap_or(0.0);
        if let Some(text) = &sim.text {
            return Some(Value::Text(text.clone()));
        }
        let x = match sim.kind.as_str() {
            "sine" => {
                let period = if sim.period_s > 0.0 {
                    sim.period_s
                } else {
                    60.0
                };
                sim.nominal + sim.amplitude * (std::f64::consts::TAU * t / period).sin() + drift
            }
            "ramp" => sim.nominal + sim.rate * t,
            "decay" => (sim.nominal - sim.rate * t).max(0.0),
            "alarm" => {
                if faults.alarm {
                    sim.nominal
                } else {
                    0.0
                }
            }
            _ => sim.nominal,
        };
        Some(match r.data_type {
            crate::decode::DataType::Bool => Value::Bool(x != 0.0),
            _ => Value::Float(x),
        })
    }

    /// Recompute every simulated register from the model at the current time.
    pub fn tick(&self) {
        let mut s = self.lock();
        for r in &self.profile.registers {
            let Some(v) = self.model_value(r, &s.faults) else {
                continue;
            };
            match r.encode(&v) {
                Ok(words) => write_words(&mut s.image, r.table, r.address, &words),
                Err(e) => {
                    tracing::debug!(device = %self.id, register = %r.name, error = %e, "sim value out of range")
                }
            }
        }
    }

    /// Write raw words (or bits as 0/1 words) into the image, creating the addresses.
    pub fn write_registers(&self, table: Table, address: u16, words: &[u16]) {
        write_words(&mut self.lock().image, table, address, words);
    }

    /// Encode `value` with the register `name` of the profile and write it.
    pub fn write_value(&self, name: &str, value: &Value) -> Result<()> {
        let r = self
            .profile
            .registers
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| Error::Encode {
                name: name.to_owned(),
                message: "no such register in profile".into(),
            })?;
        let words = r.encode(value)?;
        self.write_registers(r.table, r.address, &words);
        Ok(())
    }

    /// Current values of every register, decoded as the poller would (for MQTT publishing).
    pub fn current_values(&self) -> Vec<(&RegisterDef, Value)> {
        self.tick();
        let mut s = self.lock();
        let mut out = Vec::new();
        for r in &self.profile.registers {
            let words = if r.table.is_bits() {
                s.image
                    .bits(r.table)
                    .and_then(|m| m.get(&r.address))
                    .map(|b| vec![u16::from(*b)])
            } else {
                s.image.words(r.table).and_then(|m| {
                    (0..r.words())
                        .map(|i| m.get(&r.address.saturating_add(i)).copied())
                        .collect()
                })
            };
            if let Some(v) = words.and_then(|w| r.decode(&w).ok()) {
                out.push((r, v));
            }
        }
        out
    }

    /// Answer one Modbus request. `Ok(None)` = say nothing (the silent fault).
    fn handle(
        &self,
        req: Request<'static>,
    ) -> std::result::Result<Option<Response>, ExceptionCode> {
        self.tick();
        let mut s = self.lock();
        if s.faults.silent {
            return Ok(None);
        }
        if s.faults.exception != 0 {
            return Err(ExceptionCode::new(s.faults.exception));
        }
        if let Some((table, address)) = s.faults.refuse {
            let range = match &req {
                Request::ReadHoldingRegisters(a, n) => Some((Table::Holding, *a, *n)),
                Request::ReadInputRegisters(a, n) => Some((Table::Input, *a, *n)),
                Request::ReadCoils(a, n) => Some((Table::Coil, *a, *n)),
                Request::ReadDiscreteInputs(a, n) => Some((Table::Discrete, *a, *n)),
                _ => None,
            };
            if let Some((t, a, n)) = range {
                if t == table && address >= a && u32::from(address) < u32::from(a) + u32::from(n) {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
            }
        }
        let img = &mut s.image;
        let read_words = |m: &HashMap<u16, u16>,
                          a: u16,
                          n: u16|
         -> std::result::Result<Vec<u16>, ExceptionCode> {
            (0..n)
                .map(|i| {
                    a.checked_add(i)
                        .and_then(|x| m.get(&x).copied())
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect()
        };
        let read_bits = |m: &HashMap<u16, bool>,
                         a: u16,
                         n: u16|
         -> std::result::Result<Vec<bool>, ExceptionCode> {
            (0..n)
                .map(|i| {
                    a.checked_add(i)
                        .and_then(|x| m.get(&x).copied())
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect()
        };
        let check = |m_has: bool| {
            if m_has {
                Ok(())
            } else {
                Err(ExceptionCode::IllegalDataAddress)
            }
        };
        Ok(Some(match req {
            Request::ReadHoldingRegisters(a, n) => {
                Response::ReadHoldingRegisters(read_words(&img.holding, a, n)?)
            }
            Request::ReadInputRegisters(a, n) => {
                Response::ReadInputRegisters(read_words(&img.input, a, n)?)
            }
            Request::ReadCoils(a, n) => Response::ReadCoils(read_bits(&img.coil, a, n)?),
            Request::ReadDiscreteInputs(a, n) => {
                Response::ReadDiscreteInputs(read_bits(&img.discrete, a, n)?)
            }
            Request::WriteSingleRegister(a, w) => {
                check(img.holding.contains_key(&a))?;
                img.holding.insert(a, w);
                Response::WriteSingleRegister(a, w)
            }
            Request::WriteMultipleRegisters(a, ws) => {
                read_words(&img.holding, a, ws.len() as u16)?;
                for (i, w) in ws.iter().enumerate() {
                    img.holding.insert(a.wrapping_add(i as u16), *w);
                }
                Response::WriteMultipleRegisters(a, ws.len() as u16)
            }
            Request::WriteSingleCoil(a, b) => {
                check(img.coil.contains_key(&a))?;
                img.coil.insert(a, b);
                Response::WriteSingleCoil(a, b)
            }
            Request::WriteMultipleCoils(a, bs) => {
                read_bits(&img.coil, a, bs.len() as u16)?;
                for (i, b) in bs.iter().enumerate() {
                    img.coil.insert(a.wrapping_add(i as u16), *b);
                }
                Response::WriteMultipleCoils(a, bs.len() as u16)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        }))
    }

    /// Next MQTT payload for this device (JSON per docs/device-adapters.md), or `None` when
    /// silent. Malformed-fault payloads are truncated JSON.
    pub fn next_mqtt_payload(&self) -> Option<Vec<u8>> {
        let values = self.current_values();
        let mut s = self.lock();
        if s.faults.silent {
            return None;
        }
        s.mqtt_seq += 1;
        let seq = s.mqtt_seq;
        if s.faults.malformed > 0 {
            s.faults.malformed -= 1;
            return Some(format!("{{\"seq\":{seq},\"metrics\":[{{\"name\":").into_bytes());
        }
        drop(s);
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let metrics: Vec<serde_json::Value> = values
            .into_iter()
            .map(|(r, v)| {
                let value = match v {
                    Value::Float(f) => serde_json::json!(f),
                    Value::Integer(i) => serde_json::json!(i),
                    Value::Bool(b) => serde_json::json!(b),
                    Value::Text(t) => serde_json::json!(t),
                };
                match &r.unit {
                    Some(u) => serde_json::json!({"name": r.name, "value": value, "unit": u}),
                    None => serde_json::json!({"name": r.name, "value": value}),
                }
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"seq": seq, "ts": now, "metrics": metrics})).ok()
    }
}

fn write_words(img: &mut Image, table: Table, address: u16, words: &[u16]) {
    if let Some(m) = img.words(table) {
        for (i, w) in words.iter().enumerate() {
            m.insert(address.wrapping_add(i as u16), *w);
        }
    } else if let Some(m) = img.bits(table) {
        for (i, w) in words.iter().enumerate() {
            m.insert(address.wrapping_add(i as u16), *w != 0);
        }
    }
}

struct SimService(Arc<SimDevice>);

impl tokio_modbus::server::Service for SimService {
    type Request = Request<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<std::result::Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(self.0.handle(req))
    }
}

/// Authorisation of a Modbus/TCP Security client by its certificate (DER): `Err(reason)` refuses.
pub type PeerCheck = Arc<dyn Fn(&[u8]) -> std::result::Result<(), String> + Send + Sync>;

/// A running Modbus TCP server for one simulated device. Stops (and closes its connections) on
/// [`ModbusSimServer::stop`] or drop.
#[derive(Debug)]
pub struct ModbusSimServer {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ModbusSimServer {
    /// Bind `addr` (port 0 allowed) and serve `device`. With `tls`, speak Modbus/TCP Security.
    pub async fn start(
        addr: SocketAddr,
        device: Arc<SimDevice>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self> {
        Self::start_with_check(addr, device, tls, None).await
    }

    /// Like [`ModbusSimServer::start`]; with TLS, `authorize` is called with the client's verified
    /// certificate (DER) after the handshake, and a client it refuses is disconnected. This is
    /// where Modbus/TCP Security's role-based authorisation goes (the role is an extension of the
    /// client certificate; this crate does not parse certificates itself).
    pub async fn start_with_check(
        addr: SocketAddr,
        device: Arc<SimDevice>,
        tls: Option<Arc<rustls::ServerConfig>>,
        authorize: Option<PeerCheck>,
    ) -> Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Io {
            what: format!("modbus sim listener {addr}"),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            what: "modbus sim local address".into(),
            source,
        })?;
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let id = device.id.clone();
        let task = tokio::spawn(async move {
            let server = Server::new(listener);
            let on_err =
                |e: std::io::Error| tracing::debug!(error = %e, "modbus sim connection ended");
            let res = match tls {
                None => {
                    let on_connected = |stream: tokio::net::TcpStream, _peer: SocketAddr| {
                        let dev = device.clone();
                        async move {
                            let _ = stream.set_nodelay(true);
                            Ok(Some((SimService(dev), stream)))
                        }
                    };
                    server
                        .serve_until(&on_connected, on_err, c.cancelled_owned())
                        .await
                }
                Some(cfg) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let on_connected = |stream: tokio::net::TcpStream, peer: SocketAddr| {
                        let dev = device.clone();
                        let acceptor = acceptor.clone();
                        let authorize = authorize.clone();
                        async move {
                            // A failed handshake rejects this connection only, not the server.
                            match tokio::time::timeout(
                                Duration::from_secs(5),
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(tls)) => {
                                    if let Some(check) = &authorize {
                                        let cert = tls
                                            .get_ref()
                                            .1
                                            .peer_certificates()
                                            .and_then(|c| c.first());
                                        let verdict = match cert {
                                            Some(der) => check(der.as_ref()),
                                            None => Err("no client certificate".into()),
                                        };
                                        if let Err(reason) = verdict {
                                            tracing::info!(%peer, %reason, "modbus/tls client refused");
                                            return Ok(None);
                                        }
                                    }
                                    Ok(Some((SimService(dev), tls)))
                                }
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "modbus/tls handshake failed");
                                    Ok(None)
                                }
                                Err(_) => Ok(None),
                            }
                        }
                    };
                    server
                        .serve_until(&on_connected, on_err, c.cancelled_owned())
                        .await
                }
            };
            if let Err(e) = res {
                tracing::warn!(device = %id, error = %e, "modbus sim server stopped");
            }
        });
        Ok(Self {
            addr,
            cancel,
            task: Some(task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving, close every connection and release the port.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ModbusSimServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What a simulated MQTT device learned from the broker, as counters.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// PUBLISH packets sent (QoS 1).
    pub published: AtomicU64,
    /// PUBACKs with a success reason.
    pub acked: AtomicU64,
    /// PUBACKs with a failure reason (e.g. 0x87 not authorized: the broker's ACL denied the
    /// topic and dropped the message).
    pub denied: AtomicU64,
    /// Connection attempts that failed or were refused (TLS handshake refused for a revoked or
    /// unknown certificate, CONNACK refusal, broker unreachable).
    pub connect_failures: AtomicU64,
}

/// A problem a simulated MQTT device reports (see [`run_mqtt_publisher`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishReport {
    /// The broker acknowledged a publish with a failure reason and dropped it.
    Denied {
        device_id: String,
        topic: String,
        /// The MQTT v5 reason, e.g. `NotAuthorized`.
        reason: String,
    },
    /// The connection failed or was refused.
    ConnectFailed { device_id: String, error: String },
}

/// Publish `device`'s values to its telemetry topic (`medledger/devices/<segment>/telemetry`,
/// [`crate::mqtt::telemetry_topic`]) every `interval` at QoS 1 until `shutdown`; honours the
/// silent and malformed faults and reconnects on its own.
///
/// It speaks MQTT v5 so that a publish the broker's ACL denies is not lost silently: under
/// MQTT 3.1.1 Mosquitto acknowledges such a publish as if it was accepted and drops it, under
/// v5 its PUBACK carries reason 0x87 (not authorized). Denials and failed connections are
/// counted in `stats` and sent to `reports` (best effort: `try_send`, a full channel loses
/// reports, never blocks publishing). The client id is `sim-<segment>`: Mosquitto refuses every
/// ACL check for a client id with `+` or `#`, which HIBCC ids contain.
pub async fn run_mqtt_publisher(
    device: Arc<SimDevice>,
    broker: crate::mqtt::BrokerAddr,
    interval: Duration,
    stats: Arc<PublisherStats>,
    reports: Option<tokio::sync::mpsc::Sender<PublishReport>>,
    shutdown: CancellationToken,
) -> Result<()> {
    use rumqttc::v5::{mqttbytes::v5::Packet, mqttbytes::QoS, AsyncClient, Event};
    let client_id = format!("sim-{}", certs::mqtt_segment(device.id()));
    let opts = broker.options_v5(&client_id, true);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let topic = crate::mqtt::telemetry_topic(device.id());
    let report = |r: PublishReport| {
        if let Some(tx) = &reports {
            let _ = tx.try_send(r);
        }
    };
    let pump = async {
        // one report per streak of failures, not one per retry
        let mut failing = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => failing = false,
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    use rumqttc::v5::mqttbytes::v5::PubAckReason;
                    if matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) {
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let n = stats.denied.fetch_add(1, Ordering::Relaxed) + 1;
                        let reason = format!("{:?}", ack.reason);
                        tracing::warn!(device = %device.id(), %topic, %reason, denied = n, "broker denied a publish");
                        report(PublishReport::Denied {
                            device_id: device.id().to_string(),
                            topic: topic.clone(),
                            reason,
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        failing = true;
                        tracing::warn!(device = %device.id(), error = %e, "sim mqtt connection failed");
                        report(PublishReport::ConnectFailed {
                            device_id: device.id().to_string(),
                            error: e.to_string(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    };
    let publish = async {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            if let Some(p) = device.next_mqtt_payload() {
                if client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, p)
                    .await
                    .is_err()
                {
                    return;
                }
                stats.published.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    tokio::select! {
        _ = pump => {},
        _ = publish => {},
        _ = shutdown.cancelled() => { let _ = client.try_disconnect(); },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!("alarm on".parse::<Fault>(), Ok(Fault::Alarm(true)));
        assert_eq!("drift 2.5".parse::<Fault>(), Ok(Fault::Drift(2.5)));
        assert_eq!("exception 4".parse::<Fault>(), Ok(Fault::Exception(4)));
        assert_eq!(
            "refuse input:10".parse::<Fault>(),
            Ok(Fault::Refuse(Some((Table::Input, 10))))
        );
        assert_eq!("refuse off".parse::<Fault>(), Ok(Fault::Refuse(None)));
        assert!("refuse nowhere:1".parse::<Fault>().is_err());
        assert!("bogus 1".parse::<Fault>().is_err());
        assert!("silent maybe".parse::<Fault>().is_err());
    }

    #[test]
    fn alarm_fault_sets_alarm_registers_and_payloads_are_valid() {
        let p = Arc::new(crate::profile::builtin_profile("infusion-pump").expect("profile"));
        let d = SimDevice::new("pump-1", p);
        let alarm = |d: &SimDevice| {
            d.current_values()
                .into_iter()
                .find(|(r, _)| r.name == "alarm_bits")
                .map(|(_, v)| v)
        };
        assert_eq!(alarm(&d), Some(Value::Integer(0)));
        d.set_fault(Fault::Alarm(true));
        assert_eq!(alarm(&d), Some(Value::Integer(5)));
        let payload = d.next_mqtt_payload().expect("payload");
        let parsed = crate::mqtt::parse_payload(
            "medledger/devices/pump-1/telemetry",
            &payload,
            65536,
            time::OffsetDateTime::now_utc(),
        )
        .expect("sim payload parses");
        assert!(parsed.iter().any(|t| t.metric == "flow_rate"));
        d.set_fault(Fault::Malformed(1));
        let bad = d.next_mqtt_payload().expect("payload");
        assert!(crate::mqtt::parse_payload(
            "medledger/devices/pump-1/telemetry",
            &bad,
            65536,
            time::OffsetDateTime::now_utc()
        )
        .is_err());
    }
}
