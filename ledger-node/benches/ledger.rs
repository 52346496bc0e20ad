//! Ledger benchmarks (issue 2), on real files:
//!
//! * `append`: durable single-node append throughput and per-append latency through
//!   `Ledger::append` at 1, 16 and 256 concurrent writers, with group commit (default
//!   `LedgerOptions`) and with one flush per entry (`max_batch = 1`). Every acknowledged append has
//!   been through `Store::flush` (sled flush + `fdatasync`).
//! * `proofs`: builds a ledger of 1,000,000 entries through `Store::apply` in large batches and one
//!   flush, reopens it, then times `Store::inclusion_proof` and `Store::consistency_proof` for random
//!   arguments and counts the sled reads each one makes.
//! * `verify`: `export::verify` on an export of 100,000 entries beside a raw loop doing only the
//!   cryptography verification needs (leaf hash, component commitments, ed25519 `verify_strict`)
//!   on the same entries, both single-threaded on the same thread.
//!
//! `cargo bench -p ledger-node --bench ledger [-- append|proofs|verify ...]` (no part: all three).
//! Environment: `MEDLEDGER_BENCH_DIR` (where the temporary ledgers go; default the system temp
//! dir), `MEDLEDGER_BENCH_SECS` (seconds per append run, default 5), `MEDLEDGER_BENCH_WRITERS`
//! (comma-separated writer counts, default `1,16,256`), `MEDLEDGER_BENCH_MODES` (any of `group`,
//! `single`, `anatomy`; default `group,single`, which also runs the anatomy),
//! `MEDLEDGER_BENCH_ANATOMY_SIZES` (default `1,16,256,1024`), `MEDLEDGER_BENCH_PROOF_ENTRIES`
//! (default 1000000), `MEDLEDGER_BENCH_VERIFY_ENTRIES` (default 100000).
//!
//! The bench checks what it measures: the ledger size after an append run equals the number of
//! acknowledged appends, every timed inclusion proof and every tenth consistency proof is verified
//! against the roots, and `verify` must accept the export. A failed check exits non-zero.
//! Results and their discussion: `docs/benchmarks.md`, section "Ledger".

use std::error::Error;
use std::io::{BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use ledger_node::entry::{
    commitment, ComponentInput, DisclosureClass, Entry, EventInput, EventKind,
};
use ledger_node::entry::{CommittedComponent, Opening, ENTRY_SIGNING_DOMAIN};
use ledger_node::export::{self, VerifyOptions};
use ledger_node::hash::{leaf_hash, Hash};
use ledger_node::ledger::{now_ms, prepare};
use ledger_node::merkle::{self, NodeReader};
use ledger_node::{
    ApplyOutcome, Command, Ledger, LedgerError, LedgerOptions, SignedTreeHead, Store,
};
use rand::Rng;

/// The same allocator as the `medledger` binary (see gateway/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxResult<T> = Result<T, Box<dyn Error>>;

fn env_u64(name: &str, default: u64) -> BoxResult<u64> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|e| format!("{name}={v:?}: {e}"))?),
        Err(_) => Ok(default),
    }
}

fn main() -> BoxResult<()> {
    // cargo bench passes `--bench`; any other argument names a part.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |p: &str| parts.is_empty() || parts.iter().any(|a| a == p);
    for p in &parts {
        if !["append", "proofs", "verify"].contains(&p.as_str()) {
            return Err(format!("unknown part {p:?}: expected append, proofs or verify").into());
        }
    }
    let base = std::env::var_os("MEDLEDGER_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    machine(&base);
    if want("append") {
        rt.block_on(bench_append(&base))?;
    }
    if want("proofs") {
        rt.block_on(bench_proofs(&base))?;
    }
    if want("verify") {
        rt.block_on(bench_verify(&base))?;
    }
    Ok(())
}

fn machine(base: &Path) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {cpus} cpus, {model}; load average {}",
        load.trim()
    );
    println!("data directory: {}", base.display());
}

/// A realistic maintenance event, shaped like `docs/examples/maintenance-history.jsonl`: five
/// components whose values are 30-50 bytes of JSON.
fn event(i: u64, run: &str) -> EventInput {
    let c = |name: &str, class, value: String| ComponentInput {
        name: name.into(),
        class,
        value,
    };
    let (kind, components) = match i % 3 {
        0 => (
            EventKind::PreventiveMaintenance,
            vec![
                c(
                    "procedure",
                    DisclosureClass::Maintenance,
                    "\"PM-INFUSION-PUMP-v3 (annual, IEC 62353)\"".into(),
                ),
                c(
                    "checks",
                    DisclosureClass::Maintenance,
                    r#"{"visual":"pass","electrical safety":"pass"}"#.into(),
                ),
                c(
                    "technician",
                    DisclosureClass::Maintenance,
                    format!("\"biomed:a.okafor (clinical eng.) #{}\"", i % 97),
                ),
                c(
                    "location",
                    DisclosureClass::Device,
                    format!("\"ICU-2 bed {}, building C, level 2\"", i % 12),
                ),
                c(
                    "labour_cost",
                    DisclosureClass::Financial,
                    format!(r#"{{"amount":{}.50,"currency":"EUR"}}"#, 40 + i % 300),
                ),
            ],
        ),
        1 => (
            EventKind::Repair,
            vec![
                c(
                    "fault",
                    DisclosureClass::Maintenance,
                    "\"cracked door latch on the pump housing\"".into(),
                ),
                c(
                    "action",
                    DisclosureClass::Maintenance,
                    "\"replaced latch, reseated J4 connector\"".into(),
                ),
                c(
                    "parts",
                    DisclosureClass::Maintenance,
                    format!(r#"["P/N 83936","P/N {}-B"]"#, 10_000 + i % 9_000),
                ),
                c(
                    "technician",
                    DisclosureClass::Maintenance,
                    format!("\"biomed:j.lindqvist (on call) #{}\"", i % 89),
                ),
                c(
                    "cost",
                    DisclosureClass::Financial,
                    format!(
                        r#"{{"amount":{}.83,"currency":"EUR","warranty":true}}"#,
                        i % 900
                    ),
                ),
            ],
        ),
        _ => (
            EventKind::Alarm,
            vec![
                c(
                    "alarm",
                    DisclosureClass::Maintenance,
                    "\"occlusion downstream, pressure limit\"".into(),
                ),
                c(
                    "priority",
                    DisclosureClass::Maintenance,
                    "\"high (acknowledged at bedside)\"".into(),
                ),
                c(
                    "patient_mrn",
                    DisclosureClass::Patient,
                    format!("\"MRN{:07} / encounter 2024-11\"", i % 9_999_999),
                ),
                c(
                    "ward",
                    DisclosureClass::Device,
                    format!("\"ICU-2 bed {}, building C, level 2\"", i % 12),
                ),
            ],
        ),
    };
    EventInput {
        kind,
        device_id: format!("(01)00884838035249(21)PMP{:06}", i % 200),
        occurred_at: Some("2024-11-18T14:00:00Z".into()),
        components,
        corrects: None,
        event_id: Some(format!("WO-{run}-{i}")),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// CPU time (user + system) of the calling thread so far, from `/proc/thread-self/stat` (clock
/// ticks of 10 ms: use it on runs of seconds).
fn thread_cpu() -> BoxResult<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("/proc/thread-self/stat has no command name")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: indexes 11 and 12 after the name (the
    // state, field 3, is index 0), in USER_HZ ticks, which Linux fixes at 100 per second.
    let ticks = |i: usize| -> BoxResult<u64> {
        Ok(f.get(i)
            .ok_or("/proc/thread-self/stat is too short")?
            .parse()?)
    };
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Part 1: durable append throughput.

struct AppendRun {
    events: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

async fn append_run(
    base: &Path,
    max_batch: usize,
    writers: usize,
    secs: u64,
) -> BoxResult<AppendRun> {
    let tmp = tempfile::Builder::new()
        .prefix("medledger-bench-append-")
        .tempdir_in(base)?;
    let opts = LedgerOptions {
        max_batch,
        ..LedgerOptions::default()
    };
    let ledger = Arc::new(Ledger::open(tmp.path(), opts).await?);
    let next = Arc::new(AtomicU64::new(0));
    let run = format!("{max_batch}x{writers}");
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::with_capacity(writers);
    for _ in 0..writers {
        let ledger = ledger.clone();
        let next = next.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let ev = event(i, &run);
                let t0 = Instant::now();
                match ledger.append(ev, "sha256:bench-author").await? {
                    ApplyOutcome::Appended { .. } => lat.push(t0.elapsed()),
                    other => {
                        return Err(LedgerError::Refused(format!(
                            "unexpected outcome {other:?}"
                        )))
                    }
                }
            }
            Ok::<_, LedgerError>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed();
    let events = lat.len() as u64;
    let size = ledger.store().size();
    if size != events {
        return Err(format!(
            "ledger holds {size} durable entries after {events} acknowledged appends"
        )
        .into());
    }
    lat.sort_unstable();
    Ok(AppendRun {
        events,
        elapsed,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
    })
}

/// Latency of one 4 KiB write + `fdatasync` on the same file system: the floor under any
/// one-flush-per-entry design.
fn fdatasync_latency(base: &Path) -> BoxResult<(Duration, Duration)> {
    let tmp = tempfile::Builder::new()
        .prefix("medledger-bench-sync-")
        .tempdir_in(base)?;
    let mut f = std::fs::File::create(tmp.path().join("f"))?;
    let buf = [7u8; 4096];
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        f.write_all(&buf)?;
        f.sync_data()?;
        lat.push(t0.elapsed());
    }
    lat.sort_unstable();
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

async fn bench_append(base: &Path) -> BoxResult<()> {
    let secs = env_u64("MEDLEDGER_BENCH_SECS", 5)?;
    let writers: Vec<usize> = std::env::var("MEDLEDGER_BENCH_WRITERS")
        .unwrap_or_else(|_| "1,16,256".into())
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("MEDLEDGER_BENCH_WRITERS: {e}"))?;
    let modes = std::env::var("MEDLEDGER_BENCH_MODES").unwrap_or_else(|_| "group,single".into());
    let (s50, s99) = fdatasync_latency(base)?;
    println!(
        "\n## append: durable appends through Ledger::append, {secs} s per run\n\
         raw 4 KiB write+fdatasync on this file system: p50 {:.2} ms, p99 {:.2} ms",
        ms(s50),
        ms(s99)
    );
    println!(
        "| mode | writers | events | events/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|"
    );
    let mut group = Vec::new();
    let mut single = Vec::new();
    for (label, max_batch, out) in [
        (
            "group commit (max_batch 4096)",
            LedgerOptions::default().max_batch,
            &mut group,
        ),
        ("one flush per entry (max_batch 1)", 1, &mut single),
    ] {
        let mode = if max_batch == 1 { "single" } else { "group" };
        if !modes.split(',').any(|m| m.trim() == mode) {
            continue;
        }
        for &w in &writers {
            let r = append_run(base, max_batch, w, secs).await?;
            let rate = r.events as f64 / r.elapsed.as_secs_f64();
            println!(
                "| {label} | {w} | {} | {rate:.0} | {:.2} | {:.2} |",
                r.events,
                ms(r.p50),
                ms(r.p99)
            );
            out.push((w, rate));
        }
    }
    for ((w, g), (_, s)) in group.iter().zip(&single) {
        println!(
            "group commit / one flush per entry at {w} writers: {:.1}x",
            g / s
        );
    }
    if modes.split(',').any(|m| m.trim() == "anatomy") || modes == "group,single" {
        anatomy(base, secs).await?;
    }
    Ok(())
}

/// Where the writer's time goes: `Store::apply` of a batch of prepared commands, then
/// `Store::flush`, one after the other as the group-commit writer does them.
async fn anatomy(base: &Path, secs: u64) -> BoxResult<()> {
    println!(
        "\nwriter anatomy: Store::apply of n prepared commands then Store::flush, repeated for {secs} s per n\n\
         | n | cycles | apply ms | apply µs/entry | flush ms | entries/s (apply+flush) |\n|---:|---:|---:|---:|---:|---:|"
    );
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let sizes: Vec<u64> = std::env::var("MEDLEDGER_BENCH_ANATOMY_SIZES")
        .unwrap_or_else(|_| "1,16,256,1024".into())
        .split(',')
        .map(|s| s.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("MEDLEDGER_BENCH_ANATOMY_SIZES: {e}"))?;
    for n in sizes {
        let tmp = tempfile::Builder::new()
            .prefix("medledger-bench-anatomy-")
            .tempdir_in(base)?;
        let store = Store::open(tmp.path())?;
        let (mut apply_t, mut flush_t, mut cycles, mut i) =
            (Duration::ZERO, Duration::ZERO, 0u32, 0u64);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            let cmds = (i..i + n)
                .map(|j| {
                    prepare(
                        event(j, "anatomy"),
                        "sha256:bench-author",
                        1,
                        &key,
                        now_ms(),
                    )
                    .map(Command::Append)
                })
                .collect::<Result<Vec<_>, _>>()?;
            i += n;
            let t = Instant::now();
            store.apply(&cmds, &[])?;
            let t2 = Instant::now();
            store.flush().await?;
            flush_t += t2.elapsed();
            apply_t += t2 - t;
            cycles += 1;
        }
        let c = cycles.max(1);
        println!(
            "| {n} | {cycles} | {:.2} | {:.1} | {:.2} | {:.0} |",
            ms(apply_t / c),
            us(apply_t / c) / n as f64,
            ms(flush_t / c),
            (i as f64) / (apply_t + flush_t).as_secs_f64()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fast build through Store::apply.

/// Builds a store of `n` entries: one thread prepares (validates, salts, signs) batches while this
/// one applies them, `batch` commands per `Store::apply`, and one flush at the end.
async fn build_store(dir: &Path, n: u64, batch: u64) -> BoxResult<(Store, SigningKey, Duration)> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let store = Store::open(dir)?;
    let start = Instant::now();
    let reg = store.apply(
        &[Command::RegisterNode {
            node_id: 1,
            public_key: key.verifying_key().to_bytes(),
        }],
        &[],
    )?;
    if !matches!(reg.first(), Some(ApplyOutcome::NodeRegistered { .. })) {
        return Err(format!("node registration: {reg:?}").into());
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Command>, LedgerError>>(2);
    let pkey = key.clone();
    let producer = std::thread::spawn(move || {
        let mut i = 0;
        while i < n {
            let end = (i + batch).min(n);
            let cmds = (i..end)
                .map(|j| {
                    prepare(event(j, "build"), "sha256:bench-author", 1, &pkey, now_ms())
                        .map(Command::Append)
                })
                .collect();
            if tx.send(cmds).is_err() {
                return;
            }
            i = end;
        }
    });
    let mut applied = 0u64;
    let mut last_report = Instant::now();
    for cmds in rx {
        let cmds = cmds?;
        for o in store.apply(&cmds, &[])? {
            if !matches!(o, ApplyOutcome::Appended { .. }) {
                return Err(format!("build: unexpected outcome {o:?}").into());
            }
        }
        applied += cmds.len() as u64;
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  built {applied} of {n} entries in {:.0} s",
                start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    producer.join().map_err(|_| "prepare thread panicked")?;
    store.flush().await?;
    let took = start.elapsed();
    if store.size() != n {
        return Err(format!("built {} entries, wanted {n}", store.size()).into());
    }
    Ok((store, key, took))
}

// ---------------------------------------------------------------------------------------------
// Part 2: proofs at 1,000,000 entries.

/// Counts the perfect-subtree reads (each one a sled `get`) a proof makes.
struct Counting<'a> {
    store: &'a Store,
    reads: std::cell::Cell<u64>,
}

impl NodeReader for Counting<'_> {
    type Error = LedgerError;
    fn perfect(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        self.reads.set(self.reads.get() + 1);
        self.store.perfect(level, index)
    }
}

struct Stats {
    mean: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort_unstable();
    let sum: Duration = v.iter().sum();
    Stats {
        mean: sum / v.len().max(1) as u32,
        p50: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
        max: v.last().copied().unwrap_or_default(),
    }
}

async fn bench_proofs(base: &Path) -> BoxResult<()> {
    let n = env_u64("MEDLEDGER_BENCH_PROOF_ENTRIES", 1_000_000)?;
    let samples = 10_000usize;
    let tmp = tempfile::Builder::new()
        .prefix("medledger-bench-proofs-")
        .tempdir_in(base)?;
    let dir = tmp.path().join("ledger");
    println!("\n## proofs: {n} entries built through Store::apply (10,000 commands per batch, one flush)");
    let (store, _key, took) = build_store(&dir, n, 10_000).await?;
    let root = store.root(n)?;
    drop(store);
    let disk = dir_bytes(&dir);
    println!(
        "build: {:.1} s ({:.0} entries/s, prepare and apply pipelined on 2 threads); disk {:.0} MiB ({:.0} bytes/entry)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        disk as f64 / (1 << 20) as f64,
        disk as f64 / n as f64
    );
    let t0 = Instant::now();
    let store = Store::open(&dir)?;
    println!("reopen: {:.2} s", t0.elapsed().as_secs_f64());
    if store.root(n)? != root {
        return Err("root changed across reopen".into());
    }
    let log2 = 64 - (n - 1).leading_zeros();
    let mut rng = rand::thread_rng();
    println!(
        "| proof | samples | mean µs | p50 µs | p99 µs | max µs | sled reads mean | sled reads max | ceil(log2 n) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    // Inclusion: random index in the full tree.
    let mut times = Vec::with_capacity(samples);
    let (mut reads_sum, mut reads_max) = (0u64, 0u64);
    for _ in 0..samples {
        let index = rng.gen_range(0..n);
        let t = Instant::now();
        let proof = store.inclusion_proof(index, n)?;
        times.push(t.elapsed());
        let c = Counting {
            store: &store,
            reads: 0.into(),
        };
        let again = merkle::inclusion_proof(&c, index, n)??;
        if again != proof {
            return Err("inclusion proof differs between calls".into());
        }
        reads_sum += c.reads.get();
        reads_max = reads_max.max(c.reads.get());
        let leaf = leaf_hash(&store.entry_bytes(index)?);
        merkle::verify_inclusion(&leaf, index, n, &proof, &root)
            .map_err(|e| format!("inclusion proof of {index}: {e}"))?;
    }
    let s = stats(times);
    println!(
        "| inclusion (random index, size {n}) | {samples} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {reads_max} | {log2} |",
        us(s.mean), us(s.p50), us(s.p99), us(s.max), reads_sum as f64 / samples as f64
    );
    // Consistency: random old size to the full tree.
    let mut times = Vec::with_capacity(samples);
    let (mut reads_sum, mut reads_max) = (0u64, 0u64);
    let mut old_roots_checked = 0;
    for k in 0..samples {
        let old = rng.gen_range(1..n);
        let t = Instant::now();
        let proof = store.consistency_proof(old, n)?;
        times.push(t.elapsed());
        let c = Counting {
            store: &store,
            reads: 0.into(),
        };
        let again = merkle::consistency_proof(&c, old, n, n)??;
        if again != proof {
            return Err("consistency proof differs between calls".into());
        }
        reads_sum += c.reads.get();
        reads_max = reads_max.max(c.reads.get());
        // Store::root of an old size costs O(log n) reads too; check a tenth of them.
        if k % 10 == 0 {
            let old_root = store.root(old)?;
            merkle::verify_consistency(old, n, &proof, &old_root, &root)
                .map_err(|e| format!("consistency proof {old} -> {n}: {e}"))?;
            old_roots_checked += 1;
        }
    }
    let s = stats(times);
    println!(
        "| consistency (random old size -> {n}) | {samples} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {reads_max} | {log2} |",
        us(s.mean), us(s.p50), us(s.p99), us(s.max), reads_sum as f64 / samples as f64
    );
    println!(
        "every timed inclusion proof and {old_roots_checked} consistency proofs verified against the roots"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Part 3: verify speed against the raw cryptographic work.

/// What the raw loop gets, already decoded in memory: exactly the inputs of the hashes and the
/// signature check, so that the loop does nothing but the cryptography.
struct RawItem {
    bytes: Vec<u8>,
    msg: Vec<u8>,
    signature: Signature,
    components: Vec<(CommittedComponent, Opening)>,
}

fn raw_loop(items: &[RawItem], key: &VerifyingKey) -> BoxResult<()> {
    for it in items {
        let leaf = leaf_hash(&it.bytes);
        std::hint::black_box(leaf);
        for (c, o) in &it.components {
            if commitment(&o.salt, &c.name, c.class, &o.value) != c.commitment {
                return Err("raw loop: commitment mismatch".into());
            }
        }
        key.verify_strict(&it.msg, &it.signature)
            .map_err(|e| format!("raw loop: signature: {e}"))?;
    }
    Ok(())
}

async fn bench_verify(base: &Path) -> BoxResult<()> {
    let n = env_u64("MEDLEDGER_BENCH_VERIFY_ENTRIES", 100_000)?;
    let tmp = tempfile::Builder::new()
        .prefix("medledger-bench-verify-")
        .tempdir_in(base)?;
    let dir = tmp.path().join("ledger");
    println!("\n## verify: export of {n} entries (all classes disclosed)");
    let (store, key, took) = build_store(&dir, n, 10_000).await?;
    println!("build: {:.1} s", took.as_secs_f64());
    let root = store.root(n)?;
    let head = SignedTreeHead::sign(n, root, now_ms(), 1, &key);
    let path = tmp.path().join("export.jsonl");
    let t0 = Instant::now();
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        export::write_export(&store, &head, &None, &mut out)?;
    }
    let export_took = t0.elapsed();
    let file_len = std::fs::metadata(&path)?.len();
    println!(
        "write_export: {:.2} s ({:.0} entries/s), {:.1} MiB ({:.0} bytes/line)",
        export_took.as_secs_f64(),
        n as f64 / export_took.as_secs_f64(),
        file_len as f64 / (1 << 20) as f64,
        file_len as f64 / n as f64
    );
    let mut items = Vec::with_capacity(n as usize);
    for seq in 0..n {
        let bytes = store.entry_bytes(seq)?;
        let entry = Entry::decode(&bytes).map_err(|e| format!("entry {seq}: {e}"))?;
        let openings = store.openings(seq)?;
        let mut msg = ENTRY_SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(&bytes[9..bytes.len() - 64]);
        let mut components = Vec::new();
        for (c, o) in entry.body.components.iter().zip(openings) {
            let o = o.ok_or_else(|| format!("entry {seq}: an opening is missing"))?;
            components.push((c.clone(), o));
        }
        items.push(RawItem {
            bytes,
            msg,
            signature: Signature::from_bytes(
                &entry
                    .signature
                    .ok_or_else(|| format!("entry {seq}: a version 2 entry has no signature"))?,
            ),
            components,
        });
    }
    drop(store);
    let vk = key.verifying_key();
    // Warm the page cache and both code paths once, then alternate the two, three times each, on
    // this one thread; the best run of each counts (the machine is shared).
    // Each run gives wall time and this thread's CPU time (user + system, from
    // /proc/thread-self/stat): the machine is shared, and CPU time is what other processes'
    // load disturbs least.
    let verify_once = || -> BoxResult<(Duration, Duration)> {
        let (t, c) = (Instant::now(), thread_cpu()?);
        let mut input = BufReader::with_capacity(1 << 16, std::fs::File::open(&path)?);
        // One checking thread, so that this thread's CPU time is the whole cost.
        let one = VerifyOptions {
            threads: 1,
            ..VerifyOptions::default()
        };
        let report = export::verify(&mut input, &one, &mut |_, _| {})?;
        let d = (t.elapsed(), thread_cpu()? - c);
        if report.entries != n || report.tree_head.root != root {
            return Err("verify reported something other than the export".into());
        }
        Ok(d)
    };
    let raw_once = || -> BoxResult<(Duration, Duration)> {
        let (t, c) = (Instant::now(), thread_cpu()?);
        raw_loop(&items, &vk)?;
        Ok((t.elapsed(), thread_cpu()? - c))
    };
    verify_once()?;
    raw_once()?;
    let (mut best_v, mut best_r) = (Duration::MAX, Duration::MAX);
    let (mut cpu_v, mut cpu_r) = (Duration::ZERO, Duration::ZERO);
    let mut runs = Vec::new();
    let rounds = 3;
    for _ in 0..rounds {
        let v = verify_once()?;
        let r = raw_once()?;
        runs.push((v, r));
        best_v = best_v.min(v.0);
        best_r = best_r.min(r.0);
        cpu_v += v.1;
        cpu_r += r.1;
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "| run | export::verify entries/s (wall) | raw loop entries/s (wall) | verify / raw (wall) | verify / raw (thread CPU time) |\n|---|---:|---:|---:|---:|"
    );
    for (i, (v, r)) in runs.iter().enumerate() {
        println!(
            "| {} | {:.0} | {:.0} | {:.1}% | {:.1}% |",
            i + 1,
            rate(v.0),
            rate(r.0),
            100.0 * rate(v.0) / rate(r.0),
            100.0 * rate(v.1) / rate(r.1)
        );
    }
    println!(
        "| best wall / total CPU | {:.0} | {:.0} | {:.1}% | {:.1}% ({:.0} vs {:.0} entries per CPU-second) |",
        rate(best_v),
        rate(best_r),
        100.0 * rate(best_v) / rate(best_r),
        100.0 * cpu_r.as_secs_f64() / cpu_v.as_secs_f64(),
        rounds as f64 * rate(cpu_v),
        rounds as f64 * rate(cpu_r)
    );
    println!("both single-threaded, on the same thread, alternating");
    // And with one checking thread per core, as `medledger verify` runs.
    let mut best_all = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut input = BufReader::with_capacity(1 << 16, std::fs::File::open(&path)?);
        let report = export::verify(&mut input, &VerifyOptions::default(), &mut |_, _| {})?;
        if report.entries != n || report.tree_head.root != root {
            return Err("verify reported something other than the export".into());
        }
        best_all = best_all.min(t.elapsed());
    }
    println!(
        "export::verify on every core: {:.0} entries/s (best of 3, wall)",
        rate(best_all)
    );
    // Where verify's time beyond the raw loop goes: reading and parsing the lines alone, then also
    // hex-decoding and parsing the entry bytes.
    let parse_only = |decode: bool| -> BoxResult<Duration> {
        use std::io::BufRead;
        let t = Instant::now();
        let mut input = BufReader::with_capacity(1 << 16, std::fs::File::open(&path)?);
        let mut line = String::new();
        input.read_line(&mut line)?;
        for _ in 0..n {
            line.clear();
            input.read_line(&mut line)?;
            let rec: export::EntryRecord<'_> = serde_json::from_str(&line)?;
            if decode {
                let bytes = hex::decode(rec.entry.as_bytes())?;
                let e = Entry::decode(&bytes).map_err(|e| e.to_string())?;
                std::hint::black_box(e);
            }
            std::hint::black_box(rec);
        }
        Ok(t.elapsed())
    };
    let (mut p, mut pd) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        p = p.min(parse_only(false)?);
        pd = pd.min(parse_only(true)?);
    }
    let per = |d: Duration| us(d) / n as f64;
    println!(
        "per entry (best runs): verify {:.1} µs, raw crypto {:.1} µs, read_line + JSON parse {:.1} µs, \
         + hex decode + Entry::decode {:.1} µs",
        per(best_v),
        per(best_r),
        per(p),
        per(pd)
    );
    Ok(())
}
