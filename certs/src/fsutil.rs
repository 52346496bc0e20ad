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
    atomic_write_mode(path, data, 0o600)
}

/// Atomically replace `path` with `data` (temp file + fsync + rename + directory fsync), mode 0644.
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<()> {
    atomic_write_mode(path, data, 0o644)
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

fn atomic_write_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        set_mode(&mut opts, mode);
        let mut f = opts.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(data).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
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

/// Create a directory (and parents) with mode 0700.
pub fn create_private_dir(path: &Path) -> Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path).map_err(|e| Error::io(path, e))
}
