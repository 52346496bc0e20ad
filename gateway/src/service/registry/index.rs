//! The registry's state derived from ledger entries: [`Index::apply`] folds one entry into it.
//!
//! Pure and deterministic: the state depends only on the entries, in ledger order (the entry's
//! own times, never a clock), so every gateway that applied the same entries holds the same
//! index. The vocabulary of registry entries (kinds, the `registry` component, field names) is
//! in docs/registry.md.

use std::collections::BTreeMap;

use ledger_node::entry::{DisclosureClass, Entry, EventKind, Opening};
use serde::Serialize;
use serde_json::Value;

use super::{Category, Status, Strategy};

/// Completed preventive maintenances a device needs on record before an AEM programme may take
/// over its maintenance: "new equipment without enough history" is refused (EC.02.04.01).
pub const AEM_MIN_HISTORY: usize = 2;

/// One completed preventive maintenance or calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// The entry that records it.
    pub seq: u64,
    /// When it was done (the entry's `occurred_at`, else its recorded time), Unix ms.
    pub at_ms: i64,
    /// False when its `result` says it failed.
    pub passed: bool,
}

/// A logged attempt to locate a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LocateAttempt {
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// Where staff looked.
    pub searched: String,
    pub found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A registry entry that did not change the state, and why (for example AEM where it is not
/// allowed, recorded through another route or replicated from an older gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Refusal {
    pub seq: u64,
    pub reason: String,
}

/// The device identifier and production identifier of a device's UDI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UdiView {
    /// The UDI as printed (human-readable form).
    pub carrier: String,
    /// GS1, HIBCC or ICCBBA.
    pub issuer: String,
    /// The device identifier (DI).
    pub di: String,
    /// The production identifier (PI), where the UDI has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pi: Option<String>,
}

impl UdiView {
    /// Splits `carrier`; `None` when it is no valid UDI.
    pub fn parse(carrier: &str) -> Option<Self> {
        let p = certs::udi_parts(carrier).ok()?;
        Some(Self {
            carrier: carrier.to_owned(),
            issuer: p.issuer.as_str().to_owned(),
            di: p.di,
            pi: p.pi,
        })
    }
}

/// A nomenclature term: GMDN, ECRI UMDNS, an FDA product code or the hospital's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Nomenclature {
    /// `gmdn`, `umdns`, `fda` or `local`.
    pub system: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub term: String,
}

/// What the registry knows about one device, derived from its entries.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeviceState {
    pub device_id: String,
    /// Whether a registration entry exists (a device may have history before it is registered,
    /// for example imported from an older CMMS).
    pub registered: bool,
    /// The entry that registered it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_seq: Option<u64>,
    /// When it entered the inventory (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<String>,
    #[serde(skip)]
    pub registered_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udi: Option<UdiView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nomenclature: Option<Nomenclature>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_centre: Option<String>,
    pub category: Category,
    pub high_risk: bool,
    pub life_support: bool,
    pub strategy: Strategy,
    /// Maintenance set by law or regulation (no AEM).
    pub maintenance_set_by_law: bool,
    /// This device's own preventive-maintenance interval (overrides its model's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pm_interval_days: Option<u32>,
    /// This device's own calibration interval (overrides its model's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration_interval_days: Option<u32>,
    pub status: Status,
    /// The entry that set the status, and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Every logged attempt to locate the device, oldest first.
    pub locate_attempts: Vec<LocateAttempt>,
    /// Entries of this device in the ledger.
    pub entries: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    /// Registry entries that changed nothing, with the reason.
    pub refused: Vec<Refusal>,
    /// Completed preventive maintenances, in ledger order.
    #[serde(skip)]
    pub pm: Vec<Done>,
    /// Calibrations, in ledger order.
    #[serde(skip)]
    pub calibrations: Vec<Done>,
    /// Open alarms by rule: the latest `alarm` entry of each rule says `raised` (or names no
    /// state). For the web page's badges; not part of the API's device document.
    #[serde(skip)]
    pub open_alarms: BTreeMap<String, Done>,
    /// The latest of `pm` and of `calibrations` (by when done), kept as entries are applied so
    /// that a due list of thousands of devices does not scan every device's completions.
    #[serde(skip)]
    latest: [Option<Done>; 2],
}

impl DeviceState {
    /// A device the registry knows nothing about yet.
    pub fn new(device_id: &str) -> Self {
        Self {
            device_id: device_id.to_owned(),
            registered: false,
            registered_seq: None,
            registered_at: None,
            registered_at_ms: None,
            udi: None,
            asset_number: None,
            manufacturer: None,
            model: None,
            serial: None,
            nomenclature: None,
            location: None,
            cost_centre: None,
            category: Category::General,
            high_risk: false,
            life_support: false,
            strategy: Strategy::Manufacturer,
            maintenance_set_by_law: false,
            pm_interval_days: None,
            calibration_interval_days: None,
            status: Status::InService,
            status_seq: None,
            status_since: None,
            status_reason: None,
            locate_attempts: Vec::new(),
            entries: 0,
            last_seq: None,
            refused: Vec::new(),
            pm: Vec::new(),
            calibrations: Vec::new(),
            open_alarms: BTreeMap::new(),
            latest: [None, None],
        }
    }

    /// Records a completed preventive maintenance (`pm`) or calibration.
    fn push_done(&mut self, pm: bool, d: Done) {
        let (list, latest) = if pm {
            (&mut self.pm, &mut self.latest[0])
        } else {
            (&mut self.calibrations, &mut self.latest[1])
        };
        list.push(d);
        if latest.is_none_or(|l| (d.at_ms, d.seq) > (l.at_ms, l.seq)) {
            *latest = Some(d);
        }
    }

    /// Withdraws the completion recorded by entry `seq` (corrected).
    fn withdraw(&mut self, seq: u64) {
        let latest = |v: &[Done]| v.iter().copied().max_by_key(|d| (d.at_ms, d.seq));
        if self.pm.iter().any(|d| d.seq == seq) {
            self.pm.retain(|d| d.seq != seq);
            self.latest[0] = latest(&self.pm);
        }
        if self.calibrations.iter().any(|d| d.seq == seq) {
            self.calibrations.retain(|d| d.seq != seq);
            self.latest[1] = latest(&self.calibrations);
        }
    }

    /// High-risk in the Joint Commission's sense: all life-support equipment is.
    pub fn is_high_risk(&self) -> bool {
        self.high_risk || self.life_support
    }

    /// The latest completed preventive maintenance (by when it was done).
    pub fn last_pm(&self) -> Option<Done> {
        self.latest[0]
    }

    /// The latest calibration (by when it was done).
    pub fn last_calibration(&self) -> Option<Done> {
        self.latest[1]
    }

    /// Why an AEM programme may not maintain this device, if it may not: the rule, named.
    pub fn aem_refusal(&self) -> Option<String> {
        let rule = "The Joint Commission EC.02.04.01 / CMS S&C 14-07";
        let why = match self.category {
            Category::Imaging => Some("imaging and radiologic equipment".to_owned()),
            Category::Laser => Some("medical lasers".to_owned()),
            Category::General if self.maintenance_set_by_law => {
                Some("equipment whose maintenance is set by law or regulation".to_owned())
            }
            Category::General if self.pm.len() < AEM_MIN_HISTORY => Some(format!(
                "new equipment without enough maintenance history ({} of the {AEM_MIN_HISTORY} \
                 completed preventive maintenances an AEM programme needs are on record)",
                self.pm.len()
            )),
            Category::General => None,
        }?;
        Some(format!(
            "an alternative equipment maintenance (AEM) programme is not allowed for {why} ({rule}): \
             keep the manufacturer's maintenance"
        ))
    }
}

/// Preventive-maintenance and calibration intervals of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ModelIntervals {
    pub manufacturer: String,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pm_interval_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration_interval_days: Option<u32>,
    /// The entry that set them.
    pub seq: u64,
}

/// A recall (or field safety notice) of a product, by UDI-DI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Recall {
    pub recall_id: String,
    pub udi_di: String,
    pub title: String,
    /// `open` or `closed`.
    pub status: String,
    /// When it was first recorded (RFC 3339).
    pub opened_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
    /// The entries that recorded it, oldest first.
    pub seqs: Vec<u64>,
}

/// The derived registry: devices, model intervals and recalls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Index {
    pub devices: BTreeMap<String, DeviceState>,
    /// By (manufacturer, model).
    pub models: BTreeMap<(String, String), ModelIntervals>,
    /// By recall id.
    pub recalls: BTreeMap<String, Recall>,
}

/// Device ids of model records (`model:<manufacturer>/<model>`).
pub const MODEL_PREFIX: &str = "model:";
/// Device ids of recall records (`recall:<recall id>`).
pub const RECALL_PREFIX: &str = "recall:";

/// The visible values of an entry's components by name (erased values and patient data are
/// never read into the registry).
pub struct Fields(BTreeMap<String, Value>);

impl Fields {
    pub fn of(entry: &Entry, openings: &[Option<Opening>]) -> Self {
        let mut map = BTreeMap::new();
        for (i, c) in entry.body.components.iter().enumerate() {
            if c.class == DisclosureClass::Patient {
                continue;
            }
            if let Some(Some(o)) = openings.get(i) {
                if let Ok(v) = serde_json::from_str::<Value>(&o.value) {
                    map.insert(c.name.clone(), v);
                }
            }
        }
        Fields(map)
    }

    /// The components of an event not yet recorded.
    pub fn of_inputs(components: &[ledger_node::entry::ComponentInput]) -> Self {
        Fields(
            components
                .iter()
                .filter(|c| c.class != DisclosureClass::Patient)
                .filter_map(|c| Some((c.name.clone(), serde_json::from_str(&c.value).ok()?)))
                .collect(),
        )
    }

    fn text(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    fn flag(&self, name: &str) -> Option<bool> {
        self.0.get(name)?.as_bool()
    }

    fn days(&self, name: &str) -> Option<Option<u32>> {
        match self.0.get(name)? {
            Value::Null => Some(None),
            v => v
                .as_u64()
                .and_then(|d| u32::try_from(d).ok())
                .filter(|d| (1..=super::MAX_INTERVAL_DAYS).contains(d))
                .map(Some),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// RFC 3339 text to Unix ms.
pub fn parse_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// When an entry's event happened: its `occurred_at`, else when it was recorded.
fn when(entry: &Entry) -> i64 {
    entry
        .body
        .occurred_at
        .as_deref()
        .and_then(parse_ms)
        .unwrap_or(entry.body.recorded_at_ms)
}

fn failed(fields: &Fields) -> bool {
    ["result", "outcome"].iter().any(|n| {
        fields
            .text(n)
            .is_some_and(|r| matches!(r.to_ascii_lowercase().as_str(), "fail" | "failed"))
    })
}

impl Index {
    /// Folds entry `entry` (with its openings) into the index.
    pub fn apply(&mut self, entry: &Entry, openings: &[Option<Opening>]) {
        let kind = entry.body.kind;
        if matches!(
            kind,
            EventKind::CertificateIssued | EventKind::CertificateRevoked
        ) {
            return;
        }
        let id = entry.body.device_id.as_str();
        let fields = Fields::of(entry, openings);
        let action = fields.text(super::REGISTRY_COMPONENT);
        if id.starts_with(MODEL_PREFIX) {
            if kind == EventKind::DeviceRegistered && action.as_deref() == Some("model") {
                self.apply_model(entry, &fields);
            }
            return;
        }
        // Sign-in audit entries of the web page (`service::web::audit`) are about staff.
        if id.starts_with(crate::records::STAFF_PREFIX) {
            return;
        }
        if id.starts_with(RECALL_PREFIX) {
            if action.as_deref() == Some("recall") {
                self.apply_recall(entry, &fields);
            }
            return;
        }
        let seq = entry.seq;
        let at_ms = when(entry);
        let at = crate::event::format_ms(at_ms);
        let dev = self
            .devices
            .entry(id.to_owned())
            .or_insert_with(|| DeviceState::new(id));
        dev.entries += 1;
        dev.last_seq = Some(seq);
        // A correction replaces the completion it corrects, of this device only.
        if let Some(c) = entry.body.corrects {
            dev.withdraw(c);
        }
        let void = fields.flag("void") == Some(true);
        match kind {
            EventKind::PreventiveMaintenance | EventKind::Calibration if !void => dev.push_done(
                kind == EventKind::PreventiveMaintenance,
                Done {
                    seq,
                    at_ms,
                    passed: !failed(&fields),
                },
            ),
            EventKind::DeviceRegistered => {
                if let Err(reason) = apply_record(dev, &fields, seq, at_ms, &at) {
                    dev.refused.push(Refusal { seq, reason });
                }
            }
            EventKind::DeviceDecommissioned => {
                set_status(dev, Status::Decommissioned, &fields, seq, &at);
            }
            EventKind::StatusChange => match action.as_deref() {
                Some("status") => match fields
                    .text(super::STATUS_COMPONENT)
                    .and_then(|s| Status::parse(&s))
                {
                    Some(Status::Decommissioned) | None => dev.refused.push(Refusal {
                        seq,
                        reason: "a registry status must be in-service, out-of-service or \
                                 unable-to-locate (decommissioning is device-decommissioned)"
                            .into(),
                    }),
                    Some(s) if dev.status == Status::Decommissioned => dev.refused.push(Refusal {
                        seq,
                        reason: format!(
                            "the device is decommissioned; it cannot become {}",
                            s.as_str()
                        ),
                    }),
                    Some(s) => set_status(dev, s, &fields, seq, &at),
                },
                Some("locate-attempt") => {
                    let found = fields.flag("found").unwrap_or(false);
                    dev.locate_attempts.push(LocateAttempt {
                        seq,
                        at: at.clone(),
                        searched: fields.text("searched").unwrap_or_default(),
                        found,
                        note: fields.text("note"),
                    });
                    if dev.status == Status::Decommissioned {
                    } else if found {
                        if let Some(l) = fields.text("location") {
                            dev.location = Some(l);
                        }
                        if dev.status == Status::UnableToLocate {
                            set_status(dev, Status::InService, &fields, seq, &at);
                        }
                    } else if dev.status != Status::UnableToLocate {
                        set_status(dev, Status::UnableToLocate, &fields, seq, &at);
                    }
                }
                _ => {}
            },
            EventKind::Alarm => {
                let rule = fields.text("rule").unwrap_or_else(|| "alarm".into());
                if fields.text("state").is_none_or(|st| st == "raised") {
                    let done = Done {
                        seq,
                        at_ms,
                        passed: false,
                    };
                    dev.open_alarms.insert(rule, done);
                } else {
                    dev.open_alarms.remove(&rule);
                }
            }
            _ => {}
        }
    }

    fn apply_model(&mut self, entry: &Entry, fields: &Fields) {
        let (Some(manufacturer), Some(model)) = (fields.text("manufacturer"), fields.text("model"))
        else {
            return;
        };
        let key = (manufacturer.clone(), model.clone());
        let prev = self.models.get(&key);
        let pick = |name: &str, old: Option<u32>| match fields.days(name) {
            Some(v) => v,
            None => old,
        };
        let m = ModelIntervals {
            pm_interval_days: pick("pm_interval_days", prev.and_then(|p| p.pm_interval_days)),
            calibration_interval_days: pick(
                "calibration_interval_days",
                prev.and_then(|p| p.calibration_interval_days),
            ),
            manufacturer,
            model,
            seq: entry.seq,
        };
        self.models.insert(key, m);
    }

    fn apply_recall(&mut self, entry: &Entry, fields: &Fields) {
        let Some(recall_id) = entry.body.device_id.strip_prefix(RECALL_PREFIX) else {
            return;
        };
        let at = crate::event::format_ms(when(entry));
        let status = fields
            .text("status")
            .filter(|s| s == "open" || s == "closed")
            .unwrap_or_else(|| "open".into());
        let r = self
            .recalls
            .entry(recall_id.to_owned())
            .or_insert_with(|| Recall {
                recall_id: recall_id.to_owned(),
                udi_di: String::new(),
                title: String::new(),
                status: "open".into(),
                opened_at: at.clone(),
                closed_at: None,
                seqs: Vec::new(),
            });
        if let Some(di) = fields.text("udi_di") {
            r.udi_di = di;
        }
        if let Some(t) = fields.text("title") {
            r.title = t;
        }
        r.closed_at = (status == "closed").then_some(at);
        r.status = status;
        r.seqs.push(entry.seq);
    }

    /// A model's intervals.
    pub fn model(&self, dev: &DeviceState) -> Option<&ModelIntervals> {
        let key = (dev.manufacturer.clone()?, dev.model.clone()?);
        self.models.get(&key)
    }

    /// The preventive-maintenance interval that applies to `dev`: its own, else its model's.
    pub fn pm_interval(&self, dev: &DeviceState) -> Option<u32> {
        dev.pm_interval_days
            .or_else(|| self.model(dev)?.pm_interval_days)
    }

    /// The calibration interval that applies to `dev`: its own, else its model's.
    pub fn calibration_interval(&self, dev: &DeviceState) -> Option<u32> {
        dev.calibration_interval_days
            .or_else(|| self.model(dev)?.calibration_interval_days)
    }
}

fn set_status(dev: &mut DeviceState, status: Status, fields: &Fields, seq: u64, at: &str) {
    dev.status = status;
    dev.status_seq = Some(seq);
    dev.status_since = Some(at.to_owned());
    dev.status_reason = fields.text("reason");
}

/// Applies the inventory fields of a registration or change entry to `dev`, all or nothing.
pub fn apply_record(
    dev: &mut DeviceState,
    fields: &Fields,
    seq: u64,
    at_ms: i64,
    at: &str,
) -> Result<(), String> {
    let mut next = dev.clone();
    for (name, slot) in [
        ("asset_number", &mut next.asset_number),
        ("manufacturer", &mut next.manufacturer),
        ("model", &mut next.model),
        ("serial", &mut next.serial),
        ("location", &mut next.location),
        ("cost_centre", &mut next.cost_centre),
    ] {
        if let Some(v) = fields.text(name) {
            *slot = Some(v);
        }
    }
    if let Some(carrier) = fields.text("udi") {
        next.udi = Some(
            UdiView::parse(&carrier)
                .ok_or_else(|| format!("udi {carrier:?} is not a valid UDI"))?,
        );
    } else if next.udi.is_none() {
        next.udi = UdiView::parse(&dev.device_id);
    }
    if let Some(v) = fields.0.get("nomenclature") {
        next.nomenclature =
            Some(serde_json::from_value(v.clone()).map_err(|e| format!("nomenclature: {e}"))?);
    } else if let (None, Some(t)) = (&next.nomenclature, fields.text("type")) {
        // Older registrations (the import example) name the device type only.
        next.nomenclature = Some(Nomenclature {
            system: "local".into(),
            code: None,
            term: t,
        });
    }
    if let Some(c) = fields.text("category") {
        next.category = Category::parse(&c).ok_or_else(|| format!("unknown category {c:?}"))?;
    }
    if let Some(b) = fields.flag("high_risk") {
        next.high_risk = b;
    }
    if let Some(b) = fields.flag("life_support") {
        next.life_support = b;
    }
    if let Some(b) = fields.flag("maintenance_set_by_law") {
        next.maintenance_set_by_law = b;
    }
    for (name, slot) in [
        ("pm_interval_days", &mut next.pm_interval_days),
        (
            "calibration_interval_days",
            &mut next.calibration_interval_days,
        ),
    ] {
        if fields.has(name) {
            *slot = fields.days(name).ok_or_else(|| {
                format!(
                    "{name} is not a number of days from 1 to {}",
                    super::MAX_INTERVAL_DAYS
                )
            })?;
        }
    }
    if let Some(v) = fields.0.get("strategy") {
        next.strategy = serde_json::from_value(v.clone()).map_err(|e| format!("strategy: {e}"))?;
    }
    if let Strategy::Aem { justification } = &next.strategy {
        if justification.trim().is_empty() {
            return Err("an AEM programme needs its written justification".into());
        }
        if let Some(why) = next.aem_refusal() {
            return Err(why);
        }
    }
    if !next.registered {
        next.registered = true;
        next.registered_seq = Some(seq);
        next.registered_at = Some(at.to_owned());
        next.registered_at_ms = Some(at_ms);
    }
    *dev = next;
    Ok(())
}
