//! `medledger staff …`: staff accounts of the web page (`DATA_DIR/staff.json`, Argon2id). A
//! running gateway reads the file at every sign-in, so changes count without a restart.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::accounts::{AccountError, Accounts};

#[derive(Args, Debug)]
pub struct StaffDir {
    /// The gateway's state directory (the accounts are DATA_DIR/staff.json).
    #[arg(long, default_value = "/var/lib/medledger")]
    data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum StaffCmd {
    /// Add a staff account. The password (at least 12 characters) is read from standard input,
    /// one line (`read -rs PW; printf '%s\n' "$PW" | medledger staff add …`).
    Add {
        /// Sign-in name (A-Z a-z 0-9 - . _).
        id: String,
        /// Role: biomed, supervisor, auditor, insurer or admin.
        #[arg(long)]
        role: certs::StaffRole,
        /// Printed name shown with every signature (default: the sign-in name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        dir: StaffDir,
    },
    /// Set a new password (read from standard input, one line).
    Passwd {
        id: String,
        #[command(flatten)]
        dir: StaffDir,
    },
    /// List the accounts (never the hashes).
    List {
        #[command(flatten)]
        dir: StaffDir,
    },
    /// Lock an account: no sign-in until unlocked (on every gateway, at its next sign-in).
    Lock {
        id: String,
        #[command(flatten)]
        dir: StaffDir,
    },
    /// Unlock an account locked with `staff lock`.
    Unlock {
        id: String,
        #[command(flatten)]
        dir: StaffDir,
    },
}

fn read_password() -> anyhow::Result<String> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("password (echoed; prefer a pipe): ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    if pw.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    Ok(pw)
}

pub async fn run(cmd: StaffCmd) -> anyhow::Result<ExitCode> {
    let result: Result<String, AccountError> = match cmd {
        StaffCmd::Add {
            id,
            role,
            name,
            dir,
        } => {
            let pw = read_password()?;
            let name = name.unwrap_or_else(|| id.clone());
            let accounts = Accounts::in_data_dir(&dir.data_dir);
            tokio::task::spawn_blocking(move || accounts.add(&id, &name, role, &pw))
                .await?
                .map(|a| format!("added staff account {} ({}, {})", a.id, a.name, a.role))
        }
        StaffCmd::Passwd { id, dir } => {
            let pw = read_password()?;
            let accounts = Accounts::in_data_dir(&dir.data_dir);
            tokio::task::spawn_blocking(move || accounts.set_password(&id, &pw))
                .await?
                .map(|a| format!("new password set for {}", a.id))
        }
        StaffCmd::List { dir } => Accounts::in_data_dir(&dir.data_dir).list().map(|all| {
            all.iter()
                .map(|a| {
                    format!(
                        "{}\t{}\t{}{}",
                        a.id,
                        a.role,
                        a.name,
                        if a.locked { "\tlocked" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        }),
        StaffCmd::Lock { id, dir } => Accounts::in_data_dir(&dir.data_dir)
            .set_locked(&id, true)
            .map(|a| format!("locked {}", a.id)),
        StaffCmd::Unlock { id, dir } => Accounts::in_data_dir(&dir.data_dir)
            .set_locked(&id, false)
            .map(|a| format!("unlocked {}", a.id)),
    };
    match result {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ AccountError::Invalid { .. }) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(64))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
