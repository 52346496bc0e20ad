//! The device registry: inventory, maintenance strategy and intervals, status, recalls, and
//! what is due, all derived from ledger entries (docs/registry.md has the entries' vocabulary).
//!
//! A change to the registry is a new ledger entry; nothing here is stored apart from the ledger.
//! [`Registry`] keeps an in-memory [`Index`] that it folds entries into, in ledger order, from
//! the entries every gateway applied through Raft: every gateway builds the same index, and
//! rebuilds it from the ledger at start and whenever its ledger is not the one it indexed (a
//! snapshot installed). Readers (the API, the web page) call [`Registry::read`], which first
//! catches up with what this gateway has applied, so a write acknowledged here is seen by the
//! next read here. What is due ([`due`]), the reports ([`report`]) and FHIR ([`fhir`]) are plain
//! functions of an index and a "now" the caller gives.

pub mod due;
pub mod fhir;
pub mod index;
pub mod report;
pub mod request;

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use ledger_node::entry::{parse_erasure_event_id, EventKind};
use ledger_node::hash::Hash;
use ledger_node::{LedgerError, Store};
use serde::{Deserialize, Serialize};

pub use index::{DeviceState, Index};

/// The component that marks a registry entry and names its action (docs/registry.md).
pub const REGISTRY_COMPONENT: &str = "registry";
/// The component of a registry status change that holds the new status.
pub const STATUS_COMPONENT: &str = "registry_status";
/// Longest maintenance interval, in days (ten years).
pub const MAX_INTERVAL_DAYS: u32 = 3650;

/// Refuses an event carrying the registry's components: registry entries are recorded through
/// the registry's routes, which check the maintenance rules against the device's state.
pub fn check_not_registry(event: &ledger_node::entry::EventInput) -> Result<(), String> {
    match event
        .components
        .iter()
        .find(|c| c.name == REGISTRY_COMPONENT || c.name == STATUS_COMPONENT)
    {
        Some(c) => Err(format!(
            "component {:?} marks a registry entry: record it through /v1/devices, /v1/models \
             or /v1/recalls",
            c.name
        )),
        None => Ok(()),
    }
}

/// Where a device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    InService,
    OutOfService,
    /// Not found for its scheduled maintenance; each attempt to locate it is logged.
    UnableToLocate,
    Decommissioned,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::InService,
        Status::OutOfService,
        Status::UnableToLocate,
        Status::Decommissioned,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InService => "in-service",
            Status::OutOfService => "out-of-service",
            Status::UnableToLocate => "unable-to-locate",
            Status::Decommissioned => "decommissioned",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The kind of equipment, as far as the maintenance rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    General,
    /// Imaging and radiologic equipment: never under an AEM programme.
    Imaging,
    /// Medical lasers: never under an AEM programme.
    Laser,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::General => "general",
            Category::Imaging => "imaging",
            Category::Laser => "laser",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Category::General, Category::Imaging, Category::Laser]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// How a device's maintenance is decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Strategy {
    /// The manufacturer's activities and intervals.
    Manufacturer,
    /// An alternative equipment maintenance programme (ANSI/AAMI EQ56) with its written
    /// justification.
    Aem { justification: String },
}

/// The registry of one gateway: the index and how far into the ledger it has read.
#[derive(Default)]
pub struct Registry {
    state: RwLock<Indexed>,
    /// One catch-up at a time; readers wait for it rather than each reading the same entries.
    catching_up: Mutex<()>,
    /// The last answers of reads that callers repeat (the due list of every device, asked by
    /// every screen and script each minute), by a key that names the index's generation.
    answers: Mutex<std::collections::VecDeque<(String, Arc<[u8]>)>>,
}

/// How many answers [`Registry::answer`] keeps.
const ANSWERS: usize = 16;

/// How many bytes of answers [`Registry::answer`] keeps at most: the due list of 10,000 devices
/// is 3.1 MB, and 16 of them (a `now` of its own each) held about 50 MB of an idle gateway at
/// 1,000,000 entries (docs/benchmarks.md, "Where an idle gateway's memory goes"). An answer
/// larger than this is not kept.
const ANSWER_BYTES: usize = 8 * 1024 * 1024;

#[derive(Default)]
pub struct Indexed {
    pub index: Index,
    /// Entries read so far.
    pub scanned: u64,
    /// The ledger root over them: a different root means another ledger (a snapshot was
    /// installed), and the index is rebuilt.
    root: Hash,
    /// How many times the index was rebuilt from the start (for tests and logs).
    pub rebuilds: u64,
    /// How many times a device was derived again after an erasure of one of its values.
    pub refolds: u64,
}

impl Indexed {
    /// What the index's content depends on: it changes whenever an entry is folded in, the
    /// index is rebuilt or a device is derived again after an erasure.
    pub fn generation(&self) -> String {
        format!("{}.{}.{}", self.scanned, self.rebuilds, self.refolds)
    }
}

impl Registry {
    /// The answer kept under `key` (which must name [`Indexed::generation`] and every parameter
    /// of the answer), or `make`'s, then kept.
    pub fn answer<E>(
        &self,
        key: String,
        make: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<[u8]>, E> {
        let lock = || self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, a)) = lock().iter().find(|(k, _)| *k == key) {
            return Ok(a.clone());
        }
        let a: Arc<[u8]> = make()?.into();
        if a.len() > ANSWER_BYTES {
            return Ok(a);
        }
        let mut answers = lock();
        let mut held: usize = answers.iter().map(|(_, a)| a.len()).sum();
        while answers.len() >= ANSWERS || held + a.len() > ANSWER_BYTES {
            match answers.pop_front() {
                Some((_, old)) => held -= old.len(),
                None => break,
            }
        }
        answers.push_back((key, a.clone()));
        Ok(a)
    }

    /// The index caught up with everything this gateway has applied.
    pub fn read(&self, store: &Store) -> Result<RwLockReadGuard<'_, Indexed>, LedgerError> {
        if !self.is_current(store)? {
            let _one = self.catching_up.lock().unwrap_or_else(|p| p.into_inner());
            if !self.is_current(store)? {
                self.catch_up(store)?;
            }
        }
        Ok(self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn is_current(&self, store: &Store) -> Result<bool, LedgerError> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        let size = store.size();
        if size != s.scanned {
            return Ok(false);
        }
        Ok(size == 0 || store.root(size)? == s.root)
    }

    /// Reads the entries applied since the last catch-up, or every entry when the ledger is not
    /// the one indexed. Readers wait meanwhile; on an error the index is dropped, to be rebuilt
    /// by the next read.
    fn catch_up(&self, store: &Store) -> Result<(), LedgerError> {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        let result = Self::fold(&mut s, store);
        if result.is_err() {
            let rebuilds = s.rebuilds;
            *s = Indexed {
                rebuilds,
                ..Indexed::default()
            };
        }
        result
    }

    fn fold(s: &mut Indexed, store: &Store) -> Result<(), LedgerError> {
        let size = store.size();
        let same = s.scanned == 0 || (s.scanned <= size && store.root(s.scanned)? == s.root);
        if !same {
            tracing::info!(
                indexed = s.scanned,
                size,
                "the ledger is not the one the registry indexed (a snapshot was installed); \
                 rebuilding the registry"
            );
            s.index = Index::default();
            s.scanned = 0;
            s.rebuilds += 1;
        }
        // Entries read in this pass are read with the openings as they are now, erasures
        // included; an erasure of an entry read in an earlier pass is folded in below.
        let mut pass_start = s.scanned;
        while s.scanned < size {
            let seq = s.scanned;
            let entry = store.entry(seq)?;
            let openings = store.openings(seq)?;
            s.index.apply(&entry, &openings);
            s.scanned = seq + 1;
            let erased = match entry.body.kind {
                EventKind::Erasure => entry
                    .body
                    .event_id
                    .as_deref()
                    .and_then(parse_erasure_event_id),
                _ => None,
            };
            let Some((target, _)) = erased else { continue };
            if target >= pass_start {
                continue;
            }
            let id = entry.body.device_id.as_str();
            if id.starts_with(index::MODEL_PREFIX) || id.starts_with(index::RECALL_PREFIX) {
                // Model intervals and recalls are keyed by what their entries say, not by
                // device: read everything again (erasures there are rare).
                tracing::info!(
                    seq,
                    target,
                    "an erasure of a model or recall entry: rebuilding the registry"
                );
                s.index = Index::default();
                s.scanned = 0;
                s.rebuilds += 1;
                pass_start = 0;
                continue;
            }
            Self::refold_device(s, store, id, seq)?;
        }
        s.root = if size == 0 {
            [0; 32]
        } else {
            store.root(size)?
        };
        Ok(())
    }

    /// Derives device `id` again from its entries up to `through`, as their openings are now:
    /// what an erasure of one of its values changes. A device's state depends only on its own
    /// entries, so this is what a gateway that reads the whole ledger after a restart derives.
    fn refold_device(
        s: &mut Indexed,
        store: &Store,
        id: &str,
        through: u64,
    ) -> Result<(), LedgerError> {
        s.index.devices.remove(id);
        let mut after = None;
        loop {
            let seqs = store.device_history(id, after, 1024)?;
            let Some(&last) = seqs.last() else { break };
            for seq in seqs.into_iter().filter(|q| *q <= through) {
                s.index.apply(&store.entry(seq)?, &store.openings(seq)?);
            }
            if last >= through {
                break;
            }
            after = Some(last);
        }
        s.refolds += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
