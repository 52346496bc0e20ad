//! `medledger device list|show|register|record`: the device registry of a running gateway,
//! through its API (docs/registry.md), with the gateway's own certificate; `record` signs with
//! a staff certificate when given one, so the entry carries the staff member's signature.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::cli::client;
use crate::config::Config;

/// Which gateway to ask.
#[derive(Args, Debug)]
pub struct Gateway {
    /// The gateway's configuration file.
    #[arg(long, default_value = "/etc/medledger/gateway.toml")]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub gateway: Gateway,
    /// Only devices at this location.
    #[arg(long)]
    pub location: Option<String>,
    /// high-risk, life-support or other.
    #[arg(long)]
    pub risk: Option<String>,
    /// in-service, out-of-service, unable-to-locate or decommissioned.
    #[arg(long)]
    pub status: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub gateway: Gateway,
    /// The device id (UDI or asset id).
    pub id: String,
    /// "Now" of what is due, RFC 3339 (default: the current time).
    #[arg(long)]
    pub now: Option<String>,
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub gateway: Gateway,
    /// A JSON file with the device's record (the body of `POST /v1/devices`, docs/registry.md).
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub gateway: Gateway,
    /// The device id (UDI or asset id).
    pub device_id: String,
    /// calibration, preventive-maintenance, repair, inspection, firmware-update...
    #[arg(long)]
    pub kind: String,
    /// The signature's meaning: performed (the default) or corrected (with --corrects and
    /// --reason). Reviews and approvals are records of their own (POST
    /// /v1/entries/{seq}/signatures).
    #[arg(long)]
    pub meaning: Option<String>,
    /// The sequence number of the entry of the same device this record corrects.
    #[arg(long)]
    pub corrects: Option<u64>,
    /// Why the entry is corrected (required with --corrects).
    #[arg(long)]
    pub reason: Option<String>,
    /// When the work was done, RFC 3339 (default: when the ledger records it).
    #[arg(long)]
    pub occurred_at: Option<String>,
    /// A stable id: recording the same id again is a no-op (default: a random one).
    #[arg(long)]
    pub event_id: Option<String>,
    /// A component NAME:CLASS=VALUE (class device, maintenance, patient or financial; VALUE
    /// is JSON, or else text), repeatable: --component result:maintenance=pass.
    #[arg(long = "component", value_name = "NAME:CLASS=VALUE")]
    pub components: Vec<String>,
    /// The staff certificate (PEM) to sign with; without it the gateway's own certificate
    /// records the event, which then carries no staff signature.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The staff certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `NAME:CLASS=VALUE` as an event component.
fn component(spec: &str) -> anyhow::Result<crate::event::ComponentRequest> {
    let bad = || {
        anyhow::anyhow!(
            "--component {spec:?}: expected NAME:CLASS=VALUE, for example result:maintenance=pass"
        )
    };
    let (head, value) = spec.split_once('=').ok_or_else(bad)?;
    let (name, class) = head.split_once(':').ok_or_else(bad)?;
    if name.trim().is_empty() || class.trim().is_empty() {
        return Err(bad());
    }
    let value =
        serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
    Ok(crate::event::ComponentRequest {
        name: name.trim().to_owned(),
        class: class.trim().to_owned(),
        value,
    })
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() {
        q
    } else {
        format!("?{q}")
    }
}

fn connect(g: &Gateway) -> anyhow::Result<(reqwest::Client, String)> {
    let c = Config::load(&g.config)?;
    Ok((client::client(&c)?, client::local_addr(&c)))
}

fn path_segment(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `medledger device list`.
pub async fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let (http, addr) = connect(&a.gateway)?;
    let path = format!(
        "/v1/devices{}",
        query(&[
            ("location", &a.location),
            ("risk", &a.risk),
            ("status", &a.status)
        ])
    );
    let v = client::get_json(&http, &addr, &path).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let devices = v["devices"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<36} {:<16} {:<14} {:<10} {:<18} RISK",
        "DEVICE", "STATUS", "MANUFACTURER", "MODEL", "LOCATION"
    );
    for d in &devices {
        let s = |k: &str| d[k].as_str().unwrap_or("-").to_owned();
        let risk = if d["life_support"] == true {
            "life-support"
        } else if d["high_risk"] == true {
            "high-risk"
        } else {
            "-"
        };
        println!(
            "{:<36} {:<16} {:<14} {:<10} {:<18} {risk}",
            s("device_id"),
            s("status"),
            s("manufacturer"),
            s("model"),
            s("location")
        );
    }
    println!("{} devices", devices.len());
    Ok(ExitCode::SUCCESS)
}

/// `medledger device show ID`: the derived state and what is due, as JSON.
pub async fn show(a: ShowArgs) -> anyhow::Result<ExitCode> {
    let (http, addr) = connect(&a.gateway)?;
    let path = format!(
        "/v1/devices/{}{}",
        path_segment(&a.id),
        query(&[("now", &a.now)])
    );
    let v = client::get_json(&http, &addr, &path).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// `medledger device register FILE`.
pub async fn register(a: RegisterArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let body: crate::service::registry::request::DeviceRecord = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a device record", a.file.display()))?;
    let (http, addr) = connect(&a.gateway)?;
    let v = client::call_waiting(
        &http,
        &addr,
        "/v1/devices",
        serde_json::to_value(&body)?,
        client::ELECTION_WAIT,
    )
    .await?;
    println!("registered at seq {}", v["seq"]);
    Ok(ExitCode::SUCCESS)
}

/// `medledger device record DEVICE --kind K`: one maintenance event through `POST /v1/events`,
/// signed by the staff certificate given (printed name, role, meaning, time).
pub async fn record(a: RecordArgs) -> anyhow::Result<ExitCode> {
    let c = Config::load(&a.gateway.config)?;
    let addr = client::local_addr(&c);
    let http = match (&a.cert, &a.key) {
        (Some(cert), Some(key)) => {
            let tls = crate::service::tls::TlsMaterial::load(&c)?;
            let staff = certs::CertifiedKey::from_files(cert, key)
                .with_context(|| format!("--cert {} / --key {}", cert.display(), key.display()))?;
            let cfg = certs::raft_peer_client_config(
                &tls.roots,
                &staff,
                &crate::service::tls::base_revocation(),
            )?;
            crate::service::raft_net::http_client(
                (*cfg).clone(),
                None,
                std::time::Duration::from_secs(30),
            )?
        }
        _ => {
            eprintln!(
                "no --cert/--key: recorded with the gateway's own certificate, without a staff \
                 signature"
            );
            client::client(&c)?
        }
    };
    let components = a
        .components
        .iter()
        .map(String::as_str)
        .map(component)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = crate::event::EventRequest {
        event_id: a.event_id.clone(),
        kind: a.kind.clone(),
        device_id: a.device_id.clone(),
        occurred_at: a.occurred_at.clone(),
        components,
        corrects: a.corrects,
        corrects_event_id: None,
        meaning: a.meaning.clone(),
        reason: a.reason.clone(),
    };
    // A random id, fixed before the first attempt, so that a retry after an election never
    // records the event twice.
    let mut body = serde_json::to_value(&body)?;
    if a.event_id.is_none() {
        body["event_id"] = format!("cli:{}", hex::encode(rand::random::<[u8; 16]>())).into();
    }
    let v = client::call_waiting(&http, &addr, "/v1/events", body, client::ELECTION_WAIT).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let again = if v["duplicate"] == true {
        " (already recorded: the same event id)"
    } else {
        ""
    };
    println!("recorded at seq {}{again}", v["seq"]);
    match serde_json::from_value::<crate::records::Manifestation>(v["signature"].clone()) {
        Ok(m) => {
            let at = v["recorded_at"].as_str().unwrap_or("-");
            let mut line = format!("signed by {} ({}), {}", m.name, m.role, m.meaning.as_str());
            if let Some(r) = &m.reason {
                line += &format!(" (reason: {r})");
            }
            println!("{line}, {at}");
        }
        Err(_) => println!("no staff signature (recorded by a gateway or device certificate)"),
    }
    if let Ok(readers) =
        serde_json::from_value::<Vec<crate::records::ClassReaders>>(v["readers"].clone())
    {
        print!("{}", crate::records::describe_audience(&readers));
    }
    Ok(ExitCode::SUCCESS)
}
