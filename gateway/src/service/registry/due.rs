//! What is due: per device and across devices, as of a "now" the caller gives (the API's `now`
//! parameter, the current time by default), so that the same index and the same now give the
//! same answer on every gateway.
//!
//! A preventive maintenance (or calibration) is due one interval after the last one done; a
//! device with none on record is due one interval after it entered the inventory (its
//! acceptance check starts the clock); a failed calibration is due again at once. It is `overdue` once that time has passed, `due` within
//! the window before it (30 days by default), `scheduled` earlier.

use serde::Serialize;

use super::index::{DeviceState, Done, Index};
use super::Status;

const DAY_MS: i64 = 86_400_000;

/// Which work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Work {
    PreventiveMaintenance,
    Calibration,
}

/// Where one kind of work stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DueState {
    Scheduled,
    Due,
    Overdue,
}

/// One kind of work on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DueItem {
    pub device_id: String,
    pub work: Work,
    pub state: DueState,
    pub interval_days: u32,
    /// When it is (or was) due, RFC 3339.
    pub due_at: String,
    /// Days until due; negative when overdue.
    pub days_left: i64,
    /// The last one done, RFC 3339, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_done: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub high_risk: bool,
    pub life_support: bool,
    pub status: Status,
}

/// A device's calibration state as FHIR R4's DeviceMetric.calibration.state names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CalibrationState {
    /// No calibration on record, or the last one failed.
    NotCalibrated,
    /// The last calibration's interval has run out.
    CalibrationRequired,
    Calibrated,
    /// The device has no calibration interval.
    Unspecified,
}

impl CalibrationState {
    pub fn as_str(self) -> &'static str {
        match self {
            CalibrationState::NotCalibrated => "not-calibrated",
            CalibrationState::CalibrationRequired => "calibration-required",
            CalibrationState::Calibrated => "calibrated",
            CalibrationState::Unspecified => "unspecified",
        }
    }
}

/// Default window before the due date in which work counts as `due`.
pub const DEFAULT_WINDOW_DAYS: u32 = 30;

fn item(
    index: &Index,
    dev: &DeviceState,
    work: Work,
    now_ms: i64,
    window_days: u32,
    keep: &dyn Fn(DueState) -> bool,
) -> Option<DueItem> {
    if !dev.registered || dev.status == Status::Decommissioned {
        return None;
    }
    let (interval, last) = match work {
        Work::PreventiveMaintenance => (index.pm_interval(dev)?, dev.last_pm()),
        Work::Calibration => (index.calibration_interval(dev)?, dev.last_calibration()),
    };
    let anchor = last.map(|d| d.at_ms).or(dev.registered_at_ms)?;
    let due_ms = match last {
        // A failed calibration is to be repeated at once.
        Some(d) if work == Work::Calibration && !d.passed => d.at_ms,
        _ => anchor.saturating_add(i64::from(interval) * DAY_MS),
    };
    let state = if now_ms > due_ms {
        DueState::Overdue
    } else if now_ms >= due_ms - i64::from(window_days) * DAY_MS {
        DueState::Due
    } else {
        DueState::Scheduled
    };
    // Decided before the item's texts are made: most of a long list's cost is in them.
    if !keep(state) {
        return None;
    }
    let days_left = (due_ms - now_ms).div_euclid(DAY_MS);
    Some(DueItem {
        device_id: dev.device_id.clone(),
        work,
        state,
        interval_days: interval,
        due_at: crate::event::format_ms(due_ms),
        days_left,
        last_done: last.map(|d: Done| crate::event::format_ms(d.at_ms)),
        last_seq: last.map(|d| d.seq),
        location: dev.location.clone(),
        high_risk: dev.is_high_risk(),
        life_support: dev.life_support,
        status: dev.status,
    })
}

/// Preventive maintenance and calibration of one device (the kinds it has an interval for).
pub fn device_due(index: &Index, dev: &DeviceState, now_ms: i64, window_days: u32) -> Vec<DueItem> {
    [Work::PreventiveMaintenance, Work::Calibration]
        .into_iter()
        .filter_map(|w| item(index, dev, w, now_ms, window_days, &|_| true))
        .collect()
}

/// The calibration state of a device as of `now_ms`.
pub fn calibration_state(index: &Index, dev: &DeviceState, now_ms: i64) -> CalibrationState {
    let Some(interval) = index.calibration_interval(dev) else {
        return CalibrationState::Unspecified;
    };
    match dev.last_calibration() {
        None => CalibrationState::NotCalibrated,
        Some(d) if !d.passed => CalibrationState::NotCalibrated,
        Some(d) if now_ms > d.at_ms.saturating_add(i64::from(interval) * DAY_MS) => {
            CalibrationState::CalibrationRequired
        }
        Some(_) => CalibrationState::Calibrated,
    }
}

/// Which risk group a filter asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RiskFilter {
    /// High-risk, life support included.
    HighRisk,
    LifeSupport,
    /// Neither high-risk nor life support.
    Other,
}

/// Filters of device lists and the due list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Exact location (case-insensitive).
    pub location: Option<String>,
    pub risk: Option<RiskFilter>,
    pub status: Option<Status>,
}

impl Filter {
    pub fn matches(&self, dev: &DeviceState) -> bool {
        if let Some(l) = &self.location {
            if !dev
                .location
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(l))
            {
                return false;
            }
        }
        if let Some(s) = self.status {
            if dev.status != s {
                return false;
            }
        }
        match self.risk {
            None => true,
            Some(RiskFilter::HighRisk) => dev.is_high_risk(),
            Some(RiskFilter::LifeSupport) => dev.life_support,
            Some(RiskFilter::Other) => !dev.is_high_risk(),
        }
    }
}

/// Registered devices matching `filter`, in device id order.
pub fn devices<'a>(index: &'a Index, filter: &'a Filter) -> impl Iterator<Item = &'a DeviceState> {
    index
        .devices
        .values()
        .filter(move |d| d.registered && filter.matches(d))
}

/// Everything due or overdue across the registered devices that match `filter` (only overdue
/// with `overdue_only`), most overdue first, then by device id.
pub fn due_list(
    index: &Index,
    filter: &Filter,
    now_ms: i64,
    window_days: u32,
    overdue_only: bool,
) -> Vec<DueItem> {
    let keep = |state: DueState| match state {
        DueState::Overdue => true,
        DueState::Due => !overdue_only,
        DueState::Scheduled => false,
    };
    let mut out: Vec<DueItem> = devices(index, filter)
        .flat_map(|d| {
            [Work::PreventiveMaintenance, Work::Calibration]
                .into_iter()
                .filter_map(move |w| item(index, d, w, now_ms, window_days, &keep))
        })
        .collect();
    out.sort_by(|a, b| {
        a.days_left
            .cmp(&b.days_left)
            .then_with(|| a.device_id.cmp(&b.device_id))
    });
    out
}
