//! Scenario 9 (issue 12): Server-Sent Events against long polling and WebSocket.
//!
//! One room of [`Plan::transport_clients`] clients receives [`Plan::transport_rate`] broadcasts a
//! second for [`Plan::transport_secs`], once per transport, one phase after the other, each phase
//! on a fresh `sb_server --serve switchboard` (served by [`switchboard::serve`](fn@switchboard::serve),
//! the serving loop users are told to use), so that no phase inherits another's sessions, buffers
//! or allocator state. A dedicated WebSocket session in the same room sends the broadcasts:
//! `b|<send time>|<index>|` and Korean and emoji text ([`payload::make_unicode`]), so every
//! transport carries multi-byte UTF-8, which an event stream may cut anywhere between chunks.
//!
//! The clients behave as the protocol asks of a real client (docs/protocol.md):
//!
//! - **WebSocket** (§5.1): the harness's [`Driver`], acknowledging in a
//!   frame after 64 messages or 100 ms. No HTTP request after the upgrade.
//! - **SSE** (§5.7): `POST B/open`, then `GET B/sse?v=1&sid=…&ack=…&att=…` (the Rust client's
//!   way, read with its [`SseStream`]); every message is acknowledged with `{"t":"ack","a":N}` in
//!   a `POST B/poll` at the latest after 64 messages or 100 ms (one POST in flight at a time, the
//!   stream read meanwhile); a stream that ends (`recycle` after 256 KiB, or cut) is resumed with
//!   `ack=rx` and a higher `att`.
//! - **Long polling** (§5.2): `POST B/open`, then `GET B/poll?wait=1&ack=rx&att=…` again as soon
//!   as each answer arrives (the acknowledgement rides on the next poll).
//!
//! Every client drops frames with `s <= rx` and counts the rest into a [`Shared`]: latency (the
//! send time is in the payload; sender and clients share one clock), first deliveries, doubles,
//! reordering, sequence gaps and garbled text. HTTP requests are counted while the phase is
//! measured: from the first broadcast until every delivery arrived (or the wait gave up), with
//! the server's CPU time (`/proc/PID/stat`) over the same window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use switchboard_client::raw::{Http, SseStream};
use switchboard_client::{ClientFrame, ServerFrame};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use crate::Error;
use crate::clients::{self, Cmd, Shared, Tracker, WsRole};
use crate::payload;
use crate::proto::{self, ACK_DELAY, ACK_EVERY, Driver, Incoming};
use crate::report::Table;
use crate::scenarios::{Plan, Problems, wait_until};
use crate::server::{Kind, Server};
use crate::sys;

/// The transports compared, in the order their phases run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Sse,
    LongPoll,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::WebSocket, Transport::Sse, Transport::LongPoll];

    fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "long poll",
        }
    }
}

/// What a stream of the server carries before it is recycled (docs/protocol.md §5.7).
const RECYCLE_BYTES: f64 = 256.0 * 1024.0;

/// The bytes of one message event besides its `id` and `data` values: `id: `, a line break,
/// `data: ` and the blank line that ends the event.
const EVENT_OVERHEAD: u64 = 4 + 1 + 6 + 2;

/// Streams one SSE client opens at most (one phase recycles each a few times).
const MAX_STREAMS: u32 = 10_000;

/// Polls one long-polling client sends at most.
const MAX_POLLS: u32 = 1_000_000;

/// Failed requests in a row after which a client gives up.
const MAX_FAILURES: u32 = 20;

/// The time limit of a stream's first event, and of opening a session.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP requests made by the clients of one phase, counted while [`measuring`](Self::measuring).
#[derive(Debug, Default)]
struct Requests {
    /// Whether the phase is being measured (requests are counted).
    measuring: AtomicBool,
    /// `GET B/sse` streams opened (the first of each client included when measured).
    stream_gets: AtomicU64,
    /// `POST B/poll` acknowledgements.
    posts: AtomicU64,
    /// `GET B/poll` long polls.
    polls: AtomicU64,
    /// Requests that failed (any time; retried, or the client gave up).
    failed: AtomicU64,
    /// Streams the server ended with `recycle` (any time).
    recycles: AtomicU64,
    /// Streams that ended otherwise (cut, `moved`) and were resumed.
    resumed: AtomicU64,
    /// Message events received on streams, and their bytes as the server wrote them.
    events: AtomicU64,
    event_bytes: AtomicU64,
    /// Client tasks that ended with an error.
    client_errors: AtomicU64,
}

impl Requests {
    fn count(&self, counter: &AtomicU64) {
        if self.measuring.load(Ordering::Relaxed) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    clients: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    expected: u64,
    delivered: u64,
    doubled: u64,
    reordered: u64,
    garbled: u64,
    seq_gaps: u64,
    redelivered: u64,
    stream_gets: u64,
    posts: u64,
    polls: u64,
    failed: u64,
    recycles: u64,
    resumed: u64,
    bytes_per_event: f64,
    client_errors: u64,
    server_cpu: f64,
    load_cpu: f64,
    window: f64,
}

impl Phase {
    fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    fn per_msg(&self, requests: u64) -> f64 {
        requests as f64 / self.delivered.max(1) as f64
    }

    fn requests(&self) -> u64 {
        self.stream_gets + self.posts + self.polls
    }

    fn us_per_delivery(&self, cpu: f64) -> f64 {
        cpu * 1e6 / self.delivered.max(1) as f64
    }
}

/// Runs one phase: a fresh server, `plan.transport_clients` clients on `transport`, warm-up, then
/// the measured broadcasts.
async fn phase(plan: &Plan, transport: Transport) -> Result<Phase, Error> {
    let n = plan.transport_clients;
    let (rate, secs) = (plan.transport_rate.max(1), plan.transport_secs);
    let server = Server::start(Kind::Switchboard, &["--serve", "switchboard"]).await?;
    let port = server.port();
    let shared = Arc::new(Shared::default());
    let requests = Arc::new(Requests::default());
    let opened = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    if transport == Transport::WebSocket {
        let (drivers, _failed) = clients::connect_many(Kind::Switchboard, port, n).await;
        for (i, d) in drivers {
            opened.fetch_add(1, Ordering::Relaxed);
            let role = WsRole::counted(port);
            clients::spawn_ws(&mut set, d, i, shared.clone(), stop_rx.clone(), None, role);
        }
    } else {
        let https = clients::http_clients()?;
        let base = proto::sb_base(port);
        for i in 0..n {
            let http = Http::with_client(&base, https[i % https.len()].clone());
            let client = Client {
                http,
                shared: shared.clone(),
                requests: requests.clone(),
                opened: opened.clone(),
                stop: stop_rx.clone(),
            };
            set.spawn(client.run(transport));
            if i % 100 == 99 {
                sleep(Duration::from_millis(5)).await;
            }
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
    let clients = opened.load(Ordering::Relaxed);
    // the sender: one WebSocket session in the same room (its own deliveries are not counted)
    let sender = Driver::connect(Kind::Switchboard, port, proto::source_addr(0)).await?;
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
    if !clients::warm_up(&cmd_tx, &shared, clients, Duration::from_secs(30)).await {
        clients::stop_all(&stop, &mut set).await;
        server.stop().await;
        return Err(format!(
            "warm-up broadcast did not reach every {} client",
            transport.name()
        )
        .into());
    }
    sleep(Duration::from_millis(300)).await;
    let own_pid = std::process::id();
    let (cpu0, load0) = (server.cpu()?, sys::cpu_seconds(own_pid)?);
    requests.measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let total = rate * secs;
    let period = Duration::from_nanos(1_000_000_000 / rate);
    for k in 0..total {
        sleep_until(start + period * (k as u32)).await;
        let p = payload::make_unicode(payload::now_ns(), k + 1);
        if cmd_tx.send(Cmd::Raw(p)).is_err() {
            break;
        }
    }
    let expected = total * clients;
    wait_until(
        Duration::from_secs(15),
        Duration::from_secs(5),
        || shared.deliveries.load(Ordering::Relaxed) >= expected,
        || shared.deliveries.load(Ordering::Relaxed),
    )
    .await;
    requests.measuring.store(false, Ordering::Relaxed);
    let window = start.elapsed().as_secs_f64();
    let (cpu1, load1) = (server.cpu()?, sys::cpu_seconds(own_pid)?);
    clients::stop_all(&stop, &mut set).await;
    server.stop().await;
    let s = shared.lat.summary();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let events = load(&requests.events);
    Ok(Phase {
        clients,
        p50: s.p50_ms,
        p99: s.p99_ms,
        p999: s.p999_ms,
        max: s.max_ms,
        expected,
        delivered: load(&shared.deliveries),
        doubled: load(&shared.app_dups),
        reordered: load(&shared.late),
        garbled: load(&shared.garbled),
        seq_gaps: load(&shared.seq_gaps),
        redelivered: load(&shared.dup_frames),
        stream_gets: load(&requests.stream_gets),
        posts: load(&requests.posts),
        polls: load(&requests.polls),
        failed: load(&requests.failed),
        recycles: load(&requests.recycles),
        resumed: load(&requests.resumed),
        bytes_per_event: load(&requests.event_bytes) as f64 / events.max(1) as f64,
        client_errors: load(&requests.client_errors) + load(&shared.errors),
        server_cpu: cpu1 - cpu0,
        load_cpu: load1 - load0,
        window,
    })
}

/// One SSE or long-polling client: its HTTP client and the counters it reports into.
struct Client {
    http: Http,
    shared: Arc<Shared>,
    requests: Arc<Requests>,
    opened: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
}

/// How a client's session went on when it did not end by `stop`.
type Outcome = Result<(), Error>;

impl Client {
    /// Runs the client until `stop` (or until it gives up, counted in `client_errors`).
    async fn run(mut self, transport: Transport) {
        let mut tracker = Tracker::new(&self.shared);
        let outcome = match transport {
            Transport::Sse => self.sse(&mut tracker).await,
            _ => self.long_poll(&mut tracker).await,
        };
        tracker.flush();
        if let Err(e) = outcome
            && !*self.stop.borrow()
        {
            let before = self.requests.client_errors.fetch_add(1, Ordering::Relaxed);
            if before < 3 {
                eprintln!("  {} client gave up: {e}", transport.name());
            }
        }
    }

    /// Opens a session with `POST B/open` (not measured: it happens before the warm-up).
    async fn open(&self) -> Result<String, Error> {
        let open = tokio::time::timeout(OPEN_TIMEOUT, self.http.open(None))
            .await
            .map_err(|_| "POST /open timed out")??;
        Ok(open.sid)
    }

    /// Accounts for one `m` frame: sequence dedup, then the payload. Returns whether it was new.
    fn on_message(
        &self,
        tracker: &mut Tracker,
        rx: &mut u64,
        seq: u64,
        text: Option<&str>,
    ) -> bool {
        if seq <= *rx {
            self.shared.dup_frames.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if seq > *rx + 1 {
            self.shared.seq_gaps.fetch_add(1, Ordering::Relaxed);
        }
        *rx = seq;
        if let Some(text) = text {
            tracker.on_payload(&self.shared, text);
        }
        true
    }

    /// The long-polling client (protocol §5.2).
    async fn long_poll(&mut self, tracker: &mut Tracker) -> Outcome {
        let sid = self.open().await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        let (mut rx, mut failures) = (0u64, 0u32);
        for att in 1..=u64::from(MAX_POLLS) {
            self.requests.count(&self.requests.polls);
            let answer = tokio::select! {
                _ = self.stop.changed() => return Ok(()),
                r = self.http.poll_att(&sid, rx, true, att) => r,
            };
            let frames = match answer {
                Ok(frames) => frames,
                Err(e) => {
                    self.requests.failed.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    if failures > MAX_FAILURES || !e.is_transient() {
                        return Err(format!("poll failed: {e}").into());
                    }
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            failures = 0;
            for frame in frames {
                match frame {
                    ServerFrame::Msg { seq, message } => {
                        self.on_message(tracker, &mut rx, seq, message.as_text());
                    }
                    ServerFrame::Close { code, reason } => {
                        return Err(format!("session closed: {code} {reason}").into());
                    }
                    _ => {}
                }
            }
        }
        Err("poll limit reached".into())
    }

    /// The SSE client (protocol §5.7): streams resumed as they end, acknowledgements in POSTs.
    async fn sse(&mut self, tracker: &mut Tracker) -> Outcome {
        let sid = self.open().await?;
        let http = self.http.clone();
        let mut acks = Acks::default();
        let mut opened = false;
        let mut failures = 0u32;
        for att in 1..=u64::from(MAX_STREAMS) {
            self.requests.count(&self.requests.stream_gets);
            let stream = tokio::select! {
                _ = self.stop.changed() => return Ok(()),
                r = open_stream(&http, &sid, acks.rx, att) => r,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    self.requests.failed.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    if failures > MAX_FAILURES {
                        return Err(format!("stream failed: {e}").into());
                    }
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            failures = 0;
            if !opened {
                opened = true;
                self.opened.fetch_add(1, Ordering::Relaxed);
            }
            match self
                .read_stream(stream, &http, &sid, &mut acks, tracker)
                .await?
            {
                StreamEnd::Stopped => return Ok(()),
                StreamEnd::Recycled => {
                    self.requests.recycles.fetch_add(1, Ordering::Relaxed);
                }
                StreamEnd::Cut => {
                    self.requests.resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Err("stream limit reached".into())
    }

    /// Reads one stream until it ends or `stop`, acknowledging as it goes.
    async fn read_stream(
        &mut self,
        mut stream: SseStream,
        http: &Http,
        sid: &str,
        acks: &mut Acks,
        tracker: &mut Tracker,
    ) -> Result<StreamEnd, Error> {
        let mut post: Option<BoxFuture<'_, PostAnswer>> = None;
        loop {
            if post.is_none()
                && let Some(upto) = acks.due(Instant::now())
            {
                self.requests.count(&self.requests.posts);
                let frames = [ClientFrame::Ack(upto)];
                post = Some(Box::pin(async move { http.post(sid, &frames).await }));
            }
            let deadline = acks.deadline.filter(|_| post.is_none());
            let wake = tokio::select! {
                _ = self.stop.changed() => Wake::Stop,
                r = async {
                    match post.as_mut() {
                        Some(p) => p.await,
                        None => std::future::pending().await,
                    }
                }, if post.is_some() => Wake::Posted(r),
                () = async {
                    match deadline {
                        Some(d) => sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                }, if deadline.is_some() => Wake::AckDue,
                event = stream.next() => Wake::Event(event),
            };
            match wake {
                Wake::Stop => return Ok(StreamEnd::Stopped),
                Wake::AckDue => {}
                Wake::Posted(answer) => {
                    post = None;
                    match answer {
                        Ok(frames) => {
                            acks.confirmed();
                            if let Some(close) = closed(&frames) {
                                return Err(close.into());
                            }
                        }
                        Err(e) => {
                            self.requests.failed.fetch_add(1, Ordering::Relaxed);
                            if acks.failed() > MAX_FAILURES || !e.is_transient() {
                                return Err(format!("acknowledgement POST failed: {e}").into());
                            }
                        }
                    }
                }
                Wake::Event(Ok(None) | Err(_)) => return Ok(StreamEnd::Cut),
                Wake::Event(Ok(Some(event))) => {
                    match event.name.as_deref() {
                        None => {}
                        Some("recycle") => return Ok(StreamEnd::Recycled),
                        Some("moved") => return Ok(StreamEnd::Cut),
                        Some(other) => return Err(format!("stream ended: {other}").into()),
                    }
                    match proto::decode(Kind::Switchboard, &event.data) {
                        Incoming::Msg {
                            seq: Some(seq),
                            payload,
                        } => {
                            let id_len = event.id.as_ref().map_or(0, String::len);
                            let bytes = (id_len + event.data.len()) as u64 + EVENT_OVERHEAD;
                            self.requests.events.fetch_add(1, Ordering::Relaxed);
                            self.requests
                                .event_bytes
                                .fetch_add(bytes, Ordering::Relaxed);
                            if self.on_message(tracker, &mut acks.rx, seq, Some(payload.as_ref())) {
                                acks.received(Instant::now());
                            }
                        }
                        Incoming::Closed => {
                            return Err(format!("session closed: {}", event.data).into());
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The answer to an acknowledgement POST.
type PostAnswer = Result<Vec<ServerFrame>, switchboard_client::Error>;

/// What woke an SSE client.
enum Wake {
    Stop,
    Posted(PostAnswer),
    AckDue,
    Event(Result<Option<switchboard_client::raw::SseEvent>, switchboard_client::Error>),
}

/// Opens a stream resuming `sid` from `ack` and reads its first event, the open frame.
async fn open_stream(http: &Http, sid: &str, ack: u64, att: u64) -> Result<SseStream, Error> {
    let attach = async {
        let mut stream = http.sse(sid, ack, att).await?;
        let first = stream
            .next()
            .await?
            .ok_or("the stream ended before its open event")?;
        match ServerFrame::parse(&first.data)? {
            ServerFrame::Open(open) if open.sid == sid => Ok(stream),
            other => Err(Error::from(format!(
                "the first event is not this session's open frame: {other:?}"
            ))),
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, attach)
        .await
        .map_err(|_| Error::from("no open event within 10 s"))?
}

/// The close frame among a POST answer's frames, as text.
fn closed(frames: &[ServerFrame]) -> Option<String> {
    frames.iter().find_map(|f| match f {
        ServerFrame::Close { code, reason } => Some(format!("session closed: {code} {reason}")),
        _ => None,
    })
}

/// How a stream ended.
enum StreamEnd {
    /// `stop`: the phase is over.
    Stopped,
    /// The server ended it with `recycle`: resume.
    Recycled,
    /// It ended otherwise (cut, `moved`): resume.
    Cut,
}

/// An SSE client's acknowledgement state: the same rule as the WebSocket driver's (at the latest
/// [`ACK_EVERY`] messages or [`ACK_DELAY`] after the first unacknowledged one), one POST at a time.
#[derive(Debug, Default)]
struct Acks {
    /// Highest sequence number received.
    rx: u64,
    /// Highest sequence number the server confirmed (its POST answered).
    acked: u64,
    /// The one a POST in flight acknowledges.
    in_flight: u64,
    /// When the messages after `acked` must be acknowledged.
    deadline: Option<Instant>,
    /// Failed POSTs in a row.
    failures: u32,
}

impl Acks {
    /// A new message (sequence number `rx`) arrived at `now`.
    fn received(&mut self, now: Instant) {
        if self.deadline.is_none() {
            self.deadline = Some(now + ACK_DELAY);
        }
    }

    /// The sequence number to acknowledge now, if one is due (and marks it in flight).
    fn due(&mut self, now: Instant) -> Option<u64> {
        let unacked = self.rx.saturating_sub(self.acked);
        let late = self.deadline.is_some_and(|d| d <= now);
        if unacked == 0 || (unacked < ACK_EVERY && !late) {
            return None;
        }
        self.in_flight = self.rx;
        self.deadline = None;
        Some(self.rx)
    }

    /// The POST in flight was answered.
    fn confirmed(&mut self) {
        self.acked = self.acked.max(self.in_flight);
        self.failures = 0;
        if self.rx > self.acked && self.deadline.is_none() {
            // messages arrived while it was on its way: they were due from their arrival
            self.deadline = Some(Instant::now() + ACK_DELAY);
        }
    }

    /// The POST in flight failed: it is due again at once. Returns the failures in a row.
    fn failed(&mut self) -> u32 {
        self.failures += 1;
        self.deadline = Some(Instant::now());
        self.failures
    }
}

/// Scenario 9: the same room and broadcast rate received over WebSocket, SSE and long polling.
pub async fn transports(plan: &Plan, problems: &mut Problems) -> Table {
    let (n, r, s) = (
        plan.transport_clients,
        plan.transport_rate,
        plan.transport_secs,
    );
    let mut t = Table::new(
        "transports",
        &format!(
            "9. transports (Switchboard only, issue 12): {n} clients in one room, {r} broadcasts/s for {s} s"
        ),
        &Transport::ALL.map(Transport::name),
    );
    t.ratios = false;
    let mut results: Vec<Option<Phase>> = Vec::new();
    for transport in Transport::ALL {
        let name = transport.name();
        eprintln!("[transports] {name}: {n} clients, {r}/s for {s} s");
        let phase = problems.keep(format!("transports ({name})"), phase(plan, transport).await);
        if let Some(p) = &phase {
            check(problems, &mut t, name, p, n);
        }
        results.push(phase);
    }
    let col = |f: &dyn Fn(&Phase) -> f64| results.iter().map(|r| r.as_ref().map(f)).collect();
    let ws = results.first().copied().flatten();
    let vs_ws = |f: fn(&Phase, &Phase) -> f64| -> Vec<Option<f64>> {
        results
            .iter()
            .map(|r| Some(f(r.as_ref()?, ws.as_ref()?)))
            .collect()
    };
    t.row("delivery latency p50", "ms", 2, col(&|p| p.p50));
    t.row("delivery latency p99", "ms", 2, col(&|p| p.p99));
    t.row("delivery latency p99.9", "ms", 2, col(&|p| p.p999));
    t.row("delivery latency max", "ms", 2, col(&|p| p.max));
    t.row(
        "p99 minus WebSocket's",
        "ms",
        2,
        vs_ws(|p, w| p.p99 - w.p99),
    );
    t.row("p99 / WebSocket's", "x", 2, vs_ws(|p, w| p.p99 / w.p99));
    t.row(
        "HTTP requests per delivered message",
        "",
        4,
        col(&|p| p.per_msg(p.requests())),
    );
    t.row(
        "  stream GETs (GET /sse)",
        "",
        4,
        col(&|p| p.per_msg(p.stream_gets)),
    );
    t.row(
        "  ack POSTs (POST /poll)",
        "",
        4,
        col(&|p| p.per_msg(p.posts)),
    );
    t.row(
        "  poll GETs (GET /poll)",
        "",
        4,
        col(&|p| p.per_msg(p.polls)),
    );
    t.row(
        "HTTP requests in the window",
        "",
        0,
        col(&|p| p.requests() as f64),
    );
    t.row(
        "SSE bytes per message event",
        "B",
        0,
        col(&|p| p.bytes_per_event),
    );
    t.row(
        "  stream GETs per message, steady state",
        "",
        5,
        col(&|p| {
            if p.bytes_per_event > 0.0 {
                p.bytes_per_event / RECYCLE_BYTES
            } else {
                0.0
            }
        }),
    );
    t.row(
        "SSE streams recycled and resumed",
        "",
        0,
        col(&|p| p.recycles as f64),
    );
    t.row(
        "SSE streams cut and resumed",
        "",
        0,
        col(&|p| p.resumed as f64),
    );
    t.row(
        "server CPU per delivery",
        "µs",
        2,
        col(&|p| p.us_per_delivery(p.server_cpu)),
    );
    t.row(
        "server CPU / WebSocket's",
        "x",
        2,
        vs_ws(|p, w| p.us_per_delivery(p.server_cpu) / w.us_per_delivery(w.server_cpu)),
    );
    t.row("server CPU", "s", 2, col(&|p| p.server_cpu));
    t.row(
        "load generator CPU per delivery",
        "µs",
        2,
        col(&|p| p.us_per_delivery(p.load_cpu)),
    );
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    t.row(
        "CPU busy, server + load generator",
        &format!("% of {cores} cores"),
        0,
        col(&|p| (p.server_cpu + p.load_cpu) / p.window.max(1e-9) / cores * 100.0),
    );
    t.row("measured window", "s", 2, col(&|p| p.window));
    t.row("clients", "", 0, col(&|p| p.clients as f64));
    t.row("deliveries expected", "", 0, col(&|p| p.expected as f64));
    t.row("deliveries received", "", 0, col(&|p| p.delivered as f64));
    t.row("lost", "", 0, col(&|p| p.lost() as f64));
    t.row("doubled", "", 0, col(&|p| p.doubled as f64));
    t.row("reordered", "", 0, col(&|p| p.reordered as f64));
    t.row("garbled text", "", 0, col(&|p| p.garbled as f64));
    t.row("sequence gaps", "", 0, col(&|p| p.seq_gaps as f64));
    t.row(
        "frames resent and dropped (s <= rx)",
        "",
        0,
        col(&|p| p.redelivered as f64),
    );
    t.row(
        "failed requests (retried)",
        "",
        0,
        col(&|p| p.failed as f64),
    );
    t.row(
        "clients that gave up",
        "",
        0,
        col(&|p| p.client_errors as f64),
    );
    if let (Some(ws), Some(Some(sse))) = (ws, results.get(1)) {
        let diff = sse.p99 - ws.p99;
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        t.note(format!(
            "target: SSE p99 within 2 ms of WebSocket's: {} ({:+.2} ms).",
            met(diff <= 2.0),
            diff
        ));
        let total = sse.per_msg(sse.requests());
        t.note(format!(
            "target: under 0.01 HTTP requests per message: {} for SSE as a whole ({total:.4}: the ack rule, 64 messages or 100 ms, makes up to 10 POSTs/s per client); stream GETs alone {:.4} in the window, {:.5} steady state.",
            met(total < 0.01),
            sse.per_msg(sse.stream_gets),
            sse.bytes_per_event / RECYCLE_BYTES
        ));
    }
    t.note("each phase on a fresh `sb_server --serve switchboard` (switchboard::serve with its defaults, the per-address session limits lifted: the clients come from 8 loopback addresses); the sender is one more WebSocket session in the room; payload `b|<send ns>|<index>|` + Korean and emoji text (52 B of UTF-8).");
    t.note("requests are counted from the first broadcast until the last delivery arrived; setup (not counted): WebSocket 1 upgrade per client, SSE POST /open + GET /sse, long poll POST /open and its warm-up polls.");
    t.note("steady-state stream GETs: a stream is recycled after 256 KiB, so one GET per 256 KiB ÷ (bytes per event) messages; a window shorter than that holds no recycle.");
    t
}

/// Records the correctness failures of one phase as problems, loudly.
fn check(problems: &mut Problems, t: &mut Table, name: &str, p: &Phase, n: usize) {
    let mut wrong = Vec::new();
    if p.clients < n as u64 {
        wrong.push(format!("only {} of {n} clients connected", p.clients));
    }
    for (count, what) in [
        (p.lost(), "deliveries LOST"),
        (p.doubled, "deliveries doubled"),
        (p.reordered, "deliveries reordered"),
        (p.garbled, "payloads garbled"),
        (p.seq_gaps, "sequence gaps"),
        (p.client_errors, "clients gave up"),
    ] {
        if count > 0 {
            wrong.push(format!("{count} {what}"));
        }
    }
    if p.lost() > 0 {
        wrong.push(format!("{} of {} delivered", p.delivered, p.expected));
    }
    if !wrong.is_empty() {
        let text = format!("transports ({name}): {}", wrong.join(", "));
        t.note(format!("!!! {text}"));
        problems.add(text);
    }
}
