//! `medledger ca ...`, `cert ...`, `device add` and `mosquitto-config`: the site CA, certificates,
//! enrollment tokens and the broker configuration, on a gateway's data directory.
//!
//! Issuance and revocation are ledger entries (docs/identity.md). They are written either into
//! the data directory's single-node ledger (`DATA_DIR/ledger`, gateway stopped) or, with
//! `--config FILE`, through the running gateway's API with the gateway's own certificate. A data
//! directory that belongs to a replicated cluster member (`DATA_DIR/sled`) is never written
//! behind Raft's back. Private keys are written to files (0600) and never printed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use certs::{
    CaInit, CertSpec, DeviceSpec, IssuingCa, Profile, RevocationReason, ServerSpec, StaffRole,
    TokenStore, Validity,
};
use clap::{Args, Subcommand};
use ledger_node::entry::EventInput;
use ledger_node::{ApplyOutcome, Ledger};

use crate::cli::client;
use crate::config::Config;
use crate::paths::{CRL_FILE, TOKENS_FILE};
use crate::service::revocation::{self, IdentityIndex};

/// Author of the entries the CLI writes into a local ledger.
const CLI_AUTHOR: &str = "local:cli";

/// Where the command works: a stopped gateway's data directory, or a running gateway.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The gateway's state directory (CA in DATA_DIR/pki, single-node ledger in DATA_DIR/ledger).
    /// The gateway must be stopped.
    #[arg(long, default_value = "/var/lib/medledger")]
    pub data_dir: PathBuf,
    /// Work with the RUNNING gateway of this config file instead: the CA is read from its
    /// [tls] pki_dir and the ledger entry is sent to its API with the gateway's own certificate.
    /// Needed for cluster members, whose ledger is replicated.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Create the site root CA and this gateway's issuing CA in DATA_DIR/pki, and issue this
    /// gateway's own certificate (DATA_DIR/pki/gateway.crt and gateway.key, the [tls] defaults).
    /// With --issuing-only, create only this gateway's issuing key and a request
    /// (DATA_DIR/pki/issuing.csr) for the holder of the root key to sign.
    Init(CaInitArgs),
    /// On the machine holding the root key: sign a gateway's issuing CA request.
    SignIssuing {
        /// Directory holding root.crt and root.key (e.g. the first gateway's DATA_DIR/pki).
        #[arg(long)]
        root_dir: PathBuf,
        /// The request (issuing.csr from `ca init --issuing-only`).
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the issuing CA certificate (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Validity of the issuing CA in days.
        #[arg(long, default_value_t = 1825)]
        days: u32,
    },
    /// Install the signed issuing CA certificate and the site root certificate next to the key
    /// made by `ca init --issuing-only`, then issue this gateway's own certificate.
    InstallIssuing {
        /// The gateway's state directory.
        #[arg(long, default_value = "/var/lib/medledger")]
        data_dir: PathBuf,
        /// The issuing CA certificate from `ca sign-issuing`.
        #[arg(long)]
        cert: PathBuf,
        /// The site root certificate (root.crt).
        #[arg(long)]
        root: PathBuf,
        /// This gateway's node id; read from the issuing CA certificate (made for the id given
        /// to `ca init --issuing-only`) when not given, and refused when it differs.
        #[arg(long)]
        node_id: Option<String>,
        #[command(flatten)]
        server: ServerNames,
    },
}

/// Extra names for a gateway (or broker) certificate.
#[derive(Args, Debug, Clone, Default)]
pub struct ServerNames {
    /// Extra DNS name for the certificate (gateway and broker: localhost is always included;
    /// a device with --modbus-server: the names its clients dial); repeatable.
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// Extra IP address for the certificate (gateway and broker: 127.0.0.1 and ::1 are always
    /// included; a device with --modbus-server: the addresses its clients dial); repeatable.
    #[arg(long = "ip")]
    pub ip: Vec<IpAddr>,
}

#[derive(Args, Debug)]
pub struct CaInitArgs {
    /// The gateway's state directory.
    #[arg(long, default_value = "/var/lib/medledger")]
    pub data_dir: PathBuf,
    /// Name of the site, written into the root CA's subject.
    #[arg(long, default_value = "MedLedger site")]
    pub site: String,
    /// This gateway's node id (use the value of [node] id), in its issuing CA and certificate.
    #[arg(long, default_value = "1")]
    pub node_id: String,
    /// Only create this gateway's issuing key and request; the root CA lives elsewhere.
    #[arg(long)]
    pub issuing_only: bool,
    /// Validity of this gateway's own certificate in days.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
    #[command(flatten)]
    pub server: ServerNames,
}

/// Certificate profiles the CLI issues.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileArg {
    Device,
    Staff,
    Gateway,
}

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Issue a certificate with a new key: writes PREFIX.crt (leaf + issuing CA + root) and
    /// PREFIX.key (0600), and records a certificate-issued ledger entry.
    Issue(IssueArgs),
    /// Revoke a certificate by serial: records a certificate-revoked ledger entry and rewrites
    /// the CRL (DATA_DIR/pki/crl.pem). Running gateways refuse the certificate from then on.
    Revoke {
        #[command(flatten)]
        target: Target,
        /// Serial number (hex, as printed by `cert issue` or `openssl x509 -serial`).
        serial: String,
        /// Why: unspecified, key-compromise, ca-compromise, affiliation-changed, superseded,
        /// cessation-of-operation, certificate-hold, privilege-withdrawn.
        #[arg(long)]
        reason: RevocationReason,
        /// The certificate's subject (device id, staff:<id>, gateway:<id>) when the serial is
        /// neither in the ledger nor in this CA's records (a certificate of another gateway).
        #[arg(long)]
        subject: Option<String>,
    },
    /// Write this gateway's CRL (PEM): every revoked serial its issuing CA issued, from the
    /// ledger's certificate-revoked entries. Valid 7 days.
    Crl {
        #[command(flatten)]
        target: Target,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    #[command(flatten)]
    pub target: Target,
    /// Certificate profile.
    #[arg(long, value_enum)]
    pub profile: ProfileArg,
    /// Device id or UDI (device), staff id (staff) or node id (gateway).
    #[arg(long)]
    pub id: String,
    /// Staff role: biomed, supervisor, auditor, insurer, admin (staff only).
    #[arg(long)]
    pub role: Option<StaffRole>,
    /// The person's printed name (staff only, required): what the staff member's signed records
    /// show (21 CFR Part 11 §11.50).
    #[arg(long)]
    pub name: Option<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Modbus/TCP Security role written into the certificate (device only).
    #[arg(long)]
    pub modbus_role: Option<String>,
    /// The device is a Modbus/TCP Security server (device only; adds serverAuth).
    #[arg(long)]
    pub modbus_server: bool,
    #[command(flatten)]
    pub server: ServerNames,
    /// Output prefix: writes PREFIX.crt and PREFIX.key.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum DeviceCmd {
    /// Create a one-time enrollment token for a device (stored hashed in DATA_DIR/pki/tokens.json;
    /// works while the gateway runs). The device posts a CSR with it to the enrollment listener.
    Add {
        /// The gateway's state directory.
        #[arg(long, default_value = "/var/lib/medledger")]
        data_dir: PathBuf,
        /// Device id or UDI.
        #[arg(long)]
        id: String,
        /// How long the token is valid, in hours (at most 720).
        #[arg(long, default_value_t = 24)]
        ttl_hours: u32,
        /// Modbus/TCP Security role for the device's certificate.
        #[arg(long)]
        modbus_role: Option<String>,
        /// The device is a Modbus/TCP Security server.
        #[arg(long)]
        modbus_server: bool,
    },
    /// List the registered devices of a running gateway (filters: location, risk, status).
    List(crate::cli::registry::ListArgs),
    /// Show one device's registry state and what is due.
    Show(crate::cli::registry::ShowArgs),
    /// Register a device from a JSON record (docs/registry.md).
    Register(crate::cli::registry::RegisterArgs),
    /// Record one maintenance event (calibration, PM, repair...) with its signature meaning,
    /// signed with a staff certificate (docs/registry.md).
    Record(crate::cli::registry::RecordArgs),
}

#[derive(Args, Debug)]
pub struct MosquittoArgs {
    #[command(flatten)]
    pub target: Target,
    /// Directory to write mosquitto.conf, acl, ca.crt, broker.crt/.key and crl.pem into.
    #[arg(long)]
    pub out: PathBuf,
    /// TLS listener port.
    #[arg(long, default_value_t = 8883)]
    pub port: u16,
    /// Address to bind (default: all interfaces).
    #[arg(long)]
    pub bind: Option<String>,
    /// Node id of a gateway allowed to read medledger/# (repeatable; default: this gateway's,
    /// from its certificate).
    #[arg(long = "gateway-id")]
    pub gateway_ids: Vec<String>,
    /// Account Mosquitto switches to after start (`user` line; default: Mosquitto's own,
    /// `mosquitto`).
    #[arg(long)]
    pub run_as_user: Option<String>,
    /// Group Mosquitto runs in: --out becomes 0750 and broker.key 0640 in this group, so the
    /// broker can read them after dropping root. Default: `mosquitto` when that group exists
    /// (Debian's package creates it), else the files stay readable by the caller only.
    #[arg(long)]
    pub group: Option<String>,
    #[command(flatten)]
    pub server: ServerNames,
}

// ---------------------------------------------------------------------------------------------
// where entries go

struct Ctx {
    data_dir: PathBuf,
    pki_dir: PathBuf,
    config: Option<Config>,
}

impl Target {
    fn resolve(&self) -> anyhow::Result<Ctx> {
        match &self.config {
            Some(path) => {
                let c = Config::load(path)?;
                Ok(Ctx {
                    data_dir: c.node.data_dir.clone(),
                    pki_dir: c.tls.pki_dir.clone(),
                    config: Some(c),
                })
            }
            None => Ok(Ctx {
                pki_dir: self.data_dir.join("pki"),
                data_dir: self.data_dir.clone(),
                config: None,
            }),
        }
    }
}

/// Where identity events are recorded.
enum Sink {
    Local(Box<Ledger>),
    Api { http: reqwest::Client, addr: String },
}

/// The refusal for a replicated member's data directory.
fn cluster_member_refusal(data_dir: &Path) -> Option<String> {
    let sled = data_dir.join(ledger_node::raft::DB_DIR);
    sled.exists().then(|| {
        format!(
            "{} is a cluster member's data directory ({} exists): its ledger is replicated and only the \
             running gateway may write it; start the gateway and pass --config FILE (its config file) \
             instead of --data-dir, so the entry goes through its API",
            data_dir.display(),
            sled.display()
        )
    })
}

impl Ctx {
    fn load_ca(&self) -> anyhow::Result<IssuingCa> {
        IssuingCa::load(&self.pki_dir).with_context(|| {
            format!(
                "no usable issuing ca in {} (run `medledger ca init` first)",
                self.pki_dir.display()
            )
        })
    }

    async fn sink(&self) -> anyhow::Result<Sink> {
        if let Some(c) = &self.config {
            return Ok(Sink::Api {
                http: client::client(c)?,
                addr: client::local_addr(c),
            });
        }
        if let Some(msg) = cluster_member_refusal(&self.data_dir) {
            bail!(msg);
        }
        let ledger = crate::cli::ledger::open_ledger(&self.data_dir, 1).await?;
        Ok(Sink::Local(Box::new(ledger)))
    }
}

/// What the ledger answered.
struct Recorded {
    seq: u64,
    duplicate: bool,
}

impl Sink {
    async fn record(&self, event: EventInput) -> anyhow::Result<Recorded> {
        match self {
            Sink::Local(ledger) => match ledger.append(event, CLI_AUTHOR).await? {
                ApplyOutcome::Appended { seq, .. } => Ok(Recorded {
                    seq,
                    duplicate: false,
                }),
                ApplyOutcome::Duplicate { seq } => Ok(Recorded {
                    seq,
                    duplicate: true,
                }),
                ApplyOutcome::Refused { reason } => bail!("the ledger refused the entry: {reason}"),
                other => bail!("unexpected ledger outcome {other:?}"),
            },
            Sink::Api { http, addr } => {
                let body = serde_json::to_value(
                    crate::event::EventRequest::from_input(&event).map_err(anyhow::Error::msg)?,
                )?;
                let url = format!("https://{addr}/v1/events");
                let resp = client::post_json(http, &url, &body).await?;
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if !status.is_success() {
                    bail!("{url}: {status}: {text}");
                }
                #[derive(serde::Deserialize)]
                struct Answer {
                    seq: u64,
                    duplicate: bool,
                }
                let v: Answer = serde_json::from_str(&text)
                    .with_context(|| format!("{url}: unexpected answer: {text}"))?;
                Ok(Recorded {
                    seq: v.seq,
                    duplicate: v.duplicate,
                })
            }
        }
    }

    /// What a running gateway's replicated ledger records about `serial` (`None` for a local
    /// ledger, read through [`Sink::index`], or when the ledger knows nothing of it).
    async fn certificate(
        &self,
        serial: &str,
    ) -> anyhow::Result<Option<crate::service::api::certificates::CertificateStatus>> {
        let Sink::Api { http, addr } = self else {
            return Ok(None);
        };
        let url = format!("https://{addr}/v1/certificates/{serial}");
        let resp = http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(
                resp.json()
                    .await
                    .with_context(|| format!("{url}: unexpected answer"))?,
            )),
            s => bail!("{url}: {s}: {}", resp.text().await.unwrap_or_default()),
        }
    }

    /// The ledger's identity events, when this process can read the ledger.
    fn index(&self) -> anyhow::Result<Option<IdentityIndex>> {
        match self {
            Sink::Local(l) => Ok(Some(IdentityIndex::load(l.store())?)),
            Sink::Api { .. } => Ok(None),
        }
    }

    fn describe(&self, r: &Recorded) -> String {
        let at = match self {
            Sink::Local(_) => "the local ledger".to_string(),
            Sink::Api { addr, .. } => format!("the ledger of the gateway at {addr}"),
        };
        if r.duplicate {
            format!("already in {at} as entry {}", r.seq)
        } else {
            format!("recorded in {at} as entry {}", r.seq)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// commands

fn server_spec(id: &str, names: &ServerNames) -> ServerSpec {
    ServerSpec {
        id: id.to_string(),
        dns_names: names.dns.clone(),
        ip_addrs: names.ip.clone(),
    }
}

fn fmt_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Issues this gateway's own certificate into DATA_DIR/pki/gateway.crt/.key and, with `record`,
/// records it (`medledger init` records it itself, in the replicated ledger it creates).
async fn issue_gateway_cert(
    data_dir: &Path,
    ca: &IssuingCa,
    node_id: &str,
    names: &ServerNames,
    days: u32,
    record: bool,
) -> anyhow::Result<certs::Identity> {
    let pki = data_dir.join("pki");
    let (cert, key) = (pki.join("gateway.crt"), pki.join("gateway.key"));
    for p in [&cert, &key] {
        if p.exists() {
            bail!(
                "{} already exists; refusing to overwrite this gateway's certificate",
                p.display()
            );
        }
    }
    let spec = CertSpec::Gateway(server_spec(node_id, names));
    spec.validate()?;
    let sink = if record {
        Some(
            Ctx {
                data_dir: data_dir.to_path_buf(),
                pki_dir: pki.clone(),
                config: None,
            }
            .sink()
            .await,
        )
    } else {
        None
    };
    let issued = ca.issue(&spec, Validity::days(days)?)?;
    issued.write_files(&cert, &key)?;
    println!(
        "issued this gateway's certificate {} (serial {}, valid until {}): {} and {} (private key, mode 0600)",
        certs::profile::common_name(Profile::Gateway, node_id),
        issued.identity.serial,
        fmt_time(issued.identity.not_after),
        cert.display(),
        key.display()
    );
    match sink {
        None => {}
        Some(Ok(sink)) => {
            let r = sink
                .record(revocation::issued_event(&issued.identity, ca))
                .await?;
            println!("certificate-issued {}", sink.describe(&r));
        }
        // e.g. a fresh issuing CA installed on a cluster member: the issuance stays in
        // pki/issued.jsonl and can be recorded through the API later
        Some(Err(e)) => println!("note: the issuance was not recorded in a ledger: {e:#}"),
    }
    Ok(issued.identity)
}

/// The site root CA and this gateway's issuing CA in DATA_DIR/pki, and this gateway's
/// certificate, recorded in DATA_DIR's single-node ledger with `record` (`ca init`) or not
/// (`medledger init` records it in the replicated ledger it creates). Returns the issuing CA
/// and the certificate's identity.
pub(crate) async fn init_site(
    data_dir: &Path,
    site: &str,
    node_id: &str,
    names: &ServerNames,
    days: u32,
    record: bool,
) -> anyhow::Result<(IssuingCa, certs::Identity)> {
    let pki = data_dir.join("pki");
    let ca = certs::init_site_ca(&pki, &CaInit::new(site.to_owned(), node_id.to_owned()))?;
    println!(
        "created the site root CA {} and this gateway's issuing CA {}",
        ca.root_path().display(),
        pki.join(certs::ca::ISSUING_CERT).display()
    );
    println!(
        "root CA fingerprint sha256:{}",
        certs::identity::fingerprint(ca.root_der())
    );
    let identity = issue_gateway_cert(data_dir, &ca, node_id, names, days, record).await?;
    Ok((ca, identity))
}

pub async fn run_ca(cmd: CaCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCmd::Init(a) => {
            let pki = a.data_dir.join("pki");
            if a.issuing_only {
                certs::request_issuing_ca(&pki, &a.node_id)?;
                let csr_path = pki.join(certs::ca::ISSUING_CSR);
                println!(
                    "created this gateway's issuing CA key {} (mode 0600)",
                    pki.join(certs::ca::ISSUING_KEY).display()
                );
                println!("wrote the request {}", csr_path.display());
                // The file names carry the node id, so that requests of several gateways on the
                // root key holder's machine do not overwrite each other.
                let id = &a.node_id;
                println!("next steps:");
                println!(
                    "  1. copy {} to the machine holding the site root key as issuing-{id}.csr and sign it there \
                     (ROOT_DIR: the directory with root.key and root.crt, e.g. the first gateway's /var/lib/medledger/pki):",
                    csr_path.display()
                );
                println!("       medledger ca sign-issuing --root-dir ROOT_DIR --csr issuing-{id}.csr --out issuing-{id}.crt");
                println!(
                    "  2. copy issuing-{id}.crt and ROOT_DIR/root.crt back here into /tmp, then run (as the user that ran this command):"
                );
                let names: String = a
                    .server
                    .dns
                    .iter()
                    .map(|d| format!(" --dns {d}"))
                    .chain(a.server.ip.iter().map(|i| format!(" --ip {i}")))
                    .collect();
                println!(
                    "       medledger ca install-issuing --data-dir {} --cert /tmp/issuing-{id}.crt --root /tmp/root.crt --node-id {id}{names}",
                    a.data_dir.display(),
                );
                return Ok(ExitCode::SUCCESS);
            }
            init_site(&a.data_dir, &a.site, &a.node_id, &a.server, a.days, true).await?;
            println!(
                "the root key {} can now be moved offline; it is needed only to sign other gateways' issuing CAs (`medledger ca sign-issuing`)",
                pki.join(certs::ca::ROOT_KEY).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CaCmd::SignIssuing {
            root_dir,
            csr,
            out,
            days,
        } => {
            let root = certs::RootCa::load(&root_dir)?;
            let text = std::fs::read_to_string(&csr)
                .with_context(|| format!("cannot read {}", csr.display()))?;
            let pem = root
                .sign_issuing_csr(&text, days)
                .with_context(|| format!("{}", csr.display()))?;
            certs::files::atomic_write(&out, pem.as_bytes())?;
            println!(
                "signed the issuing CA request {} for {days} days: {}",
                csr.display(),
                out.display()
            );
            println!(
                "hand {} and {} to the new gateway (`medledger ca install-issuing`)",
                out.display(),
                root_dir.join(certs::ca::ROOT_CERT).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CaCmd::InstallIssuing {
            data_dir,
            cert,
            root,
            node_id,
            server,
        } => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let pki = data_dir.join("pki");
            let cert_pem = read(&cert)?;
            let made_for = issuing_ca_node_id(&cert_pem)
                .with_context(|| format!("{}: not an issuing CA certificate", cert.display()))?;
            let node_id = match node_id {
                Some(given) if given != made_for => bail!(
                    "{} is the issuing CA of node {made_for}, not of --node-id {given}: \
                     install it on gateway {made_for}, or make a request with \
                     `medledger ca init --issuing-only --node-id {given}`",
                    cert.display()
                ),
                _ => made_for,
            };
            let ca = certs::install_issuing_ca(&pki, &cert_pem, &read(&root)?)?;
            println!("installed this gateway's issuing CA in {}", pki.display());
            issue_gateway_cert(&data_dir, &ca, &node_id, &server, 825, true).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn run_cert(cmd: CertCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CertCmd::Issue(a) => issue(a).await,
        CertCmd::Revoke {
            target,
            serial,
            reason,
            subject,
        } => revoke(target, &serial, reason, subject).await,
        CertCmd::Crl { target, out } => {
            let ctx = target.resolve()?;
            let ca = ctx.load_ca()?;
            let sink = ctx.sink().await?;
            let Some(idx) = sink.index()? else {
                // the running gateway keeps its CRL current in pki/crl.pem
                let path = ctx.pki_dir.join(CRL_FILE);
                let pem = std::fs::read(&path).with_context(|| {
                    format!(
                        "cannot read {} (written by the running gateway)",
                        path.display()
                    )
                })?;
                certs::files::atomic_write(&out, &pem)?;
                println!(
                    "copied the running gateway's CRL {} to {}",
                    path.display(),
                    out.display()
                );
                return Ok(ExitCode::SUCCESS);
            };
            let crl = revocation::build_crl(&ca, &idx)?;
            crl.write_pem(&out)?;
            println!(
                "wrote a CRL of {} revoked certificate(s) issued by this gateway to {} (valid {} days)",
                idx.revoked_by(&ca).len(),
                out.display(),
                revocation::CRL_VALIDITY.whole_days()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn issue(a: IssueArgs) -> anyhow::Result<ExitCode> {
    let only = |flag: &str, set: bool, profile: &str| -> anyhow::Result<()> {
        if set {
            bail!("{flag} applies only to --profile {profile}");
        }
        Ok(())
    };
    let spec = match a.profile {
        ProfileArg::Device => {
            only("--role", a.role.is_some(), "staff")?;
            only("--name", a.name.is_some(), "staff")?;
            CertSpec::Device(DeviceSpec {
                id: a.id.clone(),
                modbus_role: a.modbus_role.clone(),
                modbus_server: a.modbus_server,
                dns_names: a.server.dns.clone(),
                ip_addrs: a.server.ip.clone(),
            })
        }
        ProfileArg::Staff => {
            only("--modbus-role", a.modbus_role.is_some(), "device")?;
            only("--modbus-server", a.modbus_server, "device")?;
            let role = a.role.context("--role is required for --profile staff (biomed, supervisor, auditor, insurer, admin)")?;
            let name = a.name.clone().context(
                "--name is required for --profile staff: the person's printed name, which their \
                 signed records show (21 CFR Part 11 §11.50)",
            )?;
            CertSpec::staff(a.id.clone(), name, role)
        }
        ProfileArg::Gateway => {
            only("--role", a.role.is_some(), "staff")?;
            only("--modbus-role", a.modbus_role.is_some(), "device")?;
            CertSpec::Gateway(server_spec(&a.id, &a.server))
        }
    };
    let server_names_ok =
        a.profile == ProfileArg::Gateway || (a.profile == ProfileArg::Device && a.modbus_server);
    if !server_names_ok && (!a.server.dns.is_empty() || !a.server.ip.is_empty()) {
        bail!("--dns and --ip apply only to --profile gateway and to --profile device with --modbus-server");
    }
    // refuse bad input before touching the ledger or the CA
    spec.validate()?;
    let validity = Validity::days(a.days)?;
    let ctx = a.target.resolve()?;
    let ca = ctx.load_ca()?;
    let (cert_path, key_path) = prefix_paths(&a.out);
    let sink = ctx.sink().await?;
    let issued = ca.issue(&spec, validity)?;
    issued.write_files(&cert_path, &key_path)?;
    let id = &issued.identity;
    println!(
        "issued {} certificate for {} (subject {}): serial {}, fingerprint sha256:{}, valid until {}",
        id.profile,
        id.id,
        revocation::subject_of(id),
        id.serial,
        id.fingerprint,
        fmt_time(id.not_after)
    );
    println!(
        "wrote {} (certificate chain) and {} (private key, mode 0600)",
        cert_path.display(),
        key_path.display()
    );
    let r = sink
        .record(revocation::issued_event(id, &ca))
        .await
        .with_context(|| format!("the certificate (serial {}) was issued and written, but its certificate-issued entry was not recorded", id.serial))?;
    println!("certificate-issued {}", sink.describe(&r));
    Ok(ExitCode::SUCCESS)
}

fn prefix_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".crt"), with(".key"))
}

async fn revoke(
    target: Target,
    serial: &str,
    reason: RevocationReason,
    subject: Option<String>,
) -> anyhow::Result<ExitCode> {
    let serial = certs::crl::normalize_serial(serial)?;
    let ctx = target.resolve()?;
    // a gateway without an issuing CA may still revoke (e.g. another gateway's device)
    let ca = ctx.load_ca().ok();
    let sink = ctx.sink().await?;
    let idx = sink.index()?;
    // A running gateway answers for the whole replicated ledger, whichever gateway issued it.
    let remote = sink.certificate(&serial).await?;
    let from_ledger = idx
        .as_ref()
        .and_then(|i| i.issued(&serial))
        .map(|i| i.subject.clone())
        .or_else(|| {
            remote
                .as_ref()
                .and_then(|c| c.issued.as_ref().or(c.revoked.as_ref()))
                .map(|e| e.subject.clone())
        });
    let from_records = match &ca {
        Some(ca) => ca
            .issued_records()?
            .into_iter()
            .find(|r| r.serial == serial)
            .map(|r| certs::profile::subject_label(r.profile, &r.id)),
        None => None,
    };
    let subject = match (from_ledger.or(from_records), subject) {
        (Some(known), Some(given)) if known != given => {
            bail!("serial {serial} belongs to {known}, not {given}")
        }
        (Some(known), _) => known,
        (None, Some(given)) => given,
        (None, None) => bail!(
            "serial {serial} is neither in the ledger nor in this gateway's issued certificates; \
             check the serial, or give --subject (device id, staff:<id>, gateway:<id>) to revoke a certificate of another gateway"
        ),
    };
    if let Some(prev) = idx.as_ref().and_then(|i| i.revocation(&serial)) {
        println!(
            "serial {serial} ({subject}) was already revoked at {} ({}); nothing recorded",
            fmt_time(prev.revoked_at),
            prev.reason
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(prev) = remote.as_ref().and_then(|c| c.revoked.as_ref()) {
        println!(
            "serial {serial} ({subject}) was already revoked at {} ({}); nothing recorded",
            prev.occurred_at.as_deref().unwrap_or("an unknown time"),
            prev.reason.as_deref().unwrap_or("no reason recorded")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let r = sink
        .record(revocation::revoked_event(&serial, &subject, reason))
        .await?;
    println!(
        "revoked certificate {serial} of {subject} ({reason}): certificate-revoked {}",
        sink.describe(&r)
    );
    match (&sink, &ca) {
        (Sink::Local(ledger), Some(ca)) => {
            let idx = IdentityIndex::load(ledger.store())?;
            let crl = revocation::build_crl(ca, &idx)?;
            let path = ctx.pki_dir.join(CRL_FILE);
            crl.write_pem(&path)?;
            println!(
                "rewrote {} ({} revoked)",
                path.display(),
                idx.revoked_by(ca).len()
            );
        }
        (Sink::Api { .. }, _) => {
            println!("the running gateway applies the revocation to its listeners and rewrites its CRL within a second");
        }
        (Sink::Local(_), None) => {}
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_device(cmd: DeviceCmd) -> anyhow::Result<ExitCode> {
    let (data_dir, id, ttl_hours, modbus_role, modbus_server) = match cmd {
        DeviceCmd::Add {
            data_dir,
            id,
            ttl_hours,
            modbus_role,
            modbus_server,
        } => (data_dir, id, ttl_hours, modbus_role, modbus_server),
        DeviceCmd::List(a) => return crate::cli::registry::list(a).await,
        DeviceCmd::Show(a) => return crate::cli::registry::show(a).await,
        DeviceCmd::Register(a) => return crate::cli::registry::register(a).await,
        DeviceCmd::Record(a) => return crate::cli::registry::record(a).await,
    };
    if ttl_hours == 0 || ttl_hours > 720 {
        bail!("--ttl-hours {ttl_hours} is not in 1..=720");
    }
    let pki = data_dir.join("pki");
    if !pki.join(certs::ca::ISSUING_CERT).exists() {
        bail!(
            "no issuing ca in {} (run `medledger ca init` first)",
            pki.display()
        );
    }
    let store = TokenStore::open(pki.join(TOKENS_FILE));
    let spec = DeviceSpec {
        id: id.clone(),
        modbus_role,
        modbus_server,
        dns_names: Vec::new(),
        ip_addrs: Vec::new(),
    };
    let ttl = time::Duration::hours(i64::from(ttl_hours));
    let token = store.create(&spec, ttl)?;
    let expires = time::OffsetDateTime::now_utc() + ttl;
    println!(
        "enrollment token for device {id} (one use, valid until {}):",
        fmt_time(expires)
    );
    println!("{token}");
    println!();
    println!(
        "The device makes a P-256 key and a CSR with subject CN={id}, then posts them over HTTPS"
    );
    println!(
        "(trusting the site root {}) to the gateway's enrollment listener ([api] enroll_listen):",
        pki.join(certs::ca::ROOT_CERT).display()
    );
    println!("  POST https://GATEWAY:PORT/enroll");
    println!("  {{\"device_id\": \"{id}\", \"token\": \"<the token>\", \"csr_pem\": \"-----BEGIN CERTIFICATE REQUEST-----...\"}}");
    println!("The answer is the device's certificate chain (PEM). With openssl and curl:");
    println!("  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout device.key -subj '/CN={id}' -out device.csr");
    println!("  jq -n --arg t TOKEN --rawfile c device.csr '{{device_id: \"{id}\", token: $t, csr_pem: $c}}' \\");
    println!("    | curl --cacert root.crt -H 'content-type: application/json' --data @- https://GATEWAY:PORT/enroll > device.crt");
    Ok(ExitCode::SUCCESS)
}

pub async fn run_mosquitto(a: MosquittoArgs) -> anyhow::Result<ExitCode> {
    let ctx = a.target.resolve()?;
    let ca = ctx.load_ca()?;
    let sink = ctx.sink().await?;
    let crl_pem = match sink.index()? {
        Some(idx) => revocation::build_crl(&ca, &idx)?.pem,
        None => {
            let path = ctx.pki_dir.join(CRL_FILE);
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read {} (written by the running gateway)",
                    path.display()
                )
            })?
        }
    };
    let gateway_ids = if a.gateway_ids.is_empty() {
        let cert = ctx.pki_dir.join("gateway.crt");
        let chain = certs::pem::load_certs(&cert)?;
        let leaf = chain
            .first()
            .with_context(|| format!("{}: no certificate", cert.display()))?;
        let me = certs::parse_identity(leaf).with_context(|| format!("{}", cert.display()))?;
        me.require(&[Profile::Gateway])
            .with_context(|| format!("{}", cert.display()))?;
        vec![me.id]
    } else {
        a.gateway_ids.clone()
    };
    let mut opts = certs::MosquittoOptions::new(a.port, gateway_ids.clone());
    opts.bind_address = a.bind.clone();
    opts.run_as_user = a.run_as_user.clone();
    opts.group = match &a.group {
        Some(g) => Some(g.clone()),
        None if a.run_as_user.is_none()
            && certs::files::group_id(certs::mosquitto::DEBIAN_GROUP)?.is_some() =>
        {
            Some(certs::mosquitto::DEBIAN_GROUP.to_string())
        }
        None => None,
    };
    opts.broker_dns_names = a.server.dns.clone();
    opts.broker_ips = a.server.ip.clone();
    // mosquitto resolves relative paths in its config against its working directory
    let out = std::path::absolute(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let files = certs::write_mosquitto_config(&ca, &out, &opts, &crl_pem)?;
    let broker = certs::pem::load_certs(&files.certfile)?;
    let leaf = broker
        .first()
        .with_context(|| format!("{}: no certificate", files.certfile.display()))?;
    let broker_id = certs::parse_identity(leaf)?;
    println!(
        "wrote {} (listener on port {}, client certificates required, CN as username)",
        files.conf.display(),
        a.port
    );
    println!("wrote {} (only device certificates publish, each only under medledger/devices/<its id escaped for mqtt>/#; gateways {} read medledger/#)", files.acl.display(), gateway_ids.join(", "));
    let key_mode = match &opts.group {
        Some(g) => format!("mode 0640, group {g}"),
        None => "mode 0600".to_string(),
    };
    println!(
        "wrote {}, {} (serial {}), {} ({key_mode}) and {}",
        files.cafile.display(),
        files.certfile.display(),
        broker_id.serial,
        files.keyfile.display(),
        files.crlfile.display()
    );
    let r = sink
        .record(revocation::issued_event(&broker_id, &ca))
        .await?;
    println!("certificate-issued (broker) {}", sink.describe(&r));
    println!("start it with: mosquitto -c {}", files.conf.display());
    println!(
        "or with Debian's mosquitto service: ln -s {} /etc/mosquitto/conf.d/medledger.conf && systemctl restart mosquitto",
        files.conf.display()
    );
    if opts.group.is_none() && opts.run_as_user.is_none() {
        println!("note: no group {} here, so only this account can read {}; started as root, Mosquitto switches to its own user and needs --group or --run-as-user", certs::mosquitto::DEBIAN_GROUP, out.display());
    }
    println!("Mosquitto reads crl.pem only at start: after a revocation, copy the new CRL there and restart it");
    Ok(ExitCode::SUCCESS)
}

/// The node id an issuing CA certificate was made for (its subject CN is
/// `MedLedger issuing CA <node-id>`).
fn issuing_ca_node_id(pem: &str) -> anyhow::Result<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not PEM: {e}"))?;
    let cert = p
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not a certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .context("no subject CN")?;
    cn.strip_prefix("MedLedger issuing CA ")
        .map(str::to_owned)
        .with_context(|| format!("subject CN {cn:?} is not \"MedLedger issuing CA <node-id>\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_keeps_dots_in_the_name() {
        let (c, k) = prefix_paths(Path::new("out/pump.0042"));
        assert_eq!(c, PathBuf::from("out/pump.0042.crt"));
        assert_eq!(k, PathBuf::from("out/pump.0042.key"));
    }

    #[test]
    fn a_cluster_members_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(cluster_member_refusal(dir.path()).is_none());
        std::fs::create_dir(dir.path().join("sled")).expect("mkdir");
        let msg = cluster_member_refusal(dir.path()).expect("refused");
        assert!(
            msg.contains("cluster member") && msg.contains("--config"),
            "{msg}"
        );
    }
}
