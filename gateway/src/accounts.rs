//! Staff accounts of the web page: an id, the printed name and role a signature shows
//! (21 CFR Part 11 §11.50), an Argon2id password hash (PHC string) and an administrative lock.
//!
//! They live in one file, `DATA_DIR/staff.json` (mode 0600), replaced atomically (temporary
//! file, fsync, rename, directory fsync), so a power cut leaves the old or the new file, never a
//! torn one. The CLI (`medledger staff …`) writes it; the running gateway reads it at every
//! sign-in, so an added, changed or locked account counts at once without a restart.
//! ARCHITECTURE.md says why accounts are per gateway rather than in the replicated ledger.

use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use certs::StaffRole;
use serde::{Deserialize, Serialize};

/// The accounts file, inside the data directory.
pub const ACCOUNTS_FILE: &str = "staff.json";

/// Shortest password accepted (NIST SP 800-63B asks for at least 8; a shared appliance with
/// offline-guessable hashes in its backups warrants more).
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted: Argon2 takes any length, but a bound keeps one sign-in cheap.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// One staff account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The sign-in name (same rules as a staff certificate's id).
    pub id: String,
    /// The printed name shown with every signature.
    pub name: String,
    pub role: StaffRole,
    /// Argon2id hash in PHC string format (`$argon2id$v=19$m=…`).
    pub password_hash: String,
    /// Locked by an administrator (`medledger staff lock`): no sign-in until unlocked.
    #[serde(default)]
    pub locked: bool,
    /// When it was added or last changed (Unix ms): where gateways hold different records of
    /// one account, the newest is the account (`auth::Auth::lookup`).
    #[serde(default)]
    pub changed_ms: i64,
}

/// What went wrong with the accounts file or a request about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    #[error("staff accounts file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("no staff account {0:?}")]
    NoSuchAccount(String),
    #[error("staff account {0:?} already exists")]
    Exists(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsDoc {
    format: String,
    accounts: Vec<Account>,
}

const FORMAT: &str = "medledger-staff/1";

/// The accounts file of a data directory.
#[derive(Debug, Clone)]
pub struct Accounts {
    path: PathBuf,
}

impl Accounts {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Accounts {
            path: data_dir.join(ACCOUNTS_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file_err(&self, message: impl std::fmt::Display) -> AccountError {
        AccountError::File {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    /// Every account; none when the file does not exist yet.
    pub fn list(&self) -> Result<Vec<Account>, AccountError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.file_err(e)),
        };
        let doc: AccountsDoc = serde_json::from_str(&text).map_err(|e| self.file_err(e))?;
        if doc.format != FORMAT {
            return Err(self.file_err(format!("format {:?} is not {FORMAT:?}", doc.format)));
        }
        Ok(doc.accounts)
    }

    /// One account by id.
    pub fn get(&self, id: &str) -> Result<Option<Account>, AccountError> {
        Ok(self.list()?.into_iter().find(|a| a.id == id))
    }

    fn save(&self, accounts: Vec<Account>) -> Result<(), AccountError> {
        let doc = AccountsDoc {
            format: FORMAT.into(),
            accounts,
        };
        let json = serde_json::to_vec_pretty(&doc).map_err(|e| self.file_err(e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.file_err(e))?;
        }
        certs::files::write_private(&self.path, &json).map_err(|e| self.file_err(e))
    }

    /// Adds an account with `password`.
    pub fn add(
        &self,
        id: &str,
        name: &str,
        role: StaffRole,
        password: &str,
    ) -> Result<Account, AccountError> {
        check_id(id)?;
        check_name(name)?;
        let mut all = self.list()?;
        if all.iter().any(|a| a.id == id) {
            return Err(AccountError::Exists(id.into()));
        }
        let account = Account {
            id: id.into(),
            name: name.into(),
            role,
            password_hash: hash_password(password)?,
            locked: false,
            changed_ms: ledger_node::ledger::now_ms(),
        };
        all.push(account.clone());
        self.save(all)?;
        Ok(account)
    }

    /// Applies `f` to account `id` and saves.
    fn update(
        &self,
        id: &str,
        f: impl FnOnce(&mut Account) -> Result<(), AccountError>,
    ) -> Result<Account, AccountError> {
        let mut all = self.list()?;
        let a = all
            .iter_mut()
            .find(|a| a.id == id)
            .ok_or_else(|| AccountError::NoSuchAccount(id.into()))?;
        f(a)?;
        a.changed_ms = ledger_node::ledger::now_ms().max(a.changed_ms + 1);
        let out = a.clone();
        self.save(all)?;
        Ok(out)
    }

    pub fn set_password(&self, id: &str, password: &str) -> Result<Account, AccountError> {
        let hash = hash_password(password)?;
        self.update(id, |a| {
            a.password_hash = hash;
            Ok(())
        })
    }

    pub fn set_locked(&self, id: &str, locked: bool) -> Result<Account, AccountError> {
        self.update(id, |a| {
            a.locked = locked;
            Ok(())
        })
    }
}

pub fn check_id(id: &str) -> Result<(), AccountError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AccountError::Invalid {
            field: "id",
            message: format!("{id:?}: 1 to 64 characters of A-Z a-z 0-9 - . _"),
        })
    }
}

fn check_name(name: &str) -> Result<(), AccountError> {
    if name.trim().is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(AccountError::Invalid {
            field: "name",
            message: format!(
                "{name:?}: the printed name, 1 to 128 characters, no control characters"
            ),
        });
    }
    Ok(())
}

/// Argon2id with the crate's defaults (OWASP's minimum: 19 MiB, 2 passes, 1 lane) and a random
/// salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccountError::Invalid {
            field: "password",
            message: format!("shorter than {MIN_PASSWORD_CHARS} characters"),
        });
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::Invalid {
            field: "password",
            message: format!("longer than {MAX_PASSWORD_BYTES} bytes"),
        });
    }
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Invalid {
            field: "password",
            message: e.to_string(),
        })
}

/// Whether `password` matches the account's hash (constant-time compare inside argon2). A hash
/// that does not parse matches nothing.
pub fn verify_password(account: &Account, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(&account.password_hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(e) => {
            tracing::error!(account = %account.id, error = %e, "staff account has an unreadable password hash");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_change_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let acc = Accounts::in_data_dir(dir.path());
        assert!(acc.list().expect("empty").is_empty());
        let a = acc
            .add("jdoe", "Jo Doe", StaffRole::Biomed, "correct horse battery")
            .expect("add");
        assert!(a.password_hash.starts_with("$argon2id$"));
        assert!(verify_password(&a, "correct horse battery"));
        assert!(!verify_password(&a, "correct horse batterY"));
        assert!(matches!(
            acc.add("jdoe", "X", StaffRole::Admin, "another long password"),
            Err(AccountError::Exists(_))
        ));
        assert!(matches!(
            acc.add("x", "X", StaffRole::Admin, "short"),
            Err(AccountError::Invalid {
                field: "password",
                ..
            })
        ));
        assert!(matches!(
            acc.add("a b", "X", StaffRole::Admin, "another long password"),
            Err(AccountError::Invalid { field: "id", .. })
        ));
        let b = acc
            .set_password("jdoe", "a new long password")
            .expect("passwd");
        assert!(verify_password(&b, "a new long password"));
        assert!(!verify_password(&b, "correct horse battery"));
        assert!(acc.set_locked("jdoe", true).expect("lock").locked);
        assert!(acc.get("jdoe").expect("get").expect("some").locked);
        assert!(matches!(
            acc.set_locked("nobody", true),
            Err(AccountError::NoSuchAccount(_))
        ));
        // A damaged file is an error naming it, not an empty list.
        std::fs::write(acc.path(), b"{").expect("write");
        let e = acc.list().expect_err("damaged").to_string();
        assert!(e.contains("staff.json"), "{e}");
    }
}
