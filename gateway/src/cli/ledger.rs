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
    /// Which staff roles read each class of what the file recorded.
    pub readers: Vec<crate::records::ClassReaders>,
}

/// Appends the events of a JSON Lines file, streaming it: the file is read three times at most
/// (checked whole, then corrections by event id resolved, then appended), one line at a time, so
/// memory does not grow with the file beyond 8 bytes a line (a fingerprint of each event id, to
/// find the same id twice). Every line is checked before the first append: an import is all or
/// nothing. Many appends are kept in flight so they share flushes.
pub async fn import_file(
    ledger: &Ledger,
    file: &Path,
    author: &str,
) -> anyhow::Result<ImportSummary> {
    let source = file.display().to_string();
    let open = || -> anyhow::Result<event::EventLines<BufReader<std::fs::File>>> {
        let f = std::fs::File::open(file).with_context(|| format!("cannot read {source}"))?;
        Ok(event::EventLines::new(BufReader::with_capacity(1 << 16, f)))
    };
    let mut check = ImportCheck::new(ledger);
    let mut lines = open()?;
    while let Some(ev) = lines.next_event().with_context(|| source.clone())? {
        check.first(ledger, &ev, &source)?;
    }
    if check.needs_second_pass() {
        let mut lines = open()?;
        while let Some(ev) = lines.next_event().with_context(|| source.clone())? {
            check.second(ledger, &ev, &source)?;
        }
    }
    let mut lines = open()?;
    let changed = format!("{source} changed during the import");
    let events = std::iter::from_fn(move || {
        lines
            .next_event()
            .with_context(|| changed.clone())
            .transpose()
    });
    let readers = check.readers();
    let mut summary = append_events(ledger, events, author, &source).await?;
    summary.readers = readers;
    Ok(summary)
}

/// Appends parsed events in order, after the same checks as [`import_file`].
pub async fn import_events(
    ledger: &Ledger,
    events: Vec<event::ImportEvent>,
    author: &str,
    source: &str,
) -> anyhow::Result<ImportSummary> {
    let mut check = ImportCheck::new(ledger);
    for ev in &events {
        check.first(ledger, ev, source)?;
    }
    if check.needs_second_pass() {
        for ev in &events {
            check.second(ledger, ev, source)?;
        }
    }
    let readers = check.readers();
    let mut summary = append_events(ledger, events.into_iter().map(Ok), author, source).await?;
    summary.readers = readers;
    Ok(summary)
}

/// The checks of an import before anything is written, in two passes over its events, keeping
/// what they need to remember bounded by the file's corrections by event id and its repeated
/// ids, not by its size.
struct ImportCheck {
    size: u64,
    hasher: std::collections::hash_map::RandomState,
    /// Fingerprint of every event id (first pass), sorted and reduced to those seen twice by
    /// [`ImportCheck::needs_second_pass`].
    fingerprints: Vec<u64>,
    suspects: std::collections::HashSet<u64>,
    /// The ids that `corrects_event_id` names.
    referenced: std::collections::HashSet<String>,
    /// Second pass: suspect or referenced ids met so far, with their line.
    seen: std::collections::HashMap<String, usize>,
    /// Second pass: the device of each referenced id met so far (a correction concerns the
    /// device of the entry it corrects).
    devices: std::collections::HashMap<String, String>,
    /// The component names of the file per class, for [`ImportCheck::readers`].
    names: ClassNames,
}

/// Names per class kept to say who reads what an import recorded: enough to recognise them,
/// bounded whatever the file.
const NAMES_PER_CLASS: usize = 8;

/// The component names of an import file per class, at most [`NAMES_PER_CLASS`] each, to say
/// which staff roles read each class of what it recorded.
#[derive(Default)]
pub(crate) struct ClassNames(std::collections::BTreeMap<DisclosureClass, BTreeSet<String>>);

impl ClassNames {
    pub(crate) fn add(&mut self, components: &[ledger_node::entry::ComponentInput]) {
        for c in components {
            let names = self.0.entry(c.class).or_default();
            if names.len() < NAMES_PER_CLASS {
                names.insert(c.name.clone());
            }
        }
    }

    /// Which staff roles read each class of the names seen.
    pub(crate) fn readers(&self) -> Vec<crate::records::ClassReaders> {
        let named: Vec<ledger_node::entry::ComponentInput> = self
            .0
            .iter()
            .flat_map(|(class, names)| {
                names.iter().map(|n| ledger_node::entry::ComponentInput {
                    name: n.clone(),
                    class: *class,
                    value: String::new(),
                })
            })
            .collect();
        crate::records::audience(&named)
    }
}

/// Refuses a correction of `target_device`'s entry recorded about another device.
fn same_device(
    source: &str,
    ev: &event::ImportEvent,
    what: &str,
    target_device: &str,
) -> anyhow::Result<()> {
    if target_device != ev.event.device_id {
        bail!(
            "{source}: line {}: corrects {what}, which is about device {target_device:?}, not {:?}: a correction concerns the same device as the entry it corrects",
            ev.line,
            ev.event.device_id
        );
    }
    Ok(())
}

impl ImportCheck {
    fn new(ledger: &Ledger) -> Self {
        Self {
            size: ledger.store().size(),
            hasher: Default::default(),
            fingerprints: Vec::new(),
            suspects: Default::default(),
            referenced: Default::default(),
            seen: Default::default(),
            devices: Default::default(),
            names: Default::default(),
        }
    }

    /// Which staff roles read each class of what the file records.
    fn readers(&self) -> Vec<crate::records::ClassReaders> {
        self.names.readers()
    }

    fn fingerprint(&self, id: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(id)
    }

    /// Each line on its own (parsed by the caller): `corrects` within the ledger, about the
    /// same device.
    fn first(
        &mut self,
        ledger: &Ledger,
        ev: &event::ImportEvent,
        source: &str,
    ) -> anyhow::Result<()> {
        if let Some(seq) = ev.event.corrects {
            if seq >= self.size {
                bail!(
                    "{source}: line {}: corrects entry {seq}, but the ledger has {} entries (use corrects_event_id for an event earlier in the file)",
                    ev.line, self.size
                );
            }
            let device = ledger.store().entry(seq)?.body.device_id;
            same_device(source, ev, &format!("entry {seq}"), &device)?;
        }
        self.names.add(&ev.event.components);
        if let Some(id) = &ev.event.event_id {
            self.fingerprints.push(self.fingerprint(id));
        }
        if let Some(target) = &ev.corrects_event_id {
            self.referenced.insert(target.clone());
        }
        Ok(())
    }

    /// Whether the first pass left anything to check: ids that may repeat, corrections by id.
    fn needs_second_pass(&mut self) -> bool {
        let mut fp = std::mem::take(&mut self.fingerprints);
        fp.sort_unstable();
        self.suspects = fp
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        !self.suspects.is_empty() || !self.referenced.is_empty()
    }

    /// Repeated event ids, and every `corrects_event_id` naming an event of the ledger or of an
    /// earlier line.
    fn second(
        &mut self,
        ledger: &Ledger,
        ev: &event::ImportEvent,
        source: &str,
    ) -> anyhow::Result<()> {
        if let Some(target) = &ev.corrects_event_id {
            let device = match self.devices.get(target) {
                Some(d) => d.clone(),
                None => match ledger.store().find_event_id(target)? {
                    Some(seq) => ledger.store().entry(seq)?.body.device_id,
                    None => bail!(
                        "{source}: line {}: corrects_event_id {target:?} is not in the ledger or earlier in the file",
                        ev.line
                    ),
                },
            };
            same_device(source, ev, &format!("event {target:?}"), &device)?;
        }
        if let Some(id) = ev
            .event
            .event_id
            .as_ref()
            .filter(|id| self.referenced.contains(*id))
        {
            self.devices
                .entry(id.clone())
                .or_insert_with(|| ev.event.device_id.clone());
        }
        if let Some(id) = &ev.event.event_id {
            let suspect = self.suspects.contains(&self.fingerprint(id));
            if suspect || self.referenced.contains(id) {
                if let Some(first) = self.seen.insert(id.clone(), ev.line) {
                    if suspect {
                        bail!(
                            "{source}: line {}: event_id {id:?} appears twice in the file (first on line {first})",
                            ev.line
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Appends checked events in order.
async fn append_events(
    ledger: &Ledger,
    events: impl Iterator<Item = anyhow::Result<event::ImportEvent>>,
    author: &str,
    source: &str,
) -> anyhow::Result<ImportSummary> {
    let mut summary = ImportSummary::default();
    let mut pending: VecDeque<(usize, _)> = VecDeque::new();
    for ev in events {
        let mut ev = ev?;
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
        // Entries of version 2, covered by the checkpoint recorded below.
        let cmd = ledger
            .prepare(ev.event, author)
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
    if summary.appended > 0 {
        match ledger.checkpoint().await? {
            ApplyOutcome::Checkpointed { .. } => {}
            other => bail!("{source}: recording a checkpoint of the import: {other:?}"),
        }
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

/// `ledger stats`: the parts of the ledger in `data_dir` (a gateway's, with `sled/`, or one
/// `medledger import` wrote, with `ledger/`), as a table.
pub fn stats(data_dir: &Path) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let (db_dir, what) = if data_dir.join(ledger_node::raft::DB_DIR).is_dir() {
        (
            data_dir.join(ledger_node::raft::DB_DIR),
            "a gateway's data directory",
        )
    } else if data_dir.join("ledger").is_dir() {
        (data_dir.join("ledger"), "a local ledger (medledger import)")
    } else {
        bail!(
            "{} holds no ledger: neither {}/ (a gateway's) nor ledger/ (medledger import's)",
            data_dir.display(),
            ledger_node::raft::DB_DIR
        );
    };
    let store = ledger_node::store::Store::open_with_cache(&db_dir, 16 * 1024 * 1024)
        .with_context(|| {
            format!(
                "cannot open the ledger in {} (is a gateway running on this data directory?)",
                db_dir.display()
            )
        })?;
    let s = store.stats()?;
    drop(store);
    let files = ledger_node::store::file_sizes(data_dir)?;
    let n = s.entries.max(1) as f64;
    let mut out = format!(
        "{} ({what}): {} entries\n  {:<28} {:>10} {:>15} {:>10}\n",
        data_dir.display(),
        s.entries,
        "part",
        "count",
        "bytes",
        "per entry"
    );
    let mut row = |name: &str, count: Option<u64>, bytes: u64| {
        let count = count.map_or(String::new(), |c| c.to_string());
        let _ = writeln!(
            out,
            "  {name:<28} {count:>10} {bytes:>15} {:>10.1}",
            bytes as f64 / n
        );
    };
    row("entries (their bytes)", Some(s.entries), s.entry_bytes);
    row("openings (values, salts)", None, s.opening_bytes);
    row("Merkle subtree hashes", None, s.merkle_bytes);
    row("entry keys and lengths", None, s.record_overhead_bytes);
    for (name, p) in [
        ("device index", s.device_index),
        ("event-id index", s.event_id_index),
        ("node keys, metadata", s.metadata),
        ("other ledger keys", s.other),
    ] {
        row(name, Some(p.count), p.bytes);
    }
    for (name, p) in &s.trees {
        row(&format!("tree {name}"), Some(p.count), p.bytes);
    }
    row("all of the above", None, s.logical_total());
    row("sled's files (its own count)", None, s.sled_on_disk);
    for (name, bytes) in &files {
        row(&format!("file {name}"), None, *bytes);
    }
    let disk: u64 = files.iter().map(|(_, b)| b).sum();
    row("on disk in all", None, disk);
    let budget = s.payload() as f64 * 1.3 + 64.0 * s.entries as f64;
    let _ = writeln!(
        out,
        "on disk per entry: {:.0} bytes for {:.0} of entry and openings ({:.2}x); budget 1.3x + 64 = {:.0} bytes: {}",
        disk as f64 / n,
        s.payload() as f64 / n,
        disk as f64 / s.payload().max(1) as f64,
        budget / n,
        if (disk as f64) <= budget { "within" } else { "over" }
    );
    Ok(out)
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

/// A stopped gateway's replicated ledger (`DATA_DIR/sled`), read offline by `ledger export` and
/// `ledger receipt --data-dir`.
struct GatewayLedger {
    store: ledger_node::Store,
    data_dir: PathBuf,
}

impl GatewayLedger {
    /// `None` when `data_dir` holds no gateway's ledger (then the CLI's own, `ledger/`, is used).
    fn open(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let db = data_dir.join(ledger_node::raft::DB_DIR);
        if !db.is_dir() {
            return Ok(None);
        }
        let store =
            ledger_node::Store::open_with_cache(&db, ledger_node::store::DEFAULT_CACHE_BYTES)
                .with_context(|| {
                    format!(
                        "cannot open the ledger in {} (is the gateway running? stop it, or give \
                         --config to ask it)",
                        db.display()
                    )
                })?;
        Ok(Some(Self {
            store,
            data_dir: data_dir.to_owned(),
        }))
    }

    /// The head to cut at when it holds the first `min_size` entries: the latest co-signed
    /// checkpoint, else the latest checkpoint, as the gateway's API does (docs/ledger-format.md
    /// §9.6); else a head over everything, signed with this gateway's own key (`node.key`, under
    /// the node id the ledger registered it for).
    fn head(&self, min_size: u64) -> anyhow::Result<ledger_node::SignedTreeHead> {
        if let Some(c) = export::recorded_cut(&self.store, min_size)? {
            return Ok(c);
        }
        let path = self.data_dir.join("node.key");
        if !path.is_file() {
            bail!(
                "no checkpoint of the ledger in {} holds entry {}, and there is no {} to sign a \
                 head with",
                self.data_dir.display(),
                min_size.saturating_sub(1),
                path.display()
            );
        }
        let key = ledger_node::keys::load_or_create(&path)?;
        let public = key.verifying_key().to_bytes();
        let node_id = self
            .store
            .node_keys()?
            .into_iter()
            .find(|(_, k)| *k == public)
            .map(|(id, _)| id)
            .with_context(|| {
                format!(
                    "the key in {} is not registered in the ledger of {}",
                    path.display(),
                    self.data_dir.display()
                )
            })?;
        let size = self.store.size();
        Ok(ledger_node::SignedTreeHead::sign(
            size,
            self.store.root(size)?,
            ledger_node::ledger::now_ms(),
            node_id,
            &key,
        ))
    }
}

/// `ledger export --data-dir DIR`: a stopped gateway's ledger cut like the API's exports (at the
/// latest co-signed checkpoint, with its voter set and co-signatures), or the CLI's own ledger.
/// Returns the number of entries.
pub async fn export_data_dir(
    data_dir: &Path,
    out: &Path,
    disclose: &export::Disclosure,
) -> anyhow::Result<u64> {
    let (dir, out2, disclose2) = (data_dir.to_owned(), out.to_owned(), disclose.clone());
    let done = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<u64>> {
        let Some(g) = GatewayLedger::open(&dir)? else {
            return Ok(None);
        };
        let head = g.head(0)?;
        write_atomic(&out2, |w| {
            Ok(export::write_export(&g.store, &head, &disclose2, w)?)
        })?;
        Ok(Some(head.size))
    })
    .await??;
    match done {
        Some(n) => Ok(n),
        None => export(&open_ledger(data_dir, 1).await?, out, disclose).await,
    }
}

/// `ledger receipt --data-dir DIR [--since-size N]`: like [`export_data_dir`], cut at the latest
/// co-signed checkpoint when it holds the entry (and the tree of N entries).
pub async fn receipt_data_dir(
    data_dir: &Path,
    seq: u64,
    out: &Path,
    disclose: &export::Disclosure,
    since_size: Option<u64>,
) -> anyhow::Result<()> {
    let (dir, out2, disclose2) = (data_dir.to_owned(), out.to_owned(), disclose.clone());
    let done = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
        let Some(g) = GatewayLedger::open(&dir)? else {
            return Ok(false);
        };
        let head = g.head(seq.saturating_add(1).max(since_size.unwrap_or(0)))?;
        let mut r = export::make_receipt_since(&g.store, seq, &head, &disclose2, since_size)?;
        r.endorsements = crate::service::revocation::endorsements_of(&g.store, &r.node_keys)?;
        write_receipt(&out2, &r)?;
        Ok(true)
    })
    .await??;
    if done {
        return Ok(());
    }
    receipt_since(
        &open_ledger(data_dir, 1).await?,
        seq,
        out,
        disclose,
        since_size,
    )
    .await
}

fn write_receipt(out: &Path, r: &export::Receipt<'_>) -> anyhow::Result<()> {
    write_atomic(out, |w| {
        serde_json::to_writer_pretty(&mut *w, r)?;
        w.write_all(b"\n")?;
        Ok(())
    })
}

/// `ledger export --config FILE [--role R]`: the export a running gateway serves
/// (`GET /v1/export`, cut at its latest checkpoint), fetched with the gateway's own certificate
/// and narrowed to `role`'s classes; written atomically. Returns the number of entries.
pub async fn export_via_api(
    config: &crate::config::Config,
    role: Option<certs::StaffRole>,
    out: &Path,
) -> anyhow::Result<u64> {
    let http = super::client::client(config)?;
    let mut url = format!("https://{}/v1/export", super::client::local_addr(config));
    if let Some(r) = role {
        url += &format!("?role={r}");
    }
    let resp = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("{url}: reading the export"))?;
    if !status.is_success() {
        let detail: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        bail!(
            "{url}: {status}: {}",
            detail["detail"].as_str().unwrap_or("no detail")
        );
    }
    let header: export::ExportHeader = body
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| serde_json::from_slice(l).ok())
        .with_context(|| format!("{url}: the answer is not an export"))?;
    write_atomic(out, |w| {
        w.write_all(&body)
            .with_context(|| format!("cannot write {}", out.display()))
    })?;
    Ok(header.size)
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
    let mut r = export::make_receipt_since(ledger.store(), seq, &head, disclose, since_size)?;
    r.endorsements = crate::service::revocation::endorsements_of(ledger.store(), &r.node_keys)?;
    write_receipt(out, &r)
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
    verify_with(file, trusted, None, 0, 0, progress_bar)
}

/// `verify --known-head FILE --threads N --quorum Q`.
pub fn verify_with(
    file: &PathBuf,
    trusted: Vec<NodeKey>,
    known_head: Option<&Path>,
    threads: usize,
    quorum: usize,
    progress_bar: bool,
) -> anyhow::Result<Result<export::VerifyReport, export::VerifyFailure>> {
    let known_head = match known_head {
        None => None,
        Some(p) => {
            let mut f =
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            match export::read_known(&mut f) {
                Ok(k) => Some(k),
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
    let (known_head, known_voters, known_cosignatures) = match known_head {
        Some(k) => (Some(k.head), k.voters, k.cosignatures),
        None => (None, Vec::new(), Vec::new()),
    };
    let opts = VerifyOptions {
        trusted_keys: trusted,
        known_head,
        threads,
        quorum,
        known_voters,
        known_cosignatures,
    };
    let result = export::verify(&mut input, &opts, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    Ok(result)
}

/// What the signatures were checked against, in words.
/// How a verdict says that no trust anchor was used ([`site_root_words`] replaces it when the
/// keys were checked against the site root).
pub const NO_ANCHOR_WORDS: &str = "against the keys the file carries, not against a trust anchor";

fn trust_words(report: &export::VerifyReport) -> &'static str {
    match report.trust {
        export::Trust::TrustedKeys => "against the trusted keys given",
        _ => NO_ANCHOR_WORDS,
    }
}

/// A verdict's trust words once `verify --site-root` found every key endorsed.
pub fn site_root_words(root: &Path, nodes: &[u64]) -> String {
    let nodes: Vec<String> = nodes.iter().map(u64::to_string).collect();
    format!(
        "against the site root {} (the keys of node{} {} are endorsed by it)",
        root.display(),
        if nodes.len() == 1 { "" } else { "s" },
        nodes.join(", ")
    )
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
    let unsigned = report.entries - report.signed_entries.min(report.entries);
    if unsigned > 0 {
        s += &format!(
            "{} of version 1 (each with its own signature, checked), {unsigned} of version 2 \
             (no signature of their own: authenticated by the tree head)\n",
            report.signed_entries
        );
    }
    if !report.voters.is_empty() {
        s += &format!(
            "tree head {}\n",
            ledger_node::sth::describe_signers(&report.voters, &report.head_signers)
        );
    } else if report.head_signers.len() > 1 {
        let nodes: Vec<String> = report.head_signers.iter().map(u64::to_string).collect();
        s += &format!(
            "tree head signed by {} gateways: nodes {}\n",
            nodes.len(),
            nodes.join(", ")
        );
    }
    s += &format!(
        "components: {} disclosed and matching their commitments, {} withheld (commitment only), {} erased\n",
        report.disclosed_components, report.withheld_components, report.erased_components
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
        let mut opened = Vec::with_capacity(openings.len());
        for (c, o) in e.body.components.iter().zip(openings) {
            opened.push(o.as_ref().and_then(|o| o.open()).cloned());
            match o {
                Some(export::ExportOpening::Open(o)) => {
                    s += &format!("  {} [{}] = {}\n", c.name, c.class.as_str(), o.value)
                }
                Some(export::ExportOpening::Erased(m)) => {
                    s += &format!(
                        "  {} [{}] erased by entry {}\n",
                        c.name,
                        c.class.as_str(),
                        m.erased_by
                    )
                }
                None => s += &format!("  {} [{}] withheld\n", c.name, c.class.as_str()),
            }
        }
        // 21 CFR Part 11 §11.50: who signed, in which role, meaning what, when.
        if let Some(m) = crate::records::Manifestation::of_entry(e, &opened) {
            s += &format!(
                "signed by {}; identity {}\n",
                m.describe(e.body.recorded_at_ms),
                e.body.author
            );
        }
    }
    s
}
