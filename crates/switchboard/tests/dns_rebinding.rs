//! The host allow-list (issue 11, item 6; `docs/protocol.md` §13): a page whose own name was
//! pointed at the server (DNS rebinding) is same-origin with itself, so only its `Host` header
//! gives it away.
#![allow(clippy::unwrap_used)]

mod common;

use common::TestServer;
use serde_json::Value;
use switchboard::Switchboard;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw request with the given `Host` and `Origin`; the status and the body.
async fn request(server: &TestServer, head: &str, host: &str, body: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let origin = format!("http://{host}");
    let request = format!(
        "{head} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn requests_for_a_host_not_listed_are_refused_on_every_route() {
    let realtime = Switchboard::builder()
        .allowed_hosts(["localhost", "127.0.0.1"])
        .build();
    let server = TestServer::start_served(realtime, |serve| serve).await;
    let port = server.addr.port();
    let evil = format!("evil.example:{port}");
    for (head, body) in [
        ("POST /rt/open?v=1", ""),
        (
            "GET /rt/poll?v=1&sid=00000000000000000000000000000000&ack=0",
            "",
        ),
        (
            "POST /rt/poll?v=1&sid=00000000000000000000000000000000",
            "[]",
        ),
        ("GET /rt/ws?v=1", ""),
    ] {
        let (status, body) = request(&server, head, &evil, body).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("host_not_allowed")),
            "{head}"
        );
    }
    assert_eq!(server.realtime.session_count(), 0);
    // The listed names, with any port: served. (The message is Korean, as a real page's might be.)
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (status, open) = request(&server, "POST /rt/open?v=1", &host, "").await;
        assert_eq!(status, 200, "{host}: {open}");
        let sid = open["sid"].as_str().unwrap();
        let (status, answer) = request(
            &server,
            &format!("POST /rt/poll?v=1&sid={sid}"),
            &host,
            r#"[{"t":"m","s":1,"d":"안녕하세요 🏠"}]"#,
        )
        .await;
        assert_eq!((status, answer[0]["a"].as_u64()), (200, Some(1)));
    }
}

#[tokio::test]
async fn without_an_allow_list_any_host_is_answered() {
    let server = TestServer::start_served(Switchboard::builder().build(), |serve| serve).await;
    let (status, _) = request(&server, "POST /rt/open?v=1", "evil.example", "").await;
    assert_eq!(status, 200);
}
