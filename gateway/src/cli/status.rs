//! `medledger status`: one screen saying whether this gateway is healthy and why not, with an
//! exit code monitoring can use (0 ok, 1 degraded, 2 failing, 3 unknown: the gateway did not
//! answer), as Nagios-style checks expect.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::client::{client, local_addr};
use crate::config::Config;
use crate::service::health::{HealthReport, Level};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The gateway's configuration file.
    #[arg(long, default_value = "/etc/medledger/gateway.toml")]
    config: PathBuf,
    /// Gateway to ask (HOST:PORT; default: this one).
    #[arg(long)]
    via: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let c = Config::load(&a.config)?;
    let via = a.via.unwrap_or_else(|| local_addr(&c));
    let url = format!("https://{via}/cluster/health");
    let answer = async {
        let r = client(&c)?.get(&url).send().await?;
        let status = r.status();
        if !status.is_success() {
            anyhow::bail!("{url}: {status}: {}", r.text().await.unwrap_or_default());
        }
        Ok::<HealthReport, anyhow::Error>(r.json().await?)
    }
    .await;
    let report = match answer {
        Ok(r) => r,
        Err(e) => {
            println!(
                "UNKNOWN: gateway {} at {via} did not answer: {e:#}",
                c.node.id
            );
            return Ok(ExitCode::from(3));
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "gateway {}: {}{}",
            report.node_id,
            report.status.to_uppercase(),
            if report.ready {
                ""
            } else {
                " (not ready for reads and writes)"
            }
        );
        for ch in &report.checks {
            let mark = match ch.level {
                Level::Ok => "ok  ",
                Level::Warning => "WARN",
                Level::Critical => "CRIT",
            };
            println!("  {mark} {:<12} {}", ch.name, ch.detail);
        }
    }
    Ok(ExitCode::from(match report.level() {
        Level::Ok => 0,
        Level::Warning => 1,
        Level::Critical => 2,
    }))
}
