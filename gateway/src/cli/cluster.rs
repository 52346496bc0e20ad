//! `medledger cluster ...`: membership administration against a running gateway, with this
//! gateway's own certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::service::node::ClusterStatus;

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Make this gateway the first voter of a new cluster (or the given voters, NODE_ID=HOST:PORT).
    Init {
        #[arg(long)]
        config: std::path::PathBuf,
        /// Initial voters; this gateway alone when none are given.
        #[arg(long = "voter")]
        voters: Vec<String>,
    },
    /// Add this gateway to an existing cluster as a learner (a read-only follower).
    Join {
        #[arg(long)]
        config: std::path::PathBuf,
        /// Address (HOST:PORT) of any member of the cluster.
        #[arg(long)]
        via: String,
    },
    /// Make a learner a voter.
    Promote {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        node: u64,
        /// Gateway to ask (default: this one).
        #[arg(long)]
        via: Option<String>,
    },
    /// Remove a node from the cluster.
    Remove {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        node: u64,
        #[arg(long)]
        via: Option<String>,
    },
    /// Leader, term, and every node's last index and lag.
    Status {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        via: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The HTTPS client the CLI talks to a running gateway with: the gateway's own certificate and
/// roots, 30 s timeout.
pub(crate) fn client(config: &Config) -> anyhow::Result<reqwest::Client> {
    let tls = crate::service::run::TlsMaterial::load(config)?;
    let cfg = tls.client_config(&crate::service::run::base_revocation())?;
    crate::service::raft_net::http_client((*cfg).clone(), None, Duration::from_secs(30))
}

/// The address to reach `config`'s own gateway from this machine.
pub(crate) fn local_addr(config: &Config) -> String {
    let a = config.advertise();
    match config.api.listen.ip().is_unspecified() {
        true if a == config.api.listen.to_string() => {
            format!("127.0.0.1:{}", config.api.listen.port())
        }
        _ => a,
    }
}

async fn call(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("https://{addr}{path}");
    let resp = post_json(http, &url, &body).await?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or(json!({}));
    if !status.is_success() {
        bail!(
            "{url}: {status}: {}",
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("no detail")
        );
    }
    Ok(v)
}

/// POSTs `body` as JSON to `url`; the error names `url` when the gateway cannot be reached.
pub(crate) async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<reqwest::Response> {
    http.post(url)
        .json(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))
}

/// Asks the leader (found through `addr`) to run a membership call, following one redirect.
async fn call_leader(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let status = fetch_status(http, addr).await?;
    let leader_addr = match status.leader.and_then(|l| status.nodes.get(&l)) {
        Some(n) => n.addr.clone(),
        None => bail!("{addr} knows no leader (is the cluster initialised and a quorum up?)"),
    };
    call(http, &leader_addr, path, body).await
}

pub async fn fetch_status(http: &reqwest::Client, addr: &str) -> anyhow::Result<ClusterStatus> {
    let url = format!("https://{addr}/cluster/status");
    let resp = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !resp.status().is_success() {
        bail!("{url}: {}", resp.status());
    }
    Ok(resp.json().await?)
}

/// Asks the leader (found through `via`, this gateway by default) to change `node`'s membership.
async fn membership(c: &Config, via: Option<String>, path: &str, node: u64) -> anyhow::Result<()> {
    let via = via.unwrap_or_else(|| local_addr(c));
    call_leader(&client(c)?, &via, path, json!({ "node_id": node })).await?;
    Ok(())
}

pub async fn run(cmd: ClusterCmd) -> anyhow::Result<()> {
    let load = |p: &std::path::Path| Config::load(p).map_err(anyhow::Error::from);
    match cmd {
        ClusterCmd::Init { config, voters } => {
            let c = load(&config)?;
            let mut nodes = BTreeMap::new();
            for v in voters {
                let (id, addr) = v
                    .split_once('=')
                    .with_context(|| format!("--voter {v:?}: expected NODE_ID=HOST:PORT"))?;
                let id: u64 = id
                    .parse()
                    .with_context(|| format!("--voter {v:?}: node id is not a number"))?;
                nodes.insert(id, addr.to_owned());
            }
            let v = call(
                &client(&c)?,
                &local_addr(&c),
                "/cluster/init",
                json!({ "nodes": nodes }),
            )
            .await?;
            println!("cluster initialised with voters {}", v["initialized"]);
        }
        ClusterCmd::Join { config, via } => {
            let c = load(&config)?;
            call_leader(
                &client(&c)?,
                &via,
                "/cluster/learner",
                json!({ "node_id": c.node.id, "addr": c.advertise() }),
            )
            .await?;
            println!("node {} joined as a learner; it catches up from the leader (promote it with `medledger cluster promote --node {}`)", c.node.id, c.node.id);
        }
        ClusterCmd::Promote { config, node, via } => {
            membership(&load(&config)?, via, "/cluster/promote", node).await?;
            println!("node {node} is now a voter");
        }
        ClusterCmd::Remove { config, node, via } => {
            membership(&load(&config)?, via, "/cluster/remove", node).await?;
            println!("node {node} removed");
        }
        ClusterCmd::Status { config, via, json } => {
            let c = load(&config)?;
            let via = via.unwrap_or_else(|| local_addr(&c));
            let s = fetch_status(&client(&c)?, &via).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "node {} ({}), leader {}, term {}, ledger size {}",
                    s.node_id,
                    s.state,
                    s.leader.map_or("none".into(), |l| l.to_string()),
                    s.term,
                    s.ledger_size
                );
                println!(
                    "{:>6}  {:<8} {:<24} {:>12} {:>8}",
                    "node", "role", "address", "last index", "lag"
                );
                for (id, n) in &s.nodes {
                    println!(
                        "{:>6}  {:<8} {:<24} {:>12} {:>8}",
                        id,
                        if n.voter { "voter" } else { "learner" },
                        n.addr,
                        n.matched_index.map_or("-".into(), |i| i.to_string()),
                        n.lag.map_or("-".into(), |l| l.to_string())
                    );
                }
            }
        }
    }
    Ok(())
}
