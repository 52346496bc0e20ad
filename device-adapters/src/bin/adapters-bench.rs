//! `adapters-bench`: device-adapter benchmarks (run in release; results in docs/benchmarks.md).
//!
//! * `adapters-bench mqtt --messages N`: starts Mosquitto on a free loopback port, subscribes
//!   `mosquitto_sub` and our subscriber to the same filter, publishes N QoS 1 telemetry messages
//!   once, and reports each subscriber's rate over the same messages in the same run.
//! * `adapters-bench modbus --devices N --seconds S`: starts `medledger-sim` with N Modbus
//!   devices (another process), polls them at 1 Hz from a current-thread tokio runtime (one
//!   core), and reports poll lateness (p50/p99/max), polls, CPU time and RSS of this process.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use device_adapters::{
    modbus::{ModbusDeviceConfig, ModbusPoller, PollerConfig},
    mqtt::{BrokerAddr, MqttConfig, MqttSubscriber, MqttTransport},
    profile::builtin_profile,
    AdapterEvent,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Mqtt {
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
    },
    Modbus {
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// medledger-sim binary; default: next to this one.
        #[arg(long)]
        sim: Option<PathBuf>,
    },
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (user+system CPU seconds, VmRSS kB, VmHWM kB) of this process.
fn usage() -> (f64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" of the command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    let cpu = (tick(11) + tick(12)) / hz;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kb("VmRSS:"), kb("VmHWM:"))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    match Args::parse().cmd {
        Cmd::Modbus {
            devices,
            seconds,
            sim,
        } => modbus(devices, seconds, sim),
        Cmd::Mqtt { messages } => mqtt(messages),
    }
}

fn modbus(n: usize, seconds: u64, sim: Option<PathBuf>) -> anyhow::Result<()> {
    let sim = match sim {
        Some(s) => s,
        None => std::env::current_exe()?.with_file_name("medledger-sim"),
    };
    let mut child = Command::new(&sim)
        .args(["--modbus", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", sim.display()))?;
    let out = child.stdout.take().context("sim stdout")?;
    let _guard = Kill(child);
    let mut devices = Vec::new();
    for line in BufReader::new(out).lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        match v["event"].as_str() {
            Some("modbus") => {
                let profile = Arc::new(builtin_profile(v["profile"].as_str().unwrap_or_default())?);
                devices.push(ModbusDeviceConfig {
                    device_id: v["device_id"].as_str().unwrap_or_default().to_owned(),
                    addr: v["addr"].as_str().unwrap_or_default().parse()?,
                    unit_id: 1,
                    profile,
                    tls: None,
                });
            }
            Some("ready") => break,
            _ => {}
        }
    }
    if devices.len() != n {
        bail!("simulator announced {} devices, wanted {n}", devices.len());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let poller = ModbusPoller::new(PollerConfig::default(), devices)?;
        let stats = poller.stats();
        let (tx, mut rx) = mpsc::channel(8192);
        let stop = CancellationToken::new();
        let task = tokio::spawn(poller.run(tx, stop.clone()));
        let consumer = tokio::spawn(async move {
            let mut values = 0u64;
            while let Some(ev) = rx.recv().await {
                if matches!(ev, AdapterEvent::Telemetry(_)) {
                    values += 1;
                }
            }
            values
        });
        // Warm-up: every device connects and polls at least once.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let online = stats
            .snapshot()
            .values()
            .filter(|h| h.online == Some(true))
            .count();
        let before: u64 = stats.snapshot().values().map(|h| h.polls_ok).sum();
        stats.lateness.reset();
        let (cpu0, _, _) = usage();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let wall = t0.elapsed().as_secs_f64();
        let (cpu1, rss, hwm) = usage();
        let snap = stats.snapshot();
        let polls: u64 = snap.values().map(|h| h.polls_ok).sum::<u64>() - before;
        let failed: u64 = snap.values().map(|h| h.polls_failed).sum();
        let shed: u64 = snap.values().map(|h| h.shed).sum();
        let l = &stats.lateness;
        stop.cancel();
        task.await??;
        let values = consumer.await?;
        println!(
            "{}",
            serde_json::json!({
                "bench": "modbus",
                "devices": n,
                "online_after_warmup": online,
                "seconds": wall,
                "polls_ok": polls,
                "polls_per_s": polls as f64 / wall,
                "polls_failed_total": failed,
                "shed_total": shed,
                "values_received_total": values,
                "lateness_p50_ms": l.quantile_ms(0.5),
                "lateness_p99_ms": l.quantile_ms(0.99),
                "lateness_max_ms": l.quantile_ms(1.0),
                "cpu_s": cpu1 - cpu0,
                "cpu_percent_of_one_core": (cpu1 - cpu0) / wall * 100.0,
                "rss_kb": rss,
                "rss_peak_kb": hwm,
            })
        );
        anyhow::Ok(())
    })
}

fn which(bin: &str) -> anyhow::Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(bin))
        .find(|p| p.exists())
        .with_context(|| format!("{bin} not found (apt-get install mosquitto mosquitto-clients)"))
}

fn mqtt(n: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = dir.path().join("mosquitto.conf");
    let log = dir.path().join("mosquitto.log");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    std::fs::write(
        &conf,
        format!(
            "{}listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n",
            if root { "user root\n" } else { "" }
        ),
    )?;
    let _broker = Kill(
        Command::new(which("mosquitto")?)
            .args(["-v", "-c"])
            .arg(&conf)
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    let filter = "medledger/devices/+/telemetry";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let until = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > until {
                bail!("mosquitto did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut sub = Kill(
            Command::new(which("mosquitto_sub")?)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-i", "bench-mosquitto-sub", "-t", filter, "-C", &n.to_string()])
                .stdout(Stdio::null())
                .spawn()?,
        );
        let broker = BrokerAddr { host: "127.0.0.1".into(), port, transport: MqttTransport::PlainInsecure };
        let ours = MqttSubscriber::new(MqttConfig::new(broker.clone(), "bench-gateway"))?;
        let stats = ours.stats();
        let (tx, mut rx) = mpsc::channel(4096);
        let stop = CancellationToken::new();
        let task = tokio::spawn(ours.run(tx, stop.clone()));
        let consumer = tokio::spawn(async move {
            let mut seen = 0u64;
            let mut last = 0u64;
            while let Some(ev) = rx.recv().await {
                if let AdapterEvent::Telemetry(t) = ev {
                    if t.seq != last {
                        last = t.seq;
                        seen += 1;
                        if seen == n {
                            return Instant::now();
                        }
                    }
                }
            }
            Instant::now()
        });
        // Both subscriptions must be in place before the first publish (read from the broker log).
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let l = std::fs::read_to_string(&log).unwrap_or_default();
            if l.contains("Received SUBSCRIBE from bench-mosquitto-sub") && l.contains("Received SUBSCRIBE from bench-gateway") {
                break;
            }
            if Instant::now() > until {
                bail!("subscriptions not seen in broker log");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stop verbose logging cost from dominating: the log is only needed for the handshake.
        let payload = |i: u64| {
            format!(r#"{{"seq":{i},"ts":"2025-03-01T10:00:00Z","metrics":[{{"name":"flow_rate","value":{}.5,"unit":"mL/h"}},{{"name":"battery","value":87}}]}}"#, i % 500)
        };
        let (client, mut el) = rumqttc::AsyncClient::new(broker.options("bench-publisher", true), 1024);
        let pump = tokio::spawn(async move { while el.poll().await.is_ok() {} });
        let t0 = Instant::now();
        for i in 1..=n {
            client.publish("medledger/devices/bench-pump/telemetry", rumqttc::QoS::AtLeastOnce, false, payload(i)).await?;
        }
        let published = t0.elapsed();
        let sub_wait = tokio::task::spawn_blocking(move || {
            let r = sub.0.wait();
            (Instant::now(), r)
        });
        let (t_sub, status) = tokio::time::timeout(Duration::from_secs(100), sub_wait).await??;
        status?;
        let t_ours = tokio::time::timeout(Duration::from_secs(100), consumer).await??;
        let s = stats.snapshot();
        stop.cancel();
        task.await??;
        pump.abort();
        let rate = |t: Instant| n as f64 / (t - t0).as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "bench": "mqtt",
                "messages": n,
                "publish_s": published.as_secs_f64(),
                "mosquitto_sub_msgs_per_s": rate(t_sub),
                "adapter_msgs_per_s": rate(t_ours),
                "ratio_adapter_vs_mosquitto_sub": rate(t_ours) / rate(t_sub),
                "adapter_delivered_messages": s.delivered_messages,
                "adapter_dropped": s.dropped(),
            })
        );
        anyhow::Ok(())
    })
}
