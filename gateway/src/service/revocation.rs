//! Identity events in the ledger: building `certificate-issued` / `certificate-revoked` events,
//! reading them back into the revoked-serial set and this gateway's CRL, and the watcher that
//! pushes every new revocation (written here or replicated from another gateway) into the TLS
//! listeners without a restart.
//!
//! The ledger is the source of truth for revocation (docs/identity.md, "Identity events in the
//! ledger"); `pki/crl.pem` is only a derived file for Mosquitto and `openssl`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use anyhow::Context;
use certs::{
    Crl, Identity, IssuingCa, ReloadableServerConfig, RevocationPolicy, RevocationReason, Revoked,
};
use ledger_node::entry::{ComponentInput, DisclosureClass, EventInput, EventKind};
use ledger_node::Store;
use time::{Duration, OffsetDateTime};
use tokio_util::sync::CancellationToken;

/// How long a CRL this gateway signs is valid. Listeners enforce CRL expiry (fail closed), so
/// the watcher rebuilds it every [`CRL_REFRESH`], well before it runs out.
pub const CRL_VALIDITY: Duration = Duration::days(7);
/// How often the CRL is rebuilt even when nothing was revoked.
pub const CRL_REFRESH: Duration = Duration::days(1);
/// How often the watcher looks for new ledger entries.
const POLL: StdDuration = StdDuration::from_millis(250);

/// The `event_id` of the issuance of `serial`: recording it twice is a no-op.
pub fn issued_event_id(serial: &str) -> String {
    format!("certificate-issued:{serial}")
}

/// The `event_id` of the revocation of `serial`: revoking twice is a no-op.
pub fn revoked_event_id(serial: &str) -> String {
    format!("certificate-revoked:{serial}")
}

/// The ledger `device_id` of a certificate's subject: the device id for devices,
/// `staff:<id>`, `gateway:<id>`, `service:<name>` otherwise (the subject CN).
pub fn subject_of(identity: &Identity) -> String {
    certs::profile::subject_label(identity.profile, &identity.id)
}

fn text(name: &str, value: &str) -> ComponentInput {
    ComponentInput {
        name: name.into(),
        class: DisclosureClass::Device,
        // a JSON string is always serialisable; the fallback is never taken
        value: serde_json::to_string(value).unwrap_or_else(|_| "null".into()),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// SHA-256 fingerprint (lowercase hex) of this gateway's issuing CA certificate: the `issuer`
/// recorded with every certificate it issues.
pub fn ca_fingerprint(ca: &IssuingCa) -> String {
    certs::identity::fingerprint(ca.cert_der())
}

/// The `certificate-issued` event for a certificate `ca` just issued.
pub fn issued_event(identity: &Identity, ca: &IssuingCa) -> EventInput {
    let mut components = vec![
        text("serial", &identity.serial),
        text("profile", identity.profile.as_str()),
        text("fingerprint", &identity.fingerprint),
        text("not_after", &rfc3339(identity.not_after)),
        text("issuer", &ca_fingerprint(ca)),
    ];
    if let Some(role) = &identity.role {
        components.push(text("role", role));
    }
    EventInput {
        kind: EventKind::CertificateIssued,
        device_id: subject_of(identity),
        occurred_at: Some(rfc3339(OffsetDateTime::now_utc())),
        components,
        corrects: None,
        event_id: Some(issued_event_id(&identity.serial)),
    }
}

/// The `certificate-issued` event for a line of this CA's local record (`pki/issued.jsonl`):
/// certificates issued while the gateway was stopped (`ca init`, `cert issue --data-dir`) reach
/// the replicated ledger this way.
pub fn issued_event_from_record(rec: &certs::IssuedRecord, ca: &IssuingCa) -> EventInput {
    EventInput {
        kind: EventKind::CertificateIssued,
        device_id: certs::profile::subject_label(rec.profile, &rec.id),
        occurred_at: Some(rfc3339(rec.issued_at)),
        components: vec![
            text("serial", &rec.serial),
            text("profile", rec.profile.as_str()),
            text("fingerprint", &rec.fingerprint),
            text("not_after", &rfc3339(rec.not_after)),
            text("issuer", &ca_fingerprint(ca)),
        ],
        corrects: None,
        event_id: Some(issued_event_id(&rec.serial)),
    }
}

/// The `certificate-issued` event that endorses this gateway's ledger key (`node.key`) with its
/// issuing CA (profile `ledger-key`, see `certs::endorse`): an export then carries, for every key
/// that signed it, a certificate that chains to the site root, which `medledger verify
/// --site-root` checks. The event id names the node and key, so each key is endorsed once
/// whatever the number of restarts.
pub fn ledger_key_event(
    node_id: u64,
    key: &[u8; 32],
    ca: &IssuingCa,
) -> anyhow::Result<EventInput> {
    let e = ca
        .endorse_ledger_key(node_id, key)
        .context("endorsing this gateway's ledger key")?;
    Ok(EventInput {
        kind: EventKind::CertificateIssued,
        device_id: certs::profile::subject_label(
            certs::identity::Profile::Gateway,
            &node_id.to_string(),
        ),
        occurred_at: Some(rfc3339(OffsetDateTime::now_utc())),
        components: vec![
            text("serial", &e.serial),
            text("profile", certs::endorse::LEDGER_KEY_PROFILE),
            text("fingerprint", &e.fingerprint),
            text("not_after", &rfc3339(e.not_after)),
            text("issuer", &ca_fingerprint(ca)),
            text("node_id", &node_id.to_string()),
            text("public_key", &hex::encode(key)),
            text("certificate", &e.cert_pem),
            text("issuer_certificate", &e.issuer_pem),
        ],
        corrects: None,
        event_id: Some(ledger_key_event_id(node_id, key)),
    })
}

/// Event id of the endorsement of `key` as node `node_id`'s ledger key.
pub fn ledger_key_event_id(node_id: u64, key: &[u8; 32]) -> String {
    format!("ledger-key:{node_id}:{}", hex::encode(key))
}

/// The endorsement of `key` as node `node_id`'s ledger key, as the ledger recorded it (its
/// [`ledger_key_event`]): `None` when the ledger holds none, or not its certificates (erased).
pub fn recorded_endorsement(
    store: &Store,
    node_id: u64,
    key: &[u8; 32],
) -> anyhow::Result<Option<(u64, ledger_node::export::KeyEndorsement)>> {
    let Some(seq) = store.find_event_id(&ledger_key_event_id(node_id, key))? else {
        return Ok(None);
    };
    let entry = store.entry(seq)?;
    let openings = store.openings(seq)?;
    let field = |name: &str| -> Option<String> {
        let i = entry.body.components.iter().position(|c| c.name == name)?;
        let o = openings.get(i)?.as_ref()?;
        serde_json::from_str::<String>(&o.value).ok()
    };
    Ok(match (field("certificate"), field("issuer_certificate")) {
        (Some(certificate), Some(issuer_certificate)) => Some((
            seq,
            ledger_node::export::KeyEndorsement {
                node_id,
                certificate,
                issuer_certificate,
            },
        )),
        _ => None,
    })
}

/// The recorded endorsements of `keys` (those the ledger holds), for a receipt to carry.
pub fn endorsements_of(
    store: &Store,
    keys: &[ledger_node::export::NodeKey],
) -> anyhow::Result<Vec<ledger_node::export::KeyEndorsement>> {
    let mut out = Vec::new();
    for k in keys {
        if let Some((_, e)) = recorded_endorsement(store, k.node_id, &k.public_key)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Records in the replicated ledger every certificate of this gateway's local record that it
/// does not hold yet; retries until a leader accepts them. Idempotent: the event id is derived
/// from the serial.
pub async fn record_local_issuances(
    node: Arc<crate::service::node::Node>,
    ca: Arc<IssuingCa>,
    shutdown: CancellationToken,
) {
    let records = match ca.issued_records() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the issuing CA's local record");
            return;
        }
    };
    let author = format!("sha256:{}", ca_fingerprint(&ca));
    let events = records
        .iter()
        .map(|rec| issued_event_from_record(rec, &ca))
        .collect();
    record_events(node, events, author, shutdown).await;
}

/// The identity events of this gateway's local CLI ledger (`DATA_DIR/ledger`): what `medledger
/// cert issue` / `cert revoke --data-dir` recorded before the gateway first ran as a cluster
/// member. `None` when there is no such ledger.
pub fn local_index(data_dir: &Path) -> anyhow::Result<Option<IdentityIndex>> {
    let dir = data_dir.join(crate::paths::LOCAL_LEDGER_DIR);
    if !dir.exists() {
        return Ok(None);
    }
    let store = Store::open(&dir)
        .with_context(|| format!("reading the local ledger {} for revocations", dir.display()))?;
    Ok(Some(IdentityIndex::load(&store)?))
}

/// Records `events` in the replicated ledger, each unless its event id is already there;
/// retries each until a leader accepts it, so that nothing recorded locally while the gateway was
/// stopped is left out of the cluster's ledger.
pub async fn record_events(
    node: Arc<crate::service::node::Node>,
    events: Vec<EventInput>,
    author: String,
    shutdown: CancellationToken,
) {
    for event in events {
        let Some(id) = event.event_id.clone() else {
            continue;
        };
        loop {
            if node.store.find_event_id(&id).ok().flatten().is_some() {
                break;
            }
            let cmd = node.prepare(event.clone(), &author, ledger_node::ledger::now_ms());
            let done = match cmd {
                Ok(cmd) => node.submit(ledger_node::Command::Append(cmd)).await.is_ok(),
                Err(e) => {
                    tracing::warn!(event_id = %id, error = %e, "local identity record refused");
                    true
                }
            };
            if done {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(StdDuration::from_millis(500)) => {}
            }
        }
    }
}

/// The `certificate-revoked` event for `serial` (normalised hex) of `subject`.
pub fn revoked_event(serial: &str, subject: &str, reason: RevocationReason) -> EventInput {
    EventInput {
        kind: EventKind::CertificateRevoked,
        device_id: subject.to_string(),
        occurred_at: Some(rfc3339(OffsetDateTime::now_utc())),
        components: vec![text("serial", serial), text("reason", reason.as_str())],
        corrects: None,
        event_id: Some(revoked_event_id(serial)),
    }
}

/// What the ledger says about one issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedInfo {
    /// Sequence number of the `certificate-issued` entry.
    pub seq: u64,
    /// The entry's device id (the subject).
    pub subject: String,
    /// Fingerprint of the issuing CA, when recorded.
    pub issuer_fingerprint: Option<String>,
}

/// The identity events of a ledger, read incrementally.
#[derive(Debug, Default, Clone)]
pub struct IdentityIndex {
    /// Entries below this sequence number have been read.
    scanned: u64,
    issued: HashMap<String, IssuedInfo>,
    /// Serial -> first revocation.
    revoked: BTreeMap<String, Revoked>,
    /// Serial -> the subject its revocation entry names.
    revoked_subject: HashMap<String, String>,
}

impl IdentityIndex {
    /// Reads the whole ledger.
    pub fn load(store: &Store) -> anyhow::Result<Self> {
        let mut idx = Self::default();
        idx.scan(store)?;
        Ok(idx)
    }

    /// Reads the entries added since the last scan; returns how many new serials were revoked.
    pub fn scan(&mut self, store: &Store) -> anyhow::Result<usize> {
        let size = store.size();
        let mut new = 0;
        while self.scanned < size {
            let seq = self.scanned;
            let entry = store
                .entry(seq)
                .with_context(|| format!("reading ledger entry {seq}"))?;
            let kind = entry.body.kind;
            if kind == EventKind::CertificateIssued || kind == EventKind::CertificateRevoked {
                let openings = store
                    .openings(seq)
                    .with_context(|| format!("reading ledger entry {seq}"))?;
                let field = |name: &str| -> Option<String> {
                    let i = entry.body.components.iter().position(|c| c.name == name)?;
                    let o = openings.get(i)?.as_ref()?;
                    serde_json::from_str::<String>(&o.value).ok()
                };
                // entries are never trusted blindly: a serial that is not hex is ignored
                let serial = field("serial").and_then(|s| certs::crl::normalize_serial(&s).ok());
                match (kind, serial) {
                    (EventKind::CertificateIssued, Some(serial)) => {
                        self.issued.entry(serial).or_insert(IssuedInfo {
                            seq,
                            subject: entry.body.device_id.clone(),
                            issuer_fingerprint: field("issuer"),
                        });
                    }
                    (EventKind::CertificateRevoked, Some(serial)) => {
                        if !self.revoked.contains_key(&serial) {
                            let revoked_at = entry
                                .body
                                .occurred_at
                                .as_deref()
                                .and_then(|t| {
                                    OffsetDateTime::parse(
                                        t,
                                        &time::format_description::well_known::Rfc3339,
                                    )
                                    .ok()
                                })
                                .or_else(|| {
                                    OffsetDateTime::from_unix_timestamp_nanos(
                                        i128::from(entry.body.recorded_at_ms) * 1_000_000,
                                    )
                                    .ok()
                                })
                                .unwrap_or_else(OffsetDateTime::now_utc);
                            let reason = field("reason")
                                .and_then(|r| r.parse().ok())
                                .unwrap_or(RevocationReason::Unspecified);
                            self.revoked_subject
                                .insert(serial.clone(), entry.body.device_id.clone());
                            self.revoked.insert(
                                serial.clone(),
                                Revoked {
                                    serial,
                                    revoked_at,
                                    reason,
                                },
                            );
                            new += 1;
                        }
                    }
                    _ => tracing::warn!(
                        seq,
                        kind = kind.as_str(),
                        "identity entry without a readable serial ignored"
                    ),
                }
            }
            self.scanned = seq + 1;
        }
        Ok(new)
    }

    /// Adds what `other` (another ledger's index) knows and this one does not: revocations are
    /// never forgotten, whichever ledger recorded them.
    pub fn merge(&mut self, other: &IdentityIndex) {
        for (serial, info) in &other.issued {
            self.issued
                .entry(serial.clone())
                .or_insert_with(|| info.clone());
        }
        for (serial, r) in &other.revoked {
            if !self.revoked.contains_key(serial) {
                self.revoked.insert(serial.clone(), r.clone());
                if let Some(s) = other.revoked_subject.get(serial) {
                    self.revoked_subject.insert(serial.clone(), s.clone());
                }
            }
        }
    }

    /// The `certificate-revoked` events of this index, to record them in another ledger (the
    /// same event ids, so recording one twice is a no-op).
    pub fn revocation_events(&self) -> Vec<EventInput> {
        self.revoked
            .values()
            .map(|r| {
                let subject = self
                    .revoked_subject
                    .get(&r.serial)
                    .cloned()
                    .unwrap_or_default();
                let mut e = revoked_event(&r.serial, &subject, r.reason);
                e.occurred_at = Some(rfc3339(r.revoked_at));
                e
            })
            .collect()
    }

    /// Number of entries read.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// The issuance of `serial`, if the ledger has it.
    pub fn issued(&self, serial: &str) -> Option<&IssuedInfo> {
        self.issued.get(serial)
    }

    /// The revocation of `serial`, if any.
    pub fn revocation(&self, serial: &str) -> Option<&Revoked> {
        self.revoked.get(serial)
    }

    /// Every revoked serial, whatever CA issued it.
    pub fn revoked_serials(&self) -> HashSet<String> {
        self.revoked.keys().cloned().collect()
    }

    /// The revocations of certificates issued by `ca`: those whose `certificate-issued` entry
    /// names `ca`, or that are in `ca`'s local record of issued certificates.
    pub fn revoked_by(&self, ca: &IssuingCa) -> Vec<Revoked> {
        let fp = ca_fingerprint(ca);
        let local: HashSet<String> = match ca.issued_records() {
            Ok(r) => r.into_iter().map(|r| r.serial).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the issuing ca's issued records; using the ledger alone");
                HashSet::new()
            }
        };
        self.revoked
            .values()
            .filter(|r| {
                local.contains(&r.serial)
                    || self
                        .issued
                        .get(&r.serial)
                        .and_then(|i| i.issuer_fingerprint.as_deref())
                        == Some(fp.as_str())
            })
            .cloned()
            .collect()
    }
}

/// Signs this gateway's CRL over the ledger's revocations of its certificates, valid from a
/// minute ago (clock skew) for [`CRL_VALIDITY`].
pub fn build_crl(ca: &IssuingCa, idx: &IdentityIndex) -> anyhow::Result<Crl> {
    let now = OffsetDateTime::now_utc();
    Ok(ca.build_crl(
        &idx.revoked_by(ca),
        now - Duration::minutes(1),
        now + CRL_VALIDITY,
    )?)
}

/// How the running gateway keeps its CRL fresh (`[tls] crl_validity_s`, `[broker_crl]`).
#[derive(Debug, Clone)]
pub struct CrlSettings {
    /// Each CRL's lifetime (nextUpdate - now).
    pub validity: Duration,
    /// The broker's copy of the CRL, and how to make the broker read it.
    pub broker: Option<crate::config::BrokerCrlSection>,
}

impl CrlSettings {
    pub fn from_config(c: &crate::config::Config) -> Self {
        CrlSettings {
            validity: Duration::seconds(i64::try_from(c.tls.crl_validity_s).unwrap_or(i64::MAX)),
            broker: c.broker_crl.clone(),
        }
    }

    /// A new CRL is signed this often even when nothing was revoked: a quarter of its lifetime
    /// (at most [`CRL_REFRESH`]), so three renewals can fail before anyone holds an expired one.
    pub fn refresh(&self) -> Duration {
        std::cmp::min(self.validity / 4_i32, CRL_REFRESH)
    }
}

/// Signs the next CRL. Its thisUpdate (a minute back, for clock skew) is always later than the
/// previous one's (`last`): OpenSSL, and so Mosquitto, which keeps every CRL it has loaded,
/// picks among valid CRLs of one issuer the one with the latest thisUpdate, and would keep an
/// older list signed in the same second.
fn sign_next_crl(
    ca: &IssuingCa,
    idx: &IdentityIndex,
    validity: Duration,
    last: &mut Option<OffsetDateTime>,
) -> anyhow::Result<Crl> {
    let now = OffsetDateTime::now_utc();
    let mut this_update = (now - Duration::minutes(1))
        .replace_nanosecond(0)
        .unwrap_or(now);
    if let Some(l) = *last {
        if this_update <= l {
            this_update = l + Duration::seconds(1);
        }
    }
    let crl = ca.build_crl(&idx.revoked_by(ca), this_update, now + validity)?;
    *last = Some(this_update);
    Ok(crl)
}

/// Writes `crl` to the broker's `crlfile` and, with a pid file, sends the broker SIGHUP
/// (Mosquitto 2.0 then reloads its listeners' certificates and CRL).
pub fn publish_to_broker(b: &crate::config::BrokerCrlSection, crl: &Crl) -> anyhow::Result<()> {
    certs::files::atomic_write(&b.file, crl.pem.as_bytes())
        .with_context(|| format!("broker_crl.file {}", b.file.display()))?;
    if let Some(p) = &b.pid_file {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("broker_crl.pid_file {}", p.display()))?;
        let pid: i32 = text
            .trim()
            .parse()
            .ok()
            .filter(|pid| *pid > 1)
            .with_context(|| {
                format!(
                    "broker_crl.pid_file {}: {:?} is not a process id",
                    p.display(),
                    text.trim()
                )
            })?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .with_context(|| {
            format!(
                "cannot send SIGHUP to the broker (pid {pid} from {})",
                p.display()
            )
        })?;
    }
    Ok(())
}

/// The policy every listener applies: the ledger's revoked serials (any issuer), this gateway's
/// own CRL, and certificates of other gateways' issuing CAs accepted without their CRL because
/// the replicated ledger is the revocation source of truth (see `tls::base_revocation`).
pub fn policy(idx: &IdentityIndex, crl: Option<&Crl>) -> RevocationPolicy {
    RevocationPolicy {
        crls: crl.map(|c| vec![c.der.clone()]).unwrap_or_default(),
        revoked_serials: idx.revoked_serials(),
        allow_unknown_revocation_status: true,
    }
}

/// Loads this gateway's issuing CA from `pki_dir`, or `None` when the directory holds none (a
/// gateway without an issuing CA cannot enroll devices or sign CRLs, but still refuses every
/// serial the ledger revokes). A CA that is present but broken is an error naming the file.
pub fn load_ca(pki_dir: &Path) -> anyhow::Result<Option<Arc<IssuingCa>>> {
    if !pki_dir.join("issuing.key").exists() || !pki_dir.join("issuing.crt").exists() {
        return Ok(None);
    }
    let ca =
        IssuingCa::load(pki_dir).with_context(|| format!("tls.pki_dir {}", pki_dir.display()))?;
    Ok(Some(Arc::new(ca)))
}

/// Everything a change of the revocation list reaches.
pub struct Enforcers {
    /// Checked on every request of an already open connection.
    pub revoked: crate::service::server::RevokedSerials,
    /// The listeners' TLS config (next handshake).
    pub server: Arc<ReloadableServerConfig>,
    /// This gateway's client towards its peers.
    pub peers: Arc<crate::service::raft_net::PeerHttp>,
}

fn refresh(
    idx: &IdentityIndex,
    to: &Enforcers,
    ca: Option<&IssuingCa>,
    crl_path: &Path,
    settings: &CrlSettings,
    last: &mut Option<OffsetDateTime>,
) -> anyhow::Result<Option<Crl>> {
    let crl = match ca {
        Some(ca) => {
            let crl = sign_next_crl(ca, idx, settings.validity, last)?;
            crl.write_pem(crl_path)?;
            Some(crl)
        }
        None => None,
    };
    let policy = policy(idx, crl.as_ref());
    *to.revoked.write().unwrap_or_else(|p| p.into_inner()) = policy.revoked_serials.clone();
    to.server.update_revocation(&policy)?;
    to.peers.update_revocation(&policy)?;
    Ok(crl)
}

/// How long to wait before writing the broker's CRL again after that failed.
const BROKER_RETRY: StdDuration = StdDuration::from_secs(5);

/// Reads the whole ledger, applies its revocations to `server` and writes `crl_path` (and the
/// broker's copy, `[broker_crl]`) before returning (so no listener starts without them), and
/// returns the watcher to spawn: it polls the store every 250 ms, reads only new entries, and on
/// a new revocation (or every [`CrlSettings::refresh`]) signs a new CRL and applies it to the CRL
/// file, the broker and the listeners' revocation policy. Ends when `shutdown` is cancelled.
pub async fn start_watcher(
    store: Arc<Store>,
    local: Option<&IdentityIndex>,
    to: Enforcers,
    ca: Option<Arc<IssuingCa>>,
    crl_path: PathBuf,
    settings: CrlSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let (mut idx, store) =
        tokio::task::spawn_blocking(move || IdentityIndex::load(&store).map(|i| (i, store)))
            .await
            .context("reading the ledger's identity events")??;
    // Revocations recorded while the gateway was stopped hold from the first handshake on, before
    // (and whether or not) they reach the replicated ledger.
    if let Some(local) = local {
        idx.merge(local);
    }
    let mut last = None;
    let crl = refresh(&idx, &to, ca.as_deref(), &crl_path, &settings, &mut last)?;
    tracing::info!(revoked = idx.revoked.len(), crl = %crl_path.display(), "revocation watcher started");
    let w = Watcher {
        idx,
        store,
        to,
        ca,
        crl_path,
        settings,
        last,
        broker_pending: crl,
        broker_next_try: tokio::time::Instant::now(),
    };
    Ok(w.run(shutdown))
}

/// The watcher's state.
struct Watcher {
    idx: IdentityIndex,
    store: Arc<Store>,
    to: Enforcers,
    ca: Option<Arc<IssuingCa>>,
    crl_path: PathBuf,
    settings: CrlSettings,
    /// thisUpdate of the last CRL signed.
    last: Option<OffsetDateTime>,
    /// A CRL not yet written to the broker (`[broker_crl]`), and when to try again.
    broker_pending: Option<Crl>,
    broker_next_try: tokio::time::Instant,
}

impl Watcher {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut next_refresh = tokio::time::Instant::now() + to_std(self.settings.refresh());
        let mut stale = false;
        loop {
            self.publish_to_broker();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            let mut changed = false;
            if self.store.size() > self.idx.scanned() {
                let s = self.store.clone();
                let before = self.idx.clone();
                let mut idx = std::mem::take(&mut self.idx);
                match tokio::task::spawn_blocking(move || {
                    let r = idx.scan(&s);
                    (r, idx)
                })
                .await
                {
                    Ok((Ok(n), i)) => {
                        self.idx = i;
                        changed = n > 0;
                    }
                    Ok((Err(e), i)) => {
                        self.idx = i;
                        tracing::warn!(error = %format!("{e:#}"), "reading new ledger entries for revocations; will retry");
                    }
                    Err(e) => {
                        self.idx = before;
                        tracing::error!(error = %e, "revocation scan task failed; will retry");
                    }
                }
            }
            let due = tokio::time::Instant::now() >= next_refresh;
            if changed || due || stale {
                match refresh(
                    &self.idx,
                    &self.to,
                    self.ca.as_deref(),
                    &self.crl_path,
                    &self.settings,
                    &mut self.last,
                ) {
                    Ok(crl) => {
                        stale = false;
                        next_refresh =
                            tokio::time::Instant::now() + to_std(self.settings.refresh());
                        if crl.is_some() {
                            self.broker_pending = crl;
                            self.broker_next_try = tokio::time::Instant::now();
                        }
                        if changed {
                            tracing::info!(
                                revoked = self.idx.revoked.len(),
                                "new revocation applied to every tls listener"
                            );
                        }
                    }
                    Err(e) => {
                        // keep trying every poll: a CRL that is not renewed expires and then
                        // refuses every client (fail closed)
                        stale = true;
                        tracing::error!(error = %format!("{e:#}"), crl = %self.crl_path.display(), "cannot apply revocations");
                    }
                }
            }
        }
    }

    /// Writes a pending CRL to the broker (`[broker_crl]`); after a failure, again every
    /// [`BROKER_RETRY`] until it works or a newer CRL replaces it.
    fn publish_to_broker(&mut self) {
        let (Some(b), Some(crl)) = (&self.settings.broker, &self.broker_pending) else {
            return;
        };
        if tokio::time::Instant::now() < self.broker_next_try {
            return;
        }
        match publish_to_broker(b, crl) {
            Ok(()) => {
                tracing::info!(file = %b.file.display(), signalled = b.pid_file.is_some(), "broker's crl renewed");
                self.broker_pending = None;
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot renew the broker's crl; will retry");
                self.broker_next_try = tokio::time::Instant::now() + BROKER_RETRY;
            }
        }
    }
}

fn to_std(d: Duration) -> StdDuration {
    StdDuration::try_from(d).unwrap_or(StdDuration::from_secs(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;
    use certs::{init_site_ca, CaInit, CertSpec, Validity};
    use ledger_node::{Ledger, LedgerOptions};

    #[tokio::test]
    async fn index_reads_issuance_and_revocation_and_the_crl_lists_only_this_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = init_site_ca(&dir.path().join("pki"), &CaInit::new("Site", "gw1")).expect("ca");
        let other =
            init_site_ca(&dir.path().join("other"), &CaInit::new("Site", "gw2")).expect("other ca");
        let ledger = Ledger::open(&dir.path().join("data"), LedgerOptions::default())
            .await
            .expect("ledger");
        let a = ca
            .issue(
                &CertSpec::device("pump-a"),
                Validity::days(5).expect("days"),
            )
            .expect("a");
        let b = ca
            .issue(
                &CertSpec::staff("e1", "Ann", certs::StaffRole::Biomed),
                Validity::days(5).expect("days"),
            )
            .expect("b");
        let f = other
            .issue(
                &CertSpec::device("pump-f"),
                Validity::days(5).expect("days"),
            )
            .expect("f");
        for (i, c) in [(&a, &ca), (&b, &ca), (&f, &other)] {
            ledger
                .append(issued_event(&i.identity, c), "local:test")
                .await
                .expect("issued");
        }
        let mut idx = IdentityIndex::load(ledger.store()).expect("index");
        assert_eq!(
            idx.issued(&b.identity.serial).map(|i| i.subject.as_str()),
            Some("staff:e1")
        );
        assert!(idx.revoked_serials().is_empty());
        for (serial, subject) in [
            (&a.identity.serial, "pump-a"),
            (&f.identity.serial, "pump-f"),
        ] {
            ledger
                .append(
                    revoked_event(serial, subject, RevocationReason::KeyCompromise),
                    "local:test",
                )
                .await
                .expect("revoked");
        }
        assert_eq!(idx.scan(ledger.store()).expect("scan"), 2);
        assert_eq!(idx.scan(ledger.store()).expect("scan"), 0);
        let serials = idx.revoked_serials();
        assert!(serials.contains(&a.identity.serial) && serials.contains(&f.identity.serial));
        assert!(!serials.contains(&b.identity.serial));
        let mine = idx.revoked_by(&ca);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].serial, a.identity.serial);
        assert_eq!(mine[0].reason, RevocationReason::KeyCompromise);
        let crl = build_crl(&ca, &idx).expect("crl");
        let p = policy(&idx, Some(&crl));
        assert_eq!(p.crls.len(), 1);
        assert!(p.allow_unknown_revocation_status);
        // revoking twice is a no-op in the ledger (same event id)
        let again = ledger
            .append(
                revoked_event(&a.identity.serial, "pump-a", RevocationReason::Superseded),
                "local:test",
            )
            .await
            .expect("again");
        assert!(
            matches!(again, ledger_node::ApplyOutcome::Duplicate { .. }),
            "{again:?}"
        );
    }
}
