//! `GET /ws`: the WebSocket transport.
//!
//! One task per socket. It writes every frame the session has released, back to back (for a client
//! that asked for batches, as JSON arrays of frames of about 16 KiB), and flushes once; reads client frames in bursts and acknowledges each burst once; pings the client every
//! ping interval and drops the socket (not the session) when the client has been silent for the
//! ping interval plus the ping timeout, or when a write stalls for the write timeout.
//!
//! Read and write buffers are sized by the configuration (4 KiB each by default) rather than
//! axum's 128 KiB, which would dominate the memory of an idle connection.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use futures_util::{FutureExt as _, SinkExt as _};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::Instrument as _;

use crate::auth::Handshake;
use crate::error::{ApiError, CloseReason};
use crate::metrics::Refused;
use crate::mount::{self, Mounted};
use crate::protocol::{self, ClientFrame, EncodedMessage, FrameArray, OpenInfo};
use crate::session::{Drain, Session, Shared, TransportKind};
use crate::transport::Params;

/// WebSocket close codes of the transport (the session lives on), `docs/protocol.md` §5.1.
const SUPERSEDED: u16 = 4100;
const HEARTBEAT_TIMEOUT: u16 = 4101;
const WRITE_TIMEOUT: u16 = 4102;
const REJECTED_FRAMES: u16 = 4103;

/// Frames of one socket the server rejects (malformed, too large a payload, binary) before it
/// closes the socket with `4103` (`docs/protocol.md` §5.1): a broken or hostile client costs a
/// bounded amount of work and one log line per connection, not one per frame.
const REJECTED_FRAME_BUDGET: u32 = 64;
const MOVED: u16 = 1012;

/// Most client frames read in one burst before they are delivered and acknowledged.
const READ_BURST: usize = 256;
/// About how many bytes of messages are written between flushes.
const WRITE_BATCH: usize = 256 * 1024;
/// About how many bytes of frames one batch (one WebSocket message) holds. Small enough that
/// neither side allocates large buffers for it (which glibc maps and unmaps, zeroing pages every
/// time); large enough that per-message costs are spread over many frames.
const BATCH_BYTES: usize = 16 * 1024;

pub(crate) async fn upgrade<U: Clone + Send + Sync + 'static>(
    State(mounted): State<Mounted<U>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(peer))| peer);
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::bad_request(format!("expected a WebSocket upgrade: {rejection}"))
                .into_response();
        }
    };
    let config = mounted.inner.config.clone();
    let max_frame = max_frame(&config);
    // Not run before the upgrade has succeeded (futures are lazy); boxed, so that the request it
    // holds is freed once the session is known (see `serve`).
    let attaching = Box::pin(attach(mounted.clone(), peer, headers, uri));
    upgrade
        .read_buffer_size(config.ws_read_buffer)
        .write_buffer_size(config.ws_write_buffer)
        .max_write_buffer_size(config.ws_write_buffer.max(max_frame) + WRITE_BATCH)
        // Frames above `max_frame` get a clean close 1009 from `handle_incoming`; the socket
        // layer only stops gross abuse (anything above the POST body limit).
        .max_message_size(config.max_body.max(max_frame))
        .max_frame_size(config.max_body.max(max_frame))
        .on_upgrade(move |socket| serve(socket, mounted, attaching))
}

/// What the socket's task runs once the upgrade has succeeded: `attaching` (see [`attach`]), then
/// [`run`]; or, if the socket gets no session or its request is stale, [`refuse`] (a stale
/// socket is closed `4100` without an open frame, `docs/protocol.md` §9).
///
/// The task holds this future, and what axum's upgrade task captured to make it, for as long as
/// the connection lasts, so both are kept small. The closure given to axum holds the boxed
/// `attaching` rather than the request's headers and URI (about 180 bytes), and this is written
/// with combinators rather than as an `async` block, which would keep its own copy of the socket
/// (about 370 bytes) next to [`run`]'s: here attaching and running are two states of one enum.
fn serve<U: Clone + Send + Sync + 'static>(
    socket: WebSocket,
    mounted: Mounted<U>,
    attaching: impl Future<Output = Result<Attached<U>, ApiError>> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    attaching.then(move |attached| {
        let transport = attached.and_then(|attached| {
            let span = tracing::info_span!(parent: &attached.session.shared.span(), "websocket");
            let transport = span.in_scope(|| {
                mounted.attach_transport(&attached.session, TransportKind::WebSocket, attached.att)
            })?;
            Ok((transport, attached.opening(), span))
        });
        match transport {
            Ok((transport, opening, span)) => {
                Either::Left(run(socket, transport, opening).instrument(span))
            }
            Err(err) => {
                crate::logs::info_limited!(error = err.code, "WebSocket session refused");
                mounted
                    .inner
                    .config
                    .metrics
                    .rejected(Refused::Request, err.code);
                Either::Right(refuse(socket, err))
            }
        }
    })
}

/// Largest text frame accepted (`docs/protocol.md` §5.1): `4 × ⌈max_message / 3⌉ + 1024` bytes,
/// the base64 text of a payload of `max_message` bytes plus 1024 bytes for the rest of the frame.
fn max_frame(config: &crate::config::Config) -> usize {
    max_frame_len(config.max_message)
}

fn max_frame_len(max_message: usize) -> usize {
    max_message
        .div_ceil(3)
        .saturating_mul(4)
        .saturating_add(1024)
}

/// The session a new socket is for, and how to talk to its client.
struct Attached<U> {
    session: Session<U>,
    /// Whether the session was resumed (`sid`) rather than newly opened.
    resumed: bool,
    /// The client's acknowledgement: what it has already received.
    client_ack: u64,
    /// Whether the client asked for JSON arrays of frames (`batch=1`).
    batch: bool,
    /// The request's attach number (`docs/protocol.md` §9).
    att: u64,
}

impl<U> Attached<U> {
    /// What [`run`] needs besides the session.
    fn opening(&self) -> Opening {
        Opening {
            resumed: self.resumed,
            client_ack: self.client_ack,
            batch: self.batch,
        }
    }
}

/// How a socket's conversation starts: see [`Attached`].
#[derive(Clone, Copy)]
struct Opening {
    resumed: bool,
    client_ack: u64,
    batch: bool,
}

/// Resolves the session a new socket is for: resumed (`sid`) or newly opened.
async fn attach<U: Clone + Send + Sync + 'static>(
    mounted: Mounted<U>,
    peer: Option<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Attached<U>, ApiError> {
    let params = Params::from_uri(&uri)?;
    // Exactly `1`; any other value means one frame per message (§5.1).
    let batch = params.batch.as_deref() == Some("1");
    let att = params.att();
    if let Some(sid) = &params.sid {
        let session = match mounted.lookup(sid) {
            Ok(session) => session,
            // On a node of a cluster: the session lives on another node; move it here.
            Err(err) if err.code == "unknown_session" && mounted.inner.node.is_some() => {
                match crate::session::SessionId::parse(sid) {
                    Some(sid) => mounted.take_over(sid).await?,
                    None => return Err(err),
                }
            }
            Err(err) => return Err(err),
        };
        let client_ack = session.shared.ack(params.ack.unwrap_or(0));
        return Ok(Attached {
            session,
            resumed: true,
            client_ack,
            batch,
            att,
        });
    }
    let auth = match &params.auth {
        // `null` is no authentication data, as `{"auth": null}` is in a `POST /open` body.
        Some(text) => serde_json::from_str::<Option<serde_json::Value>>(text)
            .map_err(|err| ApiError::bad_request(format!("auth is not JSON: {err}")))?,
        None => None,
    };
    let session = mounted
        .open_session(Handshake {
            headers,
            uri,
            auth,
            transport: TransportKind::WebSocket,
            peer,
            client_addr: None,
        })
        .await?;
    Ok(Attached {
        session,
        resumed: false,
        client_ack: 0,
        batch,
        att,
    })
}

/// Says why the socket gets no session, with a close frame. (Not an `async fn`, which would keep
/// the socket twice, for the reason given at [`run`].)
fn refuse(mut socket: WebSocket, err: ApiError) -> impl Future<Output = ()> + Send {
    let close = WsMessage::Close(Some(CloseFrame {
        code: err.close_code(),
        reason: Utf8Bytes::from(err.code),
    }));
    async move {
        let _ = timeout(Duration::from_secs(5), socket.send(close)).await;
    }
}

fn text(frame: String) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(frame))
}

/// Frames on their way to the client: one WebSocket message per frame, or, for a client that asked
/// for batches, JSON arrays of frames of about [`BATCH_BYTES`] each (`docs/protocol.md` §5.1).
enum Outgoing {
    Separate(Vec<WsMessage>),
    Batch {
        full: Vec<WsMessage>,
        current: FrameArray,
    },
}

impl Outgoing {
    fn new(batch: bool) -> Self {
        if batch {
            Self::Batch {
                full: Vec::new(),
                current: FrameArray::new(),
            }
        } else {
            Self::Separate(Vec::new())
        }
    }

    fn with(batch: bool, frame: &str) -> Self {
        let mut outgoing = Self::new(batch);
        outgoing.frame(frame);
        outgoing
    }

    fn frame(&mut self, frame: &str) {
        match self {
            Self::Separate(messages) => messages.push(text(frame.to_string())),
            Self::Batch { current, .. } => current.push_frame(frame),
        }
    }

    fn message(&mut self, seq: u64, message: &EncodedMessage) {
        match self {
            Self::Separate(messages) => messages.push(text(protocol::message_frame(seq, message))),
            Self::Batch { full, current } => {
                if current.len() >= BATCH_BYTES {
                    full.push(text(std::mem::take(current).finish()));
                }
                current.push_message(seq, message);
            }
        }
    }

    /// The WebSocket messages to write, followed by `then` (a close message).
    fn into_messages(self, then: Option<WsMessage>) -> Vec<WsMessage> {
        let mut messages = match self {
            Self::Separate(messages) => messages,
            Self::Batch { mut full, current } => {
                if !current.is_empty() {
                    full.push(text(current.finish()));
                }
                full
            }
        };
        messages.extend(then);
        messages
    }
}

fn close_message(code: u16, reason: &str) -> WsMessage {
    // A close reason may hold at most 123 bytes; cut at a character boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

/// Writes `messages` and flushes once; `false` if the socket failed or stalled.
async fn write_all(socket: &mut WebSocket, messages: Vec<WsMessage>, limit: Duration) -> bool {
    let write = async {
        for message in messages {
            socket.feed(message).await?;
        }
        socket.flush().await
    };
    matches!(timeout(limit, write).await, Ok(Ok(())))
}

/// What the transport does after looking at the session's buffer.
enum Step {
    /// A newer transport took over: release this one.
    Superseded,
    /// The session moved to another node: tell the client to reconnect.
    Moved,
    /// Write these messages: frames the session released, the last with sequence number `last`
    /// (`None`: only a close is due), then, if `closing`, the close frame and message.
    Write {
        messages: Vec<WsMessage>,
        last: Option<u64>,
        closing: bool,
    },
    /// Nothing to send: wait for a notification, or until `wake_at` (held low-priority messages).
    Idle { wake_at: Option<Instant> },
}

/// Looks at the session's buffer and encodes what the transport of `generation` should write
/// after sequence number `sent`.
fn next_step<U>(
    shared: &std::sync::Arc<Shared<U>>,
    generation: u64,
    sent: u64,
    batch: bool,
) -> Step {
    let mut out = Outgoing::new(batch);
    let drained = shared.drain(generation, sent, WRITE_BATCH, |seq, message| {
        out.message(seq, message)
    });
    match drained {
        Drain::Superseded => Step::Superseded,
        Drain::Moved => Step::Moved,
        Drain::Ready { last, close } => {
            let then = close
                .as_ref()
                .map(|reason| close_message(reason.code(), reason.reason()));
            if let Some(reason) = &close {
                out.frame(&protocol::close_frame(reason.code(), reason.reason()));
            }
            Step::Write {
                messages: out.into_messages(then),
                last,
                closing: close.is_some(),
            }
        }
        Drain::Idle { wake_at } => Step::Idle {
            wake_at: wake_at.map(Instant::from_std),
        },
    }
}

// The task's future stays resident for as long as the socket is open, and its size is that of its
// largest state plus its arguments. So everything but the wait itself is boxed (writes, a burst of
// client frames, a goodbye), the arguments are used in place rather than moved into new locals,
// and only what the wait needs is kept across it: an idle connection's task is then about the
// socket, the wake-up (`Notified`) and the timer (`Sleep`). It is a function returning an `async`
// block rather than an `async fn`: the block uses what it captures in place, whereas an `async fn`
// keeps its arguments twice (as passed, and moved into its body), which here is the socket.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn run<U: Clone + Send + Sync + 'static>(
    mut socket: WebSocket,
    transport: mount::Attached<U>,
    opening: Opening,
) -> impl Future<Output = ()> + Send {
    async move {
        let shared = &transport.session().shared;
        let batch = opening.batch;
        if !Box::pin(write_open(&mut socket, shared, opening.resumed, batch)).await {
            return;
        }
        let mut sent = opening.client_ack;
        let mut last_heard = Instant::now();
        let mut next_ping = last_heard + shared.config.ping_interval;
        loop {
            let notified = shared.outbound.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = match next_step(shared, transport.generation(), sent, batch) {
                Step::Idle { wake_at } => wake_at,
                step => {
                    if let Step::Write {
                        last: Some(last), ..
                    } = step
                    {
                        sent = last;
                    }
                    let taken = Box::pin(take_step(
                        &mut socket,
                        &transport,
                        batch,
                        step,
                        &mut last_heard,
                    ));
                    if !taken.await {
                        return;
                    }
                    continue;
                }
            };
            let silence_limit = shared.config.ping_interval + shared.config.ping_timeout;
            let timer = [Some(next_ping), Some(last_heard + silence_limit), wake_at]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_ping);
            // Only what woke the task is kept: handling it (boxed) is the one await that follows.
            let wake = tokio::select! {
                incoming = socket.recv() => Wake::Incoming(incoming),
                _ = &mut notified => continue,
                _ = sleep_until(timer) => Wake::Timer,
            };
            let handled = Box::pin(on_wake(
                &mut socket,
                &transport,
                batch,
                wake,
                &mut last_heard,
                &mut next_ping,
            ));
            if !handled.await {
                return;
            }
        }
    }
}

/// What woke an idle socket's task, besides a notification from the session.
enum Wake {
    /// The client sent something, or the socket ended.
    Incoming(Option<Result<WsMessage, axum::Error>>),
    /// The timer: time to ping, or to give up on a silent client, or to send held messages.
    Timer,
}

/// Handles what woke an idle socket's task: the client's frames, or the timer (a ping is due, or
/// the client has been silent too long). `false` when the socket is finished.
async fn on_wake<U>(
    socket: &mut WebSocket,
    transport: &mount::Attached<U>,
    batch: bool,
    wake: Wake,
    last_heard: &mut Instant,
    next_ping: &mut Instant,
) -> bool {
    let shared = &transport.session().shared;
    let config = &shared.config;
    match wake {
        Wake::Incoming(incoming) => {
            if handle_incoming(socket, transport, batch, incoming)
                .await
                .is_err()
            {
                return false;
            }
            *last_heard = Instant::now();
        }
        Wake::Timer => {
            let now = Instant::now();
            if now >= *last_heard + config.ping_interval + config.ping_timeout {
                heartbeat_timeout(socket, shared).await;
                return false;
            }
            if now >= *next_ping {
                *next_ping = now + config.ping_interval;
                let ping = Outgoing::with(batch, protocol::PING_FRAME).into_messages(None);
                if !write_all(socket, ping, config.write_timeout).await {
                    return false;
                }
            }
        }
    }
    true
}

/// Writes the open frame; `false` if the socket failed or stalled. The frame's text lives only as
/// long as this (boxed) future.
async fn write_open<U>(
    socket: &mut WebSocket,
    shared: &Shared<U>,
    resumed: bool,
    batch: bool,
) -> bool {
    let config = &shared.config;
    let open = protocol::open_frame(&OpenInfo {
        sid: &shared.sid.to_hex(),
        resumed,
        ack: shared.inbound_ack(),
        ping_ms: config.ping_interval.as_millis() as u64,
        hold_ms: config.poll_hold.as_millis() as u64,
        resume_ms: config.resume_window.as_millis() as u64,
        max_message: config.max_message,
        max_body: config.max_body,
    });
    let messages = Outgoing::with(batch, &open).into_messages(None);
    drop(open);
    write_all(socket, messages, config.write_timeout).await
}

/// Carries out a step other than [`Step::Idle`]. For [`Step::Write`]: writes what the session
/// released; then, unless the session is closing, takes in what the client has sent meanwhile
/// (acknowledgements above all, so that the buffer can drain while the application keeps the
/// socket busy), or gives up on a client silent for too long. `false` when the socket is finished.
async fn take_step<U>(
    socket: &mut WebSocket,
    transport: &mount::Attached<U>,
    batch: bool,
    step: Step,
    last_heard: &mut Instant,
) -> bool {
    let session = transport.session();
    let (messages, closing) = match step {
        Step::Superseded => {
            let close = vec![close_message(SUPERSEDED, "superseded")];
            let _ = write_all(socket, close, session.shared.config.write_timeout).await;
            return false;
        }
        Step::Moved => {
            // 1012, "service restart": the session goes on on another node, which the client's
            // next socket (through the load balancer) reaches (`docs/protocol.md` §5.1).
            let close = vec![close_message(MOVED, "moved")];
            let _ = write_all(socket, close, session.shared.config.write_timeout).await;
            return false;
        }
        Step::Write {
            messages, closing, ..
        } => (messages, closing),
        Step::Idle { .. } => return true,
    };
    let shared = &session.shared;
    let config = &shared.config;
    if !write_all(socket, messages, config.write_timeout).await {
        tracing::debug!(session = shared.key, "WebSocket write failed or stalled");
        config.metrics.write_timeout(TransportKind::WebSocket);
        if !closing {
            let close = close_message(WRITE_TIMEOUT, "write_timeout");
            let _ = timeout(Duration::from_millis(100), socket.send(close)).await;
        }
        return false;
    }
    if closing {
        return false;
    }
    if let Some(incoming) = socket.recv().now_or_never() {
        let handled = Box::pin(handle_incoming(socket, transport, batch, incoming));
        if handled.await.is_err() {
            return false;
        }
        *last_heard = Instant::now();
    } else if Instant::now() >= *last_heard + config.ping_interval + config.ping_timeout {
        heartbeat_timeout(socket, shared).await;
        return false;
    }
    true
}

/// Gives up on a socket that has been silent (or stuck) too long; the session lives on.
async fn heartbeat_timeout(socket: &mut WebSocket, shared: &Shared<impl Sized>) {
    tracing::debug!(session = shared.key, "WebSocket heartbeat timeout");
    shared
        .config
        .metrics
        .heartbeat_timeout(TransportKind::WebSocket);
    let close = close_message(HEARTBEAT_TIMEOUT, "heartbeat_timeout");
    let _ = timeout(Duration::from_millis(100), socket.send(close)).await;
}

/// Collects `first` and whatever else the client has already sent, up to [`READ_BURST`] frames.
fn read_burst(socket: &mut WebSocket, first: WsMessage) -> Vec<WsMessage> {
    let mut burst = vec![first];
    while burst.len() < READ_BURST {
        match socket.recv().now_or_never() {
            Some(Some(Ok(message))) => burst.push(message),
            _ => break,
        }
    }
    burst
}

/// Counts a rejected frame of `transport`'s socket and logs it: the first at `info`, the
/// others at `debug`. `true` once the socket has gone past [`REJECTED_FRAME_BUDGET`]: the caller
/// closes it `4103` (the session lives on).
fn over_budget<U>(transport: &mount::Attached<U>, why: &str) -> bool {
    let key = transport.session().shared.key;
    let count = transport.rejected();
    if count == 1 {
        crate::logs::info_limited!(
            session = key,
            error = why,
            "rejected a WebSocket frame (the next ones on this socket are logged at debug)"
        );
    } else {
        tracing::debug!(
            session = key,
            error = why,
            count,
            "rejected a WebSocket frame"
        );
    }
    if count <= REJECTED_FRAME_BUDGET {
        return false;
    }
    crate::logs::info_limited!(
        session = key,
        count,
        "closing a WebSocket that sent too many rejected frames"
    );
    true
}

/// Writes the replies gathered so far (the error frames of the frames before), then closes the
/// socket `4103`.
async fn close_rejected(
    socket: &mut WebSocket,
    replies: Outgoing,
    config: &crate::config::Config,
) -> Result<(), ()> {
    let messages = replies.into_messages(Some(close_message(REJECTED_FRAMES, "rejected_frames")));
    if write_all(socket, messages, config.write_timeout).await {
        linger(socket).await;
    }
    Err(())
}

/// After the server's close frame, reads (and drops) what the client still sends until its own
/// close frame, for at most a second. Closing a socket with unread bytes in its receive buffer
/// makes the kernel send a reset, and a client that gets the reset before it has read the close
/// frame loses the frame, and with it the reason (a client still sending fast, as one that
/// floods bad frames does).
async fn linger(socket: &mut WebSocket) {
    let _ = timeout(Duration::from_secs(1), async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Handles what the socket yielded and whatever else the client has already sent: acknowledgements
/// and heartbeats at once, messages delivered in order and then acknowledged with one `ack` frame.
/// `Err` means the socket is finished.
async fn handle_incoming<U>(
    socket: &mut WebSocket,
    transport: &mount::Attached<U>,
    batch: bool,
    incoming: Option<Result<WsMessage, axum::Error>>,
) -> Result<(), ()> {
    let (session, generation) = (transport.session(), transport.generation());
    let Some(Ok(first)) = incoming else {
        tracing::debug!(
            session = session.shared.key,
            "WebSocket closed by the network"
        );
        return Err(());
    };
    let burst = read_burst(socket, first);
    let shared = &session.shared;
    let max_message = shared.config.max_message;
    let max_frame = max_frame(&shared.config);
    let mut messages = Vec::new();
    let mut replies = Outgoing::new(batch);
    let mut close = false;
    // The client's WebSocket close: what came before it in the burst (its last messages, its
    // `{"t":"close"}`: a page's `conn.close()` sends both at once) is still taken.
    let mut socket_closed = false;
    for incoming in burst {
        match incoming {
            WsMessage::Text(frame) if frame.len() > max_frame => {
                crate::logs::info_limited!(
                    session = shared.key,
                    len = frame.len(),
                    "WebSocket frame too large"
                );
                shared
                    .config
                    .metrics
                    .rejected(Refused::Frame, "payload_too_large");
                let close = close_message(1009, "payload_too_large");
                if let Ok(Ok(())) = timeout(Duration::from_millis(100), socket.send(close)).await {
                    linger(socket).await;
                }
                return Err(());
            }
            WsMessage::Text(frame) => match protocol::decode_frame(frame.as_str(), max_message) {
                Ok(ClientFrame::Message { seq, message }) => messages.push((seq, message)),
                Ok(ClientFrame::Ack(ack)) => {
                    shared.ack(ack);
                }
                Ok(ClientFrame::Ping) => replies.frame(protocol::PONG_FRAME),
                Ok(ClientFrame::Pong | ClientFrame::Unknown) => {}
                Ok(ClientFrame::Close) => close = true,
                Err(err) => {
                    let code = match err {
                        protocol::FrameError::Malformed(_) => "malformed_frame",
                        protocol::FrameError::TooLarge { .. } => "payload_too_large",
                    };
                    shared.config.metrics.rejected(Refused::Frame, code);
                    if over_budget(transport, &err.to_string()) {
                        return close_rejected(socket, replies, &shared.config).await;
                    }
                    replies.frame(&protocol::error_frame(code, &err.to_string()));
                }
            },
            WsMessage::Binary(_) => {
                let why = "binary WebSocket messages are not part of protocol v1; send payloads base64-encoded in b";
                shared
                    .config
                    .metrics
                    .rejected(Refused::Frame, "malformed_frame");
                if over_budget(transport, why) {
                    return close_rejected(socket, replies, &shared.config).await;
                }
                replies.frame(&protocol::error_frame("malformed_frame", why));
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            WsMessage::Close(_) => {
                tracing::debug!(session = shared.key, "WebSocket closed by the client");
                socket_closed = true;
                break;
            }
        }
    }
    if !messages.is_empty() {
        // Back-pressure: while the application's queue is full this socket is not read. If the
        // application takes nothing for as long as a silent peer is tolerated, drop the socket
        // (the session lives on); a takeover or a close ends the wait at once.
        let config = &shared.config;
        let patience = config.ping_interval + config.ping_timeout;
        let Ok(ack) = timeout(patience, shared.deliver(Some(generation), messages)).await else {
            tracing::info!(
                session = shared.key,
                "application is not taking messages; dropping the WebSocket"
            );
            heartbeat_timeout(socket, shared).await;
            return Err(());
        };
        replies.frame(&protocol::ack_frame(ack));
    }
    if close {
        shared.close(CloseReason::ClientClosed);
    }
    if socket_closed {
        return Err(());
    }
    let replies = replies.into_messages(None);
    if replies.is_empty() {
        return Ok(());
    }
    if write_all(socket, replies, shared.config.write_timeout).await {
        Ok(())
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::max_frame_len;

    #[test]
    fn the_frame_limit_fits_the_base64_text_of_the_largest_payload() {
        // 4 × ⌈n / 3⌉ is the length of the padded base64 text of n bytes.
        assert_eq!(max_frame_len(65_536), 88_408);
        assert_eq!(max_frame_len(0), 1024);
        assert_eq!(max_frame_len(1), 1028);
        assert_eq!(max_frame_len(3), 1028);
        assert_eq!(max_frame_len(4), 1032);
        assert_eq!(max_frame_len(usize::MAX), usize::MAX);
    }
}
