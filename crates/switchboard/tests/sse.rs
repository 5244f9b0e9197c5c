//! The Server-Sent Events transport (`GET /sse`, `docs/protocol.md` §5.7) over real sockets:
//! opening, resuming by `sid` or by the browser's `Last-Event-ID`, switching to and from the
//! other transports mid-stream, and recycling a stream in the middle of a burst, with nothing
//! lost, doubled or reordered.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TEXTS, TestServer, binary_payload, start_default};
use futures_util::SinkExt;
use serde_json::{Value, json};
use switchboard::Message;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// One event of a stream: its id, its name (`None` for plain data events) and its data.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: Option<String>,
    name: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A client's side of an event stream, parsed as the EventSource specification says.
struct EventStream {
    response: reqwest::Response,
    /// Bytes received and not yet parsed (a chunk may end inside a character).
    buffer: Vec<u8>,
    /// The `retry` field, if one came.
    retry: Option<u64>,
    /// Chunks of the body received so far.
    chunks: usize,
    /// For each probe `ping` event (skipped by `next`), how many chunks had come when it ended.
    probes: Vec<usize>,
    /// How many chunks had come when the last event returned by `next` ended.
    last_chunk: usize,
}

impl EventStream {
    async fn open(url: &str, last_event_id: Option<&str>) -> Self {
        let mut request = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-store");
        Self {
            response,
            buffer: Vec::new(),
            retry: None,
            chunks: 0,
            probes: Vec::new(),
            last_chunk: 0,
        }
    }

    /// The session id of the open frame, which must be the next event.
    async fn open_sid(&mut self) -> String {
        let open = self
            .next()
            .await
            .expect("the stream ended before its open event")
            .json();
        assert_eq!(open["t"], "open", "{open}");
        open["sid"].as_str().unwrap().to_string()
    }

    /// The next event (comments and the probe `ping` skipped), or `None` when the stream ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).unwrap();
                let mut event = Event {
                    id: None,
                    name: None,
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => event.id = Some(value.to_string()),
                        "event" => event.name = Some(value.to_string()),
                        "data" => {
                            if has_data {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                            has_data = true;
                        }
                        "retry" => self.retry = value.parse().ok(),
                        other => panic!("unknown field {other:?}"),
                    }
                }
                if has_data && event.id.is_none() && event.data == r#"{"t":"ping"}"# {
                    self.probes.push(self.chunks);
                } else if has_data {
                    self.last_chunk = self.chunks;
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("no event within 10 s")
                .unwrap()?;
            self.chunks += 1;
            self.buffer.extend_from_slice(&chunk);
        }
    }
}

fn sse_url(server: &TestServer, query: &str) -> String {
    format!("{}/sse?v=1{query}", server.base)
}

#[tokio::test]
async fn a_stream_opens_a_session_and_carries_every_payload_kind() {
    let mut server = start_default().await;
    let mut stream = EventStream::open(&sse_url(&server, "&auth=%7B%22n%22%3A1%7D"), None).await;
    let open = stream.next().await.unwrap();
    assert_eq!(stream.retry, Some(1000));
    let frame = open.json();
    assert_eq!(
        (frame["t"].as_str(), frame["resumed"].as_bool()),
        (Some("open"), Some(false))
    );
    let sid = frame["sid"].as_str().unwrap().to_string();
    assert_eq!(open.id.as_deref(), Some(format!("{sid}.0").as_str()));
    let session = server.next_session().await;
    assert_eq!(session.transport().map(|kind| kind.as_str()), Some("sse"));

    for text in TEXTS {
        session.send(Message::text(*text)).unwrap();
    }
    session.send(Message::binary(binary_payload())).unwrap();
    for (i, text) in TEXTS.iter().enumerate() {
        let event = stream.next().await.unwrap();
        let seq = i as u64 + 1;
        assert_eq!(event.id, Some(format!("{sid}.{seq}")));
        assert_eq!(event.json(), json!({"t": "m", "s": seq, "d": text}));
    }
    let binary = stream.next().await.unwrap().json();
    assert_eq!(binary["s"], TEXTS.len() as u64 + 1);
    assert!(binary["b"].is_string(), "{binary}");

    // Up over POST: a message and the acknowledgement of everything received.
    let http = reqwest::Client::new();
    let body = json!([{"t": "ack", "a": TEXTS.len() + 1}, {"t": "m", "s": 1, "d": "올라가요 ⬆️"}]);
    let (status, answer) = common::post(&http, &server.base, &sid, body.to_string()).await;
    assert_eq!((status.as_u16(), answer[0]["a"].as_u64()), (200, Some(1)));
    let received = session.recv().await.unwrap();
    assert_eq!(received.as_text().as_deref(), Some("올라가요 ⬆️"));
    assert_eq!(session.buffered().0, 0);
}

/// The probe (protocol §5.7): one `ping` event after the open event, in a write of its own, so that
/// a client can tell a stream that an intermediary holds back. Messages already buffered come first,
/// in the opening chunk's wake, and a resumed stream probes again.
#[tokio::test]
async fn a_stream_probes_once_in_a_write_after_the_open_event() {
    let mut server = start_default().await;
    let mut stream = EventStream::open(&sse_url(&server, ""), None).await;
    let sid = stream.open_sid().await;
    let open_chunk = stream.last_chunk;
    let session = server.next_session().await;
    session.send(Message::text("첫 메시지 🚀")).unwrap();
    let first = stream.next().await.unwrap().json();
    assert_eq!(first["d"], "첫 메시지 🚀");
    // A message after the probe is due brings the probe out (if it has not come already).
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.send(Message::binary(binary_payload())).unwrap();
    let second = stream.next().await.unwrap().json();
    assert_eq!(second["s"], 2);
    assert_eq!(stream.probes.len(), 1, "one probe per stream");
    assert!(
        stream.probes[0] > open_chunk,
        "the probe came in the opening chunk ({open_chunk}): {:?}",
        stream.probes
    );
    // The nudge: a comment in a chunk of its own soon after the write of messages, long before the
    // 15 s heartbeat (the stream has no other reason to write).
    assert!(stream.buffer.is_empty(), "{:?}", stream.buffer);
    let nudge = tokio::time::timeout(Duration::from_secs(5), stream.response.chunk())
        .await
        .expect("no nudge within 5 s of a write of messages")
        .unwrap()
        .expect("the stream ended");
    assert_eq!(&nudge[..], b":\n\n");
    drop(stream);

    let mut resumed =
        EventStream::open(&sse_url(&server, &format!("&sid={sid}&ack=2")), None).await;
    assert_eq!(resumed.open_sid().await, sid);
    let open_chunk = resumed.last_chunk;
    // Idle, the stream sends its probe alone, long before the 15 s heartbeat.
    tokio::time::sleep(Duration::from_millis(300)).await;
    session.send(Message::text("다시")).unwrap();
    assert_eq!(resumed.next().await.unwrap().json()["d"], "다시");
    assert_eq!(resumed.probes.len(), 1, "one probe per stream");
    assert!(resumed.probes[0] > open_chunk, "{:?}", resumed.probes);
}

#[tokio::test]
async fn the_browsers_own_reconnect_resumes_by_last_event_id() {
    let mut server = start_default().await;
    // The stream that opened the session: its URL has no sid.
    let url = sse_url(&server, "");
    let mut stream = EventStream::open(&url, None).await;
    let sid = stream.open_sid().await;
    let session = server.next_session().await;
    for i in 1..=5 {
        session
            .send(Message::text(format!("{} #{i}", TEXTS[0])))
            .unwrap();
    }
    let mut last = None;
    for _ in 1..=3 {
        last = stream.next().await.unwrap().id;
    }
    drop(stream);
    // The browser reconnects to the same URL with the last id it saw: the same session, from
    // message 4 on (messages 4 and 5 were never seen, or were written and lost with the stream).
    let mut again = EventStream::open(&url, last.as_deref()).await;
    let open = again.next().await.unwrap().json();
    assert_eq!(
        (open["sid"].as_str(), open["resumed"].as_bool()),
        (Some(sid.as_str()), Some(true))
    );
    for i in 4..=5 {
        let event = again.next().await.unwrap();
        assert_eq!(event.json()["d"], format!("{} #{i}", TEXTS[0]));
    }
    assert_eq!(server.realtime.session_count(), 1);
    // An id of another shape, or of an unknown session, is no resume.
    let response = reqwest::Client::new()
        .get(&url)
        .header("last-event-id", "0123456789abcdef0123456789abcdef.3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn switching_between_sse_websocket_and_polling_loses_and_doubles_nothing() {
    let mut server = start_default().await;
    let mut stream = EventStream::open(&sse_url(&server, "&att=1"), None).await;
    let sid = stream.open_sid().await;
    let session = server.next_session().await;
    let http = reqwest::Client::new();
    let mut rx = 0u64;
    let mut next_text = 1u64;
    let mut sent_up = 0u64;
    // Every new transport request takes a higher attach number (§9.1).
    let mut att = 1u64;
    let mut next_att = || {
        att += 1;
        att
    };
    // Rounds: SSE, WebSocket, long poll, SSE again; in each, 50 messages down while the next
    // transport takes over in the middle, and 10 messages up.
    for round in 0..8u64 {
        for _ in 0..50 {
            session
                .send(Message::text(format!("down {next_text} 🎯")))
                .unwrap();
            next_text += 1;
        }
        match round % 3 {
            0 => {
                // Read some on SSE, then a WebSocket takes over.
                for _ in 0..20 {
                    let event = stream.next().await.unwrap();
                    let frame = event.json();
                    let seq = frame["s"].as_u64().unwrap();
                    if seq <= rx {
                        continue;
                    }
                    assert_eq!(seq, rx + 1);
                    rx = seq;
                }
                let mut socket = server
                    .ws(&format!("&sid={sid}&ack={rx}&att={}", next_att()))
                    .await;
                let open = common::next_json(&mut socket).await;
                assert_eq!(open["t"], "open", "{open}");
                // The stream says it was superseded, and ends.
                loop {
                    match stream.next().await {
                        Some(event) if event.name.as_deref() == Some("superseded") => break,
                        Some(event) => assert!(event.name.is_none(), "{event:?}"),
                        None => panic!("the stream ended without saying why"),
                    }
                }
                assert_eq!(stream.next().await, None);
                while rx < next_text - 1 {
                    let frame = common::next_json(&mut socket).await;
                    if frame["t"] != "m" {
                        continue;
                    }
                    let seq = frame["s"].as_u64().unwrap();
                    if seq <= rx {
                        continue;
                    }
                    assert_eq!(seq, rx + 1, "{frame}");
                    assert_eq!(frame["d"], format!("down {seq} 🎯"));
                    rx = seq;
                }
                for _ in 0..10 {
                    sent_up += 1;
                    let up = json!({"t": "m", "s": sent_up, "d": format!("up {sent_up}")});
                    socket.send(WsMessage::text(up.to_string())).await.unwrap();
                }
                socket
                    .send(WsMessage::text(json!({"t": "ack", "a": rx}).to_string()))
                    .await
                    .unwrap();
                // Then SSE takes over from the WebSocket.
                stream = EventStream::open(
                    &sse_url(&server, &format!("&sid={sid}&ack={rx}&att={}", next_att())),
                    None,
                )
                .await;
                assert_eq!(stream.next().await.unwrap().json()["resumed"], true);
            }
            1 => {
                // SSE, then a long poll takes over, then SSE again.
                let (status, frames) = common::get(
                    &http,
                    format!(
                        "{}/poll?v=1&sid={sid}&ack={rx}&att={}",
                        server.base,
                        next_att()
                    ),
                )
                .await;
                assert_eq!(status, 200);
                for frame in frames.as_array().unwrap() {
                    let seq = frame["s"].as_u64().unwrap();
                    if seq <= rx {
                        continue;
                    }
                    assert_eq!(seq, rx + 1);
                    rx = seq;
                }
                loop {
                    match stream.next().await {
                        Some(event) if event.name.as_deref() == Some("superseded") => break,
                        Some(_) => {}
                        None => panic!("the stream ended without saying why"),
                    }
                }
                for _ in 0..10 {
                    sent_up += 1;
                    let up = json!([{"t": "m", "s": sent_up, "d": format!("up {sent_up}")}]);
                    let (status, _) = common::post(&http, &server.base, &sid, up.to_string()).await;
                    assert_eq!(status, 200);
                }
                stream = EventStream::open(
                    &sse_url(&server, &format!("&sid={sid}&ack={rx}&att={}", next_att())),
                    None,
                )
                .await;
                assert_eq!(stream.next().await.unwrap().json()["resumed"], true);
            }
            _ => {
                // Everything on SSE.
                while rx < next_text - 1 {
                    let frame = stream.next().await.unwrap().json();
                    let seq = frame["s"].as_u64().unwrap();
                    if seq <= rx {
                        continue;
                    }
                    assert_eq!(seq, rx + 1);
                    rx = seq;
                }
            }
        }
    }
    // Whatever is left arrives on the last stream, in order.
    while rx < next_text - 1 {
        let frame = stream.next().await.unwrap().json();
        let seq = frame["s"].as_u64().unwrap();
        if seq <= rx {
            continue;
        }
        assert_eq!(seq, rx + 1);
        assert_eq!(frame["d"], format!("down {seq} 🎯"));
        rx = seq;
    }
    for expected in 1..=sent_up {
        let message = tokio::time::timeout(Duration::from_secs(10), session.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            message.as_text().as_deref(),
            Some(format!("up {expected}").as_str())
        );
    }
    assert_eq!(rx, 400);
}

#[tokio::test]
async fn a_stream_is_recycled_mid_burst_without_loss() {
    let mut server = start_default().await;
    let mut stream = EventStream::open(&sse_url(&server, "&att=1"), None).await;
    let sid = stream.open_sid().await;
    let session = server.next_session().await;
    // 3,000 messages of about 200 bytes: more than one stream's 256 KiB.
    let total = 3000u64;
    let filler = "가".repeat(60);
    for i in 1..=total {
        session
            .send(Message::text(format!("{i} {filler}")))
            .unwrap();
    }
    let mut rx = 0u64;
    let mut recycled = 0;
    let mut att = 1;
    while rx < total {
        match stream.next().await {
            Some(event) if event.name.as_deref() == Some("recycle") => {
                recycled += 1;
                assert_eq!(
                    stream.next().await,
                    None,
                    "the stream goes on after recycle"
                );
                att += 1;
                // The client opens the next stream from what it has.
                stream = EventStream::open(
                    &sse_url(&server, &format!("&sid={sid}&ack={rx}&att={att}")),
                    None,
                )
                .await;
                assert_eq!(stream.next().await.unwrap().json()["t"], "open");
            }
            Some(event) => {
                let frame = event.json();
                let seq = frame["s"].as_u64().unwrap();
                assert_eq!(
                    seq,
                    rx + 1,
                    "after a recycle the stream starts where the client was"
                );
                assert_eq!(frame["d"], format!("{seq} {filler}"));
                rx = seq;
            }
            None => panic!("the stream ended without an event saying why"),
        }
    }
    println!("{total} messages over {} streams", recycled + 1);
    assert!(recycled >= 1, "no recycle in {total} messages");
}

#[tokio::test]
async fn a_stale_stream_is_refused_and_a_closed_session_says_so() {
    let mut server = start_default().await;
    let mut stream = EventStream::open(&sse_url(&server, "&att=5"), None).await;
    let sid = stream.open_sid().await;
    let session = server.next_session().await;
    // A request the client made before (lower att) arrives late: refused, the stream untouched.
    let stale = reqwest::Client::new()
        .get(sse_url(&server, &format!("&sid={sid}&att=4")))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    session.send(Message::text("아직 여기")).unwrap();
    assert_eq!(stream.next().await.unwrap().json()["d"], "아직 여기");
    // The application ends the session: the close frame, then the end.
    session.close("bye 👋");
    let close = stream.next().await.unwrap().json();
    assert_eq!(
        close,
        json!({"t": "close", "code": 4000, "reason": "bye 👋"})
    );
    assert_eq!(stream.next().await, None);
}
