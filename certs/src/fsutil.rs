//! Small file helpers: private files created with mode 0600, atomic replacement.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Create (or truncate) `path` with mode 0600 and write `data`.
///
/// The mode is given at creation, so the key never exists with wider permissions. An existing
/// file is replaced through a temporary file created 0600 in the same directory.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    atomic_write_mode(path, data, 0o600, None)
}

/// Like [`write_private`], but mode 0640 and group `gid`: a key another service account (in
/// that group) must read. The group is set before the file gets its name, so the key is never
/// readable by a group it was not meant for.
pub fn write_group_private(path: &Path, data: &[u8], gid: u32) -> Result<()> {
    atomic_write_mode(path, data, 0o640, Some(gid))
}

/// Atomically replace `path` with `data` (temp file + fsync + rename + directory fsync), mode 0644.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    atomic_write_mode(path, data, 0o644, None)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    path.with_file_name(name)
}

fn atomic_write_mode(path: &Path, data: &[u8], mode: u32, gid: Option<u32>) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        set_mode(&mut opts, mode);
        let mut f = opts.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(data).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        if let Some(gid) = gid {
            chown_group(&tmp, gid)?;
        }
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            // fsync of the directory makes the rename durable; failure to open it (e.g. on
            // exotic filesystems) is not worth failing the write for.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn set_mode(opts: &mut OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    opts.mode(mode);
}

#[cfg(not(unix))]
fn set_mode(_opts: &mut OpenOptions, _mode: u32) {}

/// Read a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

/// Read a whole UTF-8 file, naming it in the error.
pub fn read_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Create a directory (and parents) with mode 0700, durably: the parent of each directory
/// created is synced, so that a power cut cannot forget the directory and the keys written into
/// it (their own writes sync only the directory they are in).
pub fn create_private_dir(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_private_dir(parent)?;
    }
    let mut b = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    match b.create(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(Error::io(path, e)),
        _ => {}
    }
    let parent = parent.unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(parent, e))
}

/// A lock file older than this is left over from a crashed process and is removed.
const STALE_LOCK: std::time::Duration = std::time::Duration::from_secs(30);
/// How long to wait for a lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A lock between processes (the CLI and the running gateway) on a state file: a lock file
/// created exclusively, removed on drop; one older than 30 s is taken as left by a crash.
#[derive(Debug)]
pub struct FileLock(PathBuf);

impl FileLock {
    /// Take the lock at `lock_path`, waiting up to 5 s.
    pub fn acquire(lock_path: &Path) -> Result<FileLock> {
        let start = std::time::Instant::now();
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(lock_path)
            {
                Ok(_) => return Ok(FileLock(lock_path.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(lock_path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
                        .is_some_and(|age| age > STALE_LOCK);
                    if stale {
                        tracing::warn!(path = %lock_path.display(), "removing stale lock file");
                        let _ = fs::remove_file(lock_path);
                        continue;
                    }
                    if start.elapsed() > LOCK_WAIT {
                        return Err(Error::StoreLocked {
                            path: lock_path.to_path_buf(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(Error::io(lock_path, e)),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Set the group of `path` (the owner stays). Needs root or membership in the group.
#[cfg(unix)]
pub fn chown_group(path: &Path, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| Error::io(path, e))
}

#[cfg(not(unix))]
pub fn chown_group(_path: &Path, _gid: u32) -> Result<()> {
    Ok(())
}

/// The id of group `name`, from `/etc/group` (`None` when there is no such group).
pub fn group_id(name: &str) -> Result<Option<u32>> {
    let path = Path::new("/etc/group");
    let text = read_string(path)?;
    Ok(parse_group_id(&text, name))
}

fn parse_group_id(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Create `path` (and parents) if needed, then give it exactly `mode` and, when `gid` is given,
/// that group.
pub fn create_dir_with(path: &Path, mode: u32, gid: Option<u32>) -> Result<()> {
    create_private_dir(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Some(gid) = gid {
            chown_group(path, gid)?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// The first ancestor of `path` (not `path` itself) that members of group `gid` cannot enter
/// (no search permission for others, and not group `gid` with group search), with its mode.
#[cfg(unix)]
pub fn blocking_ancestor(path: &Path, gid: u32) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    path.ancestors().skip(1).find_map(|a| {
        let m = fs::metadata(a).ok()?;
        let mode = m.mode() & 0o7777;
        let ok = mode & 0o001 != 0 || (m.gid() == gid && mode & 0o010 != 0);
        (!ok).then(|| (a.to_path_buf(), mode))
    })
}

#[cfg(not(unix))]
pub fn blocking_ancestor(_path: &Path, _gid: u32) -> Option<(PathBuf, u32)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_parse() {
        let g = "root:x:0:\nmosquitto:x:105:\nbad\nmedledger:x:abc:\n";
        assert_eq!(parse_group_id(g, "mosquitto"), Some(105));
        assert_eq!(parse_group_id(g, "root"), Some(0));
        assert_eq!(parse_group_id(g, "medledger"), None);
        assert_eq!(parse_group_id(g, "mosq"), None);
        assert_eq!(parse_group_id(g, "bad"), None);
    }
}
