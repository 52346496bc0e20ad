//! The staff web page (`[web] listen`): server-rendered pages (askama templates in
//! `gateway/templates/`) for maintenance staff who sign in with a staff certificate in the
//! browser (asked for optionally in the TLS handshake) or with a staff account ([`accounts`],
//! [`auth`]): the device list, a device's page (state, history with corrections
//! beside their originals, 24 h of telemetry as an SVG chart, open alarms, a form that records
//! and signs an event), and the PM completion report.
//!
//! Nothing comes from the internet: the stylesheet and the one script (`receipt.js`, our own,
//! which checks each entry's receipt in the browser with WebCrypto) are compiled in and served
//! from `/static/`. Every answer carries a Content-Security-Policy that allows scripts, styles
//! and fetches from this origin only (no inline script, no eval). Forms carry a per-session CSRF
//! token; the session cookie is HttpOnly, Secure, SameSite=Strict.
//!
//! Pages read device state only through [`data::source`] (the device registry). Records and
//! signatures go through `service::records`, as on the API: a record signed here carries the
//! same `signature` component as one signed over the API.

pub mod audit;
pub mod auth;
mod chart;
pub mod data;
pub mod pages;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, WebSection};
use crate::service::node::Node;
use crate::service::telemetry::recent::Recent;

/// What every page handler shares.
pub struct Web {
    pub node: Arc<Node>,
    pub auth: auth::Auth,
    /// Recent telemetry, when this gateway ingests telemetry.
    pub recent: Option<Arc<Recent>>,
    /// Serials revoked according to the ledger (kept current by the revocation watcher): a
    /// staff certificate among them does not sign in.
    pub revoked: crate::service::server::RevokedSerials,
}

/// Binds `[web] listen` and serves the pages until `serving` is cancelled.
// The inputs are the gateway's parts the page uses, each owned elsewhere; a struct for them
// would only be built here.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    config: &Config,
    web: &WebSection,
    node: Arc<Node>,
    recent: Option<Arc<Recent>>,
    tls: &crate::service::tls::TlsMaterial,
    revoked: crate::service::server::RevokedSerials,
    tasks: &mut tokio::task::JoinSet<()>,
    serving: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(web.listen)
        .await
        .with_context(|| format!("web.listen {}: cannot bind", web.listen))?;
    let bound = listener.local_addr()?;
    // A client certificate is asked for, optionally: staff sign in with their certificate or
    // with their account's password; the page checks revocation and the profile itself.
    let server = certs::web_server_config(&tls.roots, &tls.gateway).context("web.listen")?;
    // Sign-ins, failures and locks become ledger entries, written by this gateway.
    let author = format!(
        "sha256:{}",
        certs::parse_identity(
            tls.gateway
                .chain
                .first()
                .context("web: no gateway certificate")?
        )
        .context("web: the gateway certificate")?
        .fingerprint
    );
    let (audit_tx, audit_rx) = tokio::sync::mpsc::channel(audit::QUEUE);
    tasks.spawn(audit::run(node.clone(), author, audit_rx, serving.clone()));
    let auth = auth::Auth::new(
        crate::accounts::Accounts::in_data_dir(&config.node.data_dir),
        web,
    )
    .with_audit(audit_tx)
    .with_cluster(node.clone());
    let state = Arc::new(Web {
        node,
        auth,
        recent,
        revoked,
    });
    tracing::info!(listen = %bound, "staff web page listening (HTTPS)");
    tasks.spawn(crate::service::server::serve_tls_no_client_auth(
        listener,
        server,
        pages::router(state),
        config.api.clone(),
        serving,
    ));
    Ok(())
}
