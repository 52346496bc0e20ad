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
    let shutdown = CancellationToken::new();
    let network = crate::service::raft_net::Network {
        http: Arc::new(crate::service::raft_net::PeerHttp::new(
            tls.roots.clone(),
            tls.gateway.clone(),
            &revocation,
            config.api.source_address,
            Duration::from_millis(config.raft.rpc_timeout_ms),
        )?),
    };
    let node = Node::start(&config, network, shutdown.clone()).await?;
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
        shutdown.clone(),
    )
    .await?;
    let router = crate::service::api::router(node.clone(), identity);
    tasks.spawn(crate::service::server::serve_mtls(
        listener,
        acceptor,
        router,
        revoked,
        config.api.max_connections,
        shutdown.clone(),
    ));
    if let Some(addr) = config.api.health_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("api.health_listen {addr}: cannot bind"))?;
        let node = node.clone();
        let app = axum::Router::new().route(
            "/healthz",
            axum::routing::get(move || {
                let node = node.clone();
                async move { axum::Json(node.status()) }
            }),
        );
        let sd = shutdown.clone();
        tasks.spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move { sd.cancelled().await })
                .await;
        });
    }
    tracing::info!(node = config.node.id, listen = %bound, advertise = %config.advertise(), "gateway running");
    eprintln!(
        "medledger gateway node {} listening on https://{bound}",
        config.node.id
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    wait_for_signal().await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), node.raft.shutdown()).await;
    while tasks.join_next().await.is_some() {}
    Ok(ExitCode::SUCCESS)
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
