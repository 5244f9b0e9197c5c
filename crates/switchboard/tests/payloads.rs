//! Korean text, emoji and binary payloads arrive byte for byte on all three transports, in both
//! directions, and a long-poll response that is lost is delivered again.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{TEXTS, TestServer, binary_payload, get, open, post, start_default};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::{Message, Session};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The payloads every transport must carry: each text, a JSON document, and binary data, some
/// of them with event names.
fn payloads() -> Vec<Message> {
    let mut messages: Vec<Message> = TEXTS.iter().map(|text| Message::text(*text)).collect();
    messages.push(
        Message::json(&json!({"이름": "민준", "emoji": "🙂", "n": [1, 2.5, -3], "null": null}))
            .unwrap()
            .with_event("프로필"),
    );
    messages.push(Message::binary(binary_payload()));
    messages.push(Message::binary(Vec::new()).with_event("empty"));
    messages.push(Message::raw_json("12345678901234567890").unwrap());
    messages
}

/// The client frame for a message, as docs/protocol.md §3.1 describes it.
fn client_frame(seq: u64, message: &Message) -> Value {
    let mut frame = json!({"t": "m", "s": seq});
    if let Some(event) = message.event() {
        frame["e"] = json!(event);
    }
    match message.as_bytes() {
        Some(bytes) => frame["b"] = json!(BASE64.encode(bytes)),
        None => frame["d"] = serde_json::from_str(message.as_json_str().unwrap()).unwrap(),
    }
    frame
}

/// Checks a received server frame against the message sent, byte for byte.
fn assert_frame_is(frame: &Value, seq: u64, message: &Message) {
    assert_eq!(frame["t"], "m");
    assert_eq!(frame["s"], seq);
    assert_eq!(frame.get("e").and_then(Value::as_str), message.event());
    match message.as_bytes() {
        Some(bytes) => {
            let decoded = BASE64.decode(frame["b"].as_str().unwrap()).unwrap();
            assert_eq!(&decoded[..], &bytes[..]);
        }
        None => {
            let expected: Value = serde_json::from_str(message.as_json_str().unwrap()).unwrap();
            assert_eq!(frame["d"], expected);
        }
    }
}

/// Checks a message the application received against what the client sent.
fn assert_message_is(received: &Message, sent: &Message) {
    assert_eq!(received.event(), sent.event());
    match sent.as_bytes() {
        Some(bytes) => assert_eq!(received.as_bytes().unwrap(), bytes),
        None => assert_eq!(received.as_json_str(), sent.as_json_str()),
    }
}

async fn receive_all(session: &Session, sent: &[Message]) {
    for message in sent {
        let received = tokio::time::timeout(Duration::from_secs(10), session.recv())
            .await
            .unwrap()
            .unwrap();
        assert_message_is(&received, message);
    }
}

#[tokio::test]
async fn payloads_round_trip_over_websocket() {
    let mut server = start_default().await;
    let mut socket = server.ws("").await;
    let _open = socket.next().await.unwrap().unwrap();
    let session = server.next_session().await;
    let messages = payloads();
    for (index, message) in messages.iter().enumerate() {
        let frame = client_frame(index as u64 + 1, message).to_string();
        socket.send(WsMessage::text(frame)).await.unwrap();
        session
            .send_with(message.clone(), Default::default())
            .unwrap();
    }
    receive_all(&session, &messages).await;
    let mut seq = 0;
    while seq < messages.len() as u64 {
        let Some(Ok(WsMessage::Text(text))) = socket.next().await else {
            panic!("socket ended")
        };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        if frame["t"] == "m" {
            seq += 1;
            assert_frame_is(&frame, seq, &messages[seq as usize - 1]);
        }
    }
}

async fn round_trip_over_polling(server: &mut TestServer, wait: bool) {
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let messages = payloads();
    let frames: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(index, message)| client_frame(index as u64 + 1, message))
        .collect();
    let (status, answer) = post(&http, &server.base, &sid, Value::Array(frames).to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer[0], json!({"t":"ack","a": messages.len()}));
    receive_all(&session, &messages).await;
    for message in &messages {
        session
            .send_with(message.clone(), Default::default())
            .unwrap();
    }
    let url = format!(
        "{}/poll?v=1&sid={sid}&ack=0&wait={}",
        server.base,
        u8::from(wait)
    );
    let (_, frames) = get(&http, url).await;
    let frames = frames.as_array().unwrap();
    assert_eq!(frames.len(), messages.len());
    for (index, (frame, message)) in frames.iter().zip(&messages).enumerate() {
        assert_frame_is(frame, index as u64 + 1, message);
    }
}

#[tokio::test]
async fn payloads_round_trip_over_long_polling() {
    round_trip_over_polling(&mut start_default().await, true).await;
}

#[tokio::test]
async fn payloads_round_trip_over_short_polling() {
    round_trip_over_polling(&mut start_default().await, false).await;
}

#[tokio::test]
async fn a_lost_long_poll_response_is_delivered_again() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    session.send("첫 번째").unwrap();
    session.send("두 번째").unwrap();
    // The server answers, but the response never reaches the client's application: the client
    // does not acknowledge it.
    let (_, lost) = get(&http, format!("{}/poll?v=1&sid={sid}&ack=0", server.base)).await;
    assert_eq!(lost.as_array().unwrap().len(), 2);
    session.send("세 번째").unwrap();
    let (_, again) = get(&http, format!("{}/poll?v=1&sid={sid}&ack=0", server.base)).await;
    assert_eq!(
        again,
        json!([
            {"t":"m","s":1,"d":"첫 번째"},
            {"t":"m","s":2,"d":"두 번째"},
            {"t":"m","s":3,"d":"세 번째"}
        ])
    );
    // Acknowledging trims the buffer; only new messages follow.
    assert_eq!(session.buffered().0, 3);
    session.send("네 번째").unwrap();
    let (_, next) = get(&http, format!("{}/poll?v=1&sid={sid}&ack=3", server.base)).await;
    assert_eq!(next, json!([{"t":"m","s":4,"d":"네 번째"}]));
    assert_eq!(session.buffered().0, 1);
}

#[tokio::test]
async fn a_retried_post_is_not_delivered_twice() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let batch = json!([{"t":"m","s":1,"d":"하나"},{"t":"m","s":2,"d":"둘"}]).to_string();
    for _ in 0..3 {
        // The answer "was lost": the client retries the same batch.
        let (status, answer) = post(&http, &server.base, &sid, batch.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(answer[0], json!({"t":"ack","a":2}));
    }
    // A retry that overlaps with new messages delivers only the new ones.
    let overlap = json!([{"t":"m","s":2,"d":"둘"},{"t":"m","s":3,"d":"셋"}]).to_string();
    let (_, answer) = post(&http, &server.base, &sid, overlap).await;
    assert_eq!(answer[0], json!({"t":"ack","a":3}));
    // A frame after a gap is not delivered; the ack says where to resume.
    let gap = json!([{"t":"m","s":5,"d":"다섯"}]).to_string();
    let (_, answer) = post(&http, &server.base, &sid, gap).await;
    assert_eq!(answer[0], json!({"t":"ack","a":3}));
    for expected in ["하나", "둘", "셋"] {
        assert_eq!(
            session.recv().await.unwrap().as_text().as_deref(),
            Some(expected)
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), session.recv())
            .await
            .is_err(),
        "nothing else may be delivered"
    );
}
