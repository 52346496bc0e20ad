//! `medledger`: the MedLedger gateway binary. It only parses the command line, sets up logging
//! and the runtime, and hands over to [`medledger_gateway::cli::run`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use medledger_gateway::cli::{self, Cli};

/// mimalloc instead of glibc's allocator: the append path allocates and frees many small buffers
/// on several threads at once (sled, tokio, hyper), where it measured 8-25 % more throughput
/// (docs/benchmarks.md, "Ledger"). Built without transparent huge pages, whose zeroing on every
/// fresh page cost as much again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    medledger_gateway::logging::init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
