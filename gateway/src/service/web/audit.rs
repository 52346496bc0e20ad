//! Sign-ins as ledger entries: every sign-in, failure, lock and refused certificate on the web
//! page becomes an entry of the replicated ledger, so the audit trail of who entered the system
//! is on every gateway and verifies like any record (21 CFR Part 11 §11.10(e)).
//!
//! The entry uses an existing kind (`status-change`) about the pseudo-device `staff:<account>`
//! (the registry skips `staff:` ids, as it does `model:` and `recall:`), with maintenance
//! components `access` (what happened), `method` (`password` or `certificate`), `gateway` (which
//! gateway's page) and, for certificates, `certificate_serial`. Never a password or a hash. An
//! account name that is not a valid staff id (anything typed into the form) is not written: the
//! entry names `staff:-` and says `account_valid: false`.
//!
//! [`run`] writes them one at a time from a bounded queue that [`super::auth::Auth`] fills; the
//! sign-in does not wait for the ledger.

use std::sync::Arc;

use ledger_node::entry::{ComponentInput, DisclosureClass, EventInput, EventKind};
use ledger_node::{ApplyOutcome, Command};
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;

use super::auth::Audit;
use crate::records::STAFF_PREFIX;
use crate::service::node::Node;

/// How many audit records may wait for the ledger.
pub const QUEUE: usize = 1024;

/// The ledger event of `a` on gateway `node_id`.
pub fn event(a: &Audit, node_id: u64) -> EventInput {
    let valid = crate::accounts::check_id(&a.account).is_ok();
    let comp = |name: &str, value: serde_json::Value| ComponentInput {
        name: name.into(),
        class: DisclosureClass::Maintenance,
        value: value.to_string(),
    };
    let mut components = vec![
        comp("access", a.access.into()),
        comp("method", a.method.into()),
        comp("gateway", node_id.into()),
    ];
    if !valid {
        components.push(comp("account_valid", false.into()));
    }
    if let Some(serial) = &a.serial {
        components.push(comp("certificate_serial", serial.as_str().into()));
    }
    EventInput {
        kind: EventKind::StatusChange,
        device_id: if valid {
            format!("{STAFF_PREFIX}{}", a.account)
        } else {
            format!("{STAFF_PREFIX}-")
        },
        occurred_at: None,
        components,
        corrects: None,
        event_id: Some(format!("web-access:{}", super::auth::random_token())),
    }
}

/// Writes queued audit records into the ledger as `author` (this gateway's certificate) until
/// `serving` is cancelled, then what is still queued.
pub async fn run(
    node: Arc<Node>,
    author: String,
    mut rx: Receiver<Audit>,
    serving: CancellationToken,
) {
    loop {
        let a = tokio::select! {
            a = rx.recv() => match a { Some(a) => a, None => return },
            _ = serving.cancelled() => break,
        };
        write(&node, &author, &a).await;
    }
    rx.close();
    while let Ok(a) = rx.try_recv() {
        write(&node, &author, &a).await;
    }
}

async fn write(node: &Node, author: &str, a: &Audit) {
    let result = async {
        let ev = event(a, node.id).validate().map_err(|e| e.to_string())?;
        let cmd = node
            .prepare(ev, author, ledger_node::ledger::now_ms())
            .map_err(|e| e.to_string())?;
        match node.submit(Command::Append(cmd)).await {
            Ok(ApplyOutcome::Appended { seq, .. }) => Ok(seq),
            Ok(other) => Err(format!("unexpected ledger outcome {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
    .await;
    match result {
        Ok(seq) => {
            tracing::debug!(target: "medledger::web::auth", account = %a.account, access = a.access, seq, "sign-in audit entry recorded")
        }
        Err(e) => {
            tracing::error!(target: "medledger::web::auth", account = %a.account, access = a.access, error = %e, "sign-in audit entry not recorded in the ledger (the log has it)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_entries_name_the_account_and_never_a_secret() {
        let a = Audit {
            account: "tess".into(),
            access: "sign-in-failed",
            method: "password",
            serial: None,
        };
        let e = event(&a, 2).validate().expect("valid event");
        assert_eq!(e.device_id, "staff:tess");
        assert_eq!(e.kind, EventKind::StatusChange);
        let names: Vec<&str> = e.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["access", "method", "gateway"]);
        // Whatever was typed as the account name is not written when it is no staff id.
        let typed = Audit {
            account: "my secret password".into(),
            ..a
        };
        let e = event(&typed, 2).validate().expect("valid event");
        assert_eq!(e.device_id, "staff:-");
        assert!(!format!("{e:?}").contains("secret"));
    }
}
