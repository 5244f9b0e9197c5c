//! The three wire protocols, reduced to what the benchmark needs: open a WebSocket from a chosen
//! source address, send text payloads, receive text payloads (answering heartbeats and, for
//! Switchboard, acknowledging and deduplicating by sequence number).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Error;
use crate::server::Kind;

/// A client WebSocket over a plain TCP stream.
pub type Ws = WebSocketStream<TcpStream>;

/// Switchboard acknowledges after this many received messages at the latest (protocol §5.1).
pub const ACK_EVERY: u64 = 64;
/// ... or this long after the first unacknowledged message.
pub const ACK_DELAY: Duration = Duration::from_millis(100);

/// Number of loopback source addresses client sockets are spread over (127.0.0.1 ..= N), so
/// that tens of thousands of sockets do not exhaust one address's ephemeral ports.
pub const SOURCE_ADDRS: u8 = 8;

/// The source address for client number `i`.
pub fn source_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(SOURCE_ADDRS)) as u8)
}

/// Opens a TCP connection to `127.0.0.1:port` from `src` (any port).
pub async fn tcp_connect(src: Ipv4Addr, port: u16) -> Result<TcpStream, Error> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((src, 0)))?;
    let stream = socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether Switchboard clients ask for batches (`batch=1`, protocol §5.1): the server then
/// writes every queued frame as one JSON array per WebSocket message. On by default, as in the
/// JavaScript and Rust clients; `load --sb-unbatched` turns it off to measure one frame per
/// WebSocket message.
static SWITCHBOARD_BATCHING: AtomicBool = AtomicBool::new(true);

/// Sets whether Switchboard clients opened from now on ask for batches.
pub fn set_switchboard_batching(on: bool) {
    SWITCHBOARD_BATCHING.store(on, Ordering::Relaxed);
}

/// Whether Switchboard clients ask for batches.
pub fn switchboard_batching() -> bool {
    SWITCHBOARD_BATCHING.load(Ordering::Relaxed)
}

/// The WebSocket URL of `kind` on `port`; for Switchboard `resume` is `(sid, ack)`.
pub fn ws_url(kind: Kind, port: u16, resume: Option<(&str, u64)>) -> String {
    match kind {
        Kind::Switchboard => {
            let batch = if switchboard_batching() {
                "&batch=1"
            } else {
                ""
            };
            match resume {
                Some((sid, ack)) => {
                    format!("ws://127.0.0.1:{port}/rt/ws?v=1{batch}&sid={sid}&ack={ack}")
                }
                None => format!("ws://127.0.0.1:{port}/rt/ws?v=1{batch}"),
            }
        }
        Kind::Floor => format!("ws://127.0.0.1:{port}/ws"),
        Kind::Peer => format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"),
    }
}

/// The Switchboard HTTP mount point on `port`.
pub fn sb_base(port: u16) -> String {
    format!("http://127.0.0.1:{port}/rt")
}

/// What one received text frame means.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// An application payload (`seq` for Switchboard `m` frames).
    Msg {
        /// Switchboard sequence number.
        seq: Option<u64>,
        /// The text payload.
        payload: Cow<'a, str>,
    },
    /// A heartbeat request: answer with this text.
    Ping(&'static str),
    /// The server ended the session (Switchboard `close` frame).
    Closed,
    /// Anything else (acks, pongs, open packets, payloads that are not text).
    Other,
}

impl Incoming<'_> {
    fn into_owned(self) -> Incoming<'static> {
        match self {
            Incoming::Msg { seq, payload } => Incoming::Msg {
                seq,
                payload: Cow::Owned(payload.into_owned()),
            },
            Incoming::Ping(reply) => Incoming::Ping(reply),
            Incoming::Closed => Incoming::Closed,
            Incoming::Other => Incoming::Other,
        }
    }
}

/// The fields of a Switchboard server frame the benchmark reads.
#[derive(Deserialize)]
struct SbFrame<'a> {
    #[serde(borrow)]
    t: Cow<'a, str>,
    s: Option<u64>,
    #[serde(borrow)]
    d: Option<&'a RawValue>,
}

/// Decodes one text frame of `kind`.
pub fn decode(kind: Kind, text: &str) -> Incoming<'_> {
    match kind {
        Kind::Floor => Incoming::Msg {
            seq: None,
            payload: Cow::Borrowed(text),
        },
        Kind::Switchboard => {
            if let Some((seq, payload, "")) = plain_message_frame(text) {
                return Incoming::Msg {
                    seq: Some(seq),
                    payload: Cow::Borrowed(payload),
                };
            }
            match serde_json::from_str::<SbFrame<'_>>(text) {
                Ok(frame) => decode_switchboard(frame),
                Err(_) => Incoming::Other,
            }
        }
        Kind::Peer => {
            if text == "2" {
                return Incoming::Ping("3");
            }
            if text.starts_with('1') {
                return Incoming::Closed;
            }
            let Some(body) = text.strip_prefix("42") else {
                return Incoming::Other;
            };
            match serde_json::from_str::<(Cow<'_, str>, Cow<'_, str>)>(body) {
                Ok((_event, payload)) => Incoming::Msg { seq: None, payload },
                Err(_) => Incoming::Other,
            }
        }
    }
}

fn decode_switchboard(frame: SbFrame<'_>) -> Incoming<'_> {
    match frame.t.as_ref() {
        "m" => {
            let payload = frame
                .d
                .and_then(|d| serde_json::from_str::<Cow<'_, str>>(d.get()).ok());
            match (frame.s, payload) {
                (Some(seq), Some(payload)) => Incoming::Msg {
                    seq: Some(seq),
                    payload,
                },
                _ => Incoming::Other,
            }
        }
        "ping" => Incoming::Ping(r#"{"t":"pong"}"#),
        "close" => Incoming::Closed,
        _ => Incoming::Other,
    }
}

/// The message frame exactly as the Switchboard server writes one with a text payload and no event
/// name, `{"t":"m","s":SEQ,"d":"TEXT"}` with no escape in `TEXT`, at the start of `text`: its
/// sequence number, its text and what follows it. Anything else is `None` and goes to serde_json.
/// (Parsing the common case by hand keeps the load generator's share of the two cores close to
/// what it spends on the floor's raw text.)
fn plain_message_frame(text: &str) -> Option<(u64, &str, &str)> {
    let rest = text.strip_prefix(r#"{"t":"m","s":"#)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let seq = rest[..digits].parse().ok()?;
    let rest = rest[digits..].strip_prefix(r#","d":""#)?;
    // The closing quote, and no escape before it (both searches are memchr). The server's JSON
    // never holds raw control characters, so they need no check here.
    let end = rest.find('"')?;
    if rest[..end].contains('\\') {
        return None;
    }
    let after = rest[end + 1..].strip_prefix('}')?;
    Some((seq, &rest[..end], after))
}

/// Decodes a batch by hand if every frame in it is a [`plain_message_frame`]; `false` (and
/// nothing added) otherwise.
fn decode_plain_batch(text: &str, out: &mut VecDeque<Incoming<'static>>) -> bool {
    let before = out.len();
    let Some(mut rest) = text.strip_prefix('[') else {
        return false;
    };
    loop {
        let Some((seq, payload, after)) = plain_message_frame(rest) else {
            out.truncate(before);
            return false;
        };
        out.push_back(Incoming::Msg {
            seq: Some(seq),
            payload: Cow::Owned(payload.to_owned()),
        });
        if let Some(next) = after.strip_prefix(',') {
            rest = next;
        } else if after == "]" {
            return true;
        } else {
            out.truncate(before);
            return false;
        }
    }
}

/// Decodes one WebSocket text message of `kind` into `out`: one frame, or for Switchboard a
/// batch (a JSON array of frames).
pub fn decode_message(kind: Kind, text: &str, out: &mut VecDeque<Incoming<'static>>) {
    if kind == Kind::Switchboard && decode_plain_batch(text, out) {
        return;
    }
    if kind == Kind::Switchboard && text.starts_with('[') {
        match serde_json::from_str::<Vec<SbFrame<'_>>>(text) {
            Ok(frames) => out.extend(
                frames
                    .into_iter()
                    .map(|frame| decode_switchboard(frame).into_owned()),
            ),
            Err(_) => out.push_back(Incoming::Other),
        }
    } else {
        out.push_back(decode(kind, text).into_owned());
    }
}

/// Encodes a text payload as one outgoing WebSocket text frame of `kind` (`seq` is the
/// Switchboard client sequence number).
pub fn encode(kind: Kind, seq: u64, payload: &str) -> String {
    let quoted = serde_json::Value::from(payload).to_string();
    match kind {
        Kind::Switchboard => format!(r#"{{"t":"m","s":{seq},"d":{quoted}}}"#),
        Kind::Floor => payload.to_owned(),
        // socketioxide: the event name (`e` echo, `b` broadcast) decides what the server does
        Kind::Peer => {
            let event = if payload.starts_with("b|") { "b" } else { "e" };
            format!(r#"42["{event}",{quoted}]"#)
        }
    }
}

/// What the open handshake of a Switchboard WebSocket told.
#[derive(Debug, Clone, Deserialize)]
pub struct Opened {
    /// Session id.
    pub sid: String,
    /// Whether an existing session was resumed.
    pub resumed: bool,
}

/// Counters a [`Driver`] keeps.
#[derive(Debug, Default, Clone, Copy)]
pub struct DriverStats {
    /// Switchboard frames dropped because their sequence number was already delivered.
    pub dup_frames: u64,
    /// Switchboard frames whose sequence number skipped ahead (a server bug).
    pub gaps: u64,
    /// Acknowledgement frames sent.
    pub acks_sent: u64,
}

/// One client connection of any [`Kind`], driven from one task.
#[derive(Debug)]
pub struct Driver {
    kind: Kind,
    ws: Ws,
    /// The Switchboard session, once opened.
    pub opened: Option<Opened>,
    /// Highest Switchboard sequence number delivered (`rx`).
    pub rx: u64,
    acked: u64,
    ack_deadline: Option<Instant>,
    ack_now: bool,
    next_seq: u64,
    /// Frames received but not yet handled (the rest of a batch).
    pending: VecDeque<Incoming<'static>>,
    /// Counters.
    pub stats: DriverStats,
}

/// The load generator's WebSocket read buffer, the same for every server (`load --read-buffer N`).
static READ_BUFFER: AtomicUsize = AtomicUsize::new(DEFAULT_READ_BUFFER);

/// The default read buffer of the load generator's sockets: 32 KiB. tungstenite's own default of
/// 128 KiB costs a client a `memset` of up to 128 KiB on every read and, while a received message
/// still holds part of the buffer, a fresh 128 KiB allocation (mapped and zeroed by the kernel);
/// with thousands of sockets on two cores that made the load generator, not the server, the limit
/// of every column. At 32 KiB all three servers were at least as fast as at 128 KiB here.
pub const DEFAULT_READ_BUFFER: usize = 32 * 1024;

/// Sets the read buffer of the sockets opened from now on.
pub fn set_read_buffer(bytes: usize) {
    READ_BUFFER.store(bytes, Ordering::Relaxed);
}

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(READ_BUFFER.load(Ordering::Relaxed))
}

/// Reads the next text frame, answering nothing; `Ok(None)` when the socket ended.
async fn next_text(ws: &mut Ws) -> Result<Option<String>, Error> {
    loop {
        match ws.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(WsMessage::Text(t))) => return Ok(Some(t.as_str().to_owned())),
            Some(Ok(WsMessage::Close(_))) => return Ok(None),
            Some(Ok(_)) => {}
        }
    }
}

impl Driver {
    /// Connects a new client of `kind` from `src` and completes its handshake (Switchboard open
    /// frame; Engine.IO open packet and Socket.IO namespace connect). At most 30 s.
    pub async fn connect(kind: Kind, port: u16, src: Ipv4Addr) -> Result<Driver, Error> {
        Driver::connect_resume(kind, port, src, None).await
    }

    /// Like [`connect`](Driver::connect); for Switchboard with `resume = Some((sid, rx))` the
    /// session is resumed (the driver starts at `rx`).
    pub async fn connect_resume(
        kind: Kind,
        port: u16,
        src: Ipv4Addr,
        resume: Option<(&str, u64)>,
    ) -> Result<Driver, Error> {
        tokio::time::timeout(Duration::from_secs(30), async {
            let stream = tcp_connect(src, port).await?;
            let url = ws_url(kind, port, resume);
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url, stream, Some(client_config()))
                    .await?;
            let mut d = Driver {
                kind,
                ws,
                opened: None,
                rx: resume.map_or(0, |r| r.1),
                acked: resume.map_or(0, |r| r.1),
                ack_deadline: None,
                ack_now: false,
                next_seq: 1,
                pending: VecDeque::new(),
                stats: DriverStats::default(),
            };
            d.handshake().await?;
            Ok(d)
        })
        .await
        .map_err(|_| Error::from("connect timed out after 30 s"))?
    }

    async fn handshake(&mut self) -> Result<(), Error> {
        match self.kind {
            Kind::Floor => Ok(()),
            Kind::Switchboard => {
                let text = next_text(&mut self.ws)
                    .await?
                    .ok_or("socket closed before the open frame")?;
                let mut v: serde_json::Value = serde_json::from_str(&text)?;
                if let serde_json::Value::Array(frames) = &mut v {
                    // A batching client gets `[open]`.
                    v = frames.pop().unwrap_or_default();
                }
                if v.get("t").and_then(|t| t.as_str()) != Some("open") {
                    return Err(format!("first frame is not open: {text}").into());
                }
                self.opened = Some(serde_json::from_value(v)?);
                Ok(())
            }
            Kind::Peer => {
                let text = next_text(&mut self.ws)
                    .await?
                    .ok_or("socket closed before the Engine.IO open packet")?;
                if !text.starts_with('0') {
                    return Err(format!("expected Engine.IO open packet, got {text}").into());
                }
                self.ws.send(WsMessage::text("40")).await?;
                loop {
                    let text = next_text(&mut self.ws)
                        .await?
                        .ok_or("socket closed before the Socket.IO connect answer")?;
                    if text.starts_with("40") {
                        return Ok(());
                    }
                    if text == "2" {
                        self.ws.send(WsMessage::text("3")).await?;
                    } else if text.starts_with("44") {
                        return Err(format!("Socket.IO connect refused: {text}").into());
                    }
                }
            }
        }
    }

    /// The implementation this driver talks to.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Sends text payloads (each one WebSocket message, flushed once).
    pub async fn send(&mut self, payloads: &[String]) -> Result<(), Error> {
        for p in payloads {
            let frame = encode(self.kind, self.next_seq, p);
            self.next_seq += 1;
            self.ws.feed(WsMessage::text(frame)).await?;
        }
        self.ws.flush().await?;
        Ok(())
    }

    async fn send_ack(&mut self) -> Result<(), Error> {
        if self.rx > self.acked {
            let frame = format!(r#"{{"t":"ack","a":{}}}"#, self.rx);
            self.ws.send(WsMessage::text(frame)).await?;
            self.acked = self.rx;
            self.stats.acks_sent += 1;
        }
        self.ack_deadline = None;
        self.ack_now = false;
        Ok(())
    }

    /// Waits for the next application payload, answering heartbeats and acknowledging as the
    /// protocol requires. `Ok(None)` when the connection or session ended.
    ///
    /// Cancel-safe for `select!`: a cancelled call loses no received payload (an acknowledgement
    /// or heartbeat answer interrupted half-way is completed by the next write).
    pub async fn recv(&mut self) -> Result<Option<String>, Error> {
        loop {
            if self.ack_now {
                self.send_ack().await?;
            }
            if let Some(incoming) = self.pending.pop_front() {
                match incoming {
                    Incoming::Msg { seq, payload } => {
                        if let Some(seq) = seq {
                            if seq <= self.rx {
                                self.stats.dup_frames += 1;
                                continue;
                            }
                            if seq > self.rx + 1 {
                                self.stats.gaps += 1;
                            }
                            self.rx = seq;
                            if self.rx - self.acked >= ACK_EVERY {
                                // sent at the start of the next call, so that a cancelled call
                                // never loses this payload
                                self.ack_now = true;
                            } else if self.ack_deadline.is_none() {
                                self.ack_deadline = Some(Instant::now() + ACK_DELAY);
                            }
                        }
                        return Ok(Some(payload.into_owned()));
                    }
                    Incoming::Ping(reply) => self.ws.send(WsMessage::text(reply)).await?,
                    Incoming::Closed => return Ok(None),
                    Incoming::Other => {}
                }
                continue;
            }
            let next = match self.ack_deadline {
                Some(deadline) => tokio::select! {
                    m = self.ws.next() => m,
                    () = tokio::time::sleep_until(deadline) => {
                        self.send_ack().await?;
                        continue;
                    }
                },
                None => self.ws.next().await,
            };
            let text = match next {
                None | Some(Ok(WsMessage::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(_)) => continue,
            };
            decode_message(self.kind, text.as_str(), &mut self.pending);
        }
    }

    /// Kills the connection without a close frame: `SO_LINGER` 0, so the kernel sends a RST.
    pub fn drop_abruptly(self) {
        let _ = self.ws.get_ref().set_zero_linger();
        drop(self);
    }

    /// Closes the WebSocket politely (close frame, at most 1 s).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_protocol() {
        assert_eq!(
            decode(Kind::Switchboard, r#"{"t":"m","s":3,"d":"b|1|2|x"}"#),
            Incoming::Msg {
                seq: Some(3),
                payload: Cow::Borrowed("b|1|2|x")
            }
        );
        assert_eq!(
            decode(Kind::Switchboard, r#"{"t":"ping"}"#),
            Incoming::Ping(r#"{"t":"pong"}"#)
        );
        assert_eq!(
            decode(Kind::Switchboard, r#"{"t":"m","s":3,"d":{"a":1}}"#),
            Incoming::Other
        );
        // By hand, and the same batch with an escape (serde_json) and with another frame in it.
        for text in [
            r#"[{"t":"m","s":4,"d":"한국어"},{"t":"m","s":5,"d":"😀"}]"#,
            r#"[{"t":"m","s":4,"d":"\ud55c국어"},{"t":"m","s":5,"d":"😀"}]"#,
            r#"[{"t":"m","s":4,"d":"한국어"},{"t":"ack","a":9},{"t":"m","s":5,"d":"😀"}]"#,
        ] {
            let mut batch = VecDeque::new();
            decode_message(Kind::Switchboard, text, &mut batch);
            let messages: Vec<_> = batch
                .into_iter()
                .filter(|incoming| *incoming != Incoming::Other)
                .collect();
            assert_eq!(
                messages,
                [
                    Incoming::Msg {
                        seq: Some(4),
                        payload: Cow::Borrowed("한국어")
                    },
                    Incoming::Msg {
                        seq: Some(5),
                        payload: Cow::Borrowed("😀")
                    },
                ],
                "{text}"
            );
        }
        assert_eq!(plain_message_frame(r#"{"t":"m","s":4,"d":"a\"b"}"#), None);
        assert_eq!(
            plain_message_frame(r#"{"t":"m","s":4,"e":"x","d":"a"}"#),
            None
        );
        let mut batch = VecDeque::new();
        decode_message(
            Kind::Switchboard,
            r#"[{"t":"m","s":4,"d":"한국어"},{"t":"ping"},{"t":"m","s":5,"d":"😀"}]"#,
            &mut batch,
        );
        assert_eq!(
            Vec::from(batch),
            [
                Incoming::Msg {
                    seq: Some(4),
                    payload: Cow::Borrowed("한국어")
                },
                Incoming::Ping(r#"{"t":"pong"}"#),
                Incoming::Msg {
                    seq: Some(5),
                    payload: Cow::Borrowed("😀")
                },
            ]
        );
        assert_eq!(decode(Kind::Peer, "2"), Incoming::Ping("3"));
        assert_eq!(
            decode(Kind::Peer, r#"42["e","b|1"]"#),
            Incoming::Msg {
                seq: None,
                payload: Cow::Borrowed("b|1")
            }
        );
        assert_eq!(
            encode(Kind::Switchboard, 7, "e|1"),
            r#"{"t":"m","s":7,"d":"e|1"}"#
        );
        assert_eq!(encode(Kind::Peer, 7, "e|1"), r#"42["e","e|1"]"#);
        assert_eq!(encode(Kind::Peer, 7, "b|1"), r#"42["b","b|1"]"#);
        assert_eq!(encode(Kind::Floor, 7, "e|1"), "e|1");
    }
}
