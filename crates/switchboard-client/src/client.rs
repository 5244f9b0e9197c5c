//! The high-level client: one logical session with exactly-once, in-order delivery that survives
//! transport drops and switches (protocol §9).
//!
//! A background tokio task owns the transport. The [`Client`] handle talks to it through bounded
//! channels and a small shared state: [`Client::send`] only queues (it never touches the network),
//! [`Client::recv`] takes delivered messages, [`Client::switch`] and friends are commands.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt as _;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::error::Error;
use crate::frame::{ClientFrame, MAX_EVENT_LEN, Message, OpenFrame, ServerFrame};
use crate::raw::{Http, SseStream, WsConn};

/// How the high-level client carries the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket (`B/ws`, protocol §5.1).
    WebSocket,
    /// Long polling: `GET B/poll?wait=1` in a loop plus `POST B/poll` (protocol §5.2, §5.5).
    LongPoll,
    /// Short polling: `GET B/poll?wait=0` every `interval` plus `POST B/poll` (protocol §5.4).
    ShortPoll {
        /// Pause between the end of one poll and the start of the next.
        interval: Duration,
    },
    /// Server-Sent Events: the server's frames down one streamed `GET B/sse`, the client's
    /// (messages and acknowledgements) up in `POST B/poll` (protocol §5.7).
    Sse,
}

/// Counters of a [`Client`], see [`Client::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Server messages dropped because their `s` was `<= rx` (already delivered).
    pub duplicates_dropped: u64,
    /// Server messages accepted (each exactly once, in order).
    pub received: u64,
    /// Messages queued with [`Client::send`].
    pub sent: u64,
    /// Client messages written again on the wire (after a resume, a switch or a failed POST).
    pub resent: u64,
    /// Automatic re-attachments after a transport failure, including
    /// [`Client::drop_transport_abruptly`] and retried polling requests (not [`Client::switch`]).
    pub reconnects: u64,
    /// Server messages that arrived after a gap (`s > rx + 1`, which a correct server never
    /// sends); each one made the client resume from `rx`.
    pub gaps: u64,
}

#[derive(Debug, Default)]
struct Counters {
    duplicates_dropped: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    resent: AtomicU64,
    reconnects: AtomicU64,
    gaps: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Outbound state shared between the handle and the task.
#[derive(Debug)]
struct Outbound {
    /// Sequence number the next [`Client::send`] gets.
    next_seq: u64,
    /// Sent (queued) but not yet acknowledged by the server, in order.
    unacked: VecDeque<(u64, Message)>,
    /// Highest acknowledgement received from the server.
    server_ack: u64,
}

#[derive(Debug)]
struct Shared {
    out: Mutex<Outbound>,
    out_notify: Notify,
    terminal: Mutex<Option<Error>>,
    counters: Counters,
    rx: AtomicU64,
    max_message: usize,
    max_unacked: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn terminal(&self) -> Option<Error> {
        lock(&self.terminal).clone()
    }

    fn terminal_or_closed(&self) -> Error {
        self.terminal().unwrap_or(Error::Closed)
    }

    fn send(&self, message: Message) -> Result<u64, Error> {
        if let Some(e) = self.terminal() {
            return Err(e);
        }
        if let Some(e) = &message.event
            && e.len() > MAX_EVENT_LEN
        {
            return Err(Error::InvalidMessage(format!(
                "event name of {} bytes, at most {MAX_EVENT_LEN} allowed",
                e.len()
            )));
        }
        let size = message.payload.size();
        if size > self.max_message {
            return Err(Error::InvalidMessage(format!(
                "payload of {size} bytes, max_message is {}",
                self.max_message
            )));
        }
        let seq = {
            let mut out = lock(&self.out);
            if out.unacked.len() >= self.max_unacked {
                return Err(Error::QueueFull);
            }
            let seq = out.next_seq;
            out.next_seq += 1;
            out.unacked.push_back((seq, message));
            seq
        };
        bump(&self.counters.sent, 1);
        self.out_notify.notify_one();
        Ok(seq)
    }
}

/// A cloneable handle that can queue messages on a [`Client`] while another task waits in
/// [`Client::recv`]. Obtained from [`Client::sender`].
#[derive(Debug, Clone)]
pub struct ClientSender {
    shared: Arc<Shared>,
}

impl ClientSender {
    /// Same as [`Client::send`].
    pub fn send(&self, message: Message) -> Result<u64, Error> {
        self.shared.send(message)
    }
}

/// Builder for a [`Client`], see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base: String,
    auth: Option<Value>,
    origin: Option<String>,
    headers: Vec<(String, String)>,
    transport: Transport,
    ack_every: usize,
    inbound_capacity: usize,
    max_unacked: usize,
    max_attempts: u32,
    connect_timeout: Duration,
    resume: Option<(String, u64)>,
    http_client: Option<reqwest::Client>,
}

impl ClientBuilder {
    /// `auth` data for the authentication hook (WebSocket: `auth` query parameter; polling:
    /// body of `POST B/open`). Only used when opening a new session.
    #[must_use]
    pub fn auth(mut self, auth: Value) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Sends `Origin: origin` with every request and WebSocket upgrade.
    #[must_use]
    pub fn origin(mut self, origin: &str) -> Self {
        self.origin = Some(origin.to_owned());
        self
    }

    /// Adds a header sent with every request and WebSocket upgrade (e.g. `Cookie`).
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The transport to start with (default [`Transport::WebSocket`]).
    #[must_use]
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// On WebSocket, acknowledge at the latest after this many messages of one burst (default
    /// 64; an acknowledgement is always sent at the end of each burst read). Minimum 1.
    #[must_use]
    pub fn ack_every(mut self, n: usize) -> Self {
        self.ack_every = n.max(1);
        self
    }

    /// How many received messages may wait for [`Client::recv`] before the client stops reading
    /// from the transport (default 16 384; back-pressure reaches the server).
    #[must_use]
    pub fn inbound_capacity(mut self, n: usize) -> Self {
        self.inbound_capacity = n.max(1);
        self
    }

    /// How many sent-but-unacknowledged messages may be queued before [`Client::send`] fails
    /// with [`Error::QueueFull`] (default 16 384).
    #[must_use]
    pub fn max_unacked(mut self, n: usize) -> Self {
        self.max_unacked = n.max(1);
        self
    }

    /// Attempts per automatic resume (default 10, backoff 50 ms doubling up to 1 s).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Time-out of one connection attempt (default 10 s).
    #[must_use]
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Instead of opening a new session, attach to the existing session `sid`, having received
    /// every server message with `s <= rx`. The client's next sequence number is taken from the
    /// server's acknowledgement (WebSocket: the open frame; polling: the answer to an empty
    /// `POST`), so the resumed client must not have unacknowledged messages of its own.
    ///
    /// The attach numbers of its transport requests (`att`, protocol §9) start from the wall
    /// clock, so that they exceed those of the client that used the session before.
    #[must_use]
    pub fn resume(mut self, sid: &str, rx: u64) -> Self {
        self.resume = Some((sid.to_owned(), rx));
        self
    }

    /// Uses this `reqwest` client for the HTTP requests (to share a connection pool).
    #[must_use]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Same as [`connect`](ClientBuilder::connect).
    pub async fn build(self) -> Result<Client, Error> {
        self.connect().await
    }

    /// Opens (or resumes) the session and starts the background task.
    pub async fn connect(self) -> Result<Client, Error> {
        let header_refs = header_refs(&self.headers, self.origin.as_deref());
        let mut http = match &self.http_client {
            Some(c) => Http::with_client(&self.base, c.clone()),
            None => Http::new(&self.base),
        }
        .with_origin(self.origin.as_deref());
        for (k, v) in &self.headers {
            http = http.with_header(k, v);
        }
        let http_open = http.clone().with_timeout(Some(self.connect_timeout));
        let t = self.connect_timeout;
        let resuming = self.resume.is_some();
        let (sid_in, rx) = match &self.resume {
            Some((sid, rx)) => (Some(sid.as_str()), *rx),
            None => (None, 0),
        };
        let mut att = Att::new(resuming);

        // Open or resume the session; for polling resumes, learn the server's ack with `POST []`.
        let (conn, open): (Option<WsConn>, OpenFrame) = match (self.transport, sid_in) {
            (Transport::WebSocket, _) => {
                let auth = if resuming { None } else { self.auth.as_ref() };
                let (ws, open) = with_timeout(
                    t,
                    WsConn::connect_att(&self.base, sid_in, rx, att.next(), auth, &header_refs),
                )
                .await?;
                (Some(ws), open)
            }
            (_, None) => (None, http_open.open(self.auth.as_ref()).await?),
            (_, Some(sid)) => {
                let frames = http_open.post(sid, &[]).await?;
                let ack = frames
                    .iter()
                    .find_map(|f| match f {
                        ServerFrame::Ack(a) => Some(*a),
                        _ => None,
                    })
                    .ok_or_else(|| Error::protocol("POST answer without ack frame"))?;
                if let Some(ServerFrame::Close { code, reason }) = frames
                    .iter()
                    .find(|f| matches!(f, ServerFrame::Close { .. }))
                {
                    return Err(Error::SessionClosed {
                        code: *code,
                        reason: reason.clone(),
                    });
                }
                (None, default_open(sid, ack))
            }
        };
        check_open(&open, sid_in)?;

        let http = http.with_timeout(Some(
            Duration::from_millis(open.hold) + Duration::from_secs(15),
        ));
        let shared = Arc::new(Shared {
            out: Mutex::new(Outbound {
                next_seq: open.ack + 1,
                unacked: VecDeque::new(),
                server_ack: open.ack,
            }),
            out_notify: Notify::new(),
            terminal: Mutex::new(None),
            counters: Counters::default(),
            rx: AtomicU64::new(rx),
            max_message: open.max_message,
            max_unacked: self.max_unacked,
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let channel_cap = self.inbound_capacity.clamp(1, 1024);
        let (inbound_tx, inbound_rx) = mpsc::channel(channel_cap);
        let (ack_tx, ack_rx) = watch::channel(open.ack);
        let mut task = Task {
            shared: shared.clone(),
            cfg: Config {
                base: self.base.clone(),
                headers: self
                    .headers
                    .iter()
                    .cloned()
                    .chain(self.origin.iter().map(|o| ("Origin".to_owned(), o.clone())))
                    .collect(),
                ack_every: self.ack_every,
                max_attempts: self.max_attempts,
                pending_cap: self.inbound_capacity.saturating_sub(channel_cap).max(1),
                connect_timeout: self.connect_timeout,
            },
            http,
            sid: open.sid.clone(),
            open: open.clone(),
            rx,
            last_ack_sent: rx,
            max_sent_ever: open.ack,
            sent_upto: open.ack,
            need_pong: false,
            pending_in: VecDeque::new(),
            inbound_tx,
            cmd_rx,
            ack_tx,
            kind: self.transport,
            att,
        };
        let conn = match conn {
            Some(ws) => Conn::Ws(ws, Instant::now()),
            None if resuming || self.transport == Transport::Sse => {
                task.attach(self.transport).await?
            }
            None => Conn::Poll(PollState::new(self.transport)),
        };
        tokio::spawn(task.run(conn));
        Ok(Client {
            shared,
            cmd_tx,
            inbound: inbound_rx,
            ack_rx,
            sid: open.sid.clone(),
            transport: self.transport,
            open,
            ended: None,
        })
    }
}

fn header_refs<'a>(
    headers: &'a [(String, String)],
    origin: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(origin.map(|o| ("Origin", o)))
        .collect()
}

/// The attach numbers of one client's transport requests (protocol §9, "Ordering attaches"):
/// every `GET B/poll` and every WebSocket carries a higher one than the requests before it, so
/// that the server can tell a request that was overtaken on the way from a newer one.
#[derive(Debug, Clone, Copy)]
struct Att {
    last: u64,
}

impl Att {
    /// A new session's numbers start at 1. A resumed session may have been used by another
    /// client (an earlier process) whose numbers this one must exceed, so they start from the
    /// wall clock in microseconds instead (below 2^53 until the year 2255), which that client
    /// would have had to outrun by one request per microsecond.
    fn new(resuming: bool) -> Att {
        let last = if resuming {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
                })
                .min(crate::MAX_SEQ / 2)
        } else {
            0
        };
        Att { last }
    }

    /// The number for the next transport request.
    fn next(&mut self) -> u64 {
        self.last = (self.last + 1).min(crate::MAX_SEQ);
        self.last
    }
}

/// The documented defaults (§11), used when resuming over polling (no open frame).
fn default_open(sid: &str, ack: u64) -> OpenFrame {
    OpenFrame {
        v: 1,
        sid: sid.to_owned(),
        resumed: true,
        ack,
        ping: 25_000,
        hold: 20_000,
        resume: 30_000,
        max_message: 65_536,
        max_body: 1_048_576,
    }
}

/// Checks an open frame against the protocol document.
fn check_open(open: &OpenFrame, sid: Option<&str>) -> Result<(), Error> {
    if open.v != 1 {
        return Err(Error::protocol(format!("open: v = {}, expected 1", open.v)));
    }
    if !open.sid_is_well_formed() {
        return Err(Error::protocol(format!(
            "open: sid {:?} is not 32 lowercase hex characters",
            open.sid
        )));
    }
    match sid {
        Some(sid) if open.sid != sid || !open.resumed => Err(Error::protocol(format!(
            "open after resume: sid {:?} resumed {}, expected sid {sid:?} resumed true",
            open.sid, open.resumed
        ))),
        None if open.resumed => Err(Error::protocol("open of a new session says resumed: true")),
        _ => Ok(()),
    }
}

async fn with_timeout<T>(
    d: Duration,
    f: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or(Err(Error::Timeout))
}

/// One logical Switchboard session (protocol §9): messages are delivered exactly once and in
/// order in both directions, across transport drops (automatic resume) and switches.
///
/// Dropping the client stops its background task and leaves the session to expire on the
/// server; [`close`](Client::close) ends it properly.
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    cmd_tx: mpsc::Sender<Command>,
    inbound: mpsc::Receiver<Event>,
    ack_rx: watch::Receiver<u64>,
    sid: String,
    transport: Transport,
    open: OpenFrame,
    ended: Option<Error>,
}

impl Client {
    /// A builder for a client of mount point `base` (e.g. `http://127.0.0.1:8080/realtime`).
    pub fn builder(base: &str) -> ClientBuilder {
        ClientBuilder {
            base: base.to_owned(),
            auth: None,
            origin: None,
            headers: Vec::new(),
            transport: Transport::WebSocket,
            ack_every: 64,
            inbound_capacity: 16_384,
            max_unacked: 16_384,
            max_attempts: 10,
            connect_timeout: Duration::from_secs(10),
            resume: None,
            http_client: None,
        }
    }

    /// Opens a new session on `transport` with default settings.
    pub async fn connect(base: &str, transport: Transport) -> Result<Client, Error> {
        Client::builder(base).transport(transport).connect().await
    }

    /// The session id.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The current transport kind.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The open frame the session started (or was resumed) with. For a resume over polling,
    /// where there is no open frame, the documented defaults with the server's ack.
    pub fn open_frame(&self) -> &OpenFrame {
        &self.open
    }

    /// A cloneable handle for [`send`](Client::send) from other tasks.
    pub fn sender(&self) -> ClientSender {
        ClientSender {
            shared: self.shared.clone(),
        }
    }

    /// Queues `message` with the next client sequence number and returns that number. The
    /// message is kept (and resent after resumes) until the server acknowledges it. Never waits
    /// for the network.
    ///
    /// Errors: the session has ended (its error), [`Error::InvalidMessage`] for a payload above
    /// `max_message` or an event name above 128 bytes, [`Error::QueueFull`].
    pub fn send(&self, message: Message) -> Result<u64, Error> {
        self.shared.send(message)
    }

    /// The next server message, in order, exactly once. After the session ends, returns
    /// [`Error::SessionClosed`] (close frame), or the fatal error (for example
    /// `404 unknown_session`, or the WebSocket close `4100` when another client took the
    /// session over), every time it is called.
    ///
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<Message, Error> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        let e = match self.inbound.recv().await {
            Some(Event::Message(m)) => return Ok(m),
            Some(Event::End(e)) => e,
            None => self.shared.terminal_or_closed(),
        };
        self.ended = Some(e.clone());
        Err(e)
    }

    /// [`recv`](Client::recv) with a time-out: `Ok(None)` if no message came within `d`.
    pub async fn recv_timeout(&mut self, d: Duration) -> Result<Option<Message>, Error> {
        match tokio::time::timeout(d, self.recv()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Switches to `transport`: attaches a new transport with `sid` and `ack = rx` while the old
    /// one is still attached (the server releases the old one), then stops the old one.
    /// For polling, the attachment is a short poll (`wait=0`). On failure the old transport
    /// stays in use.
    pub async fn switch(&mut self, transport: Transport) -> Result<(), Error> {
        self.command(|r| Command::Switch(transport, r)).await?;
        self.transport = transport;
        Ok(())
    }

    /// Kills the current transport without any goodbye (WebSocket: TCP RST, no close frame;
    /// polling: in-flight requests are abandoned) and resumes on the same transport kind.
    /// Returns when the new transport is attached.
    pub async fn drop_transport_abruptly(&mut self) -> Result<(), Error> {
        self.command(Command::DropAbruptly).await
    }

    /// Waits until the server has acknowledged every message sent so far.
    pub async fn flushed(&self) -> Result<(), Error> {
        let target = lock(&self.shared.out).next_seq - 1;
        let mut rx = self.ack_rx.clone();
        match rx.wait_for(|a| *a >= target).await {
            Ok(_) => Ok(()),
            Err(_) => Err(self.shared.terminal_or_closed()),
        }
    }

    /// [`flushed`](Client::flushed) with a time-out ([`Error::Timeout`]).
    pub async fn wait_acked(&self, timeout: Duration) -> Result<(), Error> {
        with_timeout(timeout, self.flushed()).await
    }

    /// Counters of delivered, duplicate and resent messages and reconnects.
    pub fn stats(&self) -> ClientStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            duplicates_dropped: get(&c.duplicates_dropped),
            received: get(&c.received),
            sent: get(&c.sent),
            resent: get(&c.resent),
            reconnects: get(&c.reconnects),
            gaps: get(&c.gaps),
        }
    }

    /// The highest server sequence number received so far (`rx`).
    pub fn rx(&self) -> u64 {
        self.shared.rx.load(Ordering::Relaxed)
    }

    /// The highest client sequence number the server has acknowledged.
    pub fn server_ack(&self) -> u64 {
        *self.ack_rx.borrow()
    }

    /// How many sent messages await the server's acknowledgement.
    pub fn unacked(&self) -> usize {
        lock(&self.shared.out).unacked.len()
    }

    /// Ends the session: sends any queued messages and the protocol `close` frame, and waits for
    /// the server's close frame with code `4001`. Messages still arriving are discarded.
    /// If the session had already ended, returns `Ok` only if it ended with `4001`.
    pub async fn close(mut self) -> Result<(), Error> {
        let r = self.command(Command::Close).await;
        match r {
            Err(Error::SessionClosed { code: 4001, .. }) => Ok(()),
            other => other,
        }
    }

    async fn command(
        &mut self,
        make: impl FnOnce(oneshot::Sender<Result<(), Error>>) -> Command,
    ) -> Result<(), Error> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        let (tx, rx) = oneshot::channel();
        if self.cmd_tx.send(make(tx)).await.is_err() {
            return Err(self.shared.terminal_or_closed());
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.shared.terminal_or_closed()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Background task

enum Command {
    Switch(Transport, oneshot::Sender<Result<(), Error>>),
    DropAbruptly(oneshot::Sender<Result<(), Error>>),
    Close(oneshot::Sender<Result<(), Error>>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Switch(t, _) => write!(f, "Switch({t:?})"),
            Command::DropAbruptly(_) => write!(f, "DropAbruptly"),
            Command::Close(_) => write!(f, "Close"),
        }
    }
}

#[derive(Debug)]
enum Event {
    Message(Message),
    End(Error),
}

type Answer = Pin<Box<dyn Future<Output = Result<Vec<ServerFrame>, Error>> + Send>>;

struct PollState {
    wait: bool,
    interval: Duration,
    get: Option<Answer>,
    next_get_at: Instant,
    post: Option<Answer>,
    next_post_at: Instant,
    /// Highest sequence number in the POST in flight.
    post_upto: u64,
    get_failures: u32,
    post_failures: u32,
    /// A close frame came in a POST answer: wait (until the deadline) for the GET to deliver
    /// the messages before it and the close itself.
    closing: Option<(Error, Instant)>,
}

impl PollState {
    fn new(kind: Transport) -> PollState {
        let (wait, interval) = match kind {
            Transport::ShortPoll { interval } => (false, interval),
            _ => (true, Duration::ZERO),
        };
        let now = Instant::now();
        PollState {
            wait,
            interval,
            get: None,
            next_get_at: now,
            post: None,
            next_post_at: now,
            post_upto: 0,
            get_failures: 0,
            post_failures: 0,
            closing: None,
        }
    }
}

enum Conn {
    Ws(WsConn, Instant),
    Poll(PollState),
    Sse(SseConn),
    Detached,
}

/// An attached event stream, and the POST side that goes with it.
struct SseConn {
    stream: SseStream,
    /// The POST side (its GET fields unused).
    post: PollState,
    /// When the stream last yielded anything.
    last_heard: Instant,
    /// Since when messages received on the stream wait for their acknowledgement.
    ack_since: Option<Instant>,
}

/// Acknowledge messages received on an event stream after this many, or after [`ACK_DELAY`]
/// (protocol §5.7).
const ACK_EVERY: u64 = 64;
const ACK_DELAY: Duration = Duration::from_millis(100);
/// A stream silent for this long (heartbeats come every 15 s) is dead.
const SSE_SILENCE: Duration = Duration::from_secs(45);

enum Step {
    Continue,
    /// The transport died; the session may live on: resume.
    Died(Error),
    /// The session is over (or unusable).
    End(Error),
    Command(Command),
    /// The client handle is gone.
    Exit,
}

struct Config {
    base: String,
    headers: Vec<(String, String)>,
    ack_every: usize,
    max_attempts: u32,
    pending_cap: usize,
    connect_timeout: Duration,
}

struct Task {
    shared: Arc<Shared>,
    cfg: Config,
    http: Http,
    sid: String,
    open: OpenFrame,
    /// Highest server sequence number received.
    rx: u64,
    /// Last acknowledgement sent to the server.
    last_ack_sent: u64,
    /// Highest client sequence number ever written on any transport.
    max_sent_ever: u64,
    /// WebSocket: highest client sequence number written on the current socket.
    sent_upto: u64,
    need_pong: bool,
    pending_in: VecDeque<Event>,
    inbound_tx: mpsc::Sender<Event>,
    cmd_rx: mpsc::Receiver<Command>,
    ack_tx: watch::Sender<u64>,
    kind: Transport,
    /// The attach numbers of the transport requests.
    att: Att,
}

async fn opt_fut(f: Option<&mut Answer>) -> Result<Vec<ServerFrame>, Error> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

fn retryable(e: &Error) -> bool {
    match e {
        Error::Io(_) | Error::Timeout => true,
        Error::WsClosed { code: None, .. } => true,
        Error::WsClosed { code: Some(c), .. } => {
            matches!(
                c,
                1001 | 1005 | 1006 | 1009 | 1011 | 1012 | 1013 | 4101 | 4102 | 4503
            )
        }
        Error::Http { status, .. } => *status == 429 || *status >= 500,
        _ => false,
    }
}

fn backoff(attempt: u32) -> Duration {
    let ms = 50u64.saturating_mul(1 << attempt.min(5));
    Duration::from_millis(ms.min(1000))
}

impl Task {
    async fn run(mut self, mut conn: Conn) {
        let end = loop {
            let step = match &mut conn {
                Conn::Ws(ws, last_heard) => self.ws_step(ws, last_heard).await,
                Conn::Poll(p) => self.poll_step(p).await,
                Conn::Sse(c) => self.sse_step(c).await,
                Conn::Detached => Step::Died(Error::Closed),
            };
            match step {
                Step::Continue => {}
                Step::Exit => return,
                Step::End(e) => break e,
                Step::Died(_) => {
                    kill(std::mem::replace(&mut conn, Conn::Detached));
                    bump(&self.shared.counters.reconnects, 1);
                    match self.reattach(self.kind).await {
                        Ok(c) => conn = c,
                        Err(e) => break e,
                    }
                }
                Step::Command(Command::Switch(kind, reply)) => match self.attach(kind).await {
                    Ok(new) => {
                        retire(std::mem::replace(&mut conn, new));
                        self.kind = kind;
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) if retryable(&e) || matches!(e, Error::Http { status: 403, .. }) => {
                        // the old transport is still usable
                        let _ = reply.send(Err(e));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.clone()));
                        break e;
                    }
                },
                Step::Command(Command::DropAbruptly(reply)) => {
                    kill(std::mem::replace(&mut conn, Conn::Detached));
                    bump(&self.shared.counters.reconnects, 1);
                    match self.reattach(self.kind).await {
                        Ok(c) => {
                            conn = c;
                            let _ = reply.send(Ok(()));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.clone()));
                            break e;
                        }
                    }
                }
                Step::Command(Command::Close(reply)) => {
                    let r = self.close_session(&mut conn).await;
                    retire(std::mem::replace(&mut conn, Conn::Detached));
                    let end = match &r {
                        Ok(()) => Error::SessionClosed {
                            code: 4001,
                            reason: "client_closed".into(),
                        },
                        Err(e) => e.clone(),
                    };
                    *lock(&self.shared.terminal) = Some(end.clone());
                    let _ = reply.send(r);
                    break end;
                }
            }
        };
        retire(conn);
        self.finish(end).await;
    }

    /// Records the terminal error and delivers what is left, then the end.
    async fn finish(self, end: Error) {
        let Task {
            shared,
            pending_in,
            inbound_tx,
            cmd_rx,
            ack_tx,
            ..
        } = self;
        {
            let mut t = lock(&shared.terminal);
            if t.is_none() {
                *t = Some(end.clone());
            }
        }
        drop(cmd_rx);
        drop(ack_tx);
        for ev in pending_in
            .into_iter()
            .chain(std::iter::once(Event::End(end)))
        {
            if inbound_tx.send(ev).await.is_err() {
                return;
            }
        }
    }

    // ---- frames ------------------------------------------------------------------------------

    /// Applies one server frame. `Some(step)` when it ends the transport or the session.
    fn on_frame(&mut self, f: ServerFrame) -> Option<Step> {
        match f {
            ServerFrame::Msg { seq, message } => {
                if seq <= self.rx {
                    bump(&self.shared.counters.duplicates_dropped, 1);
                } else if seq == self.rx + 1 {
                    self.rx = seq;
                    self.shared.rx.store(seq, Ordering::Relaxed);
                    bump(&self.shared.counters.received, 1);
                    self.pending_in.push_back(Event::Message(message));
                } else {
                    bump(&self.shared.counters.gaps, 1);
                    return Some(Step::Died(Error::protocol(format!(
                        "message s = {seq} after rx = {}",
                        self.rx
                    ))));
                }
                None
            }
            ServerFrame::Ack(a) => self.apply_server_ack(a).err().map(Step::End),
            ServerFrame::Ping => {
                self.need_pong = true;
                None
            }
            // A frame of a type this version does not know is ignored (protocol §3).
            ServerFrame::Pong | ServerFrame::Unknown { .. } => None,
            ServerFrame::Close { code, reason } => {
                Some(Step::End(Error::SessionClosed { code, reason }))
            }
            ServerFrame::Error { code, message } => Some(Step::End(Error::protocol(format!(
                "server rejected a frame: {code}: {message}"
            )))),
            ServerFrame::Open(_) => Some(Step::End(Error::protocol("unexpected open frame"))),
        }
    }

    fn apply_server_ack(&mut self, a: u64) -> Result<(), Error> {
        if a > self.max_sent_ever {
            return Err(Error::protocol(format!(
                "server acknowledged {a}, but the client sent only up to {}",
                self.max_sent_ever
            )));
        }
        {
            let mut out = lock(&self.shared.out);
            if a <= out.server_ack {
                return Ok(());
            }
            out.server_ack = a;
            while out.unacked.front().is_some_and(|(s, _)| *s <= a) {
                out.unacked.pop_front();
            }
        }
        self.ack_tx.send_replace(a);
        Ok(())
    }

    /// Unacknowledged messages with `s > after`, at most `max_bytes` of JSON (at least one).
    fn outbound_after(&mut self, after: u64, max_bytes: usize) -> Vec<ClientFrame> {
        let mut frames = Vec::new();
        let mut bytes = 2;
        {
            let out = lock(&self.shared.out);
            for (s, m) in out.unacked.iter().filter(|(s, _)| *s > after) {
                let f = ClientFrame::msg(*s, m.clone());
                let len = f.to_text().len() + 1;
                if !frames.is_empty() && bytes + len > max_bytes {
                    break;
                }
                bytes += len;
                frames.push(f);
            }
        }
        for f in &frames {
            if let ClientFrame::Msg { seq, .. } = f {
                if *seq <= self.max_sent_ever {
                    bump(&self.shared.counters.resent, 1);
                } else {
                    self.max_sent_ever = *seq;
                }
            }
        }
        frames
    }

    fn server_ack(&self) -> u64 {
        lock(&self.shared.out).server_ack
    }

    fn inbound_full(&self) -> bool {
        self.pending_in.len() >= self.cfg.pending_cap
    }

    // ---- attaching ---------------------------------------------------------------------------

    /// One attempt to attach a transport of kind `kind` to the session (resume with `ack = rx`).
    async fn attach(&mut self, kind: Transport) -> Result<Conn, Error> {
        if kind == Transport::Sse {
            let t = self.cfg.connect_timeout;
            let mut stream =
                with_timeout(t, self.http.sse(&self.sid, self.rx, self.att.next())).await?;
            let first = with_timeout(t, stream.next())
                .await?
                .ok_or_else(|| Error::protocol("event stream ended before its open event"))?;
            let open = match ServerFrame::parse(&first.data)? {
                ServerFrame::Open(open) => open,
                other => {
                    return Err(Error::protocol(format!(
                        "first event of a stream is not an open frame: {other:?}"
                    )));
                }
            };
            check_open(&open, Some(&self.sid))?;
            self.last_ack_sent = self.rx;
            self.apply_server_ack(open.ack)?;
            self.open = open;
            self.need_pong = false;
            return Ok(Conn::Sse(SseConn {
                stream,
                post: PollState::new(kind),
                last_heard: Instant::now(),
                ack_since: None,
            }));
        }
        if kind != Transport::WebSocket {
            let answer = with_timeout(
                self.cfg.connect_timeout,
                self.http
                    .poll_att(&self.sid, self.rx, false, self.att.next()),
            )
            .await?;
            self.last_ack_sent = self.rx;
            for f in answer {
                match self.on_frame(f) {
                    None | Some(Step::Continue) => {}
                    Some(Step::End(e) | Step::Died(e)) => return Err(e),
                    Some(Step::Command(_) | Step::Exit) => {}
                }
            }
            self.need_pong = false;
            let mut p = PollState::new(kind);
            if !p.wait {
                p.next_get_at = Instant::now() + p.interval;
            }
            Ok(Conn::Poll(p))
        } else {
            let headers = header_refs(&self.cfg.headers, None);
            let (ws, open) = with_timeout(
                self.cfg.connect_timeout,
                WsConn::connect_att(
                    &self.cfg.base,
                    Some(&self.sid),
                    self.rx,
                    self.att.next(),
                    None,
                    &headers,
                ),
            )
            .await?;
            check_open(&open, Some(&self.sid))?;
            self.last_ack_sent = self.rx;
            self.apply_server_ack(open.ack)?;
            self.sent_upto = self.server_ack().max(open.ack);
            self.open = open;
            self.need_pong = false;
            Ok(Conn::Ws(ws, Instant::now()))
        }
    }

    /// Attaches with bounded retries (backoff 50 ms doubling up to 1 s).
    async fn reattach(&mut self, kind: Transport) -> Result<Conn, Error> {
        let mut last = Error::Timeout;
        for attempt in 0..self.cfg.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt - 1)).await;
            }
            match self.attach(kind).await {
                Ok(c) => return Ok(c),
                Err(e) if retryable(&e) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    // ---- WebSocket ---------------------------------------------------------------------------

    /// Writes pong (if due), the acknowledgement (if due) and new outbound messages, flushed once.
    async fn ws_flush(&mut self, ws: &mut WsConn) -> Result<(), Error> {
        let mut frames = Vec::new();
        if std::mem::take(&mut self.need_pong) {
            frames.push(ClientFrame::Pong);
        }
        if self.rx > self.last_ack_sent {
            frames.push(ClientFrame::Ack(self.rx));
            self.last_ack_sent = self.rx;
        }
        let after = self.sent_upto.max(self.server_ack());
        let msgs = self.outbound_after(after, usize::MAX);
        if let Some(ClientFrame::Msg { seq, .. }) = msgs.last() {
            self.sent_upto = *seq;
        }
        frames.extend(msgs);
        if frames.is_empty() {
            return Ok(());
        }
        ws.send(&frames).await
    }

    fn ws_error(&self, e: Error) -> Step {
        match e {
            Error::WsClosed {
                code: Some(code @ 4000..=4099),
                reason,
            } => Step::End(Error::SessionClosed { code, reason }),
            e if retryable(&e) => Step::Died(e),
            e => Step::End(e),
        }
    }

    async fn ws_step(&mut self, ws: &mut WsConn, last_heard: &mut Instant) -> Step {
        if let Err(e) = self.ws_flush(ws).await {
            return self.ws_error(e);
        }
        let can_read = !self.inbound_full();
        if !can_read {
            *last_heard = Instant::now();
        }
        let dead_at = *last_heard + Duration::from_millis(self.open.ping) + Duration::from_secs(10);
        tokio::select! {
            biased;
            cmd = self.cmd_rx.recv() => match cmd {
                Some(c) => Step::Command(c),
                None => Step::Exit,
            },
            permit = self.inbound_tx.clone().reserve_owned(), if !self.pending_in.is_empty() => match permit {
                Ok(p) => {
                    if let Some(ev) = self.pending_in.pop_front() {
                        p.send(ev);
                    }
                    Step::Continue
                }
                Err(_) => Step::Exit,
            },
            r = ws.recv(), if can_read => {
                *last_heard = Instant::now();
                let mut r = r;
                let mut n = 0;
                loop {
                    let step = match r {
                        Ok(f) => self.on_frame(f),
                        Err(e) => Some(self.ws_error(e)),
                    };
                    if let Some(step) = step {
                        return step;
                    }
                    n += 1;
                    if n >= self.cfg.ack_every || self.inbound_full() {
                        break;
                    }
                    match ws.recv().now_or_never() {
                        Some(next) => r = next,
                        None => break,
                    }
                }
                // the acknowledgement (and pong) go out with the flush at the top of the next step
                Step::Continue
            },
            _ = self.shared.out_notify.notified() => Step::Continue,
            _ = tokio::time::sleep_until(dead_at), if can_read => {
                Step::Died(Error::WsClosed { code: None, reason: "no frame from the server for ping + 10 s".into() })
            },
        }
    }

    // ---- Server-Sent Events -------------------------------------------------------------------

    async fn sse_step(&mut self, c: &mut SseConn) -> Step {
        let now = Instant::now();
        let unacked = self.rx.saturating_sub(self.last_ack_sent);
        let ack_due = unacked >= ACK_EVERY
            || (unacked > 0 && c.ack_since.is_some_and(|since| now >= since + ACK_DELAY));
        let p = &mut c.post;
        if p.post.is_none() && p.closing.is_none() && now >= p.next_post_at {
            let after = self.server_ack();
            let mut frames = self.outbound_after(after, self.open.max_body);
            let upto = match frames.last() {
                Some(ClientFrame::Msg { seq, .. }) => Some(*seq),
                _ => None,
            };
            if upto.is_some() || ack_due {
                if self.rx > self.last_ack_sent {
                    frames.insert(0, ClientFrame::Ack(self.rx));
                    self.last_ack_sent = self.rx;
                    c.ack_since = None;
                }
                p.post_upto = upto.unwrap_or(after);
                let (http, sid) = (self.http.clone(), self.sid.clone());
                p.post = Some(Box::pin(async move { http.post(&sid, &frames).await }));
            }
        }
        let mut wake = c.last_heard + SSE_SILENCE;
        if let Some(since) = c.ack_since {
            wake = wake.min(since + ACK_DELAY);
        }
        if p.post.is_none() && p.closing.is_none() && now < p.next_post_at {
            wake = wake.min(p.next_post_at);
        }
        if let Some((_, deadline)) = &p.closing {
            wake = wake.min(*deadline);
        }
        let can_read = !self.inbound_full();
        tokio::select! {
            biased;
            cmd = self.cmd_rx.recv() => match cmd {
                Some(cmd) => Step::Command(cmd),
                None => Step::Exit,
            },
            permit = self.inbound_tx.clone().reserve_owned(), if !self.pending_in.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(ev) = self.pending_in.pop_front() {
                        permit.send(ev);
                    }
                    Step::Continue
                }
                Err(_) => Step::Exit,
            },
            r = opt_fut(c.post.post.as_mut()), if c.post.post.is_some() => {
                c.post.post = None;
                if r.is_err() {
                    // The acknowledgement it carried may not have arrived: send it again with
                    // the next POST (acknowledgements are cumulative, so that is always right).
                    self.last_ack_sent = 0;
                    c.ack_since.get_or_insert_with(Instant::now);
                }
                self.on_post_answer(&mut c.post, r)
            },
            event = c.stream.next(), if can_read => {
                c.last_heard = Instant::now();
                let mut event = event;
                let mut n = 0;
                loop {
                    if let Some(step) = self.on_sse_event(c, event) {
                        return step;
                    }
                    n += 1;
                    if n >= self.cfg.ack_every || self.inbound_full() {
                        break;
                    }
                    match c.stream.next().now_or_never() {
                        Some(next) => event = next,
                        None => break,
                    }
                }
                Step::Continue
            },
            _ = self.shared.out_notify.notified() => Step::Continue,
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= c.last_heard + SSE_SILENCE && can_read {
                    return Step::Died(Error::Io("nothing on the event stream for 45 s".into()));
                }
                match c.post.closing.take() {
                    Some((e, deadline)) if Instant::now() >= deadline => Step::End(e),
                    other => {
                        c.post.closing = other;
                        Step::Continue
                    }
                }
            },
        }
    }

    /// Applies one event of the stream. `Some(step)` when it ends the transport or the session.
    fn on_sse_event(
        &mut self,
        c: &mut SseConn,
        event: Result<Option<crate::raw::SseEvent>, Error>,
    ) -> Option<Step> {
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => return Some(Step::Died(Error::Io("the event stream ended".into()))),
            Err(e) if retryable(&e) => return Some(Step::Died(e)),
            Err(e) => return Some(Step::End(e)),
        };
        match event.name.as_deref() {
            None => {}
            // Another transport took the session over (protocol §5.7), as WebSocket close 4100.
            Some("superseded") => {
                return Some(Step::End(Error::WsClosed {
                    code: Some(4100),
                    reason: "superseded (event stream)".into(),
                }));
            }
            // The session moved to another node, or the server ends streams after a while:
            // resume on a new stream at once.
            Some(name) => {
                return Some(Step::Died(Error::Io(format!("event stream ended: {name}"))));
            }
        }
        let frame = match ServerFrame::parse(&event.data) {
            Ok(frame) => frame,
            Err(e) => return Some(Step::End(e)),
        };
        let before = self.rx;
        let step = self.on_frame(frame);
        if self.rx > before && c.ack_since.is_none() {
            c.ack_since = Some(Instant::now());
        }
        step
    }

    // ---- polling -----------------------------------------------------------------------------

    async fn poll_step(&mut self, p: &mut PollState) -> Step {
        let now = Instant::now();
        if p.get.is_none() && now >= p.next_get_at && !self.inbound_full() {
            let (http, sid, ack, wait) = (self.http.clone(), self.sid.clone(), self.rx, p.wait);
            let att = self.att.next();
            self.last_ack_sent = ack;
            p.get = Some(Box::pin(async move {
                http.poll_att(&sid, ack, wait, att).await
            }));
        }
        if p.post.is_none() && p.closing.is_none() && now >= p.next_post_at {
            let after = self.server_ack();
            let frames = self.outbound_after(after, self.open.max_body);
            if let Some(ClientFrame::Msg { seq, .. }) = frames.last() {
                p.post_upto = *seq;
                let (http, sid) = (self.http.clone(), self.sid.clone());
                p.post = Some(Box::pin(async move { http.post(&sid, &frames).await }));
            }
        }
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if p.get.is_none() && !self.inbound_full() {
            at(p.next_get_at);
        }
        if p.post.is_none() && p.closing.is_none() && now < p.next_post_at {
            at(p.next_post_at);
        }
        if let Some((_, deadline)) = &p.closing {
            at(*deadline);
        }
        let wake_at = wake.unwrap_or(now);
        tokio::select! {
            biased;
            cmd = self.cmd_rx.recv() => match cmd {
                Some(c) => Step::Command(c),
                None => Step::Exit,
            },
            permit = self.inbound_tx.clone().reserve_owned(), if !self.pending_in.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(ev) = self.pending_in.pop_front() {
                        permit.send(ev);
                    }
                    Step::Continue
                }
                Err(_) => Step::Exit,
            },
            r = opt_fut(p.post.as_mut()), if p.post.is_some() => {
                p.post = None;
                self.on_post_answer(p, r)
            },
            r = opt_fut(p.get.as_mut()), if p.get.is_some() => {
                p.get = None;
                self.on_get_answer(p, r)
            },
            _ = self.shared.out_notify.notified() => Step::Continue,
            _ = tokio::time::sleep_until(wake_at), if wake.is_some() => {
                match p.closing.take() {
                    Some((e, deadline)) if Instant::now() >= deadline => Step::End(e),
                    other => {
                        p.closing = other;
                        Step::Continue
                    }
                }
            },
        }
    }

    fn on_get_answer(&mut self, p: &mut PollState, r: Result<Vec<ServerFrame>, Error>) -> Step {
        match r {
            Ok(frames) => {
                p.get_failures = 0;
                for f in frames {
                    if let Some(step) = self.on_frame(f) {
                        return step;
                    }
                }
                self.need_pong = false;
                if let Some((e, _)) = p.closing.take() {
                    return Step::End(e);
                }
                p.next_get_at = Instant::now() + p.interval;
                Step::Continue
            }
            Err(e) => {
                if let Some((closed, _)) = p.closing.take() {
                    return Step::End(closed);
                }
                if !retryable(&e) {
                    return Step::End(e);
                }
                p.get_failures += 1;
                if p.get_failures > self.cfg.max_attempts {
                    return Step::End(e);
                }
                bump(&self.shared.counters.reconnects, 1);
                p.next_get_at = Instant::now() + backoff(p.get_failures - 1);
                Step::Continue
            }
        }
    }

    fn on_post_answer(&mut self, p: &mut PollState, r: Result<Vec<ServerFrame>, Error>) -> Step {
        match r {
            Ok(frames) => {
                p.post_failures = 0;
                let mut got_ack = false;
                for f in frames {
                    match f {
                        ServerFrame::Ack(a) => {
                            got_ack = true;
                            if let Err(e) = self.apply_server_ack(a) {
                                return Step::End(e);
                            }
                        }
                        ServerFrame::Pong | ServerFrame::Unknown { .. } => {}
                        ServerFrame::Close { code, reason } => {
                            let deadline = Instant::now()
                                + Duration::from_millis(self.open.hold)
                                + Duration::from_secs(5);
                            p.closing = Some((Error::SessionClosed { code, reason }, deadline));
                        }
                        other => {
                            return Step::End(Error::protocol(format!(
                                "unexpected frame in a POST answer: {other:?}"
                            )));
                        }
                    }
                }
                if !got_ack {
                    return Step::End(Error::protocol("POST answer without ack frame"));
                }
                // if the server did not take everything (a gap or back-pressure), do not spin
                p.next_post_at = if self.server_ack() >= p.post_upto {
                    Instant::now()
                } else {
                    Instant::now() + Duration::from_millis(50)
                };
                Step::Continue
            }
            Err(e) => {
                let limit = if matches!(e, Error::Http { status: 429, .. }) {
                    // a concurrent POST (e.g. an abandoned one) is still being processed
                    self.cfg.max_attempts.saturating_mul(20)
                } else {
                    self.cfg.max_attempts
                };
                if !retryable(&e) {
                    return Step::End(e);
                }
                p.post_failures += 1;
                if p.post_failures > limit {
                    return Step::End(e);
                }
                bump(&self.shared.counters.reconnects, 1);
                p.next_post_at = Instant::now() + backoff(p.post_failures.min(4) - 1);
                Step::Continue
            }
        }
    }

    // ---- closing -----------------------------------------------------------------------------

    async fn close_session(&mut self, conn: &mut Conn) -> Result<(), Error> {
        let deadline = Duration::from_secs(10);
        match conn {
            Conn::Ws(ws, _) => {
                self.ws_flush(ws).await?;
                ws.send(&[ClientFrame::Close]).await?;
                with_timeout(deadline, async {
                    loop {
                        match ws.recv().await {
                            Ok(ServerFrame::Close { code: 4001, .. }) => return Ok(()),
                            Ok(ServerFrame::Close { code, reason }) => {
                                return Err(Error::SessionClosed { code, reason });
                            }
                            Ok(ServerFrame::Ping) => ws.send(&[ClientFrame::Pong]).await?,
                            Ok(_) => {}
                            Err(Error::WsClosed {
                                code: Some(code @ 4000..=4099),
                                reason,
                            }) if code != 4001 => {
                                return Err(Error::SessionClosed { code, reason });
                            }
                            Err(Error::WsClosed {
                                code: Some(4001), ..
                            }) => return Ok(()),
                            Err(e) => return Err(e),
                        }
                    }
                })
                .await
            }
            Conn::Poll(p) => self.close_over_http(p).await,
            Conn::Sse(c) => self.close_over_http(&mut c.post).await,
            Conn::Detached => Err(Error::Closed),
        }
    }

    /// Ends the session with a `close` frame in a POST, after the POST in flight (if any).
    async fn close_over_http(&mut self, p: &mut PollState) -> Result<(), Error> {
        let deadline = Duration::from_secs(10);
        {
            {
                if let Some(post) = p.post.take()
                    && let Ok(Ok(frames)) = tokio::time::timeout(deadline, post).await
                {
                    for f in frames {
                        if let ServerFrame::Ack(a) = f {
                            self.apply_server_ack(a)?;
                        }
                    }
                }
                p.get = None;
                let after = self.server_ack();
                let mut frames = self.outbound_after(after, self.open.max_body);
                frames.push(ClientFrame::Close);
                let mut attempt = 0;
                let answer = loop {
                    match with_timeout(deadline, self.http.post(&self.sid, &frames)).await {
                        Err(Error::Http { status: 429, .. }) if attempt < 20 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => break other?,
                    }
                };
                for f in answer {
                    match f {
                        ServerFrame::Ack(a) => self.apply_server_ack(a)?,
                        ServerFrame::Close { code: 4001, .. } => return Ok(()),
                        ServerFrame::Close { code, reason } => {
                            return Err(Error::SessionClosed { code, reason });
                        }
                        _ => {}
                    }
                }
                Err(Error::protocol(
                    "answer to a close POST without close frame",
                ))
            }
        }
    }
}

/// Stops a transport without goodbye.
fn kill(conn: Conn) {
    match conn {
        Conn::Ws(ws, _) => ws.drop_abruptly(),
        Conn::Poll(p) => drop(p),
        Conn::Sse(c) => drop(c),
        Conn::Detached => {}
    }
}

/// Stops a transport that has been superseded (or is no longer needed), politely.
fn retire(conn: Conn) {
    match conn {
        Conn::Ws(ws, _) => {
            tokio::spawn(async move {
                let _ = ws.close().await;
            });
        }
        Conn::Poll(p) => drop(p),
        Conn::Sse(c) => drop(c),
        Conn::Detached => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn attach_numbers_increase_and_a_resume_starts_above_a_new_session() {
        let mut new = Att::new(false);
        assert_eq!((new.next(), new.next(), new.next()), (1, 2, 3));
        let mut resumed = Att::new(true);
        let first = resumed.next();
        assert!(first > 1_000_000_000_000_000, "{first}");
        assert!(first < crate::MAX_SEQ);
        assert_eq!(resumed.next(), first + 1);
        // A later resume (another process, say) starts above this one's numbers.
        std::thread::sleep(Duration::from_millis(2));
        assert!(Att::new(true).next() > resumed.next());
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(0), Duration::from_millis(50));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(5), Duration::from_millis(1000));
        assert_eq!(backoff(100), Duration::from_millis(1000));
    }

    #[test]
    fn classifies_errors() {
        assert!(retryable(&Error::WsClosed {
            code: Some(4101),
            reason: String::new()
        }));
        assert!(retryable(&Error::WsClosed {
            code: None,
            reason: String::new()
        }));
        assert!(!retryable(&Error::WsClosed {
            code: Some(4100),
            reason: String::new()
        }));
        assert!(!retryable(&Error::WsClosed {
            code: Some(4404),
            reason: String::new()
        }));
        assert!(!retryable(&Error::Http {
            status: 404,
            code: "unknown_session".into(),
            message: String::new()
        }));
        assert!(retryable(&Error::Io("reset".into())));
    }

    #[test]
    fn checks_open_frames() {
        let mut o = default_open("0123456789abcdef0123456789abcdef", 0);
        o.resumed = false;
        assert!(check_open(&o, None).is_ok());
        assert!(check_open(&o, Some(&o.sid.clone())).is_err());
        o.resumed = true;
        assert!(check_open(&o, Some(&o.sid.clone())).is_ok());
        o.sid = "0123456789ABCDEF0123456789abcdef".into();
        assert!(check_open(&o, None).is_err());
    }

    #[tokio::test]
    async fn connect_refused_is_io() {
        // port 1 on localhost is closed
        let e = Client::connect("http://127.0.0.1:1/rt", Transport::WebSocket)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Io(_)), "{e:?}");
        let e = Client::connect("http://127.0.0.1:1/rt", Transport::LongPoll)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Io(_)), "{e:?}");
        let e = Client::connect("https://x/rt", Transport::WebSocket)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidUrl(_)), "{e:?}");
    }
}
