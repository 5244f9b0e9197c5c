//! Serving an app with connection-level limits: [`serve`].
//!
//! `axum::serve` sets no time-outs: a client that opens a connection and sends nothing, or sends
//! its headers one byte every few seconds, or declares a body and never sends it, holds the
//! connection (and the memory of its unfinished request) for as long as it likes, and enough of
//! them exhaust the server's file descriptors. [`serve`] is a drop-in replacement that bounds
//! each of these, with defaults meant for production (see [`Serve`] for each one):
//!
//! | limit | default | when exceeded |
//! |---|---|---|
//! | time to receive a request's headers, and to wait for the next request on a kept-alive connection | 10 s | the connection is closed |
//! | time to receive a request's body, from its headers on | 30 s | `408 request_timeout`, then the connection is closed |
//! | size of a request's headers (request line included) | 32 KiB | `431`, then the connection is closed |
//! | open connections | 10 000, and at most 80 % of the process's open-file limit | past 15/16 of it, the connections that have waited longest with no request in progress are closed; when none is idle, new connections get `503` and are closed |
//!
//! WebSockets count as connections but are never closed as idle (their liveness is the
//! heartbeat's business: `docs/protocol.md` §6); neither is a connection with a request in
//! progress (a held long poll, a download).
//!
//! It counts, with the global `metrics` recorder (see `docs/deployment.md`, "Metrics and traces"):
//! `switchboard_connections_open` (gauge), `switchboard_connections_shed_total` (idle connections
//! closed to make room) and `switchboard_connections_refused_total` (answered `503`: the limit
//! was reached and none was idle).
//!
//! ```no_run
//! use std::time::Duration;
//! use switchboard::Switchboard;
//!
//! # async fn run() -> std::io::Result<()> {
//! let realtime = Switchboard::builder().build();
//! let app = axum::Router::new().nest("/realtime", realtime.router(|_session| async {}));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! switchboard::serve(listener, app)
//!     .header_timeout(Duration::from_secs(5))
//!     .with_graceful_shutdown(async move {
//!         tokio::signal::ctrl_c().await.ok();
//!         realtime.shutdown().await;
//!     })
//!     .await
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use dashmap::DashMap;
use futures_util::FutureExt as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower_service::Service as _;

/// Serves `app` on `listener`, with limits on every connection (see the [module](self) and
/// [`Serve`] for each limit and its default). Await the returned [`Serve`] to run it.
///
/// Like `axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())`: every
/// request carries the client's address as [`ConnectInfo<SocketAddr>`](https://docs.rs/axum/0.8/axum/extract/struct.ConnectInfo.html), which the per-address
/// session limits read ([`Builder::sessions_per_address`](crate::Builder::sessions_per_address)).
/// HTTP/1.1 only (WebSockets included); put a proxy in front for HTTP/2 or TLS.
pub fn serve(listener: TcpListener, app: Router) -> Serve {
    Serve {
        listener,
        app,
        limits: Limits::default(),
        signal: None,
    }
}

/// The connection limits of one [`Serve`].
#[derive(Clone, Copy, Debug)]
struct Limits {
    header_timeout: Duration,
    body_timeout: Duration,
    max_header_bytes: usize,
    max_connections: usize,
    nodelay: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            max_connections: default_max_connections(),
            nodelay: true,
        }
    }
}

/// The smallest header limit hyper accepts (its read buffer cannot be smaller).
const MIN_HEADER_BYTES: usize = 8192;

/// 10 000 connections, and at most 80 % of the process's open-file limit (on Linux), so that
/// the server refuses connections before the operating system refuses it files.
fn default_max_connections() -> usize {
    let limit = open_file_limit().map_or(usize::MAX, |files| files / 5 * 4);
    limit.clamp(16, 10_000)
}

/// The soft limit on open files of this process, as `/proc/self/limits` says (Linux only).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A server being set up by [`serve`]; await it to run it. Each setter documents its default.
#[must_use = "a Serve does nothing until it is awaited"]
pub struct Serve {
    listener: TcpListener,
    app: Router,
    limits: Limits,
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl fmt::Debug for Serve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// How long a client may take to send a request's headers, counted from the moment the
    /// server waits for them: when the connection opens, and again after each answer on a
    /// kept-alive connection (so it also bounds how long an idle kept-alive connection stays
    /// open). When it passes, the connection is closed without an answer. Default: 10 s.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.limits.header_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a client may take to send a request's whole body, counted from the end of its
    /// headers. When it passes, the request is answered `408 request_timeout` (by the
    /// Switchboard routes; an application's own handlers see a body error) and the connection
    /// is closed. Default: 30 s, which a 1 MiB body (the default `max_body`) meets at 35 KB/s.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.limits.body_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Largest request head (request line and headers) in bytes; a larger one is answered `431`
    /// and the connection closed. Default: 32 KiB. At least 8 KiB.
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_header_bytes = bytes.max(MIN_HEADER_BYTES);
        self
    }

    /// Most connections open at once, WebSockets included. Past 15/16 of it, each new
    /// connection makes the server close the connections that have been idle longest (no
    /// request in progress, not a WebSocket), down to 7/8 of it; when none is idle and the limit
    /// is reached, a new connection is answered `503` with `Retry-After: 1` and closed.
    /// Default: 10 000, and at most 80 % of the process's open-file limit (read at start on
    /// Linux; raise it with `ulimit -n` to allow more).
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.limits.max_connections = connections.max(1);
        self
    }

    /// Whether accepted connections set `TCP_NODELAY`, so that small realtime frames go out at
    /// once instead of waiting on Nagle's algorithm. Default: `true`.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.limits.nodelay = nodelay;
        self
    }

    /// Stops accepting connections once `signal` completes, closes idle connections, lets the
    /// requests in progress finish and returns when every connection has ended. Call
    /// [`Switchboard::shutdown`](crate::Switchboard::shutdown) at the end of `signal`, so that
    /// WebSockets and held polls end too.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    async fn run(self) -> io::Result<()> {
        let Serve {
            listener,
            app,
            limits,
            signal,
        } = self;
        let table = Arc::new(Table::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(());
        let mut signal = signal.unwrap_or_else(|| Box::pin(std::future::pending()));
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut signal => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) if is_connection_error(&err) => continue,
                Err(err) => {
                    // Out of file descriptors (or another resource): make room by closing the
                    // eighth of the open connections idle longest (not all of them: the newest
                    // may be a client about to send its request), and try again in a moment
                    // rather than spinning.
                    let shed = table.shed(table.open() / 8 + 1);
                    crate::logs::warn_limited!(error = %err, shed, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(if shed > 0 { 5 } else { 100 })).await;
                    continue;
                }
            };
            if !table.make_room(limits.max_connections) {
                crate::logs::warn_limited!(
                    connections = table.open(),
                    "connection refused: the connection limit is reached and none is idle"
                );
                metrics::counter!("switchboard_connections_refused_total").increment(1);
                refuse(stream);
                continue;
            }
            if limits.nodelay {
                let _ = stream.set_nodelay(true);
            }
            let state = table.insert();
            tokio::spawn(connection(
                stream,
                peer,
                app.clone(),
                limits,
                state,
                table.clone(),
                stop_rx.clone(),
                done_rx.clone(),
            ));
        }
        drop(listener);
        let _ = stop_tx.send(true);
        drop(done_rx);
        done_tx.closed().await;
        Ok(())
    }
}

impl IntoFuture for Serve {
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Errors of one incoming connection (it went away before it was accepted), not of the listener.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection the server has no room for, without waiting on the client: a short
/// `503` if the socket takes it at once, then the close.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\n\
          content-length: 0\r\n\r\n",
    );
}

/// Serves one connection until it ends, the server stops, or it is closed as idle.
///
/// A plain function that sets the connection up and returns the future that runs it, rather
/// than an `async fn`: the task of a connection lives as long as the connection (a parked long
/// poll or event stream holds it for minutes), and an `async fn` would keep its arguments in the
/// task next to the copies moved into hyper's connection, and the `http1::Builder` too. The
/// returned future holds hyper's connection once and uses it in place (it is `Unpin`).
#[allow(clippy::too_many_arguments)]
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    state: Arc<ConnState>,
    table: Arc<Table>,
    mut stop: watch::Receiver<bool>,
    done: watch::Receiver<()>,
) -> impl Future<Output = ()> + Send {
    // Held by the socket, so that the connection counts for as long as its socket is open,
    // after an upgrade to a WebSocket too.
    let io = TokioIo::new(Tracked {
        stream,
        _slot: Slot {
            table: table.clone(),
            state: state.clone(),
        },
    });
    let service_state = state.clone();
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let state = service_state.clone();
        let deadline = Instant::now() + body_timeout;
        let mut request = request.map(|body| {
            Body::new(TimedBody {
                inner: body,
                deadline,
                sleep: None,
            })
        });
        request.extensions_mut().insert(ConnectInfo(peer));
        let request_guard = state.begin();
        // A `map` rather than an `async` block: the block would keep the router's future twice
        // (as its capture and as the future it awaits), for as long as the request runs.
        app.clone().call(request).map(move |response| {
            let response = match response {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                state.upgraded.store(true, Ordering::Relaxed);
            }
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(GuardedBody {
                    inner: body,
                    _guard: request_guard,
                })
            }))
        })
    });
    let mut conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    async move {
        let _done = &done;
        let mut stopping = false;
        loop {
            tokio::select! {
                result = &mut conn => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    break;
                }
                () = state.shed.notified() => {
                    if state.idle() {
                        // Closed as idle to make room: nothing is in progress, so nothing is
                        // lost (the client opens a new connection for its next request).
                        break;
                    }
                    state.doomed.store(false, Ordering::Relaxed);
                    table.doomed.fetch_sub(1, Ordering::Relaxed);
                }
                changed = stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    let _ = changed;
                    Pin::new(&mut conn).graceful_shutdown();
                }
            }
        }
    }
}

/// The connections of one server, for the limit and for closing idle ones.
#[derive(Default)]
struct Table {
    connections: DashMap<u64, Arc<ConnState>>,
    next_id: AtomicU64,
    /// Connections open (their sockets), WebSockets included.
    open: AtomicUsize,
    /// Connections told to close as idle that have not closed yet.
    doomed: AtomicUsize,
    epoch: std::sync::OnceLock<Instant>,
}

impl Table {
    fn now(&self) -> u64 {
        let epoch = *self.epoch.get_or_init(Instant::now);
        epoch.elapsed().as_millis() as u64
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections open and not on their way out.
    fn counted(&self) -> usize {
        self.open()
            .saturating_sub(self.doomed.load(Ordering::Relaxed))
    }

    fn insert(&self) -> Arc<ConnState> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            id,
            busy: AtomicU32::new(0),
            upgraded: AtomicBool::new(false),
            doomed: AtomicBool::new(false),
            idle_since: AtomicU64::new(self.now()),
            shed: Notify::new(),
            epoch: *self.epoch.get_or_init(Instant::now),
        });
        self.open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("switchboard_connections_open").increment(1.0);
        self.connections.insert(id, state.clone());
        state
    }

    /// Whether a new connection may be taken, with `max` the limit: past 15/16 of it, the
    /// connections idle longest are told to close, down to 7/8 of it. `false` when the limit is
    /// reached and no connection is idle.
    fn make_room(&self, max: usize) -> bool {
        let high = max - max / 16;
        let counted = self.counted();
        if counted < high {
            return true;
        }
        let low = max - max / 8;
        self.shed(counted + 1 - low.min(counted));
        self.counted() < max
    }

    /// Tells up to `wanted` (at least one) of the connections that have been idle longest to
    /// close. Returns how many were told.
    fn shed(&self, wanted: usize) -> usize {
        let wanted = wanted.max(1);
        // Longest idle first; of those idle since the same millisecond, the oldest connection.
        let mut idle: Vec<((u64, u64), Arc<ConnState>)> = self
            .connections
            .iter()
            .filter(|entry| entry.value().idle() && !entry.value().doomed.load(Ordering::Relaxed))
            .map(|entry| {
                let state = entry.value().clone();
                ((state.idle_since.load(Ordering::Relaxed), state.id), state)
            })
            .collect();
        if idle.len() > wanted {
            idle.select_nth_unstable_by_key(wanted, |(order, _)| *order);
            idle.truncate(wanted);
        }
        for (_, state) in &idle {
            state.doomed.store(true, Ordering::Relaxed);
            self.doomed.fetch_add(1, Ordering::Relaxed);
            state.shed.notify_one();
        }
        if !idle.is_empty() {
            metrics::counter!("switchboard_connections_shed_total").increment(idle.len() as u64);
            tracing::debug!(
                closed = idle.len(),
                open = self.open(),
                "closing idle connections to make room"
            );
        }
        idle.len()
    }
}

/// What the server knows of one connection.
struct ConnState {
    id: u64,
    /// Requests in progress (from their headers to the end of their answer).
    busy: AtomicU32,
    /// Upgraded to a WebSocket: never idle.
    upgraded: AtomicBool,
    /// Told to close as idle.
    doomed: AtomicBool,
    /// When the last request ended (or the connection opened), in ms since `epoch`.
    idle_since: AtomicU64,
    shed: Notify,
    epoch: Instant,
}

impl ConnState {
    fn idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0 && !self.upgraded.load(Ordering::Relaxed)
    }

    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.busy.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }
}

/// A request in progress on its connection; dropped when its answer has been written (or
/// abandoned).
struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let state = &self.0;
        state
            .idle_since
            .store(state.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        state.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Removes a connection from its table when its socket closes.
struct Slot {
    table: Arc<Table>,
    state: Arc<ConnState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.connections.remove(&self.state.id);
        self.table.open.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("switchboard_connections_open").decrement(1.0);
        if self.state.doomed.load(Ordering::Relaxed) {
            self.table.doomed.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A socket that counts in its [`Table`] until it is dropped.
struct Tracked {
    stream: TcpStream,
    _slot: Slot,
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The error of a request body that did not arrive within the body time-out.
#[derive(Debug)]
pub(crate) struct BodyTimedOut;

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

/// A request body that fails with [`BodyTimedOut`] once its deadline has passed. The timer is
/// made only if the body makes the reader wait, so a request without a body costs none.
struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted as in progress until it has been written.
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

    #[test]
    fn make_room_sheds_the_longest_idle_first_and_refuses_when_none_is_idle() {
        let table = Table::default();
        let states: Vec<_> = (0..16).map(|_| table.insert()).collect();
        for (i, state) in states.iter().enumerate() {
            state.idle_since.store(100 - i as u64, Ordering::Relaxed);
        }
        // Below 15/16 of 32: room, nothing shed.
        assert!(table.make_room(32));
        assert_eq!(table.doomed.load(Ordering::Relaxed), 0);
        // 16 open, limit 16: past 15/16, so shed down to 7/8 (14): 3 shed, the oldest idle.
        assert!(table.make_room(16));
        let doomed: Vec<usize> = states
            .iter()
            .enumerate()
            .filter(|(_, state)| state.doomed.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(doomed, vec![13, 14, 15]);
        // Busy and upgraded connections are never shed: with none idle, no room.
        let busy = Table::default();
        let held: Vec<_> = (0..4).map(|_| busy.insert()).collect();
        let _guards: Vec<_> = held[..2].iter().map(ConnState::begin).collect();
        held[2].upgraded.store(true, Ordering::Relaxed);
        held[3].upgraded.store(true, Ordering::Relaxed);
        assert!(!busy.make_room(4));
        assert_eq!(busy.doomed.load(Ordering::Relaxed), 0);
    }
}
