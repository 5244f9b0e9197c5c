//! Scenario 7 (issue 11): hostile clients against the server "hardened as recommended"
//! (`sb_server --hardened`: [`switchboard::serve`](fn@switchboard::serve) with its default limits, default per-address
//! limits, `trusted_proxies(["127.0.0.1"])`) and against the same application unprotected
//! (`sb_server --unprotected`: `axum::serve`, no per-address limits).
//!
//! Each phase starts a fresh server, runs one attack and, alongside it, a *normal client*: a few
//! tasks doing round trips back to back, each one a new session (WebSocket and long polling in
//! turn) that sends one Korean/emoji message and waits for its echo, from its own address
//! (`X-Forwarded-For: 198.51.100.x`; every socket of the load generator comes from 127.0.0.x).
//! The phases:
//!
//! - **quiet**: no attack, the reference for latency;
//! - **slowloris**: hundreds of connections in five shapes: silent, a partial request line,
//!   headers trickled one byte per second, a declared `Content-Length` whose body never comes,
//!   and an idle kept-alive connection after one answered request. A connection the server
//!   closes is opened again, as an attacker would;
//! - **idle flood**: as many silent TCP connections as the load generator can hold (bounded by its
//!   open-file limit), reopened when closed;
//! - **session flood**: a few connections pipelining `POST /rt/open` from one address
//!   (`X-Forwarded-For: 203.0.113.66`).
//!
//! Both servers run with the same, lower open-file limit ([`AbusePlan::server_files`]) than the
//! load generator, so that the idle flood can exceed what a server can hold, as a flood from
//! several machines would. Every socket binds and connects to 127.0.0.x only; every loop is
//! bounded in count and time; the attacker stops and drops its sockets at the end of each phase.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::Error;
use crate::proto::{self, Incoming};
use crate::report::{Table, fmt_num};
use crate::scenarios::{Plan, Problems};
use crate::server::{Kind, Server};
use crate::stats::Latencies;
use crate::sys;

/// The messages the normal client sends (each followed by its round-trip number).
const TEXTS: [&str; 3] = ["안녕하세요 😀", "한국어 메시지 🎉", "반가워요 👋🏽"];

/// The success rate the hardened server must keep for the normal client under attack (%).
pub const TARGET_SUCCESS_PCT: f64 = 99.0;
/// The most the normal client's p99 may grow under attack, over the same server's quiet p99.
pub const TARGET_P99_FACTOR: f64 = 10.0;

/// Sizes of the scenario in one mode.
#[derive(Debug, Clone)]
pub struct AbusePlan {
    /// How long the normal client measures in each phase.
    pub measure: Duration,
    /// Longest wait for the attack to build up before measuring (the idle flood; the other
    /// attacks get [`AbusePlan::ramp`]).
    pub flood_ramp: Duration,
    /// Wait between the start of an attack and the start of the measurement.
    pub ramp: Duration,
    /// Concurrent normal-client tasks.
    pub normal_tasks: usize,
    /// Most round trips per task per phase.
    pub normal_max: usize,
    /// A round trip that takes longer than this fails.
    pub round_trip_timeout: Duration,
    /// Pause between a task's round trips.
    pub pause: Duration,
    /// Slowloris connections per shape (five shapes).
    pub slow_per_shape: usize,
    /// Idle flood: most connections (further bounded by the open-file limit).
    pub flood_max: usize,
    /// Session flood: connections, and requests in flight on each.
    pub session_conns: usize,
    /// Session flood: pipelined requests per write.
    pub session_depth: usize,
    /// Open-file limit of both servers (`sb_server --max-files`).
    pub server_files: u64,
}

impl AbusePlan {
    /// The sizes for `plan`'s mode.
    pub fn for_plan(plan: &Plan) -> AbusePlan {
        match plan.mode {
            "smoke" => AbusePlan {
                measure: Duration::from_millis(1200),
                flood_ramp: Duration::from_secs(2),
                ramp: Duration::from_millis(300),
                normal_tasks: 2,
                normal_max: 100,
                round_trip_timeout: Duration::from_secs(5),
                pause: Duration::from_millis(20),
                slow_per_shape: 4,
                flood_max: 200,
                session_conns: 2,
                session_depth: 8,
                server_files: 1024,
            },
            "full" => AbusePlan {
                measure: Duration::from_secs(20),
                flood_ramp: Duration::from_secs(10),
                ramp: Duration::from_secs(2),
                normal_tasks: 4,
                normal_max: 5000,
                round_trip_timeout: Duration::from_secs(5),
                pause: Duration::from_millis(20),
                slow_per_shape: 200,
                flood_max: 20_000,
                session_conns: 8,
                session_depth: 32,
                server_files: 8192,
            },
            _ => AbusePlan {
                measure: Duration::from_secs(10),
                flood_ramp: Duration::from_secs(8),
                ramp: Duration::from_secs(1),
                normal_tasks: 4,
                normal_max: 2500,
                round_trip_timeout: Duration::from_secs(5),
                pause: Duration::from_millis(20),
                slow_per_shape: 100,
                flood_max: 20_000,
                session_conns: 8,
                session_depth: 32,
                server_files: 8192,
            },
        }
    }
}

/// The two servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protection {
    Hardened,
    Unprotected,
}

impl Protection {
    const ALL: [Protection; 2] = [Protection::Hardened, Protection::Unprotected];

    fn flag(self) -> &'static str {
        match self {
            Protection::Hardened => "--hardened",
            Protection::Unprotected => "--unprotected",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Protection::Hardened => "hardened",
            Protection::Unprotected => "unprotected",
        }
    }
}

/// The attack of one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    Quiet,
    Slowloris,
    IdleFlood,
    SessionFlood,
}

impl Attack {
    const ALL: [Attack; 4] = [
        Attack::Quiet,
        Attack::Slowloris,
        Attack::IdleFlood,
        Attack::SessionFlood,
    ];

    fn name(self) -> &'static str {
        match self {
            Attack::Quiet => "quiet",
            Attack::Slowloris => "slowloris",
            Attack::IdleFlood => "idle flood",
            Attack::SessionFlood => "session flood",
        }
    }
}

/// What the attacker's tasks count.
#[derive(Debug, Default)]
struct Tally {
    /// Attack sockets connected right now.
    open: AtomicI64,
    /// Connections established.
    connected: AtomicU64,
    /// Connections the server closed (EOF or reset while the attacker still wanted them).
    closed_by_server: AtomicU64,
    /// Session flood: `200` answers (sessions opened).
    sessions: AtomicU64,
    /// Session flood: `429` answers.
    refused_429: AtomicU64,
    /// Session flood: other answers (`503` included).
    other_status: AtomicU64,
}

/// What the normal client counts.
#[derive(Debug, Default)]
struct Normal {
    lat: Latencies,
    attempts: AtomicU64,
    ok: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Normal {
    fn fail(&self, what: String) {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        *errors.entry(what).or_default() += 1;
    }
}

/// The result of one phase against one server.
#[derive(Debug, Clone)]
struct Run {
    attack: Attack,
    protection: Protection,
    attempts: u64,
    ok: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// Attack sockets connected, mean and peak over the measurement.
    held_mean: f64,
    held_peak: i64,
    connected: u64,
    closed_by_server: u64,
    sessions: u64,
    refused_429: u64,
    other_status: u64,
    errors: Vec<(String, u64)>,
    /// CPU seconds over the measurement: the server's, and the load generator's (attacker and
    /// normal client together).
    server_cpu: f64,
    load_cpu: f64,
}

impl Run {
    fn success_pct(&self) -> f64 {
        if self.attempts == 0 {
            0.0
        } else {
            100.0 * self.ok as f64 / self.attempts as f64
        }
    }
}

/// Scenario 7: the normal client's success and round trip with and without each attack, on the
/// hardened and the unprotected server. One table, rows phase × server.
pub async fn abuse(plan: &Plan, problems: &mut Problems) -> Table {
    let sizes = AbusePlan::for_plan(plan);
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    // Room for the normal client, the slowloris sockets and the harness's own files.
    let flood = sizes
        .flood_max
        .min((nofile as usize).saturating_sub(2_000).max(100));
    let mut runs: Vec<Run> = Vec::new();
    for attack in Attack::ALL {
        for protection in Protection::ALL {
            eprintln!(
                "load: abuse: {} against {}",
                attack.name(),
                protection.name()
            );
            match phase(&sizes, attack, protection, flood).await {
                Ok(run) => runs.push(run),
                Err(e) => {
                    let what = format!("abuse {} {}: {e}", attack.name(), protection.name());
                    eprintln!("  PROBLEM: {what}");
                    problems.list.push(what);
                }
            }
        }
    }
    for protection in Protection::ALL {
        let quiet = runs
            .iter()
            .find(|r| r.attack == Attack::Quiet && r.protection == protection);
        if quiet.is_none_or(|q| q.ok == 0) {
            let what = format!(
                "abuse: the normal client had no successful round trip on the quiet {} server",
                protection.name()
            );
            eprintln!("  PROBLEM: {what}");
            problems.list.push(what);
        }
    }
    table(&sizes, flood, &runs)
}

/// One phase: a fresh server, the attack, and the normal client measuring alongside it.
async fn phase(
    sizes: &AbusePlan,
    attack: Attack,
    protection: Protection,
    flood: usize,
) -> Result<Run, Error> {
    let files = sizes.server_files.to_string();
    let server = Server::start(
        Kind::Switchboard,
        &[protection.flag(), "--max-files", files.as_str()],
    )
    .await?;
    let port = server.port();
    sleep(Duration::from_millis(200)).await;
    let tally = Arc::new(Tally::default());
    let (stop, stop_rx) = watch::channel(false);
    let mut attackers = JoinSet::new();
    let attack_ends = Instant::now() + sizes.flood_ramp + sizes.measure + Duration::from_secs(2);
    match attack {
        Attack::Quiet => {}
        Attack::Slowloris => {
            for shape in Shape::ALL {
                for i in 0..sizes.slow_per_shape {
                    attackers.spawn(slow_slot(
                        port,
                        shape,
                        proto::source_addr(i + 1),
                        tally.clone(),
                        stop_rx.clone(),
                        attack_ends,
                    ));
                }
            }
        }
        Attack::IdleFlood => {
            let gate = Arc::new(Semaphore::new(256));
            for i in 0..flood {
                attackers.spawn(idle_slot(
                    port,
                    proto::source_addr(i + 1),
                    gate.clone(),
                    tally.clone(),
                    stop_rx.clone(),
                    attack_ends,
                ));
            }
        }
        Attack::SessionFlood => {
            for _ in 0..sizes.session_conns {
                attackers.spawn(session_flooder(
                    port,
                    sizes.session_depth,
                    tally.clone(),
                    stop_rx.clone(),
                    attack_ends,
                ));
            }
        }
    }
    // Let the attack build up.
    match attack {
        Attack::Quiet => {}
        Attack::IdleFlood => {
            let started = Instant::now();
            let mut last = 0;
            let mut last_change = Instant::now();
            while started.elapsed() < sizes.flood_ramp {
                let open = tally.open.load(Ordering::Relaxed);
                if open as usize >= flood * 95 / 100 {
                    break;
                }
                if open != last {
                    last = open;
                    last_change = Instant::now();
                } else if last_change.elapsed() > Duration::from_secs(1)
                    && started.elapsed() > sizes.ramp
                {
                    break;
                }
                sleep(Duration::from_millis(50)).await;
            }
        }
        _ => sleep(sizes.ramp).await,
    }
    // Measure.
    let normal = Arc::new(Normal::default());
    let measure_ends = Instant::now() + sizes.measure;
    let cpu_before = (server.cpu()?, sys::cpu_seconds(std::process::id())?);
    let normal_done = spawn_normal(port, sizes, normal.clone(), measure_ends);
    let (mut held_sum, mut held_n, mut held_peak) = (0i64, 0i64, 0i64);
    while Instant::now() < measure_ends {
        let open = tally.open.load(Ordering::Relaxed);
        held_sum += open;
        held_n += 1;
        held_peak = held_peak.max(open);
        sleep(Duration::from_millis(100)).await;
    }
    let server_cpu = server.cpu()? - cpu_before.0;
    let load_cpu = sys::cpu_seconds(std::process::id())? - cpu_before.1;
    // Round trips in flight at the end finish (or time out) before the attack stops.
    let drain = sizes.round_trip_timeout + Duration::from_secs(2);
    if let Ok(Ok(Err(e))) = timeout(drain, normal_done).await {
        return Err(format!("the normal client did not start: {e}").into());
    }
    let _ = stop.send(true);
    let _ = timeout(Duration::from_secs(10), async {
        while attackers.join_next().await.is_some() {}
    })
    .await;
    attackers.abort_all();
    while attackers.join_next().await.is_some() {}
    server.stop().await;
    let summary = normal.lat.summary();
    let mut errors: Vec<(String, u64)> = normal
        .errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    errors.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    errors.truncate(3);
    Ok(Run {
        attack,
        protection,
        attempts: normal.attempts.load(Ordering::Relaxed),
        ok: normal.ok.load(Ordering::Relaxed),
        p50_ms: summary.p50_ms,
        p99_ms: summary.p99_ms,
        held_mean: if held_n > 0 {
            held_sum as f64 / held_n as f64
        } else {
            0.0
        },
        held_peak,
        connected: tally.connected.load(Ordering::Relaxed),
        closed_by_server: tally.closed_by_server.load(Ordering::Relaxed),
        sessions: tally.sessions.load(Ordering::Relaxed),
        refused_429: tally.refused_429.load(Ordering::Relaxed),
        other_status: tally.other_status.load(Ordering::Relaxed),
        errors,
        server_cpu,
        load_cpu,
    })
}

// ---------------------------------------------------------------------------------------------
// The normal client

/// Runs the normal client ([`AbusePlan::normal_tasks`] tasks of [`normal_client`]) on a thread
/// and runtime of its own, so that its round trips do not wait in the load generator's runtime
/// behind thousands of attacker tasks (the operating system shares the cores between the two
/// threads instead). The answer comes when every task has ended (each round trip is bounded by
/// [`AbusePlan::round_trip_timeout`]).
fn spawn_normal(
    port: u16,
    sizes: &AbusePlan,
    normal: Arc<Normal>,
    ends: Instant,
) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
    let (done, done_rx) = tokio::sync::oneshot::channel();
    let sizes = sizes.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let result = match runtime {
            Ok(runtime) => runtime.block_on(async move {
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .build()
                    .map_err(|e| e.to_string())?;
                let counter = Arc::new(AtomicU64::new(0));
                let mut tasks = JoinSet::new();
                for _ in 0..sizes.normal_tasks {
                    tasks.spawn(normal_client(
                        port,
                        http.clone(),
                        sizes.clone(),
                        normal.clone(),
                        counter.clone(),
                        ends,
                    ));
                }
                while tasks.join_next().await.is_some() {}
                Ok(())
            }),
            Err(e) => Err(e.to_string()),
        };
        let _ = done.send(result);
    });
    done_rx
}

/// One normal-client task: round trips back to back (alternating WebSocket and long polling)
/// until `ends` or [`AbusePlan::normal_max`], each a new session from its own address.
async fn normal_client(
    port: u16,
    http: reqwest::Client,
    sizes: AbusePlan,
    normal: Arc<Normal>,
    counter: Arc<AtomicU64>,
    ends: Instant,
) {
    let mut rec = normal.lat.recorder();
    for _ in 0..sizes.normal_max {
        if Instant::now() >= ends {
            break;
        }
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let client = format!("198.51.100.{}", 1 + n % 250);
        let text = format!("e|{} {n}", TEXTS[n as usize % TEXTS.len()]);
        let websocket = n.is_multiple_of(2);
        normal.attempts.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = timeout(sizes.round_trip_timeout, async {
            if websocket {
                ws_round_trip(port, &client, &text).await
            } else {
                poll_round_trip(&http, port, &client, &text).await
            }
        })
        .await;
        let transport = if websocket { "websocket" } else { "long poll" };
        match result {
            Ok(Ok(())) => {
                rec.record_ns(started.elapsed().as_nanos() as u64);
                normal.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => normal.fail(format!("{transport}: {}", short_error(&e))),
            Err(_) => normal.fail(format!(
                "{transport}: no echo within {} s",
                sizes.round_trip_timeout.as_secs()
            )),
        }
        sleep(sizes.pause).await;
    }
}

fn short_error(e: &Error) -> String {
    let mut text = e.to_string();
    if let Some(source) = std::error::Error::source(e.as_ref()) {
        write!(text, " ({source})").ok();
    }
    text.chars().take(120).collect()
}

/// Opens a WebSocket session as `client`, sends `text`, waits for its echo, closes the session.
async fn ws_round_trip(port: u16, client: &str, text: &str) -> Result<(), Error> {
    let stream = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    stream.set_nodelay(true)?;
    let mut request = format!("ws://127.0.0.1:{port}/rt/ws?v=1&batch=1").into_client_request()?;
    request
        .headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_str(client)?);
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    let mut opened = false;
    let mut pending = std::collections::VecDeque::new();
    loop {
        let message = ws.next().await.ok_or("socket closed")??;
        let WsMessage::Text(frame) = message else {
            if let WsMessage::Close(close) = message {
                return Err(format!("closed by the server: {close:?}").into());
            }
            continue;
        };
        if !opened {
            if !frame.as_str().contains(r#""t":"open""#) {
                return Err(format!("first frame is not open: {}", frame.as_str()).into());
            }
            opened = true;
            ws.send(WsMessage::text(proto::encode(Kind::Switchboard, 1, text)))
                .await?;
            continue;
        }
        proto::decode_message(Kind::Switchboard, frame.as_str(), &mut pending);
        while let Some(incoming) = pending.pop_front() {
            match incoming {
                Incoming::Msg { payload, .. } if payload == text => {
                    ws.send(WsMessage::text(r#"{"t":"close"}"#)).await.ok();
                    return Ok(());
                }
                Incoming::Ping(reply) => ws.send(WsMessage::text(reply)).await?,
                Incoming::Closed => return Err("the session was closed".into()),
                _ => {}
            }
        }
    }
}

/// Opens a long-polling session as `client`, posts `text`, polls until its echo arrives, closes
/// the session. Every request on a new connection (the client's pool keeps none).
async fn poll_round_trip(
    http: &reqwest::Client,
    port: u16,
    client: &str,
    text: &str,
) -> Result<(), Error> {
    let base = proto::sb_base(port);
    let response = http
        .post(format!("{base}/open?v=1"))
        .header("x-forwarded-for", client)
        .send()
        .await?;
    let status = response.status();
    if status != 200 {
        return Err(format!("open answered {status}").into());
    }
    let open: Value = response.json().await?;
    let sid = open["sid"]
        .as_str()
        .ok_or("open answer without sid")?
        .to_owned();
    let frame = proto::encode(Kind::Switchboard, 1, text);
    let response = http
        .post(format!("{base}/poll?v=1&sid={sid}"))
        .header("x-forwarded-for", client)
        .header("content-type", "application/json")
        .body(format!("[{frame}]"))
        .send()
        .await?;
    let status = response.status();
    if status != 200 {
        return Err(format!("POST answered {status}").into());
    }
    let mut found = has_echo(&response.json().await?, text);
    for _ in 0..10 {
        if found {
            break;
        }
        let response = http
            .get(format!("{base}/poll?v=1&sid={sid}&ack=0&wait=1"))
            .header("x-forwarded-for", client)
            .send()
            .await?;
        let status = response.status();
        if status != 200 {
            return Err(format!("GET answered {status}").into());
        }
        found = has_echo(&response.json().await?, text);
    }
    if !found {
        return Err("no echo in 10 polls".into());
    }
    // Not part of the round trip, but leaves no session behind.
    let close = http
        .post(format!("{base}/poll?v=1&sid={sid}"))
        .header("x-forwarded-for", client)
        .header("content-type", "application/json")
        .body(r#"[{"t":"close"}]"#)
        .send();
    let _ = timeout(Duration::from_secs(1), close).await;
    Ok(())
}

/// Whether the frames of a poll or POST answer hold the echo of `text`.
fn has_echo(frames: &Value, text: &str) -> bool {
    frames.as_array().is_some_and(|frames| {
        frames
            .iter()
            .any(|f| f["t"] == "m" && f["d"].as_str() == Some(text))
    })
}

// ---------------------------------------------------------------------------------------------
// The attackers

/// The slowloris shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Connects and sends nothing.
    Silent,
    /// Sends part of a request line, then nothing.
    PartialLine,
    /// Sends a request line, then an endless header one byte per second.
    Trickle,
    /// Sends a complete head declaring a body, then no body.
    NoBody,
    /// Sends one complete request, reads the answer, then keeps the connection idle.
    IdleKeepAlive,
}

impl Shape {
    const ALL: [Shape; 5] = [
        Shape::Silent,
        Shape::PartialLine,
        Shape::Trickle,
        Shape::NoBody,
        Shape::IdleKeepAlive,
    ];
}

/// Connects from `src` to the server, counted in `tally`; at most 3 s.
async fn attack_connect(src: Ipv4Addr, port: u16, tally: &Tally) -> Option<TcpStream> {
    match timeout(Duration::from_secs(3), proto::tcp_connect(src, port)).await {
        Ok(Ok(stream)) => {
            tally.connected.fetch_add(1, Ordering::Relaxed);
            tally.open.fetch_add(1, Ordering::Relaxed);
            Some(stream)
        }
        _ => None,
    }
}

/// Returns once the attack is told to stop (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Waits until the server closes `stream` (`true`) or the attack stops (`false`), discarding
/// whatever it sends.
async fn hold(stream: &mut TcpStream, stop: &mut watch::Receiver<bool>, ends: Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            },
            () = stopped(stop) => return false,
            () = tokio::time::sleep_until(ends) => return false,
        }
    }
}

/// One slowloris connection of `shape`, opened again whenever the server closes it, until the
/// attack stops (at most 1,000 connections).
async fn slow_slot(
    port: u16,
    shape: Shape,
    src: Ipv4Addr,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
    ends: Instant,
) {
    for _ in 0..1000 {
        if *stop.borrow() || Instant::now() >= ends {
            return;
        }
        let Some(mut stream) = attack_connect(src, port, &tally).await else {
            sleep(Duration::from_millis(200)).await;
            continue;
        };
        let closed = slow_connection(&mut stream, shape, &mut stop, ends).await;
        tally.open.fetch_sub(1, Ordering::Relaxed);
        if !closed {
            return;
        }
        tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
        drop(stream);
        sleep(Duration::from_millis(50)).await;
    }
}

/// Plays `shape` on one connection: `true` when the server closed it.
async fn slow_connection(
    stream: &mut TcpStream,
    shape: Shape,
    stop: &mut watch::Receiver<bool>,
    ends: Instant,
) -> bool {
    let head = match shape {
        Shape::Silent | Shape::Trickle => "",
        Shape::PartialLine => "GET /rt/ws?v=1 HT",
        Shape::NoBody => {
            "POST /rt/open?v=1 HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             content-length: 1000\r\n\r\n"
        }
        Shape::IdleKeepAlive => "GET /rt/ws?v=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    };
    if !head.is_empty() && stream.write_all(head.as_bytes()).await.is_err() {
        return true;
    }
    if shape == Shape::IdleKeepAlive {
        // Read the answer (a `400`: no upgrade headers), then stay idle on the kept-alive connection.
        let mut buf = Vec::new();
        let read = timeout(Duration::from_secs(5), async {
            let mut chunk = [0u8; 1024];
            loop {
                if parse_response(&buf).is_some() {
                    return true;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        if read != Ok(true) {
            return true;
        }
    }
    if shape != Shape::Trickle {
        return hold(stream, stop, ends).await;
    }
    // A request line, then a header that never ends, one byte per second.
    let trickle = b"GET /rt/client.js HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ";
    let mut sent = 0usize;
    let mut buf = [0u8; 256];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for _ in 0..100_000 {
        tokio::select! {
            _ = tick.tick() => {
                let byte = trickle.get(sent).copied().unwrap_or(b'a');
                sent += 1;
                if stream.write_all(&[byte]).await.is_err() {
                    return true;
                }
            }
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            },
            () = stopped(stop) => return false,
            () = tokio::time::sleep_until(ends) => return false,
        }
    }
    false
}

/// One idle-flood connection: connects (at most 256 connecting at once), sends nothing, and
/// connects again whenever the server closes it, until the attack stops (at most 1,000 times).
async fn idle_slot(
    port: u16,
    src: Ipv4Addr,
    gate: Arc<Semaphore>,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
    ends: Instant,
) {
    for _ in 0..1000 {
        if *stop.borrow() || Instant::now() >= ends {
            return;
        }
        let stream = {
            let Ok(_permit) = gate.acquire().await else {
                return;
            };
            attack_connect(src, port, &tally).await
        };
        let Some(mut stream) = stream else {
            sleep(Duration::from_millis(200)).await;
            continue;
        };
        let closed = hold(&mut stream, &mut stop, ends).await;
        tally.open.fetch_sub(1, Ordering::Relaxed);
        if !closed {
            return;
        }
        tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
    }
}

/// One session-flood connection from 127.0.0.1: `depth` pipelined `POST /rt/open` as
/// 203.0.113.66 per write, then their answers, until the attack stops (at most 100,000
/// requests); reconnects when the server closes the connection.
async fn session_flooder(
    port: u16,
    depth: usize,
    tally: Arc<Tally>,
    stop: watch::Receiver<bool>,
    ends: Instant,
) {
    let request = "POST /rt/open?v=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                   x-forwarded-for: 203.0.113.66\r\ncontent-length: 0\r\n\r\n";
    let batch = request.repeat(depth.max(1));
    let mut sent = 0usize;
    while sent < 100_000 && !*stop.borrow() && Instant::now() < ends {
        let Some(mut stream) = attack_connect(Ipv4Addr::LOCALHOST, port, &tally).await else {
            sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut chunk = vec![0u8; 16 * 1024];
        let closed = 'conn: loop {
            if sent >= 100_000 || *stop.borrow() || Instant::now() >= ends {
                break false;
            }
            if stream.write_all(batch.as_bytes()).await.is_err() {
                break true;
            }
            sent += depth;
            let mut answered = 0;
            while answered < depth {
                while let Some((status, used)) = parse_response(&buf) {
                    buf.drain(..used);
                    answered += 1;
                    match status {
                        200 => tally.sessions.fetch_add(1, Ordering::Relaxed),
                        429 => tally.refused_429.fetch_add(1, Ordering::Relaxed),
                        _ => tally.other_status.fetch_add(1, Ordering::Relaxed),
                    };
                }
                if answered >= depth {
                    break;
                }
                match timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => break 'conn true,
                }
            }
        };
        tally.open.fetch_sub(1, Ordering::Relaxed);
        if closed {
            tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The status and length of the first complete HTTP/1.1 answer in `buf` (a body only by
/// `Content-Length`, as every answer here has), or `None` if it is not all there yet.
fn parse_response(buf: &[u8]) -> Option<(u16, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    (buf.len() >= end + length).then_some((status, end + length))
}

// ---------------------------------------------------------------------------------------------
// The table

/// The one table: rows phase × server; JSON through [`Table`], text of its own (its columns are
/// measures, not implementations, so [`Table::render`]'s ratios do not apply).
fn table(sizes: &AbusePlan, flood: usize, runs: &[Run]) -> Table {
    let columns = [
        "attempts",
        "success (%)",
        "p50 (ms)",
        "p99 (ms)",
        "p99 / quiet p99",
        "attack conns held (mean)",
        "attack conns held (peak)",
        "attack conns closed by server",
        "sessions opened by attacker",
        "attacker 429s",
        "attacker other answers",
        "server CPU (s)",
        "load CPU (s)",
    ];
    let decimals = [0, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 1, 1];
    let mut t = Table::new(
        "abuse",
        &format!(
            "7. hostile clients (issue 11): normal client's round trips with and without attacks, {} s per phase",
            sizes.measure.as_secs_f64()
        ),
        &columns,
    );
    let quiet_p99 = |protection| {
        runs.iter()
            .find(|r| r.attack == Attack::Quiet && r.protection == protection && r.ok > 0)
            .map(|r| r.p99_ms)
    };
    let mut lines: Vec<Vec<String>> = vec![
        std::iter::once("phase / server".to_owned())
            .chain(columns.iter().map(|c| (*c).to_owned()))
            .collect(),
    ];
    for r in runs {
        let ratio = quiet_p99(r.protection)
            .filter(|q| *q > 0.0 && r.ok > 0)
            .map(|q| r.p99_ms / q);
        let ok = r.ok > 0;
        let values = [
            Some(r.attempts as f64),
            Some(r.success_pct()),
            ok.then_some(r.p50_ms),
            ok.then_some(r.p99_ms),
            ratio,
            Some(r.held_mean),
            Some(r.held_peak as f64),
            Some(r.closed_by_server as f64),
            Some(r.sessions as f64),
            Some(r.refused_429 as f64),
            Some(r.other_status as f64),
            Some(r.server_cpu),
            Some(r.load_cpu),
        ];
        let label = format!("{} / {}", r.attack.name(), r.protection.name());
        t.row(&label, "", 2, values.to_vec());
        let mut line = vec![label];
        for (v, d) in values.iter().zip(decimals) {
            line.push(v.map_or_else(|| "-".to_owned(), |v| fmt_num(v, d)));
        }
        lines.push(line);
    }
    // Targets, for the hardened server under each attack.
    for r in runs
        .iter()
        .filter(|r| r.protection == Protection::Hardened && r.attack != Attack::Quiet)
    {
        let ratio = quiet_p99(Protection::Hardened)
            .filter(|q| *q > 0.0 && r.ok > 0)
            .map(|q| r.p99_ms / q);
        let success_met = r.success_pct() >= TARGET_SUCCESS_PCT;
        let p99_met = ratio.is_some_and(|x| x <= TARGET_P99_FACTOR);
        t.note(format!(
            "target, hardened, {}: success {:.2} % (>= {TARGET_SUCCESS_PCT} %: {}), p99 {} the quiet p99 (<= {TARGET_P99_FACTOR}x: {})",
            r.attack.name(),
            r.success_pct(),
            met(success_met),
            ratio.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}x")),
            met(p99_met),
        ));
    }
    for r in runs.iter().filter(|r| !r.errors.is_empty()) {
        let list: Vec<String> = r
            .errors
            .iter()
            .map(|(what, n)| format!("{n} × {what}"))
            .collect();
        t.note(format!(
            "failures, {} / {}: {}",
            r.attack.name(),
            r.protection.name(),
            list.join("; ")
        ));
    }
    t.note(format!(
        "attacks: slowloris {} connections ({} each: silent, partial request line, headers trickled 1 B/s, content-length with no body, idle keep-alive); idle flood up to {flood} silent connections; session flood {} connections pipelining {} POST /rt/open each from 203.0.113.66. Closed attack connections are reopened. Connections made: {}",
        5 * sizes.slow_per_shape,
        sizes.slow_per_shape,
        sizes.session_conns,
        sizes.session_depth,
        runs.iter()
            .map(|r| format!("{} / {} {}", r.attack.name(), r.protection.name(), r.connected))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    t.note(format!(
        "normal client: {} tasks on a thread and runtime of their own, round trips back to back ({} ms apart), alternately WebSocket and long polling, each a new session from its own X-Forwarded-For address (198.51.100.1-250), fresh connections, failed after {} s; p50/p99 over the successful ones. Attack connections held: as the attacker counts them (connected, not yet closed), so they include connections waiting in the server's listen backlog (4096). CPU: over the measurement, of 2 x measurement s available. Both servers run with an open-file limit of {}; every socket is 127.0.0.x.",
        sizes.normal_tasks,
        sizes.pause.as_millis(),
        sizes.round_trip_timeout.as_secs(),
        sizes.server_files,
    ));
    t.preformatted = Some(render(&t.title, &lines, &t.notes));
    t
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}

fn render(title: &str, lines: &[Vec<String>], notes: &[String]) -> String {
    let ncols = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncols)
        .map(|i| {
            lines
                .iter()
                .filter_map(|l| l.get(i))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!("\n== {title} ==\n");
    for l in lines {
        let mut s = String::new();
        for (i, cell) in l.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i == 0 {
                write!(s, "{cell:<w$}").ok();
            } else {
                write!(s, "  {cell:>w$}").ok();
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    }
    for n in notes {
        writeln!(out, "  note: {n}").ok();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_answers() {
        let two = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 5\r\n\r\nabcdeHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let (status, used) = parse_response(two).unwrap_or_default();
        assert_eq!(status, 429);
        assert_eq!(parse_response(&two[used..]).map(|(s, _)| s), Some(200));
        assert_eq!(parse_response(&two[..used - 1]), None);
    }
}
