//! Latency and batching (DESIGN.md guarantee 6): a waiting long poll is answered as soon as a
//! normal message is sent, messages that piled up go out together, and low-priority messages
//! coalesce by count, bytes or delay. These tests check *what* is answered and by which trigger,
//! never how fast: hold times and delays are set far apart so that each trigger is unambiguous.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestServer, get, next_json, open};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::{Coalescing, Message, Priority, Switchboard};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const LONG: Duration = Duration::from_secs(60);

async fn server_with(coalescing: Coalescing) -> TestServer {
    TestServer::start(
        Switchboard::builder()
            .poll_hold(LONG)
            .resume_window(LONG * 2)
            .coalescing(coalescing)
            .build(),
    )
    .await
}

fn texts(frames: &Value) -> Vec<String> {
    frames
        .as_array()
        .unwrap()
        .iter()
        .map(|frame| frame["d"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_waiting_long_poll_is_answered_when_a_normal_message_is_sent() {
    let mut server = server_with(Coalescing::default()).await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let waiting = common::spawn_get(&http, server.poll_url(&sid, 0, true));
    assert!(common::eventually(Duration::from_secs(5), || session.transport().is_some()).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "the poll must wait while there is nothing to send"
    );
    session.send("지금 바로").unwrap();
    // The hold time is a minute: an answer within 10 s can only have been triggered by the send.
    let (status, frames) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(frames, json!([{"t":"m","s":1,"d":"지금 바로"}]));
}

#[tokio::test]
async fn messages_that_pile_up_go_out_in_one_response() {
    let mut server = server_with(Coalescing::default()).await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    for i in 1..=200 {
        session.send(format!("batched {i}")).unwrap();
    }
    let (_, frames) = get(&http, server.poll_url(&sid, 0, true)).await;
    assert_eq!(texts(&frames).len(), 200);
    assert_eq!(frames[199]["s"], 200);
}

#[tokio::test]
async fn low_priority_messages_wait_for_the_count_threshold() {
    let mut server = server_with(Coalescing {
        max_count: 5,
        max_bytes: 1 << 20,
        max_delay: LONG,
    })
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    for i in 1..=4 {
        session
            .send_with(Message::text(format!("typing {i}")), Priority::Low)
            .unwrap();
    }
    // Held: a short poll sees nothing, a long poll waits.
    let (_, frames) = get(&http, server.poll_url(&sid, 0, false)).await;
    assert_eq!(frames, json!([]));
    let waiting = common::spawn_get(&http, server.poll_url(&sid, 0, true));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    // The fifth reaches the count: all five go out together.
    session
        .send_with(Message::text("typing 5"), Priority::Low)
        .unwrap();
    let (_, frames) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        texts(&frames),
        ["typing 1", "typing 2", "typing 3", "typing 4", "typing 5"]
    );
}

#[tokio::test]
async fn low_priority_messages_wait_for_the_byte_threshold() {
    let mut server = server_with(Coalescing {
        max_count: 1000,
        max_bytes: 1000,
        max_delay: LONG,
    })
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    // Each message buffers about 306 bytes ("d":"…"} around 100 three-byte Hangul syllables).
    let syllables = "가".repeat(100);
    for _ in 0..3 {
        session
            .send_with(Message::text(&syllables), Priority::Low)
            .unwrap();
    }
    let (_, frames) = get(&http, server.poll_url(&sid, 0, false)).await;
    assert_eq!(frames, json!([]));
    session
        .send_with(Message::text(&syllables), Priority::Low)
        .unwrap();
    let (_, frames) = get(&http, server.poll_url(&sid, 0, false)).await;
    assert_eq!(texts(&frames).len(), 4);
}

#[tokio::test]
async fn low_priority_messages_are_released_after_the_delay() {
    let mut server = server_with(Coalescing {
        max_count: 1000,
        max_bytes: 1 << 20,
        max_delay: Duration::from_millis(1000),
    })
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let waiting = common::spawn_get(&http, server.poll_url(&sid, 0, true));
    assert!(common::eventually(Duration::from_secs(5), || session.transport().is_some()).await);
    session
        .send_with(Message::text("cursor 1"), Priority::Low)
        .unwrap();
    session
        .send_with(Message::text("cursor 2"), Priority::Low)
        .unwrap();
    // Neither count nor bytes is reached; the poll is held (for a minute) until the delay passes.
    let (_, frames) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(texts(&frames), ["cursor 1", "cursor 2"]);
}

#[tokio::test]
async fn a_normal_message_releases_held_low_priority_ones_in_order() {
    let mut server = server_with(Coalescing {
        max_count: 1000,
        max_bytes: 1 << 20,
        max_delay: LONG,
    })
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    session
        .send_with(Message::text("low 1"), Priority::Low)
        .unwrap();
    session
        .send_with(Message::text("low 2"), Priority::Low)
        .unwrap();
    session.send("normal 3").unwrap();
    let (_, frames) = get(&http, server.poll_url(&sid, 0, false)).await;
    assert_eq!(texts(&frames), ["low 1", "low 2", "normal 3"]);
    assert_eq!(frames[2]["s"], 3);
}

#[tokio::test]
async fn low_priority_coalescing_applies_to_websockets_too() {
    let mut server = server_with(Coalescing {
        max_count: 3,
        max_bytes: 1 << 20,
        max_delay: LONG,
    })
    .await;
    let mut socket = server.ws("").await;
    let _open = socket.next().await.unwrap().unwrap();
    let session = server.next_session().await;
    session
        .send_with(Message::text("a"), Priority::Low)
        .unwrap();
    session
        .send_with(Message::text("b"), Priority::Low)
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), socket.next())
            .await
            .is_err(),
        "held low-priority messages must not be written yet"
    );
    session
        .send_with(Message::text("c"), Priority::Low)
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Some(Ok(WsMessage::Text(text))) = socket.next().await {
            let frame: Value = serde_json::from_str(text.as_str()).unwrap();
            got.push(frame["d"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(got, ["a", "b", "c"]);
}

#[tokio::test]
async fn a_batching_websocket_gets_every_write_as_one_json_array() {
    let mut server = server_with(Coalescing {
        max_count: 3,
        max_bytes: 1 << 20,
        max_delay: LONG,
    })
    .await;
    let mut socket = server.ws("&batch=1").await;
    let open = next_json(&mut socket).await;
    assert_eq!(
        open[0]["t"], "open",
        "the open frame comes in an array: {open}"
    );
    assert_eq!(open.as_array().unwrap().len(), 1);
    let session = server.next_session().await;
    // Three held messages are released together: one write, one WebSocket message.
    for text in ["한국어", "😀 emoji", "third"] {
        session
            .send_with(Message::text(text), Priority::Low)
            .unwrap();
    }
    let batch = next_json(&mut socket).await;
    assert_eq!(texts(&batch), ["한국어", "😀 emoji", "third"]);
    let seqs: Vec<u64> = batch
        .as_array()
        .unwrap()
        .iter()
        .map(|frame| frame["s"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    // Answers to the client come as arrays too.
    socket
        .send(WsMessage::text(r#"{"t":"m","s":1,"d":"hi"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await, json!([{"t": "ack", "a": 1}]));
    socket
        .send(WsMessage::text(r#"{"t":"ping"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await, json!([{"t": "pong"}]));
    // A normal message and the close that follows it go out in one array, then the close code.
    session.send(Message::text("last")).unwrap();
    session.close("done");
    let mut frames = Vec::new();
    loop {
        let next = next_json(&mut socket).await;
        if let Some(code) = next.get("ws_close") {
            assert_eq!(code, 4000);
            break;
        }
        frames.extend(next.as_array().unwrap().iter().cloned());
    }
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0]["d"], "last");
    assert_eq!(frames[0]["s"], 4);
    assert_eq!(frames[1]["t"], "close");
}

#[tokio::test]
async fn a_large_write_is_split_into_batches_of_about_16_kib() {
    let mut server = server_with(Coalescing {
        max_count: 5,
        max_bytes: 1 << 20,
        max_delay: LONG,
    })
    .await;
    let mut socket = server.ws("&batch=1").await;
    let _open = next_json(&mut socket).await;
    let session = server.next_session().await;
    let sent: Vec<String> = (0..5)
        .map(|i| format!("{i}{}", "가".repeat(3000)))
        .collect();
    for text in &sent {
        session
            .send_with(Message::text(text.clone()), Priority::Low)
            .unwrap();
    }
    // 9 KB per frame: two frames fill an array past 16 KiB, so 2 + 2 + 1.
    let mut sizes = Vec::new();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let batch = next_json(&mut socket).await;
        sizes.push(batch.as_array().unwrap().len());
        got.extend(texts(&batch));
    }
    assert_eq!(got, sent);
    assert_eq!(sizes, [2, 2, 1]);
}

#[tokio::test]
async fn a_broadcast_reaches_every_member_in_order_and_skips_the_sender() {
    let mut server = server_with(Coalescing::default()).await;
    let http = reqwest::Client::new();
    let mut members = Vec::new();
    for _ in 0..20 {
        let sid = open(&http, &server.base).await;
        let session = server.next_session().await;
        session.join("광장").unwrap();
        members.push((sid, session));
    }
    let hub = server.realtime.hub();
    assert_eq!(hub.member_count("광장"), 20);
    let sender = &members[0].1;
    for i in 0..50 {
        let delivered = hub
            .to("광장")
            .except(sender)
            .send(&Message::text(format!("📣 {i}")));
        assert_eq!(delivered, Ok(19));
    }
    members[5].1.leave("광장");
    hub.to("광장")
        .send(&Message::binary(vec![0u8, 255]))
        .unwrap();
    // Too large for anyone: refused as a whole, nothing buffered.
    assert!(matches!(
        hub.to("광장").send(&Message::binary(vec![0u8; 70_000])),
        Err(switchboard::SendError::TooLarge { .. })
    ));
    for (index, (sid, _)) in members.iter().enumerate() {
        let (_, frames) = get(&http, server.poll_url(sid, 0, false)).await;
        let frames = frames.as_array().unwrap();
        let expected = match index {
            0 => 1,
            5 => 50,
            _ => 51,
        };
        assert_eq!(frames.len(), expected, "member {index}");
        for (seq, frame) in frames.iter().enumerate() {
            assert_eq!(frame["s"], seq as u64 + 1);
        }
        if index != 0 {
            assert_eq!(frames[49]["d"], "📣 49");
        }
        if index != 5 {
            assert_eq!(frames.last().unwrap()["b"], "AP8=");
        }
    }
}
