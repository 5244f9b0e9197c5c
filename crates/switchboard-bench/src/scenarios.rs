//! The benchmark scenarios 1–6. Each starts its own server processes and returns a [`Table`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchboard_client::raw::Http;
use switchboard_client::{ClientFrame, Message, ServerFrame};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use crate::Error;
use crate::clients::{self, Cmd, PollMode, Shared, WsRole};
use crate::payload;
use crate::redis::{Delta as RedisDelta, RedisServer};
use crate::report::Table;
use crate::serve::Serving;
use crate::server::{Kind, Server};
use crate::{proto, sys};

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Name of the mode (`quick`, `full`, `smoke`).
    pub mode: &'static str,
    /// Idle WebSocket session counts (scenario 1).
    pub idle_sizes: Vec<usize>,
    /// Idle long-poll session counts (scenario 1, Switchboard).
    pub idle_poll_sizes: Vec<usize>,
    /// Fan-out room size (scenario 2).
    pub fanout_clients: usize,
    /// Fan-out messages sent (scenario 2).
    pub fanout_messages: u64,
    /// Echo connections (scenario 3).
    pub echo_conns: usize,
    /// Echo total rate in messages per second.
    pub echo_rate: u64,
    /// Echo duration.
    pub echo_secs: u64,
    /// Long-polling clients (scenario 4).
    pub poll_clients: usize,
    /// Long-polling broadcast rate per second.
    pub poll_rate: u64,
    /// Long-polling duration in seconds.
    pub poll_secs: u64,
    /// Reconnect storm sessions (scenario 5).
    pub storm_clients: usize,
    /// Reconnect storm broadcast rate per second.
    pub storm_rate: u64,
    /// Cluster fan-out clients over 2 nodes (scenario 6a).
    pub cluster_clients: usize,
    /// Cluster fan-out messages sent (scenario 6a).
    pub cluster_messages: u64,
    /// Broadcast latency receivers (scenario 6b).
    pub cluster_receivers: usize,
    /// Broadcast latency rate per second (scenario 6b).
    pub cluster_rate: u64,
    /// Broadcast latency duration in seconds (scenario 6b).
    pub cluster_secs: u64,
    /// Messages each way of the Redis cost measurement (scenario 6c).
    pub cluster_cost_messages: u64,
    /// Slow-consumer sessions per allocator (scenario 7, `memory`).
    pub memory_sessions: usize,
    /// Bytes of each message a slow consumer has echoed to itself (scenario 7).
    pub memory_payload: usize,
    /// Seconds after the last session ended at which RSS is reported (scenario 7); it is
    /// sampled every 250 ms until the last of them.
    pub memory_samples: Vec<u64>,
    /// Clients in the room of the transports scenario (9), per transport.
    pub transport_clients: usize,
    /// Broadcasts per second of the transports scenario.
    pub transport_rate: u64,
    /// Seconds each transport's phase broadcasts for.
    pub transport_secs: u64,
    /// Wait before reading RSS once sessions are opened or gone.
    pub settle: Duration,
}

impl Plan {
    /// `--quick`: everything in a few minutes on 2 cores.
    pub fn quick() -> Plan {
        Plan {
            mode: "quick",
            idle_sizes: vec![1_000],
            idle_poll_sizes: vec![1_000],
            fanout_clients: 1_000,
            fanout_messages: 1_000,
            echo_conns: 100,
            echo_rate: 2_000,
            echo_secs: 5,
            poll_clients: 200,
            poll_rate: 50,
            poll_secs: 5,
            storm_clients: 200,
            storm_rate: 50,
            cluster_clients: 1_000,
            cluster_messages: 1_000,
            cluster_receivers: 100,
            cluster_rate: 1_000,
            cluster_secs: 5,
            cluster_cost_messages: 500,
            memory_sessions: 200,
            memory_payload: 2048,
            memory_samples: vec![0, 1, 2, 5, 10, 30, 60],
            transport_clients: 1_000,
            transport_rate: 50,
            transport_secs: 5,
            settle: Duration::from_millis(1500),
        }
    }

    /// `--full`: the larger numbers.
    pub fn full() -> Plan {
        Plan {
            mode: "full",
            idle_sizes: vec![1_000, 10_000],
            idle_poll_sizes: vec![1_000, 10_000],
            fanout_clients: 10_000,
            fanout_messages: 1_000,
            echo_conns: 100,
            echo_rate: 5_000,
            echo_secs: 10,
            poll_clients: 1_000,
            poll_rate: 50,
            poll_secs: 10,
            storm_clients: 1_000,
            storm_rate: 50,
            cluster_clients: 10_000,
            cluster_messages: 1_000,
            cluster_receivers: 100,
            cluster_rate: 1_000,
            cluster_secs: 10,
            cluster_cost_messages: 2_000,
            memory_sessions: 200,
            memory_payload: 2048,
            memory_samples: vec![0, 1, 2, 5, 10, 30, 60],
            transport_clients: 1_000,
            transport_rate: 50,
            transport_secs: 60,
            settle: Duration::from_millis(1500),
        }
    }

    /// `--smoke`: tiny numbers, checks that the harness works.
    pub fn smoke() -> Plan {
        Plan {
            mode: "smoke",
            idle_sizes: vec![20],
            idle_poll_sizes: vec![20],
            fanout_clients: 20,
            fanout_messages: 50,
            echo_conns: 10,
            echo_rate: 200,
            echo_secs: 1,
            poll_clients: 20,
            poll_rate: 20,
            poll_secs: 1,
            storm_clients: 20,
            storm_rate: 50,
            cluster_clients: 20,
            cluster_messages: 50,
            cluster_receivers: 10,
            cluster_rate: 200,
            cluster_secs: 1,
            cluster_cost_messages: 20,
            memory_sessions: 10,
            memory_payload: 2048,
            memory_samples: vec![0, 1],
            transport_clients: 20,
            transport_rate: 20,
            transport_secs: 1,
            settle: Duration::from_millis(300),
        }
    }

    /// Overall time limit for one measurement phase.
    pub(crate) fn phase_limit(&self) -> Duration {
        match self.mode {
            "full" => Duration::from_secs(180),
            "smoke" => Duration::from_secs(10),
            _ => Duration::from_secs(60),
        }
    }
}

/// Failures that make `--smoke` exit non-zero (lost or duplicated messages, failed servers).
#[derive(Debug, Default)]
pub struct Problems {
    /// Human-readable descriptions.
    pub list: Vec<String>,
}

impl Problems {
    /// Records a problem (and prints it).
    pub(crate) fn add(&mut self, what: String) {
        eprintln!("  PROBLEM: {what}");
        self.list.push(what);
    }

    /// A run's result for its table column: a failed run (named by `run`) is recorded as a
    /// problem, and its column shows `-`.
    pub(crate) fn keep<R>(
        &mut self,
        run: impl std::fmt::Display,
        result: Result<R, Error>,
    ) -> Option<R> {
        result.map_err(|e| self.add(format!("{run}: {e}"))).ok()
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn columns_all() -> Vec<&'static str> {
    Kind::ALL.iter().map(|k| k.name()).collect()
}

/// Waits until `done()` or `limit`, or until `progress()` has not changed for `stall`.
pub(crate) async fn wait_until(
    limit: Duration,
    stall: Duration,
    mut done: impl FnMut() -> bool,
    mut progress: impl FnMut() -> u64,
) -> bool {
    let start = Instant::now();
    let mut last = progress();
    let mut last_change = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > limit || last_change.elapsed() > stall {
            return false;
        }
        sleep(Duration::from_millis(10)).await;
        let p = progress();
        if p != last {
            last = p;
            last_change = Instant::now();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. idle memory

/// Result of one idle measurement.
#[derive(Debug, Clone, Copy)]
struct Idle {
    base: u64,
    loaded: u64,
    after: u64,
    sessions: usize,
}

impl Idle {
    fn per_session_kib(&self) -> f64 {
        (self.loaded as f64 - self.base as f64) / self.sessions.max(1) as f64 / 1024.0
    }
}

/// Where `load --heap DIR` has the idle scenario's Switchboard servers write their heap profiles
/// (`sb_heap` in place of `sb_server`); `None`: measure RSS with `sb_server`.
static HEAP_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Runs the idle scenario's Switchboard servers under the heap profiler (`sb_heap`), each writing
/// `DIR/<transport>-<serving>-<sessions>.json`; floor and peer are skipped.
pub fn set_heap_dir(dir: std::path::PathBuf) {
    let _ = HEAP_DIR.set(dir);
}

/// The serving loops the idle scenario compares for Switchboard.
const SERVINGS: [Serving; 2] = [Serving::Axum, Serving::Switchboard];

fn serving_name(serving: Serving) -> &'static str {
    match serving {
        Serving::Axum => "axum::serve",
        Serving::Switchboard => "switchboard::serve",
    }
}

fn serving_arg(serving: Serving) -> &'static str {
    match serving {
        Serving::Axum => "axum",
        Serving::Switchboard => "switchboard",
    }
}

/// Starts the server of an idle measurement: `kind`'s binary, or for Switchboard `sb_server`
/// (`sb_heap` under `load --heap`) served by `serving`.
async fn idle_server(kind: Kind, serving: Serving, what: &str, n: usize) -> Result<Server, Error> {
    if kind != Kind::Switchboard {
        return Server::start(kind, &[]).await;
    }
    let serve = serving_arg(serving);
    match HEAP_DIR.get() {
        None => Server::start(kind, &["--serve", serve]).await,
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let out = dir.join(format!("{what}-{serve}-{n}.json"));
            let out = out.to_string_lossy().into_owned();
            let sessions = n.to_string();
            let args = ["--serve", serve, "--sessions", &sessions, "--out", &out];
            Server::start_binary(kind, "sb_heap", &args, &[]).await
        }
    }
}

/// Under `load --heap`, the profiler writes its file once the session count has been steady for
/// 3 s: wait for that before the clients go.
async fn heap_wait() {
    if HEAP_DIR.get().is_some() {
        sleep(Duration::from_secs(6)).await;
    }
}

async fn idle_ws(kind: Kind, serving: Serving, n: usize, settle: Duration) -> Result<Idle, Error> {
    let server = idle_server(kind, serving, "ws", n).await?;
    sleep(Duration::from_millis(300)).await;
    let base = server.rss()?;
    let port = server.port();
    let (drivers, failed) = clients::connect_many(kind, port, n).await;
    let sessions = drivers.len();
    if failed > 0 && sessions == 0 {
        return Err(format!("no {kind} connection succeeded").into());
    }
    let shared = Arc::new(Shared::default());
    let (stop, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for (i, d) in drivers {
        let role = WsRole::uncounted(port);
        clients::spawn_ws(&mut set, d, i, shared.clone(), stop_rx.clone(), None, role);
    }
    sleep(settle).await;
    let loaded = server.rss()?;
    heap_wait().await;
    clients::stop_all(&stop, &mut set).await;
    sleep(settle).await;
    let after = server.rss()?;
    server.stop().await;
    Ok(Idle {
        base,
        loaded,
        after,
        sessions,
    })
}

async fn idle_long_poll(serving: Serving, n: usize, settle: Duration) -> Result<Idle, Error> {
    let server = idle_server(Kind::Switchboard, serving, "longpoll", n).await?;
    sleep(Duration::from_millis(300)).await;
    let base = server.rss()?;
    let shared = Arc::new(Shared::default());
    let opened = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let https = clients::http_clients()?;
    let base_url = proto::sb_base(server.port());
    for i in 0..n {
        let http = Http::with_client(&base_url, https[i % https.len()].clone());
        clients::spawn_poller(
            &mut set,
            http,
            PollMode::Long,
            shared.clone(),
            opened.clone(),
            stop_rx.clone(),
            0,
        );
        if i % 100 == 99 {
            sleep(Duration::from_millis(5)).await;
        }
    }
    let target = n as u64;
    wait_until(
        Duration::from_secs(60),
        Duration::from_secs(10),
        || opened.load(Ordering::Relaxed) >= target,
        || opened.load(Ordering::Relaxed),
    )
    .await;
    let sessions = opened.load(Ordering::Relaxed) as usize;
    sleep(settle).await;
    let loaded = server.rss()?;
    heap_wait().await;
    clients::stop_all(&stop, &mut set).await;
    drop(https);
    sleep(settle).await;
    let after = server.rss()?;
    server.stop().await;
    Ok(Idle {
        base,
        loaded,
        after,
        sessions,
    })
}

async fn idle_sse(serving: Serving, n: usize, settle: Duration) -> Result<Idle, Error> {
    let server = idle_server(Kind::Switchboard, serving, "sse", n).await?;
    sleep(Duration::from_millis(300)).await;
    let base = server.rss()?;
    let opened = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let https = clients::http_clients()?;
    let url = format!("{}/sse?v=1", proto::sb_base(server.port()));
    for i in 0..n {
        clients::spawn_sse_holder(
            &mut set,
            https[i % https.len()].clone(),
            url.clone(),
            opened.clone(),
            errors.clone(),
            stop_rx.clone(),
        );
        if i % 100 == 99 {
            sleep(Duration::from_millis(5)).await;
        }
    }
    let target = n as u64;
    wait_until(
        Duration::from_secs(60),
        Duration::from_secs(10),
        || opened.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed) >= target,
        || opened.load(Ordering::Relaxed),
    )
    .await;
    let sessions = opened.load(Ordering::Relaxed) as usize;
    sleep(settle).await;
    let loaded = server.rss()?;
    heap_wait().await;
    clients::stop_all(&stop, &mut set).await;
    drop(https);
    sleep(settle).await;
    let after = server.rss()?;
    server.stop().await;
    Ok(Idle {
        base,
        loaded,
        after,
        sessions,
    })
}

/// Scenario 1: server RSS growth per idle session, and RSS once the sessions are gone.
pub async fn idle(plan: &Plan, problems: &mut Problems) -> Table {
    let mut t = Table::new(
        "idle",
        "1. idle memory per session (server RSS growth / sessions)",
        &columns_all(),
    );
    let heap = HEAP_DIR.get().is_some();
    for &n in &plan.idle_sizes {
        let mut results = Vec::new();
        for kind in Kind::ALL {
            if heap && kind != Kind::Switchboard {
                results.push(None);
                continue;
            }
            eprintln!("[idle] {kind}: {n} WebSocket sessions");
            let r = problems.keep(
                format!("idle {kind} {n}"),
                idle_ws(kind, Serving::Axum, n, plan.settle).await,
            );
            if let Some(r) = &r
                && r.sessions < n
            {
                problems.add(format!("idle {kind}: only {} of {n} sessions", r.sessions));
            }
            results.push(r);
        }
        let col = |f: &dyn Fn(&Idle) -> f64| results.iter().map(|r| r.as_ref().map(f)).collect();
        t.row(
            &format!("WS {n}: per session"),
            "KiB",
            1,
            col(&|r| r.per_session_kib()),
        );
        t.row(
            &format!("WS {n}: RSS baseline"),
            "MiB",
            1,
            col(&|r| r.base as f64 / MIB),
        );
        t.row(
            &format!("WS {n}: RSS with sessions"),
            "MiB",
            1,
            col(&|r| r.loaded as f64 / MIB),
        );
        t.row(
            &format!("WS {n}: RSS after disconnect"),
            "MiB",
            1,
            col(&|r| r.after as f64 / MIB),
        );
        eprintln!("[idle] switchboard (switchboard::serve): {n} WebSocket sessions");
        if let Some(r) = problems.keep(
            format!("idle switchboard::serve {n}"),
            idle_ws(Kind::Switchboard, Serving::Switchboard, n, plan.settle).await,
        ) {
            if r.sessions < n {
                problems.add(format!(
                    "idle switchboard::serve: only {} of {n} sessions",
                    r.sessions
                ));
            }
            idle_rows(&mut t, &format!("WS {n}, switchboard::serve"), &r);
        }
    }
    for &n in &plan.idle_poll_sizes {
        for serving in SERVINGS {
            let name = serving_name(serving);
            eprintln!("[idle] switchboard ({name}): {n} parked long polls");
            match idle_long_poll(serving, n, plan.settle).await {
                Ok(r) => {
                    if r.sessions < n {
                        problems.add(format!(
                            "idle long polls ({name}): only {} of {n} sessions",
                            r.sessions
                        ));
                    }
                    idle_rows(&mut t, &format!("long poll {n}, {name}"), &r);
                }
                Err(e) => problems.add(format!("idle long polls {n} ({name}): {e}")),
            }
        }
        for serving in SERVINGS {
            let name = serving_name(serving);
            eprintln!("[idle] switchboard ({name}): {n} parked SSE streams");
            match idle_sse(serving, n, plan.settle).await {
                Ok(r) => {
                    if r.sessions < n {
                        problems.add(format!(
                            "idle SSE ({name}): only {} of {n} sessions",
                            r.sessions
                        ));
                    }
                    idle_rows(&mut t, &format!("SSE {n}, {name}"), &r);
                }
                Err(e) => problems.add(format!("idle SSE {n} ({name}): {e}")),
            }
        }
    }
    t.note("RSS after disconnect is measured 1.5 s (smoke: 0.3 s) after the clients went away; Switchboard keeps each session (and its buffer) for its 30 s resume window, so its number still includes the sessions; the allocator also keeps freed pages.");
    t.note("rows without a serving loop: every server under axum::serve. Rows naming one: Switchboard only (floor and peer have no polling or SSE transport here), served by axum::serve or by switchboard::serve (`sb_server --serve switchboard`: defaults, with the per-address limits lifted and 100,000 connections allowed, since the clients come from 8 loopback addresses).");
    t.note("parked long poll: a session opened with POST /open whose GET /poll?wait=1 is held; parked SSE: GET /sse?v=1, first event read, the response held.");
    if heap {
        t.note("run under `load --heap`: the Switchboard servers are sb_heap (dhat's allocator), so RSS is dhat's, not the allocator's; floor and peer were not run.");
    }
    t
}

/// The per-session and RSS-with-sessions rows of one Switchboard-only idle measurement.
fn idle_rows(t: &mut Table, label: &str, r: &Idle) {
    t.row(
        &format!("{label}: per session"),
        "KiB",
        1,
        vec![Some(r.per_session_kib()), None, None],
    );
    t.row(
        &format!("{label}: RSS with sessions"),
        "MiB",
        1,
        vec![Some(r.loaded as f64 / MIB), None, None],
    );
}

// ---------------------------------------------------------------------------------------------
// 2. fan-out

/// Result of one fan-out run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FanOut {
    pub(crate) rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    pub(crate) cpu_per_m: f64,
    load_cpu_per_m: f64,
    pub(crate) lost: u64,
    pub(crate) dups: u64,
    reordered: u64,
    secs: f64,
}

async fn fanout_one(kind: Kind, n: usize, m: u64, limit: Duration) -> Result<FanOut, Error> {
    fanout_on(Server::start(kind, &[]).await?, n, m, limit).await
}

/// The fan-out of scenario 2 against `server`, which it stops at the end.
pub(crate) async fn fanout_on(
    server: Server,
    n: usize,
    m: u64,
    limit: Duration,
) -> Result<FanOut, Error> {
    let kind = server.kind();
    let port = server.port();
    let (drivers, failed) = clients::connect_many(kind, port, n).await;
    if failed > 0 {
        return Err(format!("{failed} of {n} connections failed").into());
    }
    let shared = Arc::new(Shared::default());
    let (stop, stop_rx) = watch::channel(false);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let mut cmd_rx = Some(cmd_rx);
    let mut set = JoinSet::new();
    for (i, d) in drivers {
        let role = WsRole::counted(port);
        let cmds = if i == 0 { cmd_rx.take() } else { None };
        clients::spawn_ws(&mut set, d, i, shared.clone(), stop_rx.clone(), cmds, role);
    }
    if !clients::warm_up(&cmd_tx, &shared, n as u64, Duration::from_secs(30)).await {
        clients::stop_all(&stop, &mut set).await;
        server.stop().await;
        return Err("warm-up broadcast did not reach every client".into());
    }
    sleep(Duration::from_millis(200)).await;
    let cpu0 = server.cpu()?;
    let load_cpu0 = sys::cpu_seconds(std::process::id())?;
    let t0 = payload::now_ns();
    let expected = n as u64 * m;
    cmd_tx
        .send(Cmd::Burst { first: 1, count: m })
        .map_err(|_| "sender task is gone")?;
    let complete = wait_until(
        limit,
        Duration::from_secs(10),
        || shared.deliveries.load(Ordering::Relaxed) >= expected,
        || shared.deliveries.load(Ordering::Relaxed),
    )
    .await;
    let cpu1 = server.cpu()?;
    let load_cpu1 = sys::cpu_seconds(std::process::id())?;
    if !complete {
        eprintln!("  {kind}: not every delivery arrived before the time limit");
    }
    clients::stop_all(&stop, &mut set).await;
    server.stop().await;
    let delivered = shared.deliveries.load(Ordering::Relaxed);
    let last = shared.last_ns.load(Ordering::Relaxed);
    let secs = last.saturating_sub(t0) as f64 / 1e9;
    let s = shared.lat.summary();
    Ok(FanOut {
        rate: delivered as f64 / secs.max(1e-9),
        p50: s.p50_ms,
        p99: s.p99_ms,
        p999: s.p999_ms,
        cpu_per_m: (cpu1 - cpu0) / (delivered.max(1) as f64 / 1e6),
        load_cpu_per_m: (load_cpu1 - load_cpu0) / (delivered.max(1) as f64 / 1e6),
        lost: expected.saturating_sub(delivered),
        dups: shared.app_dups.load(Ordering::Relaxed),
        reordered: shared.out_of_order.load(Ordering::Relaxed),
        secs,
    })
}

/// Scenario 2: one room of N clients, one sender, M back-to-back broadcasts.
pub async fn fanout(plan: &Plan, problems: &mut Problems) -> Table {
    let (n, m) = (plan.fanout_clients, plan.fanout_messages);
    let mut t = Table::new(
        "fanout",
        &format!(
            "2. fan-out: {n} WebSocket clients in one room, {m} broadcasts of 100 B back to back"
        ),
        &columns_all(),
    );
    let mut results = Vec::new();
    for kind in Kind::ALL {
        eprintln!("[fanout] {kind}: {n} clients x {m} messages");
        let run = fanout_one(kind, n, m, plan.phase_limit()).await;
        let r = problems.keep(format!("fan-out {kind}"), run);
        if let Some(r) = &r {
            if r.lost > 0 {
                problems.add(format!("fan-out {kind}: {} deliveries lost", r.lost));
            }
            if r.dups > 0 {
                problems.add(format!("fan-out {kind}: {} duplicate deliveries", r.dups));
            }
        }
        results.push(r);
    }
    let col = |f: &dyn Fn(&FanOut) -> f64| results.iter().map(|r| r.as_ref().map(f)).collect();
    t.row("deliveries/s", "msg/s", 0, col(&|r| r.rate));
    t.row("latency p50", "ms", 2, col(&|r| r.p50));
    t.row("latency p99", "ms", 2, col(&|r| r.p99));
    t.row("latency p99.9", "ms", 2, col(&|r| r.p999));
    t.row(
        "server CPU per 1M deliveries",
        "s",
        2,
        col(&|r| r.cpu_per_m),
    );
    t.row(
        "load generator CPU per 1M deliveries",
        "s",
        2,
        col(&|r| r.load_cpu_per_m),
    );
    t.row("first send to last delivery", "s", 2, col(&|r| r.secs));
    t.row(
        &format!("deliveries lost (of {})", n as u64 * m),
        "",
        0,
        col(&|r| r.lost as f64),
    );
    t.row("duplicate deliveries", "", 0, col(&|r| r.dups as f64));
    t.row(
        "out-of-order deliveries",
        "",
        0,
        col(&|r| r.reordered as f64),
    );
    t.note("the sender is one of the N clients and receives its own broadcasts; Switchboard clients acknowledge every 64 messages or 100 ms.");
    t.note("the load generator shares the 2 cores with the server, so absolute rates are a lower bound for every column alike.");
    t
}

// ---------------------------------------------------------------------------------------------
// 3. echo

/// Result of one echo run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Echo {
    pub(crate) sent: u64,
    pub(crate) lost: u64,
    p50: f64,
    pub(crate) p99: f64,
    p999: f64,
    max: f64,
    pub(crate) cpu: f64,
}

async fn echo_one(kind: Kind, conns: usize, rate: u64, secs: u64) -> Result<Echo, Error> {
    echo_on(Server::start(kind, &[]).await?, conns, rate, secs).await
}

/// The echo of scenario 3 against `server`, which it stops at the end.
pub(crate) async fn echo_on(
    server: Server,
    conns: usize,
    rate: u64,
    secs: u64,
) -> Result<Echo, Error> {
    let kind = server.kind();
    let port = server.port();
    let (drivers, failed) = clients::connect_many(kind, port, conns).await;
    if failed > 0 {
        return Err(format!("{failed} of {conns} connections failed").into());
    }
    let shared = Arc::new(Shared::default());
    let (stop, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let mut senders = Vec::new();
    for (i, d) in drivers {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let role = WsRole::counted(port);
        clients::spawn_ws(
            &mut set,
            d,
            i,
            shared.clone(),
            stop_rx.clone(),
            Some(rx),
            role,
        );
    }
    sleep(Duration::from_millis(200)).await;
    let cpu0 = server.cpu()?;
    // open loop: message k is due at start + k/rate, timestamped with its due time
    let total = rate * secs;
    let start_ns = payload::now_ns();
    let start = Instant::now();
    let mut k = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while k < total {
        tick.tick().await;
        let elapsed = start.elapsed().as_nanos() as u64;
        let due = (elapsed as u128 * rate as u128 / 1_000_000_000) as u64;
        while k < total && k <= due {
            let ts = start_ns + (k as u128 * 1_000_000_000 / rate as u128) as u64;
            let target = &senders[(k as usize) % senders.len()];
            let _ = target.send(Cmd::Raw(payload::make('e', ts, k + 1)));
            k += 1;
        }
    }
    wait_until(
        Duration::from_secs(10),
        Duration::from_secs(5),
        || shared.echoes.load(Ordering::Relaxed) >= total,
        || shared.echoes.load(Ordering::Relaxed),
    )
    .await;
    let cpu1 = server.cpu()?;
    clients::stop_all(&stop, &mut set).await;
    server.stop().await;
    let got = shared.echoes.load(Ordering::Relaxed);
    let s = shared.lat.summary();
    Ok(Echo {
        sent: total,
        lost: total.saturating_sub(got),
        p50: s.p50_ms,
        p99: s.p99_ms,
        p999: s.p999_ms,
        max: s.max_ms,
        cpu: cpu1 - cpu0,
    })
}

/// Scenario 3: open-loop echo round trips over many connections.
pub async fn echo(plan: &Plan, problems: &mut Problems) -> Table {
    let (c, r, s) = (plan.echo_conns, plan.echo_rate, plan.echo_secs);
    let mut t = Table::new(
        "echo",
        &format!(
            "3. echo round trip: {c} WebSocket connections, open loop {r} msg/s total for {s} s"
        ),
        &columns_all(),
    );
    let mut results = Vec::new();
    for kind in Kind::ALL {
        eprintln!("[echo] {kind}: {c} connections, {r} msg/s, {s} s");
        let e = problems.keep(format!("echo {kind}"), echo_one(kind, c, r, s).await);
        if let Some(e) = &e
            && e.lost > 0
        {
            problems.add(format!("echo {kind}: {} of {} lost", e.lost, e.sent));
        }
        results.push(e);
    }
    let col = |f: &dyn Fn(&Echo) -> f64| results.iter().map(|r| r.as_ref().map(f)).collect();
    t.row("round trip p50", "ms", 3, col(&|e| e.p50));
    t.row("round trip p99", "ms", 3, col(&|e| e.p99));
    t.row("round trip p99.9", "ms", 3, col(&|e| e.p999));
    t.row("round trip max", "ms", 3, col(&|e| e.max));
    t.row("server CPU", "s", 2, col(&|e| e.cpu));
    t.row("echoes lost", "", 0, col(&|e| e.lost as f64));
    t.note("latency is measured from each message's scheduled send time (open loop: no coordinated omission).");
    t
}

// ---------------------------------------------------------------------------------------------
// 4. long polling

/// Result of one long-polling run.
#[derive(Debug, Clone, Copy, Default)]
struct LongPoll {
    p50: f64,
    p99: f64,
    p999: f64,
    gets_per_msg: f64,
    delivered: u64,
    lost: u64,
    cpu: f64,
}

/// The three ways the polling scenario receives.
#[derive(Debug, Clone, Copy)]
enum PollVariant {
    /// Long polling, broadcasts at normal priority.
    Normal,
    /// Long polling, broadcasts at low priority (held up to 50 ms).
    Low,
    /// Short polling every [`SHORT_POLL_INTERVAL`], broadcasts at normal priority.
    Short,
}

/// The short-polling clients' interval: the JavaScript client's default `pollInterval`.
const SHORT_POLL_INTERVAL: Duration = Duration::from_secs(1);

async fn long_poll_one(plan: &Plan, variant: PollVariant) -> Result<LongPoll, Error> {
    let (n, rate, secs) = (plan.poll_clients, plan.poll_rate, plan.poll_secs);
    let args: &[&str] = match variant {
        PollVariant::Low => &["--low", "--coalescing-ms", "50"],
        PollVariant::Normal | PollVariant::Short => &[],
    };
    let mode = match variant {
        PollVariant::Short => PollMode::Short(SHORT_POLL_INTERVAL),
        PollVariant::Normal | PollVariant::Low => PollMode::Long,
    };
    let server = Server::start(Kind::Switchboard, args).await?;
    let port = server.port();
    let shared = Arc::new(Shared::default());
    let opened = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let total = rate * secs;
    let https = clients::http_clients()?;
    let base = proto::sb_base(port);
    for i in 0..n {
        let http = Http::with_client(&base, https[i % https.len()].clone());
        clients::spawn_poller(
            &mut set,
            http,
            mode,
            shared.clone(),
            opened.clone(),
            stop_rx.clone(),
            total,
        );
    }
    // the sender: one WebSocket session in the same room (its own deliveries are not counted)
    let sender = proto::Driver::connect(Kind::Switchboard, port, proto::source_addr(0)).await?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let role = WsRole::uncounted(port);
    clients::spawn_ws(
        &mut set,
        sender,
        0,
        shared.clone(),
        stop_rx.clone(),
        Some(cmd_rx),
        role,
    );
    let target = n as u64;
    wait_until(
        Duration::from_secs(30),
        Duration::from_secs(10),
        || opened.load(Ordering::Relaxed) >= target,
        || opened.load(Ordering::Relaxed),
    )
    .await;
    if !clients::warm_up(&cmd_tx, &shared, target, Duration::from_secs(30)).await {
        clients::stop_all(&stop, &mut set).await;
        server.stop().await;
        return Err("warm-up broadcast did not reach every long-polling client".into());
    }
    sleep(Duration::from_millis(200)).await;
    let cpu0 = server.cpu()?;
    let start = Instant::now();
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    for k in 0..total {
        tokio::time::sleep_until(start + period * (k as u32)).await;
        let _ = cmd_tx.send(Cmd::Burst {
            first: k + 1,
            count: 1,
        });
    }
    let expected = total * target;
    wait_until(
        Duration::from_secs(15),
        Duration::from_secs(5),
        || shared.deliveries.load(Ordering::Relaxed) >= expected,
        || shared.deliveries.load(Ordering::Relaxed),
    )
    .await;
    let cpu1 = server.cpu()?;
    clients::stop_all(&stop, &mut set).await;
    server.stop().await;
    let delivered = shared.deliveries.load(Ordering::Relaxed);
    let gets = shared.gets.load(Ordering::Relaxed);
    let s = shared.lat.summary();
    Ok(LongPoll {
        p50: s.p50_ms,
        p99: s.p99_ms,
        p999: s.p999_ms,
        gets_per_msg: gets as f64 / delivered.max(1) as f64,
        delivered,
        lost: expected.saturating_sub(delivered),
        cpu: cpu1 - cpu0,
    })
}

/// Scenario 4: polling clients receiving a steady broadcast: long polling at normal and at low
/// priority, and short polling.
pub async fn long_poll(plan: &Plan, problems: &mut Problems) -> Table {
    let (n, r, s) = (plan.poll_clients, plan.poll_rate, plan.poll_secs);
    let mut t = Table::new(
        "long_poll",
        &format!("4. polling (Switchboard only): {n} clients, {r} broadcasts/s for {s} s"),
        &["normal", "low", "short"],
    );
    let mut results = Vec::new();
    for variant in [PollVariant::Normal, PollVariant::Low, PollVariant::Short] {
        eprintln!("[poll] {n} clients, {r}/s for {s} s, {variant:?}");
        let lp = problems.keep(
            format!("polling ({variant:?})"),
            long_poll_one(plan, variant).await,
        );
        if let Some(lp) = &lp
            && lp.lost > 0
        {
            problems.add(format!(
                "polling ({variant:?}): {} deliveries lost",
                lp.lost
            ));
        }
        results.push(lp);
    }
    let col = |f: &dyn Fn(&LongPoll) -> f64| results.iter().map(|r| r.as_ref().map(f)).collect();
    t.row("delivery latency p50", "ms", 2, col(&|r| r.p50));
    t.row("delivery latency p99", "ms", 2, col(&|r| r.p99));
    t.row("delivery latency p99.9", "ms", 2, col(&|r| r.p999));
    t.row(
        "HTTP GETs per delivered message",
        "",
        3,
        col(&|r| r.gets_per_msg),
    );
    t.row("server CPU", "s", 2, col(&|r| r.cpu));
    t.row("messages delivered", "", 0, col(&|r| r.delivered as f64));
    t.row("messages lost", "", 0, col(&|r| r.lost as f64));
    t.note("normal and low: long polling (wait=1); low: sb_server --low --coalescing-ms 50 (broadcasts at low priority, held up to 50 ms).");
    t.note("short: short polling (wait=0), the next poll 1 s after each answer (the JavaScript client's pollInterval), normal priority.");
    t
}

// ---------------------------------------------------------------------------------------------
// 5. reconnect storm

/// Result of the storm.
#[derive(Debug, Clone, Copy, Default)]
struct Storm {
    resumed: u64,
    resume_ms: f64,
    caught_up: u64,
    caught_up_ms: f64,
    lost: u64,
    dups: u64,
    gaps: u64,
    reordered: u64,
    redelivered: u64,
    errors: u64,
    p99: f64,
}

async fn storm_one(plan: &Plan) -> Result<Storm, Error> {
    let (n, rate) = (plan.storm_clients, plan.storm_rate);
    let server = Server::start(Kind::Switchboard, &[]).await?;
    let port = server.port();
    let (drivers, failed) = clients::connect_many(Kind::Switchboard, port, n).await;
    if failed > 0 {
        return Err(format!("{failed} of {n} connections failed").into());
    }
    let sender = proto::Driver::connect(Kind::Switchboard, port, proto::source_addr(n)).await?;
    let shared = Arc::new(Shared::default());
    shared.k_drop.store(u64::MAX, Ordering::Relaxed);
    let (stop, stop_rx) = watch::channel(false);
    let (storm, storm_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for (i, d) in drivers {
        let role = WsRole::storm(port, storm_rx.clone());
        clients::spawn_ws(&mut set, d, i, shared.clone(), stop_rx.clone(), None, role);
    }
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let role = WsRole::uncounted(port);
    clients::spawn_ws(
        &mut set,
        sender,
        n,
        shared.clone(),
        stop_rx.clone(),
        Some(cmd_rx),
        role,
    );
    if !clients::warm_up(&cmd_tx, &shared, n as u64, Duration::from_secs(30)).await {
        clients::stop_all(&stop, &mut set).await;
        server.stop().await;
        return Err("warm-up broadcast did not reach every client".into());
    }
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let mut k = 0u64;
    let send_next = |k: &mut u64| {
        *k += 1;
        let _ = cmd_tx.send(Cmd::Burst {
            first: *k,
            count: 1,
        });
    };
    // steady broadcast for 2 s, then every client drops its socket at once
    while start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep_until(start + period * (k as u32 + 1)).await;
        send_next(&mut k);
    }
    shared.k_drop.store(k, Ordering::Relaxed);
    let drop_ns = payload::now_ns();
    let _ = storm.send(true);
    let target = n as u64;
    let storm_deadline = Instant::now() + plan.phase_limit();
    loop {
        if shared.caught_up.load(Ordering::Relaxed) >= target || Instant::now() > storm_deadline {
            break;
        }
        let next = start + period * (k as u32 + 1);
        tokio::select! {
            () = tokio::time::sleep_until(next) => send_next(&mut k),
            () = sleep(Duration::from_millis(5)) => {}
        }
    }
    // one more second of steady traffic after everyone caught up
    let tail = Instant::now() + Duration::from_secs(1);
    while Instant::now() < tail {
        tokio::time::sleep_until(start + period * (k as u32 + 1)).await;
        send_next(&mut k);
    }
    let expected = k * target;
    wait_until(
        Duration::from_secs(15),
        Duration::from_secs(5),
        || shared.deliveries.load(Ordering::Relaxed) >= expected,
        || shared.deliveries.load(Ordering::Relaxed),
    )
    .await;
    clients::stop_all(&stop, &mut set).await;
    server.stop().await;
    let ms = |ns: u64| ns.saturating_sub(drop_ns) as f64 / 1e6;
    let delivered = shared.deliveries.load(Ordering::Relaxed);
    Ok(Storm {
        resumed: shared.resumed.load(Ordering::Relaxed),
        resume_ms: ms(shared.resumed_last_ns.load(Ordering::Relaxed)),
        caught_up: shared.caught_up.load(Ordering::Relaxed),
        caught_up_ms: ms(shared.caught_up_last_ns.load(Ordering::Relaxed)),
        lost: expected.saturating_sub(delivered),
        dups: shared.app_dups.load(Ordering::Relaxed),
        gaps: shared.seq_gaps.load(Ordering::Relaxed),
        reordered: shared.out_of_order.load(Ordering::Relaxed),
        redelivered: shared.dup_frames.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        p99: shared.lat.summary().p99_ms,
    })
}

/// Scenario 5: every session drops its socket at once and resumes with `sid` + `ack`.
pub async fn storm(plan: &Plan, problems: &mut Problems) -> Table {
    let (n, r) = (plan.storm_clients, plan.storm_rate);
    let mut t = Table::new(
        "storm",
        &format!(
            "5. reconnect storm (Switchboard only): {n} WebSocket sessions, {r} broadcasts/s, all sockets reset at once"
        ),
        &["switchboard"],
    );
    eprintln!("[storm] {n} sessions, {r}/s");
    match storm_one(plan).await {
        Ok(s) => {
            if s.lost > 0 || s.dups > 0 || s.gaps > 0 {
                problems.add(format!(
                    "storm: {} lost, {} duplicates, {} gaps",
                    s.lost, s.dups, s.gaps
                ));
            }
            if s.caught_up < n as u64 {
                problems.add(format!(
                    "storm: only {} of {n} sessions caught up",
                    s.caught_up
                ));
            }
            t.row("sessions resumed", "", 0, vec![Some(s.resumed as f64)]);
            t.row("time until all resumed", "ms", 1, vec![Some(s.resume_ms)]);
            t.row(
                "time until all caught up",
                "ms",
                1,
                vec![Some(s.caught_up_ms)],
            );
            t.row("messages lost", "", 0, vec![Some(s.lost as f64)]);
            t.row(
                "duplicates delivered to the application",
                "",
                0,
                vec![Some(s.dups as f64)],
            );
            t.row("sequence gaps", "", 0, vec![Some(s.gaps as f64)]);
            t.row(
                "out-of-order deliveries",
                "",
                0,
                vec![Some(s.reordered as f64)],
            );
            t.row(
                "redelivered frames dropped by seq dedup",
                "",
                0,
                vec![Some(s.redelivered as f64)],
            );
            t.row(
                "delivery latency p99 (whole run)",
                "ms",
                1,
                vec![Some(s.p99)],
            );
            t.row("client errors", "", 0, vec![Some(s.errors as f64)]);
        }
        Err(e) => problems.add(format!("storm: {e}")),
    }
    t.note("caught up: resumed on a new socket and holding every broadcast sent before the drop; times are from the drop.");
    t.note("the abrupt drop is a TCP RST (SO_LINGER 0), no close frame; each client resumes with sid and ack = last seq received.");
    t
}

// ---------------------------------------------------------------------------------------------
// 6. cluster (issue 10)

/// A cluster under test: one `redis-server` of its own and two nodes of `kind` on it
/// (`--redis URL`).
#[derive(Debug)]
struct Cluster {
    redis: RedisServer,
    nodes: Vec<Server>,
}

impl Cluster {
    async fn start(kind: Kind) -> Result<Cluster, Error> {
        let redis = RedisServer::start().await?;
        let url = redis.url();
        let mut nodes = Vec::new();
        for _ in 0..2 {
            nodes.push(Server::start(kind, &["--redis", &url]).await?);
        }
        Ok(Cluster { redis, nodes })
    }

    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(Server::port).collect()
    }

    /// CPU seconds of both nodes together.
    fn cpu(&self) -> Result<f64, Error> {
        self.nodes.iter().map(Server::cpu).sum()
    }

    async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
        self.redis.stop().await;
    }
}

/// Result of one cluster fan-out run.
#[derive(Debug, Clone, Default)]
struct ClusterFanOut {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_per_m: f64,
    redis_cpu_per_m: f64,
    load_cpu_per_m: f64,
    lost: u64,
    dups: u64,
    reordered: u64,
    secs: f64,
    commands_per_delivery: f64,
    in_per_delivery: f64,
    out_per_delivery: f64,
    commands_per_broadcast: f64,
    commands: String,
}

/// Fan-out over the two nodes of a cluster: client `i` on node `i % 2`, client 0 (on node 0)
/// sends `m` broadcasts back to back, every client counts what it gets.
async fn cluster_fanout_one(
    kind: Kind,
    n: usize,
    m: u64,
    limit: Duration,
) -> Result<ClusterFanOut, Error> {
    let cluster = Cluster::start(kind).await?;
    let ports = cluster.ports();
    let (drivers, failed) = clients::connect_spread(kind, &ports, n).await;
    if failed > 0 {
        cluster.stop().await;
        return Err(format!("{failed} of {n} connections failed").into());
    }
    let shared = Arc::new(Shared::default());
    let (stop, stop_rx) = watch::channel(false);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let mut cmd_rx = Some(cmd_rx);
    let mut set = JoinSet::new();
    for (i, d) in drivers {
        let role = WsRole::counted(ports.get(i % ports.len()).copied().unwrap_or_default());
        let cmds = if i == 0 { cmd_rx.take() } else { None };
        clients::spawn_ws(&mut set, d, i, shared.clone(), stop_rx.clone(), cmds, role);
    }
    if !clients::warm_up(&cmd_tx, &shared, n as u64, Duration::from_secs(30)).await {
        clients::stop_all(&stop, &mut set).await;
        cluster.stop().await;
        return Err("warm-up broadcast did not reach every client".into());
    }
    sleep(Duration::from_millis(200)).await;
    let before = cluster.redis.counters().await?;
    let cpu0 = cluster.cpu()?;
    let redis_cpu0 = cluster.redis.cpu()?;
    let load_cpu0 = sys::cpu_seconds(std::process::id())?;
    let t0 = payload::now_ns();
    let expected = n as u64 * m;
    cmd_tx
        .send(Cmd::Burst { first: 1, count: m })
        .map_err(|_| "sender task is gone")?;
    let complete = wait_until(
        limit,
        Duration::from_secs(10),
        || shared.deliveries.load(Ordering::Relaxed) >= expected,
        || shared.deliveries.load(Ordering::Relaxed),
    )
    .await;
    let cpu1 = cluster.cpu()?;
    let redis_cpu1 = cluster.redis.cpu()?;
    let load_cpu1 = sys::cpu_seconds(std::process::id())?;
    let after = cluster.redis.counters().await?;
    if !complete {
        eprintln!("  {kind}: not every delivery arrived before the time limit");
    }
    clients::stop_all(&stop, &mut set).await;
    cluster.stop().await;
    let delivered = shared.deliveries.load(Ordering::Relaxed);
    let last = shared.last_ns.load(Ordering::Relaxed);
    let secs = last.saturating_sub(t0) as f64 / 1e9;
    let s = shared.lat.summary();
    let redis = before.delta(&after);
    let per_delivery = |x: u64| x as f64 / delivered.max(1) as f64;
    let per_m = |cpu: f64| cpu / (delivered.max(1) as f64 / 1e6);
    Ok(ClusterFanOut {
        rate: delivered as f64 / secs.max(1e-9),
        p50: s.p50_ms,
        p99: s.p99_ms,
        cpu_per_m: per_m(cpu1 - cpu0),
        redis_cpu_per_m: per_m(redis_cpu1 - redis_cpu0),
        load_cpu_per_m: per_m(load_cpu1 - load_cpu0),
        lost: expected.saturating_sub(delivered),
        dups: shared.app_dups.load(Ordering::Relaxed),
        reordered: shared.out_of_order.load(Ordering::Relaxed),
        secs,
        commands_per_delivery: per_delivery(redis.commands()),
        in_per_delivery: per_delivery(redis.net_in),
        out_per_delivery: per_delivery(redis.net_out),
        commands_per_broadcast: redis.commands() as f64 / m.max(1) as f64,
        commands: redis.describe(),
    })
}

/// Where the latency run's servers and receivers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LatencySetup {
    /// One plain `sb_server` (no Redis): sender and receivers on it.
    Single,
    /// Two nodes: the sender on node 0, the receivers on node 1.
    CrossNode,
    /// Two nodes: the sender and the receivers on node 0 (the broadcast still goes through
    /// Redis and back).
    SameNode,
}

/// Result of one broadcast latency run.
#[derive(Debug, Clone, Copy, Default)]
struct BroadcastLatency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    lost: u64,
    cpu: f64,
}

/// Open-loop broadcasts (`rate` per second for `secs`) from one sender to `receivers` clients.
async fn cluster_latency_one(
    setup: LatencySetup,
    receivers: usize,
    rate: u64,
    secs: u64,
) -> Result<BroadcastLatency, Error> {
    let (cluster, single) = match setup {
        LatencySetup::Single => (None, Some(Server::start(Kind::Switchboard, &[]).await?)),
        LatencySetup::CrossNode | LatencySetup::SameNode => {
            (Some(Cluster::start(Kind::Switchboard).await?), None)
        }
    };
    let ports = match (&cluster, &single) {
        (Some(c), _) => c.ports(),
        (None, Some(s)) => vec![s.port()],
        (None, None) => return Err("no server".into()),
    };
    let sender_port = ports.first().copied().unwrap_or_default();
    let receiver_port = match setup {
        LatencySetup::CrossNode => ports.get(1).copied().unwrap_or_default(),
        LatencySetup::Single | LatencySetup::SameNode => sender_port,
    };
    let cpu = || -> Result<f64, Error> {
        match (&cluster, &single) {
            (Some(c), _) => c.cpu(),
            (None, Some(s)) => s.cpu(),
            (None, None) => Ok(0.0),
        }
    };
    let result = async {
        let (drivers, failed) =
            clients::connect_spread(Kind::Switchboard, &[receiver_port], receivers).await;
        if failed > 0 {
            return Err(Error::from(format!(
                "{failed} of {receivers} connections failed"
            )));
        }
        let sender = proto::Driver::connect(
            Kind::Switchboard,
            sender_port,
            proto::source_addr(receivers),
        )
        .await?;
        let shared = Arc::new(Shared::default());
        let (stop, stop_rx) = watch::channel(false);
        let mut set = JoinSet::new();
        for (i, d) in drivers {
            let role = WsRole::counted(receiver_port);
            clients::spawn_ws(&mut set, d, i, shared.clone(), stop_rx.clone(), None, role);
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let role = WsRole::uncounted(sender_port);
        let (sh, st) = (shared.clone(), stop_rx.clone());
        clients::spawn_ws(&mut set, sender, receivers, sh, st, Some(cmd_rx), role);
        if !clients::warm_up(&cmd_tx, &shared, receivers as u64, Duration::from_secs(30)).await {
            clients::stop_all(&stop, &mut set).await;
            return Err("warm-up broadcast did not reach every receiver".into());
        }
        sleep(Duration::from_millis(200)).await;
        let cpu0 = cpu()?;
        // open loop: broadcast k is due at start + k/rate, timestamped with its due time
        let total = rate * secs;
        let start_ns = payload::now_ns();
        let start = Instant::now();
        let mut k = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while k < total {
            tick.tick().await;
            let elapsed = start.elapsed().as_nanos() as u64;
            let due = (elapsed as u128 * rate as u128 / 1_000_000_000) as u64;
            while k < total && k <= due {
                let ts = start_ns + (k as u128 * 1_000_000_000 / rate as u128) as u64;
                let _ = cmd_tx.send(Cmd::Raw(payload::make('b', ts, k + 1)));
                k += 1;
            }
        }
        let expected = total * receivers as u64;
        wait_until(
            Duration::from_secs(10),
            Duration::from_secs(5),
            || shared.deliveries.load(Ordering::Relaxed) >= expected,
            || shared.deliveries.load(Ordering::Relaxed),
        )
        .await;
        let cpu1 = cpu()?;
        clients::stop_all(&stop, &mut set).await;
        let got = shared.deliveries.load(Ordering::Relaxed);
        let s = shared.lat.summary();
        Ok(BroadcastLatency {
            p50: s.p50_ms,
            p99: s.p99_ms,
            p999: s.p999_ms,
            max: s.max_ms,
            lost: expected.saturating_sub(got),
            cpu: cpu1 - cpu0,
        })
    }
    .await;
    if let Some(c) = cluster {
        c.stop().await;
    }
    if let Some(s) = single {
        s.stop().await;
    }
    result
}

/// The transports of the Redis cost measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CostTransport {
    /// A WebSocket that lands on node 1 and takes the session over from node 0.
    WebSocket,
    /// Long polls and POSTs to node 1 for a session node 0 owns.
    LongPoll,
    /// Short polls and POSTs to node 1 for a session node 0 owns.
    ShortPoll,
}

/// What Redis did for one phase, per message, with the background (liveness records and the
/// like, measured while idle) taken out.
#[derive(Debug, Clone, Copy, Default)]
struct PerMessage {
    commands: f64,
    net_in: f64,
    net_out: f64,
}

impl PerMessage {
    fn of(delta: &RedisDelta, secs: f64, background: &Background, messages: u64) -> PerMessage {
        let k = messages.max(1) as f64;
        PerMessage {
            commands: (delta.commands() as f64 - background.commands * secs).max(0.0) / k,
            net_in: (delta.net_in as f64 - background.net_in * secs).max(0.0) / k,
            net_out: (delta.net_out as f64 - background.net_out * secs).max(0.0) / k,
        }
    }

    fn minus(self, other: PerMessage) -> PerMessage {
        PerMessage {
            commands: self.commands - other.commands,
            net_in: self.net_in - other.net_in,
            net_out: self.net_out - other.net_out,
        }
    }
}

/// Redis's work per second with the cluster idle.
#[derive(Debug, Clone, Copy, Default)]
struct Background {
    commands: f64,
    net_in: f64,
    net_out: f64,
}

/// Result of one transport's cost measurement.
#[derive(Debug, Clone, Default)]
struct Cost {
    /// Client → server: one message per request (or frame), the server takes it and answers
    /// nothing.
    up: PerMessage,
    /// Server → client: (echo round trips) − (client → server).
    down: PerMessage,
    /// HTTP GETs per echoed message (polls).
    gets_per_echo: f64,
    background: Background,
    echo_commands: String,
    lost: u64,
}

/// The session of the cost measurement, on whatever transport.
enum CostClient {
    Ws(Box<proto::Driver>),
    Poll {
        http: Http,
        sid: String,
        seq: u64,
        rx: u64,
        wait: bool,
        gets: u64,
    },
}

impl CostClient {
    /// Opens the session on node 0 (`ports[0]`), then moves every request to node 1.
    async fn open(transport: CostTransport, ports: &[u16]) -> Result<CostClient, Error> {
        let (p0, p1) = match ports {
            [p0, p1, ..] => (*p0, *p1),
            _ => return Err("the cluster has fewer than 2 nodes".into()),
        };
        let src = proto::source_addr(0);
        match transport {
            CostTransport::WebSocket => {
                let d = proto::Driver::connect(Kind::Switchboard, p0, src).await?;
                let sid = d.opened.as_ref().map(|o| o.sid.clone()).ok_or("no sid")?;
                let rx = d.rx;
                d.drop_abruptly();
                // the resume lands on node 1, which takes the session over
                for _ in 0..100 {
                    match proto::Driver::connect_resume(
                        Kind::Switchboard,
                        p1,
                        src,
                        Some((&sid, rx)),
                    )
                    .await
                    {
                        Ok(d) if d.opened.as_ref().is_some_and(|o| o.resumed) => {
                            return Ok(CostClient::Ws(Box::new(d)));
                        }
                        Ok(_) => return Err("node 1 opened a new session instead".into()),
                        Err(_) => sleep(Duration::from_millis(50)).await,
                    }
                }
                Err("the WebSocket on node 1 could not resume the session".into())
            }
            CostTransport::LongPoll | CostTransport::ShortPoll => {
                let https = clients::http_clients()?;
                let client = https.first().cloned().ok_or("no HTTP client")?;
                let sid = Http::with_client(&proto::sb_base(p0), client.clone())
                    .open(None)
                    .await?
                    .sid;
                Ok(CostClient::Poll {
                    http: Http::with_client(&proto::sb_base(p1), client),
                    sid,
                    seq: 0,
                    rx: 0,
                    wait: transport == CostTransport::LongPoll,
                    gets: 0,
                })
            }
        }
    }

    /// Sends one payload (one WebSocket frame, or one POST answered by the owner).
    async fn send(&mut self, text: &str) -> Result<(), Error> {
        match self {
            CostClient::Ws(d) => d.send(&[text.to_owned()]).await,
            CostClient::Poll { http, sid, seq, .. } => {
                *seq += 1;
                let frame = ClientFrame::msg(*seq, Message::text(text));
                http.post(sid, &[frame]).await?;
                Ok(())
            }
        }
    }

    /// Receives until the payload `want` arrives (at most 10 s; short polls every 2 ms).
    async fn recv_until(&mut self, want: &str) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if Instant::now() > deadline {
                return Err(format!("no echo of {want:?} within 10 s").into());
            }
            match self {
                CostClient::Ws(d) => {
                    let got = tokio::time::timeout(Duration::from_secs(10), d.recv())
                        .await
                        .map_err(|_| "echo timed out")??;
                    match got {
                        Some(p) if p == want => return Ok(()),
                        Some(_) => {}
                        None => return Err("socket closed".into()),
                    }
                }
                CostClient::Poll {
                    http,
                    sid,
                    rx,
                    wait,
                    gets,
                    ..
                } => {
                    *gets += 1;
                    let mut found = false;
                    for f in http.poll(sid, *rx, *wait).await? {
                        if let ServerFrame::Msg { seq, message } = f
                            && seq > *rx
                        {
                            *rx = seq;
                            found |= message.as_text() == Some(want);
                        }
                    }
                    if found {
                        return Ok(());
                    }
                    if !*wait {
                        sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        }
    }

    fn gets(&self) -> u64 {
        match self {
            CostClient::Ws(_) => 0,
            CostClient::Poll { gets, .. } => *gets,
        }
    }

    async fn close(self) {
        match self {
            CostClient::Ws(d) => d.close().await,
            CostClient::Poll { http, sid, .. } => {
                let _ = http.post(&sid, &[ClientFrame::Close]).await;
            }
        }
    }
}

/// Redis commands and bytes per message for one transport whose requests land off the owner.
async fn cluster_cost_one(transport: CostTransport, k: u64) -> Result<Cost, Error> {
    let cluster = Cluster::start(Kind::Switchboard).await?;
    let result = async {
        let mut client = CostClient::open(transport, &cluster.ports()).await?;
        // steady state: the handover (WebSocket) and the owner lookups (polls) are behind us
        for i in 0..5 {
            let p = payload::make('e', 0, i + 1);
            client.send(&p).await?;
            client.recv_until(&p).await?;
        }
        let redis = &cluster.redis;
        // what the idle cluster costs per second (liveness records, ownership refreshes)
        let idle = Duration::from_secs(2);
        let c0 = redis.counters().await?;
        sleep(idle).await;
        let c1 = redis.counters().await?;
        let bg = c0.delta(&c1);
        let secs = idle.as_secs_f64();
        let background = Background {
            commands: bg.commands() as f64 / secs,
            net_in: bg.net_in as f64 / secs,
            net_out: bg.net_out as f64 / secs,
        };
        // client → server: payloads the server takes and does not answer (`n|…`)
        let a0 = redis.counters().await?;
        let t = Instant::now();
        for i in 0..k {
            client.send(&payload::make('n', 0, i + 1)).await?;
        }
        if transport == CostTransport::WebSocket {
            // nothing answers them: give the server a moment to have read them all
            sleep(Duration::from_millis(200)).await;
        }
        let up_secs = t.elapsed().as_secs_f64();
        let a1 = redis.counters().await?;
        // echo round trips: client → server and server → client
        let gets0 = client.gets();
        let b0 = redis.counters().await?;
        let t = Instant::now();
        let mut lost = 0;
        for i in 0..k {
            let p = payload::make('e', 0, 100 + i);
            client.send(&p).await?;
            if client.recv_until(&p).await.is_err() {
                lost += 1;
            }
        }
        let echo_secs = t.elapsed().as_secs_f64();
        let b1 = redis.counters().await?;
        let gets = client.gets() - gets0;
        client.close().await;
        let up = PerMessage::of(&a0.delta(&a1), up_secs, &background, k);
        let echo_delta = b0.delta(&b1);
        let echo = PerMessage::of(&echo_delta, echo_secs, &background, k);
        Ok(Cost {
            up,
            down: echo.minus(up),
            gets_per_echo: gets as f64 / k.max(1) as f64,
            background,
            echo_commands: echo_delta.describe(),
            lost,
        })
    }
    .await;
    cluster.stop().await;
    result
}

/// Scenario 6: Switchboard as a cluster of two nodes on one Redis (issue 10): fan-out against
/// socketioxide with its Redis adapter, cross-node broadcast latency, and what Redis does per
/// message.
pub async fn cluster(plan: &Plan, problems: &mut Problems) -> Vec<Table> {
    vec![
        cluster_fanout(plan, problems).await,
        cluster_latency(plan, problems).await,
        cluster_cost(plan, problems).await,
    ]
}

async fn cluster_fanout(plan: &Plan, problems: &mut Problems) -> Table {
    let (n, m) = (plan.cluster_clients, plan.cluster_messages);
    let mut t = Table::new(
        "cluster_fanout",
        &format!(
            "6a. cluster fan-out: {n} WebSocket clients over 2 nodes on one Redis, {m} broadcasts of 100 B back to back from node 0"
        ),
        &["switchboard", "peer"],
    );
    let mut results = Vec::new();
    for kind in [Kind::Switchboard, Kind::Peer] {
        eprintln!("[cluster] fan-out {kind}: {n} clients on 2 nodes x {m} messages");
        let run = cluster_fanout_one(kind, n, m, plan.phase_limit()).await;
        let r = problems.keep(format!("cluster fan-out {kind}"), run);
        if let Some(r) = &r {
            if r.lost > 0 {
                problems.add(format!(
                    "cluster fan-out {kind}: {} deliveries lost",
                    r.lost
                ));
            }
            if r.dups > 0 {
                problems.add(format!(
                    "cluster fan-out {kind}: {} duplicate deliveries",
                    r.dups
                ));
            }
            t.note(format!(
                "{kind}: Redis commands during the burst: {}",
                r.commands
            ));
        }
        results.push(r);
    }
    let col =
        |f: &dyn Fn(&ClusterFanOut) -> f64| results.iter().map(|r| r.as_ref().map(f)).collect();
    t.row("deliveries/s", "msg/s", 0, col(&|r| r.rate));
    t.row("latency p50", "ms", 2, col(&|r| r.p50));
    t.row("latency p99", "ms", 2, col(&|r| r.p99));
    t.row(
        "server CPU (both nodes) per 1M deliveries",
        "s",
        2,
        col(&|r| r.cpu_per_m),
    );
    t.row(
        "Redis CPU per 1M deliveries",
        "s",
        2,
        col(&|r| r.redis_cpu_per_m),
    );
    t.row(
        "load generator CPU per 1M deliveries",
        "s",
        2,
        col(&|r| r.load_cpu_per_m),
    );
    t.row("first send to last delivery", "s", 2, col(&|r| r.secs));
    t.row(
        "Redis commands per broadcast",
        "",
        2,
        col(&|r| r.commands_per_broadcast),
    );
    t.row(
        "Redis commands per delivered message",
        "",
        4,
        col(&|r| r.commands_per_delivery),
    );
    t.row(
        "Redis bytes in per delivered message",
        "B",
        2,
        col(&|r| r.in_per_delivery),
    );
    t.row(
        "Redis bytes out per delivered message",
        "B",
        2,
        col(&|r| r.out_per_delivery),
    );
    t.row(
        &format!("deliveries lost (of {})", n as u64 * m),
        "",
        0,
        col(&|r| r.lost as f64),
    );
    t.row("duplicate deliveries", "", 0, col(&|r| r.dups as f64));
    t.row(
        "out-of-order deliveries",
        "",
        0,
        col(&|r| r.reordered as f64),
    );
    t.note("client i is on node i % 2; the sender is client 0 (node 0) and receives its own broadcasts. switchboard: sb_server --redis URL (RedisBackend, every node delivers what Redis hands back, the sender's too); peer: peer --redis URL (socketioxide-redis 0.4.1: delivers locally, publishes to the other nodes).");
    t.note("Redis counters (INFO commandstats, INFO stats) are read just before the burst and once every delivery arrived; bytes in: what Redis read from the nodes, out: what it wrote to them (replies and pub/sub pushes). The load generator, both nodes and Redis share the 2 cores.");
    t
}

async fn cluster_latency(plan: &Plan, problems: &mut Problems) -> Table {
    let (n, r, s) = (plan.cluster_receivers, plan.cluster_rate, plan.cluster_secs);
    let mut t = Table::new(
        "cluster_latency",
        &format!(
            "6b. broadcast latency (Switchboard): 1 sender, {n} receivers, open loop {r} broadcasts/s for {s} s"
        ),
        &["single node", "cross-node", "2 nodes, same node"],
    );
    let mut results = Vec::new();
    for setup in [
        LatencySetup::Single,
        LatencySetup::CrossNode,
        LatencySetup::SameNode,
    ] {
        eprintln!("[cluster] latency {setup:?}: {n} receivers, {r}/s, {s} s");
        let run = cluster_latency_one(setup, n, r, s).await;
        let l = problems.keep(format!("cluster latency {setup:?}"), run);
        if let Some(l) = &l
            && l.lost > 0
        {
            problems.add(format!("cluster latency {setup:?}: {} lost", l.lost));
        }
        results.push(l);
    }
    let col =
        |f: &dyn Fn(&BroadcastLatency) -> f64| results.iter().map(|r| r.as_ref().map(f)).collect();
    t.row("send to receive p50", "ms", 3, col(&|l| l.p50));
    t.row("send to receive p99", "ms", 3, col(&|l| l.p99));
    t.row("send to receive p99.9", "ms", 3, col(&|l| l.p999));
    t.row("send to receive max", "ms", 3, col(&|l| l.max));
    let base = results
        .first()
        .and_then(|r| r.as_ref())
        .map(|l| (l.p50, l.p99));
    let over = |pick: fn((f64, f64)) -> f64| -> Vec<Option<f64>> {
        results
            .iter()
            .map(|r| {
                let l = r.as_ref()?;
                Some(pick((l.p50, l.p99)) - pick(base?))
            })
            .collect()
    };
    t.row("p50 over single node", "ms", 3, over(|(p50, _)| p50));
    t.row("p99 over single node", "ms", 3, over(|(_, p99)| p99));
    t.row("server CPU (all nodes)", "s", 2, col(&|l| l.cpu));
    t.row("deliveries lost", "", 0, col(&|l| l.lost as f64));
    t.note("single node: a plain sb_server (no Redis); cross-node: the sender on node 0, the receivers on node 1 of a 2-node cluster; 2 nodes, same node: sender and receivers on node 0 of that cluster (the broadcast still goes to Redis and back).");
    t.note("latency runs from each broadcast's scheduled send time (open loop) to its arrival at a receiver; the sender is in the room too, its own copies are not counted.");
    t
}

async fn cluster_cost(plan: &Plan, problems: &mut Problems) -> Table {
    let k = plan.cluster_cost_messages;
    let mut t = Table::new(
        "cluster_redis",
        &format!(
            "6c. Redis work per message (Switchboard, 2 nodes), session owned by node 0, requests to node 1, {k} messages each way"
        ),
        &["websocket", "long poll", "short poll"],
    );
    let mut results = Vec::new();
    for transport in [
        CostTransport::WebSocket,
        CostTransport::LongPoll,
        CostTransport::ShortPoll,
    ] {
        eprintln!("[cluster] Redis cost {transport:?}: {k} messages");
        let run = cluster_cost_one(transport, k).await;
        let c = problems.keep(format!("cluster Redis cost {transport:?}"), run);
        if let Some(c) = &c {
            if c.lost > 0 {
                problems.add(format!(
                    "cluster Redis cost {transport:?}: {} echoes lost",
                    c.lost
                ));
            }
            t.note(format!(
                "{transport:?}: Redis commands during the {k} echo round trips: {}",
                c.echo_commands
            ));
        }
        results.push(c);
    }
    let col = |f: &dyn Fn(&Cost) -> f64| results.iter().map(|r| r.as_ref().map(f)).collect();
    t.row(
        "client→server: Redis commands per message",
        "",
        3,
        col(&|c| c.up.commands),
    );
    t.row(
        "client→server: Redis bytes in per message",
        "B",
        1,
        col(&|c| c.up.net_in),
    );
    t.row(
        "client→server: Redis bytes out per message",
        "B",
        1,
        col(&|c| c.up.net_out),
    );
    t.row(
        "server→client: Redis commands per message",
        "",
        3,
        col(&|c| c.down.commands),
    );
    t.row(
        "server→client: Redis bytes in per message",
        "B",
        1,
        col(&|c| c.down.net_in),
    );
    t.row(
        "server→client: Redis bytes out per message",
        "B",
        1,
        col(&|c| c.down.net_out),
    );
    t.row(
        "HTTP GETs per echoed message",
        "",
        2,
        col(&|c| c.gets_per_echo),
    );
    t.row(
        "idle background: Redis commands/s",
        "1/s",
        1,
        col(&|c| c.background.commands),
    );
    t.row(
        "idle background: Redis bytes in+out/s",
        "B/s",
        0,
        col(&|c| c.background.net_in + c.background.net_out),
    );
    t.row("echoes lost", "", 0, col(&|c| c.lost as f64));
    t.note("websocket: opened on node 0, dropped, resumed on node 1, which takes the session over once; measured after that. polls: opened with POST /open on node 0, every GET /poll and POST /poll sent to node 1, which forwards it to node 0.");
    t.note("client→server: one 100 B message per POST (per frame on the WebSocket) that the server takes and does not answer; server→client: echo round trips (e|…, one at a time) minus client→server. Long poll: wait=1 after each POST; short poll: wait=0 every 2 ms until the echo is there.");
    t.note("per message = (Redis counters after − before − idle background × duration) / messages; the background (liveness and ownership records of 2 nodes) is measured over 2 s idle just before. A room broadcast's cost per delivered message is in table 6a.");
    t
}
