//! Hostile clients against a real three-gateway cluster: one staff certificate opens 1,000
//! mutual-TLS connections to a follower and stalls every one of them (half in the middle of a
//! request head, half after a head announcing a body that never comes), while raw TCP
//! connections from another address never start their handshake. Meanwhile another staff member
//! reads and writes through the same follower. The gateway must keep that member's reads from
//! waiting on the stalled connections (the p99 is printed; docs/benchmarks.md records it),
//! commit the writes, keep Raft quiet (same leader and term, no RPC timeout in any log), hold at
//! most its per-identity and per-address limits of the hostile connections and close every one of
//! them within the configured timeouts.
//!
//! A second test fills every gateway's staff and device pool before the cluster is initialised
//! and shows that election, replication and writes go on in the pool reserved for peers.
//!
//! Each party has its own loopback address (the gateways send from theirs with
//! `[api] source_address`), as different machines on a hospital network would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::StaffRole;
use medledger_tests::cluster::{eventually, staff_tls, start_nodes, status, Gateway, Site};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The listener's timeouts in this test (shorter than the defaults, so the test ends sooner).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(3000);
const HEADER_TIMEOUT: Duration = Duration::from_millis(3000);
const BODY_TIMEOUT: Duration = Duration::from_millis(3000);
/// The default limits, which the test leaves as they are.
const PER_IDENTITY: usize = 64;
const PER_IP_HANDSHAKES: usize = 16;

const STALLED: usize = 1000;
const RAW: usize = 200;
/// How late the test may see a connection closed after its timeout on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(4);

const GOOD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const HOSTILE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
const RAW_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 7);

/// Opening 1,000 connections and 200 more needs more descriptors than a default soft limit of
/// 1,024; the gateways started afterwards inherit the raised limit.
fn raise_open_files(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let soft = cur.current.unwrap_or(u64::MAX);
    if soft >= want {
        return;
    }
    let new = match cur.maximum {
        Some(hard) => want.min(hard),
        None => want,
    };
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(new),
            maximum: cur.maximum,
        },
    )
    .expect("raise RLIMIT_NOFILE");
    assert!(
        new >= 2048,
        "RLIMIT_NOFILE hard limit {new} is too low for this test"
    );
}

fn event(i: u64) -> Value {
    json!({
        "event_id": format!("hostile-ok-{i}"),
        "kind": "calibration",
        "device_id": format!("pump-{}", i % 5),
        "occurred_at": "2026-01-05T10:00:00Z",
        "components": [{"name": "result", "class": "maintenance", "value": "pass"}],
    })
}

/// What became of one hostile connection.
#[derive(Debug)]
struct Stalled {
    /// The client finished its side of the handshake and sent its partial request.
    opened: Instant,
    /// The server closed it (EOF or reset seen by the client); `None`: still open at the deadline.
    closed: Option<Instant>,
    /// What the server wrote before closing.
    answer: String,
    /// A head that stops in the middle (else: a head with a body that never comes).
    partial_head: bool,
}

/// Reads until the server closes the stream or `deadline`.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(
    mut s: S,
    deadline: Instant,
) -> (Option<Instant>, String) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => return (None, String::from_utf8_lossy(&answer).into_owned()),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    Some(Instant::now()),
                    String::from_utf8_lossy(&answer).into_owned(),
                )
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

/// Opens one TLS connection from `HOSTILE_IP` and sends a partial request; retried while the
/// listener turns it away before the handshake ends (its per-address handshake limit).
async fn open_stalled(
    connector: tokio_rustls::TlsConnector,
    target: SocketAddr,
    i: usize,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Instant,
    bool,
    usize,
) {
    let mut turned_away = 0;
    loop {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(HOSTILE_IP.into(), 0))
            .expect("bind hostile address");
        let attempt = async {
            let tcp = sock.connect(target).await?;
            connector
                .connect(ServerName::IpAddress(target.ip().into()), tcp)
                .await
        };
        match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(Ok(mut tls)) => {
                let partial_head = i.is_multiple_of(2);
                let req: &[u8] = if partial_head {
                    b"GET /v1/head HTTP/1.1\r\nhost: gw\r\nx-stall: "
                } else {
                    b"POST /v1/events HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{\"kind\":"
                };
                // The server may already have closed it (over the identity limit): that is
                // seen by the reader.
                let _ = tls.write_all(req).await;
                let _ = tls.flush().await;
                return (tls, Instant::now(), partial_head, turned_away);
            }
            _ => {
                turned_away += 1;
                assert!(
                    turned_away < 200,
                    "hostile connection {i}: turned away 200 times"
                );
                tokio::task::yield_now().await;
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let i = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted[i.min(sorted.len() - 1)]
}

/// Largest number of intervals open at one moment.
fn max_overlap(intervals: &[(Instant, Instant)]) -> usize {
    let mut edges: Vec<(Instant, i32)> = Vec::new();
    for (a, b) in intervals {
        edges.push((*a, 1));
        edges.push((*b, -1));
    }
    // Closes before opens at the same instant.
    edges.sort();
    let (mut cur, mut max) = (0i64, 0i64);
    for (_, d) in edges {
        cur += i64::from(d);
        max = max.max(cur);
    }
    max as usize
}

fn log_lines(dir: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("gateway.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_of_one_identity_starve_no_one() {
    raise_open_files(8192);
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let nodes: Vec<Gateway> = (1..=3u64)
        .map(|id| {
            let ip = Ipv4Addr::new(127, 0, 0, 1 + id as u8);
            Gateway::with_ip(
                &site,
                id,
                ip,
                &format!(
                    "source_address = \"{ip}\"\nhandshake_timeout_ms = {}\nheader_read_timeout_ms = {}\nbody_read_timeout_ms = {}\n",
                    HANDSHAKE_TIMEOUT.as_millis(),
                    HEADER_TIMEOUT.as_millis(),
                    BODY_TIMEOUT.as_millis()
                ),
            )
        })
        .collect();
    let voters: Vec<(u64, String)> = nodes.iter().map(|g| (g.id, g.addr())).collect();
    let nodes = start_nodes(&site, nodes, &voters).await;
    let admin = site.staff_client("it-admin", StaffRole::Admin);

    // The target is a follower: the leader's heartbeats and appends reach it through the
    // listener under attack, so a starved listener shows as an election.
    let first = eventually("a leader", Duration::from_secs(30), || {
        status(&admin, &voters[0].1)
    })
    .await;
    let leader = first["leader"].as_u64().expect("leader id");
    let target_node = nodes.iter().find(|g| g.id != leader).expect("a follower");
    let target: SocketAddr = target_node.addr().parse().expect("addr");
    let mut terms_before = Vec::new();
    for g in &nodes {
        let s = status(&admin, &g.addr()).await.expect("status");
        terms_before.push((s["term"].as_u64(), s["leader"].as_u64()));
    }

    // Another staff member, on a keep-alive connection of their own.
    let alice_tls = staff_tls(&site.ca, "alice", StaffRole::Biomed).expect("alice");
    let alice = reqwest::Client::builder()
        .use_preconfigured_tls(alice_tls.clone())
        .local_address(IpAddr::from(GOOD_IP))
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let head_url = format!("https://{target}/v1/head");
    let r = alice.get(&head_url).send().await.expect("first head");
    assert!(r.status().is_success(), "head: {}", r.status());

    let stop = tokio_util::sync::CancellationToken::new();
    // The reads run on a thread and runtime of their own, so that they measure the gateway and
    // not the queue of this process's runtime, busy with the attacker's 1,000 handshakes.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let reads = {
        let (tls, stop, url) = (alice_tls.clone(), stop.clone(), head_url.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("reader runtime");
            rt.block_on(async move {
                let alice = reqwest::Client::builder()
                    .use_preconfigured_tls(tls)
                    .local_address(IpAddr::from(GOOD_IP))
                    .timeout(Duration::from_secs(15))
                    .build()
                    .expect("client");
                // One keep-alive connection, made before the attack.
                let r = alice.get(&url).send().await.expect("first head");
                assert!(r.status().is_success(), "head: {}", r.status());
                let _ = r.bytes().await;
                let _ = ready_tx.send(());
                let mut lat = Vec::new();
                let mut failures = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.is_cancelled() {
                    tick.tick().await;
                    let t = Instant::now();
                    match alice.get(&url).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            lat.push(t.elapsed());
                        }
                        Ok(r) => failures.push(format!("status {}", r.status())),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (lat, failures)
            })
        })
    };
    ready_rx.await.expect("reader ready");
    let writes = {
        let (alice, stop) = (alice.clone(), stop.clone());
        let url = format!("https://{target}/v1/events");
        tokio::spawn(async move {
            let (mut ok, mut failures, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                let t = Instant::now();
                match alice.post(&url).json(&event(i)).send().await {
                    Ok(r) if r.status().as_u16() == 201 => ok += 1,
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
                slowest = slowest.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (ok, failures, slowest)
        })
    };
    // New connections of honest clients keep getting in too (their own address's handshakes).
    let fresh = {
        let (stop, tls) = (stop.clone(), alice_tls.clone());
        let url = format!("https://{target}/v1/whoami");
        tokio::spawn(async move {
            let (mut ok, mut failures, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
            while !stop.is_cancelled() {
                let c = reqwest::Client::builder()
                    .use_preconfigured_tls(tls.clone())
                    .local_address(IpAddr::from(GOOD_IP))
                    .timeout(Duration::from_secs(15))
                    .build()
                    .expect("client");
                let t = Instant::now();
                match c.get(&url).send().await {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
                slowest = slowest.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (ok, failures, slowest)
        })
    };

    let attack_start = Instant::now();
    // Raw TCP connections that never start a handshake.
    let mut raw = Vec::new();
    for _ in 0..RAW {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(RAW_IP.into(), 0))
            .expect("bind raw address");
        let tcp = sock.connect(target).await.expect("raw connect");
        let opened = Instant::now();
        let deadline = opened + HANDSHAKE_TIMEOUT + SLACK + Duration::from_secs(5);
        raw.push(tokio::spawn(async move {
            let (closed, _) = until_closed(tcp, deadline).await;
            (opened, closed)
        }));
    }

    // The hostile staff member: 1,000 finished handshakes, each left with a partial request.
    let mallory = Arc::new(staff_tls(&site.ca, "mallory", StaffRole::Biomed).expect("mallory"));
    let connector = tokio_rustls::TlsConnector::from(mallory);
    let opening = Arc::new(tokio::sync::Semaphore::new(8));
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let permit = opening.clone().acquire_owned().await.expect("semaphore");
        let connector = connector.clone();
        stalled.push(tokio::spawn(async move {
            let (tls, opened, partial_head, turned_away) = open_stalled(connector, target, i).await;
            drop(permit);
            let deadline =
                opened + HEADER_TIMEOUT.max(BODY_TIMEOUT) + SLACK + Duration::from_secs(5);
            let (closed, answer) = until_closed(tls, deadline).await;
            (
                Stalled {
                    opened,
                    closed,
                    answer,
                    partial_head,
                },
                turned_away,
            )
        }));
    }
    let mut results = Vec::new();
    let mut turned_away = 0;
    for t in stalled {
        let (s, n) = t.await.expect("hostile task");
        turned_away += n;
        results.push(s);
    }
    let mut raw_results = Vec::new();
    for t in raw {
        raw_results.push(t.await.expect("raw task"));
    }
    let attack = attack_start.elapsed();
    stop.cancel();
    let (mut lat, read_failures) = tokio::task::spawn_blocking(move || reads.join())
        .await
        .expect("join")
        .expect("reader thread");
    let (writes_ok, write_failures, slowest_write) = writes.await.expect("writes");
    let (fresh_ok, fresh_failures, slowest_fresh) = fresh.await.expect("fresh");

    // Another staff member's reads stayed fast.
    lat.sort();
    assert!(
        lat.len() >= 100,
        "only {} reads during the attack",
        lat.len()
    );
    let (p50, p99, max) = (
        percentile(&lat, 50),
        percentile(&lat, 99),
        lat[lat.len() - 1],
    );
    println!(
        "hostile: attack {:.1} s; alice GET /v1/head on the attacked follower: count {} p50 {:.1} ms p99 {:.1} ms max {:.1} ms, failures {}",
        attack.as_secs_f64(),
        lat.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        read_failures.len()
    );
    println!(
        "hostile: alice writes committed {writes_ok} (slowest {:.0} ms), fresh connections {fresh_ok} (slowest {:.0} ms)",
        slowest_write.as_secs_f64() * 1e3,
        slowest_fresh.as_secs_f64() * 1e3
    );
    assert!(read_failures.is_empty(), "reads failed: {read_failures:?}");
    // Starved reads would wait for stalled connections to time out (seconds); the latency target
    // itself (p99 under 100 ms, printed above) is recorded in docs/benchmarks.md, since a timed
    // assertion on a loaded 2-core machine cannot hold it reliably (352 ms once at a load of 5).
    assert!(
        p99 < Duration::from_secs(1) && max < HEADER_TIMEOUT,
        "reads starved: p99 {p99:?}, slowest {max:?} of {} reads (a stalled connection times \
         out after {HEADER_TIMEOUT:?})",
        lat.len()
    );
    assert!(writes_ok >= 3, "only {writes_ok} writes committed");
    assert!(
        write_failures.is_empty(),
        "writes failed: {write_failures:?}"
    );
    assert!(fresh_ok >= 2, "only {fresh_ok} fresh connections served");
    assert!(
        fresh_failures.is_empty(),
        "fresh connections failed: {fresh_failures:?}"
    );

    // The hostile connections: every one closed by the server; those over the identity limit at
    // once with a 503, the others (at most the limit at a time) by the head or body timeout.
    let still_open = results.iter().filter(|s| s.closed.is_none()).count();
    assert_eq!(still_open, 0, "hostile connections the server never closed");
    let refused: Vec<&Stalled> = results
        .iter()
        .filter(|s| s.answer.starts_with("HTTP/1.1 503"))
        .collect();
    let held: Vec<&Stalled> = results
        .iter()
        .filter(|s| !s.answer.starts_with("HTTP/1.1 503"))
        .collect();
    let held_intervals: Vec<(Instant, Instant)> = held
        .iter()
        .filter_map(|s| Some((s.opened, s.closed?)))
        .collect();
    let most_at_once = max_overlap(&held_intervals);
    let longest = held_intervals
        .iter()
        .map(|(a, b)| b.duration_since(*a))
        .max()
        .unwrap_or_default();
    let shortest = held_intervals
        .iter()
        .map(|(a, b)| b.duration_since(*a))
        .min()
        .unwrap_or_default();
    let body_408 = held
        .iter()
        .filter(|s| !s.partial_head && s.answer.starts_with("HTTP/1.1 408"))
        .count();
    let body_held = held.iter().filter(|s| !s.partial_head).count();
    println!(
        "hostile: {STALLED} stalled TLS connections ({turned_away} handshakes turned away first): {} refused with 503 over the identity limit, {} held ({} with a body, {body_408} of them answered 408), at most {most_at_once} at once, held {:.1} s to {:.1} s",
        refused.len(),
        held.len(),
        body_held,
        shortest.as_secs_f64(),
        longest.as_secs_f64()
    );
    assert!(
        refused.len() >= STALLED / 2,
        "the identity limit refused only {}",
        refused.len()
    );
    // The client sees each connection a little after the server opened it and a little after it
    // closed it, so its intervals overlap slightly more than the server's slots.
    assert!(
        most_at_once <= PER_IDENTITY + PER_IDENTITY / 4,
        "{most_at_once} connections of one identity held at once (limit {PER_IDENTITY})"
    );
    assert!(
        most_at_once >= PER_IDENTITY / 2,
        "only {most_at_once} held at once: the limit was never reached, the test shows nothing"
    );
    assert!(
        longest <= HEADER_TIMEOUT.max(BODY_TIMEOUT) + SLACK,
        "a stalled connection lived {longest:?}"
    );
    assert!(
        shortest + Duration::from_millis(200) >= HEADER_TIMEOUT.min(BODY_TIMEOUT),
        "a held connection was closed after {shortest:?}, before its timeout"
    );
    assert_eq!(
        body_408, body_held,
        "every request whose body never came is answered 408"
    );

    // Raw connections: at most the per-address handshake limit waited for the handshake timeout.
    let raw_open = raw_results.iter().filter(|(_, c)| c.is_none()).count();
    assert_eq!(raw_open, 0, "raw connections the server never closed");
    let raw_lives: Vec<Duration> = raw_results
        .iter()
        .filter_map(|(o, c)| Some(c.as_ref()?.duration_since(*o)))
        .collect();
    let raw_waited = raw_lives
        .iter()
        .filter(|d| **d + Duration::from_millis(200) >= HANDSHAKE_TIMEOUT)
        .count();
    let raw_longest = raw_lives.iter().max().copied().unwrap_or_default();
    println!(
        "hostile: {RAW} raw TCP connections without a handshake: {raw_waited} waited for the handshake timeout, the others closed at once; longest {:.1} s",
        raw_longest.as_secs_f64()
    );
    assert!(
        raw_waited <= PER_IP_HANDSHAKES,
        "{raw_waited} handshake-less connections from one address held"
    );
    assert!(
        raw_longest <= HANDSHAKE_TIMEOUT + SLACK,
        "a handshake-less connection lived {raw_longest:?}"
    );

    // Raft did not notice: same term and leader everywhere, no RPC timeout in any log.
    for (g, before) in nodes.iter().zip(&terms_before) {
        let s = status(&admin, &g.addr()).await.expect("status after");
        assert_eq!(
            (s["term"].as_u64(), s["leader"].as_u64()),
            *before,
            "node {}: term or leader changed during the attack",
            g.id
        );
        for needle in ["error replication to target", "timeout after", "RPCError"] {
            let lines = log_lines(&g.dir, needle);
            assert!(
                lines.is_empty(),
                "node {}: Raft trouble in its log: {lines:?}",
                g.id
            );
        }
    }
    // The attacked gateway said what it did, without a line per connection.
    let limit_lines = log_lines(&target_node.dir, "connection refused over a limit").len();
    let body_lines = log_lines(&target_node.dir, "request body not received in time").len();
    let head_lines = log_lines(&target_node.dir, "request head not received in time").len();
    println!(
        "hostile: the attacked gateway logged {limit_lines} limit refusals, {head_lines} head and {body_lines} body timeouts (rate-limited)"
    );
    assert!(limit_lines > 0 && body_lines > 0 && head_lines > 0);
    assert!(
        limit_lines < refused.len() / 2,
        "{limit_lines} log lines for {} refusals: not rate-limited",
        refused.len()
    );
}

/// Opens `n` TLS connections of `connector`'s identity from `HOSTILE_IP` to `target`, each left
/// in the middle of a request head; returns those the gateway holds and the answers of those it
/// turned away.
async fn stall_many(
    connector: &tokio_rustls::TlsConnector,
    target: SocketAddr,
    n: usize,
) -> (
    Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Vec<String>,
) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let connector = connector.clone();
        tasks.push(tokio::spawn(async move {
            // Even numbers stall in the head.
            let (mut tls, _, _, _) = open_stalled(connector, target, 2 * i).await;
            // A refusal comes at once; a held connection says nothing until its head timeout.
            let mut buf = vec![0u8; 1024];
            match tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await {
                Err(_) => Ok(tls),
                Ok(Ok(n)) => Err(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Ok(Err(e)) => Err(e.to_string()),
            }
        }));
    }
    let (mut held, mut refused) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await.expect("stall task") {
            Ok(tls) => held.push(tls),
            Err(answer) => refused.push(answer),
        }
    }
    (held, refused)
}

/// Every gateway's staff and device pool is full (one identity holds all of
/// `[api] max_connections` with stalled requests) before the cluster is even initialised; the
/// gateways still elect a leader, replicate and apply writes, because peer gateways' connections
/// come from their own reserved pool (`peer_connections`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_client_pool_leaves_raft_its_connections() {
    const POOL: usize = 8;
    let _turn = medledger_tests::one_cluster_at_a_time().await;
    let site = Site::new();
    let mut nodes: Vec<Gateway> = (1..=3u64)
        .map(|id| {
            let ip = Ipv4Addr::new(127, 0, 0, 1 + id as u8);
            Gateway::with_ip(
                &site,
                id,
                ip,
                &format!(
                    "source_address = \"{ip}\"\nmax_connections = {POOL}\nmax_connections_per_identity = {POOL}\nheader_read_timeout_ms = 120000\n"
                ),
            )
        })
        .collect();
    // The admin's one keep-alive connection per gateway is made before the pools fill.
    let admin = site.staff_client("it-admin", StaffRole::Admin);
    for g in &mut nodes {
        g.start();
    }
    for g in &nodes {
        let addr = g.addr();
        eventually(
            &format!("node {} to listen", g.id),
            Duration::from_secs(30),
            || status(&admin, &addr),
        )
        .await;
    }

    let mallory = Arc::new(staff_tls(&site.ca, "mallory", StaffRole::Biomed).expect("mallory"));
    let connector = tokio_rustls::TlsConnector::from(mallory);
    let mut hold = Vec::new();
    for g in &nodes {
        let target: SocketAddr = g.addr().parse().expect("addr");
        let (held, refused) = stall_many(&connector, target, POOL + 2).await;
        println!(
            "hostile: node {}: mallory holds {} connections, {} refused: {:?}",
            g.id,
            held.len(),
            refused.len(),
            refused.first().and_then(|a| a.lines().last())
        );
        // The admin holds one slot, mallory the rest; the others are refused over the pool.
        assert_eq!(held.len(), POOL - 1, "node {}: held", g.id);
        assert!(
            refused
                .iter()
                .all(|a| a.starts_with("HTTP/1.1 503") && a.contains("(api.max_connections)")),
            "node {}: refusals {refused:?}",
            g.id
        );
        hold.extend(held);
    }

    // Initialise the cluster now: every election, vote and append opens its connections while
    // no staff or device slot is free anywhere. The CLI presents the gateway's own certificate.
    let mut args = vec![
        "cluster".to_string(),
        "init".into(),
        "--config".into(),
        nodes[0].config.display().to_string(),
    ];
    for g in &nodes {
        args.push("--voter".into());
        args.push(format!("{}={}", g.id, g.addr()));
    }
    let out = std::process::Command::new(medledger_tests::bin("medledger"))
        .args(&args)
        .output()
        .expect("cluster init");
    assert!(
        out.status.success(),
        "cluster init with full client pools: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut leader = 0;
    for g in &nodes {
        let addr = g.addr();
        let s = eventually(
            &format!("node {} to know the leader", g.id),
            Duration::from_secs(30),
            || {
                let (admin, addr) = (admin.clone(), addr.clone());
                async move {
                    status(&admin, &addr)
                        .await
                        .filter(|s| !s["leader"].is_null())
                }
            },
        )
        .await;
        leader = s["leader"].as_u64().expect("leader");
    }
    let leader_addr = nodes
        .iter()
        .find(|g| g.id == leader)
        .expect("leader")
        .addr();
    // Every write is acknowledged. On a loaded machine the leader may change between the status
    // read above and a write (seen once under load 15: the old leader answered without a
    // leader); each write is then retried through every member until one acknowledges it, and
    // its event id keeps a retried write from counting twice.
    let addrs: Vec<String> = nodes.iter().map(|g| g.addr()).collect();
    for i in 0..10 {
        eventually(
            &format!("write {i} to be acknowledged"),
            Duration::from_secs(30),
            || {
                let (admin, addrs) = (admin.clone(), addrs.clone());
                let first = leader_addr.clone();
                async move {
                    for addr in std::iter::once(&first).chain(addrs.iter()) {
                        let r = admin
                            .post(format!("https://{addr}/v1/events"))
                            .json(&event(1000 + i))
                            .send()
                            .await
                            .ok()?;
                        if r.status().as_u16() == 201 || r.status().as_u16() == 200 {
                            return Some(());
                        }
                        eprintln!("write {i} through {addr}: {}", r.status());
                    }
                    None
                }
            },
        )
        .await;
    }
    let leader_status = status(&admin, &leader_addr).await.expect("leader status");
    let last = leader_status["last_log_index"].as_u64().expect("last log");
    for g in &nodes {
        let addr = g.addr();
        let s = eventually(
            &format!("node {} to apply the writes", g.id),
            Duration::from_secs(30),
            || {
                let (admin, addr) = (admin.clone(), addr.clone());
                async move {
                    status(&admin, &addr)
                        .await
                        .filter(|s| s["last_applied"].as_u64() >= Some(last))
                }
            },
        )
        .await;
        assert!(s["ledger_size"].as_u64() >= Some(10), "node {}: {s}", g.id);
    }
    // The pools stayed full all along: another staff member is still refused everywhere.
    let alice = Arc::new(staff_tls(&site.ca, "alice", StaffRole::Biomed).expect("alice"));
    let alice = tokio_rustls::TlsConnector::from(alice);
    for g in &nodes {
        let target: SocketAddr = g.addr().parse().expect("addr");
        let (held, refused) = stall_many(&alice, target, 1).await;
        assert!(
            held.is_empty() && refused.iter().all(|a| a.contains("(api.max_connections)")),
            "node {}: the client pool is no longer full: {refused:?}",
            g.id
        );
    }
    println!(
        "hostile: with every client pool full ({POOL}), leader {leader} elected and {} log entries replicated and applied on all 3 gateways",
        last
    );
    drop(hold);
}
