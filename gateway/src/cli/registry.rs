//! `medledger device list|show|register`: the device registry of a running gateway, through its
//! API (docs/registry.md), with the gateway's own certificate.

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
