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

/// The mimalloc option, read from the environment at process start only, that delays returning
/// freed memory to the system.
const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";

/// `medledger run` starts itself again at once with [`PURGE_DELAY`] `0` unless the environment
/// sets it. mimalloc returns freed memory to the system only after a delay (1 s by default) and
/// only when the thread that freed it allocates again, so a gateway that fell idle after a busy
/// spell (a snapshot install, the registry rebuilt from a million entries) kept 20-35 MiB it no
/// longer used: 152 / 139 / 145 MiB idle against 130 / 120 / 118 with `0`, for 3-6 % fewer
/// events/s at 16 and 64 clients (docs/benchmarks.md, "Freed memory returned at once").
/// mimalloc takes options from the environment only (its call for them is not safe Rust), and an
/// exec keeps the process id, which systemd follows. An operator may set another value in the
/// unit.
fn purge_freed_memory_at_once() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(PURGE_DELAY).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    let err = cmd.args(args).env(PURGE_DELAY, "0").exec();
    eprintln!(
        "warning: cannot start again with {PURGE_DELAY}=0 ({err}); freed memory goes back to \
         the system later"
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.runs_the_service() {
        purge_freed_memory_at_once();
    }
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
