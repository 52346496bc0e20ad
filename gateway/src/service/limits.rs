//! What keeps one client from starving the others on a listener: connection limits (per source
//! IP while a TLS handshake runs, per identity afterwards, a pool reserved for peer gateways),
//! the timeouts of a connection (request head, request body, idle keep-alive) and rate-limited
//! warnings about the clients that hit them.
//!
//! A client has no identity until its handshake ends, so handshakes are counted per source IP
//! and in a global pool of their own; once the certificate is known a connection moves to the
//! pool of its kind: peer gateways to `[api] peer_connections`, staff and devices to
//! `max_connections` and `max_connections_per_identity`. Limits are checked without waiting:
//! a connection over one is closed at once and logged, so no attacker can queue honest clients
//! behind its own connections.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use certs::{Identity, Profile};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::ApiConfig;

/// A poisoned lock only means another connection's task panicked while holding it; the counts
/// inside are still whole numbers, so carry on with them.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The timeouts of one listener (`[api] *_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To finish the TLS handshake.
    pub handshake: Duration,
    /// For a request's head, from its first byte (the first request's: from the handshake).
    pub header: Duration,
    /// For a request's whole body, from its head.
    pub body: Duration,
    /// With no request in progress.
    pub idle: Duration,
}

impl Timeouts {
    pub fn from_config(api: &ApiConfig) -> Self {
        Timeouts {
            handshake: Duration::from_millis(api.handshake_timeout_ms),
            header: Duration::from_millis(api.header_read_timeout_ms),
            body: Duration::from_millis(api.body_read_timeout_ms),
            idle: Duration::from_millis(api.idle_timeout_ms),
        }
    }
}

/// How many slots each key holds, each at most `max`.
#[derive(Debug)]
struct Counter<K> {
    counts: Mutex<HashMap<K, usize>>,
    max: usize,
}

/// One slot of a [`Counter`], given back on drop.
#[derive(Debug)]
struct CounterSlot<K: Eq + Hash> {
    counter: Arc<Counter<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Counter<K> {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Counter {
            counts: Mutex::new(HashMap::new()),
            max,
        })
    }

    fn try_take(self: &Arc<Self>, key: K) -> Option<CounterSlot<K>> {
        let mut counts = lock(&self.counts);
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(CounterSlot {
            counter: self.clone(),
            key,
        })
    }
}

impl<K: Eq + Hash> Drop for CounterSlot<K> {
    fn drop(&mut self) {
        let mut counts = lock(&self.counter.counts);
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                // Forget the key, so the map holds only clients connected now.
                counts.remove(&self.key);
            }
        }
    }
}

/// Why a connection was closed before it was served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `max_handshakes` handshakes are in progress.
    Handshakes { max: usize },
    /// `max_handshakes_per_ip` handshakes from this address are in progress.
    HandshakesFromIp { max: usize },
    /// `max_connections` staff and device connections are open.
    Clients { max: usize },
    /// This identity holds `max_connections_per_identity` connections.
    Identity { max: usize },
    /// `peer_connections` peer gateway connections are open.
    Peers { max: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Handshakes { max } => {
                write!(f, "{max} tls handshakes in progress (api.max_handshakes)")
            }
            Refusal::HandshakesFromIp { max } => write!(
                f,
                "{max} tls handshakes in progress from this address (api.max_handshakes_per_ip)"
            ),
            Refusal::Clients { max } => write!(
                f,
                "{max} staff and device connections open (api.max_connections)"
            ),
            Refusal::Identity { max } => write!(
                f,
                "this identity holds {max} connections (api.max_connections_per_identity)"
            ),
            Refusal::Peers { max } => write!(
                f,
                "{max} peer gateway connections open (api.peer_connections)"
            ),
        }
    }
}

/// The connection limits of one listener.
#[derive(Debug)]
pub struct ConnLimits {
    handshakes: Arc<Semaphore>,
    max_handshakes: usize,
    per_ip: Arc<Counter<IpAddr>>,
    clients: Arc<Semaphore>,
    max_clients: usize,
    per_identity: Arc<Counter<(Profile, String)>>,
    peers: Arc<Semaphore>,
    max_peers: usize,
}

/// A handshake in progress (or, on the enrollment listener, a whole connection).
#[derive(Debug)]
pub struct HandshakeSlot {
    _pool: OwnedSemaphorePermit,
    _ip: CounterSlot<IpAddr>,
}

/// An open connection of a known identity.
#[derive(Debug)]
pub struct ConnectionSlot {
    _pool: OwnedSemaphorePermit,
    _identity: Option<CounterSlot<(Profile, String)>>,
}

impl ConnLimits {
    /// The limits of the mutual-TLS listener.
    pub fn new(api: &ApiConfig) -> Self {
        Self::with(
            api.max_handshakes,
            api.max_handshakes_per_ip,
            api.max_connections,
            api.max_connections_per_identity,
            api.peer_connections,
        )
    }

    fn with(
        max_handshakes: usize,
        per_ip: usize,
        max_clients: usize,
        per_identity: usize,
        max_peers: usize,
    ) -> Self {
        ConnLimits {
            handshakes: Arc::new(Semaphore::new(max_handshakes)),
            max_handshakes,
            per_ip: Counter::new(per_ip),
            clients: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            per_identity: Counter::new(per_identity),
            peers: Arc::new(Semaphore::new(max_peers)),
            max_peers,
        }
    }

    /// The limits of the enrollment listener, whose clients never get an identity: `max`
    /// connections, `per_ip` from one address, each held as a [`HandshakeSlot`] for the
    /// connection's lifetime.
    pub fn enrollment(max: usize, per_ip: usize) -> Self {
        Self::with(max, per_ip.min(max), 0, 0, 0)
    }

    /// A slot for a handshake from `ip`, or why not. The address is checked first, so one
    /// address that floods the listener only ever fills its own share of the pool.
    pub fn handshake(&self, ip: IpAddr) -> Result<HandshakeSlot, Refusal> {
        let ip_slot = self.per_ip.try_take(ip).ok_or(Refusal::HandshakesFromIp {
            max: self.per_ip.max,
        })?;
        let pool =
            self.handshakes
                .clone()
                .try_acquire_owned()
                .map_err(|_| Refusal::Handshakes {
                    max: self.max_handshakes,
                })?;
        Ok(HandshakeSlot {
            _pool: pool,
            _ip: ip_slot,
        })
    }

    /// A slot for a connection of `identity`, or why not. Gateways use the reserved peer pool,
    /// everyone else the client pool and their own share of it.
    pub fn connection(&self, identity: &Identity) -> Result<ConnectionSlot, Refusal> {
        if identity.profile == Profile::Gateway {
            let pool = self
                .peers
                .clone()
                .try_acquire_owned()
                .map_err(|_| Refusal::Peers {
                    max: self.max_peers,
                })?;
            return Ok(ConnectionSlot {
                _pool: pool,
                _identity: None,
            });
        }
        let own = self
            .per_identity
            .try_take((identity.profile, identity.id.clone()))
            .ok_or(Refusal::Identity {
                max: self.per_identity.max,
            })?;
        let pool = self
            .clients
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Clients {
                max: self.max_clients,
            })?;
        Ok(ConnectionSlot {
            _pool: pool,
            _identity: Some(own),
        })
    }
}

/// Lets through at most `burst` warnings of one kind about one client (a source address or an
/// identity) in each `window`, and says how many were left out: a client opening thousands of bad connections
/// must not flood the journal, and the first warnings about it still name each connection.
#[derive(Debug)]
pub struct WarnLimiter {
    window: Duration,
    burst: u32,
    seen: Mutex<HashMap<String, (Instant, u32, u64)>>,
}

impl WarnLimiter {
    pub fn new(window: Duration, burst: u32) -> Self {
        WarnLimiter {
            window,
            burst,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when a warning of kind `what` about client `who` may be logged now, `n` being
    /// how many of them were left out since the last one logged; `None` when this one is to be
    /// left out. Kinds are counted apart, so a flood of one does not hide the others.
    pub fn allow(&self, who: &str, what: &str) -> Option<u64> {
        self.allow_at(&format!("{who} {what}"), Instant::now())
    }

    fn allow_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = lock(&self.seen);
        if seen.len() > 4096 {
            // Bounded memory whatever the number of sources: forget finished windows.
            seen.retain(|_, (start, _, left_out)| {
                now.duration_since(*start) < self.window || *left_out > 0
            });
        }
        let entry = seen.entry(key.to_string()).or_insert((now, 0, 0));
        if now.duration_since(entry.0) >= self.window {
            entry.0 = now;
            entry.1 = 0;
        }
        if entry.1 < self.burst {
            entry.1 += 1;
            Some(std::mem::take(&mut entry.2))
        } else {
            entry.2 += 1;
            None
        }
    }
}

/// What a connection is doing, for its timeouts: requests in progress, since when it has been
/// idle, and since when a request head has been arriving.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    idle_since: Instant,
    head_since: Option<Instant>,
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head did not arrive in time.
    Head,
    /// No request came for too long.
    Idle,
}

impl Activity {
    /// A connection whose handshake just ended: its first request head is due now.
    pub fn new() -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: now,
                head_since: Some(now),
            }),
            changed: Notify::new(),
        })
    }

    /// Bytes arrived: with no request in progress they are the start of a request head.
    fn on_read(&self) {
        let mut s = lock(&self.state);
        if s.in_flight == 0 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A request's head arrived and it is being served until the guard drops (with the end of
    /// its response).
    fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut s = lock(&self.state);
        s.in_flight += 1;
        s.head_since = None;
        drop(s);
        self.changed.notify_one();
        RequestGuard(self.clone())
    }

    /// When the connection is to be closed and why, as things are now; `None` while a request
    /// is in progress (its body has a deadline of its own).
    pub fn deadline(&self, t: &Timeouts) -> Option<(Instant, Expiry)> {
        let s = lock(&self.state);
        if s.in_flight > 0 {
            return None;
        }
        Some(match s.head_since {
            Some(at) => (at + t.header, Expiry::Head),
            None => (s.idle_since + t.idle, Expiry::Idle),
        })
    }

    /// Resolves at the next change of state (a request starting or ending, a head starting).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// A request in progress; ends on drop.
#[derive(Debug)]
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut s = lock(&self.0.state);
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
        drop(s);
        self.0.changed.notify_one();
    }
}

/// The connection's IO, noting every read for its [`Activity`].
#[derive(Debug)]
pub struct Tracked<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO> Tracked<IO> {
    pub fn new(io: IO, activity: Arc<Activity>) -> Self {
        Tracked { io, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Who is on a connection (for log lines) and what it is doing (a request extension).
#[derive(Debug, Clone)]
pub struct Conn {
    pub activity: Arc<Activity>,
    /// `profile:id` of the client, or its address where it has no identity.
    pub who: Arc<str>,
    /// The client's address and port.
    pub peer: std::net::SocketAddr,
}

/// State of [`request_deadlines`].
#[derive(Debug, Clone)]
pub struct Deadlines {
    pub timeouts: Timeouts,
    pub warn: Arc<WarnLimiter>,
}

/// Marks each request in progress on its connection's [`Activity`] until its response has been
/// sent, and gives its body `timeouts.body` to arrive: a body that does not is answered 408 and
/// the connection closed. An unfinished body would otherwise hold its connection, its handler
/// and its identity's connection slot forever.
pub async fn request_deadlines(State(d): State<Deadlines>, req: Request, next: Next) -> Response {
    let conn = req.extensions().get::<Conn>().cloned();
    let guard = conn.as_ref().map(|c| c.activity.request_started());
    let timed_out = Arc::new(AtomicBool::new(false));
    let req = if req.body().is_end_stream() {
        req
    } else {
        let timed_out = timed_out.clone();
        req.map(|inner| {
            Body::new(DeadlineBody {
                inner,
                sleep: Box::pin(tokio::time::sleep(d.timeouts.body)),
                limit: d.timeouts.body,
                timed_out,
            })
        })
    };
    let resp = next.run(req).await;
    let resp = if timed_out.load(Ordering::Relaxed) {
        let who = conn.as_ref().map_or("unknown", |c| &c.who);
        let peer = conn
            .as_ref()
            .map(|c| c.peer.to_string())
            .unwrap_or_default();
        if let Some(left_out) = d.warn.allow(who, "body") {
            tracing::warn!(%peer, client = %who, limit_ms = d.timeouts.body.as_millis() as u64, left_out, "request body not received in time (api.body_read_timeout_ms); answered 408 and closing the connection");
        }
        body_timeout_response(d.timeouts.body)
    } else {
        resp
    };
    match guard {
        Some(guard) => resp.map(|inner| {
            Body::new(GuardedBody {
                inner,
                _guard: guard,
            })
        }),
        None => resp,
    }
}

/// 408 as an RFC 9457 problem document, closing the connection: the rest of the body may still
/// come, and nothing tells it apart from a next request.
fn body_timeout_response(limit: Duration) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Request Timeout",
        "status": 408,
        "detail": format!(
            "the request body did not arrive within {} ms (api.body_read_timeout_ms)",
            limit.as_millis()
        ),
    });
    (
        axum::http::StatusCode::REQUEST_TIMEOUT,
        [
            (axum::http::header::CONTENT_TYPE, "application/problem+json"),
            (axum::http::header::CONNECTION, "close"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// The body of a request answered 503 before it was read (a connection over a limit), as the
/// whole HTTP/1.1 response: the connection never reaches hyper.
pub fn refusal_response(refusal: &Refusal) -> Vec<u8> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": format!("connection refused: {refusal}"),
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The error a request body gives when it did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {} ms", .0.as_millis())]
struct BodyTimedOut(Duration);

/// A request body that fails once `sleep` ends before its last frame.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    timed_out: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(this.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted as in progress until it is dropped (sent).
struct GuardedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(profile: Profile, id: &str) -> Identity {
        Identity {
            profile,
            id: id.into(),
            role: None,
            name: None,
            fingerprint: String::new(),
            serial: String::new(),
            server_auth: false,
            dns_names: Vec::new(),
            ip_addrs: Vec::new(),
            not_before: time::OffsetDateTime::UNIX_EPOCH,
            not_after: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn handshakes_are_limited_per_address_then_globally() {
        let l = ConnLimits::with(3, 2, 10, 5, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = l.handshake(a).expect("first from a");
        let _a2 = l.handshake(a).expect("second from a");
        assert_eq!(
            l.handshake(a).expect_err("over the limit"),
            Refusal::HandshakesFromIp { max: 2 }
        );
        let _b1 = l.handshake(b).expect("b has its own share");
        assert_eq!(
            l.handshake(b).expect_err("over the limit"),
            Refusal::Handshakes { max: 3 }
        );
        drop(a1);
        l.handshake(a).expect("a slot given back");
    }

    #[test]
    fn identities_have_their_share_and_gateways_their_own_pool() {
        let l = ConnLimits::with(10, 10, 3, 2, 1);
        let alice = identity(Profile::Staff, "alice");
        let bob = identity(Profile::Staff, "bob");
        let gw = identity(Profile::Gateway, "2");
        let _a1 = l.connection(&alice).expect("alice 1");
        let a2 = l.connection(&alice).expect("alice 2");
        assert_eq!(
            l.connection(&alice).expect_err("over the limit"),
            Refusal::Identity { max: 2 }
        );
        let _b1 = l.connection(&bob).expect("bob 1");
        assert_eq!(
            l.connection(&bob).expect_err("over the limit"),
            Refusal::Clients { max: 3 }
        );
        // The client pool is full; the peer pool is not touched by it.
        let _g1 = l.connection(&gw).expect("gateway");
        assert_eq!(
            l.connection(&gw).expect_err("over the limit"),
            Refusal::Peers { max: 1 }
        );
        drop(a2);
        l.connection(&bob).expect("a slot given back");
    }

    #[test]
    fn warnings_come_in_bursts_and_count_what_was_left_out() {
        let w = WarnLimiter::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(w.allow_at("ip", t0), Some(0));
        assert_eq!(w.allow_at("ip", t0), Some(0));
        assert_eq!(w.allow_at("ip", t0), None);
        assert_eq!(w.allow_at("ip", t0 + Duration::from_secs(9)), None);
        assert_eq!(w.allow_at("other", t0), Some(0));
        assert_eq!(w.allow_at("ip", t0 + Duration::from_secs(11)), Some(2));
    }

    #[tokio::test]
    async fn a_connection_is_due_for_a_head_then_idle() {
        let t = Timeouts {
            handshake: Duration::from_secs(1),
            header: Duration::from_secs(2),
            body: Duration::from_secs(3),
            idle: Duration::from_secs(4),
        };
        // Each deadline lies between (time before the step) + timeout and (time after) + timeout.
        let within = |before: Instant, d: Option<(Instant, Expiry)>, want: Expiry, add| {
            let (at, why) = d.expect("a deadline");
            assert_eq!(why, want);
            assert!(at >= before + add && at <= Instant::now() + add, "{want:?}");
        };
        let before = Instant::now();
        let a = Activity::new();
        within(before, a.deadline(&t), Expiry::Head, t.header);
        let g = a.request_started();
        assert_eq!(
            a.deadline(&t),
            None,
            "no deadline while a request is served"
        );
        let before = Instant::now();
        drop(g);
        within(before, a.deadline(&t), Expiry::Idle, t.idle);
        let before = Instant::now();
        a.on_read();
        within(before, a.deadline(&t), Expiry::Head, t.header);
    }
}
