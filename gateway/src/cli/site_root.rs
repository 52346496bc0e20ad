//! `medledger verify --site-root ROOT.crt`: checks that every key an export or a receipt carries
//! is endorsed by the site (see `certs::endorse`), so that the verdict rests on the site's root
//! certificate rather than on the keys the file brings along.
//!
//! Run after the document itself verified. An export's endorsements are read from its own
//! `certificate-issued` entries (profile `ledger-key`), whose values it must disclose (class
//! `device`); a receipt carries them beside its entry (`endorsements`), since it holds no other
//! entry.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use ledger_node::entry::{Entry, EventKind};
use ledger_node::export::{
    EntryRecord, ExportHeader, ExportTail, NodeKey, Receipt, EXPORT_FORMAT, RECEIPT_FORMAT,
};

/// An endorsement as an export or a receipt carries it.
struct Found {
    /// Where it is: `entry N` of an export, or the receipt.
    origin: String,
    /// The key it is recorded for, hex (an export's entry names it; a receipt's does not, the
    /// certificate itself does).
    key: Option<String>,
    cert: String,
    issuer: String,
}

/// `Ok(Ok(nodes))`: every node key of the export or receipt is endorsed under the root in
/// `root_path`; `Ok(Err(reason))`: not, and why; `Err`: the root or the file could not be read.
pub fn check(file: &Path, root_path: &Path) -> anyhow::Result<Result<Vec<u64>, String>> {
    let roots = certs::pem::load_certs(root_path)
        .with_context(|| format!("--site-root {}", root_path.display()))?;
    let [root] = roots.as_slice() else {
        anyhow::bail!(
            "--site-root {}: expected one certificate (the site root), found {}",
            root_path.display(),
            roots.len()
        );
    };
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut lines = std::io::BufReader::new(f).lines();
    let Some(first) = lines.next().transpose()? else {
        return Ok(Err("the file is empty".into()));
    };
    let Ok(header) = serde_json::from_str::<ExportHeader>(&first) else {
        let text =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        return Ok(check_receipt(&text, root, root_path));
    };
    if header.format != EXPORT_FORMAT {
        return Ok(Err(format!("unknown export format {:?}", header.format)));
    }
    let mut found: BTreeMap<u64, Vec<Found>> = BTreeMap::new();
    let mut time_ms = None;
    for line in lines {
        let line = line?;
        if let Ok(rec) = serde_json::from_str::<EntryRecord>(&line) {
            let Ok(bytes) = hex::decode(rec.entry.as_bytes()) else {
                continue;
            };
            let Ok(entry) = Entry::decode(&bytes) else {
                continue;
            };
            if entry.body.kind != EventKind::CertificateIssued {
                continue;
            }
            let field = |name: &str| -> Option<String> {
                let i = entry.body.components.iter().position(|c| c.name == name)?;
                let o = rec.openings.get(i)?.as_ref()?.open()?;
                serde_json::from_str::<String>(&o.value).ok()
            };
            if field("profile").as_deref() != Some(certs::endorse::LEDGER_KEY_PROFILE) {
                continue;
            }
            let (Some(node), Some(key), Some(cert), Some(issuer)) = (
                field("node_id").and_then(|n| n.parse::<u64>().ok()),
                field("public_key"),
                field("certificate"),
                field("issuer_certificate"),
            ) else {
                continue;
            };
            found.entry(node).or_default().push(Found {
                origin: format!("entry {}", entry.seq),
                key: Some(key),
                cert,
                issuer,
            });
        } else if let Ok(tail) = serde_json::from_str::<ExportTail>(&line) {
            time_ms = Some(tail.tree_head.time_ms);
        }
    }
    Ok(judge(
        &header.node_keys,
        &found,
        time_ms,
        root,
        root_path,
        "in the file (no ledger-key certificate-issued entry with its values disclosed)",
    ))
}

/// A receipt: its endorsements travel beside its entry.
fn check_receipt(text: &[u8], root: &[u8], root_path: &Path) -> Result<Vec<u64>, String> {
    let r: Receipt<'_> = serde_json::from_slice(text)
        .map_err(|e| format!("--site-root checks exports and receipts; this is neither: {e}"))?;
    if r.format != RECEIPT_FORMAT {
        return Err(format!("unknown receipt format {:?}", r.format));
    }
    let mut found: BTreeMap<u64, Vec<Found>> = BTreeMap::new();
    for e in &r.endorsements {
        found.entry(e.node_id).or_default().push(Found {
            origin: "the receipt".into(),
            key: None,
            cert: e.certificate.clone(),
            issuer: e.issuer_certificate.clone(),
        });
    }
    judge(
        &r.node_keys,
        &found,
        Some(r.tree_head.time_ms),
        root,
        root_path,
        "in the receipt (it carries none for that node)",
    )
}

/// Every key of `keys` must have an endorsement in `found` that verifies under `root` at the
/// tree head's time (`time_ms`); `nowhere` says where none was found.
fn judge(
    keys: &[NodeKey],
    found: &BTreeMap<u64, Vec<Found>>,
    time_ms: Option<i64>,
    root: &[u8],
    root_path: &Path,
    nowhere: &str,
) -> Result<Vec<u64>, String> {
    let at = time_ms.map(|ms| ms.div_euclid(1000));
    let mut nodes = Vec::new();
    for nk in keys {
        let hex_key = hex::encode(nk.public_key);
        let short = &hex_key[..16];
        let candidates: Vec<&Found> = found
            .get(&nk.node_id)
            .map(|v| {
                v.iter()
                    .filter(|f| f.key.as_ref().is_none_or(|k| *k == hex_key))
                    .collect()
            })
            .unwrap_or_default();
        if candidates.is_empty() {
            return Err(format!(
                "node {}'s key {short}… has no endorsement {nowhere}: the site did not endorse it",
                nk.node_id
            ));
        }
        let mut why = Vec::new();
        let ok = candidates.iter().any(|f| {
            match certs::endorse::verify_endorsement(
                root,
                &f.issuer,
                &f.cert,
                nk.node_id,
                &nk.public_key,
                at,
            ) {
                Ok(()) => true,
                Err(e) => {
                    why.push(format!("{}: {e}", f.origin));
                    false
                }
            }
        });
        if !ok {
            return Err(format!(
                "node {}'s key {short}… is not endorsed by the site root {}: {}",
                nk.node_id,
                root_path.display(),
                why.join("; ")
            ));
        }
        nodes.push(nk.node_id);
    }
    Ok(nodes)
}
