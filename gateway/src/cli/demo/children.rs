//! The demo's long-running child processes (gateways, Mosquitto): each in a process group of its
//! own, so that a Ctrl-C in the terminal reaches only the demo, which then stops them in order;
//! each started through `setpriv --pdeathsig TERM` (util-linux, present on every Debian system),
//! which sets `PR_SET_PDEATHSIG` and execs the program in place, so a demo that is killed
//! (even with SIGKILL) leaves no orphan behind: the kernel sends its children SIGTERM.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, so children are started
//! only from the thread that drives the demo's main future (the runtime's `block_on` thread),
//! never from a blocking-pool thread that may end while the child runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long a child may take to stop after SIGTERM (a gateway drains its connections for up to
/// 16 s) before its process group gets SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// One supervised process.
struct Supervised {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The demo's child processes, stopped in reverse start order by [`Children::stop_all`] (and,
/// as a last resort, killed on drop).
#[derive(Default)]
pub struct Children {
    running: Vec<Supervised>,
}

/// `setpriv`, when installed (it is on Debian: util-linux is essential).
fn setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Children {
    /// Starts `program args` in a new process group with stdout discarded and stderr appended
    /// to `log`; returns its pid.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = match setpriv() {
            Some(sp) => {
                let mut c = Command::new(sp);
                c.args(["--pdeathsig", "TERM", "--"]).arg(program);
                c
            }
            None => {
                tracing::warn!(
                    "setpriv not found (util-linux): a demo killed with SIGKILL may leave {name} running"
                );
                Command::new(program)
            }
        };
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let pid = child.id();
        self.running.push(Supervised {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        });
        Ok(pid)
    }

    /// An error naming the first child that has exited, with the end of its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for s in &mut self.running {
            if let Some(status) = s.child.try_wait().ok().flatten() {
                bail!(
                    "{} exited ({status}); the end of its log {}:\n{}",
                    s.name,
                    s.log.display(),
                    tail(&s.log, 15)
                );
            }
        }
        Ok(())
    }

    /// Stops every child, the last started first: SIGTERM to its process group, then SIGKILL
    /// after [`STOP_DEADLINE`]; each is reaped. Returns the names of those that needed SIGKILL.
    pub async fn stop_all(&mut self) -> Vec<String> {
        let mut killed = Vec::new();
        while let Some(mut s) = self.running.pop() {
            if !stop(&mut s.child, STOP_DEADLINE).await {
                killed.push(s.name);
            }
        }
        killed
    }
}

/// SIGTERM to the child's group, wait up to `deadline`, then SIGKILL; always reaps. Whether it
/// ended on SIGTERM.
async fn stop(child: &mut Child, deadline: Duration) -> bool {
    let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // Once reaped, its pid (the group's id) may belong to another process: never signal then.
    if child.try_wait().ok().flatten().is_some() {
        return true;
    }
    let _ = killpg(pgid, Signal::SIGTERM);
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if child.try_wait().ok().flatten().is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
    false
}

impl Drop for Children {
    /// The demo's error paths end here: nothing may outlive it.
    fn drop(&mut self) {
        for s in self.running.iter_mut().rev() {
            if s.child.try_wait().ok().flatten().is_some() {
                continue;
            }
            let pgid = Pid::from_raw(i32::try_from(s.child.id()).unwrap_or(i32::MAX));
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = s.child.wait();
        }
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
