//! The registry's derivation, due computations and reports on entries made through the same
//! request types as the API, applied to a real sled store.

use ed25519_dalek::SigningKey;
use ledger_node::entry::EventInput;
use ledger_node::{ApplyOutcome, Command, Store};

use super::due::{self, CalibrationState, DueState, Filter, RiskFilter, Work};
use super::index::parse_ms;
use super::request::{DeviceRecord, LocateRequest, ModelRequest, RecallRequest, StatusRequest};
use super::{report, Category, Registry, Status, Strategy};

fn ms(t: &str) -> i64 {
    parse_ms(t).expect("time")
}

fn append(store: &Store, key: &SigningKey, events: Vec<EventInput>) {
    let cmds: Vec<Command> = events
        .into_iter()
        .map(|e| {
            Command::Append(
                ledger_node::ledger::prepare(e, "test", 1, key, ms("2026-01-01T00:00:00Z"))
                    .expect("prepare"),
            )
        })
        .collect();
    for o in store.apply(&cmds, &[]).expect("apply") {
        assert!(matches!(o, ApplyOutcome::Appended { .. }), "{o:?}");
    }
    store.publish();
}

fn work(kind: &str, device: &str, at: &str, result: &str) -> EventInput {
    crate::event::parse_line(
        1,
        &serde_json::json!({"kind": kind, "device_id": device, "occurred_at": at,
            "event_id": format!("{kind}-{device}-{at}"),
            "components": [{"name": "result", "class": "maintenance", "value": result}]})
        .to_string(),
    )
    .expect("event")
    .event
}

fn pump(id: &str, at: &str) -> DeviceRecord {
    DeviceRecord {
        device_id: Some(id.into()),
        manufacturer: Some("Acme".into()),
        model: Some("P1".into()),
        location: Some("ICU-2".into()),
        life_support: Some(id.ends_with('1')),
        occurred_at: Some(at.into()),
        event_id: Some(format!("reg-{id}")),
        ..DeviceRecord::default()
    }
}

#[test]
fn state_due_reports_and_rebuild_after_install() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::from_bytes(&[3; 32]);
    let store = Store::open(&dir.path().join("a")).expect("open");
    let udi = "(01)00884838035249(21)PMP1";
    let mut reg = pump(udi, "2025-01-01T00:00:00Z");
    reg.calibration_interval_days = Some(90);
    append(
        &store,
        &key,
        vec![
            ModelRequest {
                manufacturer: "Acme".into(),
                model: "P1".into(),
                pm_interval_days: Some(180),
                calibration_interval_days: Some(365),
                event_id: None,
            }
            .to_event(),
            reg.to_event(udi, false),
            pump("pump-2", "2025-01-01T00:00:00Z").to_event("pump-2", false),
            work(
                "preventive-maintenance",
                udi,
                "2025-06-01T00:00:00Z",
                "pass",
            ),
            work("calibration", udi, "2025-06-01T00:00:00Z", "pass"),
            work(
                "preventive-maintenance",
                "pump-2",
                "2025-03-01T00:00:00Z",
                "pass",
            ),
        ],
    );
    let registry = Registry::default();
    let s = registry.read(&store).expect("read");
    let index = &s.index;
    let dev = &index.devices[udi];
    assert!(dev.registered);
    let u = dev.udi.as_ref().expect("udi");
    assert_eq!(
        (u.di.as_str(), u.pi.as_deref()),
        ("00884838035249", Some("(21)PMP1"))
    );
    // The model's PM interval, the device's own calibration interval.
    assert_eq!(index.pm_interval(dev), Some(180));
    assert_eq!(index.calibration_interval(dev), Some(90));
    let now = ms("2025-09-01T00:00:00Z");
    let items = due::device_due(index, dev, now, 30);
    let pm = items
        .iter()
        .find(|i| i.work == Work::PreventiveMaintenance)
        .expect("pm");
    // 2025-06-01 + 180 days = 2025-11-28: scheduled on 1 September.
    assert_eq!(
        (pm.state, pm.due_at.as_str()),
        (DueState::Scheduled, "2025-11-28T00:00:00Z")
    );
    let cal = items
        .iter()
        .find(|i| i.work == Work::Calibration)
        .expect("cal");
    assert_eq!(cal.state, DueState::Overdue, "{cal:?}");
    assert_eq!(
        due::calibration_state(index, dev, now),
        CalibrationState::CalibrationRequired
    );
    assert_eq!(
        due::calibration_state(index, dev, ms("2025-07-01T00:00:00Z")),
        CalibrationState::Calibrated
    );
    assert_eq!(
        due::calibration_state(index, &index.devices["pump-2"], now),
        CalibrationState::NotCalibrated
    );
    // pump-2's PM (2025-03-01 + 180 = 2025-08-28) is overdue; the list filters.
    let all = due::due_list(index, &Filter::default(), now, 30, false);
    assert_eq!(
        all.iter()
            .map(|i| (i.device_id.as_str(), i.work))
            .collect::<Vec<_>>(),
        // Most overdue first: 2025-08-28, then 2025-08-30 (2025-06-01 + 90 days).
        vec![
            ("pump-2", Work::PreventiveMaintenance),
            (udi, Work::Calibration)
        ]
    );
    let ls = Filter {
        risk: Some(RiskFilter::LifeSupport),
        ..Filter::default()
    };
    // The UDI pump is life support: its calibration only.
    assert_eq!(due::due_list(index, &ls, now, 30, false).len(), 1);
    let other = Filter {
        risk: Some(RiskFilter::Other),
        location: Some("icu-2".into()),
        ..Filter::default()
    };
    assert_eq!(due::due_list(index, &other, now, 30, true).len(), 1);
    // 2025: the udi pump's PM came due 2025-06-30 (done 06-01), then 2025-11-28 (missed);
    // pump-2's came due 2025-06-30 (done 03-01), then 2025-08-28 (missed).
    let r = report::pm_completion(
        index,
        ms("2025-01-01T00:00:00Z"),
        ms("2026-01-01T00:00:00Z"),
    );
    assert_eq!(
        (
            r.life_support.scheduled,
            r.life_support.completed,
            r.life_support.missed
        ),
        (2, 1, 1),
        "{r:?}"
    );
    assert_eq!(
        (r.other.scheduled, r.other.completed, r.other.missed),
        (2, 1, 1),
        "{r:?}"
    );
    assert_eq!(r.life_support.percent, 50.0);
    drop(s);

    // Another ledger installed under the registry (a snapshot): it is rebuilt from it.
    let other_dir = dir.path().join("b");
    let b = Store::open(&other_dir).expect("open b");
    append(
        &b,
        &key,
        vec![pump("pump-9", "2025-01-01T00:00:00Z").to_event("pump-9", false)],
    );
    let view = b.view().expect("view");
    let mut pairs = Vec::new();
    view.for_each_pair(|k, v| {
        pairs.push(Ok((k.to_vec(), v.to_vec())));
        Ok(())
    })
    .expect("pairs");
    store.install(pairs).expect("install");
    let s = registry.read(&store).expect("read");
    assert_eq!(s.rebuilds, 1);
    assert_eq!(s.index.devices.keys().collect::<Vec<_>>(), vec!["pump-9"]);
    let fresh = Registry::default();
    assert_eq!(fresh.read(&store).expect("read").index, s.index);
}

#[test]
fn aem_status_locate_and_recalls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::from_bytes(&[4; 32]);
    let store = Store::open(dir.path()).expect("open");
    let aem_strategy = Strategy::Aem {
        justification: "EQ56 risk analysis 2025-14".into(),
    };
    let aem = Some(aem_strategy.clone());
    let mut ct = pump("ct-1", "2025-01-01T00:00:00Z");
    ct.category = Some(Category::Imaging);
    ct.strategy = aem.clone();
    let mut young = pump("pump-3", "2025-01-01T00:00:00Z");
    young.strategy = aem.clone();
    let later = DeviceRecord {
        strategy: aem.clone(),
        event_id: Some("aem-pump-2".into()),
        ..DeviceRecord::default()
    };
    append(
        &store,
        &key,
        vec![
            ct.to_event("ct-1", false),
            young.to_event("pump-3", false),
            pump("pump-2", "2025-01-01T00:00:00Z").to_event("pump-2", false),
            work(
                "preventive-maintenance",
                "pump-2",
                "2025-03-01T00:00:00Z",
                "pass",
            ),
            work(
                "preventive-maintenance",
                "pump-2",
                "2025-09-01T00:00:00Z",
                "pass",
            ),
            later.to_event("pump-2", true),
            StatusRequest {
                status: Status::OutOfService,
                reason: Some("cracked housing".into()),
                occurred_at: None,
                event_id: None,
            }
            .to_event("pump-2"),
            LocateRequest {
                searched: "ICU-2 store room".into(),
                found: false,
                location: None,
                note: None,
                occurred_at: None,
                event_id: Some("l1".into()),
            }
            .to_event("pump-2"),
            RecallRequest {
                recall_id: "Z-1234-2025".into(),
                udi_di: Some("00884838035249".into()),
                title: Some("battery".into()),
                status: None,
                occurred_at: None,
                event_id: None,
            }
            .to_event(),
            pump("(01)00884838035249(21)X9", "2025-01-01T00:00:00Z")
                .to_event("(01)00884838035249(21)X9", false),
        ],
    );
    let registry = Registry::default();
    let s = registry.read(&store).expect("read");
    let d = &s.index.devices;
    // Registrations with AEM where it is not allowed are not applied.
    assert!(!d["ct-1"].registered);
    assert!(
        d["ct-1"].refused[0].reason.contains("imaging"),
        "{:?}",
        d["ct-1"].refused
    );
    assert!(!d["pump-3"].registered);
    assert!(d["pump-3"].refused[0].reason.contains("history"));
    // With two PMs on record, AEM is allowed.
    assert_eq!(d["pump-2"].strategy, aem_strategy);
    assert_eq!(d["pump-2"].status, Status::UnableToLocate);
    assert_eq!(d["pump-2"].locate_attempts.len(), 1);
    let recalls = report::open_recalls(&s.index);
    assert_eq!(recalls.len(), 1);
    assert_eq!(
        recalls[0].devices,
        vec!["(01)00884838035249(21)X9".to_owned()]
    );
}

fn erasure(device: &str, seq: u64, name: &str) -> EventInput {
    EventInput {
        kind: ledger_node::entry::EventKind::Erasure,
        device_id: device.into(),
        occurred_at: None,
        components: Vec::new(),
        corrects: None,
        event_id: Some(ledger_node::entry::erasure_event_id(seq, name)),
    }
}

/// An erasure of a value the index already read refreshes the index at once (not only after a
/// restart): the device is derived again from its entries as they are now, and the result is
/// what a fresh index of the same ledger (a restarted gateway) holds; so is an erasure in a
/// model's entry, and an erasure read in the same pass as its target.
#[test]
fn an_erasure_refreshes_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::from_bytes(&[6; 32]);
    let store = Store::open(dir.path()).expect("open");
    let model = ModelRequest {
        manufacturer: "Acme".into(),
        model: "P1".into(),
        pm_interval_days: Some(90),
        calibration_interval_days: Some(365),
        event_id: Some("model-p1".into()),
    };
    let mut reg = pump("pump-2", "2025-01-01T00:00:00Z");
    reg.serial = Some("SN-1".into());
    append(
        &store,
        &key,
        vec![
            model.to_event(),
            reg.to_event("pump-2", false),
            work("calibration", "pump-2", "2025-06-01T00:00:00Z", "fail"),
        ],
    );
    let registry = Registry::default();
    let now = ms("2025-07-01T00:00:00Z");
    {
        let s = registry.read(&store).expect("read");
        let dev = &s.index.devices["pump-2"];
        assert_eq!(dev.location.as_deref(), Some("ICU-2"));
        assert_eq!(
            due::calibration_state(&s.index, dev, now),
            CalibrationState::NotCalibrated
        );
    }
    // The location of the registration and the failed result of the calibration are erased.
    append(
        &store,
        &key,
        vec![
            erasure("pump-2", 1, "location"),
            erasure("pump-2", 2, "result"),
        ],
    );
    let s = registry.read(&store).expect("read");
    let dev = &s.index.devices["pump-2"];
    assert_eq!(dev.location, None, "the erased location is gone at once");
    assert_eq!(dev.serial.as_deref(), Some("SN-1"));
    assert_eq!(
        due::calibration_state(&s.index, dev, now),
        CalibrationState::Calibrated,
        "a calibration whose failed result is erased reads as done"
    );
    assert_eq!(s.refolds, 2);
    assert_eq!(
        Registry::default().read(&store).expect("read").index,
        s.index,
        "what a restarted gateway derives"
    );
    drop(s);
    // The model's interval is erased: the model is read again, the devices see no interval.
    append(
        &store,
        &key,
        vec![erasure(&model.to_event().device_id, 0, "pm_interval_days")],
    );
    let s = registry.read(&store).expect("read");
    let dev = &s.index.devices["pump-2"];
    assert_eq!(s.index.pm_interval(dev), None);
    assert_eq!(s.index.calibration_interval(dev), Some(365));
    assert_eq!(s.rebuilds, 1);
    assert_eq!(
        Registry::default().read(&store).expect("read").index,
        s.index
    );
}

/// Kept answers are bounded by bytes as well as by count: three answers of 3 MiB do not all
/// stay (at most 8 MiB), the newest does, and one larger than the bound is never kept.
#[test]
fn kept_answers_are_bounded_by_bytes() {
    let r = Registry::default();
    let made = std::cell::Cell::new(0);
    let ask = |key: &str, len: usize| {
        r.answer::<()>(key.to_owned(), || {
            made.set(made.get() + 1);
            Ok(vec![0; len])
        })
        .expect("answer")
        .len()
    };
    for k in ["a", "b", "c"] {
        assert_eq!(ask(k, 3 << 20), 3 << 20);
    }
    assert_eq!(made.get(), 3);
    ask("c", 3 << 20);
    ask("b", 3 << 20);
    assert_eq!(made.get(), 3, "the two newest answers are kept");
    ask("a", 3 << 20);
    assert_eq!(made.get(), 4, "the oldest answer was let go");
    ask("big", 9 << 20);
    ask("big", 9 << 20);
    assert_eq!(made.get(), 6, "an answer over the bound is not kept");
    ask("a", 3 << 20);
    assert_eq!(made.get(), 6, "nor did it push out the ones kept");
}
