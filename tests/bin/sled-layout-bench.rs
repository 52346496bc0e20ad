//! How many sled keys an index takes decides an idle gateway's memory (store layout 4,
//! `ledger-node/src/store/index.rs`): this writes ENTRIES entry-sized records (490 bytes) under
//! sequential keys into one sled tree, with the indexes as layout 3 kept them (`keys`: one
//! device key and one event-id key per entry), as layout 4 keeps them (`chunks`: one key per
//! device with its entries' seqs as varint steps, 65,536 event-id buckets of an 8-byte tag and
//! a varint seq per entry) or not at all (`entries`), over 10,000 devices; then
//! reopens the database and reads every key. It prints the write time, the resident memory
//! after the open and after the full read (what a snapshot build does), and the size on disk.
//!
//! ```text
//! sled-layout-bench --mode keys|chunks|entries --entries 1000000 --cache-mib 64 --dir /tmp/slb
//! ```
//! The database is left in `DIR/MODE-ENTRIES` and reused by a later run with `--read-only`.

use std::collections::HashMap;
use std::time::Instant;

use sha2::{Digest, Sha256};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

/// Unsigned LEB128, as the store writes it.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let mode = flag("--mode").unwrap_or_else(|| "chunks".into());
    anyhow::ensure!(
        ["keys", "chunks", "entries"].contains(&mode.as_str()),
        "--mode: {mode:?} is not keys, chunks or entries"
    );
    let n = medledger_tests::arg("--entries", 1_000_000);
    let cache = medledger_tests::arg("--cache-mib", 64);
    let root = flag("--dir").unwrap_or_else(|| "/tmp/sled-layout-bench".into());
    let read_only = std::env::args().any(|a| a == "--read-only");
    let dir = std::path::Path::new(&root).join(format!("{mode}-{n}"));
    let open = || {
        sled::Config::new()
            .path(&dir)
            .cache_capacity(cache << 20)
            .flush_every_ms(None)
            .open()
    };
    if !read_only {
        let _ = std::fs::remove_dir_all(&dir);
        let db = open()?;
        let t = db.open_tree("ledger")?;
        let started = Instant::now();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut batch = sled::Batch::default();
        let mut pending: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut last_of_device: HashMap<u64, u64> = HashMap::new();
        for seq in 0..n {
            let mut v = vec![0u8; 490];
            for b in v.iter_mut().step_by(7) {
                *b = next() as u8;
            }
            let mut k = vec![b'E'];
            k.extend_from_slice(&seq.to_be_bytes());
            batch.insert(k, v);
            let d = next() % 10_000;
            let device = format!("(01)0088442201{d:04}(21)SN-{d:06}");
            let id = format!("{:016x}-{:016x}-pm", next(), next());
            let mut rmw = |key: Vec<u8>, add: &[u8]| -> anyhow::Result<()> {
                let cur = match pending.get_mut(&key) {
                    Some(c) => c,
                    None => {
                        let old = t.get(&key)?.map(|v| v.to_vec()).unwrap_or_default();
                        pending.entry(key.clone()).or_insert(old)
                    }
                };
                cur.extend_from_slice(add);
                batch.insert(key, cur.clone());
                Ok(())
            };
            match mode.as_str() {
                "keys" => {
                    let mut dk = vec![b'D'];
                    dk.extend_from_slice(device.as_bytes());
                    dk.push(0);
                    dk.extend_from_slice(&seq.to_be_bytes());
                    batch.insert(dk, &[][..]);
                    let mut ik = vec![b'I'];
                    ik.extend_from_slice(id.as_bytes());
                    batch.insert(ik, &seq.to_be_bytes()[..]);
                }
                "chunks" => {
                    let mut dk = vec![b'H'];
                    dk.extend_from_slice(device.as_bytes());
                    dk.push(0);
                    let step = seq - last_of_device.insert(d, seq).unwrap_or(0);
                    rmw(dk, &varint(step))?;
                    let h = Sha256::digest(id.as_bytes());
                    let mut record = h[2..10].to_vec();
                    record.extend_from_slice(&varint(seq));
                    rmw(vec![b'J', h[0], h[1]], &record)?;
                }
                _ => {}
            }
            // Batches of 256 entries, flushed every 4,096, as the gateway's writer does.
            if seq % 256 == 255 {
                t.apply_batch(std::mem::take(&mut batch))?;
                pending.clear();
                if seq % 4096 == 4095 {
                    db.flush()?;
                }
            }
        }
        t.apply_batch(batch)?;
        db.flush()?;
        println!(
            "{mode}: wrote {n} entries in {:.1} s (resident {} MiB), {} MB on disk",
            started.elapsed().as_secs_f64(),
            rss_mib(),
            db.size_on_disk()? / 1_000_000
        );
    }
    let db = open()?;
    let t = db.open_tree("ledger")?;
    let opened = rss_mib();
    let started = Instant::now();
    let mut bytes = 0u64;
    for kv in t.iter() {
        let (k, v) = kv?;
        bytes += (k.len() + v.len()) as u64;
    }
    println!(
        "{mode}, cache {cache} MiB: resident after open {opened} MiB, after reading every key \
         ({} MB) in {:.1} s {} MiB",
        bytes / 1_000_000,
        started.elapsed().as_secs_f64(),
        rss_mib()
    );
    Ok(())
}
