//! Listeners: the mutual-TLS listener that serves the axum router with the peer's verified
//! identity attached to every request, and the plain loopback health listener.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use certs::{Identity, MtlsAcceptor};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The verified identity of the client of a request (a request extension).
#[derive(Clone, Debug)]
pub struct Peer(pub Arc<Identity>);

/// Serials revoked according to the ledger, kept current by the revocation watcher. A
/// connection whose handshake predates a revocation is refused at its next request.
pub type RevokedSerials = Arc<std::sync::RwLock<std::collections::HashSet<String>>>;

async fn refuse_revoked(
    axum::extract::State(revoked): axum::extract::State<RevokedSerials>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(peer) = req.extensions().get::<Peer>() {
        let is_revoked = revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer.0.serial);
        if is_revoked {
            tracing::warn!(profile = %peer.0.profile, id = %peer.0.id, serial = %peer.0.serial, "request on a connection whose certificate was revoked since the handshake; closing it");
            return (
                axum::http::StatusCode::FORBIDDEN,
                [(axum::http::header::CONNECTION, "close")],
                "certificate revoked",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Accepts TLS connections with client certificates and serves `router` on each; at most
/// `max_connections` at once (further clients wait in the kernel's backlog). Once `shutdown` is
/// cancelled, stops accepting and returns when the open connections have finished (at most
/// [`DRAIN_TIMEOUT`]).
pub async fn serve_mtls(
    listener: TcpListener,
    acceptor: MtlsAcceptor,
    router: Router,
    revoked: RevokedSerials,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let router = router.layer(axum::middleware::from_fn_with_state(
        revoked,
        refuse_revoked,
    ));
    let limit = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Refusals are logged by the acceptor with the peer and the reason.
            let Ok((tls, identity)) = acceptor.accept(tcp, addr).await else {
                return;
            };
            let router = router.layer(axum::Extension(Peer(Arc::new(identity))));
            serve_connection(TokioIo::new(tls), router, addr, shutdown).await;
        });
    }
    // Drain: no new connections; every open one finishes its requests in flight (writes are
    // acknowledged or refused, not cut off) and holds its permit until then.
    drop(listener);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, limit.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            open = max_connections - limit.available_permits(),
            "connections still open after the drain timeout"
        );
    }
}

/// How long a stopping gateway lets requests in flight finish. Longer than a write's own
/// deadline (10 s without a leader), shorter than the unit's `TimeoutStopSec=30s` with room
/// for Raft to stop.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

async fn serve_connection<IO>(
    io: TokioIo<IO>,
    router: Router,
    addr: SocketAddr,
    shutdown: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%addr, error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}

/// Serves `router` on a TLS listener whose clients need no certificate (device enrollment with a
/// one-time token).
pub async fn serve_tls_no_client_auth(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let limit = Arc::new(Semaphore::new(256));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::warn!(%addr, error = %e, "enrollment tls handshake failed");
                    return;
                }
                Err(_) => return,
            };
            serve_connection(TokioIo::new(tls), router, addr, shutdown).await;
        });
    }
}
