//! `medledger import`, `ledger export`, `ledger receipt` and `verify`.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ledger_node::entry::DisclosureClass;
use ledger_node::export::{self, NodeKey, VerifyOptions};
use ledger_node::{ApplyOutcome, Command, Ledger, LedgerOptions};

use crate::event;

/// Parses `--disclose device,maintenance`.
pub fn parse_disclosure(list: Option<&str>) -> anyhow::Result<export::Disclosure> {
    let Some(list) = list else { return Ok(None) };
    let mut set = BTreeSet::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let class = DisclosureClass::parse(name).with_context(|| {
            format!("--disclose: unknown class {name:?} (known: device, maintenance, patient, financial)")
        })?;
        set.insert(class);
    }
    Ok(Some(set))
}

/// Opens the ledger of a data directory with a clear error when another process holds it.
pub async fn open_ledger(data_dir: &Path, node_id: u64) -> anyhow::Result<Ledger> {
    Ledger::open(
        data_dir,
        LedgerOptions {
            node_id,
            ..LedgerOptions::default()
        },
    )
    .await
    .with_context(|| {
        format!(
            "cannot open the ledger in {} (is a gateway running on this data directory?)",
            data_dir.display()
        )
    })
}

/// Result of an import.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub appended: u64,
    pub already_present: u64,
    pub size: u64,
}

/// Appends the events of a JSON Lines file. Every line is parsed and validated before the first
/// append; many appends are kept in flight so they share flushes.
pub async fn import_file(
    ledger: &Ledger,
    file: &Path,
    author: &str,
) -> anyhow::Result<ImportSummary> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let events = event::parse_file(&text).with_context(|| format!("{}", file.display()))?;
    import_events(ledger, events, author, &file.display().to_string()).await
}

/// Appends parsed events in file order.
pub async fn import_events(
    ledger: &Ledger,
    events: Vec<event::ImportEvent>,
    author: &str,
    source: &str,
) -> anyhow::Result<ImportSummary> {
    // Every correction must point at an event that exists before anything is written.
    let mut earlier = std::collections::HashSet::new();
    let size = ledger.store().size();
    for ev in &events {
        if let Some(seq) = ev.event.corrects {
            if seq >= size {
                bail!(
                    "{source}: line {}: corrects entry {seq}, but the ledger has {size} entries (use corrects_event_id for an event earlier in the file)",
                    ev.line
                );
            }
        }
        if let Some(target) = &ev.corrects_event_id {
            if !earlier.contains(target) && ledger.store().find_event_id(target)?.is_none() {
                bail!(
                    "{source}: line {}: corrects_event_id {target:?} is not in the ledger or earlier in the file",
                    ev.line
                );
            }
        }
        if let Some(id) = &ev.event.event_id {
            earlier.insert(id.clone());
        }
    }
    let mut summary = ImportSummary::default();
    let mut pending: VecDeque<(usize, _)> = VecDeque::new();
    let node = ledger.node_id();
    for mut ev in events {
        if let Some(target) = ev.corrects_event_id.take() {
            // The corrected event may be among those still in flight: settle them first.
            while let Some((line, fut)) = pending.pop_front() {
                settle(line, fut, &mut summary, source).await?;
            }
            let seq = ledger.store().find_event_id(&target)?.with_context(|| {
                format!("{source}: line {}: corrects_event_id {target:?} is not in the ledger or earlier in the file", ev.line)
            })?;
            ev.event.corrects = Some(seq);
        }
        let cmd = ledger_node::ledger::prepare(
            ev.event,
            author,
            node,
            ledger.signing_key(),
            ledger_node::ledger::now_ms(),
        )
        .with_context(|| format!("{source}: line {}", ev.line))?;
        pending.push_back((ev.line, ledger.enqueue(Command::Append(cmd)).await?));
        if pending.len() >= 4096 {
            if let Some((line, fut)) = pending.pop_front() {
                settle(line, fut, &mut summary, source).await?;
            }
        }
    }
    while let Some((line, fut)) = pending.pop_front() {
        settle(line, fut, &mut summary, source).await?;
    }
    summary.size = ledger.store().size();
    Ok(summary)
}

async fn settle(
    line: usize,
    fut: impl std::future::Future<Output = Result<ApplyOutcome, ledger_node::LedgerError>>,
    summary: &mut ImportSummary,
    source: &str,
) -> anyhow::Result<()> {
    match fut.await? {
        ApplyOutcome::Appended { .. } => summary.appended += 1,
        ApplyOutcome::Duplicate { .. } => summary.already_present += 1,
        ApplyOutcome::Refused { reason } => {
            bail!("{source}: line {line}: refused by the ledger: {reason}")
        }
        ApplyOutcome::NodeRegistered { .. } | ApplyOutcome::Checkpointed { .. } => {}
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees half
/// a file.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut w)?;
        w.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `ledger export`.
pub async fn export(
    ledger: &Ledger,
    out: &Path,
    disclose: &export::Disclosure,
) -> anyhow::Result<u64> {
    let head = ledger.tree_head()?;
    write_atomic(out, |w| {
        Ok(export::write_export(ledger.store(), &head, disclose, w)?)
    })?;
    Ok(head.size)
}

/// `ledger receipt`.
pub async fn receipt(
    ledger: &Ledger,
    seq: u64,
    out: &Path,
    disclose: &export::Disclosure,
) -> anyhow::Result<()> {
    receipt_since(ledger, seq, out, disclose, None).await
}

/// `ledger receipt --since-size N`: the receipt also carries the consistency proof from the tree
/// of N entries.
pub async fn receipt_since(
    ledger: &Ledger,
    seq: u64,
    out: &Path,
    disclose: &export::Disclosure,
    since_size: Option<u64>,
) -> anyhow::Result<()> {
    let head = ledger.tree_head()?;
    let r = export::make_receipt_since(ledger.store(), seq, &head, disclose, since_size)?;
    write_atomic(out, |w| {
        serde_json::to_writer_pretty(&mut *w, &r)?;
        w.write_all(b"\n")?;
        Ok(())
    })
}

/// Parses `--trusted-key NODE=HEX`.
pub fn parse_trusted_key(s: &str) -> Result<NodeKey, String> {
    let (id, key) = s.split_once('=').ok_or("expected NODE_ID=PUBLIC_KEY_HEX")?;
    let node_id = id
        .trim()
        .parse()
        .map_err(|_| format!("node id {id:?} is not a number"))?;
    let public_key =
        ledger_node::hash::from_hex(key.trim()).ok_or("public key must be 64 hex digits")?;
    Ok(NodeKey {
        node_id,
        public_key,
    })
}

/// `verify`: returns the report, or the failure to print.
pub fn verify(
    file: &PathBuf,
    trusted: Vec<NodeKey>,
    progress_bar: bool,
) -> anyhow::Result<Result<export::VerifyReport, export::VerifyFailure>> {
    verify_with(file, trusted, None, 0, progress_bar)
}

/// `verify --known-head FILE --threads N`.
pub fn verify_with(
    file: &PathBuf,
    trusted: Vec<NodeKey>,
    known_head: Option<&Path>,
    threads: usize,
    progress_bar: bool,
) -> anyhow::Result<Result<export::VerifyReport, export::VerifyFailure>> {
    let known_head = match known_head {
        None => None,
        Some(p) => {
            let mut f =
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            match export::read_known_head(&mut f) {
                Ok(h) => Some(h),
                Err(e) => anyhow::bail!("known head {}: {e}", p.display()),
            }
        }
    };
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut input = BufReader::with_capacity(1 << 20, f);
    let bar = if progress_bar {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "verifying {bar:40} {pos}/{len} entries ({per_sec}, {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let opts = VerifyOptions {
        trusted_keys: trusted,
        known_head,
        threads,
    };
    let result = export::verify(&mut input, &opts, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    Ok(result)
}

/// What the signatures were checked against, in words.
fn trust_words(report: &export::VerifyReport) -> &'static str {
    match report.trust {
        export::Trust::TrustedKeys => "against the trusted keys given",
        _ => "against the keys the file carries, not against a trust anchor",
    }
}

/// The one-line verdict (`--quiet`).
pub fn verdict(report: &export::VerifyReport) -> String {
    let mut s = format!(
        "valid {}, verified {}",
        report.document,
        trust_words(report)
    );
    if let Some(k) = &report.known_head {
        s += &format!(
            ", consistent with the known head of {} entries",
            k.known.size
        );
    }
    s
}

/// Human-readable summary of a verified document.
pub fn describe(report: &export::VerifyReport) -> String {
    let head = &report.tree_head;
    let mut s = format!(
        "valid {}: {} entr{} checked, tree size {}, root {}, signed by node {} at {}\n",
        report.document,
        report.entries,
        if report.entries == 1 { "y" } else { "ies" },
        head.size,
        hex::encode(head.root),
        head.node_id,
        crate::event::format_ms(head.time_ms),
    );
    s += &format!(
        "components: {} disclosed and matching their commitments, {} withheld (commitment only)\n",
        report.disclosed_components, report.withheld_components
    );
    s += &format!("verified {}", trust_words(report));
    if report.trust != export::Trust::TrustedKeys {
        s += " (pin the keys with --trusted-key NODE=HEX to check them)";
    }
    s += "\n";
    for k in &report.node_keys {
        s += &format!(
            "node {} public key {}\n",
            k.node_id,
            hex::encode(k.public_key)
        );
    }
    if let Some(k) = &report.known_head {
        s += &format!(
            "consistent with the known head of {} entries (root {}, signed by node {} at {}): {}\n",
            k.known.size,
            hex::encode(k.known.root),
            k.known.node_id,
            crate::event::format_ms(k.known.time_ms),
            if k.newer_by == 0 {
                "the same tree".to_owned()
            } else {
                format!("this tree extends it by {} entries", k.newer_by)
            }
        );
    }
    if let Some((e, openings)) = &report.entry {
        s += &format!(
            "entry {}: {} of device {} by {} recorded {}{}\n",
            e.seq,
            e.body.kind.as_str(),
            e.body.device_id,
            e.body.author,
            crate::event::format_ms(e.body.recorded_at_ms),
            e.body
                .occurred_at
                .as_ref()
                .map(|t| format!(", occurred {t}"))
                .unwrap_or_default()
        );
        for (c, o) in e.body.components.iter().zip(openings) {
            match o {
                Some(o) => s += &format!("  {} [{}] = {}\n", c.name, c.class.as_str(), o.value),
                None => s += &format!("  {} [{}] withheld\n", c.name, c.class.as_str()),
            }
        }
    }
    s
}
