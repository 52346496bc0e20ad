//! Reports for an environment-of-care committee: preventive-maintenance completion for a
//! period, life-support and other equipment apart, and open recalls by UDI-DI.
//!
//! PM completion counts the preventive maintenances that came **due** in the period
//! `[from, to)`: following each registered device's chain of due dates (one interval after the
//! last PM done, or after registration), a due date in the period is `scheduled`; it is
//! `completed` when the next PM after the previous one was done before the period ended
//! (`late` when after its due date), otherwise `missed`. A missed PM of a device that is unable
//! to locate with an attempt to locate it logged since its due date is `documented` (a
//! documented follow-up counts as on time, EC.02.04.01), and counted apart.

use std::collections::BTreeMap;

use serde::Serialize;

use super::index::{Index, Recall};
use super::Status;

const DAY_MS: i64 = 86_400_000;

/// The counts of one group of equipment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Completion {
    /// Devices with at least one PM due in the period.
    pub devices: u64,
    pub scheduled: u64,
    pub completed: u64,
    /// Completed after their due date.
    pub late: u64,
    pub missed: u64,
    /// Missed, but the device is unable to locate with the attempts logged.
    pub documented: u64,
    /// (completed + documented) / scheduled, in percent; 100 when nothing was scheduled.
    pub percent: f64,
}

/// One PM that came due in the period and was not done by its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Missed {
    pub device_id: String,
    pub due_at: String,
    pub life_support: bool,
    pub status: Status,
    pub documented: bool,
}

/// The PM completion report of a period.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CompletionReport {
    pub from: String,
    pub to: String,
    pub life_support: Completion,
    /// Everything that is not life support (high-risk included).
    pub other: Completion,
    pub missed: Vec<Missed>,
}

fn finish(c: &mut Completion) {
    c.percent = if c.scheduled == 0 {
        100.0
    } else {
        // Rounded to two decimals so that every gateway prints the same number.
        ((c.completed + c.documented) as f64 * 10_000.0 / c.scheduled as f64).round() / 100.0
    };
}

/// PM completion for `[from_ms, to_ms)`.
pub fn pm_completion(index: &Index, from_ms: i64, to_ms: i64) -> CompletionReport {
    let mut ls = Completion::default();
    let mut other = Completion::default();
    let mut missed = Vec::new();
    for dev in index.devices.values().filter(|d| d.registered) {
        let (Some(interval), Some(registered)) = (index.pm_interval(dev), dev.registered_at_ms)
        else {
            continue;
        };
        let step = i64::from(interval) * DAY_MS;
        let mut done: Vec<i64> = dev.pm.iter().map(|d| d.at_ms).collect();
        done.sort_unstable();
        // Decommissioned devices are not scheduled after they left.
        let end = match (dev.status, dev.status_since.as_deref()) {
            (Status::Decommissioned, Some(s)) => {
                super::index::parse_ms(s).unwrap_or(to_ms).min(to_ms)
            }
            _ => to_ms,
        };
        let group = if dev.life_support {
            &mut ls
        } else {
            &mut other
        };
        let mut anchor = done
            .iter()
            .copied()
            .filter(|t| *t <= from_ms)
            .max()
            .map_or(registered, |t| t.max(registered));
        let mut counted = false;
        loop {
            let due = anchor.saturating_add(step);
            if due >= end {
                break;
            }
            let next = done.iter().copied().find(|t| *t > anchor);
            if due >= from_ms {
                group.scheduled += 1;
                counted = true;
                match next {
                    Some(t) if t < to_ms => {
                        group.completed += 1;
                        if t > due {
                            group.late += 1;
                        }
                    }
                    _ => {
                        let documented = dev.status == Status::UnableToLocate
                            && dev.locate_attempts.iter().any(|a| {
                                !a.found && super::index::parse_ms(&a.at).is_some_and(|t| t >= due)
                            });
                        if documented {
                            group.documented += 1;
                        } else {
                            group.missed += 1;
                        }
                        missed.push(Missed {
                            device_id: dev.device_id.clone(),
                            due_at: crate::event::format_ms(due),
                            life_support: dev.life_support,
                            status: dev.status,
                            documented,
                        });
                        break;
                    }
                }
            }
            match next {
                Some(t) if t < to_ms => anchor = t,
                _ => break,
            }
        }
        if counted {
            group.devices += 1;
        }
    }
    finish(&mut ls);
    finish(&mut other);
    CompletionReport {
        from: crate::event::format_ms(from_ms),
        to: crate::event::format_ms(to_ms),
        life_support: ls,
        other,
        missed,
    }
}

/// The open recalls of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RecallGroup {
    pub udi_di: String,
    pub recalls: Vec<Recall>,
    /// Registered devices (not decommissioned) whose UDI has this DI.
    pub devices: Vec<String>,
}

/// Open recalls grouped by UDI-DI, in DI order.
pub fn open_recalls(index: &Index) -> Vec<RecallGroup> {
    let mut by_di: BTreeMap<&str, Vec<Recall>> = BTreeMap::new();
    for r in index.recalls.values().filter(|r| r.status == "open") {
        by_di.entry(r.udi_di.as_str()).or_default().push(r.clone());
    }
    by_di
        .into_iter()
        .map(|(di, recalls)| RecallGroup {
            udi_di: di.to_owned(),
            recalls,
            devices: index
                .devices
                .values()
                .filter(|d| d.registered && d.status != Status::Decommissioned)
                .filter(|d| d.udi.as_ref().is_some_and(|u| u.di == di))
                .map(|d| d.device_id.clone())
                .collect(),
        })
        .collect()
}
