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
//!
//! With `--cluster`: the set-up instead. The same ledger is written into the store of
//! gateway 1's data directory before it starts, gateway 1 starts as a cluster of one
//! (`medledger run`, `cluster init`), takes a snapshot, gateways 2 and 3 join and catch up from
//! it and are promoted; then, over HTTPS with a staff client certificate, on every gateway: one
//! device's history, the due list of every device (the current minute, then a distinct `now`
//! each call, which no cache answers), the PM-completion report for a year, and each gateway's
//! resident memory idle. `--cache-mib N` sets `[ledger] cache_mib`; `--keep` leaves the site's
//! directory (CA, configs, data of the three gateways) in place and prints where it is.

use std::time::Instant;

use ed25519_dalek::SigningKey;
use ledger_node::entry::EventInput;
use ledger_node::{Command, Store};
use medledger_gateway::service::registry::due::{self, Filter};
use medledger_gateway::service::registry::index::parse_ms;
use medledger_gateway::service::registry::request::{DeviceRecord, ModelRequest};
use medledger_gateway::service::registry::{report, Registry};
use medledger_gateway::service::web::data as web_data;
use medledger_tests::arg;

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

fn name(d: u64) -> String {
    format!("dev-{d:06}")
}

/// The bench's ledger, in order: 10 models, one registration per device, then maintenance
/// spread over three years from `start_ms`.
fn events(entries: u64, devices: u64, start_ms: i64) -> impl Iterator<Item = EventInput> {
    let span_ms: i64 = 3 * 365 * 86_400_000;
    let models = (0..10u32).map(|m| {
        ModelRequest {
            manufacturer: "Acme".into(),
            model: format!("M{m}"),
            pm_interval_days: Some(90 + 30 * m),
            calibration_interval_days: Some(365),
            event_id: Some(format!("model-{m}")),
        }
        .to_event()
    });
    let registrations = (0..devices).map(move |d| {
        DeviceRecord {
            device_id: Some(name(d)),
            manufacturer: Some("Acme".into()),
            model: Some(format!("M{}", d % 10)),
            serial: Some(format!("S{d}")),
            location: Some(format!("ward-{}", d % 40)),
            life_support: Some(d.is_multiple_of(5)),
            occurred_at: Some(medledger_gateway::event::format_ms(start_ms)),
            event_id: Some(format!("reg-{d}")),
            ..DeviceRecord::default()
        }
        .to_event(&name(d), false)
    });
    let rest = entries.saturating_sub(10 + devices);
    let per = rest / devices + 1;
    let maintenance = (0..rest).map(move |i| {
        let d = i % devices;
        let k = i / devices;
        let at = start_ms + span_ms * k as i64 / per as i64;
        let kind = match i % 10 {
            0..=3 => "preventive-maintenance",
            4..=5 => "calibration",
            6..=7 => "repair",
            _ => "inspection",
        };
        work(kind, &name(d), at, i)
    });
    models.chain(registrations).chain(maintenance)
}

/// Signs `events` as node 1 with `key` and applies them to `store` in batches of 1,000, then
/// flushes once.
fn write(
    store: &Store,
    key: &SigningKey,
    author: &str,
    events: impl Iterator<Item = EventInput>,
    recorded_at_ms: i64,
) -> anyhow::Result<()> {
    let mut batch: Vec<Command> = Vec::with_capacity(1000);
    for e in events {
        batch.push(Command::Append(ledger_node::ledger::prepare(
            e,
            author,
            1,
            key,
            recorded_at_ms,
        )?));
        if batch.len() == 1000 {
            store.apply(&batch, &[])?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.apply(&batch, &[])?;
    }
    store.flush_blocking()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let entries = arg("--entries", 100_000);
    let devices = arg("--devices", 1_000).max(1);
    let runs = arg("--runs", 50) as usize;
    let start_ms = parse_ms("2023-01-01T00:00:00Z").expect("time");
    if std::env::args().any(|a| a == "--cluster") {
        return tokio::runtime::Runtime::new()?.block_on(cluster::run(
            entries,
            devices,
            runs,
            arg("--cache-mib", 0),
            start_ms,
        ));
    }
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("ledger"))?;
    let key = SigningKey::from_bytes(&[5; 32]);
    let t = Instant::now();
    write(
        &store,
        &key,
        "bench",
        events(entries, devices, start_ms),
        start_ms,
    )?;
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

/// The `--cluster` mode (see the crate doc).
mod cluster {
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context};
    use certs::StaffRole;
    use medledger_tests::bin;
    use medledger_tests::cluster::{poll, status, Gateway, Site};

    use super::{events, name, percentile};

    fn medledger(args: &[&str]) -> anyhow::Result<String> {
        let out = std::process::Command::new(bin("medledger"))
            .args(args)
            .output()
            .context("run medledger")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("medledger {args:?}: {text}");
        }
        Ok(text)
    }

    fn rss_of(g: &Gateway) -> f64 {
        let Some(pid) = g.child.as_ref().map(|c| c.0.id()) else {
            return 0.0;
        };
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// After 20 s without requests, each gateway's resident memory.
    async fn print_idle_rss(nodes: &[Gateway], when: &str) {
        tokio::time::sleep(Duration::from_secs(20)).await;
        for (g, n) in nodes.iter().enumerate() {
            println!(
                "gateway {}: resident memory idle{when}: {:.0} MiB",
                g + 1,
                rss_of(n)
            );
        }
    }

    async fn size_of(http: &reqwest::Client, addr: &str) -> Option<u64> {
        status(http, addr).await?["ledger_size"].as_u64()
    }

    /// GET `path`, the time to the last byte of a 200, in ms.
    async fn timed(http: &reqwest::Client, addr: &str, path: &str) -> anyhow::Result<f64> {
        let t = Instant::now();
        let r = http.get(format!("https://{addr}{path}")).send().await?;
        let s = r.status();
        let body = r.bytes().await?;
        if !s.is_success() {
            bail!(
                "GET {path} from {addr}: {s}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }

    pub async fn run(
        entries: u64,
        devices: u64,
        runs: usize,
        cache_mib: u64,
        start_ms: i64,
    ) -> anyhow::Result<()> {
        let site = Site::new();
        let r = run_on(&site, entries, devices, runs, cache_mib, start_ms).await;
        if r.is_ok() && std::env::args().any(|a| a == "--keep") {
            // For measuring a gateway again without writing the ledger again: each
            // `node{i}/gateway.toml` starts it (`medledger run --config`).
            println!("site kept in {}", site.dir.keep().display());
            return r;
        }
        if r.is_err() {
            // The site's directory goes with `site`: keep what explains the failure.
            let keep = std::env::temp_dir().join(format!("registry-bench-{}", std::process::id()));
            for i in 1..=3 {
                let log = site.dir.path().join(format!("node{i}")).join("gateway.log");
                if let Ok(text) = std::fs::read_to_string(&log) {
                    let _ = std::fs::create_dir_all(&keep);
                    let _ = std::fs::write(keep.join(format!("node{i}.log")), &text);
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!("--- gateway {i}, last lines of its log:");
                    for l in &lines[lines.len().saturating_sub(20)..] {
                        eprintln!("{l}");
                    }
                }
            }
            eprintln!("gateway logs kept in {}", keep.display());
        }
        r
    }

    async fn run_on(
        site: &Site,
        entries: u64,
        devices: u64,
        runs: usize,
        cache_mib: u64,
        start_ms: i64,
    ) -> anyhow::Result<()> {
        let mut extra = "[raft]\nsnapshot_after_logs = 10\nsnapshot_growth_percent = 0\n\
                         keep_logs_after_snapshot = 0\n"
            .to_owned();
        if cache_mib > 0 {
            extra += &format!("[ledger]\ncache_mib = {cache_mib}\n");
        }
        let mut nodes: Vec<Gateway> = (1..=3).map(|i| Gateway::new(site, i, &extra)).collect();
        let addrs: Vec<String> = nodes.iter().map(Gateway::addr).collect();

        // The ledger, straight into the store gateway 1's `medledger run` opens
        // (`ledger_node::raft::open_storage`: `<data_dir>/sled`), signed with gateway 1's key,
        // in batches of 1,000 and flushed once. `medledger import` cannot do it: it writes a
        // standalone ledger (`<data_dir>/ledger`) that `medledger run` does not read.
        let t = Instant::now();
        {
            let dir = &nodes[0].dir;
            let key = ledger_node::keys::load_or_create(&dir.join("node.key"))?;
            let (log, machine, store) = ledger_node::raft::open_storage(dir)?;
            store.apply(
                &[ledger_node::Command::RegisterNode {
                    node_id: 1,
                    public_key: key.verifying_key().to_bytes(),
                }],
                &[],
            )?;
            super::write(
                &store,
                &key,
                "local:import",
                events(entries, devices, start_ms),
                ledger_node::ledger::now_ms(),
            )?;
            println!(
                "gateway 1: {} entries over {devices} devices written in {:.0} s",
                store.size(),
                t.elapsed().as_secs_f64()
            );
            drop((log, machine, store));
        }

        // Gateway 1 alone, then a snapshot that gateways 2 and 3 catch up from.
        let admin = site.staff_client("bench-admin", StaffRole::Admin);
        let biomed = site.staff_client("bench-biomed", StaffRole::Biomed);
        let configs: Vec<String> = nodes
            .iter()
            .map(|n| n.config.to_str().unwrap_or_default().to_owned())
            .collect();
        let config = |i: usize| configs[i].clone();
        nodes[0].start();
        poll("gateway 1 to listen", Duration::from_secs(120), || {
            status(&admin, &addrs[0])
        })
        .await?;
        medledger(&[
            "cluster",
            "init",
            "--config",
            &config(0),
            "--voter",
            &format!("1={}", addrs[0]),
        ])?;
        poll("gateway 1 to lead", Duration::from_secs(60), || async {
            status(&admin, &addrs[0])
                .await
                .filter(|s| s["state"] == "Leader")
        })
        .await?;
        for i in 0..12 {
            let r = biomed
                .post(format!("https://{}/v1/events", addrs[0]))
                .json(
                    &serde_json::json!({"kind": "inspection", "device_id": name(i),
                    "event_id": format!("warm-{i}")}),
                )
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("POST /v1/events: {}", r.text().await?);
            }
        }
        let t = Instant::now();
        poll(
            "gateway 1 to snapshot and purge its log",
            Duration::from_secs(1800),
            || async {
                status(&admin, &addrs[0])
                    .await
                    .filter(|s| s["purged_index"].as_u64().is_some())
            },
        )
        .await?;
        println!(
            "gateway 1: snapshot taken in {:.0} s",
            t.elapsed().as_secs_f64()
        );
        let size = size_of(&admin, &addrs[0]).await.context("size")?;
        let t = Instant::now();
        for (i, node) in nodes.iter_mut().enumerate().skip(1) {
            node.start();
            poll("a gateway to listen", Duration::from_secs(60), || {
                status(&admin, &addrs[i])
            })
            .await?;
            medledger(&[
                "cluster",
                "join",
                "--config",
                &config(i),
                "--via",
                &addrs[0],
            ])?;
        }
        for a in &addrs[1..] {
            poll(
                &format!("{a} to catch up"),
                Duration::from_secs(3600),
                || async { size_of(&admin, a).await.filter(|s| *s >= size) },
            )
            .await?;
        }
        println!(
            "gateways 2 and 3: caught up from the snapshot in {:.0} s",
            t.elapsed().as_secs_f64()
        );
        for i in 2..=3 {
            medledger(&[
                "cluster",
                "promote",
                "--config",
                &config(0),
                "--node",
                &i.to_string(),
            ])?;
        }
        // Every registry built (the first read of each gateway builds it from the ledger).
        for a in &addrs {
            let t = Instant::now();
            poll("the registry", Duration::from_secs(1800), || async {
                timed(&biomed, a, "/v1/devices?risk=life-support")
                    .await
                    .ok()
            })
            .await?;
            println!(
                "{a}: registry built in {:.1} s (first read)",
                t.elapsed().as_secs_f64()
            );
        }

        // Over HTTPS, with a staff client certificate, one request at a time.
        for (g, a) in addrs.iter().enumerate() {
            let mut lat = Vec::new();
            for r in 0..runs * 4 {
                let d = name((r as u64 * 7919 + g as u64) % devices);
                lat.push(timed(&biomed, a, &format!("/v1/devices/{d}/history")).await?);
            }
            let entries_of = {
                let r = biomed
                    .get(format!("https://{a}/v1/devices/{}/history", name(1)))
                    .send()
                    .await?;
                let v: serde_json::Value = r.json().await?;
                v["entries"].as_array().map_or(0, Vec::len)
            };
            println!(
                "gateway {}: one device's history ({entries_of} entries): p50 {:.2} ms, p99 {:.2} ms",
                g + 1,
                percentile(&mut lat, 0.5),
                percentile(&mut lat, 0.99)
            );
            let mut lat = Vec::new();
            for _ in 0..runs {
                lat.push(timed(&biomed, a, "/v1/due").await?);
            }
            let items = {
                let v: serde_json::Value = biomed
                    .get(format!("https://{a}/v1/due"))
                    .send()
                    .await?
                    .json()
                    .await?;
                v["items"].as_array().map_or(0, Vec::len)
            };
            println!(
                "gateway {}: due list of {devices} devices ({items} items), current minute: p50 {:.1} ms, p99 {:.1} ms",
                g + 1,
                percentile(&mut lat, 0.5),
                percentile(&mut lat, 0.99)
            );
            let mut lat = Vec::new();
            for r in 0..runs {
                let now = medledger_gateway::event::format_ms(
                    super::parse_ms("2026-01-01T00:00:00Z").unwrap_or_default() + r as i64 * 1000,
                );
                lat.push(timed(&biomed, a, &format!("/v1/due?now={now}")).await?);
            }
            println!(
                "gateway {}: due list, a distinct now each call (computed every time): p50 {:.1} ms, p99 {:.1} ms",
                g + 1,
                percentile(&mut lat, 0.5),
                percentile(&mut lat, 0.99)
            );
            let mut lat = Vec::new();
            for _ in 0..runs.min(20) {
                lat.push(
                    timed(
                        &biomed,
                        a,
                        "/v1/reports/pm-completion?from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
                    )
                    .await?,
                );
            }
            println!(
                "gateway {}: PM-completion report for a year: p50 {:.1} ms, max {:.1} ms",
                g + 1,
                percentile(&mut lat, 0.5),
                percentile(&mut lat, 1.0)
            );
        }
        print_idle_rss(&nodes, "").await;
        // Again after a restart: what a gateway holds when no snapshot build or catch-up
        // happened in its lifetime (the allocator keeps some of a build's memory).
        for (g, n) in nodes.iter_mut().enumerate() {
            n.kill();
            n.start();
            let a = &addrs[g];
            poll(
                "the gateway to serve again",
                Duration::from_secs(300),
                || async { status(&biomed, a).await.filter(|s| !s["leader"].is_null()) },
            )
            .await?;
            poll(
                "its registry after the restart",
                Duration::from_secs(300),
                || async { timed(&biomed, a, "/v1/due").await.ok() },
            )
            .await?;
        }
        print_idle_rss(&nodes, " after a restart").await;
        for n in &mut nodes {
            n.kill();
        }
        let du = std::process::Command::new("du")
            .args(["-sh"])
            .arg(&nodes[0].dir)
            .output()?;
        print!(
            "gateway 1's data directory: {}",
            String::from_utf8_lossy(&du.stdout)
        );
        // What each part of it takes (the gateway stopped).
        let data = nodes[0].dir.to_str().unwrap_or_default().to_owned();
        print!("{}", medledger(&["ledger", "stats", "--data-dir", &data])?);
        Ok(())
    }
}
