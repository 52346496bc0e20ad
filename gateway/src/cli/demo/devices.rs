//! The demo's simulated devices (the simulator code of `device-adapters`, as `medledger-sim`
//! runs it): Modbus TCP servers on loopback, MQTT publishers each with its own certificate, and
//! the faults that make something happen: values that cross an alarm limit, devices that go
//! silent, alarm bits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use device_adapters::mqtt::{BrokerAddr, MqttTransport};
use device_adapters::profile::builtin_profile;
use device_adapters::sim::{
    run_mqtt_publisher, Fault, ModbusSimServer, PublishReport, PublisherStats, SimDevice,
};
use tokio_util::sync::CancellationToken;

use super::site::{DeviceSpec, Layout, Transport};

/// Every simulated device of the demo; stops them all when dropped.
pub struct SimDevices {
    devices: Vec<(DeviceSpec, Arc<SimDevice>)>,
    servers: Vec<ModbusSimServer>,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl SimDevices {
    /// Creates every device and starts the Modbus servers; returns each Modbus device with the
    /// address it listens on (for the gateways' `[[modbus]]`).
    pub async fn start_modbus(
        specs: &[DeviceSpec],
    ) -> anyhow::Result<(SimDevices, Vec<(DeviceSpec, SocketAddr)>)> {
        let mut devices = Vec::new();
        let mut servers = Vec::new();
        let mut addrs = Vec::new();
        for spec in specs {
            let profile = Arc::new(builtin_profile(spec.profile)?);
            let dev = SimDevice::new(spec.id.clone(), profile);
            if let Transport::Modbus { .. } = spec.transport {
                let server = ModbusSimServer::start(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    dev.clone(),
                    None,
                )
                .await
                .with_context(|| format!("cannot start the simulated Modbus device {}", spec.id))?;
                addrs.push((spec.clone(), server.local_addr()));
                servers.push(server);
            }
            devices.push((spec.clone(), dev));
        }
        let sims = SimDevices {
            devices,
            servers,
            shutdown: CancellationToken::new(),
            tasks: tokio::task::JoinSet::new(),
        };
        Ok((sims, addrs))
    }

    /// Starts the MQTT devices, each publishing every second to the broker on loopback `port`:
    /// with `tls`, over TLS with its certificate (`devices/<segment>.crt`); otherwise plain (the
    /// embedded broker). Denied publishes and refused connections are logged (the broker's ACL
    /// and CRL at work).
    pub fn start_mqtt(&mut self, layout: &Layout, port: u16, tls: bool) -> anyhow::Result<()> {
        let roots = certs::pem::load_certs(&layout.root_crt())?;
        let (report_tx, mut reports) = tokio::sync::mpsc::channel::<PublishReport>(256);
        for (spec, dev) in &self.devices {
            if spec.transport != Transport::Mqtt {
                continue;
            }
            let transport = if tls {
                let prefix = layout.device_prefix(&spec.id);
                let key = certs::CertifiedKey::from_files(
                    &prefix.with_extension("crt"),
                    &prefix.with_extension("key"),
                )?;
                MqttTransport::Tls(certs::client_config(
                    &roots,
                    &key,
                    &Default::default(),
                    &[],
                )?)
            } else {
                MqttTransport::PlainInsecure
            };
            let broker = BrokerAddr {
                host: "127.0.0.1".into(),
                port,
                transport,
            };
            let (dev, shutdown, tx) = (dev.clone(), self.shutdown.clone(), report_tx.clone());
            self.tasks.spawn(async move {
                let id = dev.id().to_owned();
                let stats = Arc::new(PublisherStats::default());
                if let Err(e) = run_mqtt_publisher(
                    dev,
                    broker,
                    Duration::from_secs(1),
                    stats,
                    Some(tx),
                    shutdown,
                )
                .await
                {
                    tracing::warn!(device = %id, error = %e, "simulated MQTT device stopped");
                }
            });
        }
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = reports.recv() => match r {
                        Some(PublishReport::Denied { device_id, topic, reason }) => {
                            tracing::warn!(device = %device_id, %topic, %reason, "the broker denied a publish");
                        }
                        Some(PublishReport::ConnectFailed { device_id, error }) => {
                            tracing::warn!(device = %device_id, %error, "a simulated device could not connect to the broker");
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(())
    }

    /// The ids of every device.
    pub fn ids(&self) -> Vec<String> {
        self.devices.iter().map(|(s, _)| s.id.clone()).collect()
    }

    /// Applies one step of the fault schedule.
    pub fn apply(&self, step: &Step) {
        if let Some((_, dev)) = self.devices.iter().find(|(s, _)| s.id == step.device) {
            dev.set_fault(step.fault.clone());
        }
    }

    /// Stops the publishers and the Modbus servers.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        for s in std::mem::take(&mut self.servers) {
            s.stop().await;
        }
    }
}

impl Drop for SimDevices {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One fault switched on or off at a second of the schedule's cycle.
#[derive(Debug, Clone)]
pub struct Step {
    pub at_s: u64,
    pub device: String,
    pub fault: Fault,
    /// What the watcher should expect, printed when the step is applied.
    pub says: String,
}

/// The length of one round of the fault schedule; it repeats while the demo runs.
pub const CYCLE_S: u64 = 90;

/// The fault schedule: within each [`CYCLE_S`], values drift over their alarm limits and back,
/// alarm bits go on and off, and devices go silent and return (offline, then online).
pub fn schedule() -> Vec<Step> {
    let step = |at_s, device: &str, fault, says: &str| Step {
        at_s,
        device: device.into(),
        fault,
        says: says.into(),
    };
    let pump = "(01)00884838035249(21)PMP1";
    let mut v = vec![
        step(
            5,
            pump,
            Fault::Drift(40.0),
            "flow rate drifting up past 130 mL/h: expect an alarm",
        ),
        step(
            30,
            pump,
            Fault::Drift(0.0),
            "flow rate back to normal: the alarm clears",
        ),
        step(
            15,
            "vent-ward-03",
            Fault::Alarm(true),
            "alarm bits set (Modbus): expect an alarm",
        ),
        step(
            40,
            "vent-ward-03",
            Fault::Alarm(false),
            "alarm bits cleared",
        ),
        step(
            25,
            "monitor-icu-02",
            Fault::Silent(true),
            "stops publishing: offline after 5 s of silence",
        ),
        step(
            55,
            "monitor-icu-02",
            Fault::Silent(false),
            "publishes again: online",
        ),
        step(
            45,
            "vent-icu-01",
            Fault::Drift(60.0),
            "peak pressure drifting up past 30 cmH2O: expect an alarm",
        ),
        step(
            68,
            "vent-icu-01",
            Fault::Drift(0.0),
            "peak pressure back to normal",
        ),
        step(
            50,
            "monitor-ward-03",
            Fault::Silent(true),
            "stops answering Modbus polls: offline",
        ),
        step(
            75,
            "monitor-ward-03",
            Fault::Silent(false),
            "answers again: online",
        ),
        step(
            60,
            "monitor-icu-01",
            Fault::Drift(240.0),
            "heart rate drifting up past 120/min: expect an alarm",
        ),
        step(
            85,
            "monitor-icu-01",
            Fault::Drift(0.0),
            "heart rate back to normal",
        ),
    ];
    v.sort_by_key(|s| s.at_s);
    v
}
