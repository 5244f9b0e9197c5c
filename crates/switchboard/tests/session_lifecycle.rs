//! A session outlives its transports and ends only by close, expiry or overflow (DESIGN.md
//! guarantees 1 and 4), each with its documented outcome.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use std::sync::Arc;

use common::{TestServer, eventually, get, next_json, open, post, start_default};
use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::{CloseReason, Message, SendError, Switchboard};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn resume_after_the_resume_window_is_refused_with_404() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .resume_window(Duration::from_millis(1000))
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    session.send("waiting for you").unwrap();

    // Within the window the session is there; the poll attaches and detaches.
    let (status, frames) = get(&http, server.poll_url(&sid, 0, false)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(frames[0]["d"], "waiting for you");

    // Then nothing is attached for longer than the window.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), session.closed())
            .await
            .unwrap(),
        CloseReason::Expired
    );
    assert!(matches!(
        session.send("too late"),
        Err(SendError::Closed(CloseReason::Expired))
    ));
    let (status, error) = get(&http, server.poll_url(&sid, 1, false)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"], "unknown_session");
    let mut socket = server.ws(&format!("&sid={sid}&ack=1")).await;
    assert_eq!(next_json(&mut socket).await, json!({"ws_close": 4404}));
}

#[tokio::test]
async fn an_attached_transport_keeps_the_session_past_the_resume_window() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .resume_window(Duration::from_millis(200))
            .ping_interval(Duration::from_millis(50))
            .build(),
    )
    .await;
    let mut socket = server.ws("").await;
    assert_eq!(next_json(&mut socket).await["t"], "open");
    let session = server.next_session().await;
    // Answer pings for a while: far longer than the resume window.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    while tokio::time::Instant::now() < deadline {
        let frame = next_json(&mut socket).await;
        assert_eq!(frame["t"], "ping", "{frame}");
        socket
            .send(WsMessage::text(r#"{"t":"pong"}"#))
            .await
            .unwrap();
    }
    assert!(!session.is_closed());
}

#[tokio::test]
async fn overflow_closes_the_session_with_4003_and_tells_both_sides() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .max_buffered_messages(100)
            .max_buffered_bytes(1 << 20)
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    for i in 0..100 {
        session.send(format!("message {i}")).unwrap();
    }
    // The client never acknowledges; the 101st message overflows the buffer.
    assert_eq!(session.send("one too many"), Err(SendError::Overflow));
    assert_eq!(session.close_reason(), Some(CloseReason::Overflow));
    // The client's next poll gets the close frame at once (the buffer was discarded), and so does
    // a retry whose answer was lost.
    for _ in 0..2 {
        let (status, frames) = get(&http, server.poll_url(&sid, 0, true)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            frames,
            json!([{"t":"close","code":4003,"reason":"overflow"}])
        );
    }

    // The byte limit works the same way, on WebSocket.
    let mut server =
        TestServer::start(Switchboard::builder().max_buffered_bytes(10_000).build()).await;
    let mut socket = server.ws("").await;
    assert_eq!(next_json(&mut socket).await["t"], "open");
    let session = server.next_session().await;
    let mut sent = 0;
    while session.send("가".repeat(500)).is_ok() {
        sent += 1;
        assert!(sent < 100, "byte limit never hit");
    }
    assert_eq!(session.close_reason(), Some(CloseReason::Overflow));
    let mut last = Value::Null;
    loop {
        let frame = next_json(&mut socket).await;
        if frame.get("ws_close").is_some() {
            assert_eq!(frame, json!({"ws_close": 4003}));
            break;
        }
        last = frame;
    }
    assert_eq!(last, json!({"t":"close","code":4003,"reason":"overflow"}));
}

#[tokio::test]
async fn expired_sessions_are_reaped_and_their_memory_released() {
    // The window must outlast opening 500 sessions on a busy machine; reaping is then awaited.
    let mut server = TestServer::start(
        Switchboard::builder()
            .resume_window(Duration::from_secs(4))
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    for _ in 0..500 {
        open(&http, &server.base).await;
        let session = server.next_session().await;
        for i in 0..10 {
            session.send(format!("buffered {i} 🎈")).unwrap();
        }
        session.join("room").unwrap();
    }
    assert_eq!(server.realtime.session_count(), 500);
    assert_eq!(server.realtime.hub().member_count("room"), 500);
    assert!(
        eventually(Duration::from_secs(30), || server.realtime.session_count()
            == 0)
        .await
    );
    assert_eq!(server.realtime.hub().member_count("room"), 0);
    assert!(server.realtime.hub().rooms().is_empty());
    assert!(server.realtime.hub().sessions().is_empty());
}

#[tokio::test]
async fn application_close_delivers_buffered_messages_then_the_reason() {
    let mut server = TestServer::start(Switchboard::builder().build()).await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    session.send("first").unwrap();
    session.send("last words").unwrap();
    session.close("kicked by 관리자");
    let (_, frames) = get(&http, server.poll_url(&sid, 0, true)).await;
    assert_eq!(
        frames,
        json!([
            {"t":"m","s":1,"d":"first"},
            {"t":"m","s":2,"d":"last words"},
            {"t":"close","code":4000,"reason":"kicked by 관리자"}
        ])
    );
}

#[tokio::test]
async fn the_client_can_close_its_session() {
    let mut server = TestServer::start(Switchboard::builder().build()).await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let (status, answer) = post(
        &http,
        &server.base,
        &sid,
        json!([{"t":"m","s":1,"d":"bye"},{"t":"close"}]).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!([{"t":"ack","a":1},{"t":"close","code":4001,"reason":"client_closed"}])
    );
    // The message before the close still reaches the application, then recv ends.
    assert_eq!(
        session.recv().await.unwrap().as_text().as_deref(),
        Some("bye")
    );
    assert!(session.recv().await.is_none());
    assert_eq!(session.close_reason(), Some(CloseReason::ClientClosed));
}

/// A page's `conn.close()` over WebSocket sends its last messages, `{"t":"close"}` and the
/// WebSocket close frame at once: the server reads them in one burst, and must still deliver the
/// messages and end the session (it once dropped both when the close frame was in the same burst,
/// so the session expired after the resume window and the last messages were lost).
#[tokio::test]
async fn a_websocket_close_in_the_same_burst_as_the_last_messages_and_the_close_frame() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .resume_window(Duration::from_secs(30))
            .build(),
    )
    .await;
    for round in 0..5 {
        let mut socket = server.ws("").await;
        assert_eq!(next_json(&mut socket).await["t"], "open");
        let session = server.next_session().await;
        // Queued, then written in one go.
        socket
            .feed(WsMessage::text(r#"{"t":"m","s":1,"d":"안녕히 👋"}"#))
            .await
            .unwrap();
        socket
            .feed(WsMessage::text(r#"{"t":"m","s":2,"e":"bye","b":"AAH/"}"#))
            .await
            .unwrap();
        socket
            .feed(WsMessage::text(r#"{"t":"close"}"#))
            .await
            .unwrap();
        socket.close(None).await.ok();
        let first = tokio::time::timeout(Duration::from_secs(5), session.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the last messages were not delivered"));
        assert_eq!(first.unwrap().as_text().as_deref(), Some("안녕히 👋"));
        let second = session.recv().await.unwrap();
        assert_eq!(second.event(), Some("bye"));
        assert_eq!(second.as_bytes().map(|b| b.to_vec()), Some(vec![0, 1, 255]));
        // Ended at once as closed by the client, not 30 s later as expired.
        let reason = tokio::time::timeout(Duration::from_secs(5), session.closed())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the session did not end"));
        assert_eq!(reason, CloseReason::ClientClosed, "round {round}");
        assert!(session.recv().await.is_none());
    }
}

#[tokio::test]
async fn graceful_shutdown_tells_clients_and_releases_waiting_polls() {
    let mut server = TestServer::start(Switchboard::builder().build()).await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let polling = server.next_session().await;
    let mut socket = server.ws("").await;
    assert_eq!(next_json(&mut socket).await["t"], "open");
    let _ws = server.next_session().await;
    let waiting = common::spawn_get(&http, server.poll_url(&sid, 0, true));
    assert!(eventually(Duration::from_secs(5), || polling.transport().is_some()).await);

    tokio::time::timeout(Duration::from_secs(10), server.realtime.shutdown())
        .await
        .unwrap();

    let (status, frames) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        frames,
        json!([{"t":"close","code":4004,"reason":"shutdown"}])
    );
    assert_eq!(
        next_json(&mut socket).await,
        json!({"t":"close","code":4004,"reason":"shutdown"})
    );
    assert_eq!(next_json(&mut socket).await, json!({"ws_close": 4004}));
    let response = http
        .post(format!("{}/open?v=1", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"], "shutting_down");
}

#[tokio::test]
async fn the_session_limit_refuses_new_sessions_with_503() {
    let mut server = TestServer::start(Switchboard::builder().max_sessions(3).build()).await;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        open(&http, &server.base).await;
        server.next_session().await;
    }
    let response = http
        .post(format!("{}/open?v=1", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let mut socket = server.ws("").await;
    assert_eq!(next_json(&mut socket).await, json!({"ws_close": 4503}));
}

#[tokio::test]
async fn a_silent_websocket_is_dropped_but_its_session_lives() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .ping_interval(Duration::from_millis(100))
            .ping_timeout(Duration::from_millis(100))
            .build(),
    )
    .await;
    let mut socket = server.ws("").await;
    let open = next_json(&mut socket).await;
    let sid = open["sid"].as_str().unwrap().to_string();
    let session = server.next_session().await;
    // Never answer: the server pings, then gives up on the socket with 4101.
    assert_eq!(next_json(&mut socket).await, json!({"t":"ping"}));
    let mut last = next_json(&mut socket).await;
    while last["t"] == "ping" {
        last = next_json(&mut socket).await;
    }
    assert_eq!(last, json!({"ws_close": 4101}));
    assert!(!session.is_closed());
    // The session resumes on a new socket.
    session.send("still yours").unwrap();
    let mut socket = server.ws(&format!("&sid={sid}&ack=0")).await;
    let open = next_json(&mut socket).await;
    assert_eq!(open["resumed"], true);
    assert_eq!(
        next_json(&mut socket).await,
        json!({"t":"m","s":1,"d":"still yours"})
    );
}

#[tokio::test]
async fn a_websocket_takeover_closes_the_old_socket_with_4100() {
    let mut server = TestServer::start(Switchboard::builder().build()).await;
    let mut old = server.ws("").await;
    let sid = next_json(&mut old).await["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let session = server.next_session().await;
    session.send("one").unwrap();
    assert_eq!(next_json(&mut old).await["s"], 1);
    let mut new = server.ws(&format!("&sid={sid}&ack=0")).await;
    assert_eq!(next_json(&mut new).await["resumed"], true);
    // Not acknowledged yet, so the new socket gets it again; the client drops the duplicate.
    assert_eq!(next_json(&mut new).await["s"], 1);
    assert_eq!(next_json(&mut old).await, json!({"ws_close": 4100}));
    session.send("two").unwrap();
    assert_eq!(next_json(&mut new).await, json!({"t":"m","s":2,"d":"two"}));
}

#[tokio::test]
async fn an_ack_beyond_what_was_sent_skips_nothing() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    session.send("하나").unwrap();
    // A buggy or hostile client acknowledges far more than it was sent.
    let mut socket = server.ws(&format!("&sid={sid}&ack=100")).await;
    assert_eq!(next_json(&mut socket).await["t"], "open");
    // Message 1 counts as acknowledged (clamped to what was sent), and what follows still flows.
    session.send("둘").unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        json!({"t":"m","s":2,"d":"둘"})
    );
    assert_eq!(session.buffered().0, 1);
}

#[tokio::test]
async fn a_websocket_stuck_on_a_full_inbound_queue_is_dropped_and_can_be_taken_over() {
    // The application never reads and its inbound queue holds one message.
    let mut server = TestServer::start(
        Switchboard::builder()
            .inbound_queue(1)
            .ping_interval(Duration::from_millis(100))
            .ping_timeout(Duration::from_millis(1000))
            .resume_window(Duration::from_millis(500))
            .build(),
    )
    .await;
    let mut stuck = server.ws("").await;
    let sid = next_json(&mut stuck).await["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let session = server.next_session().await;
    for seq in 1..=3 {
        let frame = json!({"t":"m","s":seq,"d":format!("메시지 {seq}")}).to_string();
        stuck.send(WsMessage::text(frame)).await.unwrap();
    }
    // A second socket takes over at once, although the first is waiting for queue room.
    let mut fresh = server.ws(&format!("&sid={sid}&ack=0")).await;
    let open = next_json(&mut fresh).await;
    assert_eq!(open["resumed"], true);
    let mut last = next_json(&mut stuck).await;
    while last["t"] == "ack" || last["t"] == "ping" {
        last = next_json(&mut stuck).await;
    }
    assert_eq!(last, json!({"ws_close": 4100}));
    // The new socket, blocked the same way, is dropped after the silence limit; it does not
    // hold the session forever.
    let resend = json!({"t":"m","s":2,"d":"메시지 2"}).to_string();
    fresh.send(WsMessage::text(resend)).await.unwrap();
    let mut last = next_json(&mut fresh).await;
    while last["t"] == "ping" {
        last = next_json(&mut fresh).await;
    }
    assert_eq!(last, json!({"ws_close": 4101}));
    // With no transport left, the session expires as documented.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), session.closed())
            .await
            .unwrap(),
        CloseReason::Expired
    );
    // What was delivered before is still there for the application, in order.
    assert_eq!(
        session.recv().await.unwrap().as_text().as_deref(),
        Some("메시지 1")
    );
}

#[tokio::test]
async fn a_session_opened_during_shutdown_is_refused() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let server = TestServer::start(
        Switchboard::builder()
            .authenticate({
                let gate = gate.clone();
                move |_| {
                    let gate = gate.clone();
                    async move {
                        gate.notified().await;
                        Ok(())
                    }
                }
            })
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let opening = tokio::spawn({
        let http = http.clone();
        let url = format!("{}/open?v=1", server.base);
        async move { http.post(url).send().await.unwrap().status() }
    });
    // The authentication hook is running when shutdown starts.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.realtime.shutdown().await;
    gate.notify_waiters();
    assert_eq!(opening.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.realtime.session_count(), 0);
}

#[tokio::test]
async fn a_panicking_session_handler_closes_its_session() {
    let realtime = Switchboard::builder().build();
    let app = axum::Router::new().nest(
        "/rt",
        realtime.router(|session: switchboard::Session| async move {
            if let Some(message) = session.recv().await {
                panic!("the application failed on {:?}", message.as_text());
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/rt", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let sid = open(&http, &base).await;
    post(
        &http,
        &base,
        &sid,
        json!([{"t":"m","s":1,"d":"boom"}]).to_string(),
    )
    .await;
    let url = format!("{base}/poll?v=1&sid={sid}&ack=0");
    let (_, frames) = get(&http, url).await;
    assert_eq!(frames, json!([{"t":"close","code":4000,"reason":"closed"}]));
}

#[tokio::test]
async fn posts_alone_keep_a_session_alive() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .resume_window(Duration::from_millis(1000))
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    // A proxy cuts every GET, but POSTs get through: they are signs of life too.
    for _ in 0..30 {
        let (status, _) = post(&http, &server.base, &sid, "[]").await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!session.is_closed());
}

#[tokio::test]
async fn a_broadcast_that_overflows_a_slow_member_closes_only_that_member() {
    let mut server =
        TestServer::start(Switchboard::builder().max_buffered_messages(50).build()).await;
    let http = reqwest::Client::new();
    let fast_sid = open(&http, &server.base).await;
    let fast = server.next_session().await;
    let _slow_sid = open(&http, &server.base).await;
    let slow = server.next_session().await;
    fast.join("room").unwrap();
    slow.join("room").unwrap();
    let hub = server.realtime.hub();
    let mut acked = 0;
    // 50 fill the slow member's buffer; the next ones reach it, and overflow it, at the latest
    // when the room's log is swept (every 25 messages here: half the buffer).
    for i in 0..80u64 {
        hub.to("room").send(&Message::text(format!("{i}"))).unwrap();
        // The fast member keeps acknowledging; the slow one never does.
        if i % 10 == 9 {
            let (_, frames) = get(&http, server.poll_url(&fast_sid, acked, false)).await;
            acked += frames.as_array().unwrap().len() as u64;
        }
    }
    assert_eq!(slow.close_reason(), Some(CloseReason::Overflow));
    assert!(!fast.is_closed());
    assert_eq!(
        hub.member_count("room"),
        1,
        "the overflowed member left the room"
    );
    assert_eq!(hub.to("room").send(&Message::text("after")).unwrap(), 1);
}

#[tokio::test]
async fn a_session_can_be_sent_to_and_closed_by_its_key() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let hub = server.realtime.hub();
    hub.session(session.key())
        .send(&Message::text("키로 보냄 🔑"))
        .unwrap();
    hub.session(session.key())
        .low_priority()
        .emit("e", &json!({"n": 1}))
        .unwrap();
    let (_, frames) = get(&http, server.poll_url(&sid, 0, false)).await;
    assert_eq!(frames[0]["d"], "키로 보냄 🔑");
    // The low-priority one may be held back briefly; it comes at the latest after max_delay.
    hub.session(session.key()).close("안녕히").unwrap();
    assert_eq!(session.closed().await, CloseReason::Closed("안녕히".into()));
    let (_, frames) = get(&http, server.poll_url(&sid, 1, false)).await;
    let last = frames.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["t"].as_str(), last["code"].as_u64()),
        (Some("close"), Some(4000))
    );
    assert_eq!(last["reason"], "안녕히");
    // No such key: said so, nothing else happens.
    let unknown = switchboard::SessionKey(session.key().0 + 1_000);
    assert_eq!(
        hub.session(unknown).send(&Message::text("x")),
        Err(SendError::NoSuchSession)
    );
    assert_eq!(
        hub.session(unknown).close("x"),
        Err(SendError::NoSuchSession)
    );
}
