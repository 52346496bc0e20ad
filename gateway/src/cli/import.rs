//! `medledger import` into the running cluster (`--config FILE` on a gateway's machine, or
//! `--gateway HOST:PORT` with an administrator's certificate): the file is read as a stream and
//! sent in batches to `POST /v1/import` (docs/import-format.md), which records each event once by
//! its event id and replicates it to every gateway. A line that does not parse, or an event the
//! gateway refuses, is reported with its line number and the rest goes on; a run over the same
//! file again records only what is not there yet, so an import that stopped half-way is resumed
//! by running it again. Also the refusal of an offline import into a gateway's data directory,
//! whose ledger no gateway would serve.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::client;
use crate::event::{EventLines, EventRequest, ImportEvent};
use crate::service::import::{ImportAnswer, ImportBatch, ImportOutcome};

/// JSON bytes per batch the CLI sends (a single larger event goes alone).
const BATCH_BYTES: usize = 2 * 1024 * 1024;
/// How often a progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Refused lines named in the summary (each is reported as it happens anyway).
const SUMMARY_LINES: usize = 20;

/// Where a remote import goes: an HTTPS client and the gateway's address.
pub struct Target {
    pub http: reqwest::Client,
    pub addr: String,
}

impl Target {
    /// Through the running gateway of `config`, with its own certificate.
    pub fn from_config(config: &Path) -> anyhow::Result<Self> {
        let c = crate::config::Config::load(config)?;
        Ok(Self {
            http: client::client(&c)?,
            addr: client::local_addr(&c),
        })
    }

    /// Through the gateway at `gateway` (`HOST:PORT`, `https://` optional) with the staff
    /// certificate `cert`/`key` (an administrator's) and the site root `ca`.
    pub fn from_certificate(
        gateway: &str,
        cert: &Path,
        key: &Path,
        ca: &Path,
    ) -> anyhow::Result<Self> {
        let addr = gateway
            .trim()
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned();
        if addr.is_empty() || addr.contains('/') {
            anyhow::bail!("--gateway {gateway:?}: expected HOST:PORT, for example gw1:8443");
        }
        let roots = certs::pem::load_certs(ca).with_context(|| format!("--ca {}", ca.display()))?;
        let staff = certs::CertifiedKey::from_files(cert, key)
            .with_context(|| format!("--cert {} / --key {}", cert.display(), key.display()))?;
        let cfg =
            certs::client_config(&roots, &staff, &crate::service::tls::base_revocation(), &[])?;
        let http =
            crate::service::raft_net::http_client((*cfg).clone(), None, Duration::from_secs(60))?;
        Ok(Self { http, addr })
    }
}

/// What a remote import did.
#[derive(Debug, Default)]
pub struct RemoteSummary {
    pub recorded: u64,
    pub already_there: u64,
    pub refused: u64,
    /// The first refused lines (at most [`SUMMARY_LINES`]).
    pub refused_lines: Vec<usize>,
    /// Entries in the gateway's ledger at the end.
    pub ledger_size: u64,
    /// Which staff roles read each class of what the file holds.
    pub readers: Vec<crate::records::ClassReaders>,
}

impl RemoteSummary {
    fn refuse(&mut self, source: &str, line: usize, reason: &str) {
        eprintln!("{source}: line {line}: refused: {reason}");
        self.refused += 1;
        if self.refused_lines.len() < SUMMARY_LINES {
            self.refused_lines.push(line);
        }
    }

    /// The summary line.
    pub fn describe(&self, source: &str, addr: &str) -> String {
        let mut s = format!(
            "imported {source} through {addr}: {} recorded, {} already there, {} refused",
            self.recorded, self.already_there, self.refused
        );
        if !self.refused_lines.is_empty() {
            let lines: Vec<String> = self.refused_lines.iter().map(usize::to_string).collect();
            let more = if self.refused > self.refused_lines.len() as u64 {
                ", ..."
            } else {
                ""
            };
            s += &format!(" (line{} {}{more})", plural(lines.len()), lines.join(", "));
        }
        s + &format!("; the ledger now has {} entries", self.ledger_size)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A batch being filled: the events as the API takes them and their line numbers.
#[derive(Default)]
struct Pending {
    events: Vec<EventRequest>,
    lines: Vec<usize>,
    bytes: usize,
}

/// Streams `file` to the gateway in batches; memory holds one batch whatever the file's size.
/// `batch` events at most per request.
pub async fn import_via_api(
    target: &Target,
    file: &Path,
    batch: usize,
) -> anyhow::Result<RemoteSummary> {
    let source = file.display().to_string();
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {source}"))?;
    let mut lines = EventLines::new(BufReader::with_capacity(1 << 16, f));
    let mut summary = RemoteSummary::default();
    let mut names = super::ledger::ClassNames::default();
    let mut pending = Pending::default();
    let mut last_progress = Instant::now();
    loop {
        let ev = match lines.next_event() {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                summary.refuse(&source, e.line, &e.reason);
                continue;
            }
        };
        names.add(&ev.event.components);
        let (req, size) = match request_of(&ev) {
            Ok(r) => r,
            Err(reason) => {
                summary.refuse(&source, ev.line, &reason);
                continue;
            }
        };
        if !pending.events.is_empty()
            && (pending.events.len() >= batch || pending.bytes + size > BATCH_BYTES)
        {
            send(target, &mut pending, &mut summary, &source).await?;
        }
        pending.events.push(req);
        pending.lines.push(ev.line);
        pending.bytes += size;
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            eprintln!(
                "{source}: line {}: {} recorded, {} already there, {} refused",
                ev.line, summary.recorded, summary.already_there, summary.refused
            );
        }
    }
    send(target, &mut pending, &mut summary, &source).await?;
    if summary.ledger_size == 0 {
        // Nothing was sent (an empty file, or every line refused here): ask for the size.
        let status = client::fetch_status(&target.http, &target.addr).await?;
        summary.ledger_size = status.ledger_size;
    }
    summary.readers = names.readers();
    Ok(summary)
}

/// The API's request for a parsed line (its event id already derived), and its JSON size.
fn request_of(ev: &ImportEvent) -> Result<(EventRequest, usize), String> {
    let mut req = EventRequest::from_input(&ev.event)?;
    req.corrects_event_id = ev.corrects_event_id.clone();
    let size = serde_json::to_vec(&req).map_err(|e| e.to_string())?.len();
    Ok((req, size))
}

/// Sends the pending batch (again while no leader can take it) and counts its outcomes.
async fn send(
    target: &Target,
    pending: &mut Pending,
    summary: &mut RemoteSummary,
    source: &str,
) -> anyhow::Result<()> {
    if pending.events.is_empty() {
        return Ok(());
    }
    let batch = std::mem::take(pending);
    let first = batch.lines.first().copied().unwrap_or(0);
    let body = serde_json::to_value(ImportBatch {
        events: batch.events,
    })?;
    let answer = client::call_waiting(
        &target.http,
        &target.addr,
        "/v1/import",
        body,
        client::ELECTION_WAIT,
    )
    .await
    .with_context(|| {
        format!(
            "{source}: the batch from line {first} was not imported (lines before it were; run \
             the same command again to go on: what is recorded is not recorded twice)"
        )
    })?;
    let answer: ImportAnswer = serde_json::from_value(answer)
        .with_context(|| format!("{}: the answer to /v1/import", target.addr))?;
    if answer.results.len() != batch.lines.len() {
        anyhow::bail!(
            "{}: {} outcomes for a batch of {} events",
            target.addr,
            answer.results.len(),
            batch.lines.len()
        );
    }
    for (line, outcome) in batch.lines.into_iter().zip(answer.results) {
        match outcome {
            ImportOutcome::Recorded { .. } => summary.recorded += 1,
            ImportOutcome::AlreadyThere { .. } => summary.already_there += 1,
            ImportOutcome::Refused { reason } => summary.refuse(source, line, &reason),
        }
    }
    summary.ledger_size = answer.ledger_size;
    Ok(())
}

/// Why `data_dir` must not receive an offline import: it is a gateway's data directory, whose
/// ledger is `sled/` (replicated by Raft), so a stand-alone ledger written beside it would never
/// be served or replicated. `None` for any other directory.
pub fn gateway_dir_refusal(data_dir: &Path) -> Option<String> {
    let markers = [
        (
            PathBuf::from(ledger_node::raft::DB_DIR),
            "the gateway's ledger",
        ),
        (
            PathBuf::from(ledger_node::raft::SNAPSHOT_FILE),
            "a gateway's Raft snapshot",
        ),
        (PathBuf::from("gateway.toml"), "a gateway's configuration"),
        (
            Path::new("pki").join("gateway.crt"),
            "a gateway's certificate",
        ),
    ];
    let found = markers
        .iter()
        .find(|(m, _)| data_dir.join(m).exists())
        .map(|(m, what)| format!("{} exists: {what}", data_dir.join(m).display()))
        .or_else(|| {
            // The data directory of this machine's gateway, as its configuration names it.
            let config = Path::new(DEFAULT_CONFIG);
            let c = crate::config::Config::load(config).ok()?;
            let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            };
            same(&c.node.data_dir, data_dir).then(|| {
                format!(
                    "{} names it as the gateway's data directory",
                    config.display()
                )
            })
        })?;
    Some(format!(
        "{} is a gateway's data directory ({found}); a ledger imported there would never be \
         served or replicated (a gateway keeps its ledger in {}/). Import through the running \
         gateway instead, which records every event once on every gateway: `medledger import \
         --config {DEFAULT_CONFIG} FILE` on the gateway's machine, or `medledger import --gateway \
         HOST:PORT --cert admin.crt --key admin.key --ca root.crt FILE` with an administrator's \
         certificate",
        data_dir.display(),
        ledger_node::raft::DB_DIR
    ))
}

/// Where a gateway's configuration is by default.
const DEFAULT_CONFIG: &str = "/etc/medledger/gateway.toml";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateways_data_directory_is_refused_naming_the_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(gateway_dir_refusal(dir.path()), None);
        for marker in ["sled", "gateway.toml", "raft-snapshot.bin"] {
            let d = tempfile::tempdir().expect("tempdir");
            std::fs::write(d.path().join(marker), "").expect("write");
            let why = gateway_dir_refusal(d.path()).expect(marker);
            assert!(
                why.contains(marker)
                    && why.contains("medledger import --config")
                    && why.contains("--gateway HOST:PORT"),
                "{why}"
            );
        }
    }

    #[test]
    fn summary_names_the_refused_lines() {
        let mut s = RemoteSummary {
            recorded: 3,
            already_there: 2,
            ledger_size: 9,
            ..Default::default()
        };
        assert_eq!(
            s.describe("h.jsonl", "gw1:8443"),
            "imported h.jsonl through gw1:8443: 3 recorded, 2 already there, 0 refused; the \
             ledger now has 9 entries"
        );
        for line in 1..=25 {
            s.refuse("h.jsonl", line, "bad");
        }
        let d = s.describe("h.jsonl", "gw1:8443");
        assert!(
            d.contains("25 refused (lines 1, 2,") && d.contains("20, ...)"),
            "{d}"
        );
    }
}
