//! Every row of docs/protocol.md §7 (HTTP errors) and §11 (limits) has a case here, run over
//! real sockets, that provokes exactly that row's condition and checks the documented outcome.
//!
//! The tables are read from the document itself at test time: a row added to the document
//! without a case, or a case whose row is gone, fails the test. A case is one entry in
//! [`section_7`] or [`section_11`]; rows proven by a test elsewhere name that test, and the
//! test's file is read here to check that it still exists.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, eventually, get, next_json, open, post, start_default};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::backend::{Backend, BackendError, BoxFuture, Delivery, Owner, SessionRef, Topic};
use switchboard::{CloseReason, JoinError, Refusal, SendError, Switchboard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, client::IntoClientRequest};

const PROTOCOL: &str = include_str!("../../../docs/protocol.md");

type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How a row is proven.
enum Proof {
    /// By the case, run here.
    Here(fn() -> CaseFuture),
    /// By the test `test` in the file at `path` (relative to the repository), whose text is
    /// `source` (read with `include_str!`, so that a moved file fails to compile).
    Elsewhere {
        path: &'static str,
        source: &'static str,
        test: &'static str,
    },
}

/// One entry of a table's case list: `key` names the row (see [`Row::matches`]).
struct Case {
    key: &'static str,
    proof: Proof,
}

fn here(key: &'static str, run: fn() -> CaseFuture) -> Case {
    Case {
        key,
        proof: Proof::Here(run),
    }
}

/// The cases of §7, one per row, keyed `"<status> <error code>"`.
fn section_7() -> Vec<Case> {
    vec![
        here("400 bad_request", || Box::pin(bad_request())),
        here("400 malformed_frame", || Box::pin(malformed_frame())),
        here(
            "400 unsupported_version",
            || Box::pin(unsupported_version()),
        ),
        here("401 unauthorized", || Box::pin(unauthorized())),
        here("403 forbidden", || Box::pin(forbidden())),
        here("403 origin_not_allowed", || Box::pin(origin_not_allowed())),
        here("404 unknown_session", || Box::pin(unknown_session())),
        here("405 method_not_allowed", || Box::pin(method_not_allowed())),
        here("409 superseded", || Box::pin(superseded())),
        here("413 payload_too_large", || Box::pin(payload_too_large())),
        here("429 too_many_requests", || Box::pin(too_many_requests())),
        here("503 session_limit", || Box::pin(session_limit())),
        here("503 shutting_down", || Box::pin(shutting_down())),
        here(
            "503 backend_unavailable",
            || Box::pin(backend_unavailable()),
        ),
        here("503 forward_timeout", || Box::pin(forward_timeout())),
        Case {
            key: "503 forward_busy",
            // 10 000 forwarded requests waiting at once need 20 000 sockets on one machine:
            // the limit is proven on the node itself.
            proof: Proof::Elsewhere {
                path: "crates/switchboard/src/node.rs",
                source: include_str!("../src/node.rs"),
                test: "a_node_with_10_000_forwarded_requests_waiting_answers_503_forward_busy",
            },
        },
        here("503 handover_unavailable", || {
            Box::pin(handover_unavailable())
        }),
        hardening(
            "403 host_not_allowed",
            DNS_REBINDING,
            "requests_for_a_host_not_listed_are_refused_on_every_route",
        ),
        hardening(
            "408 request_timeout",
            CONNECTIONS,
            "a_declared_body_that_never_arrives_is_answered_408",
        ),
        hardening(
            "429 open_rate_limited",
            ADDRESS_LIMITS,
            "a_session_flood_from_one_address_leaves_other_clients_opening",
        ),
        hardening(
            "429 address_session_limit",
            ADDRESS_LIMITS,
            "an_address_holds_at_most_its_cap_over_every_transport",
        ),
    ]
}

/// The files of the hardening tests (issue 11), which prove the rows of the per-address limits
/// and of `switchboard::serve` over real sockets, each with a server configured for its row.
type TestFile = (&'static str, &'static str);
const ADDRESS_LIMITS: TestFile = (
    "crates/switchboard/tests/address_limits.rs",
    include_str!("address_limits.rs"),
);
const CONNECTIONS: TestFile = (
    "crates/switchboard/tests/connections.rs",
    include_str!("connections.rs"),
);
const DNS_REBINDING: TestFile = (
    "crates/switchboard/tests/dns_rebinding.rs",
    include_str!("dns_rebinding.rs"),
);
const LOG_BUDGET: TestFile = (
    "crates/switchboard/tests/log_budget.rs",
    include_str!("log_budget.rs"),
);

/// A row proven by the test `test` of one of the hardening test files.
fn hardening(key: &'static str, (path, source): TestFile, test: &'static str) -> Case {
    Case {
        key,
        proof: Proof::Elsewhere { path, source, test },
    }
}

/// The cases of §11, one per row, keyed by the row's first column (without backticks).
fn section_11() -> Vec<Case> {
    vec![
        here("max_message (payload bytes)", || Box::pin(max_message())),
        here("max_body (POST body bytes)", || Box::pin(max_body())),
        here("buffered outbound messages per session", || {
            Box::pin(buffered_messages())
        }),
        here("buffered outbound bytes per session", || {
            Box::pin(buffered_bytes())
        }),
        here(
            "inbound queue per session (messages the application has not taken yet)",
            || Box::pin(inbound_queue()),
        ),
        here("sessions per server", || Box::pin(sessions_per_server())),
        here("concurrent POSTs per session", || {
            Box::pin(too_many_requests())
        }),
        here("concurrent draining transports per session", || {
            Box::pin(draining_transports())
        }),
        here("rooms per session", || Box::pin(rooms_per_session())),
        here("long-poll hold", || Box::pin(long_poll_hold())),
        here("resume window", || Box::pin(resume_window())),
        here("WebSocket heartbeat", || Box::pin(websocket_heartbeat())),
        here(
            "WebSocket write stall",
            || Box::pin(websocket_write_stall()),
        ),
        hardening(
            "handshake window (a new session no transport has attached to and no POST has named)",
            ADDRESS_LIMITS,
            "a_session_nobody_uses_expires_after_the_handshake_window",
        ),
        hardening(
            "sessions per client address (IPv4 address, or IPv6 /64)",
            ADDRESS_LIMITS,
            "an_address_holds_at_most_its_cap_over_every_transport",
        ),
        hardening(
            "new sessions per client address",
            ADDRESS_LIMITS,
            "a_session_flood_from_one_address_leaves_other_clients_opening",
        ),
        hardening(
            "rejected frames per WebSocket",
            LOG_BUDGET,
            "a_socket_of_bad_frames_is_closed_after_its_budget_with_one_log_line",
        ),
        hardening(
            "request head size (switchboard::serve)",
            CONNECTIONS,
            "oversized_headers_are_answered_431_and_do_not_pile_up",
        ),
        hardening(
            "time to send a request head, and idle time of a kept-alive connection (switchboard::serve)",
            CONNECTIONS,
            "silent_partial_and_trickling_connections_are_closed_after_the_header_timeout",
        ),
        hardening(
            "time to send a request body (switchboard::serve)",
            CONNECTIONS,
            "a_declared_body_that_never_arrives_is_answered_408",
        ),
        hardening(
            "open connections (switchboard::serve)",
            CONNECTIONS,
            "an_idle_connection_flood_sheds_the_oldest_idle_and_keeps_websockets_and_normal_clients",
        ),
    ]
}

// ---- the tables ---------------------------------------------------------------------------

/// A row of a table of the document.
#[derive(Debug)]
struct Row {
    /// `"<status> <error code>"` for §7, the first column for §11.
    key: String,
    /// The whole row, for messages and to tell apart rows with equal keys.
    text: String,
}

impl Row {
    /// Whether case key `key` names this row: equal keys, or `"<key> / <words>"` where the words
    /// occur in the row (for two rows with one key).
    fn matches(&self, key: &str) -> bool {
        match key.split_once(" / ") {
            Some((key, words)) => self.key == key && self.text.contains(words),
            None => self.key == key,
        }
    }
}

/// The cells of the table rows in section `heading` (header and separator lines skipped).
fn table(heading: &str) -> Vec<Vec<String>> {
    let start = PROTOCOL
        .lines()
        .position(|line| line.starts_with(heading))
        .unwrap_or_else(|| panic!("docs/protocol.md has no section {heading:?}"));
    let mut rows = Vec::new();
    for line in PROTOCOL.lines().skip(start + 1) {
        if line.starts_with("## ") {
            break;
        }
        if let Some(inner) = line.trim().strip_prefix('|') {
            let cells: Vec<String> = inner
                .trim_end_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_string())
                .collect();
            rows.push(cells);
        }
    }
    // The header line and the separator line.
    assert!(rows.len() > 2, "section {heading:?} has no table");
    assert!(rows[1].iter().all(|cell| cell.starts_with("---")));
    rows.split_off(2)
}

fn section_7_rows() -> Vec<Row> {
    table("## 7. HTTP errors")
        .into_iter()
        .map(|cells| {
            let code = cells[1]
                .split('`')
                .nth(1)
                .unwrap_or_else(|| panic!("§7 row without an error code: {cells:?}"));
            Row {
                key: format!("{} {code}", cells[0]),
                text: cells.join(" | "),
            }
        })
        .collect()
}

fn section_11_rows() -> Vec<Row> {
    table("## 11. Limits")
        .into_iter()
        .map(|cells| Row {
            key: cells[0].replace('`', ""),
            text: cells.join(" | "),
        })
        .collect()
}

/// Pairs rows and cases; what does not pair is added to `failures`.
fn pair<'a>(
    section: &str,
    rows: &'a [Row],
    cases: &'a [Case],
    failures: &mut Vec<String>,
) -> Vec<(&'a Row, &'a Case)> {
    let mut pairs = Vec::new();
    for row in rows {
        let matching: Vec<&Case> = cases.iter().filter(|case| row.matches(case.key)).collect();
        match matching[..] {
            [case] => pairs.push((row, case)),
            [] => failures.push(format!(
                "§{section}: row {:?} has no case (add one to section_{section}())",
                row.text
            )),
            _ => failures.push(format!("§{section}: row {:?} has several cases", row.text)),
        }
    }
    for case in cases {
        match rows.iter().filter(|row| row.matches(case.key)).count() {
            1 => {}
            0 => failures.push(format!(
                "§{section}: case {:?} names no row of the document",
                case.key
            )),
            _ => failures.push(format!(
                "§{section}: case {:?} names several rows: add \" / <words of its row>\"",
                case.key
            )),
        }
    }
    pairs
}

/// Checks that `source` (the file at `path`) still holds the test function `test`.
fn check_elsewhere(path: &str, source: &str, test: &str) -> Result<(), String> {
    let Some(at) = source.find(&format!("fn {test}(")) else {
        return Err(format!("{path} has no function {test}"));
    };
    // The attribute is on one of the lines just above the function.
    let before: Vec<&str> = source[..at].lines().rev().take(3).collect();
    if before
        .iter()
        .any(|line| line.contains("#[test]") || line.contains("#[tokio::test"))
    {
        Ok(())
    } else {
        Err(format!("{path}: {test} is not a test"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_sections_7_and_11_has_a_case_that_gets_its_documented_outcome() {
    let (rows_7, rows_11) = (section_7_rows(), section_11_rows());
    let (cases_7, cases_11) = (section_7(), section_11());
    let mut failures = Vec::new();
    let mut pairs = pair("7", &rows_7, &cases_7, &mut failures);
    pairs.extend(pair("11", &rows_11, &cases_11, &mut failures));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every case has its own server: they run side by side.
    let mut running = Vec::new();
    for (row, case) in &pairs {
        match &case.proof {
            Proof::Here(run) => running.push((row.key.clone(), tokio::spawn(run()))),
            Proof::Elsewhere { path, source, test } => {
                if let Err(err) = check_elsewhere(path, source, test) {
                    failures.push(format!("{}: {err}", row.key));
                }
            }
        }
    }
    for (key, task) in running {
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failures.push(format!("{key}: {err}")),
            Err(_) => failures.push(format!("{key}: no outcome within 60 s")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- helpers ------------------------------------------------------------------------------

/// Checks a §7 error answer: the status, `application/json`, and exactly
/// `{"error": code, "message": <text>}`.
async fn assert_error(response: reqwest::Response, status: u16, code: &str, what: &str) {
    assert_eq!(response.status().as_u16(), status, "{what}");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap()),
        Some("application/json"),
        "{what}"
    );
    let body: Value = response.json().await.unwrap();
    let object = body.as_object().unwrap();
    assert_eq!(object.len(), 2, "{what}: {body}");
    assert_eq!(body["error"], code, "{what}: {body}");
    assert!(body["message"].is_string(), "{what}: {body}");
}

async fn get_error(http: &reqwest::Client, url: String, status: u16, code: &str) {
    let response = http.get(&url).send().await.unwrap();
    assert_error(response, status, code, &url).await;
}

async fn post_error(
    http: &reqwest::Client,
    url: String,
    body: impl Into<reqwest::Body>,
    status: u16,
    code: &str,
) {
    let response = http.post(&url).body(body).send().await.unwrap();
    assert_error(response, status, code, &url).await;
}

/// The close code and reason a WebSocket to `url` is closed with, skipping other messages.
async fn ws_close(url: &str) -> (u16, String) {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    close_of(&mut socket).await
}

async fn close_of(socket: &mut common::Ws) -> (u16, String) {
    for _ in 0..1000 {
        match tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("no close within 20 s")
        {
            Some(Ok(WsMessage::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(WsMessage::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
    panic!("no close within 1000 messages")
}

/// Sends `request` on a raw connection and returns what the server answers before it closes
/// (at most 10 s).
async fn raw_http(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Writes `head` (request line and headers), sends no body, and returns what the server answers
/// (up to the end of a JSON body) within 10 s.
async fn answer_without_body(addr: std::net::SocketAddr, head: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut answer = Vec::new();
    let mut buffer = vec![0u8; 4096];
    while !answer.ends_with(b"}") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => answer.extend_from_slice(&buffer[..read]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The next message the application receives, as text.
async fn recv_text(session: &switchboard::Session<impl Clone + Send + Sync + 'static>) -> String {
    let message = tokio::time::timeout(Duration::from_secs(10), session.recv())
        .await
        .expect("no message within 10 s")
        .expect("session ended");
    message.as_text().unwrap()
}

const UNKNOWN_SID: &str = "0123456789abcdef0123456789abcdef";

// ---- §7 -----------------------------------------------------------------------------------

async fn bad_request() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let base = &server.base;
    // Missing or malformed query parameters, a sid that is not 32 hex digits, a parameter twice.
    for query in [
        "v=1".to_string(),
        "v=1&sid=not-a-sid".to_string(),
        format!("v=1&sid={sid}0"),
        format!("v=1&sid={sid}&ack=-1"),
        format!("v=1&sid={sid}&wait=1.0"),
        format!("v=1&sid={sid}&att=%201"),
        format!("v=1&sid={sid}&sid={sid}"),
    ] {
        get_error(&http, format!("{base}/poll?{query}"), 400, "bad_request").await;
        post_error(
            &http,
            format!("{base}/poll?{query}"),
            "[]",
            400,
            "bad_request",
        )
        .await;
    }
    // A POST /open body that is neither empty nor a JSON object.
    for body in ["[]", "\"안녕\"", "{\"auth\":1} 👋"] {
        post_error(&http, format!("{base}/open?v=1"), body, 400, "bad_request").await;
    }
    // A GET /ws without upgrade headers.
    get_error(&http, format!("{base}/ws?v=1"), 400, "bad_request").await;
    // A body that could not be read (broken chunked encoding).
    let request = format!(
        "POST /rt/poll?v=1&sid={sid} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\nzz\r\n[]\r\n0\r\n\r\n",
        server.addr
    );
    let answer = raw_http(server.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""error":"bad_request""#), "{answer}");
    // After the upgrade: close 4400, reason bad_request.
    for query in ["&auth=abc", "&ack=1&ack=2", "&sid=xyz"] {
        assert_eq!(
            ws_close(&server.ws_url(query)).await,
            (4400, "bad_request".to_string()),
            "{query}"
        );
    }
    // None of it touched the session.
    let (status, answer) = post(
        &http,
        base,
        &sid,
        json!([{"t":"m","s":1,"d":"안녕 👋"}]).to_string(),
    )
    .await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!([{"t":"ack","a":1}]))
    );
    assert_eq!(recv_text(&session).await, "안녕 👋");
}

async fn malformed_frame() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let url = format!("{}/poll?v=1&sid={sid}", server.base);
    for body in [
        json!([{"t":"m","s":1,"d":"안녕"},{"t":"m","s":2}]).to_string(),
        json!([{"t":"m","s":1,"d":"안녕"},{"t":"m","s":"2","d":"🎉"}]).to_string(),
        r#"[{"t":"m","s":1,"d":"x"},{"t":"m","s":2.0,"d":"y"}]"#.to_string(),
        json!([{"t":"m","s":1,"b":"%%%"}]).to_string(),
        "{}".to_string(),
        "".to_string(),
        "[1]".to_string(),
    ] {
        post_error(&http, url.clone(), body, 400, "malformed_frame").await;
    }
    // Nothing of any rejected body was delivered: s=1 is still the next message.
    let (_, answer) = post(&http, &server.base, &sid, "[]").await;
    assert_eq!(answer, json!([{"t":"ack","a":0}]));
    assert!(!session.is_closed());
}

async fn unsupported_version() {
    let server = start_default().await;
    let http = reqwest::Client::new();
    let base = &server.base;
    for v in ["2", "abc", "", "01"] {
        post_error(
            &http,
            format!("{base}/open?v={v}"),
            "",
            400,
            "unsupported_version",
        )
        .await;
        // Checked before everything else: a sid that means nothing in version 1 included.
        get_error(
            &http,
            format!("{base}/poll?v={v}&sid=zz"),
            400,
            "unsupported_version",
        )
        .await;
        post_error(
            &http,
            format!("{base}/poll?v={v}"),
            "[",
            400,
            "unsupported_version",
        )
        .await;
        let url = format!("ws://{}/rt/ws?v={v}", server.addr);
        assert_eq!(
            ws_close(&url).await,
            (4400, "unsupported_version".to_string())
        );
    }
}

/// A server whose hook accepts the token "good", refuses "banned" with 403, "lost" with 404
/// (which clients must not see) and anything else with the default 401.
async fn server_with_hook() -> TestServer<String> {
    TestServer::start(
        Switchboard::builder()
            .authenticate(|handshake| async move {
                let token = handshake
                    .auth()
                    .and_then(|auth| auth.get("token"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                match token.as_deref() {
                    Some("good") => Ok("사용자".to_string()),
                    Some("banned") => Err(Refusal::forbidden("금지 🚫")),
                    Some("lost") => Err(Refusal::with_status(StatusCode::NOT_FOUND, "nope")),
                    Some("moved") => Err(Refusal::with_status(StatusCode::CONFLICT, "nope")),
                    _ => Err(Refusal::unauthorized("token required")),
                }
            })
            .build(),
    )
    .await
}

async fn unauthorized() {
    let mut server = server_with_hook().await;
    let http = reqwest::Client::new();
    let url = format!("{}/open?v=1", server.base);
    for body in [
        "".to_string(),
        json!({"auth":{"token":"bad"}}).to_string(),
        json!({"auth":{"token":"lost"}}).to_string(),
        json!({"auth":{"token":"moved"}}).to_string(),
    ] {
        post_error(&http, url.clone(), body, 401, "unauthorized").await;
    }
    let auth = "&auth=%7B%22token%22%3A%22lost%22%7D";
    assert_eq!(
        ws_close(&server.ws_url(auth)).await,
        (4401, "unauthorized".to_string())
    );
    assert_eq!(server.realtime.session_count(), 0);
    // The good token opens.
    let response = http
        .post(&url)
        .body(json!({"auth":{"token":"good"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.next_session().await.user(), "사용자");
}

async fn forbidden() {
    let server = server_with_hook().await;
    let http = reqwest::Client::new();
    post_error(
        &http,
        format!("{}/open?v=1", server.base),
        json!({"auth":{"token":"banned"}}).to_string(),
        403,
        "forbidden",
    )
    .await;
    let auth = "&auth=%7B%22token%22%3A%22banned%22%7D";
    assert_eq!(
        ws_close(&server.ws_url(auth)).await,
        (4403, "forbidden".to_string())
    );
    assert_eq!(server.realtime.session_count(), 0);
}

async fn origin_not_allowed() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .allowed_origins(["https://app.example"])
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    session.send("비밀 🔒").unwrap();
    let evil = "https://evil.example";
    for (method, url) in [
        (reqwest::Method::POST, format!("{}/open?v=1", server.base)),
        (
            reqwest::Method::GET,
            format!("{}/poll?v=1&sid={sid}&wait=0", server.base),
        ),
        (
            reqwest::Method::POST,
            format!("{}/poll?v=1&sid={sid}", server.base),
        ),
        (reqwest::Method::GET, format!("{}/ws?v=1", server.base)),
    ] {
        let response = http
            .request(method, &url)
            .header("origin", evil)
            .body(json!([{"t":"m","s":1,"d":"forged"}]).to_string())
            .send()
            .await
            .unwrap();
        assert_error(response, 403, "origin_not_allowed", &url).await;
    }
    let mut request = server.ws_url("").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", evil.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403 before the upgrade, got {other:?}"),
    }
    // Nothing changed: one session, the message still buffered, the forged one not delivered.
    assert_eq!(server.realtime.session_count(), 1);
    let (_, frames) = get(&http, server.poll_url(&sid, 0, false)).await;
    assert_eq!(frames, json!([{"t":"m","s":1,"d":"비밀 🔒"}]));
    let (_, answer) = post(&http, &server.base, &sid, "[]").await;
    assert_eq!(answer, json!([{"t":"ack","a":0}]));
}

async fn unknown_session() {
    let server = start_default().await;
    let http = reqwest::Client::new();
    // Unknown, and in capitals (the same unknown session).
    for sid in [UNKNOWN_SID.to_string(), UNKNOWN_SID.to_uppercase()] {
        let base = &server.base;
        get_error(
            &http,
            format!("{base}/poll?v=1&sid={sid}&wait=0"),
            404,
            "unknown_session",
        )
        .await;
        post_error(
            &http,
            format!("{base}/poll?v=1&sid={sid}"),
            "[]",
            404,
            "unknown_session",
        )
        .await;
        assert_eq!(
            ws_close(&server.ws_url(&format!("&sid={sid}"))).await,
            (4404, "unknown_session".to_string())
        );
    }
    // Ended and reaped: covered by the resume window row of §11.
}

async fn method_not_allowed() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let base = &server.base;
    for (method, url, allow) in [
        ("GET", format!("{base}/open?v=1"), "POST"),
        ("HEAD", format!("{base}/open?v=1"), "POST"),
        ("PUT", format!("{base}/open?v=1"), "POST"),
        (
            "DELETE",
            format!("{base}/poll?v=1&sid={sid}"),
            "GET,HEAD,POST",
        ),
        (
            "PATCH",
            format!("{base}/poll?v=1&sid={sid}"),
            "GET,HEAD,POST",
        ),
        (
            "OPTIONS",
            format!("{base}/poll?v=1&sid={sid}"),
            "GET,HEAD,POST",
        ),
        ("POST", format!("{base}/ws?v=1"), "GET,HEAD"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = http
            .request(method.clone(), &url)
            .body(json!([{"t":"m","s":1,"d":"😶"}]).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["allow"], allow, "{method} {url}");
        if method == reqwest::Method::HEAD {
            assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        } else {
            assert_error(
                response,
                405,
                "method_not_allowed",
                &format!("{method} {url}"),
            )
            .await;
        }
    }
    // Nothing was delivered.
    let (_, answer) = post(&http, base, &sid, "[]").await;
    assert_eq!(answer, json!([{"t":"ack","a":0}]));
    assert!(!session.is_closed());
}

async fn superseded() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    // A poll that waits is taken over by a newer one.
    let first = common::spawn_get(&http, server.poll_url(&sid, 0, true));
    assert!(eventually(Duration::from_secs(10), || session.transport().is_some()).await);
    let second = common::spawn_get(&http, format!("{}&att=5", server.poll_url(&sid, 0, true)));
    let response = first.await.unwrap();
    assert_eq!(response.0, StatusCode::CONFLICT);
    assert_eq!(response.1["error"], "superseded");
    // A stale poll (lower att than one attached) is answered at once and takes nothing over.
    let stale = format!("{}&att=4", server.poll_url(&sid, 0, false));
    get_error(&http, stale, 409, "superseded").await;
    session.send("두 번째 🎉").unwrap();
    let (status, frames) = second.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(frames, json!([{"t":"m","s":1,"d":"두 번째 🎉"}]));
}

async fn payload_too_large() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .max_message_size(64)
            .max_body_size(1024)
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let url = format!("{}/poll?v=1&sid={sid}", server.base);
    // A body larger than max_body.
    post_error(
        &http,
        url.clone(),
        format!("[{}]", " ".repeat(1100)),
        413,
        "payload_too_large",
    )
    .await;
    post_error(
        &http,
        format!("{}/open?v=1", server.base),
        " ".repeat(1100),
        413,
        "payload_too_large",
    )
    .await;
    // A payload larger than max_message, after a valid frame: nothing delivered.
    let body = json!([{"t":"m","s":1,"d":"ok"},{"t":"m","s":2,"d":"한".repeat(30)}]).to_string();
    post_error(&http, url.clone(), body, 413, "payload_too_large").await;
    let body = json!([{"t":"m","s":1,"b":base64_of(&[0xff; 65])}]).to_string();
    post_error(&http, url, body, 413, "payload_too_large").await;
    // A declared Content-Length above max_body is answered before any of the body is sent.
    let head = format!(
        "POST /rt/poll?v=1&sid={sid} HTTP/1.1\r\nHost: {}\r\nContent-Length: 10000000000\r\n\r\n",
        server.addr
    );
    let answer = answer_without_body(server.addr, &head).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#""error":"payload_too_large""#),
        "{answer}"
    );
    let (_, answer) = post(&http, &server.base, &sid, "[]").await;
    assert_eq!(answer, json!([{"t":"ack","a":0}]));
    assert!(!session.is_closed());
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn too_many_requests() {
    // The application's queue holds one message: a POST of three delivers the first, then
    // waits for room. Once the application has taken the first, the POST is still waiting (the
    // second fills the queue, the third waits), so another POST finds it in progress.
    let mut server = TestServer::start(Switchboard::builder().inbound_queue(1).build()).await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let body =
        json!([{"t":"m","s":1,"d":"하나"},{"t":"m","s":2,"d":"둘"},{"t":"m","s":3,"b":"8J+OiQ=="}]);
    let first = tokio::spawn({
        let (http, base, sid) = (http.clone(), server.base.clone(), sid.clone());
        async move { post(&http, &base, &sid, body.to_string()).await }
    });
    assert_eq!(recv_text(&session).await, "하나");
    post_error(
        &http,
        format!("{}/poll?v=1&sid={sid}", server.base),
        json!([{"t":"m","s":4,"d":"넷"}]).to_string(),
        429,
        "too_many_requests",
    )
    .await;
    assert_eq!(recv_text(&session).await, "둘");
    let third = tokio::time::timeout(Duration::from_secs(10), session.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.as_bytes().unwrap().as_ref(), "🎉".as_bytes());
    let (status, answer) = first.await.unwrap();
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!([{"t":"ack","a":3}]))
    );
    // The refused POST delivered nothing: s=4 is still expected.
    let (_, answer) = post(
        &http,
        &server.base,
        &sid,
        json!([{"t":"m","s":4,"d":"넷"}]).to_string(),
    )
    .await;
    assert_eq!(answer, json!([{"t":"ack","a":4}]));
}

async fn session_limit() {
    let mut server = TestServer::start(Switchboard::builder().max_sessions(1).build()).await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    post_error(
        &http,
        format!("{}/open?v=1", server.base),
        "",
        503,
        "session_limit",
    )
    .await;
    assert_eq!(
        ws_close(&server.ws_url("")).await,
        (4503, "session_limit".to_string())
    );
    assert_eq!(server.realtime.session_count(), 1);
    let (_, answer) = post(
        &http,
        &server.base,
        &sid,
        json!([{"t":"m","s":1,"d":"👋"}]).to_string(),
    )
    .await;
    assert_eq!(answer, json!([{"t":"ack","a":1}]));
    assert_eq!(recv_text(&session).await, "👋");
}

async fn shutting_down() {
    let server = start_default().await;
    let http = reqwest::Client::new();
    server.realtime.shutdown().await;
    post_error(
        &http,
        format!("{}/open?v=1", server.base),
        "",
        503,
        "shutting_down",
    )
    .await;
    assert_eq!(
        ws_close(&server.ws_url("")).await,
        (4503, "shutting_down".to_string())
    );
}

/// A cluster backend whose other node never answers (`answering: false` also makes the
/// engine unreachable when `reachable` is false).
#[derive(Debug)]
struct Ghost {
    /// Whether the engine can be reached; if so, every session belongs to node "ghost", which
    /// takes requests and never answers.
    reachable: bool,
}

impl Ghost {
    fn result<T>(&self, value: T) -> Result<T, BackendError> {
        if self.reachable {
            Ok(value)
        } else {
            Err(BackendError::new("the engine cannot be reached"))
        }
    }
}

impl Backend for Ghost {
    fn node_id(&self) -> &str {
        "here"
    }
    fn node_number(&self) -> u32 {
        1
    }
    fn start(&self, _deliver: Arc<dyn Fn(Delivery) + Send + Sync>) {}
    fn publish(&self, _topic: Topic<'_>, _payload: bytes::Bytes) -> Result<(), BackendError> {
        self.result(())
    }
    fn subscribe(&self, _room: &str) {}
    fn unsubscribe(&self, _room: &str) {}
    fn send_to_node<'a>(
        &'a self,
        _node: &'a str,
        _payload: bytes::Bytes,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move { self.result(true) })
    }
    fn claim(&self, _session: SessionRef, _key: u64) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.result(()) })
    }
    fn owner(&self, _session: SessionRef) -> BoxFuture<'_, Result<Option<Owner>, BackendError>> {
        Box::pin(async move {
            self.result(Some(Owner {
                node: "ghost".into(),
                key: 7,
            }))
        })
    }
    fn release(&self, _session: SessionRef, _key: u64) {}
    fn refresh(
        &self,
        _sessions: Vec<(SessionRef, u64)>,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.result(()) })
    }
    fn hand_over<'a>(
        &'a self,
        _session: SessionRef,
        _key: u64,
        _to: &'a str,
        _state: bytes::Bytes,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move { self.result(false) })
    }
    fn take_state(
        &self,
        _session: SessionRef,
    ) -> BoxFuture<'_, Result<Option<bytes::Bytes>, BackendError>> {
        Box::pin(async move { self.result(None) })
    }
    fn live_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        Box::pin(async move { self.result(vec!["here".into(), "ghost".into()]) })
    }
    fn node_alive<'a>(&'a self, _node: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move { self.result(true) })
    }
    fn set_presence(&self, _room: &str, _entry: bytes::Bytes) {}
    fn presence<'a>(
        &'a self,
        _room: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, bytes::Bytes)>, BackendError>> {
        Box::pin(async move { self.result(Vec::new()) })
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.result(()) })
    }
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

async fn ghost_server(reachable: bool) -> TestServer<String> {
    TestServer::start(
        Switchboard::builder()
            .authenticate(|_| async { Ok("사용자".to_string()) })
            .backend(Ghost { reachable })
            .build(),
    )
    .await
}

async fn backend_unavailable() {
    let server = ghost_server(false).await;
    let http = reqwest::Client::new();
    let base = &server.base;
    // A session this node does not hold, and the engine that would say who does is gone.
    get_error(
        &http,
        format!("{base}/poll?v=1&sid={UNKNOWN_SID}&wait=0"),
        503,
        "backend_unavailable",
    )
    .await;
    post_error(
        &http,
        format!("{base}/poll?v=1&sid={UNKNOWN_SID}"),
        "[]",
        503,
        "backend_unavailable",
    )
    .await;
    let url = server.ws_url(&format!("&sid={UNKNOWN_SID}"));
    assert_eq!(
        ws_close(&url).await,
        (4503, "backend_unavailable".to_string())
    );
}

async fn forward_timeout() {
    let server = ghost_server(true).await;
    let http = reqwest::Client::new();
    let base = &server.base;
    // The owner takes the forwarded request and never answers (5 s).
    tokio::join!(
        get_error(
            &http,
            format!("{base}/poll?v=1&sid={UNKNOWN_SID}&wait=0"),
            503,
            "forward_timeout"
        ),
        post_error(
            &http,
            format!("{base}/poll?v=1&sid={UNKNOWN_SID}"),
            json!([{"t":"m","s":1,"d":"안녕"}]).to_string(),
            503,
            "forward_timeout"
        ),
    );
}

async fn handover_unavailable() {
    let server = ghost_server(true).await;
    // The WebSocket would take the session over from its owner, which never answers.
    let url = server.ws_url(&format!("&sid={UNKNOWN_SID}"));
    assert_eq!(
        ws_close(&url).await,
        (4503, "handover_unavailable".to_string())
    );
}

// ---- §11 ----------------------------------------------------------------------------------

async fn max_message() {
    let mut server = TestServer::start(Switchboard::builder().max_message_size(90).build()).await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    // POST: 413, nothing in the body delivered (a payload of exactly 90 bytes passes).
    let exact = format!("\"{}\"", "한".repeat(29) + "x");
    assert_eq!(exact.len(), 90);
    let over = format!("\"{}\"", "한".repeat(29) + "xy");
    let body = format!(r#"[{{"t":"m","s":1,"d":{exact}}},{{"t":"m","s":2,"d":{over}}}]"#);
    post_error(
        &http,
        format!("{}/poll?v=1&sid={sid}", server.base),
        body,
        413,
        "payload_too_large",
    )
    .await;
    let body = format!(r#"[{{"t":"m","s":1,"d":{exact}}}]"#);
    let (_, answer) = post(&http, &server.base, &sid, body).await;
    assert_eq!(answer, json!([{"t":"ack","a":1}]));
    assert_eq!(recv_text(&session).await, "한".repeat(29) + "x");
    // Server-side send: an error for the application, nothing sent.
    assert!(matches!(
        session.send("🎉".repeat(23)),
        Err(SendError::TooLarge { max: 90, .. })
    ));
    // WebSocket: a frame under the frame limit whose payload is too large gets an error frame,
    // and the socket goes on; a frame above the limit (4 × 30 + 1024 = 1144 bytes) closes 1009.
    let mut socket = server.ws(&format!("&sid={sid}&ack=0")).await;
    assert_eq!(next_json(&mut socket).await["t"], "open");
    let frame = format!(r#"{{"t":"m","s":2,"b":"{}"}}"#, base64_of(&[7; 91]));
    socket.send(WsMessage::text(frame)).await.unwrap();
    let error = next_json(&mut socket).await;
    assert_eq!(
        (error["t"].as_str(), error["code"].as_str()),
        (Some("error"), Some("payload_too_large")),
        "{error}"
    );
    socket
        .send(WsMessage::text(json!({"t":"m","s":2,"d":"둘"}).to_string()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await, json!({"t":"ack","a":2}));
    assert_eq!(recv_text(&session).await, "둘");
    let frame = format!(r#"{{"t":"m","s":3,"d":"{}"}}"#, "x".repeat(1144));
    socket.send(WsMessage::text(frame)).await.unwrap();
    assert_eq!(close_of(&mut socket).await.0, 1009);
    assert!(!session.is_closed());
}

async fn max_body() {
    let server = TestServer::start(
        Switchboard::builder()
            .max_message_size(100)
            .max_body_size(1000)
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let exact = format!("[{}]", " ".repeat(998));
    let (status, answer) = post(&http, &server.base, &sid, exact).await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!([{"t":"ack","a":0}]))
    );
    let over = format!("[{}]", " ".repeat(999));
    post_error(
        &http,
        format!("{}/poll?v=1&sid={sid}", server.base),
        over,
        413,
        "payload_too_large",
    )
    .await;
}

/// Polls `sid` at once and returns its frames.
async fn short_poll(server: &TestServer, sid: &str) -> Value {
    let (status, frames) = get(&reqwest::Client::new(), server.poll_url(sid, 0, false)).await;
    assert_eq!(status, StatusCode::OK, "{frames}");
    frames
}

async fn buffered_messages() {
    let mut server =
        TestServer::start(Switchboard::builder().max_buffered_messages(4).build()).await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    for i in 1..=4 {
        session.send(format!("메시지 {i}")).unwrap();
    }
    assert_eq!(session.send("하나 더"), Err(SendError::Overflow));
    assert_eq!(session.closed().await, CloseReason::Overflow);
    assert_eq!(
        short_poll(&server, &sid).await,
        json!([{"t":"close","code":4003,"reason":"overflow"}])
    );
}

async fn buffered_bytes() {
    let mut server =
        TestServer::start(Switchboard::builder().max_buffered_bytes(1000).build()).await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let mut outcome = Ok(());
    for _ in 0..10 {
        outcome = session.send("가".repeat(100));
        if outcome.is_err() {
            break;
        }
    }
    assert_eq!(outcome, Err(SendError::Overflow));
    assert_eq!(session.closed().await, CloseReason::Overflow);
    assert_eq!(
        short_poll(&server, &sid).await,
        json!([{"t":"close","code":4003,"reason":"overflow"}])
    );
}

async fn inbound_queue() {
    // The application's queue holds one message and the application does not read: a POST of
    // two waits (back-pressure) for the hold time, then acknowledges what was delivered.
    let mut server = TestServer::start(
        Switchboard::builder()
            .inbound_queue(1)
            .poll_hold(Duration::from_millis(300))
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let body = json!([{"t":"m","s":1,"d":"첫째"},{"t":"m","s":2,"d":"둘째"}]).to_string();
    let (status, answer) = post(&http, &server.base, &sid, body.clone()).await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!([{"t":"ack","a":1}]))
    );
    // Once the application reads, the resent body delivers the rest, once.
    assert_eq!(recv_text(&session).await, "첫째");
    let (_, answer) = post(&http, &server.base, &sid, body).await;
    assert_eq!(answer, json!([{"t":"ack","a":2}]));
    assert_eq!(recv_text(&session).await, "둘째");
}

async fn sessions_per_server() {
    let mut server = TestServer::start(Switchboard::builder().max_sessions(3).build()).await;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        open(&http, &server.base).await;
        let _ = server.next_session().await;
    }
    post_error(
        &http,
        format!("{}/open?v=1", server.base),
        "",
        503,
        "session_limit",
    )
    .await;
    assert_eq!(
        ws_close(&server.ws_url("")).await,
        (4503, "session_limit".to_string())
    );
    assert_eq!(server.realtime.session_count(), 3);
}

async fn draining_transports() {
    let mut server = start_default().await;
    let http = reqwest::Client::new();
    // A WebSocket is released (4100) by a poll that takes over.
    let mut socket = server.ws("").await;
    let open_frame = next_json(&mut socket).await;
    let sid = open_frame["sid"].as_str().unwrap().to_string();
    let session = server.next_session().await;
    session.send("소켓 🔌").unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        json!({"t":"m","s":1,"d":"소켓 🔌"})
    );
    let frames = short_poll(&server, &sid).await;
    assert_eq!(
        close_of(&mut socket).await,
        (4100, "superseded".to_string())
    );
    // Not acknowledged: the poll gets it again.
    assert_eq!(frames, json!([{"t":"m","s":1,"d":"소켓 🔌"}]));
    // A waiting poll is released (409) by a newer one.
    let first = common::spawn_get(&http, server.poll_url(&sid, 1, true));
    assert!(eventually(Duration::from_secs(10), || session.transport().is_some()).await);
    let frames = short_poll(&server, &sid).await;
    assert_eq!(frames, json!([]));
    let (status, error) = first.await.unwrap();
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::CONFLICT, Some("superseded"))
    );
    assert!(!session.is_closed());
}

async fn rooms_per_session() {
    let mut server =
        TestServer::start(Switchboard::builder().max_rooms_per_session(2).build()).await;
    let http = reqwest::Client::new();
    open(&http, &server.base).await;
    let session = server.next_session().await;
    session.join("방 하나").unwrap();
    session.join("🎲").unwrap();
    assert_eq!(
        session.join("셋째 방"),
        Err(JoinError::TooManyRooms { max: 2 })
    );
    assert_eq!(session.rooms().len(), 2);
    assert!(!session.is_closed());
}

async fn long_poll_hold() {
    let server = TestServer::start(
        Switchboard::builder()
            .poll_hold(Duration::from_millis(200))
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let (status, frames) = get(&http, server.poll_url(&sid, 0, true)).await;
    assert_eq!((status, frames), (StatusCode::OK, json!([])));
}

async fn resume_window() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .resume_window(Duration::from_millis(200))
            .build(),
    )
    .await;
    let http = reqwest::Client::new();
    let sid = open(&http, &server.base).await;
    let session = server.next_session().await;
    let reason = tokio::time::timeout(Duration::from_secs(10), session.closed())
        .await
        .expect("not expired within 10 s");
    assert_eq!(reason, CloseReason::Expired);
    get_error(
        &http,
        server.poll_url(&sid, 0, false),
        404,
        "unknown_session",
    )
    .await;
    post_error(
        &http,
        format!("{}/poll?v=1&sid={sid}", server.base),
        "[]",
        404,
        "unknown_session",
    )
    .await;
    assert_eq!(
        ws_close(&server.ws_url(&format!("&sid={sid}"))).await,
        (4404, "unknown_session".to_string())
    );
}

async fn websocket_heartbeat() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .ping_interval(Duration::from_millis(100))
            .ping_timeout(Duration::from_millis(200))
            .build(),
    )
    .await;
    let mut socket = server.ws("").await;
    assert_eq!(next_json(&mut socket).await["t"], "open");
    let session = server.next_session().await;
    // The server pings; a client that never answers (nor sends anything) is dropped.
    let mut pings = 0;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("not closed within 10 s")
        {
            Some(Ok(WsMessage::Text(text))) => {
                assert_eq!(text.as_str(), r#"{"t":"ping"}"#);
                pings += 1;
            }
            Some(Ok(WsMessage::Close(frame))) => break frame.map(|frame| u16::from(frame.code)),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close: {other:?}"),
        }
    };
    assert!(pings >= 1);
    assert_eq!(closed, Some(4101));
    assert!(!session.is_closed());
}

async fn websocket_write_stall() {
    let mut server = TestServer::start(
        Switchboard::builder()
            .write_timeout(Duration::from_millis(300))
            .max_message_size(1 << 20)
            .max_buffered_bytes(256 << 20)
            .build(),
    )
    .await;
    let mut socket = server.ws("").await;
    let open_frame = next_json(&mut socket).await;
    let sid = open_frame["sid"].as_str().unwrap().to_string();
    let session = server.next_session().await;
    // The client stops reading; the server has far more to write than the sockets buffer.
    let chunk = "한".repeat(300_000);
    for _ in 0..120 {
        session.send(chunk.as_str()).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(30), || session.transport().is_none()).await,
        "the stalled socket was not dropped"
    );
    assert!(!session.is_closed());
    // The session lives on: if the client can still read the end of the socket, its close says
    // 4102; in any case the session resumes on a new transport with nothing lost.
    let mut last = 0u64;
    let mut code = None;
    for _ in 0..10_000 {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(WsMessage::Text(text)))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                if frame["t"] == "m" {
                    last = frame["s"].as_u64().unwrap();
                }
            }
            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                code = frame.map(|frame| u16::from(frame.code));
                break;
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    assert!(matches!(code, None | Some(4102)), "{code:?}");
    assert!(last < 120);
    let mut socket = server.ws(&format!("&sid={sid}&ack={last}")).await;
    let open_frame = next_json(&mut socket).await;
    assert_eq!(open_frame["resumed"], true);
    let next = next_json(&mut socket).await;
    assert_eq!(next["s"], last + 1);
}
