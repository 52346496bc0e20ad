//! `medledger cluster ...`: membership administration against a running gateway, with this
//! gateway's own certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use crate::cli::client::{
    call, call_leader, call_waiting, client, fetch_status, local_addr, ELECTION_WAIT,
};
use crate::config::Config;

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
        #[command(flatten)]
        wait: Wait,
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
        #[command(flatten)]
        wait: Wait,
    },
    /// Remove a node from the cluster.
    Remove {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        node: u64,
        #[arg(long)]
        via: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Record a signed tree head over everything applied now, replicated to every gateway
    /// (exports are cut at the latest one). Any member may be asked; a follower forwards it.
    Checkpoint {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        via: Option<String>,
        #[command(flatten)]
        wait: Wait,
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

/// How long a command waits for a leader.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Wait {
    /// Seconds to wait for an election to finish (no leader, the leader unreachable) before
    /// giving up.
    #[arg(long = "wait", default_value_t = ELECTION_WAIT.as_secs(), value_name = "SECONDS")]
    secs: u64,
}

impl Wait {
    fn duration(self) -> Duration {
        Duration::from_secs(self.secs)
    }
}

/// Asks the leader (found through `via`, this gateway by default) to change `node`'s membership.
async fn membership(
    c: &Config,
    via: Option<String>,
    path: &str,
    node: u64,
    wait: Wait,
) -> anyhow::Result<()> {
    let via = via.unwrap_or_else(|| local_addr(c));
    call_leader(
        &client(c)?,
        &via,
        path,
        json!({ "node_id": node }),
        wait.duration(),
    )
    .await?;
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
        ClusterCmd::Join { config, via, wait } => {
            let c = load(&config)?;
            call_leader(
                &client(&c)?,
                &via,
                "/cluster/learner",
                json!({ "node_id": c.node.id, "addr": c.advertise() }),
                wait.duration(),
            )
            .await?;
            let (id, config) = (c.node.id, config.display());
            println!("node {id} joined as a learner; it catches up from the leader. Next steps:");
            println!(
                "  1. repeat until node {id}'s lag is 0: medledger cluster status --config {config}"
            );
            println!(
                "  2. make it a voter: medledger cluster promote --config {config} --node {id}"
            );
        }
        ClusterCmd::Promote {
            config,
            node,
            via,
            wait,
        } => {
            membership(&load(&config)?, via, "/cluster/promote", node, wait).await?;
            println!("node {node} is now a voter");
        }
        ClusterCmd::Remove {
            config,
            node,
            via,
            wait,
        } => {
            membership(&load(&config)?, via, "/cluster/remove", node, wait).await?;
            println!("node {node} removed");
        }
        ClusterCmd::Checkpoint { config, via, wait } => {
            let c = load(&config)?;
            let via = via.unwrap_or_else(|| local_addr(&c));
            let v = call_waiting(
                &client(&c)?,
                &via,
                "/cluster/checkpoint",
                json!({}),
                wait.duration(),
            )
            .await?;
            println!("checkpoint at ledger size {}", v["checkpoint_size"]);
        }
        ClusterCmd::Status { config, via, json } => {
            let c = load(&config)?;
            let via = via.unwrap_or_else(|| local_addr(&c));
            let http = client(&c)?;
            let s = fetch_status(&http, &via).await?;
            // A follower knows only its own index: the leader's view fills in the others.
            let leader_view = match s.leader.filter(|l| *l != s.node_id) {
                Some(l) => match s.nodes.get(&l) {
                    Some(n) => fetch_status(&http, &n.addr).await.ok(),
                    None => None,
                },
                None => None,
            };
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
                let table = leader_view.as_ref().map_or(&s.nodes, |l| &l.nodes);
                if let Some(l) = &leader_view {
                    println!("(indexes and lag as leader {} sees them)", l.node_id);
                }
                for (id, n) in table {
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
            if s.leader.is_none() {
                anyhow::bail!(
                    "node {} knows no leader in term {} ({}): not initialised, or no quorum",
                    s.node_id,
                    s.term,
                    s.state.to_lowercase()
                );
            }
        }
    }
    Ok(())
}
