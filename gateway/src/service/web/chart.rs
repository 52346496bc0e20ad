//! The device page's telemetry chart: the last 24 hours of each metric as an SVG drawn by the
//! template (no script): a line through each bucket's last value and a band from its minimum to
//! its maximum. Only coordinates are computed here; names and values are escaped by askama.

use crate::service::telemetry::recent::DeviceTelemetry;

/// Drawing area, in SVG user units.
pub const WIDTH: f64 = 600.0;
pub const HEIGHT: f64 = 120.0;

/// One metric's chart.
#[derive(Debug, Clone)]
pub struct Chart {
    pub metric: String,
    pub unit: String,
    /// The last value, as text.
    pub last: String,
    pub last_at: String,
    /// `x,y x,y …` of the line through the buckets' last values.
    pub line: String,
    /// `x,y …` of the min/max band (a closed polygon).
    pub band: String,
    pub min: String,
    pub max: String,
    /// Buckets drawn (none for a metric without numeric values).
    pub buckets: usize,
    /// The window shown, hours.
    pub hours: u64,
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The charts of a device's recent telemetry, `now_s` being the right edge.
pub fn charts(t: &DeviceTelemetry, now_s: i64) -> Vec<Chart> {
    let window = t.window_s.max(1) as f64;
    let left = now_s as f64 - window;
    t.metrics
        .iter()
        .map(|(name, s)| {
            let (min, max) = s.buckets.iter().fold((f64::MAX, f64::MIN), |(lo, hi), b| {
                (lo.min(b.min), hi.max(b.max))
            });
            let span = if max > min { max - min } else { 1.0 };
            let x = |start: i64| {
                let mid = start as f64 + t.bucket_s as f64 / 2.0;
                ((mid - left) / window * WIDTH).clamp(0.0, WIDTH)
            };
            let y = |v: f64| HEIGHT - 4.0 - (v - min) / span * (HEIGHT - 8.0);
            let line = s
                .buckets
                .iter()
                .map(|b| format!("{:.1},{:.1}", x(b.start), y(b.last)))
                .collect::<Vec<_>>()
                .join(" ");
            let upper = s
                .buckets
                .iter()
                .map(|b| format!("{:.1},{:.1}", x(b.start), y(b.max)));
            let lower = s
                .buckets
                .iter()
                .rev()
                .map(|b| format!("{:.1},{:.1}", x(b.start), y(b.min)));
            let band = upper.chain(lower).collect::<Vec<_>>().join(" ");
            let numeric = !s.buckets.is_empty();
            Chart {
                metric: name.clone(),
                unit: s.unit.clone().unwrap_or_default(),
                last: serde_json::to_string(&s.last).unwrap_or_default(),
                last_at: s.last_at.clone(),
                line,
                band,
                min: if numeric { fmt(min) } else { String::new() },
                max: if numeric { fmt(max) } else { String::new() },
                buckets: s.buckets.len(),
                hours: t.window_s / 3600,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};

    use device_adapters::Value;

    use super::*;
    use crate::service::telemetry::recent::{Bucket, Series};

    #[test]
    fn points_stay_inside_the_drawing() {
        let now = 1_750_000_000;
        let buckets: VecDeque<Bucket> = (0..3)
            .map(|i| Bucket {
                start: now - 3600 + i * 600,
                min: 10.0 + i as f64,
                max: 20.0 + i as f64,
                last: 15.0,
                count: 4,
            })
            .collect();
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "flow".to_string(),
            Series {
                unit: Some("ml/h".into()),
                last: Value::Float(15.0),
                last_at: "2025-06-15T15:06:40Z".into(),
                buckets,
            },
        );
        metrics.insert(
            "door".to_string(),
            Series {
                unit: None,
                last: Value::Bool(true),
                last_at: "2025-06-15T15:06:40Z".into(),
                buckets: VecDeque::new(),
            },
        );
        let t = DeviceTelemetry {
            device_id: "p".into(),
            window_s: 86_400,
            bucket_s: 600,
            metrics,
        };
        let c = charts(&t, now);
        assert_eq!(c.len(), 2);
        let door = &c[0];
        assert_eq!((door.metric.as_str(), door.buckets), ("door", 0));
        assert!(door.line.is_empty() && door.min.is_empty());
        let flow = &c[1];
        assert_eq!((flow.min.as_str(), flow.max.as_str()), ("10", "22"));
        assert_eq!(flow.hours, 24);
        for p in flow.line.split(' ').chain(flow.band.split(' ')) {
            let (x, y) = p.split_once(',').expect("x,y");
            let (x, y): (f64, f64) = (x.parse().expect("x"), y.parse().expect("y"));
            assert!(
                (0.0..=WIDTH).contains(&x) && (0.0..=HEIGHT).contains(&y),
                "{p}"
            );
        }
        assert_eq!(flow.band.split(' ').count(), 6);
    }
}
