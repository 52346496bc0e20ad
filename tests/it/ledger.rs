//! The ledger end to end: the real `medledger` binary for import, export, receipt and verify; a
//! byte-flip tamper test over a whole export; and kill -9 during a stream of appends.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ledger_node::entry::{ComponentInput, DisclosureClass, EventInput, EventKind};
use ledger_node::export::{self, VerifyOptions};
use ledger_node::{Ledger, LedgerOptions, Store};
use medledger_tests::{bin, ChildGuard};

fn medledger(args: &[&str]) -> std::process::Output {
    Command::new(bin("medledger"))
        .args(args)
        .output()
        .expect("run medledger")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn import_export_receipt_verify_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let d = data.to_str().expect("utf8 path");
    let sample = medledger_tests::workspace_root().join("docs/examples/maintenance-history.jsonl");
    let n_lines = std::fs::read_to_string(&sample)
        .expect("sample")
        .lines()
        .count();
    assert!(n_lines >= 100, "the sample history has {n_lines} events");

    let out = medledger(&["import", "--data-dir", d, sample.to_str().expect("utf8")]);
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("imported {n_lines} events")),
        "{}",
        text(&out.stdout)
    );
    // Importing the same file again adds nothing: every event has a stable id.
    let out = medledger(&["import", "--data-dir", d, sample.to_str().expect("utf8")]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("imported 0 events"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains(&format!("({n_lines} already present)")));

    let exp = dir.path().join("export.jsonl");
    let out = medledger(&[
        "ledger",
        "export",
        "--data-dir",
        d,
        "--out",
        exp.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "export: {}", text(&out.stderr));
    let out = medledger(&["verify", exp.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "verify: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains(&format!("valid export: {n_lines} entries checked")));

    // A receipt that withholds patient and financial data still verifies.
    let rec = dir.path().join("receipt.json");
    let out = medledger(&[
        "ledger",
        "receipt",
        "--data-dir",
        d,
        "--seq",
        "18",
        "--out",
        rec.to_str().expect("utf8"),
        "--disclose",
        "device,maintenance",
    ]);
    assert!(out.status.success(), "receipt: {}", text(&out.stderr));
    let out = medledger(&["verify", rec.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "verify receipt: {}",
        text(&out.stdout)
    );
    let body = std::fs::read_to_string(&rec).expect("receipt");
    assert!(
        !body.contains("MRN"),
        "patient data leaked into an auditor's receipt"
    );

    // A tampered export: exit 1, naming the first bad entry.
    let original = std::fs::read_to_string(&exp).expect("export");
    let tampered = original.replacen(r#"\"pass\""#, r#"\"fail\""#, 1);
    assert!(tampered != original, "nothing to tamper with");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, tampered).expect("write");
    let out = medledger(&["verify", bad.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let msg = text(&out.stdout);
    assert!(
        msg.contains("INVALID")
            && msg.contains("entry ")
            && msg.contains("does not match its commitment"),
        "{msg}"
    );

    // Pinning the wrong key fails, pinning the right one passes.
    let wrong = format!("1={}", "11".repeat(32));
    let out = medledger(&[
        "verify",
        "--trusted-key",
        &wrong,
        exp.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("not one of the trusted keys"));
}

#[test]
fn malformed_import_lines_are_refused_with_line_numbers_and_nothing_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let good = r#"{"event_id":"a","kind":"repair","device_id":"pump-1","components":[{"name":"fault","class":"maintenance","value":"door latch"}]}"#;
    let good2 = r#"{"event_id":"b","kind":"repair","device_id":"pump-2"}"#;
    let cases = [
        ("not json at all", "line 3"),
        (r#"{"kind":"repair"}"#, "missing field `device_id`"),
        (
            r#"{"kind":"overhaul","device_id":"x"}"#,
            "unknown kind \"overhaul\"",
        ),
        (
            r#"{"kind":"repair","device_id":"x","occurred_at":"31/12/2024"}"#,
            "not an RFC 3339 timestamp",
        ),
        (
            r#"{"kind":"repair","device_id":"x","components":[{"name":"m","class":"hidden","value":1}]}"#,
            "unknown class",
        ),
        (
            r#"{"event_id":"a","kind":"repair","device_id":"x"}"#,
            "appears twice",
        ),
        (
            r#"{"kind":"repair","device_id":"x","corrects_event_id":"nope"}"#,
            "not in the ledger",
        ),
        (
            r#"{"kind":"repair","device_id":"x","corrects":5}"#,
            "corrects entry 5, but the ledger has 0 entries",
        ),
        // A correction of a later line (the import reads its file in passes, never whole).
        (
            r#"{"kind":"repair","device_id":"x","corrects_event_id":"b"}"#,
            "not in the ledger or earlier in the file",
        ),
    ];
    let long = format!(
        r#"{{"kind":"repair","device_id":"x","components":[{{"name":"n","class":"maintenance","value":"{}"}}]}}"#,
        "x".repeat(1024 * 1024)
    );
    let cases = cases
        .iter()
        .map(|(bad, want)| (bad.as_bytes().to_vec(), *want))
        .chain([
            (long.into_bytes(), "longer than the 1048576 bytes"),
            (
                b"{\"kind\":\"repair\",\"device_id\":\"\xff\"}".to_vec(),
                "not UTF-8",
            ),
        ]);
    for (i, (bad, want)) in cases.enumerate() {
        let file = dir.path().join(format!("bad{i}.jsonl"));
        let mut body = format!("{good}\n# a comment\n").into_bytes();
        body.extend_from_slice(&bad);
        body.extend_from_slice(format!("\n{good2}\n").as_bytes());
        std::fs::write(&file, body).expect("write");
        let bad = String::from_utf8_lossy(&bad[..bad.len().min(200)]).into_owned();
        let out = medledger(&[
            "import",
            "--data-dir",
            data.to_str().expect("utf8"),
            file.to_str().expect("utf8"),
        ]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = text(&out.stderr);
        assert!(err.contains("line 3"), "{bad}: {err}");
        assert!(err.contains(want), "{bad}: {err}");
    }
    // Nothing was written by any of them.
    let store = Store::open(&data.join("ledger")).expect("open");
    assert_eq!(store.size(), 0);
}

fn event(i: u64) -> EventInput {
    EventInput {
        kind: if i.is_multiple_of(2) {
            EventKind::Calibration
        } else {
            EventKind::Repair
        },
        // Entry 2 corrects entry 0: a correction is about the same device.
        device_id: format!("(01)00884838035249(21)SN{}", if i == 2 { 0 } else { i }),
        occurred_at: Some("2025-01-02T03:04:05Z".into()),
        components: vec![
            ComponentInput {
                name: "result".into(),
                class: DisclosureClass::Maintenance,
                value: "\"pass\"".into(),
            },
            ComponentInput {
                name: "mrn".into(),
                class: DisclosureClass::Patient,
                value: "\"MRN1234\"".into(),
            },
            ComponentInput {
                name: "cost".into(),
                class: DisclosureClass::Financial,
                value: "{\"eur\":12.5}".into(),
            },
        ],
        corrects: (i == 2).then_some(0),
        event_id: Some(format!("ev-{i}")),
    }
}

/// Flips each byte of a small export in turn (xor 0x01): every flip that changes what the export
/// says (a hash, a signature, a value, a commitment, a number) must fail verification. Flips
/// that leave the parsed document identical cannot change anything and are counted apart.
#[test]
fn every_byte_flip_of_an_export_is_caught() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = rt.block_on(async {
        let ledger = Ledger::open(dir.path(), LedgerOptions::default())
            .await
            .expect("open");
        for i in 0..4 {
            ledger
                .append(event(i), "sha256:00ff")
                .await
                .expect("append");
        }
        let head = ledger.tree_head().expect("head");
        let mut out = Vec::new();
        export::write_export(ledger.store(), &head, &None, &mut out).expect("export");
        out
    });
    let check = |b: &[u8]| export::verify(&mut &b[..], &VerifyOptions::default(), &mut |_, _| {});
    check(&bytes).expect("the untouched export verifies");
    let parsed = |b: &[u8]| -> Option<Vec<serde_json::Value>> {
        std::str::from_utf8(b)
            .ok()?
            .lines()
            .map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let original = parsed(&bytes).expect("parses");
    let (mut caught, mut neutral) = (0, 0);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        match check(&b) {
            Err(_) => caught += 1,
            Ok(_) => {
                assert_eq!(
                    parsed(&b).as_ref(),
                    Some(&original),
                    "flip at byte {i} ({:?}) was not caught",
                    bytes[i] as char
                );
                neutral += 1;
            }
        }
    }
    assert!(caught > 2000, "caught {caught}");
    assert!(neutral <= bytes.len() / 100, "{neutral} neutral flips");
}

/// A real child process appends from 16 concurrent writers and is killed with SIGKILL at a random
/// moment, several times over the same data directory. Every acknowledged event must be there
/// after each crash, exactly once, and the whole ledger must verify.
#[test]
fn kill_9_during_appends_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rounds = if medledger_tests::long_tests() { 12 } else { 5 };
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for round in 0..rounds {
        let mut child = ChildGuard(
            Command::new(bin("ledger-writer"))
                .args([dir.path().to_str().expect("utf8"), &round.to_string(), "16"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn ledger-writer"),
        );
        let stdout = child.0.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)).as_deref(),
            Ok("ready")
        );
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run_for = Duration::from_millis(150 + x % 500);
        let start = std::time::Instant::now();
        let mut this_round = 0;
        while start.elapsed() < run_for {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(10)) {
                let mut parts = line.split(' ');
                if let (Some("ack"), Some(id), Some(seq)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    acked.insert(id.to_owned(), seq.parse().expect("seq"));
                    this_round += 1;
                }
            }
        }
        child.kill();
        // Acks already written to the pipe before the kill count too.
        let _ = reader.join();
        for line in rx.try_iter() {
            let mut parts = line.split(' ');
            if let (Some("ack"), Some(id), Some(seq)) = (parts.next(), parts.next(), parts.next()) {
                acked.insert(id.to_owned(), seq.parse().expect("seq"));
                this_round += 1;
            }
        }
        assert!(
            this_round > 0,
            "round {round}: no acknowledgement before the kill"
        );
        let store = Store::open(&dir.path().join("ledger")).expect("reopen after kill -9");
        for (id, seq) in &acked {
            assert_eq!(
                store.find_event_id(id).expect("lookup"),
                Some(*seq),
                "acknowledged event {id} lost or moved"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for seq in 0..store.size() {
            let e = store.entry(seq).expect("entry");
            assert!(
                seen.insert(e.body.event_id.clone()),
                "event {:?} twice",
                e.body.event_id
            );
        }
        drop(store);
    }
    // The whole ledger still verifies end to end.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ledger = Ledger::open(dir.path(), LedgerOptions::default())
            .await
            .expect("open");
        let head = ledger.tree_head().expect("head");
        assert!(head.size as usize >= acked.len());
        let mut out = Vec::new();
        export::write_export(ledger.store(), &head, &None, &mut out).expect("export");
        export::verify(&mut &out[..], &VerifyOptions::default(), &mut |_, _| {}).expect("verifies");
    });
}
