//! Cross-checks with the real `openssl` command line: chains verify, and what `openssl x509 -text`
//! prints agrees with what we issued, for every profile; CRLs and CSRs interoperate.

use std::path::{Path, PathBuf};
use std::process::Command;

use certs::enroll::TokenStore;
use certs::{
    init_site_ca, CaInit, CertSpec, DeviceSpec, RevocationReason, Revoked, StaffRole, Validity,
};
use time::OffsetDateTime;

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (Debian package openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

struct Files {
    root: PathBuf,
    issuing: PathBuf,
}

fn verify(f: &Files, leaf: &Path, purpose: Option<&str>) -> (bool, String) {
    let mut args = vec!["verify", "-CAfile", s(&f.root), "-untrusted", s(&f.issuing)];
    if let Some(p) = purpose {
        args.extend(["-purpose", p]);
    }
    args.push(s(leaf));
    openssl(&args)
}

#[test]
fn openssl_agrees_with_every_profile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let ca = init_site_ca(&pki, &CaInit::new("Test Site", "gw1")).expect("ca");
    let f = Files {
        root: pki.join("root.crt"),
        issuing: pki.join("issuing.crt"),
    };
    // the CA certificates themselves
    let (ok, text) = openssl(&["x509", "-in", s(&f.root), "-text", "-noout"]);
    assert!(ok, "{text}");
    for needle in [
        "CA:TRUE, pathlen:1",
        "Certificate Sign, CRL Sign",
        "prime256v1",
        "ecdsa-with-SHA256",
    ] {
        assert!(text.contains(needle), "root: missing {needle:?}\n{text}");
    }
    let (ok, text) = openssl(&["x509", "-in", s(&f.issuing), "-text", "-noout"]);
    assert!(ok && text.contains("CA:TRUE, pathlen:0"), "{text}");
    let (ok, text) = openssl(&["verify", "-CAfile", s(&f.root), s(&f.issuing)]);
    assert!(ok && text.contains(": OK"), "{text}");
    // private keys parse as P-256 keys
    let (ok, text) = openssl(&[
        "pkey",
        "-in",
        s(&pki.join("issuing.key")),
        "-noout",
        "-text",
    ]);
    assert!(ok && text.contains("prime256v1"), "{text}");

    struct Expect {
        spec: CertSpec,
        file: &'static str,
        text: Vec<&'static str>,
        good_purposes: Vec<&'static str>,
        bad_purposes: Vec<&'static str>,
    }
    let cases = vec![
        Expect {
            spec: CertSpec::Device(DeviceSpec {
                id: "(01)00884838035249(21)SN123".into(),
                modbus_role: Some("operator".into()),
                modbus_server: true,
                dns_names: Vec::new(),
                ip_addrs: Vec::new(),
            }),
            file: "device.crt",
            text: vec![
                "CN = devices/(01)00884838035249(21)SN123",
                "URI:urn:medledger:device:(01)00884838035249(21)SN123",
                "Digital Signature",
                "TLS Web Client Authentication",
                "TLS Web Server Authentication",
                "CA:FALSE",
                "1.3.6.1.4.1.50316.802.1:",
                "..operator",
            ],
            good_purposes: vec!["sslclient", "sslserver"],
            bad_purposes: vec![],
        },
        Expect {
            spec: CertSpec::device("pump-0042"),
            file: "pump.crt",
            text: vec![
                "CN = devices/pump-0042",
                "URI:urn:medledger:device:pump-0042",
                "TLS Web Client Authentication",
            ],
            good_purposes: vec!["sslclient"],
            bad_purposes: vec!["sslserver"],
        },
        Expect {
            spec: CertSpec::staff("e1234", "Ada Lovelace", StaffRole::Auditor),
            file: "staff.crt",
            text: vec![
                "OU = auditor",
                "name = Ada Lovelace",
                "CN = staff:e1234",
                "URI:urn:medledger:staff:e1234",
                "TLS Web Client Authentication",
                "Digital Signature",
            ],
            good_purposes: vec!["sslclient"],
            bad_purposes: vec!["sslserver"],
        },
        Expect {
            spec: CertSpec::gateway("gw1"),
            file: "gateway.crt",
            text: vec![
                "CN = gateway:gw1",
                "URI:urn:medledger:gateway:gw1",
                "DNS:localhost",
                "IP Address:127.0.0.1",
                "TLS Web Server Authentication, TLS Web Client Authentication",
            ],
            good_purposes: vec!["sslclient", "sslserver"],
            bad_purposes: vec![],
        },
        Expect {
            spec: CertSpec::service("broker"),
            file: "broker.crt",
            text: vec![
                "CN = service:broker",
                "URI:urn:medledger:service:broker",
                "DNS:localhost",
            ],
            good_purposes: vec!["sslserver"],
            bad_purposes: vec!["sslclient"],
        },
    ];
    for c in cases {
        let issued = ca
            .issue(&c.spec, Validity::days(30).expect("days"))
            .expect("issue");
        let leaf = dir.path().join(c.file);
        let key = dir.path().join(format!("{}.key", c.file));
        issued.write_files(&leaf, &key).expect("write");
        let (ok, text) = verify(&f, &leaf, None);
        assert!(ok && text.contains(": OK"), "{}: {text}", c.file);
        for p in &c.good_purposes {
            let (ok, text) = verify(&f, &leaf, Some(p));
            assert!(ok, "{} should verify for {p}: {text}", c.file);
        }
        for p in &c.bad_purposes {
            let (ok, text) = verify(&f, &leaf, Some(p));
            assert!(!ok, "{} must not verify for {p}: {text}", c.file);
        }
        let (ok, text) = openssl(&["x509", "-in", s(&leaf), "-text", "-noout"]);
        assert!(ok, "{text}");
        for needle in &c.text {
            assert!(
                text.contains(needle),
                "{}: missing {needle:?}\n{text}",
                c.file
            );
        }
        // serial and fingerprint as openssl computes them
        let (_, serial) = openssl(&["x509", "-in", s(&leaf), "-noout", "-serial"]);
        assert_eq!(
            serial.trim().to_lowercase(),
            format!("serial={}", issued.identity.serial)
        );
        let (_, fp) = openssl(&["x509", "-in", s(&leaf), "-noout", "-fingerprint", "-sha256"]);
        let fp = fp
            .trim()
            .rsplit('=')
            .next()
            .unwrap_or_default()
            .replace(':', "")
            .to_lowercase();
        assert_eq!(fp, issued.identity.fingerprint, "{}", c.file);
        // the key belongs to the certificate
        let (_, cert_pub) = openssl(&["x509", "-in", s(&leaf), "-noout", "-pubkey"]);
        let (_, key_pub) = openssl(&["pkey", "-in", s(&key), "-pubout"]);
        assert_eq!(cert_pub, key_pub, "{}", c.file);
    }
}

#[test]
fn openssl_reads_our_crl_and_signs_csrs_we_accept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let ca = init_site_ca(&pki, &CaInit::new("Test Site", "gw1")).expect("ca");
    let revoked = ca
        .issue(
            &CertSpec::device("pump-stolen"),
            Validity::days(5).expect("d"),
        )
        .expect("issue");
    let good = ca
        .issue(
            &CertSpec::device("pump-good"),
            Validity::days(5).expect("d"),
        )
        .expect("issue");
    let now = OffsetDateTime::now_utc();
    let crl = ca
        .build_crl(
            &[Revoked {
                serial: revoked.identity.serial.clone(),
                revoked_at: now,
                reason: RevocationReason::KeyCompromise,
            }],
            now,
            now + time::Duration::days(1),
        )
        .expect("crl");
    let crl_path = dir.path().join("crl.pem");
    crl.write_pem(&crl_path).expect("write crl");
    let (ok, text) = openssl(&["crl", "-in", s(&crl_path), "-text", "-noout"]);
    assert!(ok, "{text}");
    assert!(
        text.to_lowercase().contains(&revoked.identity.serial),
        "{text}"
    );
    assert!(
        !text.to_lowercase().contains(&good.identity.serial),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    let (ok, text) = openssl(&[
        "crl",
        "-in",
        s(&crl_path),
        "-noout",
        "-CAfile",
        s(&pki.join("issuing.crt")),
    ]);
    assert!(ok && text.contains("verify OK"), "{text}");
    // openssl verify with the CRL: revoked refused, good accepted
    for (issued, want_ok) in [(&revoked, false), (&good, true)] {
        let leaf = dir.path().join(format!("{}.crt", issued.identity.id));
        std::fs::write(&leaf, &issued.cert_pem).expect("write");
        let (ok, text) = openssl(&[
            "verify",
            "-crl_check",
            "-CRLfile",
            s(&crl_path),
            "-CAfile",
            s(&pki.join("root.crt")),
            "-untrusted",
            s(&pki.join("issuing.crt")),
            s(&leaf),
        ]);
        assert_eq!(ok, want_ok, "{text}");
        if !want_ok {
            assert!(text.contains("certificate revoked"), "{text}");
        }
    }

    // a device that makes its key and CSR with openssl enrolls with a token
    let key = dir.path().join("dev.key");
    let csr = dir.path().join("dev.csr");
    let (ok, text) = openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        s(&key),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = openssl(&[
        "req",
        "-new",
        "-key",
        s(&key),
        "-subj",
        "/CN=pump-9",
        "-out",
        s(&csr),
    ]);
    assert!(ok, "{text}");
    let tokens = TokenStore::open(pki.join("tokens.json"));
    let token = tokens
        .create(
            &DeviceSpec {
                id: "pump-9".into(),
                modbus_role: None,
                modbus_server: false,
                dns_names: Vec::new(),
                ip_addrs: Vec::new(),
            },
            time::Duration::hours(1),
        )
        .expect("token");
    let csr_pem = std::fs::read_to_string(&csr).expect("csr");
    let issued = certs::sign_csr(
        &ca,
        &tokens,
        &csr_pem,
        &token,
        "pump-9",
        Validity::days(5).expect("d"),
    )
    .expect("sign openssl csr");
    let leaf = dir.path().join("pump-9.crt");
    std::fs::write(&leaf, &issued.chain_pem).expect("write");
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        s(&pki.join("root.crt")),
        "-untrusted",
        s(&pki.join("issuing.crt")),
        s(&leaf),
    ]);
    assert!(ok, "{text}");
    let (_, cert_pub) = openssl(&["x509", "-in", s(&leaf), "-noout", "-pubkey"]);
    let (_, key_pub) = openssl(&["pkey", "-in", s(&key), "-pubout"]);
    assert_eq!(cert_pub, key_pub);
}
