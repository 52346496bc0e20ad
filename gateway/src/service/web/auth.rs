//! Sign-in, sessions and lockout of the staff web page.
//!
//! A session is a random 256-bit token in a `__Host-` cookie (HttpOnly, Secure,
//! SameSite=Strict, Path=/), kept in memory on this gateway only by its SHA-256, with an absolute
//! and an idle expiry. Each session carries its own CSRF token for forms. Wrong passwords are
//! counted per account; `max_failures` in a row lock it for `lockout_seconds`. Every sign-in,
//! failure, lock and sign-out is logged (target `medledger::web::auth`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use certs::{Identity, Profile, StaffRole};
use sha2::{Digest, Sha256};

use crate::accounts::{verify_password, Account, Accounts};
use crate::config::WebSection;

/// The session cookie's name; `__Host-` makes browsers refuse it unless Secure, Path=/ and
/// without Domain.
pub const SESSION_COOKIE: &str = "__Host-medledger-session";
/// Before sign-in: the double-submit CSRF cookie of the sign-in form.
pub const LOGIN_CSRF_COOKIE: &str = "__Host-medledger-login";

/// A signed-in staff member.
#[derive(Debug, Clone)]
pub struct Session {
    pub account: String,
    /// Printed name and role, as they were at sign-in.
    pub name: String,
    pub role: StaffRole,
    /// Compared with the `csrf` field of every form.
    pub csrf: String,
    /// Part 11 §11.200: the first signing of a session asks for the password again; later ones
    /// in the same session need only the signer's session.
    pub has_signed: bool,
    /// Who signs records made in this session (`service::records`): the staff certificate the
    /// browser presented, or the account (no certificate: [`account_identity`]).
    pub identity: Identity,
    /// Signed in with a staff certificate rather than a password.
    pub by_certificate: bool,
    started: Instant,
    last_seen: Instant,
}

/// Why a sign-in was refused; the page shows the same words for a wrong id and a wrong
/// password so that it does not tell which accounts exist.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Wrong id or password.
    Wrong,
    /// Locked after too many failures, for this long still.
    Locked(Duration),
    /// Locked by an administrator.
    Disabled,
    /// The accounts file cannot be read (logged).
    Unavailable,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

/// Sessions and failure counters of this gateway's web page.
pub struct Auth {
    accounts: Accounts,
    session_ttl: Duration,
    idle_ttl: Duration,
    max_failures: u32,
    lockout: Duration,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    failures: Mutex<HashMap<String, Failures>>,
    /// Where sign-ins, failures and locks go to become ledger entries ([`super::audit`]).
    audit: Option<tokio::sync::mpsc::Sender<Audit>>,
    /// The cluster whose gateways' accounts are asked for at sign-in ([`Auth::lookup`]).
    cluster: Option<std::sync::Arc<crate::service::node::Node>>,
}

/// How long a sign-in waits for a peer gateway's account record.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// A sign-in, failure or lock, for the ledger. Never the password or its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// The account (or staff id of a certificate) as typed or presented.
    pub account: String,
    /// `signed-in`, `sign-in-failed`, `locked`, `refused-locked`, `refused-disabled`,
    /// `certificate-refused`.
    pub access: &'static str,
    /// `password` or `certificate`.
    pub method: &'static str,
    /// The certificate's serial, for certificate sign-ins and refusals.
    pub serial: Option<String>,
}

/// A fresh random token, hex.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    pub fn new(accounts: Accounts, web: &WebSection) -> Self {
        Auth {
            accounts,
            session_ttl: Duration::from_secs(web.session_minutes * 60),
            idle_ttl: Duration::from_secs(web.idle_minutes * 60),
            max_failures: web.max_failures,
            lockout: Duration::from_secs(web.lockout_seconds),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            audit: None,
            cluster: None,
        }
    }

    /// Accounts of every gateway of `node`'s cluster sign in here ([`Auth::lookup`]).
    pub fn with_cluster(mut self, node: std::sync::Arc<crate::service::node::Node>) -> Self {
        self.cluster = Some(node);
        self
    }

    /// Account `id` as the cluster knows it: this gateway's record and those of the peer
    /// gateways that answer within [`PEER_TIMEOUT`] (`GET /v1/staff-accounts/{id}`, gateways
    /// only), the newest (`changed_ms`) winning. So `medledger staff add` on one gateway lets
    /// the person sign in on every gateway that reaches it, and a `passwd` or `lock` there
    /// applies everywhere at the next sign-in, without a password hash in the ledger.
    pub async fn lookup(&self, id: &str) -> Result<Option<Account>, crate::accounts::AccountError> {
        let local = self.accounts.get(id)?;
        let Some(node) = &self.cluster else {
            return Ok(local);
        };
        if crate::accounts::check_id(id).is_err() {
            return Ok(local);
        }
        let peers: Vec<String> = node
            .membership()
            .nodes()
            .filter(|(n, _)| **n != node.id)
            .map(|(_, b)| b.addr.clone())
            .collect();
        let http = node.peers.get();
        let asks = peers.into_iter().map(|addr| {
            let http = http.clone();
            let url = format!("https://{addr}/v1/staff-accounts/{id}");
            async move {
                let r = tokio::time::timeout(PEER_TIMEOUT, http.get(&url).send())
                    .await
                    .ok()?
                    .ok()?;
                if !r.status().is_success() {
                    return None;
                }
                tokio::time::timeout(PEER_TIMEOUT, r.json::<Account>())
                    .await
                    .ok()?
                    .ok()
            }
        });
        let remote = futures::future::join_all(asks).await;
        Ok(local
            .into_iter()
            .chain(remote.into_iter().flatten())
            .filter(|a| a.id == id)
            .max_by_key(|a| a.changed_ms))
    }

    /// Sends every sign-in, failure and lock to `audit` as well as to the log.
    pub fn with_audit(mut self, audit: tokio::sync::mpsc::Sender<Audit>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Queues an audit record; a full queue (a flood of failures faster than the ledger takes
    /// them) drops it with an error in the log, which has every attempt all the same.
    pub fn audit(
        &self,
        account: &str,
        access: &'static str,
        method: &'static str,
        serial: Option<String>,
    ) {
        let Some(tx) = &self.audit else { return };
        let a = Audit {
            account: account.to_owned(),
            access,
            method,
            serial,
        };
        if let Err(e) = tx.try_send(a) {
            tracing::error!(target: "medledger::web::auth", account = %account, access, error = %e, "sign-in audit entry not queued for the ledger (the log has it)");
        }
    }

    pub fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    /// Checks a password against account `id`, counting failures; `Ok` is the account.
    /// Argon2 runs on a blocking thread.
    pub async fn check_password(&self, id: &str, password: &str) -> Result<Account, Refused> {
        if let Some(left) = self.locked_for(id) {
            tracing::warn!(target: "medledger::web::auth", account = %id, left_s = left.as_secs(), "sign-in refused: account locked after failures");
            self.audit(id, "refused-locked", "password", None);
            return Err(Refused::Locked(left));
        }
        let account = match self.lookup(id).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(target: "medledger::web::auth", error = %e, "cannot read the staff accounts");
                return Err(Refused::Unavailable);
            }
        };
        let password = password.to_owned();
        // An unknown id costs the same hash as a known one, so timing does not tell them apart.
        let probe = account.clone().unwrap_or_else(|| Account {
            id: String::new(),
            name: String::new(),
            role: StaffRole::Auditor,
            password_hash: DUMMY_HASH.into(),
            locked: false,
            changed_ms: 0,
        });
        let ok = tokio::task::spawn_blocking(move || verify_password(&probe, &password))
            .await
            .unwrap_or(false);
        match account {
            Some(a) if ok && a.locked => {
                tracing::warn!(target: "medledger::web::auth", account = %id, "sign-in refused: account locked by an administrator");
                self.audit(id, "refused-disabled", "password", None);
                Err(Refused::Disabled)
            }
            Some(a) if ok => {
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(id);
                Ok(a)
            }
            _ => {
                let locked = self.count_failure(id);
                tracing::warn!(target: "medledger::web::auth", account = %id, known = ok || self.is_known(id), "sign-in failed: wrong id or password");
                self.audit(id, "sign-in-failed", "password", None);
                if locked {
                    tracing::warn!(target: "medledger::web::auth", account = %id, failures = self.max_failures, lock_s = self.lockout.as_secs(), "account locked after repeated sign-in failures");
                    self.audit(id, "locked", "password", None);
                    return Err(Refused::Locked(self.lockout));
                }
                Err(Refused::Wrong)
            }
        }
    }

    fn is_known(&self, id: &str) -> bool {
        self.accounts.get(id).ok().flatten().is_some()
    }

    fn locked_for(&self, id: &str) -> Option<Duration> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let entry = f.get_mut(id)?;
        let until = entry.locked_until?;
        let now = Instant::now();
        if until > now {
            return Some(until - now);
        }
        // The lock has run out: start counting afresh.
        f.remove(id);
        None
    }

    /// Counts one failure; true when it locks the account.
    fn count_failure(&self, id: &str) -> bool {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bound the table: an attacker trying random ids must not grow it without end.
        if f.len() >= 100_000 && !f.contains_key(id) {
            let now = Instant::now();
            f.retain(|_, v| v.locked_until.is_some_and(|u| u > now));
        }
        let e = f.entry(id.to_owned()).or_default();
        e.count += 1;
        if e.count >= self.max_failures {
            e.locked_until = Some(Instant::now() + self.lockout);
            e.count = 0;
            return true;
        }
        false
    }

    /// Signs `account` in: returns the new session's token.
    pub fn start_session(&self, account: &Account) -> String {
        tracing::info!(target: "medledger::web::auth", account = %account.id, role = %account.role, "signed in");
        self.audit(&account.id, "signed-in", "password", None);
        self.insert_session(account_identity(account), account.role, false)
    }

    /// Signs in the holder of a verified, unrevoked staff certificate (`role` is its role).
    pub fn start_certificate_session(&self, identity: Identity, role: StaffRole) -> String {
        tracing::info!(target: "medledger::web::auth", account = %identity.id, role = %role, serial = %identity.serial, "signed in with a staff certificate");
        self.audit(
            &identity.id,
            "signed-in",
            "certificate",
            Some(identity.serial.clone()),
        );
        self.insert_session(identity, role, true)
    }

    fn insert_session(&self, identity: Identity, role: StaffRole, by_certificate: bool) -> String {
        let token = random_token();
        let now = Instant::now();
        let session = Session {
            account: identity.id.clone(),
            name: crate::records::printed_name(&identity),
            role,
            csrf: random_token(),
            has_signed: false,
            identity,
            by_certificate,
            started: now,
            last_seen: now,
        };
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, v| !self.expired(v, now));
        s.insert(token_key(&token), session);
        token
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.started) > self.session_ttl
            || now.duration_since(s.last_seen) > self.idle_ttl
    }

    /// The live session of `token`, refreshed; an expired one is removed. An account locked
    /// by an administrator since sign-in loses its session too.
    pub fn session(&self, token: &str) -> Option<Session> {
        let key = token_key(token);
        let now = Instant::now();
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let session = s.get_mut(&key)?;
        if self.expired(session, now) {
            tracing::info!(target: "medledger::web::auth", account = %session.account, "session expired");
            s.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    /// Notes that the session of `token` has signed (§11.200).
    pub fn mark_signed(&self, token: &str) {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = s.get_mut(&token_key(token)) {
            session.has_signed = true;
        }
    }

    pub fn end_session(&self, token: &str) {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = s.remove(&token_key(token)) {
            tracing::info!(target: "medledger::web::auth", account = %session.account, "signed out");
        }
    }
}

/// The identity a staff account signs with: staff profile, the account's id, role and printed
/// name, and no certificate (empty fingerprint and serial), so that `service::records` names
/// the author `web:<account>`.
pub fn account_identity(a: &Account) -> Identity {
    let now = time::OffsetDateTime::now_utc();
    Identity {
        profile: Profile::Staff,
        id: a.id.clone(),
        role: Some(a.role.as_str().to_owned()),
        name: Some(a.name.clone()),
        fingerprint: String::new(),
        serial: String::new(),
        server_auth: false,
        dns_names: Vec::new(),
        ip_addrs: Vec::new(),
        not_before: now,
        not_after: now,
    }
}

/// An Argon2id hash of a random password nobody knows, checked for unknown ids.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ww3f3bJ9aWx+pQ2y7Q0sJ5b3kJzN1Yk1n9c6vUe0Hto";

#[cfg(test)]
mod tests {
    use super::*;

    fn web(max_failures: u32) -> WebSection {
        WebSection {
            listen: "127.0.0.1:0".parse().expect("addr"),
            session_minutes: 60,
            idle_minutes: 10,
            max_failures,
            lockout_seconds: 60,
        }
    }

    #[test]
    fn the_dummy_hash_parses() {
        assert!(argon2::password_hash::PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[tokio::test]
    async fn failures_lock_then_success_resets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let accounts = Accounts::in_data_dir(dir.path());
        accounts
            .add(
                "ann",
                "Ann Example",
                StaffRole::Biomed,
                "a long enough password",
            )
            .expect("add");
        let auth = Auth::new(accounts, &web(3));
        assert_eq!(
            auth.check_password("ann", "wrong one").await.err(),
            Some(Refused::Wrong)
        );
        let ok = auth
            .check_password("ann", "a long enough password")
            .await
            .expect("ok");
        assert_eq!(ok.name, "Ann Example");
        // The success reset the count: two more wrong ones do not lock, the third does.
        for _ in 0..2 {
            assert_eq!(
                auth.check_password("ann", "x").await.err(),
                Some(Refused::Wrong)
            );
        }
        assert!(matches!(
            auth.check_password("ann", "x").await,
            Err(Refused::Locked(_))
        ));
        // Locked: even the right password is refused.
        assert!(matches!(
            auth.check_password("ann", "a long enough password").await,
            Err(Refused::Locked(_))
        ));
        // Unknown ids are refused with the same answer.
        assert_eq!(
            auth.check_password("bob", "whatever").await.err(),
            Some(Refused::Wrong)
        );
        let token = auth.start_session(&ok);
        let s = auth.session(&token).expect("session");
        assert!(!s.has_signed);
        auth.mark_signed(&token);
        assert!(auth.session(&token).expect("session").has_signed);
        auth.end_session(&token);
        assert!(auth.session(&token).is_none());
        assert!(auth.session("not a token").is_none());
    }
}
