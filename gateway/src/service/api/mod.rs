//! The HTTPS API of the mutual-TLS listener, one module per resource: maintenance events
//! ([`events`]), the ledger, its proofs and keys ([`ledger`]), devices ([`devices`]), cluster
//! administration ([`cluster`]) and Raft RPC between gateways ([`raft`]).
//!
//! Every request carries the client's verified certificate identity ([`Peer`]). Who may call a
//! route ([`Need`]) is checked by a route layer **before** any parameter or body is read, so a
//! caller who may not use a route learns nothing of what it expects; per-object rules (a device
//! writes only about itself, a role sees only its classes) are checked in the handler. Every
//! error is an RFC 9457 problem document ([`ApiError`]). The OpenAPI 3.1 document is generated
//! from the same route registrations that serve the routes, and served at `/v1/openapi.json`.

pub mod certificates;
mod cluster;
mod devices;
mod events;
pub mod extract;
pub mod fresh;
mod import;
mod ledger;
mod problem;
mod raft;
mod records;
mod registry;
mod staff;

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use certs::{Profile, StaffRole};
use ledger_node::entry::DisclosureClass;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

pub use problem::{uniform, ApiError, Problem, PROBLEM_JSON};

use crate::service::node::{Node, WriteError};
use crate::service::server::Peer;

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NoLeader(_) | WriteError::ShuttingDown => ApiError::unavailable(e),
            WriteError::Refused(_) => ApiError::conflict(e),
            WriteError::Failed(_) => ApiError::internal(e),
            WriteError::DiskFull(_) => ApiError::insufficient_storage(e),
        }
    }
}

/// What a route needs of its caller's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any authenticated identity (whoami, the OpenAPI document).
    Anyone,
    /// Staff of any role, or a gateway: ledger contents and cluster state, never devices.
    Reader,
    /// Records events: a gateway, staff biomed / supervisor / admin, or a device (about itself
    /// only, checked per object).
    Writer,
    /// Manages identities, membership and erasure: a gateway or a staff admin.
    Admin,
    /// Raft traffic: gateways only.
    Gateway,
    /// A device (certificate renewal).
    Device,
}

impl Need {
    /// Whether `peer` may call a route that needs `self`; the refusal names who and why.
    pub fn check(self, peer: &Peer) -> Result<(), ApiError> {
        let id = &peer.0;
        let role = id.staff_role();
        let ok = match self {
            Need::Anyone => true,
            Need::Reader => matches!(id.profile, Profile::Staff | Profile::Gateway),
            Need::Writer => matches!(
                (id.profile, role),
                (Profile::Gateway | Profile::Device, _)
                    | (
                        Profile::Staff,
                        Some(StaffRole::Biomed | StaffRole::Supervisor | StaffRole::Admin)
                    )
            ),
            Need::Admin => matches!(
                (id.profile, role),
                (Profile::Gateway, _) | (Profile::Staff, Some(StaffRole::Admin))
            ),
            Need::Gateway => id.profile == Profile::Gateway,
            Need::Device => id.profile == Profile::Device,
        };
        if ok {
            return Ok(());
        }
        let who = match &id.role {
            Some(r) => format!("{} {} ({r})", id.profile, id.id),
            None => format!("{} {}", id.profile, id.id),
        };
        let what = match self {
            Need::Anyone => "call this route",
            Need::Reader => "read the ledger or the cluster's state",
            Need::Writer => "record events",
            Need::Admin => "administer identities, membership or erasure",
            Need::Gateway => "use a route of the gateways' replication",
            Need::Device => "use a route for devices only",
        };
        Err(ApiError::forbidden(format!("{who} may not {what}")))
    }
}

/// The route layer that checks [`Need`] before the handler's extractors read anything.
async fn authorize(need: Need, req: Request, next: Next) -> Response {
    let Some(peer) = req.extensions().get::<Peer>() else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no verified client certificate on this connection",
        )
        .into_response();
    };
    match need.check(peer) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// `routes` behind the authorization layer for `need`, and the body limit `limit`.
pub fn guarded<S>(
    need: Need,
    limit: usize,
    (schemas, paths, method): UtoipaMethodRouter<S>,
) -> UtoipaMethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let method = method
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .route_layer(axum::middleware::from_fn(
            move |req: Request, next: Next| authorize(need, req, next),
        ));
    (schemas, paths, method)
}

/// Body limit of routes that take no body or a small one (membership changes, proofs).
pub const SMALL_BODY: usize = 64 * 1024;
/// Body limit of `POST /v1/events`: the largest event the import format allows.
pub const EVENT_BODY: usize = crate::event::MAX_EVENT_BYTES;
/// Largest Raft RPC body accepted from a peer gateway: a batch of appended entries or a snapshot
/// chunk may be far larger than a staff request.
pub const RAFT_BODY: usize = 256 * 1024 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "MedLedger gateway API",
        description = "The HTTPS API of a MedLedger gateway (mutual TLS with certificates of the \
                       site CA). Errors are RFC 9457 problem documents. docs/api.md says who may \
                       call what and see which fields."
    ),
    components(schemas(Problem)),
    tags(
        (name = "events", description = "Maintenance events"),
        (name = "ledger", description = "The signed ledger, its proofs and keys"),
        (name = "devices", description = "Devices and their history"),
        (name = "cluster", description = "Cluster administration"),
        (name = "raft", description = "Replication between gateways (MessagePack; gateways only)"),
        (name = "identity", description = "Certificates and revocation")
    )
)]
struct ApiDoc;

/// The OpenAPI document, fixed once the router is built.
static OPENAPI_JSON: OnceLock<String> = OnceLock::new();

/// The OpenAPI 3.1 document of every route of this listener.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "ledger",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON.get().cloned().unwrap_or_default(),
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path())).at("path")
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not a method of {}", req.method(), req.uri().path()),
    )
    .at("method")
}

/// Every route of the mutual-TLS listener; `identity` carries the routes of the identity layer
/// (certificate renewal, CRL), documented like the rest.
pub fn router(node: Arc<Node>, identity: OpenApiRouter<Arc<Node>>) -> Router {
    use Need::*;
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(guarded(Writer, EVENT_BODY, routes!(events::append_event)))
        .routes(guarded(Writer, SMALL_BODY, routes!(records::sign)))
        .routes(guarded(Admin, SMALL_BODY, routes!(records::erase)))
        .routes(guarded(
            Admin,
            import::IMPORT_BODY,
            routes!(import::import_batch),
        ))
        .routes(guarded(Reader, SMALL_BODY, routes!(ledger::head)))
        .routes(guarded(Reader, SMALL_BODY, routes!(ledger::keys)))
        .routes(guarded(Reader, SMALL_BODY, routes!(ledger::consistency)))
        .routes(guarded(Reader, SMALL_BODY, routes!(ledger::receipt)))
        .routes(guarded(Reader, SMALL_BODY, routes!(ledger::export)))
        .routes(guarded(Anyone, SMALL_BODY, routes!(ledger::whoami)))
        .routes(guarded(Anyone, SMALL_BODY, routes!(openapi)))
        .routes(guarded(Reader, SMALL_BODY, routes!(devices::history)))
        .routes(guarded(Reader, SMALL_BODY, routes!(registry::list_devices)))
        .routes(guarded(
            Writer,
            SMALL_BODY,
            routes!(registry::register_device),
        ))
        .routes(guarded(Reader, SMALL_BODY, routes!(registry::get_device)))
        .routes(guarded(
            Writer,
            SMALL_BODY,
            routes!(registry::change_device),
        ))
        .routes(guarded(Writer, SMALL_BODY, routes!(registry::set_status)))
        .routes(guarded(
            Writer,
            SMALL_BODY,
            routes!(registry::locate_attempt),
        ))
        .routes(guarded(Writer, SMALL_BODY, routes!(registry::set_model)))
        .routes(guarded(
            Writer,
            SMALL_BODY,
            routes!(registry::record_recall),
        ))
        .routes(guarded(Reader, SMALL_BODY, routes!(registry::due_list)))
        .routes(guarded(
            Reader,
            SMALL_BODY,
            routes!(registry::pm_completion),
        ))
        .routes(guarded(Reader, SMALL_BODY, routes!(registry::open_recalls)))
        .routes(guarded(Reader, SMALL_BODY, routes!(registry::fhir_devices)))
        .routes(guarded(Reader, SMALL_BODY, routes!(registry::fhir_metrics)))
        .routes(guarded(
            Reader,
            SMALL_BODY,
            routes!(certificates::certificate),
        ))
        .routes(guarded(Gateway, RAFT_BODY, routes!(raft::append)))
        .routes(guarded(Gateway, RAFT_BODY, routes!(raft::vote)))
        .routes(guarded(Gateway, RAFT_BODY, routes!(raft::snapshot)))
        .routes(guarded(Gateway, RAFT_BODY, routes!(raft::forward)))
        .routes(guarded(Gateway, SMALL_BODY, routes!(raft::cosign)))
        .routes(guarded(Gateway, SMALL_BODY, routes!(staff::get_account)))
        .routes(guarded(Admin, SMALL_BODY, routes!(cluster::init)))
        .routes(guarded(Admin, SMALL_BODY, routes!(cluster::add_learner)))
        .routes(guarded(Admin, SMALL_BODY, routes!(cluster::promote)))
        .routes(guarded(Admin, SMALL_BODY, routes!(cluster::remove)))
        .routes(guarded(Admin, SMALL_BODY, routes!(cluster::checkpoint)))
        .routes(guarded(Reader, SMALL_BODY, routes!(cluster::status)))
        .routes(guarded(Reader, SMALL_BODY, routes!(cluster::health)))
        .merge(identity)
        .split_for_parts();
    let json = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"openapi: {e}\"}}"));
    let _ = OPENAPI_JSON.set(json);
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // `min_seq` / `Medledger-Min-Seq`: read-your-writes on any gateway (fresh.rs).
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            fresh::min_seq,
        ))
        .layer(axum::middleware::from_fn(problem::uniform))
        .with_state(node)
}

/// The disclosure classes a caller may see (docs/api.md has the table; the role → classes
/// table itself is [`crate::records::role_classes`]).
pub fn visible_classes(peer: &Peer) -> BTreeSet<DisclosureClass> {
    let id = &peer.0;
    match id.profile {
        Profile::Gateway => DisclosureClass::ALL.into_iter().collect(),
        Profile::Staff => staff_classes(id.staff_role()),
        _ => BTreeSet::new(),
    }
}

/// The disclosure classes a staff role may see (also the web page's, whose staff sign in with
/// an account of a role rather than a certificate).
pub fn staff_classes(role: Option<StaffRole>) -> BTreeSet<DisclosureClass> {
    match role {
        Some(r) => crate::records::role_classes(r),
        None => [DisclosureClass::Device].into(),
    }
}
