//! `medledger run`: the gateway service. [`run`] wires the parts: the Raft [`node`] with its
//! group-commit proposer, the mutual-TLS [`server`] carrying the staff [`api`], Raft RPC
//! ([`raft_net`]) and enrollment ([`enroll`]), and the ledger-driven [`revocation`] watcher.

pub mod api;
pub mod disk;
pub mod enroll;
pub mod health;
pub mod import;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod raft_net;
pub mod records;
pub mod registry;
pub mod revocation;
pub mod run;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod web;

/// Routes of the plain-HTTP loopback health listener (`[api] health_listen`): `/healthz` (200
/// unless a check is critical: not a cluster member, no leader or quorum, disk nearly full, an
/// expired certificate), `/readyz` (200 only when this gateway takes reads and writes now) and
/// `/metrics` (Prometheus text format). The health documents are JSON with every check.
pub fn health_routes(node: std::sync::Arc<node::Node>) -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    /// The report, answered 503 when `fails` says so.
    fn answer(
        node: &node::Node,
        fails: fn(&health::HealthReport) -> bool,
    ) -> (StatusCode, axum::Json<health::HealthReport>) {
        let r = node.health_report();
        let code = if fails(&r) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (code, axum::Json(r))
    }
    let (n1, n2, n3) = (node.clone(), node.clone(), node);
    axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let node = n1.clone();
                async move { answer(&node, |r| r.level() == health::Level::Critical) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let node = n2.clone();
                async move { answer(&node, |r| !r.ready) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let node = n3.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        node.metrics.render(&node.status()),
                    )
                        .into_response()
                }
            }),
        )
}
