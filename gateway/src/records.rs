//! Records with 21 CFR Part 11 meaning, and who reads what: plain data shared by the service
//! (which writes signed records) and the CLI (which shows and exports them).
//!
//! A staff member's record carries, in its reserved `signature` component
//! ([`ledger_node::entry::SIGNATURE_COMPONENT`], class `maintenance`), the manifestation §11.50
//! asks for: the signer's printed name (from the X.520 `name` of the staff certificate, which
//! the site CA sets), role (the certificate's OU), and the meaning (performed, reviewed,
//! approved, corrected with its reason, erased with its reason). The time is the entry's `recorded_at_ms` and the
//! signer's identity the entry's `author` (`sha256:<certificate fingerprint>`): all of it is in
//! the bytes the gateway signs (the component through its commitment), so the manifestation
//! cannot be moved to another record (§11.70). Review and approval are records of their own
//! ([`EventKind::Review`], [`EventKind::Approval`]) whose manifestation names the entry they
//! sign (`of`).

use std::collections::BTreeSet;

use certs::{Identity, Profile, StaffRole};
use ledger_node::entry::{ComponentInput, DisclosureClass, Entry, Opening, SIGNATURE_COMPONENT};
use serde::{Deserialize, Serialize};

/// Device ids of the web page's sign-in audit entries (`staff:<account>`): not devices, so
/// the registry leaves them out.
pub const STAFF_PREFIX: &str = "staff:";

/// What a signature means (§11.50(a)(3)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Meaning {
    /// The signer did the work the record describes (authorship, responsibility).
    Performed,
    /// The signer reviewed an earlier record.
    Reviewed,
    /// The signer approved an earlier record.
    Approved,
    /// The record corrects an earlier one, for the reason given.
    Corrected,
    /// The record erases a value of an earlier one (`of`), for the reason given.
    Erased,
}

impl Meaning {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Meaning::Performed => "performed",
            Meaning::Reviewed => "reviewed",
            Meaning::Approved => "approved",
            Meaning::Corrected => "corrected",
            Meaning::Erased => "erased",
        }
    }

    /// Parses a meaning name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Meaning::Performed,
            Meaning::Reviewed,
            Meaning::Approved,
            Meaning::Corrected,
            Meaning::Erased,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// The signature manifestation of a record, as its `signature` component holds it (compact JSON,
/// keys sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifestation {
    /// The staff id of the certificate (its SAN URI).
    pub id: String,
    /// The printed name (the certificate's X.520 `name`).
    pub name: String,
    /// The staff role (the certificate's OU).
    pub role: String,
    pub meaning: Meaning,
    /// The entry reviewed, approved or erased from (meanings reviewed, approved, erased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<u64>,
    /// Why the record was corrected or the value erased (meanings corrected, erased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why a record cannot be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("{0} has no printed name and role: only staff certificates sign records")]
    NotStaff(String),
}

/// What a staff certificate without a printed name shows: certificates issued before the name
/// was required (`medledger cert issue --profile staff` without `--name`) carry none.
pub fn printed_name(id: &Identity) -> String {
    match id.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => n.to_owned(),
        None => format!("{} (no printed name in the certificate)", id.id),
    }
}

impl Manifestation {
    /// The manifestation of `signer`'s signature with `meaning`; staff only (devices and
    /// gateways record machine events, which carry no signature).
    pub fn new(
        signer: &Identity,
        meaning: Meaning,
        of: Option<u64>,
        reason: Option<String>,
    ) -> Result<Self, SignError> {
        let role = match (signer.profile, signer.staff_role()) {
            (Profile::Staff, Some(r)) => r,
            _ => {
                return Err(SignError::NotStaff(format!(
                    "{} {}",
                    signer.profile, signer.id
                )))
            }
        };
        Ok(Self {
            id: signer.id.clone(),
            name: printed_name(signer),
            role: role.as_str().to_owned(),
            meaning,
            of,
            reason,
        })
    }

    /// The component that carries it.
    pub fn component(&self) -> ComponentInput {
        ComponentInput {
            name: SIGNATURE_COMPONENT.to_owned(),
            class: DisclosureClass::Maintenance,
            // Serialising this plain struct cannot fail; a Value sorts the keys.
            value: serde_json::to_value(self)
                .map(|v| v.to_string())
                .unwrap_or_default(),
        }
    }

    /// The manifestation an entry carries, if its `signature` component is there and open.
    pub fn of_entry(entry: &Entry, openings: &[Option<Opening>]) -> Option<Self> {
        let i = entry
            .body
            .components
            .iter()
            .position(|c| c.name == SIGNATURE_COMPONENT)?;
        let o = openings.get(i)?.as_ref()?;
        serde_json::from_str(&o.value).ok()
    }

    /// One line for people: `Jo Doe (biomed), performed, 2026-…Z`.
    pub fn describe(&self, recorded_at_ms: i64) -> String {
        let mut s = format!("{} ({}), {}", self.name, self.role, self.meaning.as_str());
        if let Some(of) = self.of {
            s += &format!(" entry {of}");
        }
        if let Some(r) = &self.reason {
            s += &format!(" (reason: {r})");
        }
        s += &format!(", {}", crate::event::format_ms(recorded_at_ms));
        s
    }
}

/// The disclosure classes a staff role reads (docs/api.md has the table). Gateways read every
/// class; devices none.
pub fn role_classes(role: StaffRole) -> BTreeSet<DisclosureClass> {
    use DisclosureClass::*;
    match role {
        StaffRole::Biomed => [Device, Maintenance, Patient].into(),
        StaffRole::Supervisor => DisclosureClass::ALL.into_iter().collect(),
        StaffRole::Auditor => [Device, Maintenance].into(),
        StaffRole::Insurer => [Device, Maintenance, Financial].into(),
        StaffRole::Admin => [Device, Maintenance, Financial].into(),
    }
}

/// The staff roles that read `class`, in the order of [`StaffRole::ALL`].
pub fn readers_of(class: DisclosureClass) -> Vec<StaffRole> {
    StaffRole::ALL
        .into_iter()
        .filter(|r| role_classes(*r).contains(&class))
        .collect()
}

/// Who will read each class of what is recorded: one entry per class present, with the staff
/// roles that read it (gateways read every class).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClassReaders {
    /// device, maintenance, patient or financial.
    pub class: String,
    /// The components of that class.
    pub components: Vec<String>,
    /// The staff roles that read its values; every other role sees only its commitment.
    pub roles: Vec<String>,
}

/// [`ClassReaders`] for the components of an event, classes in their order of §2 of
/// docs/ledger-format.md.
pub fn audience(components: &[ComponentInput]) -> Vec<ClassReaders> {
    DisclosureClass::ALL
        .into_iter()
        .filter_map(|class| {
            let names: Vec<String> = components
                .iter()
                .filter(|c| c.class == class)
                .map(|c| c.name.clone())
                .collect();
            (!names.is_empty()).then(|| ClassReaders {
                class: class.as_str().to_owned(),
                components: names,
                roles: readers_of(class)
                    .into_iter()
                    .map(|r| r.as_str().to_owned())
                    .collect(),
            })
        })
        .collect()
}

/// One line per class for the CLI: `patient (patient_mrn): biomed, supervisor`.
pub fn describe_audience(audience: &[ClassReaders]) -> String {
    audience
        .iter()
        .map(|a| {
            format!(
                "  {} ({}): read by {}\n",
                a.class,
                a.components.join(", "),
                a.roles.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_readers_agree() {
        for class in DisclosureClass::ALL {
            for role in StaffRole::ALL {
                assert_eq!(
                    readers_of(class).contains(&role),
                    role_classes(role).contains(&class)
                );
            }
        }
        assert_eq!(
            readers_of(DisclosureClass::Patient),
            vec![StaffRole::Biomed, StaffRole::Supervisor]
        );
    }

    #[test]
    fn manifestation_is_compact_sorted_json() {
        let m = Manifestation {
            id: "jdoe".into(),
            name: "Jo Doe".into(),
            role: "biomed".into(),
            meaning: Meaning::Approved,
            of: Some(3),
            reason: None,
        };
        assert_eq!(
            m.component().value,
            r#"{"id":"jdoe","meaning":"approved","name":"Jo Doe","of":3,"role":"biomed"}"#
        );
    }
}
