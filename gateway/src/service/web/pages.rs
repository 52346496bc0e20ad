//! The page handlers and their templates (askama, `gateway/templates/`).

use std::collections::BTreeSet;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use certs::StaffRole;
use serde::Deserialize;

use super::auth::{random_token, Refused, Session, LOGIN_CSRF_COOKIE, SESSION_COOKIE};
use super::data::{self, DeviceSummary};
use super::Web;
use crate::event::{ComponentRequest, EventRequest};
use crate::records::Meaning;
use crate::service::records::{self, RecordError};
use crate::service::server::Peer;

/// The policy of every answer: scripts, styles, images and fetches from this origin only, no
/// inline script or style, no eval, forms post only here, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                       base-uri 'none'";

const RECEIPT_JS: &str = include_str!("../../../static/receipt.js");
const STYLE_CSS: &str = include_str!("../../../static/style.css");

/// Largest form body (an event's notes included).
const FORM_BODY: usize = 64 * 1024;

pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/devices") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/devices", get(device_list))
        .route("/devices/{id}", get(device_page))
        .route("/devices/{id}/events", post(record))
        .route("/devices/{id}/entries/{seq}/signatures", post(sign))
        .route("/reports/pm", get(pm_report))
        .route("/data/keys", get(keys))
        .route("/data/site-root", get(site_root))
        .route("/data/entries/{seq}/receipt", get(receipt))
        .route("/static/{file}", get(static_file))
        .fallback(|| async { page_error(StatusCode::NOT_FOUND, "No such page.") })
        .layer(axum::extract::DefaultBodyLimit::max(FORM_BODY))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(web)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let is_static = req.uri().path().starts_with("/static/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    if !is_static {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The signed-in user as the layout shows it.
pub struct UserView {
    pub name: String,
    pub role: String,
    pub csrf: String,
}

impl From<&Session> for UserView {
    fn from(s: &Session) -> Self {
        UserView {
            name: s.name.clone(),
            role: s.role.to_string(),
            csrf: s.csrf.clone(),
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age_s: u64) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age_s}"),
    )
}

/// The session of a request, with its token.
fn session(web: &Web, headers: &HeaderMap) -> Option<(String, Session)> {
    let token = cookie(headers, SESSION_COOKIE)?;
    web.auth.session(token).map(|s| (token.to_owned(), s))
}

/// A page for a request without a session: to the sign-in page, back here afterwards.
fn to_login(next: &str) -> Response {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("next", next);
    Redirect::to(&format!("/login?{}", q.finish())).into_response()
}

/// `s` as one percent-encoded URL path segment.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn html<T: Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render a page");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render the page").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    user: Option<UserView>,
    title: String,
    message: String,
}

fn page_error(status: StatusCode, message: &str) -> Response {
    html(
        status,
        &ErrorPage {
            user: None,
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            message: message.to_owned(),
        },
    )
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "web page: cannot read the ledger");
    page_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The gateway cannot read its ledger; the log says why.",
    )
}

// ---------------------------------------------------------------------------------------
// Sign-in

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    user: Option<UserView>,
    csrf: String,
    next: String,
    account: String,
    message: String,
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only a path on this site (not `//host`) is a place to go back to.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/devices".into(),
    }
}

fn login_form(status: StatusCode, next: String, account: String, message: String) -> Response {
    let csrf = random_token();
    let mut resp = html(
        status,
        &LoginPage {
            user: None,
            csrf: csrf.clone(),
            next,
            account,
            message,
        },
    );
    let (k, v) = set_cookie(LOGIN_CSRF_COOKIE, &csrf, 3600);
    if let Ok(v) = HeaderValue::from_str(&v) {
        resp.headers_mut().append(k, v);
    }
    resp
}

/// Signs in a browser that presented a staff certificate: valid (rustls checked its chain and
/// key), unrevoked (the ledger's revocations) and of the staff profile with a role. Otherwise
/// the sign-in form says why the certificate was not taken; the password path stays.
async fn login_page(
    State(web): State<Arc<Web>>,
    peer: Option<axum::Extension<Peer>>,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    let Some(axum::Extension(Peer(id))) = peer else {
        return login_form(StatusCode::OK, next, String::new(), String::new());
    };
    let revoked = web
        .revoked
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&id.serial);
    let refusal = match (revoked, id.staff_role()) {
        (true, _) => {
            tracing::warn!(target: "medledger::web::auth", account = %id.id, serial = %id.serial, "certificate sign-in refused: certificate revoked");
            web.auth.audit(
                &id.id,
                "certificate-refused",
                "certificate",
                Some(id.serial.clone()),
            );
            format!(
                "The certificate your browser presented ({} {}, serial {}) is revoked: it \
                 does not sign in. Sign in with your staff account, or ask an administrator \
                 for a new certificate.",
                id.profile, id.id, id.serial
            )
        }
        (false, None) => {
            tracing::warn!(target: "medledger::web::auth", profile = %id.profile, id = %id.id, "certificate sign-in refused: not a staff certificate");
            web.auth.audit(
                &format!("{}:{}", id.profile, id.id),
                "certificate-refused",
                "certificate",
                Some(id.serial.clone()),
            );
            format!(
                "The certificate your browser presented is a {} certificate ({}), not a staff \
                 certificate: it does not sign in. Sign in with your staff account.",
                id.profile, id.id
            )
        }
        (false, Some(role)) => {
            let token = web.auth.start_certificate_session((*id).clone(), role);
            return signed_in(&web, &next, &token);
        }
    };
    login_form(StatusCode::FORBIDDEN, next, String::new(), refusal)
}

/// The answer to a sign-in: the session cookie, back to `next`.
fn signed_in(web: &Web, next: &str, token: &str) -> Response {
    let ttl = web.auth.session_ttl().as_secs();
    let mut resp = Redirect::to(next).into_response();
    for (k, v) in [
        set_cookie(SESSION_COOKIE, token, ttl),
        set_cookie(LOGIN_CSRF_COOKIE, "", 0),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

#[derive(Deserialize)]
struct LoginForm {
    account: String,
    password: String,
    csrf: String,
    next: Option<String>,
}

async fn login(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    if cookie(&headers, LOGIN_CSRF_COOKIE) != Some(f.csrf.as_str()) {
        return login_form(
            StatusCode::FORBIDDEN,
            next,
            f.account,
            "The sign-in form had expired; please sign in again.".into(),
        );
    }
    let account = f.account.trim().to_owned();
    match web.auth.check_password(&account, &f.password).await {
        Ok(a) => {
            let token = web.auth.start_session(&a);
            signed_in(&web, &next, &token)
        }
        Err(r) => login_form(StatusCode::UNAUTHORIZED, next, account, refusal_text(&r)),
    }
}

fn refusal_text(r: &Refused) -> String {
    match r {
        Refused::Wrong => "Wrong user name or password.".into(),
        Refused::Locked(left) => format!(
            "This account is locked after too many failed sign-ins. Try again in {} minute(s), \
             or ask an administrator.",
            left.as_secs().div_ceil(60)
        ),
        Refused::Disabled => "This account is locked by an administrator.".into(),
        Refused::Unavailable => "Sign-in is not available: the gateway cannot read its staff \
                                 accounts (the log says why)."
            .into(),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some((token, s)) = session(&web, &headers) {
        if s.csrf == f.csrf {
            web.auth.end_session(&token);
        }
    }
    let mut resp = Redirect::to("/login").into_response();
    let (k, v) = set_cookie(SESSION_COOKIE, "", 0);
    if let Ok(v) = HeaderValue::from_str(&v) {
        resp.headers_mut().append(k, v);
    }
    resp
}

// ---------------------------------------------------------------------------------------
// Device list

/// A device list row with its link.
pub struct Row {
    pub d: DeviceSummary,
    pub href: String,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    user: Option<UserView>,
    q: String,
    status: String,
    risk: String,
    overdue: bool,
    alarms: bool,
    statuses: Vec<String>,
    risks: Vec<String>,
    rows: Vec<Row>,
    total: usize,
}

#[derive(Deserialize, Default)]
struct ListQuery {
    q: Option<String>,
    status: Option<String>,
    risk: Option<String>,
    overdue: Option<String>,
    alarms: Option<String>,
}

async fn device_list(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let Some((_, s)) = session(&web, &headers) else {
        return to_login("/devices");
    };
    let node = web.node.clone();
    let all = match tokio::task::spawn_blocking(move || data::source().list((&*node).into())).await
    {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    let total = all.len();
    let statuses: BTreeSet<String> = all.iter().filter_map(|d| d.status.clone()).collect();
    let risks: BTreeSet<String> = all.iter().filter_map(|d| d.risk.clone()).collect();
    let text = q.q.clone().unwrap_or_default();
    let needle = text.trim().to_lowercase();
    let status = q.status.clone().unwrap_or_default();
    let risk = q.risk.clone().unwrap_or_default();
    let overdue = q.overdue.is_some();
    let alarms = q.alarms.is_some();
    let rows = all
        .into_iter()
        .filter(|d| {
            needle.is_empty()
                || d.id.to_lowercase().contains(&needle)
                || d.location
                    .as_deref()
                    .is_some_and(|l| l.to_lowercase().contains(&needle))
        })
        .filter(|d| status.is_empty() || d.status.as_deref() == Some(status.as_str()))
        .filter(|d| risk.is_empty() || d.risk.as_deref() == Some(risk.as_str()))
        .filter(|d| !overdue || d.overdue)
        .filter(|d| !alarms || d.open_alarms > 0)
        .map(|d| Row {
            href: format!("/devices/{}", path_segment(&d.id)),
            d,
        })
        .collect();
    html(
        StatusCode::OK,
        &DevicesPage {
            user: Some((&s).into()),
            q: text,
            status,
            risk,
            overdue,
            alarms,
            statuses: statuses.into_iter().collect(),
            risks: risks.into_iter().collect(),
            rows,
            total,
        },
    )
}

// ---------------------------------------------------------------------------------------
// One device

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    user: Option<UserView>,
    d: data::DeviceDetail,
    action: String,
    charts: Vec<super::chart::Chart>,
    can_sign: bool,
    can_approve: bool,
    needs_password: bool,
    /// `/devices/{id}/entries/`: where an entry's review or approval is posted.
    sign_base: String,
    message: String,
    kinds: &'static [&'static str],
    meanings: &'static [&'static str],
    chart_width: f64,
    chart_height: f64,
}

/// Kinds staff record on the page.
const FORM_KINDS: &[&str] = &[
    "calibration",
    "preventive-maintenance",
    "repair",
    "inspection",
    "firmware-update",
    "status-change",
];
/// Part 11 §11.50 meanings of the signature of a record made here (reviewed and approved are
/// signatures of an existing entry: the buttons on each entry).
const MEANINGS: &[&str] = &["performed", "corrected"];

fn can_sign(role: StaffRole) -> bool {
    matches!(
        role,
        StaffRole::Biomed | StaffRole::Supervisor | StaffRole::Admin
    )
}

async fn render_device(
    web: &Web,
    s: &Session,
    id: String,
    status: StatusCode,
    message: String,
) -> Response {
    let node = web.node.clone();
    let classes = crate::service::api::staff_classes(Some(s.role));
    let want = id.clone();
    let detail = match tokio::task::spawn_blocking(move || {
        data::source().detail((&*node).into(), &want, &classes)
    })
    .await
    {
        Ok(Ok(Some(d))) => d,
        Ok(Ok(None)) => {
            return page_error(
                StatusCode::NOT_FOUND,
                &format!("The ledger has no entry about device {id:?}."),
            )
        }
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let charts = web
        .recent
        .as_ref()
        .and_then(|r| r.device(&id))
        .map(|t| super::chart::charts(&t, now))
        .unwrap_or_default();
    html(
        status,
        &DevicePage {
            user: Some(s.into()),
            action: format!("/devices/{}/events", path_segment(&id)),
            d: detail,
            charts,
            can_sign: can_sign(s.role),
            can_approve: matches!(s.role, StaffRole::Supervisor | StaffRole::Admin),
            needs_password: !s.has_signed && !s.by_certificate,
            sign_base: format!("/devices/{}/entries/", path_segment(&id)),
            message,
            kinds: FORM_KINDS,
            meanings: MEANINGS,
            chart_width: super::chart::WIDTH,
            chart_height: super::chart::HEIGHT,
        },
    )
}

/// The device page's HTML for `detail` as a biomed who has not signed yet sees it, without
/// telemetry: what the page costs the server besides the TLS and the session (the web
/// benchmark, `tests/bin/web-bench.rs`).
pub fn device_html(detail: data::DeviceDetail) -> Result<String, askama::Error> {
    DevicePage {
        user: Some(UserView {
            name: "Bench Biomed".into(),
            role: StaffRole::Biomed.to_string(),
            csrf: String::new(),
        }),
        action: format!("/devices/{}/events", path_segment(&detail.summary.id)),
        sign_base: format!("/devices/{}/entries/", path_segment(&detail.summary.id)),
        d: detail,
        charts: Vec::new(),
        can_sign: true,
        can_approve: false,
        needs_password: true,
        message: String::new(),
        kinds: FORM_KINDS,
        meanings: MEANINGS,
        chart_width: super::chart::WIDTH,
        chart_height: super::chart::HEIGHT,
    }
    .render()
}

async fn device_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some((_, s)) = session(&web, &headers) else {
        return to_login(&format!("/devices/{}", path_segment(&id)));
    };
    render_device(&web, &s, id, StatusCode::OK, String::new()).await
}

#[derive(Deserialize)]
struct RecordForm {
    csrf: String,
    kind: String,
    occurred_at: Option<String>,
    result: Option<String>,
    notes: Option<String>,
    meaning: String,
    corrects: Option<String>,
    reason: Option<String>,
    password: Option<String>,
}

/// The session and its token of a form posted from device `id`'s page, whose `csrf` field must
/// be the session's; otherwise the answer to send.
fn form_session(
    web: &Web,
    headers: &HeaderMap,
    id: &str,
    csrf: &str,
) -> Result<(String, Session), Box<Response>> {
    let Some((token, s)) = session(web, headers) else {
        return Err(Box::new(to_login(&format!(
            "/devices/{}",
            path_segment(id)
        ))));
    };
    if csrf != s.csrf {
        return Err(Box::new(page_error(
            StatusCode::FORBIDDEN,
            "The form did not come from this session's page; reload the page and try again.",
        )));
    }
    Ok((token, s))
}

/// A `datetime-local` value (`2026-12-06T14:30`, taken as UTC) or RFC 3339.
fn occurred_at(v: &str) -> Option<String> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    if v.len() == 16 {
        return Some(format!("{v}:00Z"));
    }
    Some(v.to_owned())
}

async fn record(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    Path(id): Path<String>,
    Form(f): Form<RecordForm>,
) -> Response {
    let (token, s) = match form_session(&web, &headers, &id, &f.csrf) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    let again = |status, msg: String| {
        let web = web.clone();
        let s = s.clone();
        let id = id.clone();
        async move { render_device(&web, &s, id, status, msg).await }
    };
    if !can_sign(s.role) {
        return again(
            StatusCode::FORBIDDEN,
            format!("A {} may not record or sign events.", s.role),
        )
        .await;
    }
    if !MEANINGS.contains(&f.meaning.as_str()) {
        return again(
            StatusCode::BAD_REQUEST,
            format!(
                "Meaning {:?} is not one of performed, corrected.",
                f.meaning
            ),
        )
        .await;
    }
    if !FORM_KINDS.contains(&f.kind.as_str()) {
        return again(
            StatusCode::BAD_REQUEST,
            format!("Kind {:?} cannot be recorded here.", f.kind),
        )
        .await;
    }
    if let Err((status, msg)) = confirm_signer(&web, &token, &s, &peer, f.password.as_deref()).await
    {
        return again(status, msg).await;
    }
    let corrects = match f
        .corrects
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        None => None,
        Some(c) => match c.trim_start_matches('#').parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return again(
                    StatusCode::BAD_REQUEST,
                    format!("Corrects {c:?} is not an entry number."),
                )
                .await
            }
        },
    };
    let maintenance = |name: &str, v: &str| ComponentRequest {
        name: name.into(),
        class: "maintenance".into(),
        value: serde_json::Value::String(v.into()),
    };
    let mut components = Vec::new();
    if let Some(r) = f.result.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        components.push(maintenance("result", r));
    }
    if let Some(n) = f.notes.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        components.push(maintenance("notes", n));
    }
    let req = EventRequest {
        event_id: Some(format!("web:{}", random_token())),
        kind: f.kind.clone(),
        device_id: id.clone(),
        occurred_at: f.occurred_at.as_deref().and_then(occurred_at),
        components,
        corrects,
        corrects_event_id: None,
        // The signature component is written by service::records, as for POST /v1/events.
        meaning: Some(f.meaning.clone()),
        reason: f.reason.clone(),
    };
    match records::record_event(&web.node, &s.identity, req).await {
        Ok(r) => {
            web.auth.mark_signed(&token);
            tracing::info!(target: "medledger::web::auth", account = %s.account, device = %id, seq = r.seq, meaning = %f.meaning, kind = %f.kind, "event signed on the web page");
            Redirect::to(&format!("/devices/{}#entry-{}", path_segment(&id), r.seq)).into_response()
        }
        Err(e) => {
            let (status, msg) = record_refusal(&e);
            again(status, msg).await
        }
    }
}

/// §11.200: the first signing of an account's session uses both components (id and
/// password); a certificate session signs from a connection that presents its certificate.
async fn confirm_signer(
    web: &Web,
    token: &str,
    s: &Session,
    peer: &Option<axum::Extension<Peer>>,
    password: Option<&str>,
) -> Result<(), (StatusCode, String)> {
    if s.by_certificate {
        let same = peer
            .as_ref()
            .is_some_and(|p| p.0 .0.fingerprint == s.identity.fingerprint);
        if !same {
            tracing::warn!(target: "medledger::web::auth", account = %s.account, "signature refused: the connection does not present the session's certificate");
            return Err((
                StatusCode::FORBIDDEN,
                "Signature not made: this session signed in with a staff certificate, and the \
                 browser did not present it with this request."
                    .into(),
            ));
        }
        return Ok(());
    }
    if s.has_signed {
        return Ok(());
    }
    match web
        .auth
        .check_password(&s.account, password.unwrap_or_default())
        .await
    {
        Ok(_) => Ok(()),
        Err(r) => {
            if matches!(r, Refused::Locked(_) | Refused::Disabled) {
                web.auth.end_session(token);
            }
            tracing::warn!(target: "medledger::web::auth", account = %s.account, "signature refused: password not confirmed");
            Err((
                StatusCode::UNAUTHORIZED,
                format!("Signature not made: {}", refusal_text(&r)),
            ))
        }
    }
}

/// What the page says when `service::records` refuses: the API's own words.
fn record_refusal(e: &RecordError) -> (StatusCode, String) {
    let status = match e {
        RecordError::Forbidden { .. } => StatusCode::FORBIDDEN,
        RecordError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        RecordError::NotFound { .. } => StatusCode::NOT_FOUND,
        RecordError::Write(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let field = match e {
        RecordError::Forbidden { field: Some(f), .. }
        | RecordError::Invalid { field: Some(f), .. }
        | RecordError::NotFound { field: Some(f), .. } => format!(" ({f})"),
        _ => String::new(),
    };
    (status, format!("Not recorded{field}: {e}."))
}

#[derive(Deserialize)]
struct SignForm {
    csrf: String,
    meaning: String,
    comment: Option<String>,
    password: Option<String>,
}

/// Reviews or approves entry `seq` (`POST /v1/entries/{seq}/signatures` on the API).
async fn sign(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<Peer>>,
    Path((id, seq)): Path<(String, String)>,
    Form(f): Form<SignForm>,
) -> Response {
    let (token, s) = match form_session(&web, &headers, &id, &f.csrf) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    let again = |status, msg: String| {
        let web = web.clone();
        let s = s.clone();
        let id = id.clone();
        async move { render_device(&web, &s, id, status, msg).await }
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return again(
            StatusCode::BAD_REQUEST,
            format!("Entry {seq:?} is not an entry number."),
        )
        .await;
    };
    let meaning = match Meaning::parse(&f.meaning) {
        Some(m @ (Meaning::Reviewed | Meaning::Approved)) => m,
        _ => {
            return again(
                StatusCode::BAD_REQUEST,
                format!("Meaning {:?} is not one of reviewed, approved.", f.meaning),
            )
            .await
        }
    };
    if let Err((status, msg)) = confirm_signer(&web, &token, &s, &peer, f.password.as_deref()).await
    {
        return again(status, msg).await;
    }
    match records::sign_entry(&web.node, &s.identity, seq, meaning, f.comment.clone()).await {
        Ok(r) => {
            web.auth.mark_signed(&token);
            tracing::info!(target: "medledger::web::auth", account = %s.account, device = %id, seq = r.seq, of = seq, meaning = meaning.as_str(), "entry signed on the web page");
            Redirect::to(&format!("/devices/{}#entry-{}", path_segment(&id), r.seq)).into_response()
        }
        Err(e) => {
            let (status, msg) = record_refusal(&e);
            again(status, msg).await
        }
    }
}

// ---------------------------------------------------------------------------------------
// PM completion report

#[derive(Template)]
#[template(path = "report.html")]
struct ReportPage {
    user: Option<UserView>,
    r: data::PmReport,
    from: String,
    to: String,
}

#[derive(Deserialize, Default)]
struct ReportQuery {
    from: Option<String>,
    to: Option<String>,
}

fn parse_date_ms(d: &str) -> Option<i64> {
    let f = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(d.trim(), &f).ok()?;
    Some((date.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
}

async fn pm_report(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<ReportQuery>,
) -> Response {
    let Some((_, s)) = session(&web, &headers) else {
        return to_login("/reports/pm");
    };
    let today = time::OffsetDateTime::now_utc().date();
    let f = time::macros::format_description!("[year]-[month]-[day]");
    let default_from = today
        .replace_day(1)
        .ok()
        .and_then(|d| d.format(&f).ok())
        .unwrap_or_default();
    let default_to = today
        .next_day()
        .and_then(|d| d.format(&f).ok())
        .unwrap_or_default();
    let from = q.from.filter(|v| !v.is_empty()).unwrap_or(default_from);
    let to = q.to.filter(|v| !v.is_empty()).unwrap_or(default_to);
    let (Some(from_ms), Some(to_ms)) = (parse_date_ms(&from), parse_date_ms(&to)) else {
        return page_error(
            StatusCode::BAD_REQUEST,
            "From and to are dates as YYYY-MM-DD.",
        );
    };
    let node = web.node.clone();
    let r = match tokio::task::spawn_blocking(move || {
        data::source().pm_report((&*node).into(), from_ms, to_ms)
    })
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    html(
        StatusCode::OK,
        &ReportPage {
            user: Some((&s).into()),
            r,
            from,
            to,
        },
    )
}

// ---------------------------------------------------------------------------------------
// What receipt.js fetches: the gateways' keys, the site root and an entry's receipt (the same
// documents as GET /v1/keys and GET /v1/entries/{seq}/receipt, for a signed-in session).

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({"error": "not signed in"})),
    )
        .into_response()
}

async fn keys(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if session(&web, &headers).is_none() {
        return unauthorized();
    }
    match web.node.store.node_keys() {
        Ok(k) => Json(
            k.into_iter()
                .map(|(node_id, key)| {
                    serde_json::json!({"node_id": node_id, "public_key": hex::encode(key)})
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => internal(e),
    }
}

/// The site root the receipt badge checks the keys' endorsements against (docs/identity.md,
/// "The receipt badge's site root"): the root this gateway trusts (`tls.ca_file`), which the
/// browser pins and shows by subject and fingerprint for the reader to compare with the site's.
async fn site_root(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if session(&web, &headers).is_none() {
        return unauthorized();
    }
    match web.node.site_root_pem() {
        Some(pem) => Json(serde_json::json!({ "certificate_pem": pem })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "this gateway has no site root (tls.ca_file)"})),
        )
            .into_response(),
    }
}

async fn receipt(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(seq): Path<String>,
) -> Response {
    let Some((_, s)) = session(&web, &headers) else {
        return unauthorized();
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return (StatusCode::BAD_REQUEST, "seq is not a number").into_response();
    };
    // Cut like the API's receipts: at the latest co-signed checkpoint when it holds the entry,
    // carrying its voter set, co-signatures and the keys' endorsements (§9.5, §9.6).
    let head = match ledger_node::export::recorded_cut(&web.node.store, seq.saturating_add(1)) {
        Ok(Some(c)) => c,
        Ok(None) => match web.node.tree_head() {
            Ok(h) => h,
            Err(e) => return internal(e),
        },
        Err(e) => return internal(e),
    };
    if seq >= head.size {
        return (StatusCode::NOT_FOUND, "no such entry").into_response();
    }
    let classes = crate::service::api::staff_classes(Some(s.role));
    let receipt = ledger_node::export::make_receipt(&web.node.store, seq, &head, &Some(classes))
        .map_err(anyhow::Error::from)
        .and_then(|mut r| {
            r.endorsements =
                crate::service::revocation::endorsements_of(&web.node.store, &r.node_keys)?;
            Ok(r)
        });
    match receipt {
        Ok(r) => Json(r).into_response(),
        Err(e) => internal(e),
    }
}

async fn static_file(Path(file): Path<String>) -> Response {
    let (body, ct) = match file.as_str() {
        "receipt.js" => (RECEIPT_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return page_error(StatusCode::NOT_FOUND, "No such file."),
    };
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site_and_segments_are_encoded() {
        assert_eq!(safe_next(Some("/devices/x")), "/devices/x");
        assert_eq!(safe_next(Some("//evil.example/")), "/devices");
        assert_eq!(safe_next(Some("https://evil.example/")), "/devices");
        assert_eq!(safe_next(None), "/devices");
        assert_eq!(
            path_segment("(01)00884838035249(21)PMP1"),
            "%2801%2900884838035249%2821%29PMP1"
        );
        assert_eq!(path_segment("+A1/x"), "%2BA1%2Fx");
        assert_eq!(
            occurred_at("2026-12-06T14:30").as_deref(),
            Some("2026-12-06T14:30:00Z")
        );
        assert_eq!(occurred_at(" "), None);
    }
}
