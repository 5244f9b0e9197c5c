//! A real cluster on 127.0.0.1 for the tests: a `redis-server` of its own on a free port, nodes
//! on their own ports, and a proxy that sends every connection to the next node.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::{Builder, Session, Switchboard};
use switchboard_redis::RedisBackend;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A `redis-server` process of the test's own, stopped when dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    /// Arguments beyond the port and persistence ones (TLS, a password).
    extra: Vec<String>,
    /// Whether it listens for TLS on `port` (then the readiness check is a TCP connect).
    tls: bool,
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    /// Starts Redis on a free port, with no persistence.
    pub async fn start() -> Self {
        Self::start_with(Vec::new(), false).await
    }

    /// Starts Redis with more arguments; `tls`: it listens with TLS on the port (the arguments
    /// name the certificates), and the URL is `rediss://`.
    pub async fn start_with(extra: Vec<String>, tls: bool) -> Self {
        let port = free_port();
        let scheme = if tls { "rediss" } else { "redis" };
        let mut redis = Self {
            child: None,
            port,
            url: format!("{scheme}://127.0.0.1:{port}"),
            extra,
            tls,
        };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let port = self.port.to_string();
        let listen: [&str; 4] = if self.tls {
            ["--port", "0", "--tls-port", &port]
        } else {
            ["--port", &port, "--bind", "127.0.0.1"]
        };
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        for _ in 0..500 {
            if self.tls {
                if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                stream.write_all(b"PING\r\n").await.ok();
                let mut answer = [0u8; 7];
                // `-NOAUTH`: it is up, and wants a password.
                if stream.read_exact(&mut answer).await.is_ok()
                    && (&answer == b"+PONG\r\n" || answer.starts_with(b"-NOAUTH"))
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills Redis (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts Redis again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One node of the cluster: a server with a Redis backend on a port of its own. Every session
/// it opens is handed to the test through the channel given to [`Node::start`].
pub struct Node {
    pub addr: SocketAddr,
    pub base: String,
    pub realtime: Switchboard,
    server: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Node {
    /// Starts a node on Redis at `url`, mounted at `/rt`, with the settings `configure` makes.
    pub async fn start(
        url: &str,
        sessions: mpsc::Sender<Session>,
        configure: impl FnOnce(Builder<()>) -> Builder<()>,
    ) -> Self {
        let backend = RedisBackend::builder(url)
            .prefix("test")
            .connect()
            .await
            .unwrap();
        Self::with_backend(backend, sessions, configure).await
    }

    /// Starts a node on `backend`, mounted at `/rt`, with the settings `configure` makes.
    pub async fn with_backend(
        backend: RedisBackend,
        sessions: mpsc::Sender<Session>,
        configure: impl FnOnce(Builder<()>) -> Builder<()>,
    ) -> Self {
        let realtime = configure(Switchboard::builder()).backend(backend).build();
        let app = axum::Router::new().nest(
            "/rt",
            realtime.router(move |session: Session| {
                let sessions = sessions.clone();
                async move {
                    let keep = session.clone();
                    if sessions.send(session).await.is_ok() {
                        keep.closed().await;
                    }
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let graceful = realtime.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    stopped.await.ok();
                    graceful.shutdown().await;
                })
                .await
                .ok();
        });
        Self {
            addr,
            base: format!("http://{addr}/rt"),
            realtime,
            server,
            stop: Some(stop),
        }
    }

    /// Shuts the node down gracefully, as a deploy does (axum's graceful shutdown calling
    /// `Switchboard::shutdown`), and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.server)
            .await
            .expect("the node did not stop within 30 s")
            .ok();
    }
}

/// A TCP proxy that sends every new connection to the next node in turn. With a client that
/// opens a connection per request (no keep-alive), every request and every WebSocket goes to
/// the next node: a load balancer with no stickiness at all.
pub struct Proxy {
    pub addr: SocketAddr,
    pub base: String,
    upstreams: Arc<Mutex<Vec<SocketAddr>>>,
    /// Connections sent to each upstream, by address.
    hits: Arc<Mutex<Vec<(SocketAddr, usize)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstreams: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstreams = Arc::new(Mutex::new(upstreams));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let upstreams = upstreams.clone();
            let hits = hits.clone();
            async move {
                while let Ok((mut downstream, _)) = listener.accept().await {
                    let target = {
                        let list = upstreams.lock().unwrap();
                        if list.is_empty() {
                            continue;
                        }
                        list[next.fetch_add(1, Ordering::Relaxed) % list.len()]
                    };
                    {
                        let mut hits = hits.lock().unwrap();
                        match hits.iter_mut().find(|(addr, _)| *addr == target) {
                            Some((_, count)) => *count += 1,
                            None => hits.push((target, 1)),
                        }
                    }
                    tokio::spawn(async move {
                        if let Ok(mut upstream) = TcpStream::connect(target).await {
                            tokio::io::copy_bidirectional(&mut downstream, &mut upstream)
                                .await
                                .ok();
                        }
                    });
                }
            }
        });
        Self {
            addr,
            base: format!("http://{addr}/rt"),
            upstreams,
            hits,
            task,
        }
    }

    /// Replaces the nodes new connections go to.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        *self.upstreams.lock().unwrap() = upstreams;
    }

    /// How many connections went to each node so far.
    pub fn hits(&self) -> Vec<(SocketAddr, usize)> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP client that opens a new connection for every request, so that the proxy sends each
/// one to the next node.
pub fn no_keep_alive() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A cluster of `n` nodes on one Redis, behind a round-robin proxy.
pub struct Cluster {
    pub redis: Redis,
    pub nodes: Vec<Node>,
    pub proxy: Proxy,
    pub sessions: mpsc::Receiver<Session>,
    sender: mpsc::Sender<Session>,
    configure: fn(Builder<()>) -> Builder<()>,
}

/// Logs to stderr when `RUST_LOG` is set (for example `RUST_LOG=switchboard=debug`).
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init()
            .ok();
    }
}

impl Cluster {
    pub async fn start(n: usize, configure: fn(Builder<()>) -> Builder<()>) -> Self {
        logs();
        let redis = Redis::start().await;
        let (sender, sessions) = mpsc::channel(1024);
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(Node::start(&redis.url, sender.clone(), configure).await);
        }
        let proxy = Proxy::start(nodes.iter().map(|node| node.addr).collect()).await;
        Self {
            redis,
            nodes,
            proxy,
            sessions,
            sender,
            configure,
        }
    }

    /// Replaces node `at` as a rolling deploy does: the proxy stops sending it new connections,
    /// it shuts down gracefully (handing its sessions over), and a new node takes its place.
    pub async fn restart(&mut self, at: usize) {
        let others: Vec<SocketAddr> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .map(|(_, node)| node.addr)
            .collect();
        self.proxy.set_upstreams(others);
        let fresh = Node::start(&self.redis.url, self.sender.clone(), self.configure).await;
        let old = std::mem::replace(&mut self.nodes[at], fresh);
        old.stop().await;
        self.proxy
            .set_upstreams(self.nodes.iter().map(|node| node.addr).collect());
    }

    /// The next session opened on any node.
    pub async fn next_session(&mut self) -> Session {
        tokio::time::timeout(Duration::from_secs(10), self.sessions.recv())
            .await
            .expect("no session opened within 10 s")
            .expect("nodes gone")
    }
}

/// Test payloads: Korean, emoji, mixed scripts.
pub fn text(i: usize) -> String {
    format!("{i} 안녕하세요 🎉 #{}", "가".repeat(i % 13))
}

/// A binary payload that differs for every `i`, with bytes that are not UTF-8.
pub fn payload_bytes(i: usize) -> Vec<u8> {
    let mut bytes = (i as u32).to_be_bytes().to_vec();
    bytes.extend((0..(i % 300)).map(|b| (b * 31 % 256) as u8));
    bytes.extend_from_slice(&[0xff, 0xfe, 0xc0]);
    bytes
}

/// Waits until `condition` holds, polling every 10 ms, for at most `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// The session a client has now, on whichever node holds it: a session handed over to another
/// node ends on the old one and starts again (with `handed_over()`) on the new one.
#[derive(Clone)]
pub struct Current {
    sessions: tokio::sync::watch::Receiver<Option<Session>>,
    /// How many handlers the session has had (1 + the handovers).
    pub handlers: Arc<AtomicUsize>,
}

impl Current {
    /// The session now, waiting for the first one if need be.
    pub async fn get(&mut self) -> Session {
        loop {
            if let Some(session) = self.sessions.borrow_and_update().clone() {
                return session;
            }
            self.sessions.changed().await.expect("nodes gone");
        }
    }

    /// The live session, once the one the caller had has ended on its node (at most 20 s).
    pub async fn live(&mut self) -> Session {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.get().await;
            if !now.is_closed() {
                return now;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no node took the session over"
            );
            tokio::time::timeout(Duration::from_millis(50), self.sessions.changed())
                .await
                .ok();
        }
    }
}

impl Cluster {
    /// A client through the round-robin proxy on `transport`, a new connection per request (so
    /// that each request may land on another node).
    pub fn through_proxy(
        &self,
        transport: switchboard_client::Transport,
    ) -> switchboard_client::ClientBuilder {
        switchboard_client::Client::builder(&self.proxy.base)
            .transport(transport)
            .http_client(no_keep_alive())
    }

    /// Follows the sessions the nodes open and take over (one client at a time).
    pub fn follow(&mut self) -> Current {
        let (_, empty) = mpsc::channel(1);
        let mut sessions = std::mem::replace(&mut self.sessions, empty);
        let (current, watched) = tokio::sync::watch::channel(None);
        let handlers = Arc::new(AtomicUsize::new(0));
        let count = handlers.clone();
        tokio::spawn(async move {
            while let Some(session) = sessions.recv().await {
                count.fetch_add(1, Ordering::SeqCst);
                current.send_replace(Some(session));
            }
        });
        Current {
            sessions: watched,
            handlers,
        }
    }
}

/// The next message of `client` as text (at most 10 s).
pub async fn next_text(client: &mut switchboard_client::Client) -> String {
    tokio::time::timeout(Duration::from_secs(10), client.recv())
        .await
        .expect("no message within 10 s")
        .unwrap()
        .as_text()
        .unwrap()
        .to_string()
}

/// `POST {base}/open`: a new polling session's id.
pub async fn open(http: &reqwest::Client, base: &str) -> String {
    let open: serde_json::Value = http
        .post(format!("{base}/open?v=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    open["sid"].as_str().unwrap().to_string()
}
