//! Telemetry rules: pure functions of (state, input) -> (state, events). No I/O, no clock: the
//! caller passes time in, persists [`RuleState`] and writes the events to the outbox.
//!
//! Every event's id is a hash of (device, rule name, transition, triggering sample's time and
//! value), so replaying the same samples after a crash gives the same ids and the ledger's
//! event-id index turns the replay into a no-op. Rules only open work (alarms, maintenance due,
//! status changes); they never close or edit a maintenance record.

use std::collections::{BTreeMap, HashMap};

use device_adapters::{DeviceStatus, Telemetry, Value};
use ledger_node::entry::{DisclosureClass, EventKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::{RuleKindName, RuleSection};

/// Which devices a rule applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    All,
    Device(String),
    /// Devices configured with this profile.
    Profile(String),
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Raised while the metric is beyond `limit` (above or below) for `min_duration_ms`,
    /// cleared once it is back by more than `hysteresis` for as long.
    Threshold {
        metric: String,
        above: bool,
        limit: f64,
        hysteresis: f64,
        min_duration_ms: i64,
    },
    /// `maintenance-due` each time the metric passes a multiple of `interval`.
    Counter { metric: String, interval: f64 },
    /// Offline after `silence_ms` without a value (or when the poller says so), online on return.
    Offline { silence_ms: i64 },
}

/// One configured rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub scope: Scope,
    pub kind: Kind,
}

impl Rule {
    /// From a config section already checked by `config::telemetry::check`; `None` for a
    /// section missing what its kind needs (cannot happen after the check).
    pub fn from_config(r: &RuleSection) -> Option<Rule> {
        let scope = match (&r.device, &r.profile) {
            (Some(d), _) => Scope::Device(d.clone()),
            (None, Some(p)) => Scope::Profile(p.clone()),
            (None, None) => Scope::All,
        };
        let kind = match r.kind {
            RuleKindName::Above | RuleKindName::Below => Kind::Threshold {
                metric: r.metric.clone()?,
                above: r.kind == RuleKindName::Above,
                limit: r.limit?,
                hysteresis: r.hysteresis,
                min_duration_ms: i64::try_from(r.min_duration_ms).unwrap_or(i64::MAX),
            },
            RuleKindName::Counter => Kind::Counter {
                metric: r.metric.clone()?,
                interval: r.interval?,
            },
            RuleKindName::Offline => Kind::Offline {
                silence_ms: i64::try_from(r.expected_interval_ms?)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(i64::from(r.silent_intervals)),
            },
        };
        Some(Rule {
            name: r.name.clone(),
            scope,
            kind,
        })
    }

    fn applies_to(&self, device: &str, profile: Option<&str>) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Device(d) => d == device,
            Scope::Profile(p) => Some(p.as_str()) == profile,
        }
    }
}

/// A rule's memory about one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Slot {
    Threshold {
        /// The alarm is raised.
        active: bool,
        /// Since when (sample time, ms) the condition for the next transition has held.
        pending_since_ms: Option<i64>,
        /// Time of the newest sample applied; older ones (late redeliveries) are ignored.
        last_ms: i64,
    },
    Counter {
        /// Multiples of the interval already passed (announced, or the baseline at first sight).
        index: u64,
    },
    Presence {
        offline: bool,
        /// Gateway time of the device's latest value, ms.
        last_seen_ms: i64,
    },
}

/// Everything the rules remember: rule name -> device id -> slot. Persisted by the caller.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    pub slots: BTreeMap<String, BTreeMap<String, Slot>>,
}

/// An event a rule produced, ready for the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleEvent {
    pub event_id: String,
    pub kind: EventKind,
    pub device_id: String,
    /// The triggering sample's time (RFC 3339).
    pub occurred_at: String,
    pub components: Vec<EventComponent>,
}

/// One component of a [`RuleEvent`] (value as JSON text, as the ledger stores it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventComponent {
    pub name: String,
    pub class: DisclosureClass,
    pub value: String,
}

/// The rules with their state.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    /// device id -> profile name (Modbus devices from the config).
    profiles: HashMap<String, String>,
    state: RuleState,
    /// Devices are given until this time (gateway clock, ms) before silence counts: after a
    /// restart, a device silent while the gateway was down is not declared offline at once.
    grace_until_ms: i64,
    /// Something changed in the state that is not yet persisted.
    dirty: bool,
}

impl Engine {
    /// `state` as persisted (or default); `now_ms` the gateway's clock at start; `known`: devices
    /// expected from the start (Modbus devices), so their silence is noticed even if they never
    /// answer.
    pub fn new(
        rules: Vec<Rule>,
        profiles: HashMap<String, String>,
        state: RuleState,
        now_ms: i64,
        known: &[String],
    ) -> Engine {
        let mut e = Engine {
            rules,
            profiles,
            state,
            grace_until_ms: now_ms,
            dirty: false,
        };
        // Slots of rules that no longer exist are dropped, so a renamed rule starts afresh.
        let names: std::collections::HashSet<&str> =
            e.rules.iter().map(|r| r.name.as_str()).collect();
        e.state.slots.retain(|k, _| names.contains(k.as_str()));
        for r in &e.rules {
            if let Kind::Offline { .. } = r.kind {
                for d in known {
                    if r.applies_to(d, e.profiles.get(d).map(String::as_str)) {
                        e.state
                            .slots
                            .entry(r.name.clone())
                            .or_default()
                            .entry(d.clone())
                            .or_insert(Slot::Presence {
                                offline: false,
                                last_seen_ms: now_ms,
                            });
                    }
                }
            }
        }
        e
    }

    pub fn state(&self) -> &RuleState {
        &self.state
    }

    /// Whether the state changed since [`Engine::mark_saved`].
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    pub fn mark_saved(&mut self) {
        self.dirty = false;
    }

    /// Applies one value; returns the events it triggers.
    pub fn on_telemetry(&mut self, t: &Telemetry) -> Vec<RuleEvent> {
        let mut out = Vec::new();
        let profile = self.profiles.get(&t.device_id).cloned();
        let time_ms = ms(t.timestamp);
        let seen_ms = ms(t.received_at);
        for r in &self.rules {
            if !r.applies_to(&t.device_id, profile.as_deref()) {
                continue;
            }
            let slots = self.state.slots.entry(r.name.clone()).or_default();
            match &r.kind {
                Kind::Threshold {
                    metric,
                    above,
                    limit,
                    hysteresis,
                    min_duration_ms,
                } => {
                    if metric != &t.metric {
                        continue;
                    }
                    let Some(v) = t.value.as_f64().filter(|v| v.is_finite()) else {
                        continue;
                    };
                    let slot = slots.entry(t.device_id.clone()).or_insert(Slot::Threshold {
                        active: false,
                        pending_since_ms: None,
                        last_ms: i64::MIN,
                    });
                    let Slot::Threshold {
                        active,
                        pending_since_ms,
                        last_ms,
                    } = slot
                    else {
                        continue;
                    };
                    if time_ms < *last_ms {
                        continue;
                    }
                    *last_ms = time_ms;
                    let (beyond, back) = if *above {
                        (v > *limit, v < *limit - *hysteresis)
                    } else {
                        (v < *limit, v > *limit + *hysteresis)
                    };
                    let wanted = if *active { back } else { beyond };
                    if !wanted {
                        *pending_since_ms = None;
                        continue;
                    }
                    let since = *pending_since_ms.get_or_insert(time_ms);
                    if time_ms.saturating_sub(since) < *min_duration_ms {
                        continue;
                    }
                    *active = !*active;
                    *pending_since_ms = None;
                    self.dirty = true;
                    let state = if *active { "raised" } else { "cleared" };
                    let mut ev = event(
                        EventKind::Alarm,
                        &r.name,
                        state,
                        t,
                        vec![
                            comp("state", DisclosureClass::Device, state),
                            comp(
                                "condition",
                                DisclosureClass::Device,
                                if *above { "above" } else { "below" },
                            ),
                            comp_json("limit", DisclosureClass::Device, serde_json::json!(limit)),
                            comp_json(
                                "hysteresis",
                                DisclosureClass::Device,
                                serde_json::json!(hysteresis),
                            ),
                        ],
                    );
                    ev.components
                        .push(comp_json("value", DisclosureClass::Device, value_json(v)));
                    out.push(ev);
                }
                Kind::Counter { metric, interval } => {
                    if metric != &t.metric {
                        continue;
                    }
                    let Some(v) = t.value.as_f64().filter(|v| v.is_finite() && *v >= 0.0) else {
                        continue;
                    };
                    // Saturating float-to-int cast: a huge counter value cannot wrap.
                    let index = (v / interval).floor() as u64;
                    match slots.get_mut(&t.device_id) {
                        Some(Slot::Counter { index: known }) => {
                            if index > *known {
                                *known = index;
                                self.dirty = true;
                                out.push(event(
                                    EventKind::MaintenanceDue,
                                    &r.name,
                                    "due",
                                    t,
                                    vec![
                                        comp_json(
                                            "interval",
                                            DisclosureClass::Maintenance,
                                            serde_json::json!(interval),
                                        ),
                                        comp_json(
                                            "due_at",
                                            DisclosureClass::Maintenance,
                                            serde_json::json!(index as f64 * interval),
                                        ),
                                        comp_json("value", DisclosureClass::Device, value_json(v)),
                                    ],
                                ));
                            } else if index < *known {
                                // The counter went back (device reset or replaced): start
                                // counting from here, announce nothing.
                                *known = index;
                                self.dirty = true;
                            }
                        }
                        _ => {
                            // First sight: the baseline. A device first seen past a multiple is
                            // not announced for it; the next multiple is.
                            slots.insert(t.device_id.clone(), Slot::Counter { index });
                            self.dirty = true;
                        }
                    }
                }
                Kind::Offline { .. } => {
                    let slot = slots.entry(t.device_id.clone()).or_insert(Slot::Presence {
                        offline: false,
                        last_seen_ms: seen_ms,
                    });
                    if let Slot::Presence {
                        offline,
                        last_seen_ms,
                    } = slot
                    {
                        *last_seen_ms = (*last_seen_ms).max(seen_ms);
                        if *offline {
                            *offline = false;
                            self.dirty = true;
                            out.push(event(
                                EventKind::StatusChange,
                                &r.name,
                                "online",
                                t,
                                vec![comp("status", DisclosureClass::Device, "online")],
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// A poller's status report (Modbus: the device stopped or started answering).
    pub fn on_status(&mut self, s: &DeviceStatus) -> Vec<RuleEvent> {
        let mut out = Vec::new();
        let profile = self.profiles.get(&s.device_id).cloned();
        let at_ms = ms(s.at);
        for r in &self.rules {
            if !matches!(r.kind, Kind::Offline { .. })
                || !r.applies_to(&s.device_id, profile.as_deref())
            {
                continue;
            }
            let slot = self
                .state
                .slots
                .entry(r.name.clone())
                .or_default()
                .entry(s.device_id.clone())
                .or_insert(Slot::Presence {
                    offline: false,
                    last_seen_ms: at_ms,
                });
            let Slot::Presence {
                offline,
                last_seen_ms,
            } = slot
            else {
                continue;
            };
            if s.online {
                *last_seen_ms = (*last_seen_ms).max(at_ms);
            }
            if *offline != s.online {
                continue;
            }
            *offline = !s.online;
            self.dirty = true;
            let status = if s.online { "online" } else { "offline" };
            let mut components = vec![comp("status", DisclosureClass::Device, status)];
            if let Some(reason) = &s.reason {
                components.push(comp("reason", DisclosureClass::Device, reason));
            }
            out.push(RuleEvent {
                event_id: event_id(&s.device_id, &r.name, status, at_ms, "status"),
                kind: EventKind::StatusChange,
                device_id: s.device_id.clone(),
                occurred_at: rfc3339(s.at),
                components: with_rule(&r.name, components),
            });
        }
        out
    }

    /// Time passes: devices silent for longer than their offline rule allows go offline.
    pub fn on_tick(&mut self, now_ms: i64) -> Vec<RuleEvent> {
        let mut out = Vec::new();
        for r in &self.rules {
            let Kind::Offline { silence_ms } = r.kind else {
                continue;
            };
            let Some(slots) = self.state.slots.get_mut(&r.name) else {
                continue;
            };
            for (device, slot) in slots.iter_mut() {
                let Slot::Presence {
                    offline,
                    last_seen_ms,
                } = slot
                else {
                    continue;
                };
                let since = (*last_seen_ms).max(self.grace_until_ms);
                if *offline || now_ms.saturating_sub(since) < silence_ms {
                    continue;
                }
                *offline = true;
                self.dirty = true;
                let at = since.saturating_add(silence_ms);
                let at_time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                out.push(RuleEvent {
                    event_id: event_id(device, &r.name, "offline", since, "silent"),
                    kind: EventKind::StatusChange,
                    device_id: device.clone(),
                    occurred_at: rfc3339(at_time),
                    components: with_rule(
                        &r.name,
                        vec![
                            comp("status", DisclosureClass::Device, "offline"),
                            comp(
                                "reason",
                                DisclosureClass::Device,
                                &format!("no value for {} ms", silence_ms),
                            ),
                            comp(
                                "last_seen",
                                DisclosureClass::Device,
                                &rfc3339(
                                    OffsetDateTime::from_unix_timestamp_nanos(
                                        i128::from(since) * 1_000_000,
                                    )
                                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                                ),
                            ),
                        ],
                    ),
                });
            }
        }
        out
    }
}

fn ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn value_json(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// `rule:` + SHA-256 of (device, rule, transition, time, value), fields NUL-separated.
pub fn event_id(device: &str, rule: &str, transition: &str, time_ms: i64, value: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        device.as_bytes(),
        rule.as_bytes(),
        transition.as_bytes(),
        time_ms.to_string().as_bytes(),
        value.as_bytes(),
    ] {
        h.update(part);
        h.update([0u8]);
    }
    format!("rule:{}", hex::encode(h.finalize()))
}

fn sample_value_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn event(
    kind: EventKind,
    rule: &str,
    transition: &str,
    t: &Telemetry,
    components: Vec<EventComponent>,
) -> RuleEvent {
    let mut components = with_rule(rule, components);
    components.push(comp("metric", DisclosureClass::Device, &t.metric));
    if let Some(u) = &t.unit {
        components.push(comp("unit", DisclosureClass::Device, u));
    }
    components.push(comp(
        "source",
        DisclosureClass::Device,
        &t.source.to_string(),
    ));
    RuleEvent {
        event_id: event_id(
            &t.device_id,
            rule,
            transition,
            ms(t.timestamp),
            &sample_value_text(&t.value),
        ),
        kind,
        device_id: t.device_id.clone(),
        occurred_at: rfc3339(t.timestamp),
        components,
    }
}

fn with_rule(rule: &str, mut components: Vec<EventComponent>) -> Vec<EventComponent> {
    components.insert(0, comp("rule", DisclosureClass::Maintenance, rule));
    components
}

fn comp(name: &str, class: DisclosureClass, text: &str) -> EventComponent {
    comp_json(name, class, serde_json::Value::String(text.to_owned()))
}

fn comp_json(name: &str, class: DisclosureClass, v: serde_json::Value) -> EventComponent {
    EventComponent {
        name: name.to_owned(),
        class,
        value: v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use device_adapters::{Source, TimestampSource};

    use super::*;

    const T0: i64 = 1_750_000_000_000;

    fn at(ms: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).expect("time")
    }

    fn sample(device: &str, metric: &str, v: f64, t_ms: i64) -> Telemetry {
        Telemetry {
            device_id: device.into(),
            metric: metric.into(),
            value: Value::Float(v),
            unit: None,
            timestamp: at(t_ms),
            timestamp_source: TimestampSource::Device,
            received_at: at(t_ms),
            source: Source::Mqtt {
                topic: format!("medledger/devices/{device}/telemetry"),
            },
            seq: 0,
        }
    }

    fn threshold(min_duration_ms: i64) -> Rule {
        Rule {
            name: "flow-high".into(),
            scope: Scope::All,
            kind: Kind::Threshold {
                metric: "flow".into(),
                above: true,
                limit: 130.0,
                hysteresis: 5.0,
                min_duration_ms,
            },
        }
    }

    fn engine(rules: Vec<Rule>, state: RuleState) -> Engine {
        Engine::new(rules, HashMap::new(), state, T0, &[])
    }

    fn states(evs: &[RuleEvent]) -> Vec<String> {
        evs.iter()
            .filter_map(|e| {
                e.components
                    .iter()
                    .find(|c| c.name == "state" || c.name == "status")
                    .map(|c| c.value.trim_matches('"').to_owned())
            })
            .collect()
    }

    #[test]
    fn hovering_at_the_limit_raises_once_and_clears_once() {
        let mut e = engine(vec![threshold(0)], RuleState::default());
        let mut evs = Vec::new();
        for i in 0..40 {
            let v = if i % 2 == 0 { 130.5 } else { 129.0 };
            evs.extend(e.on_telemetry(&sample("p", "flow", v, T0 + i * 1000)));
        }
        assert_eq!(states(&evs), ["raised"]);
        evs.extend(e.on_telemetry(&sample("p", "flow", 120.0, T0 + 50_000)));
        evs.extend(e.on_telemetry(&sample("p", "flow", 119.0, T0 + 51_000)));
        assert_eq!(states(&evs), ["raised", "cleared"]);
        assert_eq!(evs[0].kind, EventKind::Alarm);
        assert_ne!(evs[0].event_id, evs[1].event_id);
    }

    #[test]
    fn minimum_duration_and_below_rules() {
        let mut e = engine(vec![threshold(3000)], RuleState::default());
        // Above for 2 s only: nothing.
        for (v, t) in [(131.0, 0), (131.0, 2000), (100.0, 2500)] {
            assert!(e.on_telemetry(&sample("p", "flow", v, T0 + t)).is_empty());
        }
        let mut evs = Vec::new();
        for t in [3000, 4000, 5000, 6000, 7000] {
            evs.extend(e.on_telemetry(&sample("p", "flow", 131.0, T0 + t)));
        }
        assert_eq!(states(&evs), ["raised"]);
        assert_eq!(evs[0].occurred_at, rfc3339(at(T0 + 6000)));
        let low = Rule {
            name: "battery-low".into(),
            scope: Scope::Device("p".into()),
            kind: Kind::Threshold {
                metric: "battery".into(),
                above: false,
                limit: 20.0,
                hysteresis: 2.0,
                min_duration_ms: 0,
            },
        };
        let mut e = engine(vec![low], RuleState::default());
        assert!(e.on_telemetry(&sample("q", "battery", 5.0, T0)).is_empty());
        let mut evs = e.on_telemetry(&sample("p", "battery", 19.0, T0));
        evs.extend(e.on_telemetry(&sample("p", "battery", 21.0, T0 + 1)));
        evs.extend(e.on_telemetry(&sample("p", "battery", 22.5, T0 + 2)));
        assert_eq!(states(&evs), ["raised", "cleared"]);
    }

    #[test]
    fn replay_after_restart_gives_the_same_ids_and_no_repeats() {
        let samples: Vec<Telemetry> = [(131.0, 0), (129.0, 1), (131.0, 2), (120.0, 3)]
            .iter()
            .map(|&(v, t)| sample("p", "flow", v, T0 + t * 1000))
            .collect();
        let mut a = engine(vec![threshold(0)], RuleState::default());
        let first: Vec<RuleEvent> = samples.iter().flat_map(|s| a.on_telemetry(s)).collect();
        // Crash before the state was saved: replaying from the old state gives the same events.
        let mut b = engine(vec![threshold(0)], RuleState::default());
        let replay: Vec<RuleEvent> = samples.iter().flat_map(|s| b.on_telemetry(s)).collect();
        assert_eq!(first, replay);
        // Crash after the state was saved: a redelivery of the same samples adds nothing.
        let mut c = engine(vec![threshold(0)], a.state().clone());
        let again: Vec<RuleEvent> = samples.iter().flat_map(|s| c.on_telemetry(s)).collect();
        assert!(again.is_empty(), "{again:?}");
        // State survives a JSON round trip (how it is persisted).
        let json = serde_json::to_string(a.state()).expect("json");
        let back: RuleState = serde_json::from_str(&json).expect("parse");
        assert_eq!(&back, a.state());
    }

    #[test]
    fn counters_announce_each_interval_once() {
        let rule = Rule {
            name: "pm-hours".into(),
            scope: Scope::Profile("infusion-pump".into()),
            kind: Kind::Counter {
                metric: "operating_hours".into(),
                interval: 500.0,
            },
        };
        let profiles = HashMap::from([("p".to_string(), "infusion-pump".to_string())]);
        let mut e = Engine::new(vec![rule], profiles, RuleState::default(), T0, &[]);
        let mut evs = Vec::new();
        for (i, h) in [990.0, 995.0, 999.9, 1000.0, 1000.5, 1000.0, 1200.0, 1500.2]
            .iter()
            .enumerate()
        {
            evs.extend(e.on_telemetry(&sample("p", "operating_hours", *h, T0 + i as i64)));
        }
        // Not the other device (no profile).
        evs.extend(e.on_telemetry(&sample("x", "operating_hours", 5000.0, T0)));
        evs.extend(e.on_telemetry(&sample("x", "operating_hours", 6000.0, T0 + 1)));
        assert_eq!(evs.len(), 2, "{evs:?}");
        assert!(evs.iter().all(|e| e.kind == EventKind::MaintenanceDue));
        let due: Vec<&str> = evs
            .iter()
            .flat_map(|e| e.components.iter())
            .filter(|c| c.name == "due_at")
            .map(|c| c.value.as_str())
            .collect();
        assert_eq!(due, ["1000.0", "1500.0"]);
    }

    #[test]
    fn silence_makes_offline_and_a_value_online_again() {
        let rule = Rule {
            name: "silent".into(),
            scope: Scope::All,
            kind: Kind::Offline { silence_ms: 3000 },
        };
        let mut e = Engine::new(
            vec![rule],
            HashMap::new(),
            RuleState::default(),
            T0,
            &["modbus-1".to_string()],
        );
        // A configured device that never answers goes offline too.
        assert!(e.on_tick(T0 + 2999).is_empty());
        let evs = e.on_tick(T0 + 3000);
        assert_eq!(states(&evs), ["offline"]);
        assert_eq!(evs[0].device_id, "modbus-1");
        assert!(e.on_tick(T0 + 10_000).is_empty(), "offline only once");
        let evs = e.on_telemetry(&sample("modbus-1", "x", 1.0, T0 + 11_000));
        assert_eq!(states(&evs), ["online"]);
        assert!(e
            .on_telemetry(&sample("modbus-1", "x", 1.0, T0 + 11_500))
            .is_empty());
        // The poller's word counts as much as silence, and only once.
        let st = |online, t| DeviceStatus {
            device_id: "modbus-1".into(),
            source: Source::Modbus {
                endpoint: "x".into(),
            },
            online,
            reason: (!online).then(|| "timeout".to_string()),
            at: at(t),
        };
        assert_eq!(states(&e.on_status(&st(false, T0 + 12_000))), ["offline"]);
        assert!(e.on_status(&st(false, T0 + 12_500)).is_empty());
        assert!(e.on_tick(T0 + 20_000).is_empty());
        assert_eq!(states(&e.on_status(&st(true, T0 + 21_000))), ["online"]);
        // After a restart, silence is counted from the restart, not from before it.
        let mut r = Engine::new(
            e.rules.clone(),
            HashMap::new(),
            e.state().clone(),
            T0 + 100_000,
            &[],
        );
        assert!(r.on_tick(T0 + 101_000).is_empty());
        assert_eq!(states(&r.on_tick(T0 + 103_000)), ["offline"]);
    }

    #[test]
    fn text_values_and_late_samples_are_ignored() {
        let mut e = engine(vec![threshold(0)], RuleState::default());
        let mut t = sample("p", "flow", 0.0, T0);
        t.value = Value::Text("high".into());
        assert!(e.on_telemetry(&t).is_empty());
        assert_eq!(
            e.on_telemetry(&sample("p", "flow", 140.0, T0 + 10)).len(),
            1
        );
        // A late redelivery from before the raise does not clear it.
        assert!(e
            .on_telemetry(&sample("p", "flow", 100.0, T0 + 5))
            .is_empty());
        assert!(e
            .on_telemetry(&sample("p", "flow", f64::NAN, T0 + 20))
            .is_empty());
    }
}
