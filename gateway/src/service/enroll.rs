//! Device enrollment and renewal over HTTPS, and the start-up of the identity layer inside
//! `medledger run`.
//!
//! - `POST /enroll` on `[api] enroll_listen`: a TLS listener WITHOUT client certificates (the
//!   device has none yet), authenticated only by the one-time token from `medledger device add`.
//!   Body `{"device_id", "token", "csr_pem"}`; answer: the certificate chain (PEM).
//! - `POST /v1/renew` on the mutual-TLS listener: a device authenticated by its current,
//!   unrevoked certificate posts `{"csr_pem", "revoke_previous"?}` and gets a new chain for the
//!   same id (and Modbus role).
//!
//! Every certificate issued here is recorded as a `certificate-issued` ledger entry through the
//! node (replicated like any event). Nothing here serves staff or Raft routes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use certs::{
    CertifiedKey, IssuedCert, IssuingCa, ReloadableServerConfig, RevocationReason, TokenStore,
    Validity,
};
use ledger_node::entry::EventInput;
use ledger_node::{ApplyOutcome, Command};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::service::api::extract::JsonBody;
use crate::service::api::{guarded, ApiError, Need};
use crate::service::node::Node;
use crate::service::server::Peer;

/// Validity of device certificates issued by enrollment and renewal.
pub const DEVICE_CERT_DAYS: u32 = 365;
/// Largest request body: a CSR is about 500 bytes.
const MAX_BODY: usize = 64 * 1024;
/// How long to keep trying to record an issuance that could not be written at once.
const RECORD_RETRY_FOR: Duration = Duration::from_secs(600);

/// Shared state of the enrollment and renewal routes.
#[derive(Clone)]
pub struct EnrollState {
    node: Arc<Node>,
    ca: Arc<IssuingCa>,
    tokens: TokenStore,
    /// `sha256:<fingerprint>` of this gateway's certificate: the author of entries it records on
    /// a device's behalf during token enrollment.
    gateway_author: String,
    /// This gateway's CRL (PEM), kept current by the revocation watcher.
    crl_path: std::path::PathBuf,
    shutdown: CancellationToken,
}

impl EnrollState {
    /// State for `node`, issuing with `ca`, tokens in `ca`'s directory.
    pub fn new(
        node: Arc<Node>,
        ca: Arc<IssuingCa>,
        gateway: &CertifiedKey,
        crl_path: std::path::PathBuf,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let leaf = gateway
            .chain
            .first()
            .context("the gateway certificate chain is empty")?;
        let me = certs::parse_identity(leaf).context("tls.cert_file")?;
        Ok(Self {
            tokens: TokenStore::open(ca.dir().join(crate::paths::TOKENS_FILE)),
            node,
            ca,
            gateway_author: format!("sha256:{}", me.fingerprint),
            crl_path,
            shutdown,
        })
    }
}

fn certs_error(e: certs::Error) -> ApiError {
    use certs::Error as E;
    let status = match &e {
        E::TokenUnknown
        | E::TokenUsed { .. }
        | E::TokenExpired { .. }
        | E::TokenDeviceMismatch { .. } => StatusCode::FORBIDDEN,
        E::WrongProfile { .. } => StatusCode::FORBIDDEN,
        E::CsrRefused { .. } | E::InvalidId { .. } | E::InvalidInput { .. } => {
            StatusCode::BAD_REQUEST
        }
        E::StoreLocked { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "issuing a certificate failed");
    }
    ApiError::new(status, e.to_string())
}

fn pem_response(issued: &IssuedCert) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        issued.chain_pem.clone(),
    )
        .into_response()
}

/// `GET /crl.pem`: this gateway's current CRL, for brokers and devices that check revocation
/// themselves. A CRL is signed and public, so it is served to anyone who can connect.
#[utoipa::path(get, path = "/crl.pem", tag = "identity",
    responses((status = 200, description = "This gateway's CRL (PEM)", body = String, content_type = "application/x-pem-file"),
              (status = 503, description = "No CRL written yet", body = crate::service::api::Problem, content_type = "application/problem+json")))]
async fn crl(State(state): State<EnrollState>) -> Result<Response, ApiError> {
    let pem = tokio::fs::read(&state.crl_path).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no CRL at {}: {e}", state.crl_path.display()),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

/// Routes of the enrollment listener (no client certificates): `POST /enroll`, `GET /crl.pem`.
pub fn enroll_routes(state: EnrollState) -> Router {
    Router::new()
        .route("/enroll", post(enroll))
        .route("/crl.pem", get(crl))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(crate::service::api::uniform))
        .with_state(state)
}

/// Routes to merge into the mutual-TLS router (they read the [`Peer`] extension):
/// `POST /v1/renew`, `GET /crl.pem`.
pub fn renew_routes<S>(state: EnrollState) -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(guarded(Need::Device, MAX_BODY, routes!(renew)))
        .routes(guarded(Need::Anyone, MAX_BODY, routes!(crl)))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    device_id: String,
    token: String,
    csr_pem: String,
}

async fn enroll(
    State(s): State<EnrollState>,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> Result<Response, ApiError> {
    let validity = Validity::days(DEVICE_CERT_DAYS.min(days_left(&s.ca))).map_err(certs_error)?;
    let (ca, tokens) = (s.ca.clone(), s.tokens.clone());
    // the token store waits on a lock file: keep it off the async workers
    let issued = tokio::task::spawn_blocking(move || {
        certs::sign_csr(
            &ca,
            &tokens,
            &req.csr_pem,
            &req.token,
            &req.device_id,
            validity,
        )
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        tracing::warn!(error = %e, "enrollment refused");
        certs_error(e)
    })?;
    tracing::info!(device_id = %issued.identity.id, serial = %issued.identity.serial, "device enrolled");
    record(
        &s,
        crate::service::revocation::issued_event(&issued.identity, &s.ca),
        s.gateway_author.clone(),
    )
    .await;
    Ok(pem_response(&issued))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    csr_pem: String,
    /// Also revoke the certificate used for this request (reason `superseded`).
    #[serde(default)]
    revoke_previous: bool,
}

/// A device renews its certificate with its current, unrevoked one: posts a CSR for the same
/// id and gets a new chain (PEM).
#[utoipa::path(post, path = "/v1/renew", tag = "identity",
    request_body(content = RenewRequest, content_type = "application/json"),
    responses((status = 200, description = "The new certificate chain (PEM)", body = String, content_type = "application/pem-certificate-chain"),
              (status = 400, description = "Bad CSR", body = crate::service::api::Problem, content_type = "application/problem+json"),
              (status = 403, description = "Not a device", body = crate::service::api::Problem, content_type = "application/problem+json")))]
async fn renew(
    State(s): State<EnrollState>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<RenewRequest>,
) -> Result<Response, ApiError> {
    // Only devices reach this route (`Need::Device`, checked before the body is read).
    let current = peer.0.clone();
    let validity = Validity::days(DEVICE_CERT_DAYS.min(days_left(&s.ca))).map_err(certs_error)?;
    let ca = s.ca.clone();
    let who = current.clone();
    let csr = req.csr_pem;
    let issued = tokio::task::spawn_blocking(move || certs::renew(&ca, &csr, &who, validity))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(certs_error)?;
    tracing::info!(device_id = %current.id, old = %current.serial, new = %issued.identity.serial, "device certificate renewed");
    let author = format!("sha256:{}", current.fingerprint);
    record(
        &s,
        crate::service::revocation::issued_event(&issued.identity, &s.ca),
        author.clone(),
    )
    .await;
    if req.revoke_previous {
        let ev = crate::service::revocation::revoked_event(
            &current.serial,
            &crate::service::revocation::subject_of(&current),
            RevocationReason::Superseded,
        );
        record(&s, ev, author).await;
    }
    Ok(pem_response(&issued))
}

/// Whole days until the issuing CA expires (a leaf may not outlive it), at least 1.
fn days_left(ca: &IssuingCa) -> u32 {
    let left = (ca.not_after() - time::OffsetDateTime::now_utc()).whole_days() - 1;
    u32::try_from(left.max(1)).unwrap_or(1)
}

/// Records an identity event through the node. The certificate has already been handed out
/// (and is in `pki/issued.jsonl`), so a failed write is retried in the background rather than
/// failing the device's request; the event id makes a retry that did get through a no-op.
async fn record(s: &EnrollState, event: EventInput, author: String) {
    match submit(&s.node, event.clone(), &author).await {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(error = %e, event_id = ?event.event_id, "identity event not recorded yet; retrying in the background");
            let node = s.node.clone();
            let shutdown = s.shutdown.clone();
            tokio::spawn(async move {
                let until = tokio::time::Instant::now() + RECORD_RETRY_FOR;
                while tokio::time::Instant::now() < until {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    if submit(&node, event.clone(), &author).await.is_ok() {
                        return;
                    }
                }
                tracing::error!(event_id = ?event.event_id, "identity event could not be recorded in the ledger");
            });
        }
    }
}

async fn submit(node: &Node, event: EventInput, author: &str) -> anyhow::Result<()> {
    let cmd = node.prepare(event, author, ledger_node::ledger::now_ms())?;
    match node.submit(Command::Append(cmd)).await? {
        ApplyOutcome::Appended { .. } | ApplyOutcome::Duplicate { .. } => Ok(()),
        ApplyOutcome::Refused { reason } => anyhow::bail!("refused by the ledger: {reason}"),
        other => anyhow::bail!("unexpected ledger outcome {other:?}"),
    }
}

/// Starts the identity layer of a running gateway: reads the ledger's revocations into `server`
/// and `pki/crl.pem` and spawns the revocation watcher; when this gateway has an issuing CA,
/// spawns the enrollment listener (`[api] enroll_listen`, if set). Returns the routes to merge
/// into the mutual-TLS router (`/v1/renew`; empty without an issuing CA).
pub async fn start(
    config: &Config,
    node: &Arc<Node>,
    gateway: &CertifiedKey,
    server: Arc<ReloadableServerConfig>,
    revoked: crate::service::server::RevokedSerials,
    tasks: &mut JoinSet<()>,
    shutdown: CancellationToken,
) -> anyhow::Result<OpenApiRouter<Arc<Node>>> {
    let ca = crate::service::revocation::load_ca(&config.tls.pki_dir)?;
    let crl_path = config.tls.pki_dir.join(crate::paths::CRL_FILE);
    let crl_path_for_routes = crl_path.clone();
    // What `cert revoke --data-dir` recorded before this gateway ran holds from the start, and
    // goes into the replicated ledger so that every gateway refuses it.
    let local = crate::service::revocation::local_index(&config.node.data_dir)?;
    let watcher = crate::service::revocation::start_watcher(
        node.store.clone(),
        local.as_ref(),
        crate::service::revocation::Enforcers {
            revoked,
            server,
            peers: node.peers.clone(),
        },
        ca.clone(),
        crl_path,
        crate::service::revocation::CrlSettings::from_config(config),
        shutdown.clone(),
    )
    .await?;
    tasks.spawn(watcher);
    if let Some(local) = &local {
        tasks.spawn(crate::service::revocation::record_events(
            node.clone(),
            local.revocation_events(),
            "local:cli".into(),
            shutdown.clone(),
        ));
    }
    let Some(ca) = ca else {
        if let Some(addr) = config.api.enroll_listen {
            anyhow::bail!(
                "api.enroll_listen {addr}: this gateway has no issuing CA in tls.pki_dir {} (run `medledger ca init`)",
                config.tls.pki_dir.display()
            );
        }
        return Ok(OpenApiRouter::new());
    };
    tasks.spawn(crate::service::revocation::record_local_issuances(
        node.clone(),
        ca.clone(),
        shutdown.clone(),
    ));
    let key = node.key.verifying_key().to_bytes();
    if node
        .store
        .find_event_id(&crate::service::revocation::ledger_key_event_id(
            node.id, &key,
        ))?
        .is_none()
    {
        let endorsement = crate::service::revocation::ledger_key_event(node.id, &key, &ca)?;
        tasks.spawn(crate::service::revocation::record_events(
            node.clone(),
            vec![endorsement],
            format!("sha256:{}", crate::service::revocation::ca_fingerprint(&ca)),
            shutdown.clone(),
        ));
    }
    let state = EnrollState::new(
        node.clone(),
        ca,
        gateway,
        crl_path_for_routes,
        shutdown.clone(),
    )?;
    if let Some(addr) = config.api.enroll_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("api.enroll_listen {addr}: cannot bind"))?;
        let bound = listener.local_addr()?;
        let tls = certs::enrollment_server_config(gateway).context("api.enroll_listen")?;
        tasks.spawn(crate::service::server::serve_tls_no_client_auth(
            listener,
            tls,
            enroll_routes(state.clone()),
            config.api.clone(),
            shutdown,
        ));
        tracing::info!(listen = %bound, "device enrollment listening (token-authenticated, no client certificates)");
        eprintln!("medledger device enrollment on https://{bound}/enroll");
    }
    Ok(renew_routes(state))
}
