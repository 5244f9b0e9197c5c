//! Connection-level limits of `switchboard::serve` (issue 11, item 1), over real sockets: slow and
//! silent connections are closed, a declared body that never comes is answered `408`, oversized
//! headers `431`, and a flood of idle connections cannot keep a normal client out. In every case
//! a normal client's round trip is measured and printed while the attack runs (not asserted as a
//! timing).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TEXTS, TestServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use switchboard::Switchboard;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A server whose sessions echo what they receive, with the limits `limits` sets.
async fn echo_server(
    limits: impl FnOnce(switchboard::Serve) -> switchboard::Serve + Send + 'static,
) -> TestServer {
    let mut server = TestServer::start_served(Switchboard::builder().build(), limits).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let mut sessions = std::mem::replace(&mut server.sessions, rx);
    tokio::spawn(async move {
        while let Some(session) = sessions.recv().await {
            let _ = tx.try_send(session.clone());
            tokio::spawn(async move {
                while let Some(message) = session.recv().await {
                    if session.send(message).is_err() {
                        break;
                    }
                }
            });
        }
    });
    server
}

/// One normal client's round trip: open a polling session, send a Korean message, read its echo.
/// Returns how long it took.
async fn round_trip(server: &TestServer) -> Duration {
    let started = Instant::now();
    let http = reqwest::Client::new();
    let sid = common::open(&http, &server.base).await;
    let text = TEXTS[0];
    let body = json!([{"t": "m", "s": 1, "d": text}]).to_string();
    let (status, _) = common::post(&http, &server.base, &sid, body).await;
    assert_eq!(status, 200);
    let (status, frames) = common::get(&http, server.poll_url(&sid, 0, true)).await;
    assert_eq!(status, 200);
    assert_eq!(frames[0]["d"], text, "{frames}");
    started.elapsed()
}

/// Whether the server has closed `stream` (it reads end of stream, or a reset), waiting at most
/// `limit`. Any bytes the server sent first are returned with the answer.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> (bool, String) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (false, String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the server has closed `stream` already (without waiting).
fn closed_now(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test]
async fn silent_partial_and_trickling_connections_are_closed_after_the_header_timeout() {
    let server = echo_server(|serve| serve.header_timeout(Duration::from_millis(600))).await;
    let quiet = round_trip(&server).await;

    let mut silent = Vec::new();
    let mut partial = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET /rt/poll?v=1&si").await.unwrap();
        partial.push(stream);
    }
    // Headers trickled one byte every 100 ms: never finished within the time-out.
    let mut trickling = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        trickling.push(tokio::spawn(async move {
            let head = format!(
                "GET /rt/client.js HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(200)
            );
            for byte in head.as_bytes() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return (true, String::new());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            closed_within(&mut stream, Duration::from_secs(10)).await
        }));
    }
    let under_attack = round_trip(&server).await;
    println!("round trip: quiet {quiet:?}, with 30 slow connections open {under_attack:?}");

    for (kind, streams) in [
        ("silent", &mut silent),
        ("partial request line", &mut partial),
    ] {
        for stream in streams.iter_mut() {
            let (closed, answer) = closed_within(stream, Duration::from_secs(10)).await;
            assert!(closed, "a {kind} connection was still open after 10 s");
            assert_eq!(answer, "", "a {kind} connection got an answer");
        }
    }
    for task in trickling {
        let (closed, answer) = task.await.unwrap();
        assert!(closed, "a trickling connection was still open");
        assert!(
            !answer.contains("200 OK"),
            "a trickled request was served: {answer}"
        );
    }
    round_trip(&server).await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let server = echo_server(|serve| serve.header_timeout(Duration::from_millis(600))).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /rt/client.js HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let quiet = round_trip(&server).await;
    // The answer arrives, and then (the connection kept alive but idle) the close.
    let (closed, answer) = closed_within(&mut stream, Duration::from_secs(10)).await;
    println!("round trip with an idle kept-alive connection open: {quiet:?}");
    assert!(
        answer.starts_with("HTTP/1.1 200 OK"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(
        closed,
        "an idle kept-alive connection was still open after 10 s"
    );
}

#[tokio::test]
async fn a_declared_body_that_never_arrives_is_answered_408() {
    let server = echo_server(|serve| serve.body_timeout(Duration::from_millis(500))).await;
    let http = reqwest::Client::new();
    let sid = common::open(&http, &server.base).await;
    for (path, sent) in [
        (format!("/rt/poll?v=1&sid={sid}"), "[{\"t\":\"m\",\"s\":1,"),
        ("/rt/open?v=1".to_string(), ""),
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n{sent}"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let meanwhile = round_trip(&server).await;
        let (closed, answer) = closed_within(&mut stream, Duration::from_secs(10)).await;
        println!(
            "{path}: answered after {:?}; a normal round trip meanwhile took {meanwhile:?}",
            started.elapsed()
        );
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
        assert!(closed, "{path}: the connection stayed open after the 408");
    }
    // The session the broken POST named lives on, and nothing of the broken body was delivered.
    let body = json!([{"t": "m", "s": 1, "d": TEXTS[1]}]).to_string();
    let (status, answer) = common::post(&http, &server.base, &sid, body).await;
    assert_eq!((status.as_u16(), answer[0]["a"].as_u64()), (200, Some(1)));
    let (_, frames) = common::get(&http, server.poll_url(&sid, 0, true)).await;
    assert_eq!(frames, json!([{"t": "m", "s": 1, "d": TEXTS[1]}]));
}

#[tokio::test]
async fn oversized_headers_are_answered_431_and_do_not_pile_up() {
    let server = echo_server(|serve| serve.max_header_bytes(16 * 1024)).await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "GET /rt/client.js HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n",
            "c".repeat(40 * 1024)
        );
        // The server may close before all of it is written.
        let _ = stream.write_all(head.as_bytes()).await;
        streams.push(stream);
    }
    let under_attack = round_trip(&server).await;
    println!("round trip with 50 oversized heads sent: {under_attack:?}");
    for stream in &mut streams {
        let (closed, answer) = closed_within(stream, Duration::from_secs(10)).await;
        assert!(closed, "a connection with an oversized head stayed open");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
    }
    // Headers below the limit are served.
    let response = reqwest::Client::new()
        .get(format!("{}/client.js", server.base))
        .header("cookie", "c".repeat(8 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_idle_connection_flood_sheds_the_oldest_idle_and_keeps_websockets_and_normal_clients() {
    const MAX: usize = 64;
    let server = echo_server(|serve| {
        serve
            .max_connections(MAX)
            .header_timeout(Duration::from_secs(60))
    })
    .await;
    let quiet = round_trip(&server).await;

    // Four WebSocket sessions, open before the flood: never closed as idle.
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let mut socket = server.ws("").await;
        assert_eq!(common::next_json(&mut socket).await["t"], "open");
        sockets.push(socket);
    }
    // 400 connections that send nothing, far above the limit.
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut trips = Vec::new();
    for _ in 0..20 {
        trips.push(round_trip(&server).await);
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    trips.sort();
    println!(
        "round trip: quiet {quiet:?}; during a flood of 420 idle connections (limit {MAX}): \
         median {:?}, worst {:?}",
        trips[trips.len() / 2],
        trips[trips.len() - 1]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = flood.iter().filter(|stream| !closed_now(stream)).count();
    assert!(
        open <= MAX,
        "{open} idle connections of the flood still open, above the limit of {MAX}"
    );
    // The youngest ones are those kept: the first connections of the flood were closed first.
    assert!(closed_now(&flood[0]), "the oldest idle connection was kept");

    for (i, socket) in sockets.iter_mut().enumerate() {
        let text = format!("{} #{i}", TEXTS[1]);
        socket
            .send(WsMessage::text(
                json!({"t": "m", "s": 1, "d": text}).to_string(),
            ))
            .await
            .unwrap();
        loop {
            let frame = common::next_json(socket).await;
            if frame["t"] == "m" {
                assert_eq!(frame["d"], text.as_str());
                break;
            }
            assert!(
                frame.get("ws_close").is_none() && frame.get("ws_end").is_none(),
                "a WebSocket was closed by the flood: {frame}"
            );
        }
    }
}

#[tokio::test]
async fn when_every_connection_is_busy_new_ones_get_503() {
    const MAX: usize = 6;
    let server = echo_server(|serve| serve.max_connections(MAX)).await;
    let mut sockets = Vec::new();
    for _ in 0..MAX {
        let mut socket = server.ws("").await;
        assert_eq!(common::next_json(&mut socket).await["t"], "open");
        sockets.push(socket);
    }
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let (closed, answer) = closed_within(&mut stream, Duration::from_secs(10)).await;
    assert!(closed);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // One WebSocket goes: its place is free again.
    let mut socket = sockets.pop().unwrap();
    socket.close(None).await.unwrap();
    while socket.next().await.is_some() {}
    drop(socket);
    let mut ok = false;
    for _ in 0..100 {
        if reqwest::Client::new()
            .get(format!("{}/client.js", server.base))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "no connection was served after a WebSocket closed");
}
