//! Records with 21 CFR Part 11 meaning, corrections, erasure and audience exports on a real
//! 3-gateway cluster (issue 14, issue 17's erasure markers): signed records show printed name,
//! role, meaning and time; the performer's own approval is refused; a correction stays on its
//! device; an insurer's export hides patient values and verifies; an erased value stays erased
//! on every node after restarts and a snapshot install, and a value stripped without an erasure
//! entry is refused by `medledger verify`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use certs::{CertSpec, StaffRole};
use medledger_tests::bin;
use medledger_tests::cluster::{eventually, start_cluster, start_nodes, status, Gateway, Site};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

fn staff(site: &Site, id: &str, name: &str, role: StaffRole) -> Client {
    site.client_for(&CertSpec::staff(id, name, role))
}

async fn post(client: &Client, addr: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    let r = client
        .post(format!("https://{addr}{path}"))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = r.status();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v)
}

async fn get(client: &Client, addr: &str, path: &str) -> (StatusCode, Vec<u8>) {
    let r = client
        .get(format!("https://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status();
    (status, r.bytes().await.expect("body").to_vec())
}

/// A write, retried while the cluster has no leader (503).
async fn record(client: &Client, addr: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    for _ in 0..100 {
        let (s, v) = post(client, addr, path, body).await;
        if s != StatusCode::SERVICE_UNAVAILABLE {
            return (s, v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("POST {path}: no leader for 20 s")
}

pub(crate) fn medledger(args: &[&str]) -> Output {
    Command::new(bin("medledger"))
        .args(args)
        .output()
        .expect("run medledger")
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub(crate) fn verify(file: &Path) -> Output {
    medledger(&["verify", file.to_str().expect("utf8")])
}

/// The independent verifier written from docs/ledger-format.md.
fn python_verify(file: &Path) -> Output {
    Command::new("python3")
        .arg(medledger_tests::workspace_root().join("docs/examples/verify_export.py"))
        .arg(file)
        .output()
        .expect("python3 runs")
}

/// Waits until the gateway at `addr` has applied `size` entries.
async fn applied(admin: &Client, addr: &str, size: u64) {
    eventually(
        &format!("{addr} to apply {size} entries"),
        Duration::from_secs(60),
        || async {
            status(admin, addr)
                .await
                .filter(|s| s["ledger_size"].as_u64() >= Some(size))
        },
    )
    .await;
}

/// Records a checkpoint through `config`'s gateway (exports are cut at the latest one).
pub(crate) fn checkpoint(config: &Path) {
    let out = medledger(&[
        "cluster",
        "checkpoint",
        "--config",
        config.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "checkpoint: {}", text(&out));
}

/// `GET /v1/export{query}` from `addr` once its latest checkpoint covers `size` entries.
pub(crate) async fn export_of(client: &Client, addr: &str, query: &str, size: u64) -> Vec<u8> {
    eventually(
        &format!("an export of {size} entries from {addr}"),
        Duration::from_secs(60),
        || async {
            let (s, body) = get(client, addr, &format!("/v1/export{query}")).await;
            assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            let first = body.split(|b| *b == b'\n').next().unwrap_or_default();
            let header: Value = serde_json::from_slice(first).expect("export header");
            (header["size"].as_u64() >= Some(size)).then_some(body)
        },
    )
    .await
}

/// Waits until every gateway of `addrs` serves the keys of all of them. A gateway registers its
/// key through Raft after it starts; an entry it signs before that is applied everywhere, but a
/// receipt or export made meanwhile lacks its key and does not verify.
async fn keys_known(client: &Client, addrs: &[String]) {
    for addr in addrs {
        eventually(
            &format!("{addr} to know every gateway's key"),
            Duration::from_secs(60),
            || async {
                let (s, body) = get(client, addr, "/v1/keys").await;
                let keys: Value = serde_json::from_slice(&body).ok()?;
                (s == StatusCode::OK && keys.as_array()?.len() == addrs.len()).then_some(())
            },
        )
        .await;
    }
}

fn calibration(device: &str) -> Value {
    json!({"kind": "calibration", "device_id": device, "components": [
        {"name": "result", "class": "maintenance", "value": "pass"},
        {"name": "patient_mrn", "class": "patient", "value": "MRN0000042"},
        {"name": "cost", "class": "financial", "value": {"amount": 90, "currency": "EUR"}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_records_approvals_corrections_and_audience_exports() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let nodes = start_cluster(&site, 3, "").await;
    let addrs: Vec<String> = nodes.iter().map(Gateway::addr).collect();
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    let tech = staff(&site, "t100", "Terry Tech", StaffRole::Biomed);
    let sup = staff(&site, "s200", "Sam Super", StaffRole::Supervisor);
    let insurer = staff(&site, "i300", "Ida Insurer", StaffRole::Insurer);
    keys_known(&admin, &addrs).await;

    // A technician records a calibration: the record shows printed name, role, meaning, time,
    // and the technician is told who reads each class.
    let (s, cal) = record(&tech, &addrs[1], "/v1/events", &calibration("vent-icu-07")).await;
    assert_eq!(s, StatusCode::CREATED, "{cal}");
    let cal_seq = cal["seq"].as_u64().expect("seq");
    assert_eq!(cal["signature"]["name"], "Terry Tech", "{cal}");
    assert_eq!(cal["signature"]["role"], "biomed");
    assert_eq!(cal["signature"]["meaning"], "performed");
    assert!(cal["recorded_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let readers = |class: &str| -> Vec<String> {
        cal["readers"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["class"] == class))
            .map(|r| serde_json::from_value(r["roles"].clone()).expect("roles"))
            .unwrap_or_default()
    };
    assert_eq!(readers("patient"), ["biomed", "supervisor"], "{cal}");
    assert_eq!(
        readers("financial"),
        ["supervisor", "insurer", "admin"],
        "{cal}"
    );

    // The performer's own review is refused, naming the rule; so is a supervisor's approval
    // of the supervisor's own record; a biomed may not approve at all.
    let sign = |meaning: &str| json!({"meaning": meaning});
    let path = format!("/v1/entries/{cal_seq}/signatures");
    let (s, p) = record(&tech, &addrs[0], &path, &sign("reviewed")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{p}");
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Part 11") && d.contains("other than the performer")),
        "{p}"
    );
    let (s, own) = record(&sup, &addrs[0], "/v1/events", &calibration("vent-icu-07")).await;
    assert_eq!(s, StatusCode::CREATED, "{own}");
    let own_path = format!("/v1/entries/{}/signatures", own["seq"]);
    // Reads are local: the gateway that signs must have applied the entry (404 otherwise).
    let own_seq = own["seq"].as_u64().expect("seq");
    for addr in &addrs {
        applied(&admin, addr, own_seq + 1).await;
    }
    let (s, p) = record(&sup, &addrs[2], &own_path, &sign("approved")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{p}");
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Sam Super")),
        "{p}"
    );
    let (s, p) = record(&tech, &addrs[0], &own_path, &sign("approved")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{p}");
    assert_eq!(p["field"], "meaning", "{p}");

    // A supervisor approves the technician's calibration: a record of its own.
    let (s, appr) = record(
        &sup,
        &addrs[2],
        &path,
        &json!({"meaning": "approved", "comment": "values within tolerance"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{appr}");
    let appr_seq = appr["seq"].as_u64().expect("seq");
    assert_eq!(appr["signature"]["name"], "Sam Super");
    assert_eq!(appr["signature"]["meaning"], "approved");
    assert_eq!(appr["signature"]["of"], cal_seq);
    // Signing again is the same record.
    let (s, again) = record(&sup, &addrs[0], &path, &sign("approved")).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["seq"], appr_seq);

    // Its receipt, from another gateway, verifies offline and shows the signature.
    applied(&admin, &addrs[0], appr_seq + 1).await;
    let (s, receipt) = get(&sup, &addrs[0], &format!("/v1/entries/{appr_seq}/receipt")).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&receipt));
    let dir = tempfile::tempdir().expect("tempdir");
    let rfile = dir.path().join("approval-receipt.json");
    std::fs::write(&rfile, &receipt).expect("write");
    let out = verify(&rfile);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "signed by Sam Super (supervisor), approved entry {cal_seq}"
        )),
        "{}",
        text(&out)
    );

    // `medledger device record` with a staff certificate: the record carries the staff
    // member's signature, and the technician is told who reads each class. Another gateway
    // shows it at once to a read that names the entry (`Medledger-Min-Seq`).
    let issued = site
        .ca
        .issue(
            &CertSpec::staff("t100", "Terry Tech", StaffRole::Biomed),
            certs::Validity::days(2).expect("validity"),
        )
        .expect("issue");
    let (tcert, tkey) = (dir.path().join("t100.crt"), dir.path().join("t100.key"));
    issued.write_files(&tcert, &tkey).expect("write");
    let cli_record = |extra: &[&str]| {
        let mut args = vec![
            "device",
            "record",
            "--config",
            nodes[0].config.to_str().expect("utf8"),
            "--cert",
            tcert.to_str().expect("utf8"),
            "--key",
            tkey.to_str().expect("utf8"),
            "vent-icu-07",
        ];
        args.extend_from_slice(extra);
        let out = medledger(&args);
        assert!(out.status.success(), "{}", text(&out));
        let seq: u64 = text(&out)
            .split("recorded at seq ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no seq: {}", text(&out)));
        (seq, text(&out))
    };
    let (pm_seq, out) = cli_record(&[
        "--kind",
        "preventive-maintenance",
        "--component",
        "result:maintenance=pass",
        "--component",
        r#"cost:financial={"amount":40,"currency":"EUR"}"#,
    ]);
    assert!(
        out.contains("signed by Terry Tech (biomed), performed")
            && out.contains("financial (cost): read by supervisor, insurer, admin"),
        "{out}"
    );
    let (fix_seq, out) = cli_record(&[
        "--kind",
        "preventive-maintenance",
        "--corrects",
        &pm_seq.to_string(),
        "--reason",
        "wrong work order",
        "--component",
        "result:maintenance=pass",
    ]);
    assert!(
        out.contains("signed by Terry Tech (biomed), corrected (reason: wrong work order)"),
        "{out}"
    );
    let r = sup
        .get(format!(
            "https://{}/v1/devices/vent-icu-07/history",
            addrs[2]
        ))
        .header("Medledger-Min-Seq", fix_seq.to_string())
        .send()
        .await
        .expect("history");
    assert_eq!(r.status(), StatusCode::OK);
    let h: Value = r.json().await.expect("json");
    let pm = h["entries"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["seq"] == pm_seq))
        .cloned()
        .unwrap_or_else(|| panic!("entry {pm_seq} not in the history: {h}"));
    assert_eq!(pm["signature"]["name"], "Terry Tech", "{pm}");
    assert_eq!(pm["corrected_by"], json!([fix_seq]), "{pm}");

    // A correction of another device's entry is refused; one of the same device needs its
    // reason and then shows beside its original.
    let mut wrong = calibration("pump-x");
    wrong["corrects"] = json!(cal_seq);
    wrong["reason"] = json!("wrong result transcribed");
    let (s, p) = record(&tech, &addrs[1], "/v1/events", &wrong).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["field"], "corrects", "{p}");
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("vent-icu-07") && d.contains("same device")),
        "{p}"
    );
    let mut fix = json!({"kind": "calibration", "device_id": "vent-icu-07", "corrects": cal_seq,
        "components": [{"name": "result", "class": "maintenance", "value": "fail"}]});
    let (s, p) = record(&tech, &addrs[1], "/v1/events", &fix).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["field"], "reason", "{p}");
    fix["reason"] = json!("wrong result transcribed");
    let (s, corr) = record(&tech, &addrs[1], "/v1/events", &fix).await;
    assert_eq!(s, StatusCode::CREATED, "{corr}");
    assert_eq!(corr["signature"]["meaning"], "corrected");
    assert_eq!(corr["signature"]["reason"], "wrong result transcribed");
    let corr_seq = corr["seq"].as_u64().expect("seq");
    applied(&admin, &addrs[2], corr_seq + 1).await;
    let (s, h) = get(&sup, &addrs[2], "/v1/devices/vent-icu-07/history").await;
    assert_eq!(s, StatusCode::OK);
    let h: Value = serde_json::from_slice(&h).expect("json");
    let entry = |seq: u64| {
        h["entries"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["seq"] == seq))
            .cloned()
            .unwrap_or_else(|| panic!("entry {seq} not in the history: {h}"))
    };
    let original = entry(cal_seq);
    assert_eq!(original["corrected"], true, "{original}");
    assert_eq!(original["corrected_by"], json!([corr_seq]), "{original}");
    assert_eq!(original["signature"]["name"], "Terry Tech");
    assert!(original["signature"]["time"].as_str().is_some());
    assert_eq!(entry(corr_seq)["corrects"], cal_seq);
    assert_eq!(entry(appr_seq)["kind"], "approval");
    // pump-x got nothing.
    let (s, _) = get(&sup, &addrs[2], "/v1/devices/pump-x/history").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The performer's own approval as a raw Raft command (as an import or a gateway that
    // skipped the API's check would send it): refused by apply itself, and every gateway
    // keeps the same ledger.
    forged_approval_is_refused(&site, &addrs, &original, cal_seq).await;

    // An insurer's export hides patient values and verifies, by the API (the caller's role)
    // and by the CLI (`--role insurer` through the running gateway).
    checkpoint(&nodes[0].config);
    let export = export_of(&insurer, &addrs[2], "", corr_seq + 1).await;
    export_of(&admin, &addrs[0], "", corr_seq + 1).await;
    let efile = dir.path().join("insurer-api.jsonl");
    std::fs::write(&efile, &export).expect("write");
    let cli_file = dir.path().join("insurer-cli.jsonl");
    let out = medledger(&[
        "ledger",
        "export",
        "--config",
        nodes[0].config.to_str().expect("utf8"),
        "--role",
        "insurer",
        "--out",
        cli_file.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    for file in [&efile, &cli_file] {
        let out = verify(file);
        assert!(out.status.success(), "{}: {}", file.display(), text(&out));
        let body = std::fs::read_to_string(file).expect("read");
        let header: Value =
            serde_json::from_str(body.lines().next().expect("header")).expect("json");
        assert_eq!(
            header["disclosed_classes"],
            json!(["device", "maintenance", "financial"]),
            "{}",
            file.display()
        );
        assert!(!body.contains("MRN0000042"), "{}", file.display());
        let line: Value =
            serde_json::from_str(body.lines().nth(cal_seq as usize + 1).expect("line"))
                .expect("json");
        assert_eq!(line["openings"][1], Value::Null, "{line}");
        assert!(line["openings"][2]["value"].is_string(), "{line}");
    }
    // An auditor's export through the CLI refuses nothing but opens no financial values.
    let out = medledger(&[
        "ledger",
        "export",
        "--config",
        nodes[0].config.to_str().expect("utf8"),
        "--role",
        "auditor",
        "--out",
        dir.path().join("auditor.jsonl").to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = verify(&dir.path().join("auditor.jsonl"));
    assert!(out.status.success(), "{}", text(&out));
    // The insurer may not ask for a biomed's view (patient values).
    let (s, _) = get(&insurer, &addrs[1], "/v1/export?role=biomed").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    drop(nodes);
}

/// Sends the performer's own approval of `cal_seq` (entry `original`, as a history shows it)
/// straight to the leader's Raft, with a gateway certificate, and checks that the ledger refused
/// it with the Part 11 rule and that every gateway holds the same ledger after it.
async fn forged_approval_is_refused(site: &Site, addrs: &[String], original: &Value, cal_seq: u64) {
    use ledger_node::entry::{ComponentInput, DisclosureClass, EventInput, EventKind};
    use ledger_node::raft::types::RaftRequest;
    use medledger_gateway::service::raft_net;
    let signature = json!({"id": "t100", "name": "Terry Tech", "role": "biomed",
        "meaning": "approved", "of": cal_seq});
    let forged = EventInput {
        kind: EventKind::Approval,
        device_id: "vent-icu-07".into(),
        occurred_at: None,
        components: vec![ComponentInput {
            name: "signature".into(),
            class: DisclosureClass::Maintenance,
            value: signature.to_string(),
        }],
        corrects: None,
        event_id: Some("forged-own-approval".into()),
    };
    let author = original["author"].as_str().expect("author");
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let cmd =
        ledger_node::ledger::prepare(forged, author, 1, &key, 1_800_000_000_000).expect("prepare");
    let body = raft_net::encode(&RaftRequest::new(vec![ledger_node::Command::Append(cmd)]))
        .expect("encode");
    let gateway = site.client_for(&CertSpec::gateway("9"));
    let answer = medledger_tests::cluster::raft_forward(&gateway, addrs, &body).await;
    match answer.outcomes.as_slice() {
        [ledger_node::ApplyOutcome::Refused { reason }] => assert!(
            reason.contains("separation of duties") && reason.contains("t100"),
            "{reason}"
        ),
        other => panic!("the performer's own approval was not refused: {other:?}"),
    }
    // The same ledger everywhere (the refusal is in the entries alone, so every gateway
    // refused it), with nothing under the forged event id.
    let head = |addr: String| {
        let gateway = gateway.clone();
        async move {
            let r = gateway
                .get(format!("https://{addr}/v1/head"))
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            Some((v["size"].as_u64()?, v["root"].as_str()?.to_owned()))
        }
    };
    for addr in &addrs[1..] {
        eventually(
            &format!("{addr} to hold the same ledger as gateway 1"),
            Duration::from_secs(30),
            || async {
                let (a, b) = (head(addrs[0].clone()).await?, head(addr.clone()).await?);
                (a == b).then_some(())
            },
        )
        .await;
    }
    let (s, h) = get(&gateway, &addrs[1], "/v1/devices/vent-icu-07/history").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !String::from_utf8_lossy(&h).contains("forged-own-approval"),
        "the forged approval is in the ledger"
    );
}

/// An import refuses a correction of another device's entry before writing anything.
#[test]
fn import_refuses_a_correction_of_another_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("history.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"event_id":"wo-11","kind":"calibration","device_id":"vent-icu-07","components":[{"name":"result","class":"patient","value":"x"}]}"#,
            "\n",
            r#"{"event_id":"wo-12","kind":"calibration","device_id":"pump-x","corrects_event_id":"wo-11"}"#,
            "\n"
        ),
    )
    .expect("write");
    let data = dir.path().join("data");
    let d = data.to_str().expect("utf8");
    let out = medledger(&["import", "--data-dir", d, file.to_str().expect("utf8")]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("line 2") && text(&out).contains("same device"),
        "{}",
        text(&out)
    );
    // Nothing was written: the first line alone imports, and says who reads its classes.
    std::fs::write(
        &file,
        r#"{"event_id":"wo-11","kind":"calibration","device_id":"vent-icu-07","components":[{"name":"mrn","class":"patient","value":"x"}]}"#,
    )
    .expect("write");
    let out = medledger(&["import", "--data-dir", d, file.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("imported 1 events")
            && text(&out).contains("patient (mrn): read by biomed, supervisor"),
        "{}",
        text(&out)
    );
}

/// Copies of `marker` in the Raft log entries and in the snapshot files (`raft-snapshot.*`) of
/// the stopped gateway whose data directory is `dir`: (log, snapshot files). The log is read
/// through the log store, as the gateway reads it.
async fn raft_copies(dir: &Path, marker: &str) -> (usize, usize) {
    use openraft::storage::RaftLogStorage;
    use openraft::RaftLogReader;
    let count = |hay: &[u8]| {
        hay.windows(marker.len())
            .filter(|w| *w == marker.as_bytes())
            .count()
    };
    let log = {
        let (mut log, _sm, _store) = ledger_node::raft::open_storage(dir).expect("open storage");
        let entries = log
            .get_log_reader()
            .await
            .try_get_log_entries(..)
            .await
            .expect("log entries");
        count(&serde_json::to_vec(&entries).expect("json"))
    };
    let mut files = 0;
    for entry in std::fs::read_dir(dir).expect("data dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("raft-snapshot") {
            files += count(&std::fs::read(&path).expect("snapshot file"));
        }
    }
    (log, files)
}

/// Waits until the gateway whose `/metrics` are at `health` has purged an erased value from its
/// Raft log and snapshot file.
async fn erasure_purged(health: &str) {
    eventually(
        &format!("{health} to purge an erased value"),
        Duration::from_secs(60),
        || async {
            let (_, text) = super::ops::get(health, "/metrics").await?;
            let purges = text
                .lines()
                .find_map(|l| l.strip_prefix("medledger_erasure_purges_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())?;
            (purges >= 1).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_value_stays_erased_on_every_node_after_restart_and_snapshot() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    // Small Raft logs, so that a gateway that was down catches up from a snapshot.
    let small_logs = "[raft]\nsnapshot_after_logs = 40\nkeep_logs_after_snapshot = 5\n";
    let health: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", medledger_tests::free_port()))
        .collect();
    let nodes: Vec<Gateway> = (1..=3)
        .map(|i| {
            let extra = format!(
                "health_listen = \"{}\"\n{small_logs}",
                health[i as usize - 1]
            );
            Gateway::new(&site, i, &extra)
        })
        .collect();
    let voters: Vec<(u64, String)> = nodes.iter().map(|g| (g.id, g.addr())).collect();
    let mut nodes = start_nodes(&site, nodes, &voters).await;
    let addrs: Vec<String> = nodes.iter().map(Gateway::addr).collect();
    let admin = staff(&site, "a400", "Ada Admin", StaffRole::Admin);
    let tech = staff(&site, "t100", "Terry Tech", StaffRole::Biomed);
    let gateway = site.client_for(&CertSpec::gateway("9"));
    keys_known(&gateway, &addrs).await;

    // The value to erase, found nowhere else.
    let marker = "MRN-ERASED-93417";
    let mut body = calibration("pump-1");
    body["components"][1]["value"] = marker.into();
    let (s, cal) = record(&tech, &addrs[0], "/v1/events", &body).await;
    assert_eq!(s, StatusCode::CREATED, "{cal}");
    let seq = cal["seq"].as_u64().expect("seq");
    let (s, other) = record(&tech, &addrs[0], "/v1/events", &calibration("pump-2")).await;
    assert_eq!(s, StatusCode::CREATED, "{other}");
    let other_seq = other["seq"].as_u64().expect("seq");
    // pump-1 is registered at ICU-3, and every gateway's registry has read it.
    let (s, reg) = record(
        &tech,
        &addrs[0],
        "/v1/devices",
        &json!({"device_id": "pump-1", "manufacturer": "Acme", "location": "ICU-3"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{reg}");
    let reg_seq = reg["seq"].as_u64().expect("seq");
    for addr in &addrs {
        let (s, d) = get(
            &tech,
            addr,
            &format!("/v1/devices/pump-1?min_seq={reg_seq}"),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&d));
        let d: Value = serde_json::from_slice(&d).expect("json");
        assert_eq!(d["location"], "ICU-3", "{d}");
    }
    applied(&admin, &addrs[2], reg_seq + 1).await;
    let had = status(&gateway, &addrs[2]).await.expect("status")["last_log_index"]
        .as_u64()
        .expect("last log index");
    // Gateway 3 is down while the value is erased and the log moves on; its Raft log holds the
    // value (what the checks below look for is there to be found).
    nodes[2].kill();
    let (log, _) = raft_copies(&nodes[2].dir, marker).await;
    assert!(
        log >= 1,
        "gateway 3's raft log does not hold the value before the erasure"
    );

    let erase = format!("/v1/entries/{seq}/components/patient_mrn/erase");
    let reason = json!({"reason": "patient's request (right to erasure)"});
    let (s, p) = record(&tech, &addrs[1], &erase, &reason).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a technician erases: {p}");
    let (s, p) = record(&admin, &addrs[1], &erase, &json!({"reason": " "})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["field"], "reason");
    // A record's signature is never erased; a component it does not have cannot be.
    for (name, want) in [
        ("signature", StatusCode::FORBIDDEN),
        ("nothing", StatusCode::NOT_FOUND),
    ] {
        let path = format!("/v1/entries/{seq}/components/{name}/erase");
        let (s, p) = record(&admin, &addrs[1], &path, &reason).await;
        assert_eq!(s, want, "{name}: {p}");
        assert_eq!(p["field"], "name", "{p}");
    }
    let (s, erased) = record(&admin, &addrs[1], &erase, &reason).await;
    assert_eq!(s, StatusCode::CREATED, "{erased}");
    let by = erased["seq"].as_u64().expect("seq");
    // The erasure is signed like any staff record (21 CFR Part 11 §11.50).
    let sig = &erased["signature"];
    assert_eq!(
        (&sig["name"], &sig["role"], &sig["meaning"], &sig["of"]),
        (
            &json!("Ada Admin"),
            &json!("admin"),
            &json!("erased"),
            &json!(seq)
        ),
        "{erased}"
    );
    assert_eq!(
        sig["reason"], "patient's request (right to erasure)",
        "{erased}"
    );
    // The registered location is erased: the running gateways' registries drop it at once
    // (not only after a restart).
    let (s, loc) = record(
        &admin,
        &addrs[0],
        &format!("/v1/entries/{reg_seq}/components/location/erase"),
        &json!({"reason": "location named a patient's room"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{loc}");
    let loc_seq = loc["seq"].as_u64().expect("seq");
    for addr in &addrs[..2] {
        let (s, d) = get(
            &tech,
            addr,
            &format!("/v1/devices/pump-1?min_seq={loc_seq}"),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&d));
        let d: Value = serde_json::from_slice(&d).expect("json");
        assert_eq!(d["location"], Value::Null, "{addr}: {d}");
        assert_eq!(d["manufacturer"], "Acme", "{addr}: {d}");
    }
    let (s, again) = record(&admin, &addrs[0], &erase, &reason).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["seq"], by);
    // Soon after the erasure, neither running gateway holds the value in its Raft log or its
    // snapshot file, with no further writes (the snapshot and purge follow the erasure itself);
    // each is stopped (SIGKILL: what it reported purged is on disk) and read, then started.
    for i in [1, 0] {
        erasure_purged(&health[i]).await;
        nodes[i].kill();
        assert_eq!(
            raft_copies(&nodes[i].dir, marker).await,
            (0, 0),
            "gateway {}: copies of the erased value in (raft log, snapshot files)",
            i + 1
        );
        nodes[i].start();
        eventually(
            &format!("gateway {} back with a leader", i + 1),
            Duration::from_secs(60),
            || async {
                status(&gateway, &addrs[i])
                    .await
                    .filter(|s| !s["leader"].is_null())
            },
        )
        .await;
    }
    // Enough entries for the leader to snapshot and purge what gateway 3 missed.
    let mut last = by;
    for i in 0..120 {
        let ev = json!({"event_id": format!("pm-{i}"), "kind": "preventive-maintenance",
            "device_id": format!("pump-{}", 3 + i % 5),
            "components": [{"name": "result", "class": "maintenance", "value": "pass"}]});
        let (s, v) = record(&tech, &addrs[i % 2], "/v1/events", &ev).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        last = last.max(v["seq"].as_u64().expect("seq"));
    }
    // Restart gateway 1 too (erasure from its own disk). Once neither running gateway keeps
    // the log entries gateway 3 missed, it can only catch up by installing a snapshot.
    nodes[0].kill();
    nodes[0].start();
    for addr in &addrs[..2] {
        eventually(
            &format!("{addr} to purge its log beyond index {had}"),
            Duration::from_secs(60),
            || async {
                status(&gateway, addr)
                    .await
                    .filter(|s| s["purged_index"].as_u64() > Some(had))
            },
        )
        .await;
    }
    nodes[2].start();
    let size = last + 1;
    let dir = tempfile::tempdir().expect("tempdir");
    applied(&gateway, &addrs[0], size).await;
    checkpoint(&nodes[0].config);
    for (i, addr) in addrs.iter().enumerate() {
        applied(&gateway, addr, size).await;
        // The history shows it erased, by which entry; the other entry's value is there.
        let (s, h) = get(&tech, addr, "/v1/devices/pump-1/history").await;
        assert_eq!(s, StatusCode::OK);
        let h: Value = serde_json::from_slice(&h).expect("json");
        let e = h["entries"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["seq"] == seq))
            .cloned()
            .expect("entry");
        assert_eq!(
            e["fields"]["patient_mrn"],
            json!({"erased": "patient", "erased_by": by}),
            "gateway {}: {e}",
            i + 1
        );
        assert_eq!(e["fields"]["result"], "pass");
        // The registry has no location for pump-1, after restarts and a snapshot install too.
        let (s, d) = get(&tech, addr, "/v1/devices/pump-1").await;
        assert_eq!(s, StatusCode::OK);
        let d: Value = serde_json::from_slice(&d).expect("json");
        assert_eq!(d["location"], Value::Null, "gateway {}: {d}", i + 1);
        // The full export marks it and verifies; the value is nowhere in it.
        let export = export_of(&gateway, addr, "", size).await;
        let file = dir.path().join(format!("export-{}.jsonl", i + 1));
        std::fs::write(&file, &export).expect("write");
        let out = verify(&file);
        assert!(out.status.success(), "gateway {}: {}", i + 1, text(&out));
        assert!(text(&out).contains("2 erased"), "{}", text(&out));
        let out = python_verify(&file);
        assert!(
            out.status.success(),
            "python, gateway {}: {}",
            i + 1,
            text(&out)
        );
        assert!(text(&out).contains("2 erased"), "{}", text(&out));
        let body = String::from_utf8(export).expect("utf8");
        let line: Value =
            serde_json::from_str(body.lines().nth(seq as usize + 1).expect("line")).expect("json");
        assert_eq!(line["openings"][1], json!({"erased_by": by}), "{line}");
        let other: Value =
            serde_json::from_str(body.lines().nth(other_seq as usize + 1).expect("line"))
                .expect("json");
        assert_eq!(other["openings"][1]["value"], "\"MRN0000042\"");
    }
    let s3 = status(&gateway, &addrs[2]).await.expect("status");
    assert!(
        s3["snapshot_index"].as_u64() > Some(had),
        "gateway 3 did not catch up from a snapshot: {s3}"
    );
    // Gateway 3, which held the value and caught up from a snapshot, holds no copy either.
    nodes[2].kill();
    assert_eq!(
        raft_copies(&nodes[2].dir, marker).await,
        (0, 0),
        "gateway 3: copies of the erased value in (raft log, snapshot files)"
    );

    // A value stripped from an export without an erasure entry is refused, naming entry and
    // component; so is a marker that points at an entry that did not erase it.
    let body = std::fs::read_to_string(dir.path().join("export-1.jsonl")).expect("read");
    let mut lines: Vec<String> = body.lines().map(str::to_owned).collect();
    let at = other_seq as usize + 1;
    let mut rec: Value = serde_json::from_str(&lines[at]).expect("json");
    rec["openings"][1] = Value::Null;
    lines[at] = rec.to_string();
    let stripped = dir.path().join("stripped.jsonl");
    std::fs::write(&stripped, lines.join("\n") + "\n").expect("write");
    for out in [verify(&stripped), python_verify(&stripped)] {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("entry {other_seq}"))
                && text(&out).contains("patient_mrn")
                && text(&out).contains("without an erasure entry"),
            "{}",
            text(&out)
        );
    }
    rec["openings"][1] = json!({"erased_by": by});
    lines[at] = rec.to_string();
    std::fs::write(&stripped, lines.join("\n") + "\n").expect("write");
    for out in [verify(&stripped), python_verify(&stripped)] {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("entry {other_seq}"))
                && text(&out).contains(&format!("entry {by} is not an erasure")),
            "{}",
            text(&out)
        );
    }
    drop(nodes);
}
