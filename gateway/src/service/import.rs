//! Importing an existing maintenance history into the running cluster (`POST /v1/import`,
//! `medledger import --config`/`--gateway`): a batch of events from an import file, each
//! recorded once by its event id, in the batch's order, replicated like any entry.
//!
//! The client reads the file and sends it in batches; each batch is answered only once its
//! entries are applied on this gateway, so the next batch finds them (a correction by
//! `corrects_event_id` of an event of an earlier batch, an event id seen before). Every event
//! carries an event id (the client derives one from the line when the file has none), so a
//! batch sent again after a lost answer, or a whole file imported again, records nothing twice:
//! an id this gateway already holds is answered from its ledger without a Raft round.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use certs::Identity;
use ledger_node::{ApplyOutcome, Command};
use serde::{Deserialize, Serialize};

use crate::event::EventRequest;
use crate::service::node::{Node, WriteError};
use crate::service::records::{author_of, refuse_on_learner, RecordError};

/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Largest body of a batch: a batch holds at least one event of the largest size
/// ([`crate::event::MAX_EVENT_BYTES`]); the CLI sends about 2 MiB at a time.
pub const MAX_BATCH_BYTES: usize = 8 * crate::event::MAX_EVENT_BYTES;
/// Commands per Raft entry: the proposer's default group (`[ledger] max_batch`), so one entry
/// stays a few hundred KiB and a batch of 500 takes two Raft rounds.
const PER_RAFT_ENTRY: usize = 256;
/// How long a batch waits for this gateway to apply what the leader applied (a follower is
/// normally one replication round behind).
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// A batch of events of an import file.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBatch {
    /// The events in file order. Each needs an `event_id`; `corrects_event_id` may name an
    /// event of this batch, of an earlier one, or already in the ledger.
    pub events: Vec<EventRequest>,
}

/// What became of one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ImportOutcome {
    /// Appended as entry `seq`.
    Recorded { seq: u64 },
    /// An entry with its event id was already in the ledger (entry `seq`): nothing was added.
    AlreadyThere { seq: u64 },
    /// Not recorded, and why (the rest of the batch goes on).
    Refused { reason: String },
}

/// The answer to a batch: one outcome per event, in the batch's order.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportAnswer {
    pub results: Vec<ImportOutcome>,
    /// Entries in this gateway's ledger once the batch was applied.
    pub ledger_size: u64,
}

/// An event checked on its own, waiting to be proposed.
struct Ready {
    index: usize,
    id: String,
    cmd: Command,
}

/// Records a batch as `caller` (an administrator or a gateway: the route checks that). Events
/// are appended in the batch's order; one that is refused (bad fields, a correction of another
/// device, refused by the ledger) is answered so and the others go on. A failure of the write
/// itself (no leader, disk full) fails the whole batch: the client sends it again, and what was
/// recorded before the failure is then answered as already there.
pub async fn import_batch(
    node: &Node,
    caller: &Identity,
    batch: ImportBatch,
) -> Result<ImportAnswer, RecordError> {
    refuse_on_learner(node)?;
    if batch.events.len() > MAX_BATCH_EVENTS {
        return Err(RecordError::Invalid {
            field: Some("events"),
            reason: format!(
                "{} events in one batch, more than {MAX_BATCH_EVENTS}",
                batch.events.len()
            ),
        });
    }
    let author = author_of(caller);
    let mut results: Vec<Option<ImportOutcome>> = vec![None; batch.events.len()];
    let mut ready: Vec<Ready> = Vec::new();
    for (index, req) in batch.events.into_iter().enumerate() {
        let refused = |reason: String| Some(ImportOutcome::Refused { reason });
        let (event, corrects_event_id) = match check(req) {
            Ok(e) => e,
            Err(reason) => {
                results[index] = refused(reason);
                continue;
            }
        };
        let id = event.event_id.clone().unwrap_or_default();
        // An event id or a corrected event among those not yet proposed: propose them first,
        // so that the ledger answers for them.
        let waiting: HashSet<&str> = ready.iter().map(|r| r.id.as_str()).collect();
        if waiting.contains(id.as_str())
            || corrects_event_id
                .as_deref()
                .is_some_and(|t| waiting.contains(t))
        {
            propose(node, &mut ready, &mut results).await?;
        }
        let store = &node.store;
        if let Some(seq) = store.find_event_id(&id).map_err(internal)? {
            results[index] = Some(ImportOutcome::AlreadyThere { seq });
            continue;
        }
        let mut event = event;
        if let Some(target) = corrects_event_id {
            match store.find_event_id(&target).map_err(internal)? {
                Some(seq) => event.corrects = Some(seq),
                None => {
                    results[index] = refused(format!(
                        "corrects_event_id {target:?} is not in the ledger or earlier in the file"
                    ));
                    continue;
                }
            }
        }
        if let Some(c) = event.corrects {
            if let Err(reason) = same_device(node, c, &event.device_id) {
                results[index] = refused(reason);
                continue;
            }
        }
        let cmd = node.prepare(event, &author, ledger_node::ledger::now_ms());
        match cmd {
            Ok(cmd) => ready.push(Ready {
                index,
                id,
                cmd: Command::Append(cmd),
            }),
            Err(e) => results[index] = refused(e.to_string()),
        }
        if ready.len() >= PER_RAFT_ENTRY {
            propose(node, &mut ready, &mut results).await?;
        }
    }
    propose(node, &mut ready, &mut results).await?;
    Ok(ImportAnswer {
        results: results
            .into_iter()
            .map(|r| {
                r.unwrap_or(ImportOutcome::Refused {
                    reason: "not processed".into(),
                })
            })
            .collect(),
        ledger_size: node.store.size(),
    })
}

/// An import request checked as an import line is: its event id (required here: the CLI
/// derives it from the line), no registry components (their routes check the registry's rules).
fn check(req: EventRequest) -> Result<(ledger_node::entry::EventInput, Option<String>), String> {
    if req.event_id.is_none() {
        return Err(
            "event_id is required in an import batch (medledger import derives one from the \
             line when the file has none)"
                .into(),
        );
    }
    let ev = req.into_event(0, String::new).map_err(|e| e.reason)?;
    crate::service::registry::check_not_registry(&ev.event)?;
    Ok((ev.event, ev.corrects_event_id))
}

/// A correction concerns an existing entry of the same device.
fn same_device(node: &Node, seq: u64, device: &str) -> Result<(), String> {
    let size = node.store.size();
    if seq >= size {
        return Err(format!(
            "corrects entry {seq}, but the ledger has {size} entries"
        ));
    }
    let target = node.store.entry(seq).map_err(|e| e.to_string())?;
    if target.body.device_id != device {
        return Err(format!(
            "corrects entry {seq}, which is about device {:?}, not {device:?}: a correction \
             concerns the same device as the entry it corrects",
            target.body.device_id
        ));
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> RecordError {
    RecordError::Internal(e.to_string())
}

/// Proposes the events waiting, in order, as one Raft entry; records their outcomes and waits
/// until this gateway has applied them (so that the ledger here answers for their ids).
async fn propose(
    node: &Node,
    ready: &mut Vec<Ready>,
    results: &mut [Option<ImportOutcome>],
) -> Result<(), RecordError> {
    if ready.is_empty() {
        return Ok(());
    }
    let batch = std::mem::take(ready);
    let (places, commands): (Vec<usize>, Vec<Command>) =
        batch.into_iter().map(|r| (r.index, r.cmd)).unzip();
    let outcomes = node.submit_in_order(commands).await?;
    let mut last = None;
    let mut by_index: HashMap<usize, ImportOutcome> = HashMap::new();
    for (index, outcome) in places.into_iter().zip(outcomes) {
        let o = match outcome {
            ApplyOutcome::Appended { seq, .. } => {
                last = last.max(Some(seq));
                ImportOutcome::Recorded { seq }
            }
            ApplyOutcome::Duplicate { seq } => {
                last = last.max(Some(seq));
                ImportOutcome::AlreadyThere { seq }
            }
            ApplyOutcome::Refused { reason } => ImportOutcome::Refused {
                reason: format!("refused by the ledger: {reason}"),
            },
            ApplyOutcome::NodeRegistered { .. } | ApplyOutcome::Checkpointed { .. } => {
                return Err(internal("unexpected outcome of an append"))
            }
        };
        by_index.insert(index, o);
    }
    for (index, o) in by_index {
        results[index] = Some(o);
    }
    if let Some(seq) = last {
        if let Err(size) = node.wait_applied(seq, APPLY_WAIT).await {
            return Err(RecordError::Write(WriteError::NoLeader(format!(
                "gateway {} has applied {size} entries and not yet entry {seq} after {} s",
                node.id,
                APPLY_WAIT.as_secs()
            ))));
        }
    }
    Ok(())
}
