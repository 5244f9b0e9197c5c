//! A client that sends bad frames costs one log line per connection and a bounded amount of
//! work: the socket is closed `4103` past its budget of rejected frames, and the session lives
//! on (issue 11, item 3; `docs/protocol.md` §5.1).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Captured, next_json, start_default};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_of_bad_frames_is_closed_after_its_budget_with_one_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    // INFO, as the guide recommends for production; global, because the server's tasks run on
    // every worker thread. This file holds this one test, so the log is its own.
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mut server = start_default().await;
    let mut socket = server.ws("").await;
    let open = next_json(&mut socket).await;
    let sid = open["sid"].as_str().unwrap().to_string();
    let session = server.next_session().await;
    // 1,000 one-byte malformed frames, as fast as the socket takes them, while a normal client
    // goes on with its own session.
    let http = reqwest::Client::new();
    let base = server.base.clone();
    let normal = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let sid = common::open(&http, &base).await;
        let body = serde_json::json!([{"t": "m", "s": 1, "d": common::TEXTS[1]}]).to_string();
        let (status, answer) = common::post(&http, &base, &sid, body).await;
        assert_eq!((status.as_u16(), answer[0]["a"].as_u64()), (200, Some(1)));
        started.elapsed()
    });
    for _ in 0..1_000 {
        if socket.send(WsMessage::text("x")).await.is_err() {
            break;
        }
    }
    // Error frames for the first 64, then the close.
    let mut errors = 0;
    let close = loop {
        let frame = next_json(&mut socket).await;
        if frame["t"] == "error" {
            errors += 1;
            continue;
        }
        break frame;
    };
    assert_eq!(close, serde_json::json!({"ws_close": 4103}));
    assert_eq!(errors, 64);
    let normal = normal.await.unwrap();
    println!("a normal client's open and send during the flood of bad frames: {normal:?}");
    // One line for the first rejection, one for the close: not one per frame.
    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let lines = log.lines().filter(|line| line.contains("rejected")).count();
    assert_eq!(lines, 2, "{log}");
    // The session lives on: a new socket resumes it and works.
    let mut again = server.ws(&format!("&sid={sid}&ack=0&att=5")).await;
    assert_eq!(next_json(&mut again).await["t"], "open");
    again
        .send(WsMessage::text(r#"{"t":"m","s":1,"d":"다시 ✓"}"#))
        .await
        .unwrap();
    let received = tokio::time::timeout(Duration::from_secs(5), session.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received.as_text().as_deref(), Some("다시 ✓"));
}
