//! What the pages show, as plain service functions over the node: the device list, one
//! device's state and history, and the preventive-maintenance completion report. Pages call only
//! these, never the store.
//!
//! Device state (status, risk, location, what is due, calibration state, open alarms) is the
//! device registry's (`service::registry`): [`RegistryDerived`] reads the registry's index,
//! caught up with what this gateway applied, and due dates as of now, so the page says what
//! `GET /v1/devices` and `GET /v1/due` say. A device's history (the timeline) is read from the
//! store through its per-device index, newest [`MAX_HISTORY`] entries. [`source`] is the one
//! place that picks the source.

use std::collections::{BTreeMap, BTreeSet};

use ledger_node::entry::{DisclosureClass, EventKind, SIGNATURE_COMPONENT};

use crate::records::Manifestation;
use crate::service::registry::due::{self, DueState, Work};
use crate::service::registry::index::{DeviceState, Done, Index};

use ledger_node::Store;

use crate::service::node::Node;
use crate::service::registry::Registry;

/// One row of the device list.
#[derive(Debug, Clone, Default)]
pub struct DeviceSummary {
    pub id: String,
    /// in service, out of service, unable to locate, decommissioned, online, offline...
    pub status: Option<String>,
    /// high-risk / life support, or not.
    pub risk: Option<String>,
    pub location: Option<String>,
    /// Whether the registry has a registration entry for it.
    pub registered: bool,
    /// When the next preventive maintenance is due (RFC 3339 date), from the registry.
    pub pm_due: Option<String>,
    /// `scheduled`, `due` (within 30 days) or `overdue`, with `pm_due`.
    pub pm_state: Option<String>,
    /// When the next calibration is due, from the registry.
    pub calibration_due: Option<String>,
    /// `scheduled`, `due` or `overdue`, with `calibration_due`.
    pub calibration_due_state: Option<String>,
    /// FHIR's DeviceMetric calibration state (`calibrated`, `calibration-required`...).
    pub calibration_state: Option<String>,
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
    /// The staff id that signed (the account or the certificate's staff id).
    pub id: String,
    /// The entry a review or approval signs.
    pub of: Option<u64>,
    /// The reason of a correction.
    pub reason: Option<String>,
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
    /// The registry's derived state, as label and text, in the order shown.
    pub facts: Vec<(String, String)>,
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
    /// Completed after their due date.
    pub late: usize,
    pub missed: usize,
    /// Missed, with the device unable to locate and the attempts logged.
    pub documented: usize,
    /// (completed + documented) / scheduled in percent, two decimals.
    pub percent: String,
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
    fn list(&self, node: Ledger<'_>) -> Result<Vec<DeviceSummary>, String>;
    fn detail(
        &self,
        node: Ledger<'_>,
        id: &str,
        classes: &BTreeSet<DisclosureClass>,
    ) -> Result<Option<DeviceDetail>, String>;
    fn pm_report(&self, node: Ledger<'_>, from_ms: i64, to_ms: i64) -> Result<PmReport, String>;
}

/// What the sources read: a gateway's store and its registry (a running node's, or a
/// benchmark's own).
#[derive(Clone, Copy)]
pub struct Ledger<'a> {
    pub store: &'a Store,
    pub registry: &'a Registry,
}

impl<'a> From<&'a Node> for Ledger<'a> {
    fn from(n: &'a Node) -> Self {
        Ledger {
            store: &n.store,
            registry: &n.registry,
        }
    }
}

/// Most devices the list reads (the page pages them further).
pub const MAX_DEVICES: usize = 10_000;
/// Most entries of one device read for its page, newest kept.
pub const MAX_HISTORY: usize = 1_000;

/// The registry's index for state, the store for history.
pub struct RegistryDerived;

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

fn json_text(v: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => v.to_owned(),
    }
}

fn read(node: Ledger<'_>, seq: u64) -> Result<Read, String> {
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
fn history(node: Ledger<'_>, id: &str) -> Result<Vec<Read>, String> {
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
    let signer = e
        .fields
        .iter()
        .find(|(n, c, _)| n == SIGNATURE_COMPONENT && classes.contains(c))
        .and_then(|(_, _, v)| serde_json::from_str::<Manifestation>(v.as_deref()?).ok())
        .map(|m| Signer {
            name: m.name,
            role: m.role,
            meaning: m.meaning.as_str().to_owned(),
            id: m.id,
            of: m.of,
            reason: m.reason,
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

fn risk_text(dev: &DeviceState) -> &'static str {
    if dev.life_support {
        "life support"
    } else if dev.high_risk {
        "high risk"
    } else {
        "not high risk"
    }
}

fn state_text(s: DueState) -> &'static str {
    match s {
        DueState::Scheduled => "scheduled",
        DueState::Due => "due",
        DueState::Overdue => "overdue",
    }
}

fn date(rfc3339: &str) -> String {
    rfc3339.get(..10).unwrap_or(rfc3339).to_owned()
}

/// A device's row from the registry's state as of `now_ms`; `last` is its latest entry's kind
/// and recorded time.
fn summary_of(
    index: &Index,
    dev: &DeviceState,
    now_ms: i64,
    last: (String, String),
) -> DeviceSummary {
    let mut s = DeviceSummary {
        id: dev.device_id.clone(),
        registered: dev.registered,
        status: Some(if dev.registered {
            dev.status.as_str().to_owned()
        } else {
            "not registered".to_owned()
        }),
        risk: dev.registered.then(|| risk_text(dev).to_owned()),
        location: dev.location.clone(),
        open_alarms: dev.open_alarms.len(),
        entries: usize::try_from(dev.entries).unwrap_or(usize::MAX),
        last_kind: last.0,
        last_at: last.1,
        ..Default::default()
    };
    for item in due::device_due(index, dev, now_ms, due::DEFAULT_WINDOW_DAYS) {
        s.overdue |= item.state == DueState::Overdue;
        let state = Some(state_text(item.state).to_owned());
        match item.work {
            Work::PreventiveMaintenance => {
                s.pm_due = Some(date(&item.due_at));
                s.pm_state = state;
            }
            Work::Calibration => {
                s.calibration_due = Some(date(&item.due_at));
                s.calibration_due_state = state;
            }
        }
    }
    if dev.registered {
        s.calibration_state = Some(
            due::calibration_state(index, dev, now_ms)
                .as_str()
                .to_owned(),
        );
    }
    s
}

/// The registry's state of a device as lines for people.
fn facts_of(index: &Index, dev: &DeviceState) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            f.push((k.to_owned(), v));
        }
    };
    put(
        "Registered",
        Some(match (&dev.registered_at, dev.registered_seq) {
            (Some(at), Some(seq)) => format!("{at} (entry #{seq})"),
            _ => "no registration entry in the ledger".to_owned(),
        }),
    );
    put(
        "UDI",
        dev.udi.as_ref().map(|u| match &u.pi {
            Some(pi) => format!("{} ({}; DI {}, PI {pi})", u.carrier, u.issuer, u.di),
            None => format!("{} ({}; DI {})", u.carrier, u.issuer, u.di),
        }),
    );
    put("Asset number", dev.asset_number.clone());
    put(
        "Manufacturer and model",
        match (&dev.manufacturer, &dev.model) {
            (Some(m), Some(n)) => Some(format!("{m} {n}")),
            (m, n) => m.clone().or(n.clone()),
        },
    );
    put("Serial", dev.serial.clone());
    put(
        "Nomenclature",
        dev.nomenclature.as_ref().map(|n| match &n.code {
            Some(c) => format!("{} ({} {c})", n.term, n.system),
            None => format!("{} ({})", n.term, n.system),
        }),
    );
    put("Cost centre", dev.cost_centre.clone());
    put("Category", Some(dev.category.as_str().to_owned()));
    put(
        "Status since",
        dev.status_since
            .as_ref()
            .map(|at| match &dev.status_reason {
                Some(r) => format!("{at} ({r})"),
                None => at.clone(),
            }),
    );
    put(
        "Maintenance strategy",
        Some(match &dev.strategy {
            crate::service::registry::Strategy::Manufacturer => "manufacturer's".to_owned(),
            crate::service::registry::Strategy::Aem { justification } => {
                format!("alternative (AEM): {justification}")
            }
        }),
    );
    put(
        "PM interval",
        index.pm_interval(dev).map(|d| format!("{d} days")),
    );
    put(
        "Calibration interval",
        index.calibration_interval(dev).map(|d| format!("{d} days")),
    );
    let done = |d: Done| {
        format!(
            "{} (entry #{}){}",
            crate::event::format_ms(d.at_ms),
            d.seq,
            if d.passed { "" } else { ", failed" }
        )
    };
    put("Last PM", dev.last_pm().map(done));
    put("Last calibration", dev.last_calibration().map(done));
    put(
        "Attempts to locate",
        (!dev.locate_attempts.is_empty()).then(|| {
            dev.locate_attempts
                .iter()
                .map(|a| {
                    format!(
                        "{}: {} ({})",
                        a.at,
                        a.searched,
                        if a.found { "found" } else { "not found" }
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        }),
    );
    for r in &dev.refused {
        put(
            &format!("Entry #{} changed nothing", r.seq),
            Some(r.reason.clone()),
        );
    }
    f
}

fn last_of(node: Ledger<'_>, dev: &DeviceState) -> Result<(String, String), String> {
    match dev.last_seq {
        Some(seq) => {
            let e = node.store.entry(seq).map_err(|e| e.to_string())?;
            Ok((
                e.body.kind.as_str().to_owned(),
                crate::event::format_ms(e.body.recorded_at_ms),
            ))
        }
        None => Ok((String::new(), String::new())),
    }
}

fn registry_error(e: ledger_node::LedgerError) -> String {
    format!("cannot read the device registry: {e}")
}

impl DeviceSource for RegistryDerived {
    fn list(&self, node: Ledger<'_>) -> Result<Vec<DeviceSummary>, String> {
        let now = ledger_node::ledger::now_ms();
        let r = node.registry.read(node.store).map_err(registry_error)?;
        let mut out = Vec::with_capacity(r.index.devices.len().min(MAX_DEVICES));
        for dev in r.index.devices.values().take(MAX_DEVICES) {
            out.push(summary_of(&r.index, dev, now, last_of(node, dev)?));
        }
        Ok(out)
    }

    fn detail(
        &self,
        node: Ledger<'_>,
        id: &str,
        classes: &BTreeSet<DisclosureClass>,
    ) -> Result<Option<DeviceDetail>, String> {
        let now = ledger_node::ledger::now_ms();
        let (summary, facts, open_alarms) = {
            let r = node.registry.read(node.store).map_err(registry_error)?;
            let Some(dev) = r.index.devices.get(id) else {
                return Ok(None);
            };
            let alarms = dev
                .open_alarms
                .iter()
                .map(|(rule, d)| OpenAlarm {
                    seq: d.seq,
                    rule: rule.clone(),
                    since: crate::event::format_ms(d.at_ms),
                })
                .collect();
            (
                summary_of(&r.index, dev, now, last_of(node, dev)?),
                facts_of(&r.index, dev),
                alarms,
            )
        };
        let entries = history(node, id)?;
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
            facts,
            timeline: originals,
            open_alarms,
        }))
    }

    fn pm_report(&self, node: Ledger<'_>, from_ms: i64, to_ms: i64) -> Result<PmReport, String> {
        let r = node.registry.read(node.store).map_err(registry_error)?;
        let rep = crate::service::registry::report::pm_completion(&r.index, from_ms, to_ms);
        let row = |group: &str, c: &crate::service::registry::report::Completion| ReportRow {
            group: group.to_owned(),
            devices: usize::try_from(c.devices).unwrap_or(usize::MAX),
            scheduled: Some(usize::try_from(c.scheduled).unwrap_or(usize::MAX)),
            completed: usize::try_from(c.completed).unwrap_or(usize::MAX),
            late: usize::try_from(c.late).unwrap_or(usize::MAX),
            missed: usize::try_from(c.missed).unwrap_or(usize::MAX),
            documented: usize::try_from(c.documented).unwrap_or(usize::MAX),
            percent: format!("{:.2}", c.percent),
        };
        Ok(PmReport {
            from: rep.from.clone(),
            to: rep.to.clone(),
            rows: vec![
                row("life support", &rep.life_support),
                row("other equipment (high-risk included)", &rep.other),
            ],
            basis: "the device registry: each registered device's preventive maintenances that \
                    came due in the period (one interval after the last one done, or after \
                    registration), completed when done before the period ended \
                    (GET /v1/reports/pm-completion gives the same figures)",
        })
    }
}

/// The one place that picks where device state comes from.
pub fn source() -> &'static dyn DeviceSource {
    &RegistryDerived
}
