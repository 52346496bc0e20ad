//! Import and erasure benchmark (issue 14) on a 3-gateway cluster of real `medledger run`
//! processes: a history of N events imported through gateway 2 with `medledger import --config`
//! (wall time, events/s), then one patient value erased through gateway 1 and, on each gateway,
//! the time from the erasure's answer until that gateway reports the value gone from its Raft
//! log and snapshot file (`medledger_erasure_purges_total` on its `/metrics`), with the
//! snapshot it built (`raft-snapshot.bin`). Prints a Markdown table.
//!
//! ```text
//! cargo build --release -p medledger-tests --bin erasure-bench -p medledger-gateway --bin medledger
//! target/release/erasure-bench [--events 100000] [--batch 500] [--devices 1000]
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use certs::{CertSpec, StaffRole};
use medledger_tests::cluster::{poll, start_nodes, status, Gateway, Site};
use medledger_tests::{arg, bin, free_port};

/// A metric's value from a Prometheus text page.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run(
        arg("--events", 100_000),
        arg("--batch", 500),
        arg("--devices", 1_000).max(1),
    ))
}

async fn run(events: u64, batch: u64, devices: u64) -> anyhow::Result<()> {
    let site = Site::new();
    let health: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let nodes: Vec<Gateway> = (1..=3)
        .map(|i| {
            Gateway::new(
                &site,
                i,
                &format!("health_listen = \"{}\"\n", health[i as usize - 1]),
            )
        })
        .collect();
    let voters: Vec<(u64, String)> = nodes.iter().map(|g| (g.id, g.addr())).collect();
    let nodes = start_nodes(&site, nodes, &voters).await;
    let admin = site.client_for(&CertSpec::staff(
        "bench-admin",
        "Bench Admin",
        StaffRole::Admin,
    ));

    // The history: the first event's patient value is the one erased.
    let file = site.dir.path().join("history.jsonl");
    let mut text = String::with_capacity(events as usize * 400);
    for i in 0..events {
        let device = if i == 0 {
            "erase-me".to_owned()
        } else {
            format!("pump-{}", i % devices)
        };
        let day = 1 + i % 28;
        text += &format!(
            concat!(
                r#"{{"event_id":"WO-{i}","kind":"preventive-maintenance","device_id":"{device}","#,
                r#""occurred_at":"2024-03-{day:02}T10:00:00Z","components":["#,
                r#"{{"name":"result","class":"maintenance","value":"pass"}},"#,
                r#"{{"name":"technician","class":"maintenance","value":"vendor:field-service-{t}"}},"#,
                r#"{{"name":"checks","class":"maintenance","value":["electrical safety","alarms","flow"]}},"#,
                r#"{{"name":"patient_mrn","class":"patient","value":"MRN{i:08}"}},"#,
                r#"{{"name":"cost","class":"financial","value":{{"amount":120,"currency":"EUR"}}}}]}}"#,
                "\n"
            ),
            i = i,
            device = device,
            day = day,
            t = i % 7
        );
    }
    std::fs::write(&file, &text).context("write the history")?;
    drop(text);

    let t = Instant::now();
    let out = std::process::Command::new(bin("medledger"))
        .args([
            "import",
            "--config",
            nodes[1].config.to_str().context("utf8")?,
            "--batch",
            &batch.to_string(),
            file.to_str().context("utf8")?,
        ])
        .output()?;
    let import_s = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "import: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    for g in &nodes {
        let addr = g.addr();
        poll(
            &format!("gateway {} to apply {events} entries", g.id),
            Duration::from_secs(600),
            || async {
                status(&admin, &addr)
                    .await
                    .filter(|s| s["ledger_size"].as_u64() >= Some(events))
            },
        )
        .await?;
    }

    // The erased entry: the only one of its device.
    let url = format!("https://{}/v1/devices/erase-me/history", nodes[0].addr());
    let h: serde_json::Value = admin.get(&url).send().await?.json().await?;
    let seq = h["entries"][0]["seq"]
        .as_u64()
        .context("seq of the entry to erase")?;
    let url = format!(
        "https://{}/v1/entries/{seq}/components/patient_mrn/erase",
        nodes[0].addr()
    );
    let t = Instant::now();
    let r = admin
        .post(&url)
        .json(&serde_json::json!({"reason": "benchmark"}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "erase: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let answered = t.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    for (g, h) in nodes.iter().zip(&health) {
        let page = poll(
            &format!("gateway {} to purge the erased value", g.id),
            Duration::from_secs(1800),
            || async {
                let page = admin
                    .get(format!("http://{h}/metrics"))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                (metric(&page, "medledger_erasure_purges_total")? >= 1.0).then_some(page)
            },
        )
        .await?;
        let seen = t.elapsed().as_secs_f64();
        let own = metric(&page, "medledger_erasure_purge_seconds").unwrap_or(f64::NAN);
        let snapshot = std::fs::metadata(g.dir.join("raft-snapshot.bin")).map_or(0, |m| m.len());
        rows.push((g.id, seen, own, snapshot));
    }
    println!(
        "\n{events} events imported through gateway 2 in {import_s:.1} s ({:.0} events/s, batches of {batch}); erasure answered in {:.0} ms\n",
        events as f64 / import_s,
        answered * 1000.0
    );
    println!("| gateway | erasure answered → purge reported (s) | gateway's own purge time (s) | snapshot file (MB) |");
    println!("|---|---|---|---|");
    for (id, seen, own, snapshot) in rows {
        println!(
            "| {id} | {seen:.2} | {own:.2} | {:.1} |",
            snapshot as f64 / 1e6
        );
    }
    drop(nodes);
    Ok(())
}
