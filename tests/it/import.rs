//! `medledger import` into a running 3-gateway cluster (issue 14): the maintenance history of a
//! previous system, streamed through the API in batches, lands once on every gateway and
//! verifies in their exports; a rerun records nothing twice and a partial import is finished by
//! running the whole file; bad lines (the file's and the gateway's refusals) are reported with
//! their line numbers while the rest goes on; an offline import into a gateway's data directory
//! is refused naming the command to use.

use std::collections::HashMap;
use std::path::Path;

use certs::{CertSpec, StaffRole, Validity};
use ledger_node::entry::Entry;
use medledger_tests::cluster::{start_cluster, status, Gateway};
use serde_json::Value;

use super::records::{checkpoint, export_of, medledger, text, verify};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Writes a staff certificate of `role` and its key into `dir`; returns their paths.
fn staff_files(
    site: &medledger_tests::cluster::Site,
    dir: &Path,
    id: &str,
    role: StaffRole,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let issued = site
        .ca
        .issue(
            &CertSpec::staff(id, id, role),
            Validity::days(2).expect("validity"),
        )
        .expect("issue");
    let (crt, key) = (dir.join(format!("{id}.crt")), dir.join(format!("{id}.key")));
    issued.write_files(&crt, &key).expect("write");
    (crt, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_imported_through_a_gateway_is_on_every_gateway_once() {
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = medledger_tests::cluster::Site::new();
    let nodes = start_cluster(&site, 3, "").await;
    let addrs: Vec<String> = nodes.iter().map(Gateway::addr).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = medledger_tests::workspace_root().join("docs/examples/maintenance-history.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&sample)
        .expect("sample")
        .lines()
        .map(str::to_owned)
        .collect();
    let ids: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            v["event_id"].as_str().expect("event id").to_owned()
        })
        .collect();
    assert_eq!(lines.len(), 117);

    // The first 40 events, as an import that stopped there.
    let part = dir.path().join("part.jsonl");
    std::fs::write(&part, lines[..40].join("\n") + "\n").expect("write");
    let out = medledger(&["import", "--config", s(&nodes[0].config), s(&part)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("40 recorded, 0 already there, 0 refused"),
        "{}",
        text(&out)
    );

    // The whole file with two lines the CLI refuses (lines 41, 42) and a correction of another
    // device's entry the gateway refuses (line 120), through a follower with an
    // administrator's certificate, 16 events a batch.
    let mut all: Vec<String> = lines[..40].to_vec();
    all.push(r#"{"kind":"tuning","device_id":"pump-x"}"#.into());
    all.push("this is not json".into());
    all.extend(lines[40..].iter().cloned());
    all.push(
        r#"{"event_id":"BAD-C1","kind":"calibration","device_id":"pump-elsewhere","corrects_event_id":"WO-1041"}"#
            .into(),
    );
    let file = dir.path().join("history.jsonl");
    std::fs::write(&file, all.join("\n") + "\n").expect("write");
    let (crt, key) = staff_files(&site, dir.path(), "ada", StaffRole::Admin);
    let root = dir.path().join("root.crt");
    std::fs::write(&root, site.ca.root_pem()).expect("root");
    let via = |addr: &str, crt: &Path, key: &Path| {
        medledger(&[
            "import",
            "--gateway",
            &format!("https://{addr}"),
            "--cert",
            s(crt),
            "--key",
            s(key),
            "--ca",
            s(&root),
            "--batch",
            "16",
            s(&file),
        ])
    };
    let out = via(&addrs[2], &crt, &key);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("77 recorded, 40 already there, 3 refused (lines 41, 42, 120)"),
        "{t}"
    );
    assert!(
        t.contains("line 41: refused: unknown kind \"tuning\""),
        "{t}"
    );
    assert!(t.contains("line 42: refused: expected"), "{t}");
    assert!(
        t.contains("line 120: refused: corrects entry")
            && t.contains("a correction concerns the same device"),
        "{t}"
    );
    assert!(t.contains("patient (patient_mrn): read by"), "{t}");

    // A technician may not import.
    let (tcrt, tkey) = staff_files(&site, dir.path(), "terry", StaffRole::Biomed);
    let out = via(&addrs[0], &tcrt, &tkey);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("403"), "{}", text(&out));

    // Again, through another gateway: nothing twice.
    let out = medledger(&["import", "--config", s(&nodes[1].config), s(&file)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("0 recorded, 117 already there, 3 refused"),
        "{}",
        text(&out)
    );

    // An offline import into a gateway's data directory is refused and writes nothing.
    let out = medledger(&["import", "--data-dir", s(&nodes[0].dir), s(&part)]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("is a gateway's data directory")
            && text(&out).contains("medledger import --config")
            && text(&out).contains("medledger import --gateway"),
        "{}",
        text(&out)
    );
    assert!(!nodes[0].dir.join("ledger").exists());

    // Every gateway holds each event once, the correction points at its original, and the
    // export verifies.
    let admin = site.client_for(&CertSpec::staff("it-admin", "it-admin", StaffRole::Admin));
    let size = status(&admin, &addrs[1]).await.expect("status")["ledger_size"]
        .as_u64()
        .expect("size");
    checkpoint(&nodes[0].config);
    let mut exports = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let export = export_of(&admin, addr, "", size).await;
        let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
        let mut corrects = HashMap::new();
        for line in String::from_utf8(export.clone()).expect("utf8").lines() {
            let v: Value = serde_json::from_str(line).expect("json");
            let Some(hex) = v["entry"].as_str() else {
                continue;
            };
            let e = Entry::decode(&hex::decode(hex).expect("hex")).expect("entry");
            if let Some(id) = e.body.event_id {
                corrects.insert(id.clone(), e.body.corrects);
                seqs.entry(id).or_default().push(e.seq);
            }
        }
        for id in &ids {
            assert_eq!(
                seqs.get(id).map(Vec::len),
                Some(1),
                "gateway {}: {id}",
                i + 1
            );
        }
        assert!(!seqs.contains_key("BAD-C1"));
        assert_eq!(
            corrects["WO-1041-C1"],
            Some(seqs["WO-1041"][0]),
            "gateway {}",
            i + 1
        );
        let path = dir.path().join(format!("export-{}.jsonl", i + 1));
        std::fs::write(&path, &export).expect("write");
        let out = verify(&path);
        assert!(out.status.success(), "gateway {}: {}", i + 1, text(&out));
        exports.push(export);
    }
    // Cut at the same checkpoint, the three exports are the same bytes.
    assert!(exports.windows(2).all(|w| w[0] == w[1]));
}
