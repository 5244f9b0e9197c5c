//! `GET /ws`: the WebSocket transport.
//!
//! One task per socket. It writes every frame the session has released, back to back, and flushes
//! once; reads client frames in bursts and acknowledges each burst once; pings the client every
//! ping interval and drops the socket (not the session) when the client has been silent for the
//! ping interval plus the ping timeout, or when a write stalls for the write timeout.
//!
//! Read and write buffers are sized by the configuration (4 KiB each by default) rather than
//! axum's 128 KiB, which would dominate the memory of an idle connection.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt as _, SinkExt as _};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::Instrument as _;

use crate::auth::Handshake;
use crate::error::{ApiError, CloseReason};
use crate::protocol::{self, ClientFrame, EncodedMessage, FrameArray, OpenInfo};
use crate::router::Mounted;
use crate::session::{Drain, Session, TransportKind};
use crate::transport::Params;

/// WebSocket close codes of the transport (the session lives on), `docs/protocol.md` §5.1.
const SUPERSEDED: u16 = 4100;
const HEARTBEAT_TIMEOUT: u16 = 4101;
const WRITE_TIMEOUT: u16 = 4102;

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
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::bad_request(format!("expected a WebSocket upgrade: {rejection}"))
                .into_response();
        }
    };
    let config = mounted.inner.config.clone();
    let max_frame = max_frame(&config);
    upgrade
        .read_buffer_size(config.ws_read_buffer)
        .write_buffer_size(config.ws_write_buffer)
        .max_write_buffer_size(config.ws_write_buffer.max(max_frame) + WRITE_BATCH)
        // Frames above `max_frame` get a clean close 1009 from `handle_incoming`; the socket
        // layer only stops gross abuse (anything above the POST body limit).
        .max_message_size(config.max_body.max(max_frame))
        .max_frame_size(config.max_body.max(max_frame))
        .on_upgrade(move |socket| async move {
            match attach(&mounted, headers, uri).await {
                Ok(attached) => {
                    let span =
                        tracing::info_span!("websocket", session = attached.session.shared.key);
                    run(socket, mounted, attached).instrument(span).await;
                }
                Err(err) => {
                    tracing::info!(error = err.code, "WebSocket session refused");
                    refuse(socket, err).await;
                }
            }
        })
}

/// Largest text frame accepted: a `m` frame carries at most `max_message` payload bytes,
/// base64-inflated, plus framing.
fn max_frame(config: &crate::config::Config) -> usize {
    config.max_message / 3 * 4 + 1024
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
}

/// Resolves the session a new socket is for: resumed (`sid`) or newly opened.
async fn attach<U: Clone + Send + Sync + 'static>(
    mounted: &Mounted<U>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Attached<U>, ApiError> {
    let params = Params::from_uri(&uri)?;
    let batch = params.batch == Some(1);
    if let Some(sid) = &params.sid {
        let session = mounted.lookup(sid)?;
        let client_ack = session.shared.ack(params.ack.unwrap_or(0));
        return Ok(Attached {
            session,
            resumed: true,
            client_ack,
            batch,
        });
    }
    let auth = match &params.auth {
        Some(text) => Some(
            serde_json::from_str(text)
                .map_err(|err| ApiError::bad_request(format!("auth is not JSON: {err}")))?,
        ),
        None => None,
    };
    let session = mounted
        .open_session(Handshake {
            headers,
            uri,
            auth,
            transport: TransportKind::WebSocket,
        })
        .await?;
    Ok(Attached {
        session,
        resumed: false,
        client_ack: 0,
        batch,
    })
}

async fn refuse(mut socket: WebSocket, err: ApiError) {
    let close = WsMessage::Close(Some(CloseFrame {
        code: err.close_code(),
        reason: Utf8Bytes::from(err.code),
    }));
    let _ = timeout(Duration::from_secs(5), socket.send(close)).await;
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

// The task's future stays resident for as long as the socket is open, and its size is that of its
// largest state. The rarely taken branches (a burst of client frames, a write, a goodbye) are
// therefore boxed, which keeps an idle connection's task about 350 bytes smaller.
async fn run<U: Clone + Send + Sync + 'static>(
    mut socket: WebSocket,
    mounted: Mounted<U>,
    attached: Attached<U>,
) {
    let Attached {
        session,
        resumed,
        client_ack,
        batch,
    } = attached;
    let shared = &session.shared;
    let config = shared.config.clone();
    let generation = shared.attach(TransportKind::WebSocket);
    let _attached = mounted.track_transport(&session, generation);
    let sid = shared.sid.to_hex();
    let open = protocol::open_frame(&OpenInfo {
        sid: &sid,
        resumed,
        ack: shared.inbound_ack(),
        ping_ms: config.ping_interval.as_millis() as u64,
        hold_ms: config.poll_hold.as_millis() as u64,
        resume_ms: config.resume_window.as_millis() as u64,
        max_message: config.max_message,
        max_body: config.max_body,
    });
    drop(sid);
    if !Box::pin(write_all(
        &mut socket,
        Outgoing::with(batch, &open).into_messages(None),
        config.write_timeout,
    ))
    .await
    {
        return;
    }
    let silence_limit = config.ping_interval + config.ping_timeout;
    let mut sent = client_ack;
    let mut last_heard = Instant::now();
    let mut next_ping = last_heard + config.ping_interval;
    loop {
        let notified = shared.outbound.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut out = Outgoing::new(batch);
        let drained = shared.drain(generation, sent, WRITE_BATCH, |seq, message| {
            out.message(seq, message)
        });
        let wake_at = match drained {
            Drain::Superseded => {
                let _ = write_all(
                    &mut socket,
                    vec![close_message(SUPERSEDED, "superseded")],
                    config.write_timeout,
                )
                .await;
                return;
            }
            Drain::Ready { last, close } => {
                if let Some(last) = last {
                    sent = last;
                }
                let mut then = None;
                if let Some(reason) = &close {
                    out.frame(&protocol::close_frame(reason.code(), reason.reason()));
                    then = Some(close_message(reason.code(), reason.reason()));
                }
                let out = out.into_messages(then);
                if !Box::pin(write_all(&mut socket, out, config.write_timeout)).await {
                    tracing::debug!(session = shared.key, "WebSocket write failed or stalled");
                    if close.is_none() {
                        let _ = timeout(
                            Duration::from_millis(100),
                            socket.send(close_message(WRITE_TIMEOUT, "write_timeout")),
                        )
                        .await;
                    }
                    return;
                }
                if close.is_some() {
                    return;
                }
                // While the application keeps the socket busy with output, still take in what the
                // client sent (acknowledgements above all), so that the buffer can drain.
                if let Some(incoming) = socket.recv().now_or_never() {
                    if Box::pin(handle_incoming(
                        &mut socket,
                        &session,
                        generation,
                        batch,
                        incoming,
                    ))
                    .await
                    .is_err()
                    {
                        return;
                    }
                    last_heard = Instant::now();
                } else if Instant::now() >= last_heard + silence_limit {
                    Box::pin(heartbeat_timeout(&mut socket, shared.key)).await;
                    return;
                }
                continue;
            }
            Drain::Idle { wake_at } => wake_at.map(Instant::from_std),
        };
        let dead_at = last_heard + silence_limit;
        let timer = [Some(next_ping), Some(dead_at), wake_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_ping);
        tokio::select! {
            incoming = socket.recv() => {
                if Box::pin(handle_incoming(&mut socket, &session, generation, batch, incoming)).await.is_err() {
                    return;
                }
                last_heard = Instant::now();
            }
            _ = &mut notified => {}
            _ = sleep_until(timer) => {
                let now = Instant::now();
                if now >= dead_at {
                    Box::pin(heartbeat_timeout(&mut socket, shared.key)).await;
                    return;
                }
                if now >= next_ping {
                    next_ping = now + config.ping_interval;
                    let ping = Outgoing::with(batch, protocol::PING_FRAME).into_messages(None);
                    if !Box::pin(write_all(&mut socket, ping, config.write_timeout)).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Gives up on a socket that has been silent (or stuck) too long; the session lives on.
async fn heartbeat_timeout(socket: &mut WebSocket, key: u64) {
    tracing::debug!(session = key, "WebSocket heartbeat timeout");
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

/// Handles what the socket yielded and whatever else the client has already sent: acknowledgements
/// and heartbeats at once, messages delivered in order and then acknowledged with one `ack` frame.
/// `Err` means the socket is finished.
async fn handle_incoming<U>(
    socket: &mut WebSocket,
    session: &Session<U>,
    generation: u64,
    batch: bool,
    incoming: Option<Result<WsMessage, axum::Error>>,
) -> Result<(), ()> {
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
    for incoming in burst {
        match incoming {
            WsMessage::Text(frame) if frame.len() > max_frame => {
                tracing::info!(
                    session = shared.key,
                    len = frame.len(),
                    "WebSocket frame too large"
                );
                let close = close_message(1009, "payload_too_large");
                let _ = timeout(Duration::from_millis(100), socket.send(close)).await;
                return Err(());
            }
            WsMessage::Text(frame) => match protocol::decode_frame(frame.as_str(), max_message) {
                Ok(ClientFrame::Message { seq, message }) => messages.push((seq, message)),
                Ok(ClientFrame::Ack(ack)) => {
                    shared.ack(ack);
                }
                Ok(ClientFrame::Ping) => replies.frame(protocol::PONG_FRAME),
                Ok(ClientFrame::Pong) => {}
                Ok(ClientFrame::Close) => close = true,
                Err(err) => {
                    tracing::info!(session = shared.key, error = %err, "rejected a WebSocket frame");
                    let code = match err {
                        protocol::FrameError::Malformed(_) => "malformed_frame",
                        protocol::FrameError::TooLarge { .. } => "payload_too_large",
                    };
                    replies.frame(&protocol::error_frame(code, &err.to_string()));
                }
            },
            WsMessage::Binary(_) => {
                tracing::info!(session = shared.key, "rejected a binary WebSocket message");
                replies.frame(&protocol::error_frame(
                    "malformed_frame",
                    "binary WebSocket messages are not part of protocol v1; send payloads base64-encoded in b",
                ));
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            WsMessage::Close(_) => {
                tracing::debug!(session = shared.key, "WebSocket closed by the client");
                return Err(());
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
            heartbeat_timeout(socket, shared.key).await;
            return Err(());
        };
        replies.frame(&protocol::ack_frame(ack));
    }
    if close {
        shared.close(CloseReason::ClientClosed);
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
