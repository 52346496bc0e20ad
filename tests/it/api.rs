//! The staff API as a client sees it, against a real `medledger run` over mutual TLS: the OpenAPI
//! document lists exactly the routes the gateway serves, every error class answers an RFC 9457
//! problem document naming what was wrong, and the authorization matrix (every route x every
//! identity x own / other device) refuses every access it should, before reading the body.

use std::collections::BTreeSet;

use certs::{CaInit, CertSpec, StaffRole};
use medledger_tests::cluster::{start_cluster, Gateway, Site};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

/// One gateway whose issuing CA is its own `pki` directory, so that the identity routes
/// (`/v1/renew`, `/crl.pem`) are served too.
async fn single_node() -> (Site, Gateway) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = certs::init_site_ca(
        &dir.path().join("node1").join("pki"),
        &CaInit::new("test hospital", "1"),
    )
    .expect("site ca");
    let site = Site { dir, ca };
    let mut nodes = start_cluster(&site, 1, "").await;
    let gw = nodes.pop().expect("one node");
    (site, gw)
}

/// The API's routes, as the product promises them: (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/events"),
    ("POST", "/v1/entries/{seq}/signatures"),
    ("POST", "/v1/entries/{seq}/components/{name}/erase"),
    ("POST", "/v1/import"),
    ("GET", "/v1/head"),
    ("GET", "/v1/keys"),
    ("GET", "/v1/proofs/consistency"),
    ("GET", "/v1/entries/{seq}/receipt"),
    ("GET", "/v1/export"),
    ("GET", "/v1/whoami"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/devices/{id}/history"),
    ("GET", "/v1/devices"),
    ("POST", "/v1/devices"),
    ("GET", "/v1/devices/{id}"),
    ("PATCH", "/v1/devices/{id}"),
    ("POST", "/v1/devices/{id}/status"),
    ("POST", "/v1/devices/{id}/locate-attempts"),
    ("POST", "/v1/models"),
    ("POST", "/v1/recalls"),
    ("GET", "/v1/due"),
    ("GET", "/v1/reports/pm-completion"),
    ("GET", "/v1/reports/recalls"),
    ("GET", "/v1/fhir/Device"),
    ("GET", "/v1/fhir/DeviceMetric"),
    ("GET", "/v1/certificates/{serial}"),
    ("POST", "/raft/append"),
    ("POST", "/raft/vote"),
    ("POST", "/raft/snapshot"),
    ("POST", "/raft/forward"),
    ("POST", "/raft/cosign"),
    ("GET", "/v1/staff-accounts/{id}"),
    ("POST", "/cluster/init"),
    ("POST", "/cluster/learner"),
    ("POST", "/cluster/promote"),
    ("POST", "/cluster/remove"),
    ("POST", "/cluster/checkpoint"),
    ("GET", "/cluster/status"),
    ("GET", "/cluster/health"),
    ("POST", "/v1/renew"),
    ("GET", "/crl.pem"),
];

async fn send(
    client: &Client,
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, String, Vec<u8>) {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, format!("https://{addr}{path}"));
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.expect("request");
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, ct, r.bytes().await.expect("body").to_vec())
}

/// Asserts an RFC 9457 problem document with `status`, returning it.
fn problem(status: StatusCode, ct: &str, body: &[u8], expect: u16, what: &str) -> Value {
    assert_eq!(
        status.as_u16(),
        expect,
        "{what}: {}",
        String::from_utf8_lossy(body)
    );
    assert!(
        ct.starts_with("application/problem+json"),
        "{what}: content-type {ct:?}"
    );
    let v: Value = serde_json::from_slice(body).expect("problem json");
    assert_eq!(v["status"], expect, "{what}: {v}");
    assert_eq!(v["type"], "about:blank", "{what}: {v}");
    assert!(
        v["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: {v}"
    );
    assert!(
        v["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: {v}"
    );
    v
}

fn concrete(path: &str) -> String {
    path.replace("{seq}", "0")
        .replace("{name}", "result")
        .replace("{id}", "pump-1")
        .replace("{serial}", "01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_exactly_the_served_routes() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let (site, gw) = single_node().await;
    let addr = gw.addr();
    let admin = site.staff_client("api-admin", StaffRole::Admin);
    let gateway = site.client_for(&CertSpec::gateway("9"));
    let device = site.client_for(&CertSpec::device("pump-1"));
    let (status, ct, body) = send(&admin, &addr, "GET", "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("application/json"), "{ct}");
    let doc: Value = serde_json::from_slice(&body).expect("openapi json");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "openapi version {}",
        doc["openapi"]
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            documented.insert((method.to_uppercase(), path.clone()));
            // Every operation says what it answers, with a schema or a media type.
            let responses = op["responses"].as_object().expect("responses");
            let ok = responses
                .iter()
                .find(|(code, _)| code.starts_with('2'))
                .unwrap_or_else(|| panic!("{method} {path}: no success response"));
            assert!(
                ok.1["content"].as_object().is_some_and(|c| !c.is_empty()),
                "{method} {path}: the success response has no content schema"
            );
            // Every JSON body a route takes is described.
            if let Some(rb) = op.get("requestBody") {
                let content = rb["content"].as_object().expect("request content");
                assert!(
                    content.values().all(|m| m.get("schema").is_some()),
                    "{method} {path}: request body without a schema"
                );
            }
        }
    }
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected, "the OpenAPI document's routes");
    // Every documented route is served: never the router's 404 or 405. Gateways may call every
    // route but the device's; the device calls its own.
    for (method, path) in &documented {
        let client = if path == "/v1/renew" {
            &device
        } else {
            &gateway
        };
        let body = (method == "POST" && !path.starts_with("/raft/")).then(|| json!({}));
        let (status, ct, body) = send(client, &addr, method, &concrete(path), body.as_ref()).await;
        if ct.starts_with("application/problem+json") {
            let v: Value = serde_json::from_slice(&body).expect("problem");
            assert!(
                v["field"] != "path" && v["field"] != "method",
                "{method} {path} is documented but not served: {status} {v}"
            );
        }
        eprintln!("served: {method} {path} -> {status}");
    }
    // And nothing else is: an undocumented method of a documented path, an unknown path.
    let (s, ct, b) = send(&admin, &addr, "DELETE", "/v1/events", None).await;
    let v = problem(s, &ct, &b, 405, "DELETE /v1/events");
    assert_eq!(v["field"], "method");
    let (s, ct, b) = send(&admin, &addr, "GET", "/v1/nothing-here", None).await;
    let v = problem(s, &ct, &b, 404, "GET /v1/nothing-here");
    assert_eq!(v["field"], "path");
    eprintln!("{} documented routes, all served", documented.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_class_is_a_problem_document() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let (site, gw) = single_node().await;
    let addr = gw.addr();
    let biomed = site.staff_client("api-biomed", StaffRole::Biomed);
    let auditor = site.staff_client("api-auditor", StaffRole::Auditor);
    let admin = site.staff_client("api-admin", StaffRole::Admin);
    let event = json!({"kind": "calibration", "device_id": "pump-1",
        "components": [{"name": "result", "class": "maintenance", "value": "pass"}]});
    let (s, _, _) = send(&biomed, &addr, "POST", "/v1/events", Some(&event)).await;
    assert_eq!(s, StatusCode::CREATED);
    let url = |p: &str| format!("https://{addr}{p}");

    // 400: a path value that is not a number names the parameter.
    let (s, ct, b) = send(&biomed, &addr, "GET", "/v1/entries/abc/receipt", None).await;
    let v = problem(s, &ct, &b, 400, "bad path value");
    assert_eq!(v["field"], "seq", "{v}");
    // 400: a bad query value names the parameter.
    let (s, ct, b) = send(
        &biomed,
        &addr,
        "GET",
        "/v1/devices/pump-1/history?limit=abc",
        None,
    )
    .await;
    let v = problem(s, &ct, &b, 400, "bad query value");
    assert_eq!(v["field"], "limit", "{v}");
    let (s, ct, b) = send(
        &biomed,
        &addr,
        "GET",
        "/v1/devices/pump-1/history?colour=red",
        None,
    )
    .await;
    let v = problem(s, &ct, &b, 400, "unknown query parameter");
    assert!(v["detail"].as_str().unwrap_or("").contains("colour"), "{v}");
    // 400: malformed JSON.
    let r = biomed
        .post(url("/v1/events"))
        .header("content-type", "application/json")
        .body("{\"kind\": ")
        .send()
        .await
        .expect("post");
    let (s, ct) = (r.status(), content_type(&r));
    problem(
        s,
        &ct,
        &r.bytes().await.expect("body"),
        400,
        "malformed json",
    );
    // 403: a role that may not write.
    let (s, ct, b) = send(&auditor, &addr, "POST", "/v1/events", Some(&event)).await;
    problem(s, &ct, &b, 403, "auditor writes");
    // 404: an unknown route, an unknown device, an entry beyond the ledger.
    let (s, ct, b) = send(&biomed, &addr, "GET", "/v2/events", None).await;
    problem(s, &ct, &b, 404, "unknown route");
    let (s, ct, b) = send(&biomed, &addr, "GET", "/v1/devices/nobody/history", None).await;
    let v = problem(s, &ct, &b, 404, "unknown device");
    assert_eq!(v["field"], "id", "{v}");
    let (s, ct, b) = send(&biomed, &addr, "GET", "/v1/entries/999999/receipt", None).await;
    problem(s, &ct, &b, 404, "no such entry");
    // 405.
    let (s, ct, b) = send(&biomed, &addr, "PUT", "/v1/head", None).await;
    problem(s, &ct, &b, 405, "PUT /v1/head");
    // 409: a second init.
    let (s, ct, b) = send(&admin, &addr, "POST", "/cluster/init", Some(&json!({}))).await;
    problem(s, &ct, &b, 409, "second cluster init");
    // 413: a body over the largest event the import format allows.
    let big = "x".repeat(1024 * 1024 + 1);
    let r = biomed
        .post(url("/v1/events"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("post");
    let (s, ct) = (r.status(), content_type(&r));
    problem(
        s,
        &ct,
        &r.bytes().await.expect("body"),
        413,
        "body too large",
    );
    // ... while an event just under it is taken.
    let value = "v".repeat(60 * 1024);
    let components: Vec<Value> = (0..15)
        .map(|i| json!({"name": format!("c{i}"), "class": "maintenance", "value": value}))
        .collect();
    let large = json!({"kind": "repair", "device_id": "pump-1", "components": components});
    assert!(large.to_string().len() > 900 * 1024);
    let (s, _, b) = send(&biomed, &addr, "POST", "/v1/events", Some(&large)).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    // 414: an over-long request target.
    let long = format!("/v1/devices/{}/history", "d".repeat(9000));
    let (s, ct, b) = send(&biomed, &addr, "GET", &long, None).await;
    problem(s, &ct, &b, 414, "long uri");
    // 415: an event that is not sent as JSON is not recorded.
    let r = biomed
        .post(url("/v1/events"))
        .header("content-type", "text/plain")
        .body(event.to_string())
        .send()
        .await
        .expect("post");
    let (s, ct) = (r.status(), content_type(&r));
    let v = problem(
        s,
        &ct,
        &r.bytes().await.expect("body"),
        415,
        "text/plain event",
    );
    assert_eq!(v["field"], "content-type", "{v}");
    // 422: well-formed JSON of the wrong shape names the field.
    let (s, ct, b) = send(
        &biomed,
        &addr,
        "POST",
        "/v1/events",
        Some(&json!({"kind": "calibration", "device_id": 7})),
    )
    .await;
    let v = problem(s, &ct, &b, 422, "wrong type");
    assert_eq!(v["field"], "device_id", "{v}");
    let (s, ct, b) = send(
        &admin,
        &addr,
        "POST",
        "/cluster/promote",
        Some(&json!({"node": 2})),
    )
    .await;
    problem(s, &ct, &b, 422, "missing node_id");
    // Only the first event and the large one were recorded.
    let h: Value = biomed
        .get(url("/v1/devices/pump-1/history"))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    assert_eq!(h["entries"].as_array().map(Vec::len), Some(2), "{h}");
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Who may call what: every route x every identity, and for devices their own device and
/// another one. A refused call is 403 whatever its body (authorization comes before parsing:
/// every refused case is sent with a body the route could not parse); an allowed call is never
/// 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_refuses_every_cross_object_access() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let (site, gw) = single_node().await;
    let addr = gw.addr();
    let biomed = site.staff_client("m-biomed", StaffRole::Biomed);
    let ev = |device: &str, kind: &str| {
        json!({"kind": kind, "device_id": device, "components": [
            {"name": "result", "class": "maintenance", "value": "pass"},
            {"name": "patient", "class": "patient", "value": "MRN 1234"},
            {"name": "cost", "class": "financial", "value": 120}]})
    };
    let (s, _, _) = send(
        &biomed,
        &addr,
        "POST",
        "/v1/events",
        Some(&ev("pump-1", "repair")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, _) = send(
        &biomed,
        &addr,
        "POST",
        "/v1/events",
        Some(&ev("pump-2", "repair")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);

    // (name, client, allowed routes by need)
    let identities: Vec<(&str, Client, &[&str])> = vec![
        ("biomed", biomed.clone(), &["anyone", "reader", "writer"]),
        (
            "supervisor",
            site.staff_client("m-sup", StaffRole::Supervisor),
            &["anyone", "reader", "writer"],
        ),
        (
            "auditor",
            site.staff_client("m-aud", StaffRole::Auditor),
            &["anyone", "reader"],
        ),
        (
            "insurer",
            site.staff_client("m-ins", StaffRole::Insurer),
            &["anyone", "reader"],
        ),
        (
            "admin",
            site.staff_client("m-adm", StaffRole::Admin),
            &["anyone", "reader", "writer", "admin"],
        ),
        (
            "gateway",
            site.client_for(&CertSpec::gateway("9")),
            &["anyone", "reader", "writer", "admin", "gateway"],
        ),
        (
            "device pump-1",
            // A device passes the writer route's layer; what it may record is per object.
            site.client_for(&CertSpec::device("pump-1")),
            &["anyone", "device", "writer"],
        ),
    ];
    // (method, path, need, refused-case body)
    let routes: &[(&str, &str, &str)] = &[
        ("POST", "/v1/events", "writer"),
        ("POST", "/v1/entries/0/signatures", "writer"),
        ("POST", "/v1/entries/0/components/result/erase", "admin"),
        ("POST", "/v1/import", "admin"),
        ("GET", "/v1/head", "reader"),
        ("GET", "/v1/keys", "reader"),
        ("GET", "/v1/proofs/consistency?from=1", "reader"),
        ("GET", "/v1/entries/0/receipt", "reader"),
        ("GET", "/v1/export", "reader"),
        ("GET", "/v1/whoami", "anyone"),
        ("GET", "/v1/openapi.json", "anyone"),
        ("GET", "/v1/devices/{device}/history", "reader"),
        ("GET", "/v1/devices", "reader"),
        ("POST", "/v1/devices", "writer"),
        ("GET", "/v1/devices/{device}", "reader"),
        ("PATCH", "/v1/devices/{device}", "writer"),
        ("POST", "/v1/devices/{device}/status", "writer"),
        ("POST", "/v1/devices/{device}/locate-attempts", "writer"),
        ("POST", "/v1/models", "writer"),
        ("POST", "/v1/recalls", "writer"),
        ("GET", "/v1/due", "reader"),
        ("GET", "/v1/reports/pm-completion", "reader"),
        ("GET", "/v1/reports/recalls", "reader"),
        ("GET", "/v1/fhir/Device", "reader"),
        ("GET", "/v1/fhir/DeviceMetric", "reader"),
        ("GET", "/v1/certificates/ff", "reader"),
        ("POST", "/raft/append", "gateway"),
        ("POST", "/raft/vote", "gateway"),
        ("POST", "/raft/snapshot", "gateway"),
        ("POST", "/raft/forward", "gateway"),
        ("POST", "/raft/cosign", "gateway"),
        ("POST", "/cluster/init", "admin"),
        ("POST", "/cluster/learner", "admin"),
        ("POST", "/cluster/promote", "admin"),
        ("POST", "/cluster/remove", "admin"),
        ("POST", "/cluster/checkpoint", "admin"),
        ("GET", "/cluster/status", "reader"),
        ("GET", "/cluster/health", "reader"),
        ("POST", "/v1/renew", "device"),
        ("GET", "/crl.pem", "anyone"),
    ];
    let unparseable = "this is not what the route takes";
    let mut cases = 0;
    let mut refused = 0;
    for (who, client, allowed) in &identities {
        for device in ["pump-1", "pump-2"] {
            for (method, path, need) in routes {
                let path = path.replace("{device}", device);
                let may = allowed.contains(need);
                let url = format!("https://{addr}{path}");
                let m = Method::from_bytes(method.as_bytes()).expect("method");
                if !may {
                    // Refused before the body is read: an unparseable body still gets 403.
                    let r = client
                        .request(m, &url)
                        .header("content-type", "application/json")
                        .body(unparseable)
                        .send()
                        .await
                        .expect("request");
                    let (s, ct) = (r.status(), content_type(&r));
                    problem(
                        s,
                        &ct,
                        &r.bytes().await.expect("body"),
                        403,
                        &format!("{who} {method} {path}"),
                    );
                    refused += 1;
                } else if path.starts_with("/v1/certificates/") {
                    // Allowed, and no such certificate.
                    let (s, ct, b) = send(client, &addr, method, &path, None).await;
                    problem(s, &ct, &b, 404, &format!("{who} {method} {path}"));
                } else if *method == "GET" {
                    let (s, _, b) = send(client, &addr, method, &path, None).await;
                    assert_eq!(
                        s,
                        StatusCode::OK,
                        "{who} {method} {path}: {}",
                        String::from_utf8_lossy(&b)
                    );
                    // Per object: a role sees only its classes.
                    if path.ends_with("/history") {
                        let h: Value = serde_json::from_slice(&b).expect("json");
                        let f = &h["entries"][0]["fields"];
                        let patient_visible = f["patient"].is_string();
                        let financial_visible = f["cost"].is_number();
                        let (p, c) = match *who {
                            "biomed" => (true, false),
                            "supervisor" | "gateway" => (true, true),
                            "auditor" => (false, false),
                            "insurer" | "admin" => (false, true),
                            _ => unreachable!("{who} reads no history"),
                        };
                        assert_eq!(
                            (patient_visible, financial_visible),
                            (p, c),
                            "{who} sees {f}"
                        );
                    }
                }
                cases += 1;
            }
            // Writes per object: about the own device and about another one.
            if allowed.contains(&"writer") {
                let kind = if who.starts_with("device") {
                    "alarm"
                } else {
                    "calibration"
                };
                let (s, ct, b) =
                    send(client, &addr, "POST", "/v1/events", Some(&ev(device, kind))).await;
                let own = !who.starts_with("device") || who.ends_with(device);
                if own {
                    assert_eq!(
                        s,
                        StatusCode::CREATED,
                        "{who} records about {device}: {}",
                        String::from_utf8_lossy(&b)
                    );
                } else {
                    let v = problem(s, &ct, &b, 403, &format!("{who} records about {device}"));
                    assert_eq!(v["field"], "device_id", "{v}");
                    refused += 1;
                }
                cases += 1;
            }
        }
        // A device records only device kinds, even about itself; certificate events are for
        // administrators.
        if who.starts_with("device") {
            let (s, ct, b) = send(
                client,
                &addr,
                "POST",
                "/v1/events",
                Some(&ev("pump-1", "calibration")),
            )
            .await;
            problem(s, &ct, &b, 403, "device records a calibration");
            refused += 1;
            cases += 1;
        }
        if matches!(*who, "biomed" | "supervisor") {
            let (s, ct, b) = send(
                client,
                &addr,
                "POST",
                "/v1/events",
                Some(&ev("pump-1", "certificate-revoked")),
            )
            .await;
            problem(s, &ct, &b, 403, &format!("{who} records a revocation"));
            refused += 1;
            cases += 1;
        }
    }
    eprintln!("authorization matrix: {cases} cases, {refused} refused as they should be");
    assert!(cases > 300, "{cases} cases");
}
