//! `medledger demo`: a whole working ledger on one machine with no setup.

use std::process::ExitCode;

use clap::Args;

use crate::cli::ledger;
use crate::event;

/// The sample maintenance history shipped with the docs.
const SAMPLE: &str = include_str!("../../../docs/examples/maintenance-history.jsonl");

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the demo's files in this directory instead of a temporary one.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = match args.dir {
        Some(d) => d,
        // Kept after the demo so that its export and receipt can be checked by hand.
        None => tempfile::Builder::new()
            .prefix("medledger-demo-")
            .tempdir()?
            .keep(),
    };
    let data = dir.join("data");
    println!("MedLedger demo in {}", dir.display());
    let ledger = ledger::open_ledger(&data, 1).await?;
    let events = event::parse_file(SAMPLE)?;
    let n = events.len();
    let s = ledger::import_events(&ledger, events, "demo:biomed", "sample history").await?;
    println!(
        "1. recorded {} of {n} sample maintenance events (calibrations, repairs, PM, alarms, a correction); ledger size {}",
        s.appended, s.size
    );
    let export = dir.join("export.jsonl");
    ledger::export(&ledger, &export, &None).await?;
    println!("2. exported the ledger to {}", export.display());
    let report = match ledger::verify(&export, vec![], false)? {
        Ok(r) => r,
        Err(f) => anyhow::bail!("the demo's own export does not verify: {f}"),
    };
    println!("3. verified the export offline:");
    for l in ledger::describe(&report).lines() {
        println!("   {l}");
    }
    let entries: Vec<_> = (0..s.size)
        .filter_map(|seq| ledger.store().entry(seq).ok())
        .collect();
    if let Some(c) = entries.iter().find(|e| e.body.corrects.is_some()) {
        println!(
            "4. entry {} corrects entry {} ({} of {}): the original stays in the ledger, unchanged",
            c.seq,
            c.body.corrects.unwrap_or_default(),
            c.body.kind.as_str(),
            c.body.device_id
        );
    }
    let alarm = entries
        .iter()
        .find(|e| {
            e.body
                .components
                .iter()
                .any(|c| c.class == ledger_node::DisclosureClass::Patient)
        })
        .map_or(0, |e| e.seq);
    let auditor = dir.join("receipt-auditor.json");
    let disclose = ledger::parse_disclosure(Some("device,maintenance"))?;
    ledger::receipt(&ledger, alarm, &auditor, &disclose).await?;
    println!(
        "5. wrote an auditor's receipt for entry {alarm}: device and maintenance fields shown, patient data withheld: {}",
        auditor.display()
    );
    match ledger::verify(&auditor, vec![], false)? {
        Ok(r) => {
            for l in ledger::describe(&r).lines() {
                println!("   {l}");
            }
        }
        Err(f) => anyhow::bail!("the demo's own receipt does not verify: {f}"),
    }
    println!(
        "\nCheck them yourself: medledger verify {}",
        export.display()
    );
    Ok(ExitCode::SUCCESS)
}
