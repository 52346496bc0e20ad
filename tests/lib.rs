//! Utilities for MedLedger's end-to-end tests: finding and building the real binaries, child
//! processes that are killed when a test ends, free loopback ports, polling with a deadline, and a
//! real Mosquitto broker ([`mosquitto::Mosquitto`]).
#![forbid(unsafe_code)]

pub mod cluster;
pub mod mosquitto;
pub mod powerloss;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The target directory (`CARGO_TARGET_DIR` or the workspace's `target/`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("target"),
    }
}

/// Path of a workspace binary (`medledger`, `medledger-sim`, `ledger-writer`), built once per
/// test run with the same cargo and profile as the tests.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "--workspace", "--bins"]);
        // Cargo gives the test process the test crate's CARGO_MANIFEST_DIR, CARGO_PKG_* ...; build
        // scripts that rerun when those change (ring's, cc's) would then be rebuilt by this
        // build and again by the next `cargo build` or `cargo test` from a shell, each undoing
        // the other. Without them this build sees what a shell's does.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&k.as_ref())
            {
                cmd.env_remove(&key);
            }
        }
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build --bins failed: {s}")),
            Err(e) => Err(format!("cannot run cargo: {e}")),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target_dir().join(profile).join(name)
}

/// The number after `name` on a bench binary's command line (`--events 1000`), or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Sends SIGKILL now and waits for the process to end.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback TCP port that was free a moment ago (bound on port 0, then released), for programs
/// that cannot be told to bind port 0 themselves.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the long runs were asked for (`MEDLEDGER_LONG_TESTS=1`).
pub fn long_tests() -> bool {
    std::env::var("MEDLEDGER_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// Tests that run a cluster of gateway processes take turns: two clusters at once on a 2-core
/// machine starve each other's heartbeats and elections, which tests nothing but the machine.
pub async fn one_cluster_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
