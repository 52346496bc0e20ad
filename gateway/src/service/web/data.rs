//! What the pages show, as plain service functions over the node: the device list, one
//! device's state and history, and the preventive-maintenance completion report. Pages call only
//! these, never the store.
//!
//! **Where the device registry plugs in.** Until the registry (issue 14: derived device state,
//! due lists, the PM completion report) is merged, [`LedgerDerived`] reads what the ledger
//! holds today: the per-device index and each device's entries, with status, location and risk
//! taken from the latest `status-change` / `device-registered` components when present. Due and
//! overdue are unknown (`None`) until then. Swap the one `impl DeviceSource` (`source()` at
//! the bottom) for one that asks the registry; the pages and templates stay as they are.

use std::collections::{BTreeMap, BTreeSet};

use ledger_node::entry::{DisclosureClass, EventKind};

use crate::service::node::Node;

/// One row of the device list.
#[derive(Debug, Clone, Default)]
pub struct DeviceSummary {
    pub id: String,
    /// in service, out of service, unable to locate, decommissioned, online, offline...
    pub status: Option<String>,
    /// high-risk / life support, or not.
    pub risk: Option<String>,
    pub location: Option<String>,
    /// When the next preventive maintenance is due (RFC 3339 date), from the registry.
    pub pm_due: Option<String>,
    /// When the next calibration is due, from the registry.
    pub calibration_due: Option<String>,
    /// PM or calibration overdue (registry).
    pub overdue: bool,
    pub open_alarms: usize,
    pub entries: usize,
    /// Kind and recorded time of the latest entry.
    pub last_kind: String,
    pub last_at: String,
}

/// One entry as the timeline shows it.
#[derive(Debug, Clone)]
pub struct TimelineEntry {
    pub seq: u64,
    pub kind: String,
    pub occurred_at: Option<String>,
    pub recorded_at: String,
    pub author: String,
    pub node_id: u64,
    /// The entry this one corrects.
    pub corrects: Option<u64>,
    /// Components: name, class and value text (`withheld` / `erased` when not shown).
    pub fields: Vec<(String, String, String)>,
    /// Signer's printed name, role and meaning, when the entry carries a signature.
    pub signer: Option<Signer>,
    /// Corrections of this entry, in ledger order.
    pub corrections: Vec<TimelineEntry>,
}

#[derive(Debug, Clone)]
pub struct Signer {
    pub name: String,
    pub role: String,
    pub meaning: String,
}

/// An open alarm: the latest entry of an alarm rule says `raised`.
#[derive(Debug, Clone)]
pub struct OpenAlarm {
    pub seq: u64,
    pub rule: String,
    pub since: String,
}

/// A device's page.
#[derive(Debug, Clone)]
pub struct DeviceDetail {
    pub summary: DeviceSummary,
    /// Originals in ledger order, each with its corrections beside it.
    pub timeline: Vec<TimelineEntry>,
    pub open_alarms: Vec<OpenAlarm>,
}

/// One line of the PM completion report.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub group: String,
    pub devices: usize,
    /// Scheduled in the period (registry), when known.
    pub scheduled: Option<usize>,
    pub completed: usize,
}

/// The PM completion report for a period.
#[derive(Debug, Clone)]
pub struct PmReport {
    pub from: String,
    pub to: String,
    pub rows: Vec<ReportRow>,
    /// Where the figures come from, said on the page.
    pub basis: &'static str,
}

/// Where device state comes from. The pages use only this.
pub trait DeviceSource {
    fn list(&self, node: &Node) -> Result<Vec<DeviceSummary>, String>;
    fn detail(
        &self,
        node: &Node,
        id: &str,
        classes: &BTreeSet<DisclosureClass>,
    ) -> Result<Option<DeviceDetail>, String>;
    fn pm_report(&self, node: &Node, from_ms: i64, to_ms: i64) -> Result<PmReport, String>;
}

/// Most devices the list reads (the page pages them further).
pub const MAX_DEVICES: usize = 10_000;
/// Most entries of one device read for its page, newest kept.
pub const MAX_HISTORY: usize = 1_000;

/// Today's source: the ledger's per-device index and entries.
pub struct LedgerDerived;

/// A decoded entry with the openings the reader may see.
struct Read {
    seq: u64,
    kind: EventKind,
    occurred_at: Option<String>,
    recorded_at_ms: i64,
    author: String,
    node_id: u64,
    corrects: Option<u64>,
    fields: Vec<(String, DisclosureClass, Option<String>)>,
}

impl Read {
    /// A component's JSON value as plain text (strings without their quotes).
    /// Only device and maintenance components, which every staff role may see, feed the
    /// state shown in lists.
    fn text(&self, name: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|(n, c, _)| {
                n == name && matches!(c, DisclosureClass::Device | DisclosureClass::Maintenance)
            })
            .and_then(|(_, _, v)| v.as_deref())
            .map(json_text)
    }
}

fn json_text(v: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => v.to_owned(),
    }
}

fn read(node: &Node, seq: u64) -> Result<Read, String> {
    let e = node.store.entry(seq).map_err(|e| e.to_string())?;
    let openings = node.store.openings(seq).map_err(|e| e.to_string())?;
    let fields = e
        .body
        .components
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let v = openings.get(i).cloned().flatten().map(|o| o.value);
            (c.name.clone(), c.class, v)
        })
        .collect();
    Ok(Read {
        seq,
        kind: e.body.kind,
        occurred_at: e.body.occurred_at,
        recorded_at_ms: e.body.recorded_at_ms,
        author: e.body.author,
        node_id: e.body.node_id,
        corrects: e.body.corrects,
        fields,
    })
}

/// A device's entries, oldest first, at most the newest [`MAX_HISTORY`].
fn history(node: &Node, id: &str) -> Result<Vec<Read>, String> {
    let mut seqs = Vec::new();
    let mut after = None;
    loop {
        let page = node
            .store
            .device_history(id, after, 10_000)
            .map_err(|e| e.to_string())?;
        let Some(&last) = page.last() else { break };
        let full = page.len() == 10_000;
        seqs.extend(page);
        if seqs.len() > MAX_HISTORY {
            seqs.drain(..seqs.len() - MAX_HISTORY);
        }
        if !full {
            break;
        }
        after = Some(last);
    }
    seqs.into_iter().map(|s| read(node, s)).collect()
}

fn summarize(id: &str, entries: &[Read]) -> (DeviceSummary, Vec<OpenAlarm>) {
    let mut s = DeviceSummary {
        id: id.to_owned(),
        entries: entries.len(),
        ..Default::default()
    };
    // Alarm state per rule: the latest alarm entry of each rule decides.
    let mut alarms: BTreeMap<String, Option<OpenAlarm>> = BTreeMap::new();
    for e in entries {
        match e.kind {
            EventKind::StatusChange => {
                if let Some(v) = e.text("status") {
                    s.status = Some(v);
                }
            }
            EventKind::DeviceRegistered => {
                if let Some(v) = e.text("location") {
                    s.location = Some(v);
                }
                if let Some(v) = e.text("risk") {
                    s.risk = Some(v);
                }
                if s.status.is_none() {
                    s.status = Some("in service".into());
                }
            }
            EventKind::DeviceDecommissioned => s.status = Some("decommissioned".into()),
            EventKind::Alarm => {
                let rule = e.text("rule").unwrap_or_else(|| "alarm".into());
                let raised = e.text("state").is_none_or(|st| st == "raised");
                alarms.insert(
                    rule.clone(),
                    raised.then(|| OpenAlarm {
                        seq: e.seq,
                        rule,
                        since: e
                            .occurred_at
                            .clone()
                            .unwrap_or_else(|| crate::event::format_ms(e.recorded_at_ms)),
                    }),
                );
            }
            _ => {}
        }
    }
    if let Some(last) = entries.last() {
        s.last_kind = last.kind.as_str().to_owned();
        s.last_at = crate::event::format_ms(last.recorded_at_ms);
    }
    let open: Vec<OpenAlarm> = alarms.into_values().flatten().collect();
    s.open_alarms = open.len();
    (s, open)
}

fn timeline_entry(e: &Read, classes: &BTreeSet<DisclosureClass>) -> TimelineEntry {
    let fields = e
        .fields
        .iter()
        .map(|(n, c, v)| {
            let shown = match v {
                Some(v) if classes.contains(c) => json_text(v),
                Some(_) => "withheld".to_owned(),
                None => "erased".to_owned(),
            };
            (n.clone(), c.as_str().to_owned(), shown)
        })
        .collect();
    let visible = |name: &str| {
        e.fields
            .iter()
            .find(|(n, c, _)| n == name && classes.contains(c))
            .and_then(|(_, _, v)| v.as_deref())
            .map(json_text)
    };
    let signer = visible(super::SIGNER_NAME).map(|name| Signer {
        name,
        role: visible(super::SIGNER_ROLE).unwrap_or_default(),
        meaning: visible(super::SIGNATURE_MEANING).unwrap_or_default(),
    });
    TimelineEntry {
        seq: e.seq,
        kind: e.kind.as_str().to_owned(),
        occurred_at: e.occurred_at.clone(),
        recorded_at: crate::event::format_ms(e.recorded_at_ms),
        author: e.author.clone(),
        node_id: e.node_id,
        corrects: e.corrects,
        fields,
        signer,
        corrections: Vec::new(),
    }
}

impl DeviceSource for LedgerDerived {
    fn list(&self, node: &Node) -> Result<Vec<DeviceSummary>, String> {
        let ids = node
            .store
            .device_ids(MAX_DEVICES)
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let entries = history(node, &id)?;
            out.push(summarize(&id, &entries).0);
        }
        Ok(out)
    }

    fn detail(
        &self,
        node: &Node,
        id: &str,
        classes: &BTreeSet<DisclosureClass>,
    ) -> Result<Option<DeviceDetail>, String> {
        let entries = history(node, id)?;
        if entries.is_empty() {
            return Ok(None);
        }
        let (summary, open_alarms) = summarize(id, &entries);
        // Corrections sit beside their original: collect them under the seq they correct (a
        // correction of a correction goes under the original as well).
        let mut root_of: BTreeMap<u64, u64> = BTreeMap::new();
        let mut originals: Vec<TimelineEntry> = Vec::new();
        let mut index: BTreeMap<u64, usize> = BTreeMap::new();
        for e in &entries {
            let t = timeline_entry(e, classes);
            let root = e.corrects.map(|c| *root_of.get(&c).unwrap_or(&c));
            match root.and_then(|r| index.get(&r).copied()) {
                Some(i) => {
                    root_of.insert(e.seq, originals[i].seq);
                    originals[i].corrections.push(t);
                }
                None => {
                    root_of.insert(e.seq, e.seq);
                    index.insert(e.seq, originals.len());
                    originals.push(t);
                }
            }
        }
        Ok(Some(DeviceDetail {
            summary,
            timeline: originals,
            open_alarms,
        }))
    }

    fn pm_report(&self, node: &Node, from_ms: i64, to_ms: i64) -> Result<PmReport, String> {
        let ids = node
            .store
            .device_ids(MAX_DEVICES)
            .map_err(|e| e.to_string())?;
        let mut life = (0usize, 0usize);
        let mut other = (0usize, 0usize);
        for id in ids {
            let entries = history(node, &id)?;
            let (s, _) = summarize(&id, &entries);
            let done = entries
                .iter()
                .filter(|e| {
                    e.kind == EventKind::PreventiveMaintenance
                        && (from_ms..to_ms).contains(&e.recorded_at_ms)
                })
                .count();
            let high = s
                .risk
                .as_deref()
                .is_some_and(|r| r.contains("life") || r.contains("high"));
            let g = if high { &mut life } else { &mut other };
            g.0 += 1;
            g.1 += done;
        }
        Ok(PmReport {
            from: crate::event::format_ms(from_ms),
            to: crate::event::format_ms(to_ms),
            rows: vec![
                ReportRow {
                    group: "life support / high risk".into(),
                    devices: life.0,
                    scheduled: None,
                    completed: life.1,
                },
                ReportRow {
                    group: "other equipment".into(),
                    devices: other.0,
                    scheduled: None,
                    completed: other.1,
                },
            ],
            basis: "preventive-maintenance entries recorded in the period; scheduled counts \
                    come with the device registry",
        })
    }
}

/// The one place that picks where device state comes from: replace with the registry's
/// source when it is merged.
pub fn source() -> &'static dyn DeviceSource {
    &LedgerDerived
}
