//! The staff web page in a real headless Chromium (Debian's `chromium`, driven over the DevTools
//! protocol by chromiumoxide) against a real gateway process and its real TLS: Chromium trusts
//! the test site's certificates by their SPKI hashes (`--ignore-certificate-errors-spki-list`),
//! with every other certificate check left on.
//!
//! Sign in; list and filter devices; open one (state, timeline with a correction beside its
//! original, open alarm, receipts checked valid in the browser); record and sign an event
//! (password asked at the first signature); see it in the timeline with its badge valid; a
//! tampered receipt shows invalid; the badge says which site root endorsed the keys, and NOT
//! endorsed when a key's endorsement is missing, forged or another gateway's; a wrong password
//! locks the account after `max_failures`.
//! Writes a screenshot of the device page and prints the page's weight (first load and next).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use certs::StaffRole;
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::Page;
use futures::StreamExt;
use medledger_tests::cluster::{start_nodes, Gateway, Site};
use medledger_tests::{bin, free_port};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const TECH_PASSWORD: &str = "tess tech's long password";
const VICTIM_PASSWORD: &str = "victim's long password";
const SUPER_PASSWORD: &str = "sam super's long password";
const ROAM_PASSWORD: &str = "ro am's long password";
const MAX_FAILURES: u32 = 3;

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// base64 SHA-256 of the SubjectPublicKeyInfo of every certificate in the PEM files: what
/// `--ignore-certificate-errors-spki-list` takes.
fn spki_hashes(files: &[&Path]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        let pem = std::fs::read(f).expect("read pem");
        for block in pem_blocks(&pem) {
            let (_, cert) = x509_parser::parse_x509_certificate(&block).expect("certificate");
            let spki = cert.tbs_certificate.subject_pki.raw;
            out.push(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki)));
        }
    }
    out
}

fn pem_blocks(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE") {
            cur = Some(String::new());
        } else if line.starts_with("-----END CERTIFICATE") {
            if let Some(b) = cur.take() {
                out.push(
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .expect("pem base64"),
                );
            }
        } else if let Some(b) = cur.as_mut() {
            b.push_str(line.trim());
        }
    }
    out
}

fn staff_add(data_dir: &Path, id: &str, name: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(bin("medledger"))
        .args([
            "staff",
            "add",
            id,
            "--role",
            role,
            "--name",
            name,
            "--data-dir",
        ])
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn staff add");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write password");
    let out = child.wait_with_output().expect("staff add");
    assert!(
        out.status.success(),
        "staff add {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn js<T: serde::de::DeserializeOwned>(page: &Page, expr: &str) -> T {
    page.evaluate(expr)
        .await
        .unwrap_or_else(|e| panic!("evaluate {expr}: {e}"))
        .into_value()
        .unwrap_or_else(|e| panic!("value of {expr}: {e}"))
}

/// Polls a JavaScript expression in the page until it is true.
async fn until(page: &Page, what: &str, expr: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = page.evaluate(expr).await {
            if r.into_value::<bool>().unwrap_or(false) {
                return;
            }
        }
        if std::time::Instant::now() > deadline {
            let body: String = js(page, "document.body ? document.body.innerText : ''").await;
            panic!("timed out waiting for {what}; the page says:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the element `selector` names.
async fn click(page: &Page, selector: &str) {
    page.find_element(selector)
        .await
        .unwrap_or_else(|e| panic!("{selector}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {selector}: {e}"));
}

/// Types into a labelled input with the keyboard.
async fn type_into(page: &Page, selector: &str, text: &str) {
    let el = page.find_element(selector).await.expect(selector);
    el.click().await.expect("focus");
    el.type_str(text).await.expect("type");
}

/// Signs in through the form, as a person would: the keyboard, then Enter.
async fn sign_in(page: &Page, base: &str, account: &str, password: &str) {
    page.goto(format!("{base}/login"))
        .await
        .expect("login page");
    until(
        page,
        "the sign-in form",
        "!!document.querySelector('#password')",
    )
    .await;
    type_into(page, "#account", account).await;
    type_into(page, "#password", password).await;
    page.find_element("#password")
        .await
        .expect("password")
        .press_key("Enter")
        .await
        .expect("enter");
}

/// Signs in expecting a refusal; returns the page's message.
async fn refused_sign_in(page: &Page, base: &str, account: &str, password: &str) -> String {
    sign_in(page, base, account, password).await;
    until(
        page,
        "a refusal",
        "!!document.querySelector('#login-message')",
    )
    .await;
    js(page, "document.querySelector('#login-message').innerText").await
}

/// The device ids the device list at `url` shows.
async fn listed(page: &Page, url: &str) -> Vec<String> {
    page.goto(url).await.expect(url);
    js(
        page,
        "[...document.querySelectorAll('table.devices tbody th')].map(t => t.innerText)",
    )
    .await
}

/// The value (`name=value`) of cookie `name` that `r` sets, unless it deletes it.
pub(crate) fn cookie_set(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")) && !v.contains("Max-Age=0"))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

/// Bytes transferred for the current document and its resources (Resource Timing).
async fn page_weight(page: &Page) -> (u64, u64) {
    let v: Value = js(
        page,
        "(() => { const n = performance.getEntriesByType('navigation')[0]; \
         const r = performance.getEntriesByType('resource'); \
         return { doc: n ? n.transferSize : 0, res: r.reduce((s, e) => s + e.transferSize, 0) }; })()",
    )
    .await;
    (
        v["doc"].as_u64().unwrap_or(0),
        v["res"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_sign_in_record_sign_and_check_receipts_in_chromium() {
    let Some(chromium) = chromium() else {
        panic!("chromium is not installed (tests/run.sh installs Debian's chromium)");
    };
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    // Each gateway holds an issuing CA of its own under the site root (gateway 1 `ca init`,
    // gateway 2 the `--issuing-only` flow), so each endorses its ledger key at start and the
    // receipt badge can check the endorsements against the root (docs/ledger-format.md §9.5).
    let tmp = tempfile::tempdir().expect("tempdir");
    let root_dir = tmp.path().join("node1").join("pki");
    let ca =
        certs::init_site_ca(&root_dir, &certs::CaInit::new("test hospital", "1")).expect("site ca");
    let site = Site { dir: tmp, ca };
    let web_port = free_port();
    let extra = format!(
        "[web]\nlisten = \"127.0.0.1:{web_port}\"\nmax_failures = {MAX_FAILURES}\nlockout_seconds = 600\n"
    );
    // Two gateways; the web page on the first. An account added on the second signs in on the
    // first's page.
    let prepared = vec![Gateway::new(&site, 1, &extra), Gateway::new(&site, 2, "")];
    {
        let pki = prepared[1].dir.join("pki");
        let csr = certs::request_issuing_ca(&pki, "2").expect("issuing csr");
        let cert = certs::RootCa::load(&root_dir)
            .expect("root")
            .sign_issuing_csr(&csr, 365)
            .expect("sign issuing ca");
        certs::install_issuing_ca(&pki, &cert, site.ca.root_pem()).expect("install issuing ca");
    }
    let voters: Vec<(u64, String)> = prepared.iter().map(|g| (g.id, g.addr())).collect();
    let nodes = start_nodes(&site, prepared, &voters).await;
    let gw = &nodes[0];
    let base = format!("https://127.0.0.1:{web_port}");
    staff_add(&gw.dir, "tess", "Tess Tech", "biomed", TECH_PASSWORD);
    staff_add(&gw.dir, "victim", "Vic Tim", "supervisor", VICTIM_PASSWORD);
    staff_add(&gw.dir, "sam", "Sam Super", "supervisor", SUPER_PASSWORD);
    staff_add(&nodes[1].dir, "roam", "Ro Am", "biomed", ROAM_PASSWORD);

    // A device's history through the API: registered, an alarm raised, a calibration and a
    // correction of it.
    let api = site.staff_client("web-biomed", StaffRole::Biomed);
    // Both gateways endorse their keys at start: wait for the two endorsements.
    medledger_tests::cluster::endorsed_keys(&api, &gw.addr(), 2).await;
    let post = |body: Value| {
        let api = api.clone();
        let url = format!("https://{}/v1/events", gw.addr());
        async move {
            let r = api.post(url).json(&body).send().await.expect("post event");
            assert!(
                r.status().is_success(),
                "{}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
            r.json::<Value>().await.expect("json")["seq"]
                .as_u64()
                .expect("seq")
        }
    };
    let dev = "pump-web-7";
    // Registered through the registry two years ago with a 180-day PM interval and none done:
    // its PM is overdue.
    let r = api
        .post(format!("https://{}/v1/devices", gw.addr()))
        .json(
            &json!({"device_id": dev, "location": "ICU 3", "life_support": true,
            "manufacturer": "Acme", "model": "P-7", "pm_interval_days": 180,
            "occurred_at": "2024-01-01T00:00:00Z"}),
        )
        .send()
        .await
        .expect("register");
    assert!(
        r.status().is_success(),
        "register: {}",
        r.text().await.unwrap_or_default()
    );
    post(
        json!({"kind": "device-registered", "device_id": "vent-quiet-1", "components": [
        {"name": "location", "class": "device", "value": "Ward 9"}]}),
    )
    .await;
    post(json!({"kind": "alarm", "device_id": dev, "components": [
        {"name": "rule", "class": "maintenance", "value": "occlusion"},
        {"name": "state", "class": "device", "value": "raised"}]}))
    .await;
    let cal = post(
        json!({"kind": "calibration", "device_id": dev, "components": [
        {"name": "result", "class": "maintenance", "value": "pass"}]}),
    )
    .await;
    post(
        json!({"kind": "calibration", "device_id": dev, "corrects": cal, "reason": "wrong sheet",
        "components": [
        {"name": "result", "class": "maintenance", "value": "fail"},
        {"name": "correction_reason", "class": "maintenance", "value": "wrong sheet"}]}),
    )
    .await;

    let out_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| medledger_tests::workspace_root().join("target"))
        .join("web-test");
    std::fs::create_dir_all(&out_dir).expect("artifact dir");
    let profile = tempfile::tempdir().expect("profile dir");
    let spki = spki_hashes(&[
        &gw.dir.join("pki/gateway.crt"),
        &gw.dir.join("pki/root.crt"),
    ]);
    let config = BrowserConfig::builder()
        .chrome_executable(&chromium)
        .no_sandbox()
        .new_headless_mode()
        .respect_https_errors()
        .user_data_dir(profile.path())
        .window_size(1280, 1600)
        // No device emulation: the page is laid out at the window's width (corrections beside
        // their originals need more than 800 px).
        .viewport(None)
        // chromiumoxide adds the leading dashes.
        .arg(format!(
            "ignore-certificate-errors-spki-list={}",
            spki.join(",")
        ))
        .launch_timeout(Duration::from_secs(60))
        .request_timeout(Duration::from_secs(60))
        .build()
        .expect("browser config");
    let (mut browser, mut handler) = Browser::launch(config).await.expect("launch chromium");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser.new_page("about:blank").await.expect("page");

    // A page without a session goes to the sign-in form.
    page.goto(format!("{base}/devices"))
        .await
        .expect("goto devices");
    until(&page, "the sign-in page", "location.pathname === '/login'").await;

    // Sign in; back on the device list, both devices listed with their badges.
    sign_in(&page, &base, "tess", TECH_PASSWORD).await;
    until(
        &page,
        "the device list",
        "location.pathname === '/devices' && !!document.querySelector('table.devices')",
    )
    .await;
    let cookie_visible: bool = js(&page, "document.cookie.includes('medledger-session')").await;
    assert!(
        !cookie_visible,
        "the session cookie is readable by scripts (not HttpOnly)"
    );
    let rows: Vec<String> = js(
        &page,
        "[...document.querySelectorAll('table.devices tbody th')].map(t => t.innerText)",
    )
    .await;
    assert!(
        rows.contains(&dev.to_string()) && rows.contains(&"vent-quiet-1".to_string()),
        "{rows:?}"
    );
    let row: String = js(&page, &format!("[...document.querySelectorAll('table.devices tbody tr')].find(r => r.innerText.includes('{dev}')).innerText")).await;
    assert!(
        row.contains("life support")
            && row.contains("1 open alarm")
            && row.contains("ICU 3")
            && row.contains("PM overdue: 2024-06-29")
            && row.contains("in-service"),
        "{row}"
    );
    // The legacy registration (no registry component) is registered too, with no interval.
    let row: String = js(&page, "[...document.querySelectorAll('table.devices tbody tr')].find(r => r.innerText.includes('vent-quiet-1')).innerText").await;
    assert!(
        row.contains("no interval known") && row.contains("Ward 9"),
        "{row}"
    );
    // Filters: open alarms only, and a search.
    let rows = listed(&page, &format!("{base}/devices?alarms=1")).await;
    assert_eq!(rows, vec![dev.to_string()]);
    let rows = listed(&page, &format!("{base}/devices?overdue=1")).await;
    assert_eq!(rows, vec![dev.to_string()]);
    let rows = listed(&page, &format!("{base}/devices?q=ward")).await;
    assert_eq!(rows, vec!["vent-quiet-1".to_string()]);

    // Open the device from the list.
    page.goto(format!("{base}/devices")).await.expect("devices");
    // First load of the device page with an empty cache, for its weight.
    page.execute(chromiumoxide::cdp::browser_protocol::network::ClearBrowserCacheParams::default())
        .await
        .expect("clear cache");
    click(&page, &format!("a.device-link[href='/devices/{dev}']")).await;
    until(
        &page,
        "the device page",
        &format!(
            "location.pathname === '/devices/{dev}' && !!document.querySelector('ol.timeline')"
        ),
    )
    .await;
    // The correction sits beside its original; the alarm is open.
    let beside: bool = js(&page, &format!("!!document.querySelector('li.corrected #entry-{cal}') && !!document.querySelector('li.corrected .corrections .entry')")).await;
    assert!(beside, "the correction is not shown beside entry {cal}");
    let alarms: String = js(&page, "document.querySelector('ul.alarms').innerText").await;
    assert!(alarms.contains("occlusion"), "{alarms}");
    // The registry's derived state.
    let state: String = js(&page, "document.querySelector('dl.state').innerText").await;
    assert!(
        state.contains("PM overdue: 2024-06-29")
            && state.contains("180 days")
            && state.contains("Acme P-7")
            && state.contains("in-service"),
        "{state}"
    );
    // Every receipt checks out in the browser.
    until(
        &page,
        "every receipt badge valid",
        "[...document.querySelectorAll('button.receipt')].every(b => b.dataset.state === 'valid')",
    )
    .await;
    // Measured once every badge has fetched its receipt.
    let first = page_weight(&page).await;
    let inline: u32 = js(
        &page,
        "document.querySelectorAll('script:not([src])').length",
    )
    .await;
    assert_eq!(inline, 0, "no inline script under the CSP");

    // Record and sign: the first signature of the session asks for the password.
    until(
        &page,
        "the password field of the first signature",
        "!!document.querySelector('#sign-password')",
    )
    .await;
    type_into(
        &page,
        "#notes",
        "flow rate checked against the reference meter",
    )
    .await;
    click(&page, "#meaning-performed").await;
    type_into(&page, "#sign-password", "not my password").await;
    click(&page, "#sign").await;
    until(
        &page,
        "the refusal",
        "!!document.querySelector('#record-message')",
    )
    .await;
    let msg: String = js(&page, "document.querySelector('#record-message').innerText").await;
    assert!(msg.contains("Wrong user name or password"), "{msg}");
    type_into(
        &page,
        "#notes",
        "flow rate checked against the reference meter",
    )
    .await;
    type_into(&page, "#sign-password", TECH_PASSWORD).await;
    click(&page, "#sign").await;
    until(
        &page,
        "the signed entry",
        "location.hash.startsWith('#entry-') && !!document.querySelector(location.hash)",
    )
    .await;
    let seq: u64 = js::<String>(&page, "location.hash.slice('#entry-'.length)")
        .await
        .parse()
        .expect("seq");
    let entry: String = js(
        &page,
        &format!("document.querySelector('#entry-{seq}').innerText"),
    )
    .await;
    assert!(
        entry.contains("Signed by Tess Tech (biomed), meaning: performed")
            && entry.contains("flow rate checked"),
        "{entry}"
    );
    until(
        &page,
        "the new entry's receipt valid",
        &format!("document.querySelector('#entry-{seq} button.receipt').dataset.state === 'valid'"),
    )
    .await;
    // The second signature of the session needs no password (§11.200).
    let asks: bool = js(&page, "!!document.querySelector('#sign-password')").await;
    assert!(
        !asks,
        "the password is asked again after the first signature"
    );
    // The ledger holds the signature's meaning, as the API shows it.
    let hist: Value = api
        .get(format!("https://{}/v1/devices/{dev}/history", gw.addr()))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    let e = hist["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["seq"] == seq)
        .expect("entry in history");
    // The same `signature` component as a record signed over the API (the calibration).
    assert_eq!(e["signature"]["name"], "Tess Tech");
    assert_eq!(e["signature"]["meaning"], "performed");
    assert_eq!(e["signature"]["id"], "tess");
    assert_eq!(e["author"], "web:tess");
    let by_api = hist["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["seq"] == cal)
        .expect("the calibration");
    let keys = |v: &Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(
        keys(&e["fields"]["signature"]),
        keys(&by_api["fields"]["signature"]),
        "web {e} / api {by_api}"
    );
    assert!(e["fields"].get("signer_name").is_none(), "{e}");

    // Reviewing one's own record is refused with the API's words.
    click(&page, &format!("#sign-{seq} button.review")).await;
    until(
        &page,
        "the refusal of a self-review",
        "!!document.querySelector('#record-message')",
    )
    .await;
    let msg: String = js(&page, "document.querySelector('#record-message').innerText").await;
    assert!(msg.contains("separation of duties"), "{msg}");
    // Nor may a biomed approve: no approve button.
    let approve: bool = js(&page, "!!document.querySelector('button.approve')").await;
    assert!(!approve, "a biomed is offered approval");

    // The gateway writes entries of version 2 (command format 3, no signature of their own):
    // the badge checked this one by its leaf, inclusion proof and the signed head alone.
    let version: String = js(
        &page,
        &format!("(async () => (await (await fetch('/data/entries/{seq}/receipt')).json()).entry.entry.slice(0, 2))()"),
    )
    .await;
    assert_eq!(version, "02", "entry {seq} is not of version 2");
    // A tampered receipt shows invalid: one bit of the entry, its version byte, or of the
    // head's signature.
    for (what, tamper) in [
        ("entry bytes", "r.entry.entry = r.entry.entry.slice(0, 40) + (r.entry.entry[40] === '0' ? '1' : '0') + r.entry.entry.slice(41)"),
        ("the version byte", "r.entry.entry = (r.entry.entry.slice(0, 2) === '02' ? '01' : '02') + r.entry.entry.slice(2)"),
        ("head signature", "r.tree_head.signature = (r.tree_head.signature[0] === '0' ? '1' : '0') + r.tree_head.signature.slice(1)"),
        ("a disclosed value", "r.entry.openings.find(o => o).value = '\"forged\"'"),
    ] {
        let state: String = js(&page, &format!(
            "(async () => {{ const r = await (await fetch('/data/entries/{seq}/receipt')).json(); {tamper}; \
             const b = document.querySelector('#entry-{seq} button.receipt'); \
             return await MedLedgerReceipt.check(b, r); }})()"
        ))
        .await;
        assert_eq!(state, "invalid", "a receipt with tampered {what} was not refused");
    }

    // The badge names the site root the keys are endorsed by: its subject and SHA-256
    // fingerprint, the one `medledger ca init` prints. An endorsement missing, forged (its
    // signature altered), or another gateway's: the badge says NOT endorsed, naming the gateway.
    let root_der = &pem_blocks(site.ca.root_pem().as_bytes())[0];
    let fingerprint = format!("sha256:{}", hex::encode(Sha256::digest(root_der)));
    let badge: String = js(
        &page,
        &format!(
            "(async () => {{ const b = document.querySelector('#entry-{seq} button.receipt');              await MedLedgerReceipt.check(b); return b.dataset.state + '|' + b.textContent + '|' + b.title; }})()"
        ),
    )
    .await;
    assert!(
        badge.starts_with("valid|Receipt: valid, endorsed by ")
            && badge.contains("every key endorsed by ")
            && badge.contains(&fingerprint),
        "{badge} ({fingerprint})"
    );
    // The flipped bit is in the last byte of the certificate: its ECDSA signature's `s`.
    let forge = "const e = r.endorsements.find(e => e.node_id === r.entry_node);         const der = MedLedgerReceipt.pemCertificate(e.certificate, 'x'); der[der.length - 1] ^= 1;         e.certificate = '-----BEGIN CERTIFICATE-----\\n' + btoa(String.fromCharCode(...der)) + '\\n-----END CERTIFICATE-----\\n'";
    for (what, tamper, want) in [
        (
            "its endorsement missing",
            "r.endorsements = r.endorsements.filter(e => e.node_id !== r.entry_node)",
            "has no endorsement in the receipt",
        ),
        (
            "its endorsement forged",
            forge,
            "the endorsement is not signed by \"MedLedger issuing CA",
        ),
        (
            "another gateway's endorsement in its place",
            "const other = r.endorsements.find(e => e.node_id !== r.entry_node);              r.endorsements = [other, Object.assign({}, other, {node_id: r.entry_node})]",
            "is not endorsed by the site root",
        ),
    ] {
        let got: String = js(&page, &format!(
            "(async () => {{ const r = await (await fetch('/data/entries/{seq}/receipt')).json();              r.entry_node = r.tree_head.node_id; {tamper}; delete r.entry_node;              const b = document.querySelector('#entry-{seq} button.receipt');              const state = await MedLedgerReceipt.check(b, r); return state + '|' + b.textContent + '|' + b.title; }})()"
        ))
        .await;
        assert!(
            got.starts_with("unendorsed|Receipt: NOT endorsed by the site|gateway ")
                && got.contains(want),
            "a receipt with {what}: {got}"
        );
    }
    // The DER walk refuses a truncated certificate with a reason, and reads the root's subject.
    let walk: String = js(
        &page,
        &format!(
            "(() => {{ const der = Uint8Array.from(atob('{}'), c => c.charCodeAt(0));              const cn = MedLedgerReceipt.parseCertificate(der).cn;              try {{ MedLedgerReceipt.parseCertificate(der.subarray(0, der.length - 9)); return cn + '|parsed'; }}              catch (e) {{ return cn + '|' + e.message; }} }})()",
            base64::engine::general_purpose::STANDARD.encode(root_der)
        ),
    )
    .await;
    assert!(
        walk.ends_with("|certificate: truncated DER")
            && badge.contains(walk.split('|').next().unwrap_or("?")),
        "{walk}"
    );

    // Once a checkpoint both gateways co-signed holds the entry, its receipt is cut there (voters
    // 1 and 2, docs/ledger-format.md §9.6) and the badge checks the co-signature and the
    // majority: valid as served, invalid with the co-signature dropped or forged.
    let receipt = format!("(await (await fetch('/data/entries/{seq}/receipt')).json())");
    until(
        &page,
        "the entry's receipt cut at a co-signed checkpoint",
        &format!("(async () => JSON.stringify({receipt}.voters) === '[1,2]')()"),
    )
    .await;
    // The co-signer is the gateway that did not record the checkpoint.
    let signer: u64 = js(
        &page,
        &format!("(async () => {receipt}.tree_head.node_id)()"),
    )
    .await;
    let other = 3 - signer;
    for (what, tamper, want) in [
        (
            "nothing",
            "",
            "valid|signed by gateways 1, 2 of the 2 voters".to_owned(),
        ),
        (
            "its co-signature dropped",
            "r.cosignatures = []",
            format!("invalid|gateways {other} did not sign it"),
        ),
        (
            "its co-signature forged",
            "const c = r.cosignatures[0]; c.signature = (c.signature[0] === '0' ? '1' : '0') + c.signature.slice(1)",
            format!("invalid|the co-signature of gateway {other} does not verify"),
        ),
    ] {
        let got: String = js(&page, &format!(
            "(async () => {{ const r = {receipt}; {tamper}; \
             const b = document.querySelector('#entry-{seq} button.receipt'); \
             const state = await MedLedgerReceipt.check(b, r); return state + '|' + b.title; }})()"
        ))
        .await;
        let (state, title) = want.split_once('|').expect("state|title");
        assert!(
            got.starts_with(state) && got.contains(title),
            "a co-signed receipt with {what}: {got}"
        );
    }

    // The screenshot artifact: the device page with its badges checked.
    page.goto(format!("{base}/devices/{dev}"))
        .await
        .expect("reload device");
    until(&page, "badges valid again", "document.querySelectorAll('button.receipt').length > 0 && [...document.querySelectorAll('button.receipt')].every(b => b.dataset.state === 'valid')").await;
    let next = page_weight(&page).await;
    let shot = out_dir.join("device-page.png");
    page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), &shot)
        .await
        .expect("screenshot");
    println!("screenshot of the device page: {}", shot.display());
    println!(
        "page weight of the device page: first load {} bytes (document {} + resources {}), next load {} bytes (document {} + resources {})",
        first.0 + first.1, first.0, first.1, next.0 + next.1, next.0, next.1
    );
    assert!(
        first.1 > next.1,
        "the script and style sheet are cached: {first:?} then {next:?}"
    );

    // The PM report page answers.
    page.goto(format!("{base}/reports/pm"))
        .await
        .expect("report");
    let report: String = js(&page, "document.querySelector('table.report').innerText").await;
    assert!(
        report.contains("life support") && report.contains("other equipment"),
        "{report}"
    );

    // A supervisor approves Tess's record: password at the first signature, then the approval
    // is an entry of its own naming the record.
    click(&page, ".who button").await;
    until(&page, "signed out", "location.pathname === '/login'").await;
    sign_in(&page, &base, "sam", SUPER_PASSWORD).await;
    until(&page, "the device list", "location.pathname === '/devices'").await;
    page.goto(format!("{base}/devices/{dev}"))
        .await
        .expect("device page");
    until(
        &page,
        "the approve button",
        &format!("!!document.querySelector('#sign-{seq} button.approve')"),
    )
    .await;
    type_into(&page, &format!("#comment-{seq}"), "checked the readings").await;
    type_into(&page, &format!("#sign-password-{seq}"), SUPER_PASSWORD).await;
    click(&page, &format!("#sign-{seq} button.approve")).await;
    until(
        &page,
        "the approval entry",
        &format!("location.hash.startsWith('#entry-') && location.hash !== '#entry-{seq}' && !!document.querySelector(location.hash)"),
    )
    .await;
    let approval: String = js(&page, "document.querySelector(location.hash).innerText").await;
    assert!(
        approval.contains("approval")
            && approval.contains("Signed by Sam Super (supervisor), meaning: approved")
            && approval.contains(&format!("entry #{seq}")),
        "{approval}"
    );
    click(&page, ".who button").await;
    until(&page, "signed out", "location.pathname === '/login'").await;

    // A wrong password locks the account after MAX_FAILURES tries, and the right one is
    // refused while it is locked.
    for i in 1..=MAX_FAILURES {
        let msg = refused_sign_in(&page, &base, "victim", "wrong password").await;
        if i < MAX_FAILURES {
            assert!(
                msg.contains("Wrong user name or password"),
                "try {i}: {msg}"
            );
        } else {
            assert!(msg.contains("locked"), "try {i}: {msg}");
        }
    }
    let msg = refused_sign_in(&page, &base, "victim", VICTIM_PASSWORD).await;
    assert!(
        msg.contains("locked"),
        "the right password got in while locked: {msg}"
    );
    // Every sign-in, failure and lock is in the gateway's log.
    let log = std::fs::read_to_string(gw.dir.join("gateway.log")).expect("log");
    assert!(
        log.contains("account locked after repeated sign-in failures"),
        "no lock in the log"
    );
    assert!(
        log.contains("signed in") && log.contains("sign-in failed"),
        "sign-ins not logged"
    );

    // An account added on gateway 2 signs in on gateway 1's page; locked on gateway 2, it is
    // refused on gateway 1 at the next sign-in.
    sign_in(&page, &base, "roam", ROAM_PASSWORD).await;
    until(
        &page,
        "the device list for an account of gateway 2",
        "location.pathname === '/devices' && document.body.innerText.includes('Ro Am')",
    )
    .await;
    click(&page, ".who button").await;
    until(&page, "signed out", "location.pathname === '/login'").await;
    let out = Command::new(bin("medledger"))
        .args(["staff", "lock", "roam", "--data-dir"])
        .arg(&nodes[1].dir)
        .output()
        .expect("staff lock");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msg = refused_sign_in(&page, &base, "roam", ROAM_PASSWORD).await;
    assert!(msg.contains("locked by an administrator"), "{msg}");

    // ...and in the replicated ledger, as entries about `staff:<account>`, with no password.
    let accesses = |account: &'static str| {
        let api = api.clone();
        let url = format!("https://{}/v1/devices/staff:{account}/history", gw.addr());
        async move {
            let r = api.get(url).send().await.expect("history");
            if !r.status().is_success() {
                return (Vec::new(), String::new());
            }
            let v: Value = r.json().await.expect("json");
            let list = v["entries"]
                .as_array()
                .expect("entries")
                .iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["fields"]["access"].as_str().unwrap_or("?"),
                        e["fields"]["method"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>();
            (list, v.to_string())
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let victim = loop {
        let (list, text) = accesses("victim").await;
        if list.len() >= MAX_FAILURES as usize + 2 {
            break (list, text);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ledger has {list:?} about staff:victim"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut want = vec!["sign-in-failed/password"; MAX_FAILURES as usize];
    want.push("locked/password");
    want.push("refused-locked/password");
    assert_eq!(victim.0, want, "{}", victim.1);
    assert!(
        !victim.1.contains("wrong password") && !victim.1.contains(VICTIM_PASSWORD),
        "a password in the ledger: {}",
        victim.1
    );
    let (tess, text) = accesses("tess").await;
    assert!(
        tess.contains(&"signed-in/password".to_string())
            && tess.contains(&"sign-in-failed/password".to_string()),
        "{tess:?}: {text}"
    );
    assert!(
        !text.contains("argon2") && !text.contains("not my password"),
        "{text}"
    );

    browser.close().await.expect("close");
    let _ = browser.wait().await;
    events.abort();

    certificate_sign_in(&site, gw, &base).await;
    // Keep the gateway up until the browser is gone.
    drop(nodes);
}

/// An HTTPS client of the web listener presenting a certificate of `spec` (following no
/// redirect, keeping no cookie), and the certificate's serial.
fn cert_client(site: &Site, spec: &certs::CertSpec) -> (reqwest::Client, String) {
    let issued = site
        .ca
        .issue(spec, certs::Validity::days(2).expect("validity"))
        .expect("issue");
    let key =
        certs::CertifiedKey::from_pem(&issued.chain_pem, issued.key_pem.as_deref().expect("key"))
            .expect("key");
    let tls = certs::client_config(
        &[site.ca.root_der().clone()],
        &key,
        &certs::RevocationPolicy::default(),
        &[],
    )
    .expect("client config");
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    (client, issued.identity.serial)
}

/// Sign-in with a staff certificate on the web listener, with a real TLS client presenting it
/// (headless Chromium here has no NSS tools to hold a client certificate): a valid staff
/// certificate signs in without a password and its session shows the name; a device
/// certificate and a revoked staff certificate get the sign-in page saying why.
async fn certificate_sign_in(site: &Site, gw: &medledger_tests::cluster::Gateway, base: &str) {
    let (carol, _) = cert_client(
        site,
        &certs::CertSpec::staff("carol", "Carol Cert", StaffRole::Biomed),
    );
    let r = carol
        .get(format!("{base}/login?next=/devices"))
        .send()
        .await
        .expect("login with a certificate");
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    assert_eq!(r.headers()["location"], "/devices");
    let cookie = cookie_set(&r, "__Host-medledger-session").expect("a session cookie");
    let page = carol
        .get(format!("{base}/devices"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("devices");
    assert_eq!(page.status(), 200);
    let body = page.text().await.expect("body");
    assert!(
        body.contains("Carol Cert") && body.contains("pump-web-7"),
        "{body}"
    );
    // The device page offers signing without the password field (the certificate is the
    // first signature's second component).
    let body = carol
        .get(format!("{base}/devices/pump-web-7"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("device")
        .text()
        .await
        .expect("body");
    assert!(
        body.contains("id=\"record-form\"") && !body.contains("id=\"sign-password\""),
        "{body}"
    );

    // A device's certificate does not sign in.
    let (device, _) = cert_client(site, &certs::CertSpec::device("pump-web-7"));
    let r = device
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 403);
    let body = r.text().await.expect("body");
    assert!(body.contains("not a staff"), "{body}");

    // A revoked staff certificate does not sign in (revoked through the ledger while the
    // gateway runs).
    let (dora, serial) = cert_client(
        site,
        &certs::CertSpec::staff("dora", "Dora Doe", StaffRole::Biomed),
    );
    let out = Command::new(bin("medledger"))
        .args(["cert", "revoke", "--config"])
        .arg(&gw.config)
        .args([
            &serial,
            "--reason",
            "key-compromise",
            "--subject",
            "staff:dora",
        ])
        .output()
        .expect("cert revoke");
    assert!(
        out.status.success(),
        "cert revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = dora
            .get(format!("{base}/login"))
            .send()
            .await
            .expect("login");
        let status = r.status();
        let body = r.text().await.expect("body");
        if status == 403 && body.contains("is revoked") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked certificate still signs in: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
