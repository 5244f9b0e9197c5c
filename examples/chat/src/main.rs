//! The Switchboard chat: the canonical way to use Switchboard, top to bottom.
//!
//! `cargo run -p chat`, then open <http://127.0.0.1:3000>. Pick a nickname, talk, switch rooms or
//! create one, watch who is there and who is typing. Add `?transport=sse` (or `longpoll`, `poll`, or
//! `websocket`) to the page's URL to force a transport and watch the fallback work; the badge in
//! the corner shows what is in use. The address can be changed with `--addr 127.0.0.1:8080` or the
//! `CHAT_ADDR` environment variable.
//!
//! **As a cluster**: `cargo run -p chat -- --redis redis://127.0.0.1:6379 --addr 127.0.0.1:3001`,
//! and a second node with `--addr 127.0.0.1:3002`, behind any load balancer (no stickiness
//! needed; `docs/scale-out.md` has an nginx configuration). Rooms, presence and history are then
//! shared through Redis: history in a list per room (`chat:history:{room}`) and the room list in
//! a set (`chat:rooms`), under the backend's prefix. (Two lines said at the same moment on two
//! nodes may be kept in the history in the other order than the one the room saw them in.)
//!
//! **Metrics**: `GET /metrics` answers Switchboard's metrics in the Prometheus text format
//! (`docs/deployment.md`, "Metrics", lists them and the queries an operator wants first). It is
//! on the chat's own address for the example's sake; in production serve it where only the
//! monitoring system reaches it.
//!
//! **Hardened**: the pages carry a content security policy without inline code, no-sniff and
//! no-framing headers; each client address may be in at most five rooms of its own choosing at
//! once (so one client cannot take every room); served by `switchboard::serve` (time-outs and
//! connection limits) with Switchboard's per-address session limits. On a loopback address the
//! chat answers only to `localhost`, `127.0.0.1` and `[::1]` (against DNS rebinding); add public
//! names with `--allowed-host NAME` (or `CHAT_ALLOWED_HOSTS=a,b`), and name a reverse proxy in
//! front with `--trusted-proxy 10.0.0.0/8` (or `CHAT_TRUSTED_PROXIES`) so that clients count by
//! their own addresses.
//!
//! The protocol between page and server is a handful of named events (`emit` on one side, `on` on
//! the other) over one Switchboard session:
//!
//! | page → server | server → page |
//! |---|---|
//! | `join {room}` | `welcome {nick, rooms}`, `joined {room, members, history}` |
//! | `say {text}` | `line {room, nick, text, ts}`, `notice {room, text}` |
//! | `typing {}` (low priority) | `typing {room, nick}` (low priority), `presence {room, members}` |
//! | | `rooms {rooms}`, `problem {text}` |

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard::{CloseReason, Hub, Message, Refusal, Session, Switchboard};
use switchboard_redis::RedisBackend;
use switchboard_redis::redis::{self, AsyncCommands as _};
use tower_http::services::ServeDir;

/// The process's allocator: jemalloc, with background threads (the `background_threads` feature)
/// that give memory freed after a burst back to the system within about 10 s, where glibc's
/// malloc keeps it resident (`docs/deployment.md`, "Sizing memory").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Longest nickname, in characters.
const MAX_NICK: usize = 24;
/// Longest chat message, in characters.
const MAX_TEXT: usize = 500;
/// Longest room name, in characters.
const MAX_ROOM: usize = 32;
/// Most rooms (with members or history) at once.
const MAX_ROOMS: usize = 100;
/// Messages of history kept per room and shown to whoever joins.
const HISTORY: usize = 50;
/// Most rooms other than the default ones that the sessions of one client address may be in at
/// once: one client with many sessions cannot take every room.
const ROOMS_PER_CLIENT: usize = 5;
/// Rooms that always exist.
const DEFAULT_ROOMS: [&str; 3] = ["lobby", "rust", "random"];

/// What the authentication hook attaches to each session: here, just the nickname. (In a
/// cluster it moves with a session handed over to another node, hence serde.)
#[derive(Clone, Debug, Serialize, Deserialize)]
struct User {
    nick: String,
    /// The client's address (`None` if unknown), for the limit on rooms per client.
    addr: Option<IpAddr>,
}

/// One line of a room's history.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Line {
    nick: String,
    text: String,
    ts: u64,
}

/// The chat's own state: Switchboard's hub (rooms, fan-out, presence) plus each room's history.
#[derive(Clone)]
struct Chat {
    hub: Hub<User>,
    store: Store,
    /// The rooms (other than the default ones) each client address's sessions on this node
    /// are in, with how many of its sessions are in each.
    rooms_by_client: Arc<Mutex<HashMap<IpAddr, HashMap<String, usize>>>>,
}

/// Where history and the room list live: in this process, or in Redis for a cluster.
#[derive(Clone)]
enum Store {
    Local(Arc<Mutex<HashMap<String, VecDeque<Line>>>>),
    Redis {
        conn: redis::aio::ConnectionManager,
        prefix: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("chat: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up and serves the chat until Ctrl-C; `Err` says what went wrong (a bad address, a port
/// that is taken).
async fn run() -> Result<(), String> {
    // RUST_LOG as given (default: info), then Switchboard's directives for its dependencies,
    // which win over it: no session id and no payload in the log at any level, and no line an
    // attacker can multiply (docs/deployment.md, "Hostile clients").
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for directive in switchboard::QUIET_DEPENDENCIES.split(',') {
        match directive.parse() {
            Ok(directive) => filter = filter.add_directive(directive),
            Err(err) => return Err(format!("log filter {directive:?}: {err}")),
        }
    }
    tracing_subscriber::fmt().with_env_filter(filter).init();
    // Before the server is built: Switchboard (and the Redis backend) take the global recorder
    // when they are made.
    let metrics = metrics_recorder()?;
    let Args {
        addr,
        redis,
        allowed_hosts,
        trusted_proxies,
    } = args()?;

    // Who may open a session: anyone with a valid nickname. The page passes it as `auth` data;
    // a refusal reaches the page as a `close` event with code 4400 + status.
    let mut builder = Switchboard::builder();
    // On a loopback address only the loopback names (DNS rebinding: a foreign page whose name
    // points at 127.0.0.1 says so in its Host header); elsewhere the names the operator lists.
    let mut hosts = allowed_hosts;
    if addr.ip().is_loopback() {
        hosts.extend(["localhost", "127.0.0.1", "[::1]"].map(String::from));
    }
    if !hosts.is_empty() {
        builder = builder.allowed_hosts(hosts);
    }
    if !trusted_proxies.is_empty() {
        for proxy in &trusted_proxies {
            if !valid_network(proxy) {
                return Err(format!(
                    "--trusted-proxy {proxy:?} is not an address or network"
                ));
            }
        }
        builder = builder.trusted_proxies(trusted_proxies);
    }
    let builder = builder.authenticate(|handshake| async move {
        let addr = handshake.client_addr();
        let nick = handshake
            .auth()
            .and_then(|auth| auth.get("nick"))
            .and_then(|nick| nick.as_str())
            .map(str::trim)
            .unwrap_or_default();
        valid_name(nick, MAX_NICK)
            .then(|| User {
                nick: nick.to_string(),
                addr,
            })
            .ok_or_else(|| Refusal::forbidden(format!("a nickname has 1 to {MAX_NICK} characters")))
    });
    // A node of a cluster shares sessions, rooms and presence with the others through Redis;
    // alone, nothing external is needed.
    let (realtime, store) = match redis {
        Some(url) => {
            let backend = RedisBackend::builder(&url)
                .prefix("chat")
                .connect()
                .await
                .map_err(|err| format!("cannot use Redis at {url}: {err}"))?;
            let store = Store::Redis {
                conn: backend.connection(),
                prefix: backend.prefix().to_string(),
            };
            (builder.backend(backend).build(), store)
        }
        None => (builder.build(), Store::Local(Arc::default())),
    };

    let chat = Chat {
        hub: realtime.hub(),
        store,
        rooms_by_client: Arc::default(),
    };
    let static_files = concat!(env!("CARGO_MANIFEST_DIR"), "/static");
    let app = Router::new()
        .nest(
            "/realtime",
            realtime.router(move |session| on_session(session, chat.clone())),
        )
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(metrics.render())),
        )
        .fallback_service(pages(static_files));

    // A listen queue of 4096 rather than TcpListener::bind's 128: when many pages reconnect at
    // once (a restart, a network blip), an overflowing queue costs each extra client a 1 s SYN
    // retry (docs/deployment.md, "Listen backlog and reconnect storms").
    let listener = listen(addr).map_err(|err| format!("cannot listen on {addr}: {err}"))?;
    let local = listener
        .local_addr()
        .map_err(|err| format!("cannot listen on {addr}: {err}"))?;
    match realtime.node_id() {
        Some(node) => tracing::info!(node, "chat on http://{local}, a node of a cluster"),
        None => tracing::info!("chat on http://{local}"),
    }
    // `switchboard::serve` rather than `axum::serve`: it bounds how long a client may take to
    // send its headers and its body, how large the headers may be and how many connections are
    // open, and sets TCP_NODELAY (docs/deployment.md, "Hostile clients"). It shares the router
    // between connections, as `into_make_service` does.
    switchboard::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop_signal().await;
            // Alone: tells every page the server is going away and releases waiting polls. In a
            // cluster: hands every session over to the other nodes first (a rolling deploy).
            realtime.shutdown().await;
        })
        .await
        .map_err(|err| format!("server failed: {err}"))
}

/// Installs the Prometheus recorder every metric goes to, and keeps it tidy: histograms are
/// drained every 5 s (the exporter's upkeep) rather than only when scraped. Buckets for the two
/// histograms, so that they add up across the nodes of a cluster (a summary's quantiles do not).
fn metrics_recorder() -> Result<PrometheusHandle, String> {
    let buckets = |builder: PrometheusBuilder, name: &str, buckets: &[f64]| {
        builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            .map_err(|err| format!("metrics buckets for {name}: {err}"))
    };
    let builder = buckets(
        PrometheusBuilder::new(),
        "switchboard_buffer_depth",
        &[0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 8192.0],
    )?;
    let builder = buckets(
        builder,
        "switchboard_forward_duration_seconds",
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 25.0,
        ],
    )?;
    let handle = builder
        .install_recorder()
        .map_err(|err| format!("cannot install the metrics recorder: {err}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The chat's pages and their files, with the headers a hardened page wants: a content security
/// policy that allows only this origin's own scripts, styles and connections (no inline code:
/// the page has none), no framing by other sites (against clickjacking), no content sniffing and
/// no referrer. (Only the pages get them; the realtime API answers JSON and carries its own.)
fn pages(dir: &str) -> Router {
    use axum::http::{HeaderValue, header};
    use tower_http::set_header::SetResponseHeaderLayer;
    let csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
               connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
    let header =
        |name, value| SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value));
    Router::new()
        .fallback_service(ServeDir::new(dir))
        .layer(header(header::CONTENT_SECURITY_POLICY, csp))
        .layer(header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header(header::X_FRAME_OPTIONS, "DENY"))
        .layer(header(header::REFERRER_POLICY, "no-referrer"))
}

/// Ctrl-C, or SIGTERM (what deploy tools and `docker stop` send).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                tokio::signal::ctrl_c().await.ok();
            }
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.ok();
}

/// A listener on `addr` with a listen queue of 4096.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The command line.
struct Args {
    addr: SocketAddr,
    /// The Redis URL of a cluster.
    redis: Option<String>,
    /// Host names to answer to, besides the loopback names on a loopback address.
    allowed_hosts: Vec<String>,
    /// Reverse proxies whose forwarded client addresses are believed.
    trusted_proxies: Vec<String>,
}

/// A comma-separated list from the environment variable `name`.
fn env_list(name: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(String::from)
        .collect()
}

/// Whether `text` is an address or a network (`10.0.0.0/8`), as `trusted_proxies` takes them.
fn valid_network(text: &str) -> bool {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
    match addr.parse::<IpAddr>() {
        Ok(ip) => {
            prefix.is_empty()
                || prefix
                    .parse::<u8>()
                    .is_ok_and(|bits| bits <= if ip.is_ipv4() { 32 } else { 128 })
        }
        Err(_) => false,
    }
}

/// The listening address: `--addr HOST:PORT`, else `CHAT_ADDR`, else 127.0.0.1:3000; the Redis
/// of a cluster: `--redis URL`, else `CHAT_REDIS`, else none.
fn args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = std::env::var("CHAT_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let mut redis = std::env::var("CHAT_REDIS").ok();
    let mut allowed_hosts = env_list("CHAT_ALLOWED_HOSTS");
    let mut trusted_proxies = env_list("CHAT_TRUSTED_PROXIES");
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            ("--redis", Some(value)) => redis = Some(value),
            ("--allowed-host", Some(value)) => allowed_hosts.push(value),
            ("--trusted-proxy", Some(value)) => trusted_proxies.push(value),
            _ => {
                return Err(
                    "usage: chat [--addr HOST:PORT] [--redis redis://HOST:PORT] \
                     [--allowed-host NAME]... [--trusted-proxy ADDRESS/BITS]... \
                     (or CHAT_ADDR, CHAT_REDIS, CHAT_ALLOWED_HOSTS, CHAT_TRUSTED_PROXIES)"
                        .into(),
                );
            }
        }
    }
    let addr = addr
        .parse()
        .map_err(|err| format!("bad address {addr:?}: {err}"))?;
    Ok(Args {
        addr,
        redis,
        allowed_hosts,
        trusted_proxies,
    })
}

/// A session's life: it runs as long as the page is connected (across transport changes), and
/// its messages arrive here in order, exactly once. In a cluster the session may move to
/// another node (a WebSocket that landed there, a node that shut down): this handler then ends
/// here and starts again there, with `handed_over()`, in the same room.
async fn on_session(session: Session<User>, chat: Chat) {
    let nick = session.user().nick.clone();
    let mut room = match session.rooms().into_iter().next() {
        Some(room) if session.handed_over() => {
            // It was in this room on the node it came from: it counts here now.
            chat.claim(session.user(), &room, true);
            room
        }
        _ => {
            session
                .emit(
                    "welcome",
                    &json!({ "nick": nick, "rooms": chat.rooms().await }),
                )
                .ok();
            chat.enter(&session, None, "lobby").await
        }
    };

    while let Some(message) = session.recv().await {
        match message.event() {
            Some("join") => match message.decode::<Join>() {
                Ok(join) => match chat.check_room(&join.room).await {
                    Ok(name) if name == room => {}
                    Ok(name) if !chat.claim(session.user(), &name, false) => tell(
                        &session,
                        &format!(
                            "your address is in {ROOMS_PER_CLIENT} rooms already; leave one first"
                        ),
                    ),
                    Ok(name) => {
                        let entered = chat.enter(&session, Some(&room), &name).await;
                        // The room it left (or, if the join failed, the one it did not enter).
                        let left = if entered == name { &room } else { &name };
                        chat.unclaim(session.user(), left);
                        room = entered;
                    }
                    Err(problem) => tell(&session, &problem),
                },
                Err(_) => tell(&session, "join needs a room name"),
            },
            Some("say") => match message.decode::<Say>() {
                Ok(say) => chat.say(&session, &room, say.text.trim()).await,
                Err(_) => tell(&session, "say needs text"),
            },
            // Typing indicators are chatter: low priority, so a burst of them costs one response
            // on long polling rather than one each, and they never delay real messages.
            Some("typing") => {
                chat.hub
                    .to(&room)
                    .except(&session)
                    .low_priority()
                    .emit("typing", &json!({ "room": room, "nick": nick }))
                    .ok();
            }
            _ => tell(&session, "unknown command"),
        }
    }
    // The session has ended (the page left for good, or its session expired): say goodbye.
    // A session that moved to another node goes on there, in its room.
    if session.close_reason() != Some(CloseReason::HandedOver) {
        chat.leave(&session, &room).await;
    }
    chat.unclaim(session.user(), &room);
}

#[derive(Deserialize)]
struct Join {
    room: String,
}

#[derive(Deserialize)]
struct Say {
    text: String,
}

/// Tells one page that its request was refused, and why.
fn tell(session: &Session<User>, problem: &str) {
    session.emit("problem", &json!({ "text": problem })).ok();
}

/// A name is 1 to `max` characters with no control characters.
fn valid_name(name: &str, max: usize) -> bool {
    let chars = name.chars().count();
    (1..=max).contains(&chars) && !name.chars().any(char::is_control)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Store {
    fn key(prefix: &str, what: &str, room: &str) -> String {
        format!("{prefix}:chat:{what}:{room}")
    }

    /// The room's last lines, oldest first.
    async fn history(&self, room: &str) -> Vec<Line> {
        match self {
            Store::Local(history) => history
                .lock()
                .ok()
                .and_then(|history| {
                    history
                        .get(room)
                        .map(|lines| lines.iter().cloned().collect())
                })
                .unwrap_or_default(),
            Store::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let lines: Vec<String> = conn
                    .lrange(Self::key(prefix, "history", room), 0, -1)
                    .await
                    .unwrap_or_default();
                lines
                    .iter()
                    .filter_map(|line| serde_json::from_str(line).ok())
                    .collect()
            }
        }
    }

    /// Keeps `line` in the room's history (the last [`HISTORY`] lines).
    async fn append(&self, room: &str, line: &Line) {
        match self {
            Store::Local(history) => {
                if let Ok(mut history) = history.lock() {
                    let lines = history.entry(room.to_string()).or_default();
                    lines.push_back(line.clone());
                    if lines.len() > HISTORY {
                        lines.pop_front();
                    }
                }
            }
            Store::Redis { conn, prefix } => {
                let key = Self::key(prefix, "history", room);
                let Ok(text) = serde_json::to_string(line) else {
                    return;
                };
                let mut conn = conn.clone();
                let kept: redis::RedisResult<()> = redis::pipe()
                    .rpush(&key, text)
                    .ignore()
                    .ltrim(&key, -(HISTORY as isize), -1)
                    .ignore()
                    .sadd(format!("{prefix}:chat:rooms"), room)
                    .ignore()
                    .query_async(&mut conn)
                    .await;
                if let Err(err) = kept {
                    tracing::warn!(error = %err, "line not kept in the history");
                }
            }
        }
    }

    /// Forgets a room and its history.
    async fn forget(&self, room: &str) {
        match self {
            Store::Local(history) => {
                if let Ok(mut history) = history.lock() {
                    history.remove(room);
                }
            }
            Store::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let _: redis::RedisResult<()> = redis::pipe()
                    .del(Self::key(prefix, "history", room))
                    .ignore()
                    .srem(format!("{prefix}:chat:rooms"), room)
                    .ignore()
                    .query_async(&mut conn)
                    .await;
            }
        }
    }

    /// Remembers a room someone is in (a cluster's room list is shared).
    async fn add_room(&self, room: &str) {
        if let Store::Redis { conn, prefix } = self {
            let mut conn = conn.clone();
            let _: redis::RedisResult<()> = conn.sadd(format!("{prefix}:chat:rooms"), room).await;
        }
    }

    /// The rooms the store knows of, besides those with members on this node.
    async fn rooms(&self) -> Vec<String> {
        match self {
            Store::Local(_) => Vec::new(),
            Store::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                conn.smembers(format!("{prefix}:chat:rooms"))
                    .await
                    .unwrap_or_default()
            }
        }
    }
}

impl Chat {
    /// Counts one more session of `user`'s address in `room`; `false` (nothing counted) if that
    /// would put the address in more than [`ROOMS_PER_CLIENT`] rooms, unless `force`. The
    /// default rooms, and clients of unknown address, are not counted.
    fn claim(&self, user: &User, room: &str, force: bool) -> bool {
        let Some(addr) = user.addr else {
            return true;
        };
        if DEFAULT_ROOMS.contains(&room) {
            return true;
        }
        let Ok(mut clients) = self.rooms_by_client.lock() else {
            return true;
        };
        let rooms = clients.entry(addr).or_default();
        if !force && !rooms.contains_key(room) && rooms.len() >= ROOMS_PER_CLIENT {
            return false;
        }
        *rooms.entry(room.to_string()).or_default() += 1;
        true
    }

    /// Counts one session of `user`'s address fewer in `room` (see [`claim`](Self::claim)).
    fn unclaim(&self, user: &User, room: &str) {
        let Some(addr) = user.addr else {
            return;
        };
        if DEFAULT_ROOMS.contains(&room) {
            return;
        }
        let Ok(mut clients) = self.rooms_by_client.lock() else {
            return;
        };
        if let Some(rooms) = clients.get_mut(&addr) {
            if let Some(count) = rooms.get_mut(room) {
                *count -= 1;
                if *count == 0 {
                    rooms.remove(room);
                }
            }
            if rooms.is_empty() {
                clients.remove(&addr);
            }
        }
    }

    /// The rooms to offer: the default ones and every room with someone in it.
    async fn rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = DEFAULT_ROOMS.iter().map(|room| room.to_string()).collect();
        let mut others = self.hub.rooms();
        others.extend(self.store.rooms().await);
        others.retain(|room| !rooms.contains(room));
        others.sort();
        others.dedup();
        rooms.extend(others);
        rooms
    }

    /// Checks a room name a page asked for; `Err` says what is wrong.
    async fn check_room(&self, room: &str) -> Result<String, String> {
        let room = room.trim().to_lowercase();
        if !valid_name(&room, MAX_ROOM) {
            return Err(format!("a room name has 1 to {MAX_ROOM} characters"));
        }
        let rooms = self.rooms().await;
        if !rooms.contains(&room) && rooms.len() >= MAX_ROOMS + DEFAULT_ROOMS.len() {
            return Err("there are too many rooms already".into());
        }
        Ok(room)
    }

    /// Moves a session into `room`: leaves the old one, joins, sends the newcomer the member list
    /// and the history, and tells the room.
    async fn enter(&self, session: &Session<User>, from: Option<&str>, room: &str) -> String {
        if let Some(from) = from {
            if from == room {
                return room.to_string();
            }
            self.leave(session, from).await;
        }
        let created = !self.rooms().await.iter().any(|known| known == room);
        if session.join(room).is_err() {
            return from.unwrap_or("lobby").to_string();
        }
        self.store.add_room(room).await;
        // The room's broadcasts reach this node from now on, before anyone is told of the join.
        self.hub.flush().await.ok();
        let history = self.store.history(room).await;
        session
            .emit(
                "joined",
                &json!({ "room": room, "members": self.members(room).await, "history": history }),
            )
            .ok();
        let nick = &session.user().nick;
        self.notice(room, Some(session), &format!("{nick} joined"));
        self.presence(room).await;
        if created {
            self.hub
                .all()
                .emit("rooms", &json!({ "rooms": self.rooms().await }))
                .ok();
        }
        room.to_string()
    }

    /// Takes a session out of `room` and tells the others.
    async fn leave(&self, session: &Session<User>, room: &str) {
        session.leave(room);
        let nick = &session.user().nick;
        self.notice(room, None, &format!("{nick} left"));
        self.presence(room).await;
        // A room nobody is in is forgotten (unless it is a default one), history included.
        if !DEFAULT_ROOMS.contains(&room) && self.members(room).await.is_empty() {
            self.store.forget(room).await;
            self.hub
                .all()
                .emit("rooms", &json!({ "rooms": self.rooms().await }))
                .ok();
        }
    }

    /// Posts a message to the room, after checking it, and keeps it in the room's history.
    async fn say(&self, session: &Session<User>, room: &str, text: &str) {
        if text.is_empty() {
            return;
        }
        if text.chars().count() > MAX_TEXT {
            return tell(
                session,
                &format!("a message has at most {MAX_TEXT} characters"),
            );
        }
        let line = Line {
            nick: session.user().nick.clone(),
            text: text.to_string(),
            ts: now_ms(),
        };
        self.store.append(room, &line).await;
        // One encoding, shared by every member's buffer; the sender gets it too, in order.
        let message = json!({ "room": room, "nick": line.nick, "text": line.text, "ts": line.ts });
        self.hub.to(room).emit("line", &message).ok();
    }

    /// A system line in a room ("… joined"), for everyone but `except`.
    fn notice(&self, room: &str, except: Option<&Session<User>>, text: &str) {
        let notice = Message::json(&json!({ "room": room, "text": text }))
            .map(|message| message.with_event("notice"));
        if let Ok(notice) = notice {
            let target = self.hub.to(room);
            let target = match except {
                Some(session) => target.except(session),
                None => target,
            };
            target.send(&notice).ok();
        }
    }

    /// The room's member list, sent to everyone in it whenever it changes (presence).
    async fn presence(&self, room: &str) {
        let members = self.members(room).await;
        self.hub
            .to(room)
            .emit("presence", &json!({ "room": room, "members": members }))
            .ok();
    }

    /// The nicknames in the room, on every node.
    async fn members(&self, room: &str) -> Vec<String> {
        let mut nicks: Vec<String> = self
            .hub
            .presence(room)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|member| member.user.nick)
            .collect();
        nicks.sort_by_key(|nick| nick.to_lowercase());
        nicks
    }
}
