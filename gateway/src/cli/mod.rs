//! The `medledger` command line: the commands, their flags and their output. Each command is a
//! module of its own; `run` is the service's entry point and lives in `crate::service`. Exit
//! codes: 0 success, 1 failure (or an invalid document for `verify`), 64 bad usage or
//! configuration.

pub mod client;
pub mod cluster;
pub mod demo;
pub mod import;
pub mod init;
pub mod ledger;
pub mod pki;
pub mod registry;
pub mod site_root;
pub mod staff;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// MedLedger: a verifiable maintenance ledger for hospital medical devices.
#[derive(Parser, Debug)]
#[command(name = "medledger", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a whole hospital site on this machine: site CA, Mosquitto with mutual TLS, three
    /// gateways as one cluster, simulated pumps, ventilators and monitors on MQTT and Modbus with
    /// faults that raise alarms, offline devices and due maintenance. Needs mosquitto; stops on
    /// Ctrl-C or SIGTERM leaving no process behind.
    Demo(demo::DemoArgs),
    /// Import a maintenance history from a JSON Lines file (schema: docs/import-format.md).
    /// Through a running gateway (--config FILE, or --gateway HOST:PORT with an administrator's
    /// certificate): every event recorded once by its event id and replicated to every gateway,
    /// a refused line reported with its number while the rest goes on, a rerun recording only
    /// what is missing. With --data-dir: a stand-alone ledger that no gateway serves (refused
    /// for a gateway's data directory), all or nothing.
    Import(ImportArgs),
    /// Export the ledger or write receipts.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Verify an export or a receipt offline: every hash, signature, commitment and the Merkle
    /// root against the signed tree head (entries of version 1 carry a signature each, entries
    /// of version 2 none: the signed head covers them). Exit 0 when valid, 1 otherwise.
    Verify(VerifyArgs),
    /// Make a new site from this gateway's configuration file: the site root CA, this gateway's
    /// issuing CA and certificate, and the ledger initialised as a cluster of this gateway.
    /// Refuses a data directory that already holds a site.
    Init(init::InitArgs),
    /// Run the gateway service (HTTPS API, Raft replication) with a configuration file
    /// (commented example: systemd/gateway.toml).
    Run {
        /// The configuration file.
        #[arg(long, default_value = "/etc/medledger/gateway.toml")]
        config: PathBuf,
    },
    /// Administer the cluster of gateways through a running gateway.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Whether this gateway is healthy and why not (quorum, lag, disk, certificates, CRL); exit
    /// 0 ok, 1 degraded, 2 failing, 3 no answer.
    Status(status::StatusArgs),
    /// Site root CA and this gateway's issuing CA (docs/identity.md).
    #[command(subcommand)]
    Ca(pki::CaCmd),
    /// Issue and revoke certificates (recorded in the ledger), write the CRL.
    #[command(subcommand)]
    Cert(pki::CertCmd),
    /// Device enrollment tokens and the device registry of a running gateway.
    #[command(subcommand)]
    Device(pki::DeviceCmd),
    /// Staff accounts of the web page (password sign-in on every gateway of the cluster;
    /// docs/web.md).
    #[command(subcommand)]
    Staff(staff::StaffCmd),
    /// Write a Mosquitto TLS listener config, ACL, broker certificate and CRL for the site broker.
    MosquittoConfig(pki::MosquittoArgs),
}

#[derive(Args, Debug)]
struct DataDir {
    /// The gateway's state directory.
    #[arg(long, default_value = "/var/lib/medledger")]
    data_dir: PathBuf,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("into").required(true).args(["config", "gateway", "data_dir"])))]
struct ImportArgs {
    /// Import through the running gateway of this configuration file, with the gateway's own
    /// certificate (on the gateway's machine); the events are replicated to every gateway.
    #[arg(long, conflicts_with_all = ["gateway", "data_dir"])]
    config: Option<PathBuf>,
    /// Import through the gateway at HOST:PORT (any member of the cluster) with an
    /// administrator's staff certificate (--cert, --key) and the site root (--ca).
    #[arg(long, requires_all = ["cert", "key", "ca"], conflicts_with = "data_dir")]
    gateway: Option<String>,
    /// The staff certificate (PEM) of an administrator, with --gateway.
    #[arg(long, requires = "gateway")]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "gateway")]
    key: Option<PathBuf>,
    /// The site's root certificate (PEM), to check the gateway's.
    #[arg(long, requires = "gateway")]
    ca: Option<PathBuf>,
    /// Write a stand-alone ledger in this directory (DIR/ledger) instead, which no gateway serves:
    /// for a ledger of its own (to export and verify an old history). Its entries are of
    /// version 2, covered by a checkpoint this node signs at the end. Refused for a gateway's
    /// data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Through a gateway: events per request (at most 1000; a batch is also kept under about
    /// 2 MiB of JSON).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=1000), conflicts_with = "data_dir")]
    batch: u16,
    /// With --data-dir: the identity recorded as the author of every imported event (default
    /// local:import). Through a gateway the author is the certificate that imports.
    #[arg(long, requires = "data_dir")]
    author: Option<String>,
    /// The JSON Lines file.
    file: PathBuf,
}

#[derive(Subcommand, Debug)]
enum LedgerCmd {
    /// Write a self-contained export: every entry, the node public keys and a signed tree head.
    Export {
        #[command(flatten)]
        data: DataDir,
        /// Export from the RUNNING gateway of this config file (a cluster member) through its
        /// API, instead of reading --data-dir (a stopped gateway's ledger, cut like the API's
        /// at the latest co-signed checkpoint; or the CLI's own ledger of `import`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output file (JSON Lines, docs/ledger-format.md).
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated disclosure classes whose values to include (default: all); the others
        /// are exported as commitments only.
        #[arg(long, conflicts_with = "role")]
        disclose: Option<String>,
        /// Make the export for a staff role's audience: only the classes that role reads
        /// (biomed: device, maintenance, patient; supervisor: all; auditor: device,
        /// maintenance; insurer and admin: device, maintenance, financial) are opened.
        #[arg(long)]
        role: Option<certs::StaffRole>,
    },
    /// Write a receipt for one entry: the entry, its inclusion proof and a signed tree head.
    Receipt {
        #[command(flatten)]
        data: DataDir,
        /// Sequence number of the entry.
        #[arg(long)]
        seq: u64,
        /// Output file (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated disclosure classes whose values to include (default: all).
        #[arg(long)]
        disclose: Option<String>,
        /// Also prove that the ledger extends the tree of this many entries (the size of a head
        /// the reader saw before): the receipt then carries an RFC 9162 consistency proof, which
        /// `verify --known-head` needs for a receipt newer than the known head.
        #[arg(long)]
        since_size: Option<u64>,
    },
    /// Show what each part of a ledger takes (entries, openings, Merkle nodes, indexes, the Raft
    /// log) and the bytes on disk per entry. Works on a gateway's data directory (the gateway
    /// must be stopped: sled allows one process) or on one `medledger import` wrote.
    Stats {
        #[command(flatten)]
        data: DataDir,
    },
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// An export or a receipt.
    file: PathBuf,
    /// Pin a node's public key (NODE_ID=HEX, repeatable); the document's keys must then match.
    #[arg(long = "trusted-key", value_parser = ledger::parse_trusted_key)]
    trusted_keys: Vec<ledger_node::export::NodeKey>,
    /// A head seen before: a signed tree head as `GET /v1/head` serves it, or an earlier export
    /// or receipt (its head is used, and its co-signatures must meet a majority of its voters
    /// as the file's do). The file must be the same tree or an extension of it; an older head
    /// is refused as a rollback, a different tree as a fork.
    #[arg(long = "known-head")]
    known_head: Option<PathBuf>,
    /// The site's root certificate (PEM): every key the file carries must be endorsed by a
    /// certificate chaining to it, through that node's own issuing CA: found in an export's own
    /// `certificate-issued` entries (profile `ledger-key`; class `device` disclosed), or in a
    /// receipt's `endorsements`.
    #[arg(long = "site-root")]
    site_root: Option<PathBuf>,
    /// Require the tree head the file ends at to be signed by at least this many gateways (the
    /// checkpoint's signer and its co-signers), with keys the file is checked against (pinned
    /// with --trusted-key, or endorsed with --site-root): with 2 of 3 voters, a history one
    /// gateway signed alone is refused. A file cut at a co-signed checkpoint needs a majority
    /// of the voter set it carries in any case (this can only raise it); 0 (default): nothing
    /// more, and a file without co-signatures (one gateway's head) is accepted as such.
    #[arg(long, default_value_t = 0)]
    quorum: usize,
    /// Threads that check entries (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print only the verdict line.
    #[arg(long, short)]
    quiet: bool,
}

impl Cli {
    /// Whether this command runs the long-lived gateway service (`medledger run`).
    pub fn runs_the_service(&self) -> bool {
        matches!(self.command, Cmd::Run { .. })
    }
}

/// Runs one command to its end.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Demo(args) => demo::run(args).await,
        Cmd::Run { config } => match crate::config::Config::load(&config) {
            Ok(c) => crate::service::run::run(c).await,
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(64))
            }
        },
        Cmd::Init(a) => init::run(a).await,
        Cmd::Ca(c) => pki::run_ca(c).await,
        Cmd::Cert(c) => pki::run_cert(c).await,
        Cmd::Device(c) => pki::run_device(c).await,
        Cmd::MosquittoConfig(a) => pki::run_mosquitto(a).await,
        Cmd::Status(a) => status::run(a).await,
        Cmd::Staff(c) => staff::run(c).await,
        Cmd::Cluster(c) => {
            cluster::run(c).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Import(a) => {
            let target = match (&a.config, &a.gateway, &a.cert, &a.key, &a.ca) {
                (Some(config), ..) => Some(import::Target::from_config(config)?),
                (None, Some(gw), Some(cert), Some(key), Some(ca)) => {
                    Some(import::Target::from_certificate(gw, cert, key, ca)?)
                }
                _ => None,
            };
            if let Some(target) = target {
                let s = import::import_via_api(&target, &a.file, usize::from(a.batch)).await?;
                println!(
                    "{}",
                    s.describe(&a.file.display().to_string(), &target.addr)
                );
                if !s.readers.is_empty() {
                    print!(
                        "who reads what was recorded (other roles see only commitments):\n{}",
                        crate::records::describe_audience(&s.readers)
                    );
                }
                return Ok(if s.refused == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            let data_dir = a
                .data_dir
                .context("give --config, --gateway or --data-dir")?;
            if let Some(why) = import::gateway_dir_refusal(&data_dir) {
                anyhow::bail!(why);
            }
            let author = a.author.as_deref().unwrap_or("local:import");
            let ledger = ledger::open_ledger(&data_dir, 1).await?;
            let s = ledger::import_file(&ledger, &a.file, author).await?;
            println!(
                "imported {} events from {} ({} already present); the ledger now has {} entries",
                s.appended,
                a.file.display(),
                s.already_present,
                s.size
            );
            if !s.readers.is_empty() {
                print!(
                    "who reads what was recorded (other roles see only commitments):\n{}",
                    crate::records::describe_audience(&s.readers)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ledger(LedgerCmd::Export {
            data,
            config,
            out,
            disclose,
            role,
        }) => {
            if let Some(config) = config {
                if disclose.is_some() {
                    anyhow::bail!("--disclose applies to --data-dir; with --config give --role");
                }
                let config = crate::config::Config::load(&config)?;
                let n = ledger::export_via_api(&config, role, &out).await?;
                println!("exported {n} entries to {}", out.display());
                return Ok(ExitCode::SUCCESS);
            }
            let disclose = match role {
                Some(r) => Some(crate::records::role_classes(r)),
                None => ledger::parse_disclosure(disclose.as_deref())?,
            };
            let n = ledger::export_data_dir(&data.data_dir, &out, &disclose).await?;
            match role {
                Some(r) => println!(
                    "exported {n} entries to {} for role {r} (classes opened: {})",
                    out.display(),
                    crate::records::role_classes(r)
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => println!("exported {n} entries to {}", out.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ledger(LedgerCmd::Receipt {
            data,
            seq,
            out,
            disclose,
            since_size,
        }) => {
            let disclose = ledger::parse_disclosure(disclose.as_deref())?;
            ledger::receipt_data_dir(&data.data_dir, seq, &out, &disclose, since_size).await?;
            println!("wrote a receipt for entry {seq} to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ledger(LedgerCmd::Stats { data }) => {
            let dir = data.data_dir.clone();
            print!(
                "{}",
                tokio::task::spawn_blocking(move || ledger::stats(&dir)).await??
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify(a) => {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let file = a.file.clone();
            let (trusted, known, threads) = (a.trusted_keys, a.known_head, a.threads);
            let quorum = a.quorum;
            let result = tokio::task::spawn_blocking(move || {
                ledger::verify_with(&file, trusted, known.as_deref(), threads, quorum, tty)
            })
            .await??;
            match result {
                Ok(report) => {
                    let mut text = if a.quiet {
                        ledger::verdict(&report) + "\n"
                    } else {
                        ledger::describe(&report)
                    };
                    if let Some(root) = &a.site_root {
                        let (file, root2) = (a.file.clone(), root.clone());
                        let site =
                            tokio::task::spawn_blocking(move || site_root::check(&file, &root2))
                                .await??;
                        match site {
                            Ok(nodes) => {
                                text = text.replace(
                                    ledger::NO_ANCHOR_WORDS,
                                    &ledger::site_root_words(root, &nodes),
                                );
                            }
                            Err(reason) => {
                                println!("INVALID {}: {reason}", a.file.display());
                                return Ok(ExitCode::from(1));
                            }
                        }
                    }
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    println!("INVALID {}: {failure}", a.file.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
