//! The JSON Lines import format: one maintenance event per line, as a hospital exports its
//! existing history from a CMMS. The schema is documented in `docs/import-format.md`.

use ledger_node::entry::{ComponentInput, DisclosureClass, EventInput, EventKind};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One line of an import file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    event_id: Option<String>,
    kind: String,
    device_id: String,
    occurred_at: Option<String>,
    #[serde(default)]
    components: Vec<LineComponent>,
    /// Sequence number of the corrected entry, when it is already in the ledger.
    corrects: Option<u64>,
    /// Event id of the corrected event (earlier in the file or already in the ledger).
    corrects_event_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineComponent {
    name: String,
    class: String,
    value: serde_json::Value,
}

/// A parsed, validated line.
#[derive(Debug, Clone)]
pub struct ImportEvent {
    /// 1-based line number in the file.
    pub line: usize,
    pub event: EventInput,
    /// Event id of the corrected event, to resolve to a sequence number at append time.
    pub corrects_event_id: Option<String>,
}

/// A refused line.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// Parses one line (1-based `line` number). An event without an `event_id` gets one derived from
/// the SHA-256 of its line, so importing the same file twice adds nothing the second time.
pub fn parse_line(line: usize, text: &str) -> Result<ImportEvent, LineError> {
    let err = |reason: String| LineError { line, reason };
    let l: Line = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    let kind = EventKind::parse(&l.kind).ok_or_else(|| {
        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        err(format!(
            "unknown kind {:?} (known: {})",
            l.kind,
            known.join(", ")
        ))
    })?;
    let mut components = Vec::with_capacity(l.components.len());
    for c in l.components {
        let class = DisclosureClass::parse(&c.class).ok_or_else(|| {
            err(format!(
                "component {:?}: unknown class {:?} (known: device, maintenance, patient, financial)",
                c.name, c.class
            ))
        })?;
        components.push(ComponentInput {
            name: c.name,
            class,
            value: c.value.to_string(),
        });
    }
    if l.corrects.is_some() && l.corrects_event_id.is_some() {
        return Err(err("give corrects or corrects_event_id, not both".into()));
    }
    let event_id = match l.event_id {
        Some(id) => id,
        None => format!(
            "import:{}",
            hex::encode(Sha256::digest(text.trim().as_bytes()))
        ),
    };
    let event = EventInput {
        kind,
        device_id: l.device_id,
        occurred_at: l.occurred_at,
        components,
        corrects: l.corrects,
        event_id: Some(event_id),
    }
    .validate()
    .map_err(|e| err(e.to_string()))?;
    Ok(ImportEvent {
        line,
        event,
        corrects_event_id: l.corrects_event_id,
    })
}

/// Parses a whole file; blank lines and lines starting with `#` are skipped. Returns every event
/// or the first bad line: an import is all or nothing.
pub fn parse_file(text: &str) -> Result<Vec<ImportEvent>, LineError> {
    let mut out = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let ev = parse_line(i + 1, t)?;
        if let Some(id) = &ev.event.event_id {
            if !ids.insert(id.clone()) {
                return Err(LineError {
                    line: i + 1,
                    reason: format!("event_id {id:?} appears twice in the file"),
                });
            }
        }
        out.push(ev);
    }
    Ok(out)
}

/// Unix milliseconds as RFC 3339.
pub fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_line() {
        let ev = parse_line(
            1,
            r#"{"event_id":"wo-1","kind":"calibration","device_id":"pump-1","occurred_at":"2025-03-01T10:00:00+01:00","components":[{"name":"result","class":"maintenance","value":"pass"},{"name":"cost","class":"financial","value":{"eur":90}}]}"#,
        )
        .expect("valid");
        assert_eq!(ev.event.kind, EventKind::Calibration);
        assert_eq!(
            ev.event.occurred_at.as_deref(),
            Some("2025-03-01T09:00:00Z")
        );
        assert_eq!(ev.event.components[1].value, r#"{"eur":90}"#);
    }

    #[test]
    fn malformed_lines_name_line_and_reason() {
        let cases = [
            ("{", "EOF"),
            (r#"{"kind":"calibration"}"#, "missing field `device_id`"),
            (
                r#"{"kind":"tuning","device_id":"d"}"#,
                "unknown kind \"tuning\"",
            ),
            (r#"{"kind":"repair","device_id":""}"#, "device_id is empty"),
            (
                r#"{"kind":"repair","device_id":"d","occurred_at":"yesterday"}"#,
                "not an RFC 3339",
            ),
            (
                r#"{"kind":"repair","device_id":"d","colour":"red"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"kind":"repair","device_id":"d","components":[{"name":"x","class":"secret","value":1}]}"#,
                "unknown class \"secret\"",
            ),
            (
                r#"{"kind":"repair","device_id":"d","corrects":1,"corrects_event_id":"a"}"#,
                "not both",
            ),
        ];
        for (text, want) in cases {
            let e = parse_line(7, text).expect_err(text);
            assert_eq!(e.line, 7);
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
        let file = "{\"kind\":\"repair\",\"device_id\":\"a\"}\n\n{\"kind\":\"repair\",\"device_id\":\"a\"}\n";
        let e = parse_file(file).expect_err("duplicate");
        assert_eq!(e.line, 3);
    }
}
