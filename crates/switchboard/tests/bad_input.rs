//! Bad input gets its documented answer and changes nothing else (DESIGN.md guarantee 7), and
//! nobody reads a session they don't own (guarantee 8). Raw HTTP and WebSocket requests, so that
//! the exact statuses and codes of docs/protocol.md §7 are checked.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestServer, get, open, post, start_default};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::{Refusal, Switchboard};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, client::IntoClientRequest};

/// Checks that a session still works end to end: the client's message `seq` reaches the
/// application and the application's answer reaches the client.
async fn assert_session_works(
    http: &reqwest::Client,
    server: &TestServer,
    sid: &str,
    session: &switchboard::Session,
    seq: u64,
) {
    let (status, answer) = post(
        http,
        &server.base,
        sid,
        json!([{"t":"m","s":seq,"d":"still here ✓"}]).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer[0], json!({"t":"ack","a":seq}));
    let received = tokio::time::timeout(Duration::from_secs(5), session.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received.as_text().as_deref(), Some("still here ✓"));
    session.send("pong ✓").unwrap();
    let (status, frames) = get(http, format!("{}/poll?v=1&sid={sid}&wait=0", server.base)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        frames
            .as_array()
            .unwrap()
            .iter()
            .any(|frame| frame["d"] == "pong ✓"),
        "{frames}"
    );
}

#[tokio::test]
async fn malformed_frames_get_400_and_change_nothing() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let other_sid = open(&http, &server.base).await;
    let other = server.next_session().await;

    for body in [
        "not json".to_string(),
        "{}".to_string(),
        json!([{"t":"m","s":1}]).to_string(),
        json!([{"t":"m","s":1,"d":"ok"},{"t":7}]).to_string(),
        json!([{"t":"m","s":1,"b":"%%% not base64"}]).to_string(),
    ] {
        let (status, error) = post(&http, &server.base, &sid, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error["error"], "malformed_frame", "{body}");
    }
    // The valid first frame of the rejected batch was not delivered: s=1 is still expected.
    assert_session_works(&http, &server, &sid, &session, 1).await;
    assert_session_works(&http, &server, &other_sid, &other, 1).await;
}

#[tokio::test]
async fn unknown_session_gets_404_on_every_endpoint() {
    let server = start_default().await;
    let http = reqwest::Client::new();
    let unknown = "0123456789abcdef0123456789abcdef";
    let (status, error) = get(
        &http,
        format!("{}/poll?v=1&sid={unknown}&wait=0", server.base),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"], "unknown_session");
    // A sid that cannot be one is a malformed parameter.
    let (status, error) = get(&http, format!("{}/poll?v=1&sid=not-a-sid", server.base)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"], "bad_request");
    let (status, error) = post(&http, &server.base, unknown, "[]").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"], "unknown_session");

    let mut socket = server.ws(&format!("&sid={unknown}&ack=0")).await;
    match socket.next().await {
        Some(Ok(WsMessage::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4404);
            assert_eq!(frame.reason.as_str(), "unknown_session");
        }
        other => panic!("expected close 4404, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_bodies_and_messages_get_413_and_deliver_nothing() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .max_message_size(1024)
            .max_body_size(4096)
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;

    let huge_body = format!(
        "[{}]",
        vec![json!({"t":"ping"}).to_string(); 1000].join(",")
    );
    assert!(huge_body.len() > 4096);
    let (status, error) = post(&http, &server.base, &sid, huge_body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["error"], "payload_too_large");

    let big_message =
        json!([{"t":"m","s":1,"d":"ok"},{"t":"m","s":2,"d":"x".repeat(2000)}]).to_string();
    assert!(big_message.len() < 4096);
    let (status, error) = post(&http, &server.base, &sid, big_message).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error["error"], "payload_too_large");

    // Sending an oversized message from the application is refused too, and the session lives.
    assert!(matches!(
        session.send("y".repeat(2000)),
        Err(switchboard::SendError::TooLarge { .. })
    ));
    assert_session_works(&http, &server, &sid, &session, 1).await;

    // Over WebSocket a too-large frame closes the socket (1009), not the session.
    let mut socket = server.ws(&format!("&sid={sid}&ack=0")).await;
    let _open = socket.next().await.unwrap().unwrap();
    let frame = json!({"t":"m","s":2,"d":"z".repeat(3000)}).to_string();
    let _ = socket.send(WsMessage::text(frame)).await;
    let mut closed_with = None;
    while let Some(message) = socket.next().await {
        match message {
            Ok(WsMessage::Close(frame)) => {
                closed_with = frame.map(|frame| u16::from(frame.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(closed_with, Some(1009));
    assert!(!session.is_closed());
    assert_session_works(&http, &server, &sid, &session, 2).await;
}

/// The `403 origin_not_allowed` carries the CORS headers a browser needs to let the page that
/// made the request read it.
fn assert_refusal_readable(response: &reqwest::Response, origin: &str) {
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"], origin,
        "{headers:?}"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert!(
        headers.get_all("vary").iter().any(|value| value
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("origin")),
        "{headers:?}"
    );
}

#[tokio::test]
async fn a_disallowed_origin_can_read_its_refusal_on_a_same_origin_server() {
    // No CORS layer at all (the default: only the server's own origin).
    let server = TestServer::start(Switchboard::builder().build()).await;
    let response = reqwest::Client::new()
        .post(format!("{}/open?v=1", server.base))
        .header("origin", "https://elsewhere.example")
        .header("content-type", "text/plain;charset=UTF-8")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_refusal_readable(&response, "https://elsewhere.example");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"], "origin_not_allowed");
    assert_eq!(server.realtime.session_count(), 0);
}

#[tokio::test]
async fn disallowed_origin_gets_403_everywhere() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .allowed_origins(["https://app.example"])
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let evil = "https://evil.example";

    let response = http
        .post(format!("{}/open?v=1", server.base))
        .header("origin", evil)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // Readable by the refused page (issue 15), so that its client can say why it cannot connect:
    // CORS headers for its origin, on the refusal only.
    assert_refusal_readable(&response, evil);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"], "origin_not_allowed");
    assert_eq!(server.realtime.session_count(), 0);

    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    session.send("secret").unwrap();
    let response = http
        .get(format!("{}/poll?v=1&sid={sid}&wait=0", server.base))
        .header("origin", evil)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = http
        .post(format!("{}/poll?v=1&sid={sid}", server.base))
        .header("origin", evil)
        .body(json!([{"t":"m","s":1,"d":"forged"}]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let mut request = server.ws_url("").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", evil.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403 before the upgrade, got {other:?}"),
    }

    // The allowed origin works and gets CORS headers; the forged message was never delivered.
    let response = http
        .get(format!("{}/poll?v=1&sid={sid}&wait=0", server.base))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        "https://app.example"
    );
    assert_session_works(&http, &server, &sid, &session, 1).await;
}

#[tokio::test]
async fn refused_authentication_gets_the_hooks_status() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .authenticate(|handshake| async move {
                let token = handshake
                    .auth()
                    .and_then(|auth| auth.get("token"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| handshake.cookie("token").map(str::to_owned));
                match token.as_deref() {
                    Some("good") => Ok("alice".to_string()),
                    Some("banned") => Err(Refusal::forbidden("you are banned")),
                    _ => Err(Refusal::unauthorized("token required")),
                }
            })
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    for (body, status, code) in [
        (json!({}), StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            json!({"auth":{"token":"bad"}}),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            json!({"auth":{"token":"banned"}}),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ] {
        let response = http
            .post(format!("{}/open?v=1", server.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], code);
    }
    assert_eq!(server.realtime.session_count(), 0);

    // WebSocket: the refusal arrives as close code 4000 + status, after the upgrade.
    let mut socket = server.ws("&auth=%7B%22token%22%3A%22banned%22%7D").await;
    match socket.next().await {
        Some(Ok(WsMessage::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4403),
        other => panic!("expected close 4403, got {other:?}"),
    }

    // Accepted by body auth and by cookie; the user data reaches the session.
    let response = http
        .post(format!("{}/open?v=1", server.base))
        .body(json!({"auth":{"token":"good"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.next_session().await.user(), "alice");
    let mut request = server.ws_url("").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("cookie", "theme=dark; token=good".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let open: Value =
        serde_json::from_str(socket.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(open["t"], "open");
    assert_eq!(server.next_session().await.user(), "alice");
}

#[tokio::test]
async fn a_second_poll_supersedes_the_first_with_409() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;

    let first = common::spawn_get(&http, server.poll_url(&sid, 0, true));
    assert!(common::eventually(Duration::from_secs(5), || session.transport().is_some()).await);
    let second = common::spawn_get(&http, server.poll_url(&sid, 0, true));
    let (status, error) = first.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["error"], "superseded");
    session.send("for the second poll").unwrap();
    let (status, frames) = second.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(frames, json!([{"t":"m","s":1,"d":"for the second poll"}]));
}

#[tokio::test]
async fn a_concurrent_post_gets_429() {
    // Inbound queue of one message and an application that does not read: the first POST waits
    // for room (back-pressure) and a second POST for the same session is refused.
    let mut server = TestServer::start(Switchboard::builder().inbound_queue(1).build()).await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let blocked = tokio::spawn({
        let http = http.clone();
        let base = server.base.clone();
        let sid = sid.clone();
        async move {
            post(
                &http,
                &base,
                &sid,
                json!([{"t":"m","s":1,"d":"a"},{"t":"m","s":2,"d":"b"}]).to_string(),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (status, error) = post(
        &http,
        &server.base,
        &sid,
        json!([{"t":"m","s":3,"d":"c"}]).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error["error"], "too_many_requests");
    assert!(!blocked.is_finished());
    // Once the application reads, the first POST completes with both messages delivered.
    assert_eq!(
        session.recv().await.unwrap().as_text().as_deref(),
        Some("a")
    );
    assert_eq!(
        session.recv().await.unwrap().as_text().as_deref(),
        Some("b")
    );
    let (status, answer) = blocked.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer[0], json!({"t":"ack","a":2}));
}

#[tokio::test]
async fn bad_query_parameters_get_400() {
    let server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    for (query, code) in [
        (format!("v=2&sid={sid}"), "unsupported_version"),
        (format!("v=1&sid={sid}&ack=minus-one"), "bad_request"),
        ("v=1".to_string(), "bad_request"),
    ] {
        let (status, error) = get(&http, format!("{}/poll?{query}", server.base)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(error["error"], code, "{query}");
    }
}

#[tokio::test]
async fn malformed_websocket_frames_get_an_error_frame_and_the_socket_goes_on() {
    let mut server = start_default().await;
    let mut socket = server.ws("").await;
    let _open = socket.next().await.unwrap().unwrap();
    let session = server.next_session().await;
    socket.send(WsMessage::text("{\"t\":")).await.unwrap();
    socket
        .send(WsMessage::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    socket
        .send(WsMessage::text(
            json!({"t":"m","s":1,"d":"after the junk"}).to_string(),
        ))
        .await
        .unwrap();
    let mut errors = 0;
    let mut acked = false;
    while !(errors == 2 && acked) {
        let frame: Value =
            serde_json::from_str(socket.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
        match frame["t"].as_str() {
            Some("error") => {
                assert_eq!(frame["code"], "malformed_frame");
                errors += 1;
            }
            Some("ack") => {
                assert_eq!(frame["a"], 1);
                acked = true;
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(
        session.recv().await.unwrap().as_text().as_deref(),
        Some("after the junk")
    );
}

#[tokio::test]
async fn session_ids_are_random_hex_and_never_in_debug_output() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let mut sids = std::collections::HashSet::new();
    // All 128 bits are random: unlike a UUID v4, the version nibble varies.
    let mut version_nibbles = std::collections::HashSet::new();
    for _ in 0..50 {
        let sid = open(&http, &server.base).await;
        assert_eq!(sid.len(), 32);
        assert!(sid.bytes().all(|b| b.is_ascii_hexdigit()));
        version_nibbles.insert(sid.as_bytes()[12]);
        let session = server.next_session().await;
        assert!(!format!("{session:?}").contains(&sid));
        assert!(sids.insert(sid));
    }
    assert!(version_nibbles.len() > 4, "{version_nibbles:?}");
}

/// Writes `head` (request line and headers) on a raw connection, sends no body, and returns the
/// status line of the answer, or `None` if none came within `wait`.
async fn status_without_body(
    addr: std::net::SocketAddr,
    head: &str,
    wait: Duration,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(wait, stream.read(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer[..read]).into_owned();
    text.lines().next().map(str::to_owned)
}

#[tokio::test]
async fn a_declared_body_above_the_limit_is_refused_before_any_of_it_is_sent() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    for path in [
        format!("/rt/poll?v=1&sid={sid}"),
        "/rt/open?v=1".to_string(),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: 10000000000\r\n\r\n",
            server.addr
        );
        let status = status_without_body(server.addr, &head, Duration::from_secs(10)).await;
        assert_eq!(
            status.as_deref(),
            Some("HTTP/1.1 413 Payload Too Large"),
            "{path}"
        );
    }
    // Exactly the limit is not refused up front: the server waits for the body (a refusal would
    // come within milliseconds, as above).
    let exact = format!(
        "POST /rt/poll?v=1&sid={sid} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        1024 * 1024
    );
    assert_eq!(
        status_without_body(server.addr, &exact, Duration::from_secs(1)).await,
        None
    );
    assert_session_works(&http, &server, &sid, &session, 1).await;
}
