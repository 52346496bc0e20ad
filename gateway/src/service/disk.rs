//! The free-space reserve of the data directory: below `[node] reserve_mb` free the gateway
//! refuses new writes before they reach storage.
//!
//! Why a reserve rather than handling ENOSPC: sled 0.34 writes its log buffers on a thread of
//! its own, and when one write fails (`write_to_log`, or the segment allocator) it stores the
//! error as a *global* error (`Config::set_global_error`) that every later write, flush and
//! transaction of that database returns until it is reopened; openraft treats the failed flush
//! of its log as fatal and stops the Raft core. A full disk met by sled therefore needs a
//! restart of the process; a full disk met by this check is only a refused write, and the
//! next one is checked afresh, so writes resume by themselves once space returns.
//!
//! The check reads `statvfs` (space available to this unprivileged user) before each write
//! enters the proposer, before a leader takes a follower's forwarded batch, before a follower
//! stores entries or a snapshot chunk sent by the leader, before a snapshot is built and before
//! a telemetry event is written to the outbox. What is in flight when the disk crosses the line
//! (at most a few batches) lands in the reserve.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The data directory's disk has less free space than the reserve.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "insufficient storage: {free_mib} MiB free under {dir} ({free} bytes), below the write \
     reserve of {reserve_mib} MiB ([node] reserve_mb); writes are refused until space is \
     freed, reads go on",
    dir = .dir.display(),
    free_mib = .free / (1024 * 1024),
    reserve_mib = .reserve / (1024 * 1024)
)]
pub struct DiskFull {
    pub dir: PathBuf,
    /// Bytes available under `dir` when it was checked.
    pub free: u64,
    /// The reserve, bytes.
    pub reserve: u64,
}

/// The data directory and its reserve; remembers whether writes are being refused, to log the
/// change both ways once rather than every refusal.
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    reserve: u64,
    refusing: AtomicBool,
}

impl DiskGuard {
    pub fn new(dir: &Path, reserve_mb: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            reserve: reserve_mb.saturating_mul(1024 * 1024),
            refusing: AtomicBool::new(false),
        }
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The reserve, bytes.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Bytes available under the data directory now.
    pub fn free(&self) -> std::io::Result<u64> {
        fs2::available_space(&self.dir)
    }

    /// `Ok` when at least `extra` bytes besides the reserve are free. A free space that cannot
    /// be read is let through (the write then meets whatever the disk does), and logged.
    pub fn check_room(&self, extra: u64) -> Result<(), DiskFull> {
        let free = match self.free() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the free space of the data directory");
                return Ok(());
            }
        };
        if free >= self.reserve.saturating_add(extra) {
            if self.refusing.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    dir = %self.dir.display(),
                    free_mib = free / (1024 * 1024),
                    reserve_mib = self.reserve / (1024 * 1024),
                    "free space is back above the reserve: writes resume"
                );
            }
            return Ok(());
        }
        let full = DiskFull {
            dir: self.dir.clone(),
            free,
            reserve: self.reserve,
        };
        if extra == 0 && !self.refusing.swap(true, Ordering::Relaxed) {
            tracing::error!(dir = %self.dir.display(), free, reserve = self.reserve, "{full}");
        }
        Err(full)
    }

    /// `Ok` when a write may go ahead: the free space is at least the reserve.
    pub fn check(&self) -> Result<(), DiskFull> {
        self.check_room(0)
    }
}

#[cfg(test)]
mod tests {
    use super::DiskGuard;

    #[test]
    fn refuses_below_the_reserve_and_names_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let free = fs2::available_space(dir.path()).expect("statvfs");
        assert!(DiskGuard::new(dir.path(), 1).check().is_ok());
        let huge = DiskGuard::new(dir.path(), free / (1024 * 1024) + 1024);
        let e = huge.check().expect_err("refused");
        let text = e.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("MiB free"), "{text}");
        // An extra amount on top of the reserve.
        assert!(DiskGuard::new(dir.path(), 1)
            .check_room(u64::MAX / 2)
            .is_err());
    }
}
