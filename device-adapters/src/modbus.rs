//! Modbus TCP poller: reads many devices concurrently, per their profiles.
//!
//! Each device gets its own task. A poll reads the profile's registers (adjacent registers of
//! one table are read in one request), decodes them with [`crate::decode`], and hands the values
//! to the channel. Every request has a timeout. Exceptions, timeouts and refused connections are
//! counted per device; after a failure the next attempt is delayed with exponential backoff, and
//! after `offline_after` consecutive failures the device is reported offline (status event and
//! status map); the first successful poll after that reports it online again.
//!
//! Backpressure: a poll result that does not fit in the channel right now is dropped whole and
//! counted as `shed` (the next poll brings fresher values; the `seq` gap shows it downstream).
//! The poller never waits on the consumer, so one slow consumer cannot stall polling timing, and
//! nothing is buffered beyond the channel.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::{sync::mpsc, time::Instant};
use tokio_modbus::{client::Context, prelude::Reader, Slave};
use tokio_util::sync::CancellationToken;

use crate::{
    profile::{DeviceProfile, Table},
    AdapterEvent, DeviceStatus, Error, Result, Source, Telemetry, TimestampSource,
};

/// Default port of Modbus/TCP Security.
pub const MODBUS_TLS_PORT: u16 = 802;

/// TLS for Modbus/TCP Security: a client config from the caller (with the gateway's certificate)
/// and the name the device's certificate must carry.
#[derive(Clone)]
pub struct ModbusTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for ModbusTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// One device to poll.
#[derive(Debug, Clone)]
pub struct ModbusDeviceConfig {
    pub device_id: String,
    pub addr: SocketAddr,
    /// Modbus unit id (slave id); 1 for most TCP devices, 255 also common.
    pub unit_id: u8,
    pub profile: Arc<DeviceProfile>,
    pub tls: Option<ModbusTls>,
}

/// Poller settings; `Default` values are written next to each field.
#[derive(Debug, Clone)]
pub struct PollerConfig {
    /// Per request (and per connect). Default 1 s.
    pub request_timeout: Duration,
    /// Consecutive failed polls before a device is reported offline. Default 3.
    pub offline_after: u32,
    /// First retry delay after a failure, doubled per failure up to `backoff_max`, ±50 % jitter;
    /// never shorter than the poll interval. Defaults 500 ms and 30 s.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(1),
            offline_after: 3,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// A copy of one device's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceHealth {
    /// `None` until the first poll decided it.
    pub online: Option<bool>,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub exceptions: u64,
    pub timeouts: u64,
    pub connect_errors: u64,
    pub io_errors: u64,
    pub decode_errors: u64,
    /// Poll results dropped because the channel was full.
    pub shed: u64,
    /// Polls delivered with some register blocks missing (answered with an exception).
    pub missing_blocks: u64,
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct DeviceCounters {
    known: AtomicBool,
    online: AtomicBool,
    polls_ok: AtomicU64,
    polls_failed: AtomicU64,
    exceptions: AtomicU64,
    timeouts: AtomicU64,
    connect_errors: AtomicU64,
    io_errors: AtomicU64,
    decode_errors: AtomicU64,
    shed: AtomicU64,
    missing_blocks: AtomicU64,
    consecutive_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Lateness of poll starts against their schedule, 1 ms buckets up to 1 s (plus overflow).
#[derive(Debug)]
pub struct LatenessHistogram {
    buckets: Vec<AtomicU64>,
}

impl Default for LatenessHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..=1001).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatenessHistogram {
    fn record(&self, late: Duration) {
        let i = (late.as_millis() as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Number of recorded polls.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The q-quantile (0..=1) in whole milliseconds (upper bucket edge; 1001 means > 1 s).
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= want {
                return Some(i as u64 + 1);
            }
        }
        Some(self.buckets.len() as u64)
    }

    pub fn reset(&self) {
        self.buckets
            .iter()
            .for_each(|b| b.store(0, Ordering::Relaxed));
    }
}

/// Shared poller state: per-device counters and poll lateness.
#[derive(Debug, Default)]
pub struct PollerStats {
    devices: Mutex<HashMap<String, Arc<DeviceCounters>>>,
    /// How late each scheduled poll started (scheduler load; retries after failures excluded).
    pub lateness: LatenessHistogram,
}

impl PollerStats {
    /// Health of every device, by device id.
    pub fn snapshot(&self) -> HashMap<String, DeviceHealth> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .iter()
            .map(|(id, c)| (id.clone(), c.health()))
            .collect()
    }

    /// Health of one device.
    pub fn device(&self, device_id: &str) -> Option<DeviceHealth> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.get(device_id).map(|c| c.health())
    }
}

impl DeviceCounters {
    fn health(&self) -> DeviceHealth {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DeviceHealth {
            online: self
                .known
                .load(Ordering::Relaxed)
                .then(|| self.online.load(Ordering::Relaxed)),
            polls_ok: g(&self.polls_ok),
            polls_failed: g(&self.polls_failed),
            exceptions: g(&self.exceptions),
            timeouts: g(&self.timeouts),
            connect_errors: g(&self.connect_errors),
            io_errors: g(&self.io_errors),
            decode_errors: g(&self.decode_errors),
            shed: g(&self.shed),
            missing_blocks: g(&self.missing_blocks),
            consecutive_failures: g(&self.consecutive_failures),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// One read request covering one or more registers of the profile.
#[derive(Debug, Clone)]
struct Block {
    table: Table,
    start: u16,
    count: u16,
    /// (index into profile.registers, offset of its first word inside the block)
    members: Vec<(usize, u16)>,
}

/// Group the profile's registers into as few reads as possible: same table, contiguous
/// addresses, at most 125 words (Modbus limit) or 2000 bits. Gaps are never bridged, since a
/// real device answers unmapped addresses with an exception.
fn plan(profile: &DeviceProfile) -> Vec<Block> {
    let mut regs: Vec<(usize, &crate::profile::RegisterDef)> =
        profile.registers.iter().enumerate().collect();
    regs.sort_by_key(|(_, r)| (r.table as u8, r.address));
    let mut out: Vec<Block> = Vec::new();
    for (i, r) in regs {
        let n = r.words();
        let limit = if r.table.is_bits() { 2000 } else { 125 };
        if let Some(b) = out.last_mut() {
            let end = u32::from(b.start) + u32::from(b.count);
            if b.table == r.table
                && u32::from(r.address) == end
                && u32::from(b.count) + u32::from(n) <= limit
            {
                b.members.push((i, b.count));
                b.count += n;
                continue;
            }
        }
        out.push(Block {
            table: r.table,
            start: r.address,
            count: n,
            members: vec![(i, 0)],
        });
    }
    out
}

/// The Modbus poller for a set of devices.
#[derive(Debug)]
pub struct ModbusPoller {
    config: PollerConfig,
    devices: Vec<ModbusDeviceConfig>,
    stats: Arc<PollerStats>,
}

enum PollError {
    Connect(String),
    Timeout(String),
    Exception(String),
    Io(String),
}

impl PollError {
    fn message(&self) -> &str {
        match self {
            PollError::Connect(m)
            | PollError::Timeout(m)
            | PollError::Exception(m)
            | PollError::Io(m) => m,
        }
    }
    /// Whether the connection is unusable afterwards.
    fn drops_connection(&self) -> bool {
        !matches!(self, PollError::Exception(_))
    }
}

impl ModbusPoller {
    pub fn new(config: PollerConfig, devices: Vec<ModbusDeviceConfig>) -> Result<Self> {
        if config.request_timeout.is_zero() {
            return Err(Error::Config {
                field: "request_timeout",
                message: "must be > 0".into(),
            });
        }
        if config.offline_after == 0 {
            return Err(Error::Config {
                field: "offline_after",
                message: "must be >= 1".into(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for d in &devices {
            if !seen.insert(d.device_id.as_str()) {
                return Err(Error::Config {
                    field: "devices",
                    message: format!("duplicate device id {}", d.device_id),
                });
            }
            d.profile.validate()?;
        }
        let stats = Arc::new(PollerStats::default());
        {
            let mut m = stats.devices.lock().unwrap_or_else(|e| e.into_inner());
            for d in &devices {
                m.insert(d.device_id.clone(), Arc::new(DeviceCounters::default()));
            }
        }
        Ok(Self {
            config,
            devices,
            stats,
        })
    }

    pub fn stats(&self) -> Arc<PollerStats> {
        self.stats.clone()
    }

    /// Poll every device until `shutdown`. Device tasks are spawned on the current runtime (so a
    /// current-thread runtime keeps the whole poller on one core). Returns
    /// [`Error::ChannelClosed`] if the consumer goes away.
    pub async fn run(
        self,
        tx: mpsc::Sender<AdapterEvent>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        for d in &self.devices {
            if d.profile.registers.len() > tx.max_capacity() {
                return Err(Error::Config {
                    field: "channel capacity",
                    message: format!(
                        "device {} has {} registers, more than the channel holds",
                        d.device_id,
                        d.profile.registers.len()
                    ),
                });
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        let stop = shutdown.child_token();
        for d in self.devices {
            let counters = {
                let m = self.stats.devices.lock().unwrap_or_else(|e| e.into_inner());
                m.get(&d.device_id).cloned().unwrap_or_default()
            };
            let dp = DevicePoller {
                plan: plan(&d.profile),
                source: Source::Modbus {
                    endpoint: format!("{}/{}", d.addr, d.unit_id),
                },
                dev: d,
                cfg: self.config.clone(),
                counters,
                stats: self.stats.clone(),
                tx: tx.clone(),
            };
            tasks.spawn(dp.run(stop.clone()));
        }
        drop(tx);
        let mut result = Ok(());
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                // The consumer is gone: stop everyone.
                stop.cancel();
                result = Err(e);
            }
        }
        result
    }
}

struct DevicePoller {
    dev: ModbusDeviceConfig,
    plan: Vec<Block>,
    source: Source,
    cfg: PollerConfig,
    counters: Arc<DeviceCounters>,
    stats: Arc<PollerStats>,
    tx: mpsc::Sender<AdapterEvent>,
}

impl DevicePoller {
    async fn run(self, stop: CancellationToken) -> Result<()> {
        let interval = self.dev.profile.poll_interval();
        // Spread the first polls over one interval so a thousand devices do not fire together.
        let phase = {
            use rand::Rng;
            interval.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
        };
        let mut next = Instant::now() + phase;
        let mut scheduled = true;
        let mut ctx: Option<Context> = None;
        let mut seq: u64 = 0;
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            if scheduled {
                self.stats
                    .lateness
                    .record(started.saturating_duration_since(next));
            }
            seq += 1;
            match self.poll_once(&mut ctx, seq).await {
                Ok(values) => {
                    failures = 0;
                    self.counters.polls_ok.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .consecutive_failures
                        .store(0, Ordering::Relaxed);
                    if !self.counters.online.load(Ordering::Relaxed)
                        || !self.counters.known.load(Ordering::Relaxed)
                    {
                        self.set_online(true, None)?;
                    }
                    self.deliver(values)?;
                    // Keep the schedule; if we fell more than a period behind, skip the missed
                    // polls instead of bursting.
                    next += interval;
                    if next < started {
                        next = started + interval;
                    }
                    scheduled = true;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let c = &self.counters;
                    c.polls_failed.fetch_add(1, Ordering::Relaxed);
                    c.consecutive_failures
                        .store(u64::from(failures), Ordering::Relaxed);
                    match &e {
                        PollError::Connect(_) => c.connect_errors.fetch_add(1, Ordering::Relaxed),
                        PollError::Timeout(_) => c.timeouts.fetch_add(1, Ordering::Relaxed),
                        PollError::Exception(_) => c.exceptions.fetch_add(1, Ordering::Relaxed),
                        PollError::Io(_) => c.io_errors.fetch_add(1, Ordering::Relaxed),
                    };
                    *c.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(e.message().to_owned());
                    if e.drops_connection() {
                        if let Some(mut old) = ctx.take() {
                            use tokio_modbus::client::Client;
                            let _ =
                                tokio::time::timeout(Duration::from_millis(100), old.disconnect())
                                    .await;
                        }
                    }
                    tracing::debug!(device = %self.dev.device_id, error = e.message(), failures, "modbus poll failed");
                    if failures >= self.cfg.offline_after
                        && (c.online.load(Ordering::Relaxed) || !c.known.load(Ordering::Relaxed))
                    {
                        tracing::warn!(device = %self.dev.device_id, error = e.message(), failures, "modbus device offline");
                        self.set_online(false, Some(e.message().to_owned()))?;
                    }
                    let backoff = crate::mqtt::backoff_delay(
                        self.cfg.backoff_initial,
                        self.cfg.backoff_max,
                        failures - 1,
                    );
                    next = Instant::now() + backoff.max(interval);
                    scheduled = false;
                }
            }
        }
        Ok(())
    }

    fn set_online(&self, online: bool, reason: Option<String>) -> Result<()> {
        self.counters.known.store(true, Ordering::Relaxed);
        self.counters.online.store(online, Ordering::Relaxed);
        if online {
            tracing::info!(device = %self.dev.device_id, "modbus device online");
        }
        let ev = AdapterEvent::Status(DeviceStatus {
            device_id: self.dev.device_id.clone(),
            source: self.source.clone(),
            online,
            reason,
            at: OffsetDateTime::now_utc(),
        });
        match self.tx.try_send(ev) {
            Ok(()) => Ok(()),
            // The status map is authoritative; a status event that does not fit is shed.
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.shed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::ChannelClosed),
        }
    }

    fn deliver(&self, values: Vec<Telemetry>) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        match self.tx.try_reserve_many(values.len()) {
            Ok(permits) => {
                for (permit, t) in permits.zip(values) {
                    permit.send(AdapterEvent::Telemetry(t));
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                self.counters.shed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(())) => Err(Error::ChannelClosed),
        }
    }

    async fn connect(&self) -> std::result::Result<Context, PollError> {
        let t = self.cfg.request_timeout;
        let addr = self.dev.addr;
        let stream = match tokio::time::timeout(t, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(PollError::Connect(format!("connect to {addr}: {e}"))),
            Err(_) => return Err(PollError::Timeout(format!("connect to {addr} timed out"))),
        };
        let _ = stream.set_nodelay(true);
        let slave = Slave(self.dev.unit_id);
        match &self.dev.tls {
            None => Ok(tokio_modbus::client::tcp::attach_slave(stream, slave)),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                match tokio::time::timeout(t, connector.connect(tls.server_name.clone(), stream))
                    .await
                {
                    Ok(Ok(s)) => Ok(tokio_modbus::client::tcp::attach_slave(s, slave)),
                    Ok(Err(e)) => Err(PollError::Connect(format!(
                        "tls handshake with {addr}: {e}"
                    ))),
                    Err(_) => Err(PollError::Timeout(format!(
                        "tls handshake with {addr} timed out"
                    ))),
                }
            }
        }
    }

    async fn poll_once(
        &self,
        ctx: &mut Option<Context>,
        seq: u64,
    ) -> std::result::Result<Vec<Telemetry>, PollError> {
        if ctx.is_none() {
            *ctx = Some(self.connect().await?);
        }
        let Some(c) = ctx.as_mut() else {
            return Err(PollError::Io("no connection".into()));
        };
        let now = OffsetDateTime::now_utc();
        let profile = &self.dev.profile;
        let mut out = Vec::with_capacity(profile.registers.len());
        // A block answered with an exception (one address range the device does not serve right
        // now) leaves its values missing and keeps the others; only when every block is refused
        // does the poll fail. Timeouts and I/O errors mean the device itself is not answering.
        let mut refused: Option<PollError> = None;
        let mut refused_blocks = 0u64;
        let mut answered = 0usize;
        for b in &self.plan {
            let what = format!("{:?} {}+{}", b.table, b.start, b.count);
            let fut = async {
                match b.table {
                    Table::Holding => c.read_holding_registers(b.start, b.count).await,
                    Table::Input => c.read_input_registers(b.start, b.count).await,
                    Table::Coil => c
                        .read_coils(b.start, b.count)
                        .await
                        .map(|r| r.map(|bits| bits.into_iter().map(u16::from).collect())),
                    Table::Discrete => c
                        .read_discrete_inputs(b.start, b.count)
                        .await
                        .map(|r| r.map(|bits| bits.into_iter().map(u16::from).collect())),
                }
            };
            let words: Vec<u16> = match tokio::time::timeout(self.cfg.request_timeout, fut).await {
                Err(_) => return Err(PollError::Timeout(format!("read {what} timed out"))),
                Ok(Err(e)) => return Err(PollError::Io(format!("read {what}: {e}"))),
                Ok(Ok(Err(code))) => {
                    let message = format!("read {what}: exception {code:?}");
                    refused_blocks += 1;
                    tracing::debug!(device = %self.dev.device_id, error = %message, "modbus block missing");
                    refused = Some(PollError::Exception(message));
                    continue;
                }
                Ok(Ok(Ok(w))) => w,
            };
            answered += 1;
            for &(i, off) in &b.members {
                let Some(r) = profile.registers.get(i) else {
                    continue;
                };
                let start = usize::from(off);
                let end = start + usize::from(r.words());
                let Some(slice) = words.get(start..end) else {
                    return Err(PollError::Io(format!(
                        "read {what}: short response ({} words)",
                        words.len()
                    )));
                };
                match r.decode(slice) {
                    Ok(value) => out.push(Telemetry {
                        device_id: self.dev.device_id.clone(),
                        metric: r.name.clone(),
                        value,
                        unit: r.unit.clone(),
                        timestamp: now,
                        timestamp_source: TimestampSource::Gateway,
                        received_at: now,
                        source: self.source.clone(),
                        seq,
                    }),
                    Err(e) => {
                        self.counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(device = %self.dev.device_id, error = %e, "modbus value not decodable");
                    }
                }
            }
        }
        match refused {
            // Counted by the caller as one failed poll.
            Some(e) if answered == 0 => Err(e),
            Some(e) => {
                self.counters
                    .exceptions
                    .fetch_add(refused_blocks, Ordering::Relaxed);
                self.counters.missing_blocks.fetch_add(1, Ordering::Relaxed);
                *self
                    .counters
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.message().to_owned());
                Ok(out)
            }
            None => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_merges_contiguous_registers_only() {
        let p = crate::profile::builtin_profile("infusion-pump").expect("profile");
        let blocks = plan(&p);
        // holding 0..4 (flow f32 + volume u32) is one read; input 0..5 one read, input 10..16
        // (serial string) another; one coil, one discrete.
        let summary: Vec<(Table, u16, u16)> =
            blocks.iter().map(|b| (b.table, b.start, b.count)).collect();
        assert_eq!(
            summary,
            vec![
                (Table::Holding, 0, 4),
                (Table::Input, 0, 5),
                (Table::Input, 10, 6),
                (Table::Coil, 0, 1),
                (Table::Discrete, 0, 1)
            ]
        );
        let members: usize = blocks.iter().map(|b| b.members.len()).sum();
        assert_eq!(members, p.registers.len());
    }

    #[test]
    fn histogram_quantiles() {
        let h = LatenessHistogram::default();
        assert_eq!(h.quantile_ms(0.99), None);
        for ms in 0..100 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_ms(0.5), Some(50));
        assert_eq!(h.quantile_ms(0.99), Some(99));
        h.record(Duration::from_secs(5));
        assert_eq!(h.quantile_ms(1.0), Some(1002));
    }
}
