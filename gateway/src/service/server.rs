//! Listeners: the mutual-TLS listener that serves the axum router with the peer's verified
//! identity attached to every request, and the enrollment listener; both within the connection
//! limits and timeouts of [`crate::service::limits`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use certs::{Identity, MtlsAcceptor};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;
use crate::service::limits::{
    refusal_response, request_deadlines, Activity, Conn, ConnLimits, Deadlines, Expiry, Refusal,
    Timeouts, Tracked, WarnLimiter,
};

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

/// Accepts TLS connections with client certificates and serves `router` on each, within the
/// limits and timeouts of `api` (see [`crate::service::limits`]): handshakes limited per source
/// address, connections per identity, peer gateways in a pool of their own. Once `shutdown` is
/// cancelled, stops accepting and returns when the open connections have finished (at most
/// [`DRAIN_TIMEOUT`]).
pub async fn serve_mtls(
    listener: TcpListener,
    acceptor: MtlsAcceptor,
    router: Router,
    revoked: RevokedSerials,
    api: ApiConfig,
    metrics: Arc<crate::service::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    let timeouts = Timeouts::from_config(&api);
    let limits = Arc::new(ConnLimits::new(&api));
    let warn = Arc::new(WarnLimiter::new(WARN_WINDOW, WARN_BURST));
    let acceptor = acceptor.with_handshake_timeout(timeouts.handshake);
    let router = router
        .layer(axum::middleware::from_fn_with_state(
            revoked,
            refuse_revoked,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Deadlines {
                timeouts,
                warn: warn.clone(),
            },
            request_deadlines,
        ));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let Some((tcp, addr)) = accept(&listener, &warn, &shutdown).await else {
            break;
        };
        let handshake = match limits.handshake(addr.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                // Closed before any TLS: a client without a finished handshake gets no answer.
                refused(&warn, &addr.ip().to_string(), addr, &refusal);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        let warn = warn.clone();
        connections.spawn(async move {
            let (mut tls, identity) = match acceptor.try_accept(tcp, addr).await {
                Ok(x) => x,
                Err(e) => {
                    let reason = match e {
                        certs::Error::PeerRefused { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    metrics.tls_refused(&reason);
                    if let Some(left_out) = warn.allow(&addr.ip().to_string(), "handshake") {
                        tracing::warn!(peer = %addr, %reason, left_out, "tls client refused");
                    }
                    return;
                }
            };
            drop(handshake);
            let who: Arc<str> = format!("{}:{}", identity.profile, identity.id).into();
            let _slot = match limits.connection(&identity) {
                Ok(slot) => slot,
                Err(refusal) => {
                    refused(&warn, &who, addr, &refusal);
                    // Tell an HTTP/1.1 client why; a client that does not read gets closed all
                    // the same after a second.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        tls.write_all(&refusal_response(&refusal)).await?;
                        tls.shutdown().await
                    })
                    .await;
                    return;
                }
            };
            let activity = Activity::new();
            let conn = Conn {
                activity: activity.clone(),
                who,
                peer: addr,
            };
            let router = router
                .layer(axum::Extension(Peer(Arc::new(identity))))
                .layer(axum::Extension(conn.clone()));
            serve_connection(
                Tracked::new(tls, activity),
                router,
                addr,
                conn,
                timeouts,
                &warn,
                shutdown,
            )
            .await;
        });
    }
    // Drain: no new connections; every open one finishes its requests in flight (writes are
    // acknowledged or refused, not cut off).
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the drain timeout"
        );
    }
}

/// How long a stopping gateway lets requests in flight finish. Longer than a write's own
/// deadline (10 s without a leader), shorter than the unit's `TimeoutStopSec=30s` with room
/// for Raft to stop.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// How often and how many warnings about one source or identity are logged.
const WARN_WINDOW: Duration = Duration::from_secs(10);
const WARN_BURST: u32 = 20;

/// The next connection, or `None` at shutdown.
async fn accept(
    listener: &TcpListener,
    warn: &WarnLimiter,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    if let Some(left_out) = warn.allow("listener", "accept") {
                        tracing::warn!(error = %e, left_out, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Logs a connection closed over a limit, rate-limited per `key`.
fn refused(warn: &WarnLimiter, key: &str, addr: SocketAddr, refusal: &Refusal) {
    if let Some(left_out) = warn.allow(key, "limit") {
        tracing::warn!(peer = %addr, client = %key, reason = %refusal, left_out, "connection refused over a limit");
    }
}

/// Serves one connection until it ends, `shutdown` (graceful, at most [`DRAIN_TIMEOUT`]) or a timeout of
/// [`Activity::deadline`] closes it.
async fn serve_connection<IO>(
    io: Tracked<IO>,
    router: Router,
    addr: SocketAddr,
    conn: Conn,
    timeouts: Timeouts,
    warn: &WarnLimiter,
    shutdown: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = Builder::new(TokioExecutor::new());
    let served = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(served);
    loop {
        let due = conn.activity.deadline(&timeouts);
        let expiry = async {
            match due {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%addr, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled() => {
                served.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, served).await;
                return;
            }
            _ = conn.activity.changed() => {}
            _ = expiry => {
                // The state may have changed since `due` was read: ask again.
                let Some((at, why)) = conn.activity.deadline(&timeouts) else { continue };
                if at > tokio::time::Instant::now() {
                    continue;
                }
                // Dropping the connection closes it: nothing is in progress on it.
                match why {
                    Expiry::Head => {
                        if let Some(left_out) = warn.allow(&conn.who, "head") {
                            tracing::warn!(peer = %addr, client = %conn.who, limit_ms = timeouts.header.as_millis() as u64, left_out, "request head not received in time (api.header_read_timeout_ms); closing the connection");
                        }
                    }
                    Expiry::Idle => {
                        tracing::debug!(peer = %addr, client = %conn.who, "idle connection closed (api.idle_timeout_ms)");
                    }
                }
                return;
            }
        }
    }
}

/// Serves `router` on a TLS listener whose clients need no certificate (device enrollment with a
/// one-time token). Clients have no identity here, so each connection holds its source
/// address's share (`api.max_handshakes_per_ip`) of at most 256 for its whole life; the
/// timeouts are those of the mutual-TLS listener.
pub async fn serve_tls_no_client_auth(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    api: ApiConfig,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let timeouts = Timeouts::from_config(&api);
    let limits = ConnLimits::enrollment(256, api.max_handshakes_per_ip);
    let warn = Arc::new(WarnLimiter::new(WARN_WINDOW, WARN_BURST));
    let router = router.layer(axum::middleware::from_fn_with_state(
        Deadlines {
            timeouts,
            warn: warn.clone(),
        },
        request_deadlines,
    ));
    loop {
        let Some((tcp, addr)) = accept(&listener, &warn, &shutdown).await else {
            return;
        };
        let who: Arc<str> = addr.ip().to_string().into();
        let slot = match limits.handshake(addr.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                refused(&warn, &who, addr, &refusal);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        let warn = warn.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(timeouts.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    if let Some(left_out) = warn.allow(&who, "handshake") {
                        tracing::warn!(peer = %addr, error = %e, left_out, "enrollment tls handshake failed");
                    }
                    return;
                }
                Err(_) => {
                    if let Some(left_out) = warn.allow(&who, "handshake") {
                        tracing::warn!(peer = %addr, left_out, "enrollment tls handshake timed out (api.handshake_timeout_ms)");
                    }
                    return;
                }
            };
            let activity = Activity::new();
            let conn = Conn {
                activity: activity.clone(),
                who,
                peer: addr,
            };
            let mut router = router.layer(axum::Extension(conn.clone()));
            // A client certificate, where the config asks for one optionally (the web page's
            // listener) and the client presented one: rustls verified its chain and key; what
            // it names is the handler's to judge (revocation, profile).
            let presented = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            if let Some(der) = presented {
                match certs::parse_identity(der) {
                    Ok(identity) => {
                        router = router.layer(axum::Extension(Peer(Arc::new(identity))));
                    }
                    Err(e) => {
                        if let Some(left_out) = warn.allow(&conn.who, "handshake") {
                            tracing::warn!(peer = %addr, error = %e, left_out, "client certificate names no identity; serving the connection as anonymous");
                        }
                    }
                }
            }
            serve_connection(
                Tracked::new(tls, activity),
                router,
                addr,
                conn,
                timeouts,
                &warn,
                shutdown,
            )
            .await;
        });
    }
}
