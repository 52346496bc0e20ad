//! systemd service notifications (`sd_notify(3)`) for `medledger run` under
//! `medledger-gateway.service` (`Type=notify`, `WatchdogSec=`).
//!
//! - `READY=1` is sent by `run` once the ledger is open and every listener is bound.
//! - `STATUS=` tells `systemctl status` what the node sees ("leader 2, term 5, ledger 1234
//!   entries").
//! - `WATCHDOG=1` is sent only after a probe through the parts that can hang has answered: the
//!   Raft core (a round trip through its message loop, which stalls while it waits for storage)
//!   and the store (a read of the ledger's root on a blocking thread). A free-standing timer
//!   would keep pinging while the ledger is stuck; this way systemd kills and restarts a gateway
//!   whose Raft core or storage stopped answering.
//! - `STOPPING=1` is sent when a stop signal arrives, before the drain.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call here does nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::service::node::Node;

/// How often `STATUS=` is refreshed when systemd asked for no watchdog.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Sends `states` to the service manager, if there is one. A failed send is logged (the first
/// one only: the supervisor sends every few seconds), never fatal: the gateway serves the same
/// with or without systemd.
fn send(states: &[NotifyState]) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(false, states) {
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET); further failures are not logged");
        }
    }
}

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// `READY=1` with the node's current status line.
pub fn ready(node: &Node) {
    let status = status_line(node);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// `STOPPING=1`: a stop signal arrived and the gateway drains.
pub fn stopping(what: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(what)]);
}

/// `STATUS=` alone.
pub fn status(what: &str) {
    send(&[NotifyState::Status(what)]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process's `WATCHDOG_PID`).
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog and refreshes `STATUS=` until `shutdown`. Each round probes the Raft core
/// and the store with a deadline of half the watchdog interval, and pings only when both
/// answered, so that systemd restarts a gateway whose ledger hangs (`Restart=on-failure`).
pub async fn supervise(node: Arc<Node>, shutdown: CancellationToken) {
    if !enabled() {
        return;
    }
    let watchdog = watchdog_interval();
    // systemd's advice (sd_watchdog_enabled(3)): ping at half the interval.
    let period = watchdog.map_or(STATUS_INTERVAL, |w| w / 2);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probed = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = probe(&node, period) => r,
        };
        match probed {
            Ok(()) => {
                let line = status_line(&node);
                if watchdog.is_some() {
                    send(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
                } else {
                    send(&[NotifyState::Status(&line)]);
                }
            }
            Err(why) => {
                // No ping: if this lasts for the whole WatchdogSec, systemd aborts the process.
                tracing::error!(%why, "health probe failed; not pinging the systemd watchdog");
                send(&[NotifyState::Status(&format!("not healthy: {why}"))]);
            }
        }
    }
}

/// One round trip through the Raft core and one store read, each within `deadline`.
async fn probe(node: &Arc<Node>, deadline: Duration) -> Result<(), String> {
    match tokio::time::timeout(deadline, node.raft.with_raft_state(|_| ())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("raft core stopped: {e}")),
        Err(_) => return Err(format!("raft core did not answer within {deadline:?}")),
    }
    let store = node.store.clone();
    let read = tokio::task::spawn_blocking(move || {
        let size = store.size();
        store.root(size).map(|_| ())
    });
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("ledger store read failed: {e}")),
        Ok(Err(e)) => Err(format!("ledger store read failed: {e}")),
        Err(_) => Err(format!("ledger store did not answer within {deadline:?}")),
    }
}

/// "node 1 leader, term 5, ledger 1234 entries", "node 2 follower, leader 1, term 5, ledger 1234
/// entries" and the like, from Raft's metrics and the store.
pub fn status_line(node: &Node) -> String {
    let m = node.raft.metrics().borrow().clone();
    let entries = node.store.size();
    if m.membership_config.membership().nodes().next().is_none() {
        return format!(
            "node {} not in a cluster yet (medledger cluster init or join), ledger {entries} entries",
            node.id
        );
    }
    let state = format!("{:?}", m.state).to_lowercase();
    let leader = match m.current_leader {
        Some(l) if l == node.id => String::new(),
        Some(l) => format!(", leader {l}"),
        None => ", no leader".to_string(),
    };
    format!(
        "node {} {state}{leader}, term {}, ledger {entries} entries",
        node.id, m.current_term
    )
}
