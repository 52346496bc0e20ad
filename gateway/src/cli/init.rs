//! `medledger init`: a new site from the installed configuration, in one command: the site root
//! CA and this gateway's issuing CA, this gateway's certificate (with the name or address of
//! `[api] advertise`), and the replicated ledger initialised as a cluster of this one gateway,
//! its node key registered. It refuses a data directory that already holds a site.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use openraft::BasicNode;
use tokio_util::sync::CancellationToken;

use crate::cli::pki::ServerNames;
use crate::config::Config;

/// The configuration the package installs and its unit runs.
const DEFAULT_CONFIG: &str = "/etc/medledger/gateway.toml";

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The gateway's configuration file ([node] id and data_dir, [api] advertise, [tls]).
    #[arg(long, default_value = "/etc/medledger/gateway.toml")]
    pub config: PathBuf,
    /// Name of the site, written into the root CA's subject.
    #[arg(long)]
    pub site: String,
    /// Validity of this gateway's own certificate in days.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
    /// Names for this gateway's certificate besides the host of [api] advertise (localhost,
    /// 127.0.0.1 and ::1 are always included).
    #[command(flatten)]
    pub server: ServerNames,
}

/// What already makes `dir` a site: the first of these that exists.
fn existing_site(config: &Config) -> Option<PathBuf> {
    let d = &config.node.data_dir;
    [
        d.join("sled"),
        d.join("ledger"),
        config.tls.ca_file.clone(),
        config.tls.cert_file.clone(),
        config.tls.key_file.clone(),
        config.tls.pki_dir.join(certs::ca::ISSUING_KEY),
    ]
    .into_iter()
    .find(|p| p.exists())
}

pub async fn run(a: InitArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(64));
        }
    };
    let data_dir = config.node.data_dir.clone();
    let pki = data_dir.join("pki");
    // `ca init` writes the [tls] default paths; a config pointing elsewhere would start with
    // files init never wrote.
    for (field, path, want) in [
        (
            "tls.ca_file",
            &config.tls.ca_file,
            pki.join(certs::ca::ROOT_CERT),
        ),
        (
            "tls.cert_file",
            &config.tls.cert_file,
            pki.join("gateway.crt"),
        ),
        (
            "tls.key_file",
            &config.tls.key_file,
            pki.join("gateway.key"),
        ),
        ("tls.pki_dir", &config.tls.pki_dir, pki.clone()),
    ] {
        if *path != want {
            eprintln!(
                "error: config file {}: {field} is {}; `medledger init` writes {} (the default): \
                 remove the setting, or make the site with `medledger ca init`",
                a.config.display(),
                path.display(),
                want.display()
            );
            return Ok(ExitCode::from(64));
        }
    }
    if let Some(found) = existing_site(&config) {
        eprintln!(
            "error: {} already holds a site ({} exists); refusing to overwrite it. A gateway's \
             ledger and keys are never re-created in place: to start this gateway afresh, stop it, \
             move {} away and run `medledger init` again (a new node id if it was ever a member \
             of a cluster); to add it to an existing site, see docs/operations.md \"More gateways\"",
            data_dir.display(),
            found.display(),
            data_dir.display()
        );
        return Ok(ExitCode::from(73));
    }
    let advertise = config.advertise();
    let mut names = a.server.clone();
    // The certificate must carry the host peers and the CLI dial.
    if let Some((host, _)) = advertise.rsplit_once(':') {
        let host = host.trim_matches(['[', ']']);
        match host.parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => {
                if !names.ip.contains(&ip) {
                    names.ip.push(ip);
                }
            }
            Ok(_) => bail!(
                "config file {}: api.advertise is unset and api.listen is {}: set [api] \
                 advertise to the name or address peers reach this gateway at",
                a.config.display(),
                config.api.listen
            ),
            Err(_) => {
                if !names.dns.iter().any(|d| d == host) {
                    names.dns.push(host.to_owned());
                }
            }
        }
    }
    let node_id = config.node.id.to_string();
    let (ca, identity) =
        crate::cli::pki::init_site(&data_dir, &a.site, &node_id, &names, a.days, false).await?;
    let members = init_cluster(&config, &ca, &identity)
        .await
        .with_context(|| {
            format!(
                "the CA and certificates are in {}, but the ledger could not be initialised",
                pki.display()
            )
        })?;
    let owner = give_to_owner(&data_dir)?;
    println!(
        "initialised the ledger of {}: a cluster of this gateway, node {} at {advertise} (voter); \
         {members} ledger entries (this gateway's public key and certificate)",
        data_dir.display(),
        config.node.id
    );
    println!("next steps:");
    let config_path = a.config.display();
    let mut step = 0;
    let mut next = |text: String| {
        step += 1;
        println!("  {step}. {text}");
    };
    if let Some(user) = owner {
        next(format!(
            "(done) the files were given to {user}, the owner of {}",
            data_dir.display()
        ));
    }
    // The unit runs `medledger run --config /etc/medledger/gateway.toml`: systemctl only for
    // that file.
    if a.config == Path::new(DEFAULT_CONFIG) {
        next("start the gateway: systemctl start medledger-gateway".into());
    } else {
        next(format!(
            "start the gateway: medledger run --config {config_path}"
        ));
    }
    next(format!(
        "check it: medledger status --config {config_path}   (OK once it leads its cluster)"
    ));
    next(format!(
        "issue staff certificates: medledger cert issue --config {config_path} --profile staff --id ID --name \"NAME\" --role biomed --out ID"
    ));
    next(format!(
        "move the site root key {} offline; it is needed only to sign other gateways' issuing CAs (docs/operations.md \"More gateways\")",
        pki.join(certs::ca::ROOT_KEY).display()
    ));
    Ok(ExitCode::SUCCESS)
}

/// Opens the node's storage, initialises Raft with this node as the only voter, waits until it
/// leads and its node key is in the ledger, records the issuance of its certificate, and stops.
/// Returns the ledger's size.
async fn init_cluster(
    config: &Config,
    ca: &certs::IssuingCa,
    identity: &certs::Identity,
) -> anyhow::Result<u64> {
    let tls = crate::service::tls::TlsMaterial::load(config)?;
    let network = crate::service::raft_net::Network::new(
        config,
        &tls,
        &crate::service::tls::base_revocation(),
    )?;
    let shutdown = CancellationToken::new();
    let node = crate::service::node::Node::start(config, network, shutdown.clone()).await?;
    let members = [(
        config.node.id,
        BasicNode {
            addr: config.advertise(),
        },
    )]
    .into_iter()
    .collect::<std::collections::BTreeMap<_, _>>();
    let result = async {
        node.raft
            .initialize(members)
            .await
            .context("initialising the cluster")?;
        let public_key = node.key.verifying_key().to_bytes();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let registered = node
                .store
                .node_keys()
                .ok()
                .is_some_and(|k| k.iter().any(|(id, pk)| *id == node.id && pk == &public_key));
            if registered {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("this gateway's node key was not registered in the ledger within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Authored by this gateway's certificate, as the running gateway records enrollments.
        let cmd = node.prepare(
            crate::service::revocation::issued_event(identity, ca),
            &format!("sha256:{}", identity.fingerprint),
            ledger_node::ledger::now_ms(),
        )?;
        match node.submit(ledger_node::Command::Append(cmd)).await? {
            ledger_node::ApplyOutcome::Appended { .. }
            | ledger_node::ApplyOutcome::Duplicate { .. } => {}
            other => bail!("recording this gateway's certificate: {other:?}"),
        }
        Ok(node.store.size())
    }
    .await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), node.raft.shutdown()).await;
    result
}

/// When run as root on a data directory owned by another user (the package's `medledger`),
/// gives that user everything under it, so that the gateway can read what was written. Returns
/// the user's id when it did.
fn give_to_owner(dir: &Path) -> anyhow::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if meta.uid() == me {
        return Ok(None);
    }
    fn walk(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
        if std::fs::symlink_metadata(p)?.is_dir() {
            for e in std::fs::read_dir(p)? {
                walk(&e?.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    walk(dir, meta.uid(), meta.gid())
        .with_context(|| format!("giving {} to uid {}", dir.display(), meta.uid()))?;
    Ok(Some(format!("uid {}", meta.uid())))
}
