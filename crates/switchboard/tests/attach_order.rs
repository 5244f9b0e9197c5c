//! Ordering attaches (`docs/protocol.md` §9): a transport request that a client sent before a newer
//! one, but that reached the server after it, must not take the session over (issue 9, finding 4).
//! The request's attach number `att` tells the server which came first.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestServer, eventually, get, next_json, open, spawn_get, start_default};
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::TransportKind;
use switchboard_client::{Client, Message, Transport};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A `GET` whose request head has been sent except for its final CRLF: the server has not seen
/// the request yet, as if it were still on its way.
struct HeldGet {
    stream: TcpStream,
}

impl HeldGet {
    async fn send(addr: SocketAddr, path_and_query: &str) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head =
            format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        Self { stream }
    }

    /// Sends the final CRLF and reads the answer: its status and JSON body.
    async fn finish(mut self) -> (u16, Value) {
        self.stream.write_all(b"\r\n").await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), self.stream.read_to_end(&mut raw))
            .await
            .expect("no answer within 10 s")
            .unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

fn message(seq: u64, text: &str) -> Value {
    json!({"t":"m","s":seq,"d":text})
}

#[tokio::test]
async fn a_poll_sent_before_a_websocket_but_arriving_after_it_is_answered_409_and_takes_nothing_over()
 {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    session.send("before").unwrap();

    // The client long-polls (att=1), then opens a WebSocket (att=2); the poll is overtaken.
    let poll = HeldGet::send(
        server.addr,
        &format!("/rt/poll?v=1&sid={sid}&ack=0&wait=1&att=1"),
    )
    .await;
    let mut socket = server.ws(&format!("&sid={sid}&ack=0&att=2")).await;
    assert_eq!(next_json(&mut socket).await["t"], "open");
    assert_eq!(next_json(&mut socket).await, message(1, "before"));

    let (status, body) = poll.finish().await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "superseded");
    assert_eq!(session.transport(), Some(TransportKind::WebSocket));

    // The WebSocket still carries the session, both ways.
    session.send("after").unwrap();
    assert_eq!(next_json(&mut socket).await, message(2, "after"));
    socket
        .send(WsMessage::text(r#"{"t":"m","s":1,"d":"up"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await, json!({"t":"ack","a":1}));
    let received = tokio::time::timeout(Duration::from_secs(10), session.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received.as_text().as_deref(), Some("up"));
}

#[tokio::test]
async fn without_att_a_poll_arriving_after_a_websocket_still_takes_over_as_before() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    session.send("before").unwrap();

    let poll = HeldGet::send(server.addr, &format!("/rt/poll?v=1&sid={sid}&ack=0&wait=1")).await;
    let mut socket = server.ws(&format!("&sid={sid}&ack=0")).await;
    assert_eq!(next_json(&mut socket).await["t"], "open");
    assert_eq!(next_json(&mut socket).await, message(1, "before"));

    // An old client's requests carry no att: the last to arrive takes over, as always.
    let (status, body) = poll.finish().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!([message(1, "before")]));
    assert_eq!(next_json(&mut socket).await, json!({"ws_close": 4100}));
}

#[tokio::test]
async fn a_stale_websocket_is_closed_4100_without_an_open_frame_and_the_poll_keeps_the_session() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let poll = spawn_get(&http, format!("{}&att=5", server.poll_url(&sid, 0, true)));
    assert!(
        eventually(Duration::from_secs(10), || session.transport()
            == Some(TransportKind::LongPoll))
        .await
    );

    let mut socket = server.ws(&format!("&sid={sid}&ack=0&att=4")).await;
    assert_eq!(next_json(&mut socket).await, json!({"ws_close": 4100}));

    assert_eq!(session.transport(), Some(TransportKind::LongPoll));
    session.send("still yours").unwrap();
    let (status, frames) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(frames, json!([message(1, "still yours")]));
}

#[tokio::test]
async fn a_stale_poll_is_answered_409_at_once_and_the_websocket_keeps_the_session() {
    let mut server = start_default().await;
    let mut socket = server.ws("&att=7").await;
    let sid = next_json(&mut socket).await["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let session = server.next_session().await;
    let http = reqwest::Client::new();
    for wait in [true, false] {
        let (status, body) = get(&http, format!("{}&att=6", server.poll_url(&sid, 0, wait))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["error"], "superseded");
    }
    assert_eq!(session.transport(), Some(TransportKind::WebSocket));
    session.send("here").unwrap();
    assert_eq!(next_json(&mut socket).await, message(1, "here"));
}

#[tokio::test]
async fn a_transport_with_an_equal_att_takes_over() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;

    // A waiting poll with att=5, then a WebSocket with att=5: the WebSocket takes over.
    let poll = spawn_get(&http, format!("{}&att=5", server.poll_url(&sid, 0, true)));
    assert!(
        eventually(Duration::from_secs(10), || session.transport()
            == Some(TransportKind::LongPoll))
        .await
    );
    let mut socket = server.ws(&format!("&sid={sid}&ack=0&att=5")).await;
    assert_eq!(next_json(&mut socket).await["t"], "open");
    let (status, body) = poll.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "superseded");
    session.send("one").unwrap();
    assert_eq!(next_json(&mut socket).await, message(1, "one"));

    // And a poll with att=5 takes over from that WebSocket.
    let (status, frames) = get(&http, format!("{}&att=5", server.poll_url(&sid, 0, false))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(frames, json!([message(1, "one")]));
    assert_eq!(next_json(&mut socket).await, json!({"ws_close": 4100}));
}

#[tokio::test]
async fn a_malformed_att_is_refused_with_400() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    for att in [
        "abc",
        "-1",
        "1.5",
        "",
        "9007199254740992",
        "99999999999999999999",
    ] {
        let (status, body) = get(
            &http,
            format!("{}&att={att}", server.poll_url(&sid, 0, false)),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "att={att}: {body}");
        assert_eq!(body["error"], "bad_request", "att={att}");
        // Resuming and opening over WebSocket alike: close 4400 after the upgrade.
        let mut socket = server.ws(&format!("&sid={sid}&ack=0&att={att}")).await;
        assert_eq!(next_json(&mut socket).await, json!({"ws_close": 4400}));
        let mut socket = server.ws(&format!("&att={att}")).await;
        assert_eq!(next_json(&mut socket).await, json!({"ws_close": 4400}));
    }
    // Nothing was attached or changed; the largest allowed number is fine.
    assert_eq!(session.transport(), None);
    let (status, _) = get(
        &http,
        format!("{}&att=9007199254740991", server.poll_url(&sid, 0, false)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.realtime.session_count(), 1);
}

/// Echoes every message of every session the server opens.
fn echo_sessions(mut server: TestServer) -> String {
    let base = server.base.clone();
    tokio::spawn(async move {
        while let Some(session) = server.sessions.recv().await {
            tokio::spawn(async move {
                while let Some(message) = session.recv().await {
                    if session.send(message).is_err() {
                        break;
                    }
                }
            });
        }
    });
    base
}

async fn echo(client: &mut Client, text: &str) {
    client.send(Message::text(text)).unwrap();
    let reply = client
        .recv_timeout(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("no echo within 10 s");
    assert_eq!(reply.as_text(), Some(text));
}

#[tokio::test]
async fn the_rust_client_switches_transports_and_resumes_under_attach_ordering() {
    let base = echo_sessions(start_default().await);
    let mut client = Client::builder(&base)
        .transport(Transport::LongPoll)
        .connect()
        .await
        .unwrap();
    echo(&mut client, "long poll").await;
    let transports = [
        Transport::WebSocket,
        Transport::ShortPoll {
            interval: Duration::from_millis(20),
        },
        Transport::LongPoll,
        Transport::WebSocket,
    ];
    for (i, transport) in transports.into_iter().enumerate() {
        client.switch(transport).await.unwrap();
        echo(&mut client, &format!("after switch {i}")).await;
    }
    client.wait_acked(Duration::from_secs(10)).await.unwrap();

    // Other clients take the session over in turn (a restarted process, say): their attach
    // numbers must exceed the ones used before them, or their requests would be stale.
    let sid = client.sid().to_string();
    let mut rx = client.stats().received;
    drop(client);
    for transport in [
        Transport::LongPoll,
        Transport::WebSocket,
        Transport::LongPoll,
    ] {
        let mut resumed = Client::builder(&base)
            .transport(transport)
            .resume(&sid, rx)
            .connect()
            .await
            .unwrap();
        echo(&mut resumed, "resumed").await;
        resumed.wait_acked(Duration::from_secs(10)).await.unwrap();
        rx += resumed.stats().received;
        drop(resumed);
    }
}
