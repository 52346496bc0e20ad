//! Registry benchmark: a ledger of `--entries` entries over `--devices` devices (registrations,
//! then preventive maintenance, calibrations, repairs and inspections spread over three years)
//! written straight into a sled store, then timed: the registry index built from it (what a
//! gateway does at start and after a snapshot install that does not extend its ledger), one
//! device's history read from the store (entries and openings, as `GET
//! /v1/devices/{id}/history` reads them), the due list of every device, the PM-completion
//! report of a year, catching up with new entries, and the process's resident memory; and the
//! staff web page's device page (registry state, history, HTML) as its handler builds it.
//!
//! In process, without HTTPS: what the registry costs itself. `cargo run --release -p
//! medledger-tests --bin registry-bench -- --entries 1000000 --devices 10000`; results in
//! docs/benchmarks.md.

use std::time::Instant;

use ed25519_dalek::SigningKey;
use ledger_node::entry::EventInput;
use ledger_node::{Command, Store};
use medledger_gateway::service::registry::due::{self, Filter};
use medledger_gateway::service::registry::index::parse_ms;
use medledger_gateway::service::registry::request::{DeviceRecord, ModelRequest};
use medledger_gateway::service::registry::{report, Registry};
use medledger_gateway::service::web::data as web_data;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn work(kind: &str, device: &str, at_ms: i64, i: u64) -> EventInput {
    let result = if i.is_multiple_of(50) { "fail" } else { "pass" };
    medledger_gateway::event::parse_line(
        1,
        &serde_json::json!({"kind": kind, "device_id": device,
            "occurred_at": medledger_gateway::event::format_ms(at_ms),
            "event_id": format!("w-{i}"),
            "components": [
                {"name": "result", "class": "maintenance", "value": result},
                {"name": "technician", "class": "maintenance", "value": format!("biomed-{}", i % 40)},
                {"name": "cost", "class": "financial", "value": i % 500}]})
        .to_string(),
    )
    .expect("event")
    .event
}

fn main() -> anyhow::Result<()> {
    let entries = arg("--entries", 100_000);
    let devices = arg("--devices", 1_000).max(1);
    let runs = arg("--runs", 50) as usize;
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("ledger"))?;
    let key = SigningKey::from_bytes(&[5; 32]);
    let start_ms = parse_ms("2023-01-01T00:00:00Z").expect("time");
    let span_ms: i64 = 3 * 365 * 86_400_000;
    let name = |d: u64| format!("dev-{d:06}");
    let t = Instant::now();
    let mut batch: Vec<Command> = Vec::with_capacity(1000);
    let push = |e: EventInput, batch: &mut Vec<Command>| -> anyhow::Result<()> {
        batch.push(Command::Append(ledger_node::ledger::prepare(
            e, "bench", 1, &key, start_ms,
        )?));
        if batch.len() == 1000 {
            store.apply(batch, &[])?;
            batch.clear();
        }
        Ok(())
    };
    for m in 0..10 {
        push(
            ModelRequest {
                manufacturer: "Acme".into(),
                model: format!("M{m}"),
                pm_interval_days: Some(90 + 30 * m as u32),
                calibration_interval_days: Some(365),
                event_id: Some(format!("model-{m}")),
            }
            .to_event(),
            &mut batch,
        )?;
    }
    for d in 0..devices {
        let r = DeviceRecord {
            device_id: Some(name(d)),
            manufacturer: Some("Acme".into()),
            model: Some(format!("M{}", d % 10)),
            serial: Some(format!("S{d}")),
            location: Some(format!("ward-{}", d % 40)),
            life_support: Some(d.is_multiple_of(5)),
            occurred_at: Some(medledger_gateway::event::format_ms(start_ms)),
            event_id: Some(format!("reg-{d}")),
            ..DeviceRecord::default()
        };
        push(r.to_event(&name(d), false), &mut batch)?;
    }
    let written = 10 + devices;
    let rest = entries.saturating_sub(written);
    for i in 0..rest {
        let d = i % devices;
        let k = i / devices;
        let per = rest / devices + 1;
        let at = start_ms + span_ms * k as i64 / per as i64;
        let kind = match i % 10 {
            0..=3 => "preventive-maintenance",
            4..=5 => "calibration",
            6..=7 => "repair",
            _ => "inspection",
        };
        push(work(kind, &name(d), at, i), &mut batch)?;
    }
    if !batch.is_empty() {
        store.apply(&batch, &[])?;
    }
    store.flush_blocking()?;
    println!(
        "ledger: {} entries over {devices} devices written in {:.1} s",
        store.size(),
        t.elapsed().as_secs_f64()
    );

    let rss_before = rss_mib();
    let registry = Registry::default();
    let t = Instant::now();
    {
        let s = registry.read(&store)?;
        println!(
            "registry built from the whole ledger: {:.2} s ({} entries, {} devices)",
            t.elapsed().as_secs_f64(),
            s.scanned,
            s.index.devices.len()
        );
    }
    println!(
        "resident memory: {rss_before:.0} MiB before the index, {:.0} MiB after",
        rss_mib()
    );

    // One device's history: the per-device index, then every entry and its openings.
    let mut lat = Vec::new();
    let mut n = 0;
    for r in 0..runs * 4 {
        let dev = name((r as u64 * 7919) % devices);
        let t = Instant::now();
        let seqs = store.device_history(&dev, None, 1000)?;
        for s in &seqs {
            std::hint::black_box(store.entry(*s)?);
            std::hint::black_box(store.openings(*s)?);
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        n = seqs.len();
    }
    println!(
        "one device's history ({n} entries) from the store: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99)
    );

    // The staff web page's device page (issue 15): the registry's state, the history with its
    // openings, and the HTML, as the page handler builds them (without TLS and session).
    let classes = medledger_gateway::service::api::staff_classes(Some(certs::StaffRole::Biomed));
    let ledger = web_data::Ledger {
        store: &store,
        registry: &registry,
    };
    let mut lat = Vec::new();
    let mut bytes = 0;
    for r in 0..runs * 4 {
        let dev = name((r as u64 * 7919 + 13) % devices);
        let t = Instant::now();
        let detail = web_data::source()
            .detail(ledger, &dev, &classes)
            .map_err(anyhow::Error::msg)?
            .ok_or_else(|| anyhow::anyhow!("no device {dev}"))?;
        let html = medledger_gateway::service::web::pages::device_html(detail)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        bytes = html.len();
    }
    println!(
        "web device page ({bytes} bytes of HTML), server time: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99)
    );

    let now = parse_ms("2026-01-01T00:00:00Z").expect("time");
    let mut lat = Vec::new();
    let mut items = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let s = registry.read(&store)?;
        let list = due::due_list(&s.index, &Filter::default(), now, 30, false);
        let json = serde_json::to_vec(&list)?;
        items = list.len();
        std::hint::black_box(json);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "due list of {devices} devices ({items} items, JSON included): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99)
    );

    let from = parse_ms("2025-01-01T00:00:00Z").expect("time");
    let mut lat = Vec::new();
    let mut scheduled = 0;
    for _ in 0..runs.min(20) {
        let t = Instant::now();
        let s = registry.read(&store)?;
        let r = report::pm_completion(&s.index, from, now);
        scheduled = r.life_support.scheduled + r.other.scheduled;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "PM completion report for a year ({scheduled} PMs scheduled): p50 {:.1} ms, max {:.1} ms",
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 1.0)
    );

    // Catching up with 1,000 new entries, as a read after writes does.
    let cmds: Vec<Command> = (0..1000)
        .map(|i| {
            ledger_node::ledger::prepare(
                work("calibration", &name(i % devices), now, 10_000_000 + i),
                "bench",
                1,
                &key,
                now,
            )
            .map(Command::Append)
        })
        .collect::<Result<_, _>>()?;
    store.apply(&cmds, &[])?;
    store.flush_blocking()?;
    let t = Instant::now();
    drop(registry.read(&store)?);
    println!(
        "catching up with 1,000 new entries: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    println!("resident memory at the end: {:.0} MiB", rss_mib());
    Ok(())
}
