//! Recording on a running gateway: maintenance events with their 21 CFR Part 11 signature
//! ([`record_event`]), reviews and approvals of earlier records ([`sign_entry`]), and the
//! erasure of a component's value ([`erase_component`]); and how an entry reads with its
//! signature and corrections ([`entry_view`]). Plain functions over a [`Node`] and the caller's
//! [`Identity`], so the HTTP API and the web page share them; the API maps [`RecordError`] to
//! problem documents.

use std::collections::BTreeSet;

use certs::{Identity, Profile, StaffRole};
use ledger_node::entry::{
    erasure_event_id, ComponentInput, DisclosureClass, EventInput, EventKind, SIGNATURE_COMPONENT,
};
use ledger_node::store::{OpeningState, Store};
use ledger_node::{ApplyOutcome, Command};
use serde::Serialize;
use serde_json::json;

use crate::event::EventRequest;
use crate::records::{audience, ClassReaders, Manifestation, Meaning, SignError};
use crate::service::node::{Node, WriteError};

/// What was recorded.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Recorded {
    /// Its sequence number in the ledger.
    pub seq: u64,
    /// Its RFC 9162 leaf hash, hex.
    pub leaf: String,
    /// True when an event with the same `event_id` was already recorded (nothing was added).
    pub duplicate: bool,
    /// The gateway that took the request.
    pub node_id: u64,
    /// The signature manifestation the record carries (staff records): printed name, role,
    /// meaning; the time is `recorded_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<Manifestation>,
    /// When the ledger recorded it (RFC 3339, UTC).
    pub recorded_at: String,
    /// Which staff roles will read each class of what was recorded (the others see only the
    /// commitments).
    pub readers: Vec<ClassReaders>,
}

/// Why a record is refused; `field` names the part of the request at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The caller may not do this (403).
    #[error("{reason}")]
    Forbidden {
        field: Option<&'static str>,
        reason: String,
    },
    /// The request is wrong in itself or against the ledger (422).
    #[error("{reason}")]
    Invalid {
        field: Option<&'static str>,
        reason: String,
    },
    /// The entry or component it names does not exist (404).
    #[error("{reason}")]
    NotFound {
        field: Option<&'static str>,
        reason: String,
    },
    /// Raft could not take the write.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The store failed.
    #[error("{0}")]
    Internal(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RecordError {
    RecordError::Invalid {
        field: Some(field),
        reason: reason.into(),
    }
}

fn forbidden(field: Option<&'static str>, reason: impl Into<String>) -> RecordError {
    RecordError::Forbidden {
        field,
        reason: reason.into(),
    }
}

fn internal(e: impl std::fmt::Display) -> RecordError {
    RecordError::Internal(e.to_string())
}

impl From<SignError> for RecordError {
    fn from(e: SignError) -> Self {
        forbidden(None, e.to_string())
    }
}

/// Kinds a device may record about itself; everything else is staff's or a gateway's to record.
const DEVICE_KINDS: [EventKind; 3] = [
    EventKind::Alarm,
    EventKind::StatusChange,
    EventKind::FirmwareUpdate,
];

fn who(id: &Identity) -> String {
    format!("{} {}", id.profile, id.id)
}

pub(crate) fn refuse_on_learner(node: &Node) -> Result<(), RecordError> {
    if node.is_learner() {
        return Err(forbidden(
            None,
            format!(
                "gateway {} is a read-only learner: record events on a voting gateway",
                node.id
            ),
        ));
    }
    Ok(())
}

/// The author identity an entry names: the certificate's SHA-256 fingerprint, or
/// `web:<account>` for a staff member signed in on the web page with an account's password
/// (an identity without a certificate has an empty fingerprint: `web::auth::account_identity`).
pub fn author_of(id: &Identity) -> String {
    if id.fingerprint.is_empty() {
        format!("web:{}", id.id)
    } else {
        format!("sha256:{}", id.fingerprint)
    }
}

/// What names a signer in the event id of a review or approval: the certificate's fingerprint
/// (as before web accounts existed), or the account's author string.
fn signer_key(id: &Identity) -> String {
    if id.fingerprint.is_empty() {
        author_of(id)
    } else {
        id.fingerprint.clone()
    }
}

/// Entry `seq` with its openings, or `NotFound` naming `field`.
fn existing(
    store: &Store,
    seq: u64,
    field: &'static str,
) -> Result<(ledger_node::Entry, Vec<Option<ledger_node::entry::Opening>>), RecordError> {
    let size = store.size();
    if seq >= size {
        return Err(RecordError::NotFound {
            field: Some(field),
            reason: format!("no entry {seq}: the ledger has {size} entries"),
        });
    }
    Ok((
        store.entry(seq).map_err(internal)?,
        store.openings(seq).map_err(internal)?,
    ))
}

/// Records a maintenance event (`POST /v1/events`). Staff (biomed, supervisor, admin) and
/// gateways record any device's events; a device records alarms, status changes and firmware
/// updates about itself only; certificate events are for administrators. A staff record carries
/// the signature manifestation with `meaning` performed, or corrected with `reason` when it
/// corrects an earlier entry, which must be about the same device.
pub async fn record_event(
    node: &Node,
    caller: &Identity,
    mut req: EventRequest,
) -> Result<Recorded, RecordError> {
    refuse_on_learner(node)?;
    if req.corrects_event_id.is_some() {
        return Err(invalid(
            "corrects_event_id",
            "use corrects (a sequence number) in the API",
        ));
    }
    let meaning = req.meaning.take();
    let reason = req.reason.take();
    let meaning = match meaning.as_deref() {
        None => None,
        Some(m) => match Meaning::parse(m) {
            Some(Meaning::Reviewed | Meaning::Approved) => {
                return Err(invalid(
                    "meaning",
                    format!(
                        "a record {m} is a record of its own: POST /v1/entries/{{seq}}/signatures \
                         with the entry it signs"
                    ),
                ))
            }
            Some(Meaning::Erased) => {
                return Err(invalid(
                    "meaning",
                    "an erasure is a record of its own: POST \
                     /v1/entries/{seq}/components/{name}/erase (administrators)",
                ))
            }
            Some(m) => Some(m),
            None => {
                return Err(invalid(
                    "meaning",
                    format!("unknown meaning {m:?} (performed, corrected)"),
                ))
            }
        },
    };
    let meaning = match (req.corrects, meaning) {
        (Some(_), None | Some(Meaning::Corrected)) => Meaning::Corrected,
        (Some(_), Some(_)) => {
            return Err(invalid(
                "meaning",
                "an event that corrects another has the meaning corrected",
            ))
        }
        (None, Some(Meaning::Corrected)) => {
            return Err(invalid(
                "corrects",
                "meaning corrected needs corrects: the entry it corrects",
            ))
        }
        (None, _) => Meaning::Performed,
    };
    let staff = caller.profile == Profile::Staff;
    let reason = reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    match (meaning, &reason) {
        (Meaning::Corrected, None) if staff => {
            return Err(invalid(
                "reason",
                "a correction gives its reason (21 CFR Part 11 §11.50: the meaning of a \
                 signature; §11.10(e): changes do not obscure the original)",
            ))
        }
        (Meaning::Performed, Some(_)) => {
            return Err(invalid("reason", "a reason is given only with corrects"))
        }
        _ => {}
    }
    // Without an id of its own, an event gets a random one, so that retries inside the gateway
    // (leader changes) can never record it twice.
    if req.event_id.is_none() {
        req.event_id = Some(format!("api:{}", hex::encode(rand::random::<[u8; 16]>())));
    }
    let mut event = req
        .into_event(1, String::new)
        .map_err(|e| RecordError::Invalid {
            field: None,
            reason: e.reason,
        })?
        .event;
    // Registry entries go through the registry's routes, which check the maintenance rules.
    crate::service::registry::check_not_registry(&event).map_err(|e| invalid("components", e))?;
    let kind = event.kind;
    if caller.profile == Profile::Device {
        if event.device_id != caller.id {
            return Err(forbidden(
                Some("device_id"),
                format!(
                    "{} may record events about itself only, not about {:?}",
                    who(caller),
                    event.device_id
                ),
            ));
        }
        if !DEVICE_KINDS.contains(&kind) {
            return Err(forbidden(
                Some("kind"),
                format!(
                    "{} may not record {} events (a device records alarm, status-change and \
                     firmware-update)",
                    who(caller),
                    kind.as_str()
                ),
            ));
        }
    }
    // Identity events change who the gateways trust: only gateways and administrators record them.
    let admin = caller.profile == Profile::Gateway
        || (staff && caller.staff_role() == Some(StaffRole::Admin));
    if matches!(
        kind,
        EventKind::CertificateIssued | EventKind::CertificateRevoked
    ) && !admin
    {
        return Err(forbidden(
            Some("kind"),
            format!("{} may not record {} events", who(caller), kind.as_str()),
        ));
    }
    if let Some(c) = event.corrects {
        let (target, _) = existing(&node.store, c, "corrects")?;
        if target.body.device_id != event.device_id {
            return Err(invalid(
                "corrects",
                format!(
                    "entry {c} is about device {:?}, not {:?}: a correction concerns the same \
                     device as the entry it corrects",
                    target.body.device_id, event.device_id
                ),
            ));
        }
    }
    let signature = if staff {
        let m = Manifestation::new(caller, meaning, None, reason)?;
        event.components.push(m.component());
        Some(m)
    } else {
        None
    };
    submit(node, caller, event, signature).await
}

/// Records `staff`'s review or approval of entry `seq` (`POST /v1/entries/{seq}/signatures`):
/// a record of its own, of kind review or approval, about the same device, whose signature
/// names the entry. Refused for the performer of the entry (the same certificate, or the same
/// staff id on another one); approval is for supervisors and administrators. Recording the same
/// signer's same meaning of the same entry again is a duplicate.
pub async fn sign_entry(
    node: &Node,
    signer: &Identity,
    seq: u64,
    meaning: Meaning,
    comment: Option<String>,
) -> Result<Recorded, RecordError> {
    refuse_on_learner(node)?;
    let kind = match meaning {
        Meaning::Reviewed => EventKind::Review,
        Meaning::Approved => EventKind::Approval,
        Meaning::Performed | Meaning::Corrected | Meaning::Erased => {
            return Err(invalid(
                "meaning",
                format!(
                    "a signature of an earlier entry means reviewed or approved, not {}",
                    meaning.as_str()
                ),
            ))
        }
    };
    let manifestation = Manifestation::new(signer, meaning, Some(seq), None)?;
    let role = signer.staff_role();
    let may = match meaning {
        Meaning::Approved => matches!(role, Some(StaffRole::Supervisor | StaffRole::Admin)),
        _ => matches!(
            role,
            Some(StaffRole::Biomed | StaffRole::Supervisor | StaffRole::Admin)
        ),
    };
    if !may {
        return Err(forbidden(
            Some("meaning"),
            format!(
                "{} ({}) may not sign a record as {} (review: biomed, supervisor, admin; \
                 approval: supervisor, admin)",
                who(signer),
                manifestation.role,
                meaning.as_str()
            ),
        ));
    }
    let (target, openings) = existing(&node.store, seq, "seq")?;
    if matches!(
        target.body.kind,
        EventKind::Review | EventKind::Approval | EventKind::Erasure
    ) {
        return Err(invalid(
            "seq",
            format!(
                "entry {seq} is a {} record; review and approve the record it concerns",
                target.body.kind.as_str()
            ),
        ));
    }
    let performer = Manifestation::of_entry(&target, &openings);
    let same_cert = target.body.author == author_of(signer);
    let same_person = performer.as_ref().is_some_and(|p| p.id == signer.id);
    if same_cert || same_person {
        return Err(forbidden(
            Some("seq"),
            format!(
                "21 CFR Part 11 separation of duties: {} performed entry {seq}, and its review \
                 or approval must be signed by someone other than the performer",
                performer.map_or_else(|| who(signer), |p| format!("{} ({})", p.name, p.id))
            ),
        ));
    }
    let mut components = vec![manifestation.component()];
    if let Some(c) = comment
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
    {
        components.push(ComponentInput {
            name: "comment".into(),
            class: DisclosureClass::Maintenance,
            value: serde_json::Value::String(c).to_string(),
        });
    }
    let event = EventInput {
        kind,
        device_id: target.body.device_id.clone(),
        occurred_at: None,
        components,
        corrects: None,
        event_id: Some(format!("{}:{seq}:{}", meaning.as_str(), signer_key(signer))),
    }
    .validate()
    .map_err(|e| invalid("comment", e.to_string()))?;
    submit(node, signer, event, Some(manifestation)).await
}

/// Erases the value and salt of component `name` of entry `seq` on every gateway
/// (`POST /v1/entries/{seq}/components/{name}/erase`): an erasure entry of its own, replicated
/// like any entry, with the `reason` as a maintenance component and, from staff, the signature
/// manifestation (meaning erased, `of` the entry, the reason). The entry's commitment stays,
/// so the ledger still verifies; exports mark the value as erased by the erasure entry. The
/// `signature` component of a record is never erased. Erasing an erased component again is a
/// duplicate. Who may call it is the route's business (administrators).
pub async fn erase_component(
    node: &Node,
    caller: &Identity,
    seq: u64,
    name: &str,
    reason: &str,
) -> Result<Recorded, RecordError> {
    refuse_on_learner(node)?;
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(invalid(
            "reason",
            "an erasure gives its reason (for example a patient's request under a right to erasure)",
        ));
    }
    let (target, _) = existing(&node.store, seq, "seq")?;
    if target.body.kind == EventKind::Erasure {
        return Err(invalid(
            "seq",
            format!("entry {seq} is an erasure: nothing to erase"),
        ));
    }
    if name == SIGNATURE_COMPONENT {
        return Err(forbidden(
            Some("name"),
            format!(
                "the {SIGNATURE_COMPONENT} component of a record is never erased (21 CFR Part 11 \
                 §11.10(e): a record's signature stays readable)"
            ),
        ));
    }
    if !target.body.components.iter().any(|c| c.name == name) {
        return Err(RecordError::NotFound {
            field: Some("name"),
            reason: format!(
                "entry {seq} has no component {name:?} (it has: {})",
                target
                    .body
                    .components
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let mut components = vec![ComponentInput {
        name: "reason".into(),
        class: DisclosureClass::Maintenance,
        value: serde_json::Value::String(reason.to_owned()).to_string(),
    }];
    // A staff member's erasure is signed like any record (§11.50): printed name, role, the
    // meaning erased with the entry and the reason, the time of the entry.
    let signature = if caller.profile == Profile::Staff {
        let m = Manifestation::new(caller, Meaning::Erased, Some(seq), Some(reason.to_owned()))?;
        components.push(m.component());
        Some(m)
    } else {
        None
    };
    let event = EventInput {
        kind: EventKind::Erasure,
        device_id: target.body.device_id.clone(),
        occurred_at: None,
        components,
        corrects: None,
        event_id: Some(erasure_event_id(seq, name)),
    }
    .validate()
    .map_err(|e| invalid("reason", e.to_string()))?;
    submit(node, caller, event, signature).await
}

/// Records a registry event (device registered or changed, model intervals, status, attempt to
/// locate, recall) that the registry's routes built and checked: a staff record carries the
/// signature manifestation with the meaning performed, like any other.
pub async fn record_registry_event(
    node: &Node,
    caller: &Identity,
    mut event: EventInput,
) -> Result<Recorded, RecordError> {
    refuse_on_learner(node)?;
    let signature = if caller.profile == Profile::Staff {
        let m = Manifestation::new(caller, Meaning::Performed, None, None)?;
        event.components.push(m.component());
        Some(m)
    } else {
        None
    };
    submit(node, caller, event, signature).await
}

/// Signs `event` as `caller` on this node, proposes it and reports what the ledger did.
async fn submit(
    node: &Node,
    caller: &Identity,
    event: EventInput,
    signature: Option<Manifestation>,
) -> Result<Recorded, RecordError> {
    let readers = audience(&event.components);
    let recorded_at_ms = ledger_node::ledger::now_ms();
    let cmd = node
        .prepare(event, &author_of(caller), recorded_at_ms)
        .map_err(|e| RecordError::Invalid {
            field: None,
            reason: e.to_string(),
        })?;
    let (seq, leaf, duplicate) = match node.submit(Command::Append(cmd)).await? {
        ApplyOutcome::Appended { seq, leaf } => (seq, leaf, false),
        ApplyOutcome::Duplicate { seq } => {
            let leaf = node
                .store
                .entry_bytes(seq)
                .map(|b| ledger_node::hash::leaf_hash(&b))
                .map_err(internal)?;
            (seq, leaf, true)
        }
        ApplyOutcome::Refused { reason } => {
            return Err(RecordError::Invalid {
                field: None,
                reason,
            })
        }
        ApplyOutcome::NodeRegistered { .. } | ApplyOutcome::Checkpointed { .. } => {
            return Err(internal("unexpected outcome of an append"))
        }
    };
    // A duplicate is the earlier entry: report its own time and signature.
    let (recorded_at_ms, signature) = if duplicate {
        let (e, o) = existing(&node.store, seq, "event_id")?;
        (e.body.recorded_at_ms, Manifestation::of_entry(&e, &o))
    } else {
        (recorded_at_ms, signature)
    };
    Ok(Recorded {
        seq,
        leaf: hex::encode(leaf),
        duplicate,
        node_id: node.id,
        signature,
        recorded_at: crate::event::format_ms(recorded_at_ms),
        readers,
    })
}

/// Entry `seq` as a history shows it to a reader of `classes`: its fields (withheld or erased
/// ones marked so), its signature manifestation, and the corrections of it beside it.
pub fn entry_view(
    store: &Store,
    seq: u64,
    classes: &BTreeSet<DisclosureClass>,
) -> Result<serde_json::Value, ledger_node::LedgerError> {
    let e = store.entry(seq)?;
    let states = store.opening_states(seq)?;
    let mut fields = serde_json::Map::new();
    let mut signature = None;
    for (i, c) in e.body.components.iter().enumerate() {
        let value = match states.get(i) {
            Some(OpeningState::Open(o)) if classes.contains(&c.class) => {
                let v: serde_json::Value =
                    serde_json::from_str(&o.value).unwrap_or(serde_json::Value::Null);
                if c.name == SIGNATURE_COMPONENT {
                    signature = serde_json::from_value::<Manifestation>(v.clone()).ok();
                }
                v
            }
            Some(OpeningState::Open(_)) => json!({"withheld": c.class.as_str()}),
            Some(OpeningState::Erased { by }) => {
                json!({"erased": c.class.as_str(), "erased_by": by})
            }
            None => json!({"erased": c.class.as_str()}),
        };
        fields.insert(c.name.clone(), value);
    }
    let corrected_by = store.corrections(seq)?;
    let mut v = json!({
        "seq": seq,
        "kind": e.body.kind.as_str(),
        "occurred_at": e.body.occurred_at,
        "recorded_at": crate::event::format_ms(e.body.recorded_at_ms),
        "author": e.body.author,
        "node_id": e.body.node_id,
        "corrects": e.body.corrects,
        "event_id": e.body.event_id,
        "fields": fields,
    });
    if let Some(m) = signature {
        v["signature"] = json!({
            "name": m.name,
            "role": m.role,
            "meaning": m.meaning,
            "time": crate::event::format_ms(e.body.recorded_at_ms),
            "of": m.of,
            "reason": m.reason,
            "id": m.id,
        });
    }
    if !corrected_by.is_empty() {
        v["corrected"] = json!(true);
        v["corrected_by"] = json!(corrected_by);
    }
    Ok(v)
}
