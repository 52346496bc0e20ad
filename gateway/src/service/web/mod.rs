//! The staff web page (`[web] listen`): server-rendered pages (askama templates in
//! `gateway/templates/`) for maintenance staff who sign in with a staff account
//! ([`accounts`], [`auth`]): the device list, a device's page (state, history with corrections
//! beside their originals, 24 h of telemetry as an SVG chart, open alarms, a form that records
//! and signs an event), and the PM completion report.
//!
//! Nothing comes from the internet: the stylesheet and the one script (`receipt.js`, our own,
//! which checks each entry's receipt in the browser with WebCrypto) are compiled in and served
//! from `/static/`. Every answer carries a Content-Security-Policy that allows scripts, styles
//! and fetches from this origin only (no inline script, no eval). Forms carry a per-session CSRF
//! token; the session cookie is HttpOnly, Secure, SameSite=Strict.
//!
//! Pages read device state only through [`data::source`], the one place where the device
//! registry replaces what is read from the ledger today.

pub mod accounts;
pub mod auth;
mod chart;
pub mod data;
mod pages;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, WebSection};
use crate::service::node::Node;
use crate::service::telemetry::recent::Recent;

/// Component names of a signature made on the web page (21 CFR Part 11 §11.50): the signer's
/// printed name, role and the meaning of the signature, in the maintenance class. The records
/// of issue 14 may name them otherwise; these three constants are where to change them.
pub const SIGNER_NAME: &str = "signer_name";
pub const SIGNER_ROLE: &str = "signer_role";
pub const SIGNATURE_MEANING: &str = "signature_meaning";
/// The reason of a correction.
pub const CORRECTION_REASON: &str = "correction_reason";

/// What every page handler shares.
pub struct Web {
    pub node: Arc<Node>,
    pub auth: auth::Auth,
    /// Recent telemetry, when this gateway ingests telemetry.
    pub recent: Option<Arc<Recent>>,
}

/// Binds `[web] listen` and serves the pages until `serving` is cancelled.
pub async fn start(
    config: &Config,
    web: &WebSection,
    node: Arc<Node>,
    recent: Option<Arc<Recent>>,
    tls: &crate::service::tls::TlsMaterial,
    tasks: &mut tokio::task::JoinSet<()>,
    serving: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(web.listen)
        .await
        .with_context(|| format!("web.listen {}: cannot bind", web.listen))?;
    let bound = listener.local_addr()?;
    // The page asks for no client certificate: staff sign in with their account.
    let server = certs::enrollment_server_config(&tls.gateway).context("web.listen")?;
    let state = Arc::new(Web {
        node,
        auth: auth::Auth::new(accounts::Accounts::in_data_dir(&config.node.data_dir), web),
        recent,
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
