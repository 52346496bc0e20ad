//! The one HTTPS client of the CLI: every command that talks to a running gateway (cluster, cert,
//! device) goes through these calls, with this gateway's own certificate.

use std::time::Duration;

use anyhow::bail;
use serde_json::json;

use crate::config::Config;
use crate::service::node::ClusterStatus;

/// The HTTPS client the CLI talks to a running gateway with: the gateway's own certificate and
/// roots, 30 s timeout.
pub fn client(config: &Config) -> anyhow::Result<reqwest::Client> {
    let tls = crate::service::tls::TlsMaterial::load(config)?;
    let cfg = tls.client_config(&crate::service::tls::base_revocation())?;
    crate::service::raft_net::http_client((*cfg).clone(), None, Duration::from_secs(30))
}

/// The address to reach `config`'s own gateway from this machine.
pub fn local_addr(config: &Config) -> String {
    let a = config.advertise();
    match config.api.listen.ip().is_unspecified() {
        true if a == config.api.listen.to_string() => {
            format!("127.0.0.1:{}", config.api.listen.port())
        }
        _ => a,
    }
}

/// How long a cluster command waits for an election to finish (a leader killed, a restarted
/// voter calling a new election) before it gives up and says why.
pub const ELECTION_WAIT: Duration = Duration::from_secs(30);

/// Why one attempt at a call failed, and whether another attempt may succeed.
enum Attempt {
    /// Unreachable, no leader, or a leader that just stepped down: worth another try once an
    /// election has finished.
    Retry(anyhow::Error),
    /// The gateway answered and refused: retrying changes nothing.
    Fail(anyhow::Error),
}

/// POSTs `body` to `path` on `addr` once.
async fn attempt(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, Attempt> {
    let url = format!("https://{addr}{path}");
    let resp = post_json(http, &url, body).await.map_err(Attempt::Retry)?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or(json!({}));
    if status.is_success() {
        return Ok(v);
    }
    let detail = v
        .get("detail")
        .or_else(|| v.get("error"))
        .and_then(|e| e.as_str())
        .unwrap_or("no detail")
        .to_owned();
    let e = anyhow::anyhow!("{url}: {status}: {detail}");
    // 503: no leader yet or the write timed out while electing; 409: Raft refused because this
    // node is no longer the leader or a membership change is still being committed.
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE || status == reqwest::StatusCode::CONFLICT
    {
        Err(Attempt::Retry(e))
    } else {
        Err(Attempt::Fail(e))
    }
}

/// POSTs `body` to `path` on `addr` and returns the JSON answer; an error names the URL, the
/// status and the gateway's explanation.
pub async fn call(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    attempt(http, addr, path, &body).await.map_err(|e| match e {
        Attempt::Retry(e) | Attempt::Fail(e) => e,
    })
}

/// Runs `once` until it succeeds or fails for good; while it fails in a way an election may
/// mend ([`Attempt::Retry`]), tries again every 200 ms until `wait` has passed, then gives up with
/// the last reason.
async fn retrying<F, Fut>(wait: Duration, mut once: F) -> anyhow::Result<serde_json::Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, Attempt>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let why = match once().await {
            Ok(v) => return Ok(v),
            Err(Attempt::Fail(e)) => return Err(e),
            Err(Attempt::Retry(e)) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(give_up(why, wait));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Like [`call`], but while the gateway has no leader (503, 409) or cannot be reached, tries
/// again until `wait` has passed, then gives up with the last reason.
pub async fn call_waiting(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    body: serde_json::Value,
    wait: Duration,
) -> anyhow::Result<serde_json::Value> {
    retrying(wait, || attempt(http, addr, path, &body)).await
}

fn give_up(why: anyhow::Error, wait: Duration) -> anyhow::Error {
    why.context(format!(
        "gave up after {} s: no leader took the request (is the cluster initialised, and are a \
         majority of its voters running and reachable?)",
        wait.as_secs()
    ))
}

/// Why a request to `url` got no answer: a gateway that accepted the connection but did not
/// answer in time is not the same trouble as one nobody listens for.
fn unreachable(url: &str, e: reqwest::Error) -> anyhow::Error {
    if e.is_timeout() && !e.is_connect() {
        anyhow::Error::new(e).context(format!(
            "{url} took the connection but did not answer within the client's timeout (a busy \
             or stalled gateway: see its log)"
        ))
    } else {
        anyhow::Error::new(e).context(format!("cannot reach {url}"))
    }
}

/// POSTs `body` as JSON to `url`; the error names `url` when the gateway cannot be reached.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<reqwest::Response> {
    http.post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| unreachable(url, e))
}

/// Runs a call on the leader, found through `addr` (any member). While an election is under way
/// (no leader known, the leader unreachable or stepping down), asks again until `wait` has
/// passed; then gives up naming the last reason.
pub async fn call_leader(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    body: serde_json::Value,
    wait: Duration,
) -> anyhow::Result<serde_json::Value> {
    let body = &body;
    retrying(wait, || async move {
        let status = fetch_status(http, addr).await.map_err(Attempt::Retry)?;
        match status.leader.and_then(|l| status.nodes.get(&l)) {
            Some(n) => attempt(http, &n.addr, path, body).await,
            None => Err(Attempt::Retry(anyhow::anyhow!(
                "{addr} knows no leader (it is {} in term {})",
                status.state.to_lowercase(),
                status.term
            ))),
        }
    })
    .await
}

/// This gateway's view of the cluster (`GET /cluster/status`).
pub async fn fetch_status(http: &reqwest::Client, addr: &str) -> anyhow::Result<ClusterStatus> {
    let url = format!("https://{addr}/cluster/status");
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| unreachable(&url, e))?;
    if !resp.status().is_success() {
        bail!("{url}: {}", resp.status());
    }
    Ok(resp.json().await?)
}

/// GETs `path` (with its query) from `addr` and returns the JSON answer; an error names the URL,
/// the status and the gateway's explanation.
pub async fn get_json(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("https://{addr}{path}");
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| unreachable(&url, e))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or(json!({}));
    if !status.is_success() {
        let detail = v["detail"].as_str().unwrap_or("no detail");
        bail!("{url}: {status}: {detail}");
    }
    Ok(v)
}
