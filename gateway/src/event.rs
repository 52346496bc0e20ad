//! The JSON Lines import format: one maintenance event per line, as a hospital exports its
//! existing history from a CMMS. The schema is documented in `docs/import-format.md`.

use ledger_node::entry::{
    ComponentInput, DisclosureClass, EventInput, EventKind, ERASURE_ID_PREFIX, SIGNATURE_COMPONENT,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The largest event request, in bytes of JSON: one line of an import file or the body of
/// `POST /v1/events`. Entries themselves allow more (docs/ledger-format.md); a maintenance event
/// of 1 MiB is already far beyond any a CMMS exports, and the API reads bodies up to this size
/// only, so one request cannot hold tens of MiB of a gateway's memory.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One maintenance event as a client sends it: a line of an import file, the body of
/// `POST /v1/events`, or what the CLI records. Every way in goes through [`parse_line`].
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// A stable id: an event recorded again with the same id is a no-op. Derived from the line
    /// when missing (import) or random (API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// calibration, repair, preventive-maintenance, inspection, alarm, firmware-update,
    /// status-change, device-registered, device-decommissioned, certificate-issued,
    /// certificate-revoked.
    pub kind: String,
    pub device_id: String,
    /// RFC 3339; normalised to UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    #[serde(default)]
    pub components: Vec<ComponentRequest>,
    /// Sequence number of the corrected entry, when it is already in the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrects: Option<u64>,
    /// Event id of the corrected event (earlier in the file or already in the ledger; import
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrects_event_id: Option<String>,
    /// API only: the meaning of the staff member's signature, `performed` (the default) or
    /// `corrected` (implied by `corrects`). Reviews and approvals are records of their own
    /// (`POST /v1/entries/{seq}/signatures`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meaning: Option<String>,
    /// API only: why an entry is corrected (required with `corrects` for staff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One component of an event: a named value with its disclosure class.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ComponentRequest {
    pub name: String,
    /// device, maintenance, patient or financial.
    pub class: String,
    /// Any JSON value.
    pub value: serde_json::Value,
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
    if text.len() > MAX_EVENT_BYTES {
        return Err(err(format!(
            "the event is {} bytes, more than the {MAX_EVENT_BYTES} an event may have",
            text.len()
        )));
    }
    let l: EventRequest = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    let fallback_id = || {
        format!(
            "import:{}",
            hex::encode(Sha256::digest(text.trim().as_bytes()))
        )
    };
    l.into_event(line, fallback_id)
}

impl EventRequest {
    /// The request that records `event` (the CLI sends what it built as an entry input through
    /// the API). Every field is kept; a component value that is not JSON is an error, not null.
    pub fn from_input(event: &EventInput) -> Result<Self, String> {
        let components = event
            .components
            .iter()
            .map(|c| {
                serde_json::from_str(&c.value)
                    .map(|value| ComponentRequest {
                        name: c.name.clone(),
                        class: c.class.as_str().to_owned(),
                        value,
                    })
                    .map_err(|e| format!("component {:?}: value is not JSON: {e}", c.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            event_id: event.event_id.clone(),
            kind: event.kind.as_str().to_owned(),
            device_id: event.device_id.clone(),
            occurred_at: event.occurred_at.clone(),
            components,
            corrects: event.corrects,
            corrects_event_id: None,
            meaning: None,
            reason: None,
        })
    }

    /// Checks the request and turns it into the ledger's event input; `fallback_id` names the
    /// event when the request carries no `event_id`.
    pub fn into_event(
        self,
        line: usize,
        fallback_id: impl FnOnce() -> String,
    ) -> Result<ImportEvent, LineError> {
        let err = |reason: String| LineError { line, reason };
        let l = self;
        let kind = EventKind::parse(&l.kind).ok_or_else(|| {
            let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            err(format!(
                "unknown kind {:?} (known: {})",
                l.kind,
                known.join(", ")
            ))
        })?;
        // Records of these kinds carry what only the gateway writes: a signature it builds from
        // the signer's certificate, or an erasure's target.
        if matches!(
            kind,
            EventKind::Review | EventKind::Approval | EventKind::Erasure
        ) {
            return Err(err(format!(
                "kind {} is recorded through the API (POST /v1/entries/{{seq}}/signatures or \
                 .../components/{{name}}/erase), not as an event",
                kind.as_str()
            )));
        }
        if l.meaning.is_some() || l.reason.is_some() {
            return Err(err(
                "meaning and reason are given to the API, which knows the signer (an import \
                 has none)"
                    .into(),
            ));
        }
        if l.event_id
            .as_deref()
            .is_some_and(|id| id.starts_with(ERASURE_ID_PREFIX))
        {
            return Err(err(format!(
                "event ids starting with {ERASURE_ID_PREFIX:?} are reserved for erasures"
            )));
        }
        let mut components = Vec::with_capacity(l.components.len());
        for c in l.components {
            if c.name == SIGNATURE_COMPONENT {
                return Err(err(format!(
                    "component name {SIGNATURE_COMPONENT:?} is reserved: the gateway writes the \
                     signature from the signer's certificate"
                )));
            }
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
            None => fallback_id(),
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
}

/// Reads an import file one event line at a time, each at most [`MAX_EVENT_BYTES`], so a file of
/// any size (or a line that never ends) takes bounded memory. Blank lines and lines starting with
/// `#` are skipped; line numbers are 1-based and count every line.
pub struct EventLines<R> {
    reader: R,
    line: usize,
    buf: Vec<u8>,
}

impl<R: std::io::BufRead> EventLines<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            line: 0,
            buf: Vec::new(),
        }
    }

    /// The next event line, parsed.
    pub fn next_event(&mut self) -> Result<Option<ImportEvent>, LineError> {
        use std::io::{BufRead, Read};
        loop {
            self.line += 1;
            let line = self.line;
            self.buf.clear();
            // One byte more than an event may have, and its line end.
            let limit = MAX_EVENT_BYTES as u64 + 2;
            let n = (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| LineError {
                    line,
                    reason: format!("cannot read: {e}"),
                })?;
            if n == 0 {
                return Ok(None);
            }
            if self.buf.len() as u64 == limit && !self.buf.ends_with(b"\n") {
                // The rest of the line is skipped (in bounded pieces), so that a reader that
                // goes on after this error starts at the next line.
                loop {
                    self.buf.clear();
                    let n = (&mut self.reader)
                        .take(1 << 16)
                        .read_until(b'\n', &mut self.buf)
                        .map_err(|e| LineError {
                            line,
                            reason: format!("cannot read: {e}"),
                        })?;
                    if n == 0 || self.buf.ends_with(b"\n") {
                        break;
                    }
                }
                return Err(LineError {
                    line,
                    reason: format!(
                        "the line is longer than the {MAX_EVENT_BYTES} bytes an event may have"
                    ),
                });
            }
            let text = std::str::from_utf8(&self.buf).map_err(|e| LineError {
                line,
                reason: format!("not UTF-8: {e}"),
            })?;
            let t = text.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            return parse_line(line, t).map(Some);
        }
    }
}

/// Parses a whole file; blank lines and lines starting with `#` are skipped. Returns every event
/// or the first bad line: an import is all or nothing.
pub fn parse_file(text: &str) -> Result<Vec<ImportEvent>, LineError> {
    let mut lines = EventLines::new(text.as_bytes());
    let mut out = Vec::new();
    let mut ids = std::collections::HashSet::new();
    while let Some(ev) = lines.next_event()? {
        if let Some(id) = &ev.event.event_id {
            if !ids.insert(id.clone()) {
                return Err(LineError {
                    line: ev.line,
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
