//! Recent telemetry per device for the staff view: the last value of each metric and, over the
//! last `window` (24 h by default), one min/max/last bucket per `bucket` (10 min). Memory is
//! bounded: at most `max_devices` devices, [`MAX_METRICS`] metrics each, window / bucket + 1
//! buckets per metric. Raw samples never go to the ledger; this is all the gateway keeps of them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use device_adapters::{Telemetry, Value};
use serde::Serialize;

/// Most metrics kept per device (a device sending more names is not believed further).
pub const MAX_METRICS: usize = 256;

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Start of the bucket, Unix seconds.
    pub start: i64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    pub count: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub unit: Option<String>,
    pub last: Value,
    /// RFC 3339 time of `last`.
    pub last_at: String,
    /// Numeric values only, oldest first.
    pub buckets: VecDeque<Bucket>,
}

/// What the staff view shows for one device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceTelemetry {
    pub device_id: String,
    pub window_s: u64,
    pub bucket_s: u64,
    pub metrics: BTreeMap<String, Series>,
}

#[derive(Debug)]
pub struct Recent {
    window_s: i64,
    bucket_s: i64,
    max_devices: usize,
    devices: Mutex<HashMap<String, BTreeMap<String, Series>>>,
}

impl Recent {
    pub fn new(window_s: u64, bucket_s: u64, max_devices: usize) -> Recent {
        Recent {
            window_s: i64::try_from(window_s).unwrap_or(i64::MAX),
            bucket_s: i64::try_from(bucket_s.max(1)).unwrap_or(i64::MAX),
            max_devices,
            devices: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps one value.
    pub fn record(&self, t: &Telemetry) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if !devices.contains_key(&t.device_id) && devices.len() >= self.max_devices {
            return;
        }
        let metrics = devices.entry(t.device_id.clone()).or_default();
        if !metrics.contains_key(&t.metric) && metrics.len() >= MAX_METRICS {
            return;
        }
        let at = t
            .timestamp
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let s = metrics.entry(t.metric.clone()).or_insert_with(|| Series {
            unit: t.unit.clone(),
            last: t.value.clone(),
            last_at: at.clone(),
            buckets: VecDeque::new(),
        });
        s.last = t.value.clone();
        s.last_at = at;
        let Some(v) = t.value.as_f64().filter(|v| v.is_finite()) else {
            return;
        };
        let secs = t.timestamp.unix_timestamp();
        let start = secs - secs.rem_euclid(self.bucket_s);
        match s.buckets.back_mut() {
            Some(b) if b.start == start => {
                b.min = b.min.min(v);
                b.max = b.max.max(v);
                b.last = v;
                b.count = b.count.saturating_add(1);
            }
            // A value older than the newest bucket (late redelivery) only updates `last`.
            Some(b) if b.start > start => {}
            _ => s.buckets.push_back(Bucket {
                start,
                min: v,
                max: v,
                last: v,
                count: 1,
            }),
        }
        let oldest = start.saturating_sub(self.window_s);
        let cap = (self.window_s / self.bucket_s + 1) as usize;
        while s
            .buckets
            .front()
            .is_some_and(|b| b.start < oldest || s.buckets.len() > cap)
        {
            s.buckets.pop_front();
        }
    }

    /// One device's recent telemetry, if any was seen.
    pub fn device(&self, id: &str) -> Option<DeviceTelemetry> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.get(id).map(|m| DeviceTelemetry {
            device_id: id.to_owned(),
            window_s: self.window_s as u64,
            bucket_s: self.bucket_s as u64,
            metrics: m.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use device_adapters::{Source, TimestampSource};
    use time::OffsetDateTime;

    use super::*;

    #[test]
    fn buckets_are_bounded_by_the_window() {
        let r = Recent::new(3600, 600, 1);
        for i in 0..100_000i64 {
            let ts = OffsetDateTime::from_unix_timestamp(1_750_000_000 + i).expect("time");
            r.record(&Telemetry {
                device_id: "p".into(),
                metric: "flow".into(),
                value: Value::Float(i as f64),
                unit: None,
                timestamp: ts,
                timestamp_source: TimestampSource::Device,
                received_at: ts,
                source: Source::Mqtt { topic: "t".into() },
                seq: 0,
            });
        }
        let d = r.device("p").expect("device");
        let s = &d.metrics["flow"];
        assert!(s.buckets.len() <= 7, "{}", s.buckets.len());
        assert_eq!(s.last, Value::Float(99_999.0));
        assert_eq!(s.buckets.back().map(|b| b.last), Some(99_999.0));
        // A second device does not fit.
        r.record(&Telemetry {
            device_id: "q".into(),
            ..d_telemetry()
        });
        assert!(r.device("q").is_none());
    }

    fn d_telemetry() -> Telemetry {
        Telemetry {
            device_id: "x".into(),
            metric: "m".into(),
            value: Value::Bool(true),
            unit: None,
            timestamp: OffsetDateTime::UNIX_EPOCH,
            timestamp_source: TimestampSource::Gateway,
            received_at: OffsetDateTime::UNIX_EPOCH,
            source: Source::Mqtt { topic: "t".into() },
            seq: 0,
        }
    }
}
