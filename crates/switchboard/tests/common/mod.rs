//! A real server on 127.0.0.1 for the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;
use switchboard::{Session, Switchboard};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A client WebSocket of the tests.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running server. Every new session is handed to the test through `sessions`, so the test
/// plays the application: it sends, receives and closes through the `Session` handle.
pub struct TestServer<U: Clone + Send + Sync + 'static = ()> {
    pub addr: SocketAddr,
    pub base: String,
    pub realtime: Switchboard<U>,
    pub sessions: mpsc::Receiver<Session<U>>,
}

impl<U: Clone + Send + Sync + 'static> TestServer<U> {
    /// Starts `realtime` mounted at `/rt` on an ephemeral port, served by `axum::serve`.
    pub async fn start(realtime: Switchboard<U>) -> Self {
        Self::start_with(realtime, |listener, app| async move {
            axum::serve(listener, app).await.unwrap();
        })
        .await
    }

    /// Starts `realtime` mounted at `/rt` on an ephemeral port, served by `switchboard::serve`
    /// with the limits `limits` sets.
    pub async fn start_served(
        realtime: Switchboard<U>,
        limits: impl FnOnce(switchboard::Serve) -> switchboard::Serve + Send + 'static,
    ) -> Self {
        Self::start_with(realtime, |listener, app| async move {
            limits(switchboard::serve(listener, app)).await.unwrap();
        })
        .await
    }

    /// Starts `realtime` mounted at `/rt` on an ephemeral port, served by `run`.
    pub async fn start_with<F, Fut>(realtime: Switchboard<U>, run: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener, axum::Router) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, sessions) = mpsc::channel(1024);
        let app = axum::Router::new().nest(
            "/rt",
            realtime.router(move |session: Session<U>| {
                let tx = tx.clone();
                async move {
                    let keep = session.clone();
                    if tx.send(session).await.is_ok() {
                        keep.closed().await;
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(run(listener, app));
        Self {
            addr,
            base: format!("http://{addr}/rt"),
            realtime,
            sessions,
        }
    }

    /// The next session opened by a client.
    pub async fn next_session(&mut self) -> Session<U> {
        tokio::time::timeout(Duration::from_secs(10), self.sessions.recv())
            .await
            .expect("no session opened within 10 s")
            .expect("server gone")
    }

    /// `GET /poll` for `sid`, acknowledging `ack`; a long poll when `wait`.
    pub fn poll_url(&self, sid: &str, ack: u64, wait: bool) -> String {
        format!(
            "{}/poll?v=1&sid={sid}&ack={ack}&wait={}",
            self.base,
            u8::from(wait)
        )
    }

    /// Opens a WebSocket to `/rt/ws?v=1<query>` (the server's first frame is still to be read).
    pub async fn ws(&self, query: &str) -> Ws {
        let (socket, _) = tokio_tungstenite::connect_async(self.ws_url(query))
            .await
            .unwrap();
        socket
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/rt/ws?v=1{query}", self.addr)
    }
}

/// Starts a server with default settings.
pub async fn start_default() -> TestServer {
    TestServer::start(Switchboard::builder().build()).await
}

/// Waits until `condition` holds, polling every 10 ms, for at most `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// Test payloads: Korean, emoji, mixed scripts, escapes.
pub const TEXTS: &[&str] = &[
    "안녕하세요, 세계!",
    "👋🎉🚀 emoji 👨‍👩‍👧‍👦",
    "mixed: 한국어 + English + 日本語 + العربية",
    "escapes: \"quotes\" \\ backslash \n newline \t tab \u{0000} nul",
];

/// A binary payload holding every byte value, plus invalid UTF-8 sequences.
pub fn binary_payload() -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..=255u8).collect();
    bytes.extend_from_slice(&[0xff, 0xfe, 0xc0, 0x80, 0xed, 0xa0, 0x80]);
    bytes
}

/// `POST /open`: a new polling session's sid.
pub async fn open(http: &reqwest::Client, base: &str) -> String {
    let open: Value = http
        .post(format!("{base}/open?v=1"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(open["t"], "open");
    open["sid"].as_str().unwrap().to_string()
}

pub async fn post(
    http: &reqwest::Client,
    base: &str,
    sid: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let response = http
        .post(format!("{base}/poll?v=1&sid={sid}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn get(http: &reqwest::Client, url: String) -> (StatusCode, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Starts a `GET` in the background (a poll that will wait) and returns its eventual answer.
pub fn spawn_get(
    http: &reqwest::Client,
    url: String,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let http = http.clone();
    tokio::spawn(async move { get(&http, url).await })
}

/// The next text frame as JSON; a close as `{"ws_close": code}`, the end as `{"ws_end": …}`.
pub async fn next_json(socket: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
        {
            Some(Ok(WsMessage::Text(text))) => return serde_json::from_str(text.as_str()).unwrap(),
            Some(Ok(WsMessage::Close(frame))) => {
                return json!({"ws_close": frame.map(|frame| u16::from(frame.code))});
            }
            Some(Ok(_)) => {}
            other => return json!({"ws_end": format!("{other:?}")}),
        }
    }
}

/// A writer for a test's tracing subscriber: everything goes into one shared buffer.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
