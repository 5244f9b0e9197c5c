//! The edge cases of docs/protocol.md (§16 and the statements it points to): what the server does
//! with inputs an independent implementer could otherwise not predict. Raw HTTP and WebSocket
//! requests, so that exact statuses, codes and frames are checked.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{TestServer, Ws, get, next_json, open, post, start_default};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::{Coalescing, Message, Priority, Switchboard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Opens a WebSocket to `/rt/ws?<query>` (no `v=1` added).
async fn ws_raw(server: &TestServer<impl Clone + Send + Sync + 'static>, query: &str) -> Ws {
    let url = format!("ws://{}/rt/ws?{query}", server.addr);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The close code and reason the server ends `socket` with, skipping other messages.
async fn close_of(socket: &mut Ws) -> Option<(u16, String)> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
        {
            Some(Ok(WsMessage::Close(frame))) => {
                return frame.map(|frame| (u16::from(frame.code), frame.reason.to_string()));
            }
            Some(Ok(_)) => {}
            _ => return None,
        }
    }
}

/// Reads the next message and asserts that nothing else arrives for a moment.
async fn only_frame(socket: &mut Ws) -> Value {
    let frame = next_json(socket).await;
    let more = tokio::time::timeout(Duration::from_millis(300), socket.next()).await;
    assert!(more.is_err(), "unexpected {more:?} after {frame}");
    frame
}

async fn recv_text(session: &switchboard::Session<impl Clone + Send + Sync + 'static>) -> String {
    tokio::time::timeout(Duration::from_secs(5), session.recv())
        .await
        .unwrap()
        .unwrap()
        .as_text()
        .unwrap()
}

// ---- finding 8: batch ---------------------------------------------------------------------

#[tokio::test]
async fn websocket_batch_values_other_than_1_mean_one_frame_per_message() {
    let mut server = start_default().await;
    for value in ["yes", "true", "", "01", "2", "%31%31"] {
        let mut socket = server.ws(&format!("&batch={value}")).await;
        let open = next_json(&mut socket).await;
        assert_eq!(open["t"], "open", "batch={value}: {open}");
        let session = server.next_session().await;
        session.send("one by one").unwrap();
        assert_eq!(
            next_json(&mut socket).await,
            json!({"t":"m","s":1,"d":"one by one"}),
            "batch={value}"
        );
    }
    // Exactly `1` (also percent-encoded) asks for arrays.
    for value in ["1", "%31"] {
        let mut socket = server.ws(&format!("&batch={value}")).await;
        let open = next_json(&mut socket).await;
        assert_eq!(open[0]["t"], "open", "batch={value}: {open}");
        let _ = server.next_session().await;
    }
}

// ---- finding 9: the WebSocket frame limit -------------------------------------------------

/// A message frame carrying `payload` in `b`, padded with an unknown field to exactly `len` bytes.
fn binary_frame_of_len(seq: u64, payload: &[u8], len: usize) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(payload);
    let bare = format!(r#"{{"t":"m","s":{seq},"b":"{b}","pad":""}}"#);
    assert!(bare.len() <= len);
    let frame = format!(
        r#"{{"t":"m","s":{seq},"b":"{b}","pad":"{}"}}"#,
        "x".repeat(len - bare.len())
    );
    assert_eq!(frame.len(), len);
    frame
}

#[tokio::test]
async fn a_websocket_frame_of_exactly_the_limit_is_decoded_and_one_byte_more_closes_1009() {
    let mut server = start_default().await;
    // §5.1: 4 × ⌈max_message / 3⌉ + 1024 bytes; max_message is 65 536 by default.
    let limit = 4 * 65_536_usize.div_ceil(3) + 1024;
    assert_eq!(limit, 88_408);
    let payload: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();

    let mut socket = server.ws("").await;
    let open = next_json(&mut socket).await;
    assert_eq!(open["max_message"], 65_536);
    let sid = open["sid"].as_str().unwrap().to_string();
    let session = server.next_session().await;
    socket
        .send(WsMessage::text(binary_frame_of_len(1, &payload, limit)))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await, json!({"t":"ack","a":1}));
    let received = tokio::time::timeout(Duration::from_secs(5), session.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received.as_bytes().unwrap().as_ref(), &payload[..]);

    socket
        .send(WsMessage::text(binary_frame_of_len(2, &payload, limit + 1)))
        .await
        .unwrap();
    let (code, _) = close_of(&mut socket).await.unwrap();
    assert_eq!(code, 1009);
    // The socket is gone, the session is not.
    assert!(!session.is_closed());
    let mut socket = server.ws(&format!("&sid={sid}&ack=0")).await;
    let open = next_json(&mut socket).await;
    assert_eq!(
        (open["resumed"].clone(), open["ack"].clone()),
        (json!(true), json!(1))
    );
}

// ---- finding 10: frames of unknown types --------------------------------------------------

#[tokio::test]
async fn frames_of_unknown_types_are_ignored_in_post_bodies() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;

    let body = json!([
        {"t":"m","s":1,"d":"before"},
        {"t":"subscribe","s":"not a number","d":{},"b":"%%%"},
        {"t":"M","s":2,"d":"not a message frame"},
        {"t":"m","s":2,"d":"after"}
    ]);
    let (status, answer) = post(&http, &server.base, &sid, body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!([{"t":"ack","a":2}]));
    assert_eq!(recv_text(&session).await, "before");
    assert_eq!(recv_text(&session).await, "after");
    let (status, answer) = post(&http, &server.base, &sid, r#"[{"t":"later"}]"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!([{"t":"ack","a":2}]));

    // Not an object, no `t`, or a `t` that is not a string: still malformed, and the valid
    // frames of the body are not delivered.
    for bad in [
        json!([{"t":"m","s":3,"d":"no"}, 5]),
        json!([{"t":"m","s":3,"d":"no"}, {"s":3}]),
        json!([{"t":"m","s":3,"d":"no"}, {"t":null}]),
        json!([{"t":"m","s":3,"d":"no"}, {"t":["m"]}]),
        json!([{"t":"m","s":3,"d":"no"}, "m"]),
    ] {
        let (status, error) = post(&http, &server.base, &sid, bad.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error["error"], "malformed_frame", "{bad}");
    }
    let (_, answer) = post(&http, &server.base, &sid, "[]").await;
    assert_eq!(answer, json!([{"t":"ack","a":2}]));
}

#[tokio::test]
async fn frames_of_unknown_types_are_ignored_on_websocket() {
    let mut server = start_default().await;
    let mut socket = server.ws("").await;
    assert_eq!(next_json(&mut socket).await["t"], "open");
    let session = server.next_session().await;

    for frame in [
        json!({"t":"subscribe","s":"room","d":{}}),
        json!({"t":"later"}),
        json!({"t":"m","s":1,"d":"after the unknown ones"}),
    ] {
        socket
            .send(WsMessage::text(frame.to_string()))
            .await
            .unwrap();
    }
    // No error frame: just the acknowledgement of the message.
    assert_eq!(only_frame(&mut socket).await, json!({"t":"ack","a":1}));
    assert_eq!(recv_text(&session).await, "after the unknown ones");

    // A `t` that is not a string is malformed.
    socket
        .send(WsMessage::text(r#"{"t":5,"s":2,"d":"x"}"#))
        .await
        .unwrap();
    let error = only_frame(&mut socket).await;
    assert_eq!(error["t"], "error", "{error}");
    assert_eq!(error["code"], "malformed_frame");
}

// ---- finding 11 -----------------------------------------------------------------------------

#[tokio::test]
async fn any_version_but_exactly_1_is_unsupported_and_checked_first() {
    let server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    for version in ["abc", "2", "", "01", "1.0", "%20%31"] {
        for query in [
            format!("v={version}&sid={sid}&wait=0"),
            // The version is checked before parameters version 1 cannot read.
            format!("v={version}&sid={sid}&ack=zzz&wait=0"),
            format!("v={version}"),
        ] {
            let (status, error) = get(&http, format!("{}/poll?{query}", server.base)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(error["error"], "unsupported_version", "{query}");
        }
        let response = http
            .post(format!("{}/open?v={version}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "unsupported_version");
        let mut socket = ws_raw(&server, &format!("v={version}")).await;
        assert_eq!(
            close_of(&mut socket).await,
            Some((4400, "unsupported_version".to_string())),
            "v={version}"
        );
    }
    // `v=1` and no `v` at all are version 1.
    for query in [format!("v=1&sid={sid}&wait=0"), format!("sid={sid}&wait=0")] {
        let (status, _) = get(&http, format!("{}/poll?{query}", server.base)).await;
        assert_eq!(status, StatusCode::OK, "{query}");
    }
    assert_eq!(server.realtime.session_count(), 1);
}

#[tokio::test]
async fn query_numbers_are_decimal_digits_and_unknown_parameters_are_ignored() {
    let server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    for ack in [
        "1.0",
        "1e0",
        "+1",
        "-0",
        "",
        "%201",
        "0x1",
        "9007199254740992",
    ] {
        let (status, error) = get(&http, server_poll(&server, &sid, &format!("ack={ack}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "ack={ack}");
        assert_eq!(error["error"], "bad_request", "ack={ack}");
    }
    for query in [
        "ack=0",
        "ack=000",
        "ack=9007199254740991",
        "future=1&later=2",
        "batch=yes",
        "auth=notjson",
    ] {
        let (status, _) = get(&http, server_poll(&server, &sid, query)).await;
        assert_eq!(status, StatusCode::OK, "{query}");
    }
    // `wait` is read like `ack`; `00` is zero, a short poll answered at once.
    for wait in ["+0", "", "0.0", "-0"] {
        let url = format!("{}/poll?v=1&sid={sid}&wait={wait}", server.base);
        let (status, error) = get(&http, url).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "wait={wait}");
        assert_eq!(error["error"], "bad_request", "wait={wait}");
    }
    let url = format!("{}/poll?v=1&sid={sid}&wait=00", server.base);
    let (status, frames) = get(&http, url).await;
    assert_eq!((status, frames), (StatusCode::OK, json!([])));
    // A parameter given twice is malformed.
    let (status, error) = get(&http, server_poll(&server, &sid, "ack=0&ack=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"], "bad_request");
    let mut socket = server.ws("&batch=1&batch=1").await;
    assert_eq!(
        close_of(&mut socket).await,
        Some((4400, "bad_request".to_string()))
    );
    // POST /open ignores a sid: it opens a new session.
    let response = http
        .post(format!("{}/open?v=1&sid={sid}", server.base))
        .send()
        .await
        .unwrap();
    let open: Value = response.json().await.unwrap();
    assert_eq!(open["t"], "open");
    assert_ne!(open["sid"], sid.as_str());
    assert_eq!(server.realtime.session_count(), 2);
}

fn server_poll(server: &TestServer, sid: &str, extra: &str) -> String {
    format!("{}/poll?v=1&sid={sid}&wait=0&{extra}", server.base)
}

#[tokio::test]
async fn sequence_numbers_and_acks_must_be_json_integers() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    for bad in [
        r#"[{"t":"m","s":1.0,"d":"x"}]"#,
        r#"[{"t":"m","s":1e0,"d":"x"}]"#,
        r#"[{"t":"m","s":-0,"d":"x"}]"#,
        r#"[{"t":"m","s":"1","d":"x"}]"#,
        r#"[{"t":"ack","a":0.0}]"#,
        r#"[{"t":"ack","a":0e0}]"#,
    ] {
        let (status, error) = post(&http, &server.base, &sid, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error["error"], "malformed_frame", "{bad}");
    }
    let mut socket = server.ws(&format!("&sid={sid}&ack=0")).await;
    assert_eq!(next_json(&mut socket).await["t"], "open");
    socket
        .send(WsMessage::text(r#"{"t":"m","s":1e0,"d":"x"}"#))
        .await
        .unwrap();
    let error = only_frame(&mut socket).await;
    assert_eq!(
        (error["t"].clone(), error["code"].clone()),
        (json!("error"), json!("malformed_frame"))
    );
    socket
        .send(WsMessage::text(r#"{"t":"m","s":1,"d":"integer"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await, json!({"t":"ack","a":1}));
    assert_eq!(recv_text(&session).await, "integer");
}

#[tokio::test]
async fn unreadable_bodies_are_bad_requests_and_bad_frames_malformed() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;

    // POST /poll: whatever is read but is not a JSON array of valid frames is malformed_frame.
    for body in [
        b"\xff\xfe[]".to_vec(),
        br#"[{"t":"m","s":1,"d":"caf\xe9"}]"#.to_vec(),
        b"".to_vec(),
        b"   ".to_vec(),
        b"not json".to_vec(),
        b"{}".to_vec(),
        b"null".to_vec(),
        b"[1]".to_vec(),
        b"[] []".to_vec(),
    ] {
        let (status, error) = post(&http, &server.base, &sid, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(error["error"], "malformed_frame", "{body:?}");
    }
    // A body that cannot be read at all (here: broken chunked encoding) is bad_request.
    let request = format!(
        "POST /rt/poll?v=1&sid={sid} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\nzz\r\n[]\r\n0\r\n\r\n",
        server.addr
    );
    let answer = raw_http(&server, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""error":"bad_request""#), "{answer}");

    // POST /open: a body that is not empty (or whitespace) and not {"auth": ...} is bad_request.
    for body in [
        b"\xff".to_vec(),
        b"not json".to_vec(),
        b"[]".to_vec(),
        br#"["tok"]"#.to_vec(),
        b"null".to_vec(),
        b"\"auth\"".to_vec(),
        br#"{"auth":}"#.to_vec(),
        br#"{"auth":1} x"#.to_vec(),
    ] {
        let response = http
            .post(format!("{}/open?v=1", server.base))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "bad_request", "{body:?}");
    }
    for body in ["", " \r\n\t", "{}", r#"{"auth":null,"future":1}"#] {
        let response = http
            .post(format!("{}/open?v=1", server.base))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{body:?}");
        let _ = server.next_session().await;
    }
    // Nothing of the rejected bodies reached the first session.
    let (_, answer) = post(&http, &server.base, &sid, "[]").await;
    assert_eq!(answer, json!([{"t":"ack","a":0}]));
    assert!(!session.is_closed());
}

/// Sends raw bytes to the server and returns everything it answers until it closes.
async fn raw_http(server: &TestServer, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_gap_or_a_duplicate_over_websocket_is_dropped_and_answered_with_the_ack() {
    let mut server = start_default().await;
    let mut socket = server.ws("").await;
    let sid = next_json(&mut socket).await["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let session = server.next_session().await;
    let m = |s: u64| WsMessage::text(json!({"t":"m","s":s,"d":format!("m{s}")}).to_string());

    socket.send(m(1)).await.unwrap();
    assert_eq!(only_frame(&mut socket).await, json!({"t":"ack","a":1}));
    // A duplicate: dropped, answered with the unchanged ack.
    socket.send(m(1)).await.unwrap();
    assert_eq!(only_frame(&mut socket).await, json!({"t":"ack","a":1}));
    // A gap: dropped, answered with the unchanged ack; no error, the socket goes on.
    socket.send(m(3)).await.unwrap();
    assert_eq!(only_frame(&mut socket).await, json!({"t":"ack","a":1}));
    // Each frame is judged on its own, however the reads group them: the gapped 5 is dropped,
    // the 2 after it delivered.
    socket.feed(m(5)).await.unwrap();
    socket.feed(m(2)).await.unwrap();
    socket.flush().await.unwrap();
    let mut last = 0;
    while last < 2 {
        let ack = next_json(&mut socket).await;
        assert_eq!(ack["t"], "ack", "{ack}");
        last = ack["a"].as_u64().unwrap();
    }
    assert_eq!(last, 2);
    for expected in ["m1", "m2"] {
        assert_eq!(recv_text(&session).await, expected);
    }
    // The same rule over POST.
    let http = reqwest::Client::new();
    let body = json!([{"t":"m","s":4,"d":"m4"},{"t":"m","s":3,"d":"m3"},{"t":"m","s":3,"d":"m3"}]);
    let (status, answer) = post(&http, &server.base, &sid, body.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!([{"t":"ack","a":3}]));
    assert_eq!(recv_text(&session).await, "m3");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), session.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_pong_in_a_post_body_is_accepted_and_ignored() {
    let server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let (status, answer) = post(&http, &server.base, &sid, r#"[{"t":"pong"}]"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!([{"t":"ack","a":0}]));
    // However many pings, one pong, after the ack.
    let body = r#"[{"t":"ping"},{"t":"pong"},{"t":"ping"}]"#;
    let (status, answer) = post(&http, &server.base, &sid, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!([{"t":"ack","a":0},{"t":"pong"}]));
}

#[tokio::test]
async fn uppercase_session_ids_name_the_same_session() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    assert!(
        sid.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    );
    let upper = sid.to_ascii_uppercase();
    let mixed: String = sid
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();

    session.send("for any case").unwrap();
    let (status, frames) = get(&http, server.poll_url(&upper, 0, false)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(frames, json!([{"t":"m","s":1,"d":"for any case"}]));
    let (status, answer) = post(
        &http,
        &server.base,
        &mixed,
        json!([{"t":"m","s":1,"d":"mixed"}]).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!([{"t":"ack","a":1}]));
    assert_eq!(recv_text(&session).await, "mixed");
    let mut socket = server.ws(&format!("&sid={upper}&ack=1")).await;
    let open = next_json(&mut socket).await;
    assert_eq!(open["resumed"], true);
    // The server always writes the sid in lowercase.
    assert_eq!(open["sid"], sid.as_str());
    assert_eq!(server.realtime.session_count(), 1);
    // What is not 32 hexadecimal digits is a bad parameter, not an unknown session.
    for bad in [&sid[1..], "g".repeat(32).as_str(), &format!("{sid}0")] {
        let (status, error) = get(&http, server.poll_url(bad, 0, false)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error["error"], "bad_request", "{bad}");
        let mut socket = server.ws(&format!("&sid={bad}")).await;
        assert_eq!(
            close_of(&mut socket).await,
            Some((4400, "bad_request".to_string()))
        );
    }
}

#[tokio::test]
async fn non_json_auth_is_a_bad_request_and_null_is_no_auth() {
    // The hook accepts everyone and records what it saw as the user data.
    let mut server = TestServer::start(
        Switchboard::builder()
            .authenticate(|handshake| async move {
                Ok::<_, switchboard::Refusal>(match handshake.auth() {
                    Some(auth) => auth.to_string(),
                    None => "none".to_string(),
                })
            })
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    for auth in ["notjson", "", "%7B", "%7B%22a%22%3A1%7D%20x"] {
        let mut socket = server.ws(&format!("&auth={auth}")).await;
        assert_eq!(
            close_of(&mut socket).await,
            Some((4400, "bad_request".to_string())),
            "auth={auth}"
        );
    }
    let response = http
        .post(format!("{}/open?v=1", server.base))
        .body(r#"{"auth": notjson}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(server.realtime.session_count(), 0);

    // JSON of any kind is handed over; `null` is no auth data, on both transports.
    for (query, seen) in [
        ("&auth=%22tok%22", r#""tok""#),
        ("&auth=%7B%22a%22%3A%5B1%5D%7D", r#"{"a":[1]}"#),
        ("&auth=null", "none"),
        // Form decoding: `+` is a space.
        ("&auth=%22a+b%2Bc%22", r#""a b+c""#),
        ("", "none"),
    ] {
        let mut socket = server.ws(query).await;
        assert_eq!(next_json(&mut socket).await["t"], "open", "{query}");
        assert_eq!(server.next_session().await.user(), seen, "{query}");
    }
    for (body, seen) in [
        (r#"{"auth":"tok"}"#, r#""tok""#),
        (r#"{"auth":null}"#, "none"),
        ("", "none"),
    ] {
        let response = http
            .post(format!("{}/open?v=1", server.base))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{body}");
        assert_eq!(server.next_session().await.user(), seen, "{body}");
    }
    // POST /open reads auth from its body only: an `auth` query parameter is ignored.
    let response = http
        .post(format!("{}/open?v=1&auth=%22query%22", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let open: Value = response.json().await.unwrap();
    assert_eq!(server.next_session().await.user(), "none");
    // Resuming does not look at auth at all, not even to parse it.
    let sid = open["sid"].as_str().unwrap();
    let mut socket = server.ws(&format!("&sid={sid}&auth=notjson")).await;
    assert_eq!(next_json(&mut socket).await["resumed"], true);
}

#[tokio::test]
async fn a_websocket_closed_with_1000_but_without_a_close_protocol_frame_leaves_the_session_alive()
{
    let mut server = start_default().await;
    let mut socket = server.ws("").await;
    let sid = next_json(&mut socket).await["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let session = server.next_session().await;
    // A WebSocket close with 1000 (normal closure) is not the protocol's `close` frame.
    socket
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    while let Some(Ok(_)) = socket.next().await {}
    assert!(common::eventually(Duration::from_secs(5), || session.transport().is_none()).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!session.is_closed());
    session.send("still here").unwrap();
    let mut socket = server.ws(&format!("&sid={sid}&ack=0")).await;
    let open = next_json(&mut socket).await;
    assert_eq!(open["resumed"], true);
    assert_eq!(
        next_json(&mut socket).await,
        json!({"t":"m","s":1,"d":"still here"})
    );
}

#[tokio::test]
async fn the_low_priority_delay_counts_from_the_first_held_message() {
    let delay = Duration::from_millis(2000);
    let mut server = TestServer::start(
        Switchboard::builder()
            .poll_hold(Duration::from_secs(60))
            .resume_window(Duration::from_secs(120))
            .coalescing(Coalescing {
                max_count: 1000,
                max_bytes: 1 << 20,
                max_delay: delay,
            })
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let waiting = common::spawn_get(&http, server.poll_url(&sid, 0, true));
    assert!(common::eventually(Duration::from_secs(5), || session.transport().is_some()).await);

    let first = tokio::time::Instant::now();
    session
        .send_with(Message::text("first held"), Priority::Low)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let second = tokio::time::Instant::now();
    session
        .send_with(Message::text("second held"), Priority::Low)
        .unwrap();
    let (_, frames) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    let answered = tokio::time::Instant::now();
    assert_eq!(frames[0]["d"], "first held", "{frames}");
    assert_eq!(frames[1]["d"], "second held", "{frames}");
    // Released `delay` after the first held message, well before `delay` after the second.
    assert!(answered - first >= delay - Duration::from_millis(50));
    assert!(
        answered < second + delay - Duration::from_millis(300),
        "answered {:?} after the second message",
        answered - second
    );
}

#[tokio::test]
async fn post_bodies_are_read_as_json_whatever_the_content_type() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let types = [
        None,
        Some("application/json"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("image/png"),
    ];
    for (seq, content_type) in (1u64..).zip(types) {
        let mut request = http
            .post(format!("{}/poll?v=1&sid={sid}", server.base))
            .body(json!([{"t":"m","s":seq,"d":"typed"}]).to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{content_type:?}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer, json!([{"t":"ack","a":seq}]), "{content_type:?}");
        assert_eq!(recv_text(&session).await, "typed");

        let mut request = http
            .post(format!("{}/open?v=1", server.base))
            .body(r#"{"auth":{"token":"t"}}"#);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{content_type:?}");
        let _ = server.next_session().await;
    }
}

#[tokio::test]
async fn client_js_if_none_match_uses_weak_comparison_and_star_matches() {
    let server = start_default().await;
    let http = reqwest::Client::new();
    let url = format!("{}/client.js", server.base);
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    let weak = format!("W/{etag}");
    let listed = format!("\"other\", W/{etag}");
    for (if_none_match, status) in [
        (etag.as_str(), StatusCode::NOT_MODIFIED),
        (weak.as_str(), StatusCode::NOT_MODIFIED),
        ("*", StatusCode::NOT_MODIFIED),
        (listed.as_str(), StatusCode::NOT_MODIFIED),
        ("\"other\"", StatusCode::OK),
        ("W/\"other\"", StatusCode::OK),
        (&etag[1..etag.len() - 1], StatusCode::OK),
    ] {
        let response = http
            .get(&url)
            .header("if-none-match", if_none_match)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "If-None-Match: {if_none_match}");
        assert_eq!(response.headers()["etag"], etag.as_str());
    }
}
