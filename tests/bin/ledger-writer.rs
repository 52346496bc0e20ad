//! Test helper process: appends events to a ledger from many concurrent writers and prints
//! `ack <event-id> <seq>` for each event once it is acknowledged (on disk). The crash tests kill
//! it with SIGKILL and check that every acknowledged event survived.
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::Arc;

use ledger_node::entry::{ComponentInput, DisclosureClass, EventInput, EventKind};
use ledger_node::{ApplyOutcome, Ledger, LedgerOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: ledger-writer DIR RUN WRITERS"))?;
    let run = args.next().unwrap_or_else(|| "0".into());
    let writers: usize = args.next().unwrap_or_else(|| "16".into()).parse()?;
    let ledger =
        Arc::new(Ledger::open(std::path::Path::new(&dir), LedgerOptions::default()).await?);
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    println!("ready");
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (ledger, out, run) = (ledger.clone(), out.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let id = format!("r{run}-w{w}-{i}");
                let ev = EventInput {
                    kind: EventKind::Calibration,
                    device_id: format!("pump-{}", w % 7),
                    occurred_at: None,
                    components: vec![ComponentInput {
                        name: "flow_error_pct".into(),
                        class: DisclosureClass::Maintenance,
                        value: format!("{}", i % 50),
                    }],
                    corrects: None,
                    event_id: Some(id.clone()),
                };
                match ledger.append(ev, "test:writer").await {
                    Ok(ApplyOutcome::Appended { seq, .. }) => {
                        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = writeln!(o, "ack {id} {seq}");
                        let _ = o.flush();
                    }
                    other => {
                        eprintln!("append {id}: {other:?}");
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
