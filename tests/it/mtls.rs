//! Mutual-TLS matrix against a real TCP listener that uses `certs`' server config and
//! [`certs::MtlsAcceptor`].
//!
//! The client side ([`probe`], [`run_matrix`], [`standard_cases`]) only needs a socket address and
//! the CA material, so it can be pointed at the gateway process later: the listener must answer a
//! line written by an accepted client with `ok <profile> <id>` (or, for another protocol, adapt
//! [`probe`]'s request/response).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certs::{
    init_site_ca, CaInit, CertSpec, CertifiedKey, IssuedCert, IssuingCa, MtlsAcceptor, Profile,
    ReloadableServerConfig, RevocationPolicy, RevocationReason, Revoked, StaffRole, Validity,
};
use rustls::pki_types::{CertificateDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const IO_DEADLINE: Duration = Duration::from_secs(5);

/// The test PKI: our site CA, a foreign CA, the listener's gateway certificate.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: IssuingCa,
    pub other_ca: IssuingCa,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = init_site_ca(&dir.path().join("pki"), &CaInit::new("Test Site", "gw1"))
            .expect("init site ca");
        let other_ca = init_site_ca(&dir.path().join("other"), &CaInit::new("Elsewhere", "gw9"))
            .expect("init other ca");
        Pki { dir, ca, other_ca }
    }

    pub fn root(&self) -> CertificateDer<'static> {
        self.ca.root_der().clone()
    }

    pub fn issue(&self, spec: CertSpec, validity: Validity) -> (IssuedCert, CertifiedKey) {
        key_of(self.ca.issue(&spec, validity).expect("issue"))
    }
}

fn key_of(issued: IssuedCert) -> (IssuedCert, CertifiedKey) {
    let ck = CertifiedKey::from_pem(&issued.chain_pem, issued.key_pem.as_deref().expect("key"))
        .expect("certified key");
    (issued, ck)
}

fn days(n: u32) -> Validity {
    Validity::days(n).expect("validity")
}

/// What a case expects of the listener.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Accepted; the listener reports this profile and id.
    Accept(Profile, String),
    /// Refused; the server's logged reason contains this text.
    Refuse(&'static str),
}

/// One client in the matrix.
pub struct Case {
    pub name: &'static str,
    pub client: Option<CertifiedKey>,
    pub expect: Expect,
}

/// Connect, handshake with `client` (or no certificate), send a line, read the answer line.
/// `Ok(line)` when the listener answered; `Err(reason)` when the connection was refused or closed.
pub async fn probe(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    client: Option<&CertifiedKey>,
) -> Result<String, String> {
    let config = match client {
        Some(ck) => certs::client_config(
            std::slice::from_ref(root),
            ck,
            &RevocationPolicy::default(),
            &[],
        )
        .map_err(|e| format!("client config: {e}"))?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(root.clone()).map_err(|e| e.to_string())?;
            Arc::new(
                rustls::ClientConfig::builder_with_provider(certs::tls::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        }
    };
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(b"hello\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        tls.flush().await.map_err(|e| format!("flush: {e}"))?;
        let mut line = String::new();
        let n = BufReader::new(tls)
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed by server".to_string());
        }
        Ok(line.trim().to_string())
    };
    tokio::time::timeout(IO_DEADLINE, work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Send a hand-made TLS 1.1 ClientHello (no supported_versions extension) and return the bytes
/// the server answers with before closing.
pub async fn tls11_client_hello(addr: SocketAddr) -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x02];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    let work = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(&record).await.expect("write hello");
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out).await;
        out
    };
    tokio::time::timeout(IO_DEADLINE, work)
        .await
        .expect("tls 1.1 probe timed out")
}

/// Run every case against `addr`; returns (case name, probe result).
pub async fn run_matrix(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    cases: &[Case],
) -> Vec<(&'static str, Result<String, String>)> {
    let mut out = Vec::new();
    for c in cases {
        out.push((c.name, probe(addr, root, c.client.as_ref()).await));
    }
    out
}

/// Check a probe result against the client-visible part of `expect`.
pub fn check_client_side(name: &str, expect: &Expect, got: &Result<String, String>) {
    match (expect, got) {
        (Expect::Accept(p, id), Ok(line)) => {
            assert_eq!(line, &format!("ok {p} {id}"), "case {name}")
        }
        (Expect::Refuse(_), Err(_)) => {}
        _ => panic!("case {name}: expected {expect:?}, got {got:?}"),
    }
}

/// The standard matrix for a listener that accepts `allowed` profiles. `revoked` must be a
/// device certificate whose serial the listener's CRL lists.
pub fn standard_cases(pki: &Pki, allowed: &[Profile], revoked: &CertifiedKey) -> Vec<Case> {
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let expect = |p: Profile, id: &str| {
        if allowed.contains(&p) {
            Expect::Accept(p, id.to_string())
        } else {
            Expect::Refuse("wrong certificate profile")
        }
    };
    let self_signed = {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "urn:medledger:device:pump-0042".try_into().expect("uri"),
        ));
        params
            .extended_key_usages
            .push(rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        CertifiedKey::from_pem(&cert.pem(), &key.serialize_pem()).expect("self-signed key")
    };
    let other = key_of(
        pki.other_ca
            .issue(&CertSpec::device("pump-0042"), days(30))
            .expect("other ca issue"),
    )
    .1;
    vec![
        Case {
            name: "no client certificate",
            client: None,
            expect: Expect::Refuse("peer sent no certificates"),
        },
        Case {
            name: "self-signed",
            client: Some(self_signed),
            expect: Expect::Refuse("UnknownIssuer"),
        },
        Case {
            name: "another site's CA",
            client: Some(other),
            expect: Expect::Refuse("UnknownIssuer"),
        },
        Case {
            name: "expired",
            client: Some(
                pki.issue(
                    CertSpec::device("pump-old"),
                    Validity::between(now - day * 10, now - day).expect("validity"),
                )
                .1,
            ),
            expect: Expect::Refuse("certificate expired"),
        },
        Case {
            name: "not yet valid",
            client: Some(
                pki.issue(
                    CertSpec::device("pump-future"),
                    Validity::between(now + day, now + day * 10).expect("validity"),
                )
                .1,
            ),
            expect: Expect::Refuse("not valid yet"),
        },
        Case {
            name: "revoked in crl",
            client: Some(revoked.clone()),
            expect: Expect::Refuse("Revoked"),
        },
        Case {
            name: "service certificate without clientAuth",
            client: Some(pki.issue(CertSpec::service("broker"), days(30)).1),
            expect: Expect::Refuse("extended key usage"),
        },
        Case {
            name: "good device",
            client: Some(
                pki.issue(CertSpec::device("(01)00884838035249(21)SN7"), days(30))
                    .1,
            ),
            expect: expect(Profile::Device, "(01)00884838035249(21)SN7"),
        },
        Case {
            name: "good staff",
            client: Some(
                pki.issue(
                    CertSpec::staff("e1234", "Ada Lovelace", StaffRole::Biomed),
                    days(30),
                )
                .1,
            ),
            expect: expect(Profile::Staff, "e1234"),
        },
        Case {
            name: "good gateway",
            client: Some(pki.issue(CertSpec::gateway("gw2"), days(30)).1),
            expect: expect(Profile::Gateway, "gw2"),
        },
    ]
}

/// A listener using [`MtlsAcceptor`]; each refusal's reason goes to `reasons`.
pub struct TestServer {
    pub addr: SocketAddr,
    pub reasons: mpsc::Receiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(acceptor: MtlsAcceptor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, reasons) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp, peer).await {
                        Ok((stream, id)) => {
                            let mut rd = BufReader::new(stream);
                            let mut line = String::new();
                            let _ = rd.read_line(&mut line).await;
                            let mut stream = rd.into_inner();
                            let answer = format!("ok {} {}\n", id.profile, id.id);
                            let _ = stream.write_all(answer.as_bytes()).await;
                            let _ = stream.shutdown().await;
                        }
                        Err(e) => {
                            let _ = tx.send(e.to_string()).await;
                        }
                    }
                });
            }
        });
        TestServer {
            addr,
            reasons,
            task,
        }
    }

    /// The next refusal reason, within the deadline.
    pub async fn next_reason(&mut self) -> String {
        tokio::time::timeout(IO_DEADLINE, self.reasons.recv())
            .await
            .expect("server logged no refusal in time")
            .expect("server task ended")
    }

    /// No refusal is pending.
    pub fn assert_no_reason(&mut self, case: &str) {
        if let Ok(r) = self.reasons.try_recv() {
            panic!("case {case}: unexpected refusal {r}");
        }
    }
}

struct Listener {
    server: TestServer,
    config: Arc<ReloadableServerConfig>,
}

fn revoked_entry(serial: &str) -> Revoked {
    Revoked {
        serial: serial.to_string(),
        revoked_at: OffsetDateTime::now_utc(),
        reason: RevocationReason::KeyCompromise,
    }
}

fn policy(ca: &IssuingCa, revoked: &[Revoked], valid: bool) -> RevocationPolicy {
    let now = OffsetDateTime::now_utc();
    let (this, next) = if valid {
        (
            now - time::Duration::minutes(1),
            now + time::Duration::hours(1),
        )
    } else {
        (now - time::Duration::days(2), now - time::Duration::days(1))
    };
    RevocationPolicy {
        crls: vec![ca.build_crl(revoked, this, next).expect("crl").der],
        ..RevocationPolicy::default()
    }
}

async fn listener(pki: &Pki, revoked: &[Revoked], allowed: &[Profile]) -> Listener {
    let server_cert = pki.issue(CertSpec::gateway("gw1"), days(30)).1;
    let config = Arc::new(
        ReloadableServerConfig::new(
            vec![pki.root()],
            server_cert,
            &policy(&pki.ca, revoked, true),
            Vec::new(),
        )
        .expect("server config"),
    );
    let server = TestServer::start(MtlsAcceptor::new(config.clone(), allowed)).await;
    Listener { server, config }
}

async fn run_and_check(l: &mut Listener, pki: &Pki, cases: &[Case]) {
    for (name, got) in run_matrix(l.server.addr, &pki.root(), cases).await {
        let case = cases.iter().find(|c| c.name == name).expect("case");
        check_client_side(name, &case.expect, &got);
        match &case.expect {
            Expect::Refuse(text) => {
                let reason = l.server.next_reason().await;
                assert!(
                    reason.contains(text),
                    "case {name}: server reason {reason:?} does not name {text:?}"
                );
            }
            Expect::Accept(..) => l.server.assert_no_reason(name),
        }
    }
}

#[tokio::test]
async fn mtls_matrix_any_profile_listener() {
    let pki = Pki::new();
    let (revoked, revoked_key) = pki.issue(CertSpec::device("pump-stolen"), days(30));
    let all = [Profile::Device, Profile::Staff, Profile::Gateway];
    let mut l = listener(&pki, &[revoked_entry(&revoked.identity.serial)], &all).await;
    let cases = standard_cases(&pki, &all, &revoked_key);
    assert!(cases.len() >= 10);
    run_and_check(&mut l, &pki, &cases).await;

    // TLS 1.1 offered: rustls answers with a fatal alert (handshake_failure) and logs the reason
    let answer = tls11_client_hello(l.server.addr).await;
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "expected an alert record, got {answer:?}"
    );
    assert_eq!(
        answer.get(5),
        Some(&2),
        "expected a fatal alert, got {answer:?}"
    );
    assert!(
        matches!(answer.get(6), Some(40 | 70)),
        "expected handshake_failure or protocol_version, got {answer:?}"
    );
    let reason = l.server.next_reason().await;
    assert!(reason.contains("peer is incompatible"), "tls 1.1: {reason}");

    // revoked AFTER the listener started: accepted, then refused once the new CRL is loaded
    let (later, later_key) = pki.issue(CertSpec::device("pump-lost-later"), days(30));
    let ok = probe(l.server.addr, &pki.root(), Some(&later_key)).await;
    assert_eq!(ok, Ok("ok device pump-lost-later".to_string()));
    let revoked_now = [
        revoked_entry(&revoked.identity.serial),
        revoked_entry(&later.identity.serial),
    ];
    l.config
        .update_revocation(&policy(&pki.ca, &revoked_now, true))
        .expect("reload");
    let refused = probe(l.server.addr, &pki.root(), Some(&later_key)).await;
    assert!(refused.is_err(), "revoked after start: {refused:?}");
    let reason = l.server.next_reason().await;
    assert!(reason.contains("Revoked"), "revoked after start: {reason}");

    // revoked only in the ledger's serial set (e.g. the CRL has not been rebuilt yet)
    let (ledger_only, ledger_only_key) = pki.issue(CertSpec::device("pump-ledger"), days(30));
    let mut p = policy(&pki.ca, &revoked_now, true);
    p.revoked_serials
        .insert(ledger_only.identity.serial.to_uppercase());
    l.config.update_revocation(&p).expect("reload");
    assert!(probe(l.server.addr, &pki.root(), Some(&ledger_only_key))
        .await
        .is_err());
    let reason = l.server.next_reason().await;
    assert!(
        reason.contains("Revoked"),
        "ledger-only revocation: {reason}"
    );

    // an expired CRL refuses even a good certificate (revocation expiration is enforced)
    l.config
        .update_revocation(&policy(&pki.ca, &revoked_now, false))
        .expect("reload");
    let good = pki.issue(CertSpec::device("pump-good"), days(30)).1;
    assert!(probe(l.server.addr, &pki.root(), Some(&good))
        .await
        .is_err());
    let reason = l.server.next_reason().await;
    assert!(
        reason.contains("certificate revocation list expired"),
        "expired crl: {reason}"
    );

    // and a fresh CRL lets it in again, without restarting the listener
    l.config
        .update_revocation(&policy(&pki.ca, &revoked_now, true))
        .expect("reload");
    assert_eq!(
        probe(l.server.addr, &pki.root(), Some(&good)).await,
        Ok("ok device pump-good".to_string())
    );
}

#[tokio::test]
async fn mtls_matrix_gateway_only_listener() {
    // the Raft listener: only gateway certificates; valid staff and device certificates are
    // refused by the identity check after the handshake
    let pki = Pki::new();
    let (revoked, revoked_key) = pki.issue(CertSpec::device("pump-stolen"), days(30));
    let mut l = listener(
        &pki,
        &[revoked_entry(&revoked.identity.serial)],
        &[Profile::Gateway],
    )
    .await;
    let cases = standard_cases(&pki, &[Profile::Gateway], &revoked_key);
    run_and_check(&mut l, &pki, &cases).await;
}

#[tokio::test]
async fn device_of_another_gateway_needs_its_crl_or_unknown_status_allowed() {
    // gw2's issuing CA is signed by the same root; gw1 holds only its own CRL
    let pki = Pki::new();
    let root = certs::RootCa::load(&pki.dir.path().join("pki")).expect("root");
    let pki2 = pki.dir.path().join("pki2");
    let csr = certs::request_issuing_ca(&pki2, "gw2").expect("csr");
    let cert = root.sign_issuing_csr(&csr, 365).expect("sign");
    let ca2 = certs::install_issuing_ca(&pki2, &cert, root.cert_pem()).expect("install");
    let (dev2, dev2_key) = key_of(
        ca2.issue(&CertSpec::device("pump-at-gw2"), days(30))
            .expect("issue"),
    );
    let mut l = listener(&pki, &[], &[Profile::Device]).await;

    // default: unknown revocation status is refused
    assert!(probe(l.server.addr, &pki.root(), Some(&dev2_key))
        .await
        .is_err());
    let reason = l.server.next_reason().await;
    assert!(reason.contains("UnknownRevocationStatus"), "{reason}");

    // with gw2's CRL it is accepted
    let now = OffsetDateTime::now_utc();
    let crl2 = ca2
        .build_crl(&[], now, now + time::Duration::hours(1))
        .expect("crl2");
    let mut p = policy(&pki.ca, &[], true);
    p.crls.push(crl2.der);
    l.config.update_revocation(&p).expect("reload");
    assert_eq!(
        probe(l.server.addr, &pki.root(), Some(&dev2_key)).await,
        Ok("ok device pump-at-gw2".to_string())
    );

    // allowing unknown status without gw2's CRL, the ledger's serial set still refuses it
    let mut p = policy(&pki.ca, &[], true);
    p.allow_unknown_revocation_status = true;
    l.config.update_revocation(&p).expect("reload");
    assert!(probe(l.server.addr, &pki.root(), Some(&dev2_key))
        .await
        .is_ok());
    p.revoked_serials.insert(dev2.identity.serial.clone());
    l.config.update_revocation(&p).expect("reload");
    assert!(probe(l.server.addr, &pki.root(), Some(&dev2_key))
        .await
        .is_err());
    assert!(l.server.next_reason().await.contains("Revoked"));
}
