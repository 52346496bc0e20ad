//! `medledger run`: the gateway service.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use certs::{MtlsAcceptor, Profile, ReloadableServerConfig};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::service::node::Node;
use crate::service::tls::{base_revocation, TlsMaterial};

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let tls = TlsMaterial::load(&config)?;
    let revocation = base_revocation();
    // Two stages of stopping: `serving` ends the listeners (they drain their requests in
    // flight), then `shutdown` ends the node's own tasks (proposer, checkpointer, ...), which
    // the drained requests still needed.
    let serving = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let network = crate::service::raft_net::Network::new(&config, &tls, &revocation)?;
    let node = Node::start(&config, network, shutdown.clone()).await?;
    node.metrics.set_disk(node.disk.clone());
    let server_config = Arc::new(ReloadableServerConfig::new(
        tls.roots.clone(),
        tls.gateway.clone(),
        &revocation,
        vec![],
    )?);
    let acceptor = MtlsAcceptor::new(
        server_config.clone(),
        &[Profile::Gateway, Profile::Staff, Profile::Device],
    );
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("api.listen {}: cannot bind", config.api.listen))?;
    let bound = listener.local_addr()?;
    let mut tasks = tokio::task::JoinSet::new();
    let revoked = crate::service::server::RevokedSerials::default();
    // identity layer: ledger revocations into every listener (watcher), enrollment listener, renewal route
    let identity = crate::service::enroll::start(
        &config,
        &node,
        &tls.gateway,
        server_config.clone(),
        revoked.clone(),
        &mut tasks,
        serving.clone(),
    )
    .await?;
    // telemetry: adapters -> rules -> outbox -> ledger; its staff-view routes join the API
    // Telemetry's tasks end on `shutdown`, after the listeners have drained: they are not
    // waited for with the listeners.
    let mut background = tokio::task::JoinSet::new();
    let mut recent = None;
    let routes = match crate::service::telemetry::start(
        &config,
        node.clone(),
        &tls,
        &mut background,
        shutdown.clone(),
    )
    .await?
    {
        Some(t) => {
            recent = Some(t.recent.clone());
            identity.merge(crate::service::telemetry::routes(t))
        }
        None => identity,
    };
    // The staff web page, on a listener of its own (`[web] listen`).
    if let Some(web) = &config.web {
        crate::service::web::start(
            &config,
            web,
            node.clone(),
            recent,
            &tls,
            revoked.clone(),
            &mut tasks,
            serving.clone(),
        )
        .await?;
    }
    let router = crate::service::api::router(node.clone(), routes);
    tasks.spawn(crate::service::server::serve_mtls(
        listener,
        acceptor,
        router,
        revoked,
        config.api.clone(),
        node.metrics.clone(),
        serving.clone(),
    ));
    let node_for_health = node.clone();
    let _ = node.health.set(crate::service::health::Inputs {
        data_dir: config.node.data_dir.clone(),
        disk_reserve: node.disk.reserve(),
        disk_warn: config.node.warn_free_bytes(),
        crl_path: crate::service::revocation::load_ca(&config.tls.pki_dir)
            .ok()
            .flatten()
            .map(|_| config.tls.pki_dir.join(crate::paths::CRL_FILE)),
        certificates: certificate_expiries(&tls, &node.metrics),
        election_timeout: Duration::from_millis(config.raft.election_timeout_max_ms),
    });
    if let Some(addr) = config.api.health_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("api.health_listen {addr}: cannot bind"))?;
        let sd = serving.clone();
        tracing::info!(listen = %addr, "health and metrics listening (plain HTTP, loopback)");
        tasks.spawn(async move {
            let _ = axum::serve(l, crate::service::health_routes(node_for_health))
                .with_graceful_shutdown(async move { sd.cancelled().await })
                .await;
        });
    }
    tracing::info!(node = config.node.id, listen = %bound, advertise = %config.advertise(), "gateway running");
    eprintln!(
        "medledger gateway node {} listening on https://{bound}",
        config.node.id
    );
    // The ledger is open (Node::start) and every listener is bound.
    crate::service::notify::ready(&node);
    tokio::spawn(crate::service::notify::supervise(
        node.clone(),
        shutdown.clone(),
    ));
    // A storage error stops the Raft core for good (sled keeps a failed write as a global error
    // until the database is reopened): exit non-zero so that systemd restarts the gateway on a
    // reopened store, rather than serve on with a dead core. The disk reserve is there so that
    // a full disk never gets this far.
    let exit = tokio::select! {
        _ = wait_for_signal() => ExitCode::SUCCESS,
        fatal = raft_stopped(&node) => {
            tracing::error!(error = %fatal, "the Raft core stopped; exiting so that the gateway restarts on a reopened store");
            ExitCode::from(70)
        }
    };
    crate::service::notify::stopping("stopping: finishing requests in flight");
    tracing::info!("stopping: no new connections, finishing requests in flight");
    serving.cancel();
    // The listeners return once their connections are done (bounded by DRAIN_TIMEOUT); the
    // extra second covers the tasks that end at once.
    let drain = crate::service::server::DRAIN_TIMEOUT + Duration::from_secs(1);
    if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("listeners did not finish within {drain:?}; stopping anyway");
    }
    crate::service::notify::status("stopping: raft");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while background.join_next().await.is_some() {}
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), node.raft.shutdown()).await;
    tracing::info!("stopped");
    Ok(exit)
}

/// Returns once the Raft core has stopped with a fatal error (storage failed, or a panic in it).
async fn raft_stopped(node: &Node) -> String {
    let mut metrics = node.raft.metrics();
    loop {
        if let Err(e) = &metrics.borrow_and_update().running_state {
            return e.to_string();
        }
        if metrics.changed().await.is_err() {
            return "the Raft core ended".into();
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The certificates the health checks and metrics watch: this gateway's chain (its own
/// certificate and the CAs above it) and every trusted root, by subject.
fn certificate_expiries(
    tls: &TlsMaterial,
    metrics: &crate::service::metrics::Metrics,
) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let certs = tls.gateway.chain.iter().chain(tls.roots.iter());
    for der in certs {
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, c)) => {
                let name = c.subject().to_string();
                let not_after = c.validity().not_after.timestamp();
                metrics.certificate(&name, not_after);
                out.push((name, not_after));
            }
            Err(e) => tracing::warn!(error = %e, "cannot read a certificate's validity"),
        }
    }
    out
}
