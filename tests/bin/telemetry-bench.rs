//! Telemetry benchmark (issue 12): one gateway (`medledger run`) ingesting N MQTT devices (through
//! a loopback Mosquitto) and M Modbus TCP devices (the simulator) at 1 Hz through its rules, with
//! `mosquitto_sub` on the same broker and filter as the reference. Reports the gateway's CPU share
//! of one core, its RSS, MQTT messages per second (gateway vs `mosquitto_sub`, same window), Modbus
//! polls per second, and the p50/p99 from a value's arrival to the end of its outbox write (as
//! `/v1/telemetry/status` counts it). Prints a Markdown table.
//!
//! ```text
//! cargo build --release -p medledger-tests --bin telemetry-bench -p medledger-gateway --bin medledger \
//!     -p device-adapters --bin medledger-sim
//! target/release/telemetry-bench [--mqtt 1000] [--modbus 1000] [--seconds 60] [--warmup 20]
//! ```
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use certs::StaffRole;
use medledger_tests::cluster::{poll, staff_tls, status, write_gateway_files};
use medledger_tests::mosquitto::{require, Mosquitto};
use medledger_tests::{free_port, ChildGuard};
use serde_json::Value;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} needs a value")),
        None => Ok(default),
    }
}

/// (user + system CPU seconds, RSS kB, peak RSS kB) of a process.
fn proc_usage(pid: u32) -> anyhow::Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux.
    Ok((ticks / 100.0, kb("VmRSS:"), kb("VmHWM:")))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n_mqtt: usize = arg(&args, "--mqtt", 1000)?;
    let n_modbus: usize = arg(&args, "--modbus", 1000)?;
    let seconds: u64 = arg(&args, "--seconds", 60)?;
    let warmup: u64 = arg(&args, "--warmup", 20)?;
    let exe = std::env::current_exe()?;
    let bindir = exe.parent().context("exe dir")?.to_owned();
    let medledger: PathBuf = arg(&args, "--medledger", bindir.join("medledger"))?;
    let sim: PathBuf = arg(&args, "--sim", bindir.join("medledger-sim"))?;

    let dir = tempfile::tempdir()?;
    let ca = certs::init_site_ca(
        &dir.path().join("ca"),
        &certs::CaInit::new("bench hospital", "1"),
    )?;
    let port = free_port();
    let _broker = Mosquitto::with_config(
        dir.path().join("mosquitto.conf"),
        port,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nmax_inflight_messages 100\n"
        ),
    );
    let mut sim_child = ChildGuard(
        Command::new(&sim)
            .args([
                "--modbus",
                &n_modbus.to_string(),
                "--mqtt",
                &n_mqtt.to_string(),
            ])
            .args(["--mqtt-port", &port.to_string()])
            .args(["--profile", "infusion-pump"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", sim.display()))?,
    );
    let mut modbus = String::new();
    let out = sim_child.0.stdout.take().context("sim stdout")?;
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line?)?;
        match v["event"].as_str() {
            Some("modbus") => modbus.push_str(&format!(
                "[[modbus]]\ndevice_id = \"{}\"\naddress = \"{}\"\nprofile = \"{}\"\n",
                v["device_id"].as_str().unwrap_or_default(),
                v["addr"].as_str().unwrap_or_default(),
                v["profile"].as_str().unwrap_or_default()
            )),
            Some("ready") => break,
            _ => {}
        }
    }
    // Keep reading what the simulator reports afterwards (denied publishes, faults): a closed
    // pipe would end it at its next line, and the bench would measure silent devices.
    std::thread::spawn(move || lines.for_each(drop));
    let extra = format!(
        "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ntls = false\n\
         [[rules]]\nname = \"flow-high\"\nkind = \"above\"\nmetric = \"flow_rate\"\nlimit = 126.0\nhysteresis = 1.0\n\
         [[rules]]\nname = \"pm-hours\"\nkind = \"counter\"\nmetric = \"operating_hours\"\ninterval = 500.0\n\
         [[rules]]\nname = \"link\"\nkind = \"offline\"\nexpected_interval_ms = 1000\nsilent_intervals = 5\n{modbus}"
    );
    let gw_dir = dir.path().join("gw");
    let (api_port, config) = write_gateway_files(&ca, &gw_dir, 1, Ipv4Addr::LOCALHOST, &extra)?;
    let addr = format!("127.0.0.1:{api_port}");
    let log = std::fs::File::create(gw_dir.join("gateway.log"))?;
    let gw = ChildGuard(
        Command::new(&medledger)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", medledger.display()))?,
    );
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(staff_tls(&ca, "bench", StaffRole::Admin)?)
        .timeout(Duration::from_secs(10))
        .build()?;
    poll("the gateway", Duration::from_secs(60), || {
        status(&client, &addr)
    })
    .await?;
    let out = Command::new(&medledger)
        .args(["cluster", "init", "--config"])
        .arg(&config)
        .arg("--voter")
        .arg(format!("1={addr}"))
        .output()?;
    if !out.status.success() {
        bail!("cluster init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let seen = Arc::new(AtomicU64::new(0));
    let mut sub = ChildGuard(
        Command::new(require("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", "medledger/devices/+/telemetry"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    {
        let seen = seen.clone();
        let out = sub.0.stdout.take().context("sub stdout")?;
        std::thread::spawn(move || {
            for _ in BufReader::new(out).lines() {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let telemetry = || async {
        client
            .get(format!("https://{addr}/v1/telemetry/status"))
            .send()
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()
    };
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let polls = |s: &Value| -> u64 {
        s["modbus"]
            .as_object()
            .map(|m| {
                m.values()
                    .map(|h| h["polls_ok"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    };
    let s0 = telemetry().await.context("status")?;
    let (cpu0, _, _) = proc_usage(gw.0.id())?;
    let sub0 = seen.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let s1 = telemetry().await.context("status")?;
    let (cpu1, rss, hwm) = proc_usage(gw.0.id())?;
    let sub1 = seen.load(Ordering::Relaxed);
    let dt = t0.elapsed().as_secs_f64();
    let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / dt;
    let gw_msgs = rate(
        s0["mqtt"]["received"].as_u64().unwrap_or(0),
        s1["mqtt"]["received"].as_u64().unwrap_or(0),
    );
    let sub_msgs = rate(sub0, sub1);
    let online = s1["modbus"]
        .as_object()
        .map(|m| m.values().filter(|h| h["online"] == true).count())
        .unwrap_or(0);
    println!("| measure | value |\n|---|---|");
    println!("| devices | {n_mqtt} MQTT + {n_modbus} Modbus ({online} online), 1 Hz |");
    println!("| window | {dt:.0} s after {warmup} s warm-up |");
    println!(
        "| gateway CPU | {:.1} % of one core |",
        (cpu1 - cpu0) / dt * 100.0
    );
    println!(
        "| gateway RSS | {} MB (peak {} MB) |",
        rss / 1024,
        hwm / 1024
    );
    println!(
        "| MQTT messages/s: gateway / mosquitto_sub | {gw_msgs:.0} / {sub_msgs:.0} = {:.3} |",
        gw_msgs / sub_msgs.max(1.0)
    );
    println!("| Modbus polls/s | {:.0} |", rate(polls(&s0), polls(&s1)));
    println!(
        "| values through the rules/s | {:.0} |",
        rate(
            s0["samples"].as_u64().unwrap_or(0),
            s1["samples"].as_u64().unwrap_or(0)
        )
    );
    println!(
        "| arrival to outbox, p50 / p99 / max (since start) | {} / {} / {} ms |",
        s1["sample_to_outbox_ms"]["p50"],
        s1["sample_to_outbox_ms"]["p99"],
        s1["sample_to_outbox_ms"]["max"]
    );
    println!(
        "| rule events / applied / outbox now | {} / {} / {} |",
        s1["rule_events"], s1["events_applied"], s1["outbox"]["events"]
    );
    drop(sub);
    drop(gw);
    drop(sim_child);
    Ok(())
}
