//! What staff send to change the registry, checked and turned into ledger events (the API and
//! the CLI send these bodies; docs/registry.md lists the entries they become).

use ledger_node::entry::{ComponentInput, DisclosureClass, EventInput, EventKind};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::index::{Nomenclature, MODEL_PREFIX, RECALL_PREFIX};
use super::{Category, Status, Strategy, MAX_INTERVAL_DAYS, REGISTRY_COMPONENT, STATUS_COMPONENT};

/// Longest text field of a registry request.
pub const MAX_TEXT: usize = 512;

/// A refused request: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

/// A device's inventory record: the body of `POST /v1/devices` (registration; `device_id`
/// required) and of `PATCH /v1/devices/{id}` (a change; only the fields that change).
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    /// The ledger's id of the device: its UDI (GS1, HIBCC, ISBT 128) or a plain asset id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The UDI as printed, when the device id is not the UDI itself; split into DI and PI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udi: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nomenclature: Option<Nomenclature>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_centre: Option<String>,
    /// `general` (default), `imaging` or `laser`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_risk: Option<bool>,
    /// Life-support equipment (always high-risk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub life_support: Option<bool>,
    /// `{"kind": "manufacturer"}` (default) or `{"kind": "aem", "justification": "..."}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Maintenance set by law or regulation (no AEM then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_set_by_law: Option<bool>,
    /// This device's preventive-maintenance interval in days, overriding its model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm_interval_days: Option<u32>,
    /// This device's calibration interval in days, overriding its model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_interval_days: Option<u32>,
    /// When it happened (RFC 3339); for a registration, when the device entered service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    /// A stable id: the same request sent again records nothing new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// A registry status change: the body of `POST /v1/devices/{id}/status`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// `in-service`, `out-of-service`, `unable-to-locate` or `decommissioned`.
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// An attempt to locate a device: the body of `POST /v1/devices/{id}/locate-attempts`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocateRequest {
    /// Where staff looked.
    pub searched: String,
    /// Whether the device was found there.
    pub found: bool,
    /// Where it was found (becomes its location).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// A model's intervals: the body of `POST /v1/models`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRequest {
    pub manufacturer: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm_interval_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_interval_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// A recall or field safety notice, opened or closed: the body of `POST /v1/recalls`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecallRequest {
    /// The recall's number (the manufacturer's or the authority's).
    pub recall_id: String,
    /// The UDI device identifier (DI) of the recalled product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udi_di: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `open` (default) or `closed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

fn text(field: &'static str, v: &str) -> Result<(), Invalid> {
    if v.trim().is_empty() {
        return Err(invalid(field, "is empty"));
    }
    if v.len() > MAX_TEXT {
        return Err(invalid(field, format!("is longer than {MAX_TEXT} bytes")));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "contains a control character"));
    }
    Ok(())
}

fn days(field: &'static str, v: Option<u32>) -> Result<(), Invalid> {
    match v {
        Some(d) if !(1..=MAX_INTERVAL_DAYS).contains(&d) => Err(invalid(
            field,
            format!("{d} is not a number of days from 1 to {MAX_INTERVAL_DAYS}"),
        )),
        _ => Ok(()),
    }
}

fn component(name: &str, class: DisclosureClass, value: Value) -> ComponentInput {
    ComponentInput {
        name: name.into(),
        class,
        value: value.to_string(),
    }
}

fn event(
    kind: EventKind,
    device_id: String,
    action: &str,
    mut components: Vec<ComponentInput>,
    occurred_at: Option<String>,
    event_id: Option<String>,
) -> EventInput {
    components.insert(
        0,
        component(REGISTRY_COMPONENT, DisclosureClass::Device, json!(action)),
    );
    EventInput {
        kind,
        device_id,
        occurred_at,
        components,
        corrects: None,
        event_id,
    }
}

/// A device id the registry takes: a valid UDI or plain asset id.
pub fn check_device_id(id: &str) -> Result<(), Invalid> {
    certs::validate_device_id(id)
        .map(|_| ())
        .map_err(|e| invalid("device_id", e.to_string()))
}

impl DeviceRecord {
    /// Checks every field given (not yet the maintenance rules, which depend on the device's
    /// state: see [`super::index::apply_record`]).
    pub fn check(&self) -> Result<(), Invalid> {
        if let Some(id) = &self.device_id {
            check_device_id(id)?;
        }
        if let Some(u) = &self.udi {
            certs::udi_parts(u).map_err(|e| invalid("udi", e.to_string()))?;
        }
        for (field, v) in [
            ("asset_number", &self.asset_number),
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("serial", &self.serial),
            ("location", &self.location),
            ("cost_centre", &self.cost_centre),
        ] {
            if let Some(v) = v {
                text(field, v)?;
            }
        }
        if let Some(n) = &self.nomenclature {
            if !["gmdn", "umdns", "fda", "local"].contains(&n.system.as_str()) {
                return Err(invalid(
                    "nomenclature",
                    format!(
                        "system {:?} is not one of gmdn, umdns, fda, local",
                        n.system
                    ),
                ));
            }
            text("nomenclature", &n.term)?;
        }
        if let Some(Strategy::Aem { justification }) = &self.strategy {
            if justification.trim().is_empty() {
                return Err(invalid(
                    "strategy",
                    "an AEM programme needs its written justification",
                ));
            }
            if justification.len() > 64 * 1024 {
                return Err(invalid("strategy", "the justification is over 64 KiB"));
            }
        }
        days("pm_interval_days", self.pm_interval_days)?;
        days("calibration_interval_days", self.calibration_interval_days)?;
        Ok(())
    }

    /// The fields given, as components of a registry entry.
    fn components(&self) -> Vec<ComponentInput> {
        use DisclosureClass::{Device, Maintenance};
        let mut out = Vec::new();
        let mut put = |name: &str, class, v: Option<Value>| {
            if let Some(v) = v {
                out.push(component(name, class, v));
            }
        };
        let s = |v: &Option<String>| v.as_ref().map(|s| json!(s));
        put("udi", Device, s(&self.udi));
        put("asset_number", Device, s(&self.asset_number));
        put("manufacturer", Device, s(&self.manufacturer));
        put("model", Device, s(&self.model));
        put("serial", Device, s(&self.serial));
        put(
            "nomenclature",
            Device,
            self.nomenclature.as_ref().map(|n| json!(n)),
        );
        put("location", Device, s(&self.location));
        put("cost_centre", Device, s(&self.cost_centre));
        put("category", Device, self.category.map(|c| json!(c)));
        put("high_risk", Device, self.high_risk.map(|b| json!(b)));
        put("life_support", Device, self.life_support.map(|b| json!(b)));
        put(
            "strategy",
            Maintenance,
            self.strategy.as_ref().map(|s| json!(s)),
        );
        put(
            "maintenance_set_by_law",
            Maintenance,
            self.maintenance_set_by_law.map(|b| json!(b)),
        );
        put(
            "pm_interval_days",
            Maintenance,
            self.pm_interval_days.map(|d| json!(d)),
        );
        put(
            "calibration_interval_days",
            Maintenance,
            self.calibration_interval_days.map(|d| json!(d)),
        );
        out
    }

    /// The `device-registered` entry of a registration (`update` false) or of a change.
    pub fn to_event(&self, device_id: &str, update: bool) -> EventInput {
        event(
            EventKind::DeviceRegistered,
            device_id.to_owned(),
            if update { "update" } else { "register" },
            self.components(),
            self.occurred_at.clone(),
            self.event_id.clone(),
        )
    }
}

impl StatusRequest {
    pub fn check(&self) -> Result<(), Invalid> {
        if let Some(r) = &self.reason {
            text("reason", r)?;
        }
        Ok(())
    }

    /// `status-change` (or `device-decommissioned`) with the new registry status.
    pub fn to_event(&self, device_id: &str) -> EventInput {
        let kind = if self.status == Status::Decommissioned {
            EventKind::DeviceDecommissioned
        } else {
            EventKind::StatusChange
        };
        let mut c = vec![component(
            STATUS_COMPONENT,
            DisclosureClass::Device,
            json!(self.status.as_str()),
        )];
        if let Some(r) = &self.reason {
            c.push(component("reason", DisclosureClass::Device, json!(r)));
        }
        event(
            kind,
            device_id.to_owned(),
            "status",
            c,
            self.occurred_at.clone(),
            self.event_id.clone(),
        )
    }
}

impl LocateRequest {
    pub fn check(&self) -> Result<(), Invalid> {
        text("searched", &self.searched)?;
        if let Some(l) = &self.location {
            text("location", l)?;
        }
        if let Some(n) = &self.note {
            text("note", n)?;
        }
        if self.location.is_some() && !self.found {
            return Err(invalid(
                "location",
                "a location is given only for a device that was found",
            ));
        }
        Ok(())
    }

    /// A `status-change` entry logging the attempt.
    pub fn to_event(&self, device_id: &str) -> EventInput {
        let d = DisclosureClass::Device;
        let mut c = vec![
            component("searched", d, json!(self.searched)),
            component("found", d, json!(self.found)),
        ];
        if let Some(l) = &self.location {
            c.push(component("location", d, json!(l)));
        }
        if let Some(n) = &self.note {
            c.push(component("note", DisclosureClass::Maintenance, json!(n)));
        }
        event(
            EventKind::StatusChange,
            device_id.to_owned(),
            "locate-attempt",
            c,
            self.occurred_at.clone(),
            self.event_id.clone(),
        )
    }
}

impl ModelRequest {
    pub fn check(&self) -> Result<(), Invalid> {
        text("manufacturer", &self.manufacturer)?;
        text("model", &self.model)?;
        days("pm_interval_days", self.pm_interval_days)?;
        days("calibration_interval_days", self.calibration_interval_days)?;
        if self.pm_interval_days.is_none() && self.calibration_interval_days.is_none() {
            return Err(invalid(
                "pm_interval_days",
                "give pm_interval_days, calibration_interval_days or both",
            ));
        }
        Ok(())
    }

    /// The ledger id of a model record.
    pub fn model_id(manufacturer: &str, model: &str) -> String {
        format!("{MODEL_PREFIX}{manufacturer}/{model}")
    }

    pub fn to_event(&self) -> EventInput {
        let m = DisclosureClass::Maintenance;
        let d = DisclosureClass::Device;
        let mut c = vec![
            component("manufacturer", d, json!(self.manufacturer)),
            component("model", d, json!(self.model)),
        ];
        if let Some(v) = self.pm_interval_days {
            c.push(component("pm_interval_days", m, json!(v)));
        }
        if let Some(v) = self.calibration_interval_days {
            c.push(component("calibration_interval_days", m, json!(v)));
        }
        event(
            EventKind::DeviceRegistered,
            Self::model_id(&self.manufacturer, &self.model),
            "model",
            c,
            None,
            self.event_id.clone(),
        )
    }
}

impl RecallRequest {
    pub fn check(&self) -> Result<(), Invalid> {
        text("recall_id", &self.recall_id)?;
        if let Some(di) = &self.udi_di {
            text("udi_di", di)?;
        }
        if let Some(t) = &self.title {
            text("title", t)?;
        }
        match self.status.as_deref() {
            None | Some("open") | Some("closed") => Ok(()),
            Some(s) => Err(invalid("status", format!("{s:?} is not open or closed"))),
        }
    }

    /// An `alarm` entry about the recall (`recall:<id>`): recalls are hazard alerts.
    pub fn to_event(&self) -> EventInput {
        let d = DisclosureClass::Device;
        let mut c = vec![component(
            "status",
            d,
            json!(self.status.as_deref().unwrap_or("open")),
        )];
        if let Some(di) = &self.udi_di {
            c.push(component("udi_di", d, json!(di)));
        }
        if let Some(t) = &self.title {
            c.push(component("title", d, json!(t)));
        }
        event(
            EventKind::Alarm,
            format!("{RECALL_PREFIX}{}", self.recall_id),
            "recall",
            c,
            self.occurred_at.clone(),
            self.event_id.clone(),
        )
    }
}
