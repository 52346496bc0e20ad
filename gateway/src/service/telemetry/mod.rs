//! Telemetry to ledger: the adapters (MQTT subscriber, Modbus poller) feed bounded channels; one
//! pipeline task applies the [`rules`] to each value, appends the events they make to the
//! [`outbox`] on disk (fsync; what waits at once shares one write: group commit) and only then
//! lets the MQTT messages be acknowledged; a drainer
//! proposes the outbox's events to the ledger oldest first and removes each once applied.
//! Values are kept in [`recent`] for the staff view; raw samples never enter the ledger.
//!
//! ```text
//! MQTT --run_acked--> msg channel --\
//! Modbus poller ---> event channel --+--> pipeline: rules -> outbox (fsync) -> ack --> drainer --> Node::submit
//!                                    \--> recent (bounded, memory)
//! ```
//!
//! Exactly once: an event's id is a hash of device, rule and triggering sample, so a replay
//! (redelivered MQTT message after a crash, a retried proposal after a leader change, an outbox
//! file that reappears) is a no-op in the ledger's event-id index.

pub mod outbox;
pub mod recent;
pub mod rules;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::Json;
use device_adapters::modbus::{
    ModbusDeviceConfig, ModbusPoller, ModbusTls, PollerConfig, PollerStats,
};
use device_adapters::mqtt::{
    BrokerAddr, MqttConfig, MqttMessage, MqttStats, MqttSubscriber, MqttTransport,
};
use device_adapters::{AdapterEvent, Telemetry};
use ledger_node::{ApplyOutcome, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use crate::config::Config;
use crate::service::api::extract::PathParams;
use crate::service::api::ApiError;
use crate::service::node::{Node, WriteError};
use crate::service::tls::TlsMaterial;

use outbox::Outbox;
use recent::Recent;
use rules::{Engine, Rule, RuleEvent, RuleState};

/// Milliseconds from a value's arrival at the gateway (`received_at`) until the pipeline is done
/// with it (rules applied; its events, if any, fsynced in the outbox): 1 ms buckets to 1 s, then
/// one overflow bucket.
#[derive(Debug)]
pub struct LatencyMs {
    buckets: Vec<AtomicU64>,
}

impl Default for LatencyMs {
    fn default() -> Self {
        Self {
            buckets: (0..=1001).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyMs {
    fn record(&self, ms: i64) {
        let i = usize::try_from(ms.max(0))
            .unwrap_or(usize::MAX)
            .min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The q-quantile in whole ms (upper bucket edge; 1002 = over a second), `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(i as u64 + 1);
            }
        }
        Some(counts.len() as u64)
    }
}

/// Pipeline counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Arrival to done (outbox), per MQTT message or Modbus value.
    pub latency: LatencyMs,
    /// Values that went through the rules.
    pub samples: AtomicU64,
    /// Values that raised no event while the outbox was full: not kept for the staff view.
    pub samples_dropped: AtomicU64,
    /// Events the rules made (before outbox de-duplication).
    pub rule_events: AtomicU64,
    /// Outbox events the ledger applied (new or duplicate).
    pub events_applied: AtomicU64,
    /// Of those, already in the ledger (a replay).
    pub events_duplicate: AtomicU64,
    /// SIGHUP reloads that took effect...
    pub reloads: AtomicU64,
    /// ...and that were refused (the running config kept).
    pub reloads_refused: AtomicU64,
}

/// What the telemetry path exposes to the rest of the service.
pub struct TelemetryService {
    pub recent: Arc<Recent>,
    pub outbox: Arc<Outbox>,
    pub counters: Arc<Counters>,
    adapters: std::sync::Mutex<AdapterStats>,
    /// The data directory's free-space reserve, shared with the ledger: the outbox waits
    /// below it.
    disk: Arc<crate::service::disk::DiskGuard>,
    /// Prometheus: ingest by adapter, rule events by rule.
    metrics: Arc<crate::service::metrics::Metrics>,
}

impl TelemetryService {
    /// Counters, outbox size and adapter health, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let adapters = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "samples": g(&c.samples),
            "samples_dropped": g(&c.samples_dropped),
            "rule_events": g(&c.rule_events),
            "events_applied": g(&c.events_applied),
            "events_duplicate": g(&c.events_duplicate),
            "reloads": g(&c.reloads),
            "reloads_refused": g(&c.reloads_refused),
            "sample_to_outbox_ms": {
                "p50": c.latency.quantile(0.5),
                "p99": c.latency.quantile(0.99),
                "max": c.latency.quantile(1.0),
            },
            "outbox": self.outbox.stats(),
            "mqtt": adapters.mqtt.as_ref().map(|m| m.snapshot()),
            "modbus": adapters.modbus.as_ref().map(|m| m.snapshot()),
        })
    }
}

fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("telemetry-state.json")
}

/// Reads the persisted rule state; an unreadable file is moved aside (reported) and the rules
/// start afresh rather than keeping the whole gateway down.
fn load_state(path: &Path) -> RuleState {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                let aside = path.with_extension("json.bad");
                tracing::error!(file = %path.display(), error = %e, moved_to = %aside.display(), "rule state unreadable; rules start afresh");
                let _ = std::fs::rename(path, aside);
                RuleState::default()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RuleState::default(),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "rule state unreadable; rules start afresh");
            RuleState::default()
        }
    }
}

/// Writes the rule state durably (temp file, fsync, rename, fsync of the directory).
fn save_state(path: &Path, state: &RuleState) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Starts the outbox drainer and the adapters and rules named in the config, and on SIGHUP
/// reloads adapters and rules from the config file (the ledger, the outbox and the drainer are
/// not touched; a config that does not check out is refused and the running one kept). Returns
/// `None` when the config names no adapter and no outbox events wait.
pub async fn start(
    config: &Config,
    node: Arc<Node>,
    tls: &TlsMaterial,
    tasks: &mut JoinSet<()>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<Arc<TelemetryService>>> {
    let data_dir = &config.node.data_dir;
    let outbox_dir = data_dir.join("outbox");
    let idle = config.mqtt.is_none() && config.modbus.is_empty();
    if idle && !outbox_dir.exists() {
        tasks.spawn(ignore_hangups(shutdown));
        return Ok(None);
    }
    let outbox = Arc::new(
        Outbox::open(&outbox_dir, config.telemetry.outbox_max_bytes).context("telemetry outbox")?,
    );
    let counters = Arc::new(Counters::default());
    let author = format!(
        "sha256:{}",
        tls.gateway
            .chain
            .first()
            .map(|c| certs::identity::fingerprint(c.as_ref()))
            .unwrap_or_default()
    );
    tasks.spawn(drain(
        node.clone(),
        outbox.clone(),
        counters.clone(),
        author,
        shutdown.clone(),
    ));
    let t = &config.telemetry;
    let service = Arc::new(TelemetryService {
        recent: Arc::new(Recent::new(
            t.recent_window_s,
            t.recent_bucket_s,
            t.recent_max_devices,
        )),
        outbox,
        counters,
        adapters: std::sync::Mutex::new(AdapterStats::default()),
        disk: node.disk.clone(),
        metrics: node.metrics.clone(),
    });
    let probe = service.outbox.clone();
    node.metrics.set_outbox_probe(move || {
        let s = probe.stats();
        (s.events, s.bytes, s.max_bytes)
    });
    // The first generation's errors stop the start (exit naming the field); a reload's only
    // refuse the reload.
    let mut generation = JoinSet::new();
    let token = shutdown.child_token();
    spawn_generation(config, tls, &service, &mut generation, token.clone())?;
    tasks.spawn(supervise(
        config.clone(),
        service.clone(),
        generation,
        token,
        shutdown,
    ));
    Ok(Some(service))
}

/// Without telemetry there is nothing to reload, but SIGHUP (`systemctl kill -s HUP`) must still
/// not end the gateway, which is the signal's default action.
async fn ignore_hangups(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => tracing::warn!(
                "SIGHUP: no [mqtt] or [[modbus]] at start, nothing to reload; starting telemetry takes a restart"
            ),
        }
    }
}

/// Adapter counters of the running generation.
#[derive(Default)]
struct AdapterStats {
    mqtt: Option<Arc<MqttStats>>,
    modbus: Option<Arc<PollerStats>>,
}

/// Runs the current generation of adapters and rules; on SIGHUP, reads the config file again
/// and, if it checks out, stops the generation (the pipeline saves the rules' state) and starts
/// the next from the new config.
async fn supervise(
    mut config: Config,
    service: Arc<TelemetryService>,
    mut generation: JoinSet<()>,
    mut token: CancellationToken,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: telemetry reloads need a restart");
            None
        }
    };
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hup_recv => {}
        }
        let Some(path) = config.source.clone() else {
            tracing::warn!("SIGHUP: the config was not loaded from a file; nothing to reload");
            continue;
        };
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: config refused; telemetry keeps running as it was");
                service
                    .counters
                    .reloads_refused
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if new.node.id != config.node.id || new.node.data_dir != config.node.data_dir {
            tracing::error!(
                "SIGHUP: [node] changed; that takes a restart. Telemetry keeps running as it was"
            );
            service
                .counters
                .reloads_refused
                .fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let tls = match TlsMaterial::load(&new) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS material unreadable; telemetry keeps running as it was");
                service
                    .counters
                    .reloads_refused
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        token.cancel();
        while generation.join_next().await.is_some() {}
        token = shutdown.child_token();
        let started = spawn_generation(&new, &tls, &service, &mut generation, token.clone());
        match started {
            Ok(()) => {
                tracing::info!(file = %path.display(), "SIGHUP: telemetry adapters and rules reloaded");
                service.counters.reloads.fetch_add(1, Ordering::Relaxed);
                config = new;
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the new telemetry config did not start; back to the previous one");
                service
                    .counters
                    .reloads_refused
                    .fetch_add(1, Ordering::Relaxed);
                while generation.join_next().await.is_some() {}
                token = shutdown.child_token();
                if let Err(e) =
                    spawn_generation(&config, &tls, &service, &mut generation, token.clone())
                {
                    tracing::error!(error = %e, "telemetry stopped: the previous config no longer starts either");
                }
            }
        }
    }
    token.cancel();
    while generation.join_next().await.is_some() {}
}

/// Starts one generation: the MQTT subscriber, the Modbus poller and the rules pipeline, all
/// stopped by `token`.
fn spawn_generation(
    config: &Config,
    tls: &TlsMaterial,
    service: &Arc<TelemetryService>,
    tasks: &mut JoinSet<()>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let t = &config.telemetry;
    let (msg_tx, msg_rx) = mpsc::channel::<MqttMessage>(t.channel_capacity / 16);
    let (ev_tx, ev_rx) = mpsc::channel::<AdapterEvent>(t.channel_capacity);
    let mut stats = AdapterStats::default();
    let mut subscriber = None;
    if let Some(m) = &config.mqtt {
        let transport = if m.tls {
            MqttTransport::Tls(
                certs::mqtt_client_config(&tls.roots, &tls.gateway)
                    .context("mqtt: tls client config from [tls]")?,
            )
        } else {
            MqttTransport::PlainInsecure
        };
        let mut mc = MqttConfig::new(
            BrokerAddr {
                host: m.host.clone(),
                port: m.port,
                transport,
            },
            m.client_id(config.node.id),
        );
        mc.topic_filter = m.topic_filter.clone();
        mc.max_payload_bytes = m.max_payload_bytes;
        mc.keep_alive = Duration::from_secs(m.keep_alive_s);
        let sub = MqttSubscriber::new(mc).context("mqtt")?;
        stats.mqtt = Some(sub.stats());
        subscriber = Some(sub);
    }
    let mut poller = None;
    if !config.modbus.is_empty() {
        let mut devices = Vec::new();
        for d in &config.modbus {
            let Some(profile) = config.profiles.get(&d.profile) else {
                anyhow::bail!(
                    "modbus.profile: device {}: profile {} not loaded",
                    d.device_id,
                    d.profile
                );
            };
            let mut profile = (**profile).clone();
            if let Some(ms) = d.poll_interval_ms {
                profile.poll_interval_ms = ms;
            }
            let Some(addr) = d.socket_addr else {
                anyhow::bail!("modbus.address: device {}: not resolved", d.device_id);
            };
            let tls_cfg = if d.tls {
                let key = match (&d.role_cert_file, &d.role_key_file) {
                    (Some(c), Some(k)) => {
                        certs::CertifiedKey::from_files(c, k).with_context(|| {
                            format!("modbus.role_cert_file: device {}", d.device_id)
                        })?
                    }
                    _ => {
                        certs::CertifiedKey::from_files(&config.tls.cert_file, &config.tls.key_file)
                            .context("tls.cert_file / tls.key_file")?
                    }
                };
                let host = d.server_name.clone().unwrap_or_else(|| {
                    d.address
                        .rsplit_once(':')
                        .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
                        .unwrap_or_default()
                });
                let server_name = rustls::pki_types::ServerName::try_from(host.clone())
                    .with_context(|| {
                        format!("modbus.server_name: device {}: {host:?}", d.device_id)
                    })?;
                Some(ModbusTls {
                    config: certs::modbus_client_config(&tls.roots, &key)?,
                    server_name,
                })
            } else {
                None
            };
            devices.push(ModbusDeviceConfig {
                device_id: d.device_id.clone(),
                addr,
                unit_id: d.unit_id,
                profile: Arc::new(profile),
                tls: tls_cfg,
            });
        }
        let p = ModbusPoller::new(
            PollerConfig {
                request_timeout: Duration::from_millis(t.modbus_request_timeout_ms),
                offline_after: t.modbus_offline_after,
                ..PollerConfig::default()
            },
            devices,
        )
        .context("modbus")?;
        stats.modbus = Some(p.stats());
        poller = Some(p);
    }
    // Everything is checked: start the tasks.
    if let Some(sub) = subscriber {
        let sd = token.clone();
        tasks.spawn(async move {
            if let Err(e) = sub.run_acked(msg_tx, sd).await {
                tracing::error!(error = %e, "mqtt subscriber stopped");
            }
        });
    }
    if let Some(p) = poller {
        let sd = token.clone();
        tasks.spawn(async move {
            if let Err(e) = p.run(ev_tx, sd).await {
                tracing::error!(error = %e, "modbus poller stopped");
            }
        });
    }
    let rules: Vec<Rule> = config.rules.iter().filter_map(Rule::from_config).collect();
    let profiles: HashMap<String, String> = config
        .modbus
        .iter()
        .map(|d| (d.device_id.clone(), d.profile.clone()))
        .collect();
    let known: Vec<String> = config.modbus.iter().map(|d| d.device_id.clone()).collect();
    let state_file = state_path(&config.node.data_dir);
    let engine = Engine::new(
        rules,
        profiles,
        load_state(&state_file),
        ledger_node::ledger::now_ms(),
        &known,
    );
    let pipeline = Pipeline {
        engine,
        disk: service.disk.clone(),
        metrics: service.metrics.clone(),
        outbox: service.outbox.clone(),
        recent: service.recent.clone(),
        counters: service.counters.clone(),
        state_file,
        shutdown: token,
    };
    tasks.spawn(pipeline.run(msg_rx, ev_rx));
    *service.adapters.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    tracing::info!(
        mqtt = config.mqtt.is_some(),
        modbus_devices = config.modbus.len(),
        rules = config.rules.len(),
        outbox_events = service.outbox.stats().events,
        "telemetry running"
    );
    Ok(())
}

/// Why a step of the pipeline did not complete.
enum Stop {
    Shutdown,
}

/// At most this many inputs (MQTT messages, Modbus values) share one outbox write.
const MAX_BATCH: usize = 512;

/// At most this many outbox events share one Raft entry on their way to the ledger.
const DRAIN_BATCH: usize = 64;

/// What a batch holds until its outbox write: events not yet written, the messages waiting
/// for them, and their arrival times.
#[derive(Default)]
struct Held {
    events: Vec<RuleEvent>,
    bytes: u64,
    acks: Vec<MqttMessage>,
    arrivals: Vec<i64>,
}

/// One input of the pipeline.
enum Input {
    Message(MqttMessage),
    Adapter(AdapterEvent),
}

struct Pipeline {
    engine: Engine,
    /// The outbox shares the data directory's reserve with the ledger.
    disk: Arc<crate::service::disk::DiskGuard>,
    metrics: Arc<crate::service::metrics::Metrics>,
    outbox: Arc<Outbox>,
    recent: Arc<Recent>,
    counters: Arc<Counters>,
    state_file: PathBuf,
    shutdown: CancellationToken,
}

impl Pipeline {
    async fn run(
        mut self,
        mut msgs: mpsc::Receiver<MqttMessage>,
        mut events: mpsc::Receiver<AdapterEvent>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut save = tokio::time::interval(Duration::from_secs(5));
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (mut msgs_open, mut events_open) = (true, true);
        loop {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                m = msgs.recv(), if msgs_open => match m {
                    Some(m) => Some(Input::Message(m)),
                    None => { msgs_open = false; None }
                },
                e = events.recv(), if events_open => match e {
                    Some(e) => Some(Input::Adapter(e)),
                    None => { events_open = false; None }
                },
                _ = tick.tick() => {
                    let evs = self.engine.on_tick(ledger_node::ledger::now_ms());
                    if let Err(Stop::Shutdown) = self.commit(evs).await {
                        return;
                    }
                    None
                }
                _ = save.tick() => {
                    self.save().await;
                    None
                }
            };
            let Some(first) = first else { continue };
            // Group commit: what else already waits joins this batch, so one outbox write
            // (and its fsyncs) serves many messages under load; alone, a message goes at once.
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                if msgs_open {
                    if let Ok(m) = msgs.try_recv() {
                        batch.push(Input::Message(m));
                        continue;
                    }
                }
                if events_open {
                    if let Ok(e) = events.try_recv() {
                        batch.push(Input::Adapter(e));
                        continue;
                    }
                }
                break;
            }
            if let Err(Stop::Shutdown) = self.batch(batch).await {
                // The rules' state may hold effects of events not written: not saved, so the
                // unacknowledged samples make them again after the restart.
                return;
            }
        }
        self.save().await;
    }

    /// Takes a batch of inputs through the rules in order, makes the events they caused
    /// durable together, and only then acknowledges the batch's MQTT messages.
    async fn batch(&mut self, batch: Vec<Input>) -> Result<(), Stop> {
        // A data directory below its reserve counts as a full outbox: the samples that raise no
        // event are dropped (and counted), and a rule event waits in `commit`.
        let disk_low = self.disk.check().is_err();
        let mut held = Held::default();
        for input in batch {
            // Full as the outbox will be once what this batch holds is written.
            let full = disk_low || self.outbox.is_full_after(held.bytes);
            let mut evs = Vec::new();
            let mut arrivals = Vec::new();
            let mut message = None;
            match input {
                Input::Message(m) => {
                    self.values("mqtt", &m.values, full, &mut evs, &mut arrivals);
                    message = Some(m);
                }
                Input::Adapter(AdapterEvent::Telemetry(t)) => self.values(
                    "modbus",
                    std::slice::from_ref(&t),
                    full,
                    &mut evs,
                    &mut arrivals,
                ),
                Input::Adapter(AdapterEvent::Status(s)) => evs.extend(self.engine.on_status(&s)),
            }
            if !evs.is_empty() {
                let bytes: u64 = Outbox::encode(&evs).iter().map(|b| b.len() as u64).sum();
                // Near the bound, what the batch holds goes first: the outbox fills event by
                // event as it would without batching, and a write never waits for more room
                // than its latest events need. Its messages are acknowledged, and the rules'
                // state saved, only with the rest of the batch: the state now holds this
                // input's effect, whose events are not written yet. (Saved here, a power cut
                // before the rest was written kept a state that had seen a message the broker
                // then redelivered: its transition looked old and raised no event. Found by
                // `powerloss::power_cut_while_the_telemetry_outbox_fills_and_drains`, run seed
                // 6989156408600135779, round 7.) Written but unacknowledged, a message comes
                // back after a cut and makes the same events again, with the same event ids,
                // which the ledger takes once.
                if !held.events.is_empty() && !self.outbox.has_room(held.bytes + bytes) {
                    self.write(std::mem::take(&mut held.events)).await?;
                    held.bytes = 0;
                }
                held.bytes += bytes;
                held.events.extend(evs);
            }
            held.acks.extend(message);
            held.arrivals.extend(arrivals);
        }
        self.flush(&mut held).await
    }

    /// Writes what a batch holds to the outbox, saves the rules' state (which now holds the
    /// effects of the batch's inputs, all written), and only then acknowledges its messages.
    async fn flush(&mut self, held: &mut Held) -> Result<(), Stop> {
        self.write(std::mem::take(&mut held.events)).await?;
        held.bytes = 0;
        // Also when the batch's last events went out before (`write` near the bound) or it
        // caused a change without an event: an acknowledged message's effect is never only in
        // memory.
        self.save().await;
        for m in held.acks.drain(..) {
            m.ack();
        }
        let now = ledger_node::ledger::now_ms();
        for arrived in held.arrivals.drain(..) {
            self.counters.latency.record(now.saturating_sub(arrived));
        }
        Ok(())
    }

    /// Values from `adapter` (`mqtt`, `modbus`) through the rules: their events join `evs`;
    /// while the outbox is full, values that cause none are dropped and counted.
    fn values(
        &mut self,
        adapter: &str,
        values: &[Telemetry],
        full: bool,
        evs: &mut Vec<RuleEvent>,
        arrivals: &mut Vec<i64>,
    ) {
        let before = evs.len();
        for t in values {
            evs.extend(self.engine.on_telemetry(t));
        }
        let n = values.len() as u64;
        self.counters.samples.fetch_add(n, Ordering::Relaxed);
        self.metrics.ingested(adapter, n);
        if full && evs.len() == before {
            self.counters
                .samples_dropped
                .fetch_add(n, Ordering::Relaxed);
            return;
        }
        for t in values {
            self.recent.record(t);
        }
        if let Some(first) = values.first() {
            arrivals.push(
                i64::try_from(first.received_at.unix_timestamp_nanos() / 1_000_000)
                    .unwrap_or(i64::MAX),
            );
        }
    }

    /// Makes events durable in the outbox, waiting for room (never dropping one), then persists
    /// the rules' state (which must then hold the effects of written events only).
    async fn commit(&mut self, evs: Vec<RuleEvent>) -> Result<(), Stop> {
        if evs.is_empty() {
            return Ok(());
        }
        self.write(evs).await?;
        self.save().await;
        Ok(())
    }

    /// Makes events durable in the outbox, waiting for room (never dropping one).
    async fn write(&mut self, evs: Vec<RuleEvent>) -> Result<(), Stop> {
        if evs.is_empty() {
            return Ok(());
        }
        self.counters
            .rule_events
            .fetch_add(evs.len() as u64, Ordering::Relaxed);
        for e in &evs {
            tracing::info!(device = %e.device_id, kind = e.kind.as_str(), event_id = %e.event_id, "rule event");
            // The rule's name travels as the component `rule` (a JSON string).
            let rule = e.components.iter().find(|c| c.name == "rule").map_or_else(
                || "unknown".to_owned(),
                |c| serde_json::from_str::<String>(&c.value).unwrap_or_else(|_| c.value.clone()),
            );
            self.metrics.rule_event(&rule);
        }
        let encoded = Outbox::encode(&evs);
        let size: u64 = encoded.iter().map(|b| b.len() as u64).sum();
        if !self.outbox.has_room(size) {
            tracing::warn!(
                bytes = size,
                outbox = ?self.outbox.stats(),
                "outbox full: holding the sample (unacknowledged) until the ledger takes events"
            );
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                _ = self.outbox.wait_for_room(size) => {}
            }
        }
        let evs = Arc::new(evs);
        let encoded = Arc::new(encoded);
        let mut backoff = Duration::from_millis(200);
        loop {
            // Below the data directory's reserve the events wait (their message unacknowledged,
            // held by the broker) rather than take the room the ledger's storage needs.
            if let Err(full) = self.disk.check_room(size) {
                tracing::warn!("outbox write held until space is freed: {full}");
            } else {
                let (ob, e2, b2) = (self.outbox.clone(), evs.clone(), encoded.clone());
                let r = tokio::task::spawn_blocking(move || ob.append(&e2, &b2)).await;
                match r {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => tracing::error!(error = %e, "outbox append failed; retrying"),
                    Err(e) => tracing::error!(error = %e, "outbox append task failed; retrying"),
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Stop::Shutdown),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        Ok(())
    }

    async fn save(&mut self) {
        if !self.engine.dirty() {
            return;
        }
        let state = self.engine.state().clone();
        let path = self.state_file.clone();
        match tokio::task::spawn_blocking(move || save_state(&path, &state)).await {
            Ok(Ok(())) => self.engine.mark_saved(),
            Ok(Err(e)) => {
                tracing::error!(file = %self.state_file.display(), error = %e, "cannot save rule state")
            }
            Err(e) => tracing::error!(error = %e, "rule state save task failed"),
        }
    }
}

/// Proposes the outbox's events to the ledger oldest first, up to [`DRAIN_BATCH`] of them as
/// one Raft entry (so they land in order), removing each once applied. Waits while there is no quorum; never drops an event
/// the ledger could still take.
async fn drain(
    node: Arc<Node>,
    outbox: Arc<Outbox>,
    counters: Arc<Counters>,
    author: String,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let sleep = |d: Duration| {
        let sd = shutdown.clone();
        async move {
            tokio::select! {
                _ = sd.cancelled() => false,
                _ = tokio::time::sleep(d) => true,
            }
        }
    };
    // Entries signed by this node apply only once its key is in the ledger.
    loop {
        let known = node
            .store
            .node_keys()
            .ok()
            .is_some_and(|k| k.iter().any(|(id, _)| *id == node.id));
        if known {
            break;
        }
        if !sleep(Duration::from_millis(200)).await {
            return;
        }
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = outbox.wait_nonempty() => {}
        }
        let batch = match outbox.oldest_n(DRAIN_BATCH) {
            Ok(b) if b.is_empty() => continue,
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "outbox event unreadable; set aside in bad/");
                if let Some(seq) = bad_seq(&e) {
                    let _ = outbox.quarantine(seq);
                }
                if !sleep(Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        // The oldest events as one Raft entry, in outbox order, up to the first one that is
        // not a valid ledger event (set aside when it is the oldest).
        let mut cmds = Vec::with_capacity(batch.len());
        let mut seqs = Vec::with_capacity(batch.len());
        for (seq, ev) in batch {
            match node.prepare(
                outbox::event_input(&ev),
                &author,
                ledger_node::ledger::now_ms(),
            ) {
                Ok(c) => {
                    cmds.push(Command::Append(c));
                    seqs.push((seq, ev.event_id));
                }
                Err(e) if cmds.is_empty() => {
                    tracing::error!(event_id = %ev.event_id, error = %e, "rule event is not a valid ledger event; set aside in outbox/bad/");
                    if let Err(e) = outbox.quarantine(seq) {
                        tracing::error!(error = %e, "cannot set the event aside");
                        if !sleep(Duration::from_secs(5)).await {
                            return;
                        }
                    }
                    break;
                }
                Err(_) => break,
            }
        }
        if cmds.is_empty() {
            continue;
        }
        match node.submit_in_order(cmds).await {
            Ok(outcomes) => {
                let mut refused = false;
                for ((seq, event_id), outcome) in seqs.into_iter().zip(outcomes) {
                    match outcome {
                        ApplyOutcome::Appended { seq: at, .. } => {
                            tracing::debug!(%event_id, ledger_seq = at, "rule event applied");
                            counters.events_applied.fetch_add(1, Ordering::Relaxed);
                            remove(&outbox, seq);
                        }
                        ApplyOutcome::Duplicate { .. } => {
                            counters.events_applied.fetch_add(1, Ordering::Relaxed);
                            counters.events_duplicate.fetch_add(1, Ordering::Relaxed);
                            remove(&outbox, seq);
                        }
                        other => {
                            // It stays, and what follows it waits: they land in order (a later
                            // one already applied is a duplicate next time).
                            tracing::error!(%event_id, outcome = ?other, "ledger refused a rule event; will retry");
                            refused = true;
                            break;
                        }
                    }
                }
                if refused {
                    if !sleep(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                } else {
                    backoff = Duration::from_millis(100);
                }
            }
            Err(WriteError::ShuttingDown) => return,
            Err(e) => {
                tracing::debug!(error = %e, "ledger not reachable; outbox waits");
                if !sleep(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn remove(outbox: &Outbox, seq: u64) {
    if let Err(e) = outbox.remove(seq) {
        // It stays; proposing it again is a no-op (its event id is in the ledger).
        tracing::warn!(error = %e, "cannot remove an applied outbox event");
    }
}

fn bad_seq(e: &outbox::OutboxError) -> Option<u64> {
    let outbox::OutboxError::Io { path, .. } = e;
    path.file_stem()?.to_str()?.parse().ok()
}

/// Routes of the staff view, merged into the mutual-TLS API behind its authorization layer:
/// `GET /v1/devices/{id}/telemetry` (recent values) and `GET /v1/telemetry/status` (counters,
/// outbox, adapter health). Staff and gateways only.
pub fn routes<S>(service: Arc<TelemetryService>) -> OpenApiRouter<S> {
    use crate::service::api::{guarded, Need, SMALL_BODY};
    OpenApiRouter::new()
        .routes(guarded(
            Need::Reader,
            SMALL_BODY,
            utoipa_axum::routes!(device_telemetry),
        ))
        .routes(guarded(
            Need::Reader,
            SMALL_BODY,
            utoipa_axum::routes!(telemetry_status),
        ))
        .with_state(service)
}

#[derive(serde::Deserialize)]
struct DeviceParam {
    id: String,
}

/// A device's recent telemetry (memory only, never the ledger): the last value of each metric
/// and min/max/last per bucket over the window.
#[utoipa::path(get, path = "/v1/devices/{id}/telemetry", tag = "devices",
    params(("id" = String, Path, description = "Device id (UDI or local id)")),
    responses((status = 200, description = "Recent values per metric", content_type = "application/json"),
              (status = 404, description = "No recent telemetry for this device", body = crate::service::api::Problem, content_type = "application/problem+json")))]
async fn device_telemetry(
    State(s): State<Arc<TelemetryService>>,
    PathParams(DeviceParam { id }): PathParams<DeviceParam>,
) -> Result<Json<recent::DeviceTelemetry>, ApiError> {
    s.recent.device(&id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!("no recent telemetry for device {id:?}")).at("id")
    })
}

/// Telemetry counters: samples, dropped samples, rule events, applied events, the outbox's
/// size, MQTT counters and each Modbus device's health.
#[utoipa::path(get, path = "/v1/telemetry/status", tag = "devices",
    responses((status = 200, description = "Counters", content_type = "application/json")))]
async fn telemetry_status(State(s): State<Arc<TelemetryService>>) -> Json<serde_json::Value> {
    Json(s.status())
}
