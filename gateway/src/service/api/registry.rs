//! The device registry over HTTPS: devices (list, one with its derived state, register, change,
//! status, attempts to locate), model intervals, recalls, what is due, the committee's reports
//! and FHIR R4. The state comes from `service::registry`, derived from the ledger; every change
//! is a ledger entry recorded through the same write path as `POST /v1/events`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use certs::Profile;
use ledger_node::entry::EventInput;
use serde::{Deserialize, Serialize};

use super::events::submit_event;
use super::extract::{JsonBody, PathParams, QueryParams};
use super::ledger::ensure_fresh;
use super::ApiError;
use crate::service::node::Node;
use crate::service::records::Recorded;
use crate::service::registry::due::{self, DueItem, Filter, RiskFilter};
use crate::service::registry::index::{apply_record, parse_ms, Fields, ModelIntervals};
use crate::service::registry::report::{self, CompletionReport, RecallGroup};
use crate::service::registry::request::{
    check_device_id, DeviceRecord, Invalid, LocateRequest, ModelRequest, RecallRequest,
    StatusRequest,
};
use crate::service::registry::{fhir, DeviceState, Indexed, Status};
use crate::service::server::Peer;

#[derive(Deserialize)]
pub struct DeviceParam {
    id: String,
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).at(e.field)
    }
}

/// The registry as of now on this gateway (after a linearizable wait when asked).
async fn indexed<'a>(
    node: &'a Node,
    consistency: Option<&str>,
) -> Result<std::sync::RwLockReadGuard<'a, Indexed>, ApiError> {
    ensure_fresh(node, consistency).await?;
    node.registry.read(&node.store).map_err(ApiError::internal)
}

/// "Now" of a due computation: the `now` parameter, or the current time.
fn now_param(now: Option<&str>) -> Result<i64, ApiError> {
    match now {
        None => Ok(ledger_node::ledger::now_ms()),
        Some(t) => parse_ms(t).ok_or_else(|| {
            ApiError::bad(format!(
                "query parameter now: {t:?} is not an RFC 3339 time"
            ))
            .at("now")
        }),
    }
}

fn window(w: Option<u32>) -> Result<u32, ApiError> {
    match w {
        None => Ok(due::DEFAULT_WINDOW_DAYS),
        Some(d) if d <= 3650 => Ok(d),
        Some(d) => Err(ApiError::bad(format!(
            "query parameter window_days: {d} is more than 3650"
        ))
        .at("window_days")),
    }
}

/// Registry writes are staff's (biomed, supervisor, admin) and gateways', never a device's.
fn staff_only(peer: &Peer) -> Result<(), ApiError> {
    if peer.0.profile == Profile::Device {
        return Err(ApiError::forbidden(format!(
            "device {} may not change the device registry",
            peer.0.id
        )));
    }
    Ok(())
}

fn writable(node: &Node) -> Result<(), ApiError> {
    if node.is_learner() {
        return Err(ApiError::forbidden(format!(
            "gateway {} is a read-only learner: change the registry on a voting gateway",
            node.id
        )));
    }
    Ok(())
}

/// Records a registry event for `peer`; a request without an event id gets a random one, so
/// that the gateway's own retries never record it twice.
async fn record(
    node: &Node,
    peer: &Peer,
    mut event: EventInput,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    if event.event_id.is_none() {
        event.event_id = Some(format!("api:{}", hex::encode(rand::random::<[u8; 16]>())));
    }
    let event = event
        .validate()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    submit_event(node, peer, event).await
}

/// Filters of the device list.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only devices at this location (exact, case-insensitive).
    pub location: Option<String>,
    /// `high-risk` (life support included), `life-support` or `other`.
    pub risk: Option<RiskFilter>,
    /// `in-service`, `out-of-service`, `unable-to-locate` or `decommissioned`.
    pub status: Option<Status>,
    /// `local` (default) or `linearizable`.
    pub consistency: Option<String>,
}

/// One line of the device list.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceLine {
    pub device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udi_di: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub high_risk: bool,
    pub life_support: bool,
    pub status: Status,
}

impl DeviceLine {
    pub fn of(d: &DeviceState) -> Self {
        Self {
            device_id: d.device_id.clone(),
            udi_di: d.udi.as_ref().map(|u| u.di.clone()),
            asset_number: d.asset_number.clone(),
            manufacturer: d.manufacturer.clone(),
            model: d.model.clone(),
            location: d.location.clone(),
            high_risk: d.is_high_risk(),
            life_support: d.life_support,
            status: d.status,
        }
    }
}

/// The registered devices.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceList {
    /// Ledger entries the registry was derived from.
    pub indexed_entries: u64,
    /// Times this gateway rebuilt the registry from the start of the ledger since it started
    /// (after a snapshot install).
    pub rebuilds: u64,
    pub devices: Vec<DeviceLine>,
}

/// The registered devices, in device id order, with filters.
#[utoipa::path(get, path = "/v1/devices", tag = "devices", params(ListQuery),
    responses((status = 200, description = "The registered devices", body = DeviceList),
              (status = 400, description = "Bad query parameter", body = super::Problem, content_type = "application/problem+json")))]
pub async fn list_devices(
    State(node): State<Arc<Node>>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<DeviceList>, ApiError> {
    let s = indexed(&node, q.consistency.as_deref()).await?;
    let filter = Filter {
        location: q.location,
        risk: q.risk,
        status: q.status,
    };
    Ok(Json(DeviceList {
        indexed_entries: s.scanned,
        rebuilds: s.rebuilds,
        devices: due::devices(&s.index, &filter)
            .map(DeviceLine::of)
            .collect(),
    }))
}

/// `now` and the due window of a device's state.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// "Now" of the due computation, RFC 3339 (default: the current time).
    pub now: Option<String>,
    /// Days before the due date in which work counts as due (default 30).
    pub window_days: Option<u32>,
    /// `local` (default) or `linearizable`.
    pub consistency: Option<String>,
}

/// A device's derived state and what is due.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    #[serde(flatten)]
    pub state: DeviceState,
    /// The intervals of its model, where recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_intervals: Option<ModelIntervals>,
    /// The intervals that apply (the device's own, else its model's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_pm_interval_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_calibration_interval_days: Option<u32>,
    /// The last preventive maintenance and calibration done, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_pm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_calibration: Option<String>,
    /// FHIR DeviceMetric calibration state.
    pub calibration_state: due::CalibrationState,
    pub due: Vec<DueItem>,
    /// The "now" of `due`.
    pub now: String,
}

/// One device's state derived from its entries, and what is due.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id (UDI or local id)"), DeviceQuery),
    responses((status = 200, description = "The device's derived state", body = DeviceView),
              (status = 400, description = "Bad query parameter", body = super::Problem, content_type = "application/problem+json"),
              (status = 404, description = "The ledger has no entry about this device", body = super::Problem, content_type = "application/problem+json")))]
pub async fn get_device(
    State(node): State<Arc<Node>>,
    PathParams(DeviceParam { id }): PathParams<DeviceParam>,
    QueryParams(q): QueryParams<DeviceQuery>,
) -> Result<Json<DeviceView>, ApiError> {
    let now = now_param(q.now.as_deref())?;
    let window = window(q.window_days)?;
    let s = indexed(&node, q.consistency.as_deref()).await?;
    let index = &s.index;
    let dev = index.devices.get(&id).ok_or_else(|| {
        ApiError::not_found(format!("the ledger has no entry about device {id:?}")).at("id")
    })?;
    Ok(Json(DeviceView {
        model_intervals: index.model(dev).cloned(),
        effective_pm_interval_days: index.pm_interval(dev),
        effective_calibration_interval_days: index.calibration_interval(dev),
        last_pm: dev.last_pm().map(|d| crate::event::format_ms(d.at_ms)),
        last_calibration: dev
            .last_calibration()
            .map(|d| crate::event::format_ms(d.at_ms)),
        calibration_state: due::calibration_state(index, dev, now),
        due: due::device_due(index, dev, now, window),
        now: crate::event::format_ms(now),
        state: dev.clone(),
    }))
}

/// Checks a registration or change against the device's state (the maintenance rules: AEM
/// where it is allowed, with its justification), as the index will apply it.
fn check_rules(
    node: &Node,
    device_id: &str,
    event: &EventInput,
    update: bool,
) -> Result<(), ApiError> {
    let s = node
        .registry
        .read(&node.store)
        .map_err(ApiError::internal)?;
    let current = s.index.devices.get(device_id);
    match (current.is_some_and(|d| d.registered), update) {
        (true, false) => {
            return Err(ApiError::conflict(format!(
                "device {device_id:?} is already registered: PATCH /v1/devices/{{id}} changes it"
            ))
            .at("device_id"))
        }
        (false, true) => {
            return Err(ApiError::not_found(format!(
                "device {device_id:?} is not registered: POST /v1/devices registers it"
            ))
            .at("id"))
        }
        _ => {}
    }
    if current.is_some_and(|d| d.status == Status::Decommissioned) {
        return Err(ApiError::conflict(format!(
            "device {device_id:?} is decommissioned"
        )));
    }
    let mut dev = current
        .cloned()
        .unwrap_or_else(|| DeviceState::new(device_id));
    let at = ledger_node::ledger::now_ms();
    apply_record(
        &mut dev,
        &Fields::of_inputs(&event.components),
        0,
        at,
        &crate::event::format_ms(at),
    )
    .map_err(|reason| {
        let field = if reason.contains("AEM") {
            "strategy"
        } else {
            "components"
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason).at(field)
    })
}

/// Register a device (a `device-registered` entry). Staff biomed, supervisor, admin and gateways.
/// An AEM strategy is refused where it is not allowed (imaging, lasers, maintenance set by law,
/// new equipment without maintenance history), naming the rule.
#[utoipa::path(post, path = "/v1/devices", tag = "devices",
    request_body(content = DeviceRecord, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = Recorded),
        (status = 200, description = "Already recorded under this event_id", body = Recorded),
        (status = 403, description = "Not allowed for this identity or on this gateway", body = super::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already registered", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid or a maintenance rule refuses it", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No leader reachable", body = super::Problem, content_type = "application/problem+json")))]
pub async fn register_device(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<DeviceRecord>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    staff_only(&peer)?;
    writable(&node)?;
    let Some(id) = req.device_id.clone() else {
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "device_id is missing").at("device_id"),
        );
    };
    req.check()?;
    let event = req.to_event(&id, false);
    // A retry of an earlier registration (same event id) answers as a duplicate.
    let retry = match &req.event_id {
        Some(e) => node
            .store
            .find_event_id(e)
            .map_err(ApiError::internal)?
            .is_some(),
        None => false,
    };
    if !retry {
        check_rules(&node, &id, &event, false)?;
    }
    record(&node, &peer, event).await
}

/// Change a registered device's record (a new `device-registered` entry with only the fields
/// that change); the same rules as a registration.
#[utoipa::path(patch, path = "/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id (UDI or local id)")),
    request_body(content = DeviceRecord, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded", body = Recorded),
        (status = 200, description = "Already recorded under this event_id", body = Recorded),
        (status = 403, description = "Not allowed for this identity or on this gateway", body = super::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not registered", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid or a maintenance rule refuses it", body = super::Problem, content_type = "application/problem+json")))]
pub async fn change_device(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    PathParams(DeviceParam { id }): PathParams<DeviceParam>,
    JsonBody(req): JsonBody<DeviceRecord>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    staff_only(&peer)?;
    writable(&node)?;
    if req.device_id.as_ref().is_some_and(|d| *d != id) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "device_id differs from the device in the path",
        )
        .at("device_id"));
    }
    req.check()?;
    let event = req.to_event(&id, true);
    check_rules(&node, &id, &event, true)?;
    record(&node, &peer, event).await
}

/// The registered device `id`, or 404.
fn registered(node: &Node, id: &str) -> Result<Status, ApiError> {
    check_device_id(id).map_err(|e| ApiError::bad(e.to_string()).at("id"))?;
    let s = node
        .registry
        .read(&node.store)
        .map_err(ApiError::internal)?;
    match s.index.devices.get(id).filter(|d| d.registered) {
        Some(d) => Ok(d.status),
        None => Err(ApiError::not_found(format!("device {id:?} is not registered")).at("id")),
    }
}

/// Change a device's status: in service, out of service, unable to locate, decommissioned
/// (a `status-change` entry, or `device-decommissioned`).
#[utoipa::path(post, path = "/v1/devices/{id}/status", tag = "devices",
    params(("id" = String, Path, description = "Device id (UDI or local id)")),
    request_body(content = StatusRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded", body = Recorded),
        (status = 200, description = "Already recorded under this event_id", body = Recorded),
        (status = 404, description = "Not registered", body = super::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device is decommissioned", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid body", body = super::Problem, content_type = "application/problem+json")))]
pub async fn set_status(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    PathParams(DeviceParam { id }): PathParams<DeviceParam>,
    JsonBody(req): JsonBody<StatusRequest>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    staff_only(&peer)?;
    writable(&node)?;
    req.check()?;
    if registered(&node, &id)? == Status::Decommissioned {
        return Err(ApiError::conflict(format!(
            "device {id:?} is decommissioned"
        )));
    }
    record(&node, &peer, req.to_event(&id)).await
}

/// Log an attempt to locate a device. Not found: the device becomes unable to locate; found:
/// it is back in service, at the location given.
#[utoipa::path(post, path = "/v1/devices/{id}/locate-attempts", tag = "devices",
    params(("id" = String, Path, description = "Device id (UDI or local id)")),
    request_body(content = LocateRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded", body = Recorded),
        (status = 200, description = "Already recorded under this event_id", body = Recorded),
        (status = 404, description = "Not registered", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid body", body = super::Problem, content_type = "application/problem+json")))]
pub async fn locate_attempt(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    PathParams(DeviceParam { id }): PathParams<DeviceParam>,
    JsonBody(req): JsonBody<LocateRequest>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    staff_only(&peer)?;
    writable(&node)?;
    req.check()?;
    registered(&node, &id)?;
    record(&node, &peer, req.to_event(&id)).await
}

/// Record a model's preventive-maintenance and calibration intervals (devices of the model use
/// them unless they have their own).
#[utoipa::path(post, path = "/v1/models", tag = "devices",
    request_body(content = ModelRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded", body = Recorded),
        (status = 200, description = "Already recorded under this event_id", body = Recorded),
        (status = 422, description = "Invalid body", body = super::Problem, content_type = "application/problem+json")))]
pub async fn set_model(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<ModelRequest>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    staff_only(&peer)?;
    writable(&node)?;
    req.check()?;
    record(&node, &peer, req.to_event()).await
}

/// Record a recall (or field safety notice) of a product by UDI-DI, or close one.
#[utoipa::path(post, path = "/v1/recalls", tag = "devices",
    request_body(content = RecallRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Recorded", body = Recorded),
        (status = 200, description = "Already recorded under this event_id", body = Recorded),
        (status = 422, description = "Invalid body", body = super::Problem, content_type = "application/problem+json")))]
pub async fn record_recall(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    JsonBody(req): JsonBody<RecallRequest>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    staff_only(&peer)?;
    writable(&node)?;
    req.check()?;
    record(&node, &peer, req.to_event()).await
}

/// Filters of the due list.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DueQuery {
    /// "Now", RFC 3339 (default: the current time).
    pub now: Option<String>,
    /// Only devices at this location (exact, case-insensitive).
    pub location: Option<String>,
    /// `high-risk` (life support included), `life-support` or `other`.
    pub risk: Option<RiskFilter>,
    /// Only what is overdue.
    pub overdue: Option<bool>,
    /// Days before the due date in which work counts as due (default 30).
    pub window_days: Option<u32>,
    /// `local` (default) or `linearizable`.
    pub consistency: Option<String>,
}

/// What is due or overdue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DueList {
    pub now: String,
    pub items: Vec<DueItem>,
}

/// Preventive maintenance and calibration due or overdue across the registered devices, most
/// overdue first.
#[utoipa::path(get, path = "/v1/due", tag = "devices", params(DueQuery),
    responses((status = 200, description = "What is due", body = DueList),
              (status = 400, description = "Bad query parameter", body = super::Problem, content_type = "application/problem+json")))]
pub async fn due_list(
    State(node): State<Arc<Node>>,
    QueryParams(q): QueryParams<DueQuery>,
) -> Result<Response, ApiError> {
    // Without `now`, the current minute: what is due changes by the day, and one answer per
    // minute and ledger state serves every screen that asks meanwhile.
    let now = match q.now {
        None => ledger_node::ledger::now_ms().div_euclid(60_000) * 60_000,
        Some(_) => now_param(q.now.as_deref())?,
    };
    let window = window(q.window_days)?;
    let overdue = q.overdue.unwrap_or(false);
    let s = indexed(&node, q.consistency.as_deref()).await?;
    let filter = Filter {
        location: q.location,
        risk: q.risk,
        status: None,
    };
    let key = format!(
        "due {} {now} {window} {overdue} {:?} {:?}",
        s.generation(),
        filter.risk,
        filter.location.as_deref().map(str::to_lowercase)
    );
    let body = node
        .registry
        .answer(key, || {
            serde_json::to_vec(&DueList {
                now: crate::event::format_ms(now),
                items: due::due_list(&s.index, &filter, now, window, overdue),
            })
        })
        .map_err(ApiError::internal)?;
    drop(s);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Bytes::from_owner(body),
    )
        .into_response())
}

/// The period of a report.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    /// Start (inclusive), RFC 3339; default one year before `to`.
    pub from: Option<String>,
    /// End (exclusive), RFC 3339; default now.
    pub to: Option<String>,
    /// `local` (default) or `linearizable`.
    pub consistency: Option<String>,
}

/// Preventive-maintenance completion for a period, life-support and other equipment apart.
#[utoipa::path(get, path = "/v1/reports/pm-completion", tag = "devices", params(PeriodQuery),
    responses((status = 200, description = "The report", body = CompletionReport),
              (status = 400, description = "Bad query parameter", body = super::Problem, content_type = "application/problem+json")))]
pub async fn pm_completion(
    State(node): State<Arc<Node>>,
    QueryParams(q): QueryParams<PeriodQuery>,
) -> Result<Json<CompletionReport>, ApiError> {
    let time = |name: &str, v: &str| {
        parse_ms(v).ok_or_else(|| {
            ApiError::bad(format!(
                "query parameter {name}: {v:?} is not an RFC 3339 time"
            ))
            .at(name)
        })
    };
    let to = match &q.to {
        Some(t) => time("to", t)?,
        None => ledger_node::ledger::now_ms(),
    };
    let from = match &q.from {
        Some(t) => time("from", t)?,
        None => to - 365 * 86_400_000,
    };
    if from >= to {
        return Err(ApiError::bad("query parameter from: not before to").at("from"));
    }
    let s = indexed(&node, q.consistency.as_deref()).await?;
    Ok(Json(report::pm_completion(&s.index, from, to)))
}

/// Freshness only.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FreshQuery {
    /// `local` (default) or `linearizable`.
    pub consistency: Option<String>,
}

/// Open recalls by UDI-DI, each with the registered devices of that DI.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecallReport {
    pub products: Vec<RecallGroup>,
}

/// Open recalls by UDI-DI.
#[utoipa::path(get, path = "/v1/reports/recalls", tag = "devices", params(FreshQuery),
    responses((status = 200, description = "Open recalls", body = RecallReport)))]
pub async fn open_recalls(
    State(node): State<Arc<Node>>,
    QueryParams(q): QueryParams<FreshQuery>,
) -> Result<Json<RecallReport>, ApiError> {
    let s = indexed(&node, q.consistency.as_deref()).await?;
    Ok(Json(RecallReport {
        products: report::open_recalls(&s.index),
    }))
}

/// `now` of FHIR calibration states.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FhirQuery {
    /// "Now" of the calibration state, RFC 3339 (default: the current time).
    pub now: Option<String>,
    /// Only devices at this location (exact, case-insensitive).
    pub location: Option<String>,
    /// `local` (default) or `linearizable`.
    pub consistency: Option<String>,
}

fn fhir_json(v: serde_json::Value) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/fhir+json")],
        v.to_string(),
    )
        .into_response()
}

/// The registered devices as a FHIR R4 Bundle of Device resources.
#[utoipa::path(get, path = "/v1/fhir/Device", tag = "devices", params(FhirQuery),
    responses((status = 200, description = "A FHIR R4 searchset Bundle of Device", content_type = "application/fhir+json")))]
pub async fn fhir_devices(
    State(node): State<Arc<Node>>,
    QueryParams(q): QueryParams<FhirQuery>,
) -> Result<Response, ApiError> {
    now_param(q.now.as_deref())?;
    let s = indexed(&node, q.consistency.as_deref()).await?;
    let filter = Filter {
        location: q.location,
        ..Filter::default()
    };
    let resources = due::devices(&s.index, &filter).map(fhir::device).collect();
    Ok(fhir_json(fhir::bundle(resources)))
}

/// Every registered device's calibration as a FHIR R4 Bundle of DeviceMetric resources
/// (DeviceMetric.calibration: type, state, time).
#[utoipa::path(get, path = "/v1/fhir/DeviceMetric", tag = "devices", params(FhirQuery),
    responses((status = 200, description = "A FHIR R4 searchset Bundle of DeviceMetric", content_type = "application/fhir+json")))]
pub async fn fhir_metrics(
    State(node): State<Arc<Node>>,
    QueryParams(q): QueryParams<FhirQuery>,
) -> Result<Response, ApiError> {
    let now = now_param(q.now.as_deref())?;
    let s = indexed(&node, q.consistency.as_deref()).await?;
    let filter = Filter {
        location: q.location,
        ..Filter::default()
    };
    let resources = due::devices(&s.index, &filter)
        .map(|d| fhir::calibration_metric(&s.index, d, now))
        .collect();
    Ok(fhir_json(fhir::bundle(resources)))
}
