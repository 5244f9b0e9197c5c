//! Property tests of the HTTP handlers over real sockets: generated requests to `/open`,
//! `/poll` and `/ws` (any method, query strings with random, repeated and overlong parameters,
//! sids of every shape, random headers and bodies, declared lengths that do not match the
//! body, WebSocket frames after a real upgrade).
//!
//! Every answer must be one the protocol documents for its route (docs/protocol.md §7, with
//! its JSON error body), the server must answer every well-formed request, a session used
//! normally at the same time must keep working, and a live session's mutated POSTs must
//! deliver each message exactly once and in order.
//!
//! Each test has its own server and runtime. Failures are not persisted to files; every run
//! prints its seed, and `PROPTEST_RNG_SEED=<seed>` replays it (`PROPTEST_CASES` runs more).
#![allow(clippy::unwrap_used)]

mod common;

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, next_json};
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::{Value, json};
use switchboard::{Message, Switchboard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const MAX_MESSAGE: usize = 512;
const MAX_BODY: usize = 4096;

/// `cases` cases (unless `PROPTEST_CASES` says otherwise), no failure files, and a printed
/// seed so that a failing run can be replayed.
fn config(cases: u32) -> Config {
    let mut config = Config {
        failure_persistence: None,
        // Shrinking replays requests against a live server: keep it short.
        max_shrink_iters: 256,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if config.rng_seed == RngSeed::Random {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        config.rng_seed = RngSeed::Fixed(seed);
    }
    eprintln!(
        "proptest seed {}: replay with PROPTEST_RNG_SEED={0}",
        config.rng_seed
    );
    config
}

// ---- the harness ----------------------------------------------------------------------------

/// A server with three sessions of its own: the bystander (used normally all along, never
/// named by a generated request), the victim (whose POSTs are mutated) and the scratch session
/// (whose sid generated requests may carry).
struct Harness {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    scratch: String,
    victim: String,
    /// What the application received on the victim session, in order.
    victim_received: Arc<Mutex<Vec<Message>>>,
    bystander: Bystander,
    /// Sessions opened by generated requests, for the WebSocket property.
    sessions: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<switchboard::Session>>>,
}

/// The session used normally while the generated traffic runs: a WebSocket client sends
/// Korean, emoji and binary messages, the application echoes them, the client checks each echo.
struct Bystander {
    stop: Arc<AtomicBool>,
    round_trips: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

fn bystander_message(i: u64) -> Value {
    if i.is_multiple_of(2) {
        json!({"t":"m","s":i,"d":format!("안녕 {i} 👋🎉")})
    } else {
        json!({"t":"m","s":i,"b":base64_of(format!("바이너리 {i}").as_bytes())})
    }
}

/// One round trip of the bystander: sends message `i`, waits for its ack and its echo (as
/// server message `i`), acknowledges the echo.
async fn bystander_round_trip(socket: &mut common::Ws, i: u64) -> Result<(), String> {
    let sent = bystander_message(i);
    socket
        .send(WsMessage::text(sent.to_string()))
        .await
        .map_err(|err| format!("send {i}: {err}"))?;
    let (mut acked, mut echoed) = (false, false);
    for _ in 0..100 {
        if acked && echoed {
            break;
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .map_err(|_| format!("no answer to {i} within 10 s"))?;
        let text = match frame {
            Some(Ok(WsMessage::Text(text))) => text,
            Some(Ok(_)) => continue,
            other => return Err(format!("socket ended at {i}: {other:?}")),
        };
        let frame: Value = serde_json::from_str(text.as_str()).map_err(|err| err.to_string())?;
        match frame["t"].as_str() {
            Some("ack") if frame["a"] == i => acked = true,
            Some("m") => {
                let mut expected = sent.clone();
                expected["s"] = json!(i);
                if frame != expected {
                    return Err(format!("echo of {i} is {frame}"));
                }
                echoed = true;
            }
            Some("ping") => {}
            _ => return Err(format!("unexpected frame {frame} at {i}")),
        }
    }
    if !(acked && echoed) {
        return Err(format!("round trip {i} incomplete"));
    }
    socket
        .send(WsMessage::text(json!({"t":"ack","a":i}).to_string()))
        .await
        .map_err(|err| format!("ack {i}: {err}"))
}

impl Harness {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let started = runtime.block_on(async {
            let mut server = TestServer::start(
                Switchboard::builder()
                    .max_message_size(MAX_MESSAGE)
                    .max_body_size(MAX_BODY)
                    .poll_hold(Duration::from_millis(300))
                    .build(),
            )
            .await;
            let http = reqwest::Client::new();
            // The bystander: a WebSocket, and an application that echoes.
            let mut socket = server.ws("").await;
            assert_eq!(next_json(&mut socket).await["t"], "open");
            let echo = server.next_session().await;
            tokio::spawn(async move {
                while let Some(message) = echo.recv().await {
                    if echo.send(message).is_err() {
                        break;
                    }
                }
            });
            let stop = Arc::new(AtomicBool::new(false));
            let round_trips = Arc::new(AtomicU64::new(0));
            let task = tokio::spawn({
                let (stop, round_trips) = (stop.clone(), round_trips.clone());
                async move {
                    // Bounded: at most 100 000 round trips, each of at most 10 s. The one
                    // that starts after the stop is the check that it works after the run.
                    for i in 1..=100_000u64 {
                        let last = stop.load(Ordering::SeqCst);
                        bystander_round_trip(&mut socket, i).await?;
                        round_trips.store(i, Ordering::SeqCst);
                        if last {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(())
                }
            });
            let scratch = common::open(&http, &server.base).await;
            let _ = server.next_session().await;
            let victim = common::open(&http, &server.base).await;
            let victim_session = server.next_session().await;
            let victim_received = Arc::new(Mutex::new(Vec::new()));
            tokio::spawn({
                let received = victim_received.clone();
                async move {
                    while let Some(message) = victim_session.recv().await {
                        received.lock().unwrap().push(message);
                    }
                }
            });
            let addr = server.addr;
            let sessions = server.sessions;
            (
                addr,
                scratch,
                victim,
                victim_received,
                Bystander {
                    stop,
                    round_trips,
                    task,
                },
                sessions,
            )
        });
        let (addr, scratch, victim, victim_received, bystander, sessions) = started;
        Harness {
            runtime,
            addr,
            scratch,
            victim,
            victim_received,
            bystander,
            sessions: Arc::new(tokio::sync::Mutex::new(sessions)),
        }
    }

    /// Runs `cases` cases of `test` on inputs from `strategy`; panics with the minimal failing
    /// input.
    fn run<S: Strategy>(
        &self,
        cases: u32,
        strategy: S,
        test: impl Fn(&Self, S::Value) -> Result<(), TestCaseError>,
    ) where
        S::Value: std::fmt::Debug,
    {
        let mut runner = TestRunner::new(config(cases));
        if let Err(err) = runner.run(&strategy, |input| test(self, input)) {
            panic!("{err}");
        }
    }

    /// Checks that the bystander kept working during the run and works after it.
    fn finish(self) {
        let Harness {
            runtime, bystander, ..
        } = self;
        runtime.block_on(async {
            let before = bystander.round_trips.load(Ordering::SeqCst);
            bystander.stop.store(true, Ordering::SeqCst);
            let outcome = tokio::time::timeout(Duration::from_secs(30), bystander.task)
                .await
                .expect("the bystander is stuck")
                .unwrap();
            assert_eq!(outcome, Ok(()), "the bystander's session broke");
            let after = bystander.round_trips.load(Ordering::SeqCst);
            assert!(
                after >= 1 && after > before,
                "{before} then {after} round trips"
            );
        });
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---- raw HTTP ---------------------------------------------------------------------------------

/// What the server answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Sends `request` on a new connection (then closes the writing half if `half_close`) and reads
/// the answer: the final one after any `100 Continue`; for a `101` only its head. `Err` if the
/// server closed the connection without an answer, or gave none within 10 s.
async fn exchange(
    addr: SocketAddr,
    request: &[u8],
    half_close: bool,
    head_only: bool,
) -> Result<Answer, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    // The server may answer (and close) before it has read everything: not an error here.
    let _ = stream.write_all(request).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if let Some(answer) = parse_answer(&received, head_only, false)? {
            return Ok(answer);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Err(_) => return Err(format!("no answer within 10 s: {:?}", text(&received))),
        }
    }
    parse_answer(&received, head_only, true)?
        .ok_or_else(|| format!("closed without an answer: {:?}", text(&received)))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The final answer in `received`, if it is complete (`ended`: the connection is closed).
fn parse_answer(received: &[u8], head_only: bool, ended: bool) -> Result<Option<Answer>, String> {
    let mut rest = received;
    loop {
        let Some(end) = rest.windows(4).position(|window| window == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = text(&rest[..end]);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|line| line.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
            .collect();
        let body = &rest[end + 4..];
        if (100..200).contains(&status) && status != 101 {
            rest = body;
            continue;
        }
        let answer = |body: Vec<u8>| Answer {
            status,
            headers: headers.clone(),
            body,
        };
        if head_only || status == 101 || status == 304 {
            return Ok(Some(answer(Vec::new())));
        }
        let length = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.parse::<usize>().ok());
        return Ok(match length {
            Some(length) if body.len() >= length => Some(answer(body[..length].to_vec())),
            Some(_) => None,
            None if ended => Some(answer(body.to_vec())),
            None => None,
        });
    }
}

// ---- generated requests ---------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Open,
    Poll,
    Ws,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Route::Open => "/rt/open",
            Route::Poll => "/rt/poll",
            Route::Ws => "/rt/ws",
        }
    }
}

/// How the body travels.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// `Content-Length` of the body (none for an empty body).
    Exact,
    /// Chunked transfer encoding.
    Chunked,
    /// Chunked, with a chunk size that is not hexadecimal (the body cannot be read).
    BrokenChunks,
    /// `Content-Length` smaller than the body by this much (what follows is never read).
    Shorter(usize),
    /// `Content-Length` larger than the body by this much; the client then stops sending.
    Longer(usize),
    /// `Content-Length` far above `max_body`, and no body.
    Huge,
}

impl Framing {
    /// Whether a request framed like this is well-formed HTTP (the server must answer it).
    fn well_formed(self) -> bool {
        matches!(
            self,
            Framing::Exact | Framing::Chunked | Framing::Shorter(_)
        )
    }
}

#[derive(Clone, Debug)]
struct Request {
    method: String,
    route: Route,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
}

impl Request {
    fn head_only(&self) -> bool {
        self.method == "HEAD"
    }

    fn encode(&self, addr: SocketAddr) -> Vec<u8> {
        let mut head = format!(
            "{} {}?{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
            self.method,
            self.route.path(),
            self.query
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let mut body = Vec::new();
        match self.framing {
            Framing::Exact if self.body.is_empty() => {}
            Framing::Exact => head.push_str(&format!("Content-Length: {}\r\n", self.body.len())),
            Framing::Chunked | Framing::BrokenChunks => {
                head.push_str("Transfer-Encoding: chunked\r\n");
                for chunk in self.body.chunks(100) {
                    body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    body.extend_from_slice(chunk);
                    body.extend_from_slice(b"\r\n");
                }
                if matches!(self.framing, Framing::BrokenChunks) {
                    body.extend_from_slice(b"zz\r\n");
                }
                body.extend_from_slice(b"0\r\n\r\n");
            }
            Framing::Shorter(less) => head.push_str(&format!(
                "Content-Length: {}\r\n",
                self.body.len().saturating_sub(less)
            )),
            Framing::Longer(more) => {
                head.push_str(&format!("Content-Length: {}\r\n", self.body.len() + more))
            }
            Framing::Huge => head.push_str("Content-Length: 10000000000\r\n"),
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        match self.framing {
            Framing::Chunked | Framing::BrokenChunks => request.extend_from_slice(&body),
            Framing::Huge => {}
            _ => request.extend_from_slice(&self.body),
        }
        request
    }
}

/// Percent-encodes everything but unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::sample::select(vec![
            '안', '녕', '한', '글', '👋', '🎉', '\u{200d}', '"', '\\', '{', '}', '[', ']', ':',
            ',', '\n', '\u{0}', ' ', '+', '&', '=', '%', 'a', '1',
        ]),
        1 => any::<char>(),
    ]
}

fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any_char(), 0..max).prop_map(String::from_iter)
}

/// Sids of every shape (never the bystander's).
fn sid_value(scratch: String) -> impl Strategy<Value = String> {
    let hex = prop::collection::vec(prop::sample::select(b"0123456789abcdef".to_vec()), 32)
        .prop_map(|digits| String::from_utf8(digits).unwrap());
    prop_oneof![
        3 => Just(scratch.clone()),
        1 => Just(scratch.to_uppercase()),
        1 => Just(format!("{scratch}0")),
        1 => Just(scratch[1..].to_string()),
        2 => hex.clone(),
        1 => hex.clone().prop_map(|sid| sid.to_uppercase()),
        1 => hex.prop_map(|sid| format!("{}g", &sid[..31])),
        1 => any_text(40).prop_map(|text| percent_encode(&text)),
        1 => Just(String::new()),
    ]
}

/// A query parameter's value, already encoded for the request line.
fn param_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "0", "1", "2", "01", "", "-1", "%2B1", "1.0", "1e0", "9007199254740991",
            "9007199254740992", "99999999999999999999999", "%31", "null", "%7B%7D",
            "%7B%22token%22%3A%22t%22%7D", "abc", "%", "%zz", "%E0%A4", "+", "a+b",
        ])
        .prop_map(str::to_string),
        2 => any_text(20).prop_map(|text| percent_encode(&text)),
        1 => (1usize..8000).prop_map(|len| "x".repeat(len)),
    ]
}

/// A query string: mostly one a client could send (so that requests get past the checks of
/// §16 to the session), otherwise any parameters, repeated or overlong.
fn query(scratch: String) -> impl Strategy<Value = String> {
    let optional = |name: &'static str| {
        // A large attach number makes every later poll of the scratch session stale: rare.
        let numbers = if name == "att" {
            vec!["0", "0", "0", "1", "01", "9007199254740991"]
        } else {
            vec!["0", "1", "2", "01", "5", "9007199254740991"]
        };
        prop::option::weighted(0.3, prop::sample::select(numbers))
            .prop_map(move |value| value.map_or(String::new(), |value| format!("&{name}={value}")))
    };
    let plausible = (
        prop::sample::select(vec!["v=1", "v=1", "v=1", "", "v=2"]),
        sid_value(scratch.clone()),
        optional("ack"),
        optional("wait"),
        optional("att"),
        prop::sample::select(vec!["", "", "&batch=1", "&auth=%7B%7D", "&x=%F0%9F%91%8B"]),
    )
        .prop_map(|(v, sid, ack, wait, att, extra)| {
            format!("{v}&sid={sid}{ack}{wait}{att}{extra}")
        });
    let name = prop_oneof![
        6 => prop::sample::select(vec!["v", "sid", "ack", "wait", "att", "batch", "auth"])
            .prop_map(str::to_string),
        1 => prop::sample::select(vec!["x", "V", "sid%5B%5D", "", "%73id"]).prop_map(str::to_string),
        1 => any_text(8).prop_map(|text| percent_encode(&text)),
    ];
    let param = (name, param_value(), sid_value(scratch)).prop_map(|(name, value, sid)| {
        if name == "sid" {
            format!("sid={sid}")
        } else {
            format!("{name}={value}")
        }
    });
    let any = (
        prop::sample::select(vec!["v=1&", "v=1&", "v=1&", "v=1&", "", "v=2&"]),
        prop::collection::vec(param, 0..6),
    )
        .prop_map(|(version, params)| format!("{version}{}", params.join("&")));
    prop_oneof![3 => plausible, 2 => any]
}

fn header(addr: SocketAddr) -> impl Strategy<Value = (String, String)> {
    let value = prop::collection::vec(
        prop_oneof![
            (0x20u8..0x7f).prop_map(char::from),
            prop::sample::select(vec!['한', '👋', '\t']),
        ],
        0..40,
    )
    .prop_map(|chars| String::from_iter(chars).trim().to_string());
    prop_oneof![
        2 => Just(("Origin".to_string(), format!("http://{addr}"))),
        3 => prop::sample::select(vec![
            ("Origin", "https://evil.example"),
            ("Origin", "null"),
            ("Content-Type", "application/json"),
            ("Content-Type", "text/plain;charset=utf-8"),
            ("Content-Type", "multipart/form-data; boundary=x"),
            ("Cookie", "token=good; theme=dark"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Key", "not base64"),
            ("Expect", "100-continue"),
            ("Accept-Encoding", "gzip, br"),
            ("If-None-Match", "*"),
        ])
        .prop_map(|(name, value)| (name.to_string(), value.to_string())),
        1 => value.clone().prop_map(|value| ("Origin".to_string(), value)),
        3 => ("[A-Za-z][A-Za-z0-9-]{0,20}", value),
    ]
}

/// A frame for a POST body or a WebSocket: valid, broken, or of an unknown type.
fn any_frame() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1u64..20, any_text(20)).prop_map(|(s, text)| json!({"t":"m","s":s,"d":text}).to_string()),
        1 => (1u64..20, prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(s, bytes)| json!({"t":"m","s":s,"b":base64_of(&bytes)}).to_string()),
        1 => (0u64..20).prop_map(|a| json!({"t":"ack","a":a}).to_string()),
        1 => prop::sample::select(vec![
            r#"{"t":"ping"}"#, r#"{"t":"pong"}"#, r#"{"t":"sub","room":"x"}"#,
            r#"{"t":"m","s":0,"d":1}"#, r#"{"t":"m","s":"1","d":1}"#, r#"{"t":"m","s":1}"#,
            r#"{"t":7}"#, r#"[]"#, r#"{"t":"m","s":1,"b":"%%%"}"#,
        ])
        .prop_map(str::to_string),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        3 => prop::collection::vec(any_frame(), 0..6)
            .prop_map(|frames| format!("[{}]", frames.join(",")).into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..600),
        1 => any_text(60).prop_map(String::into_bytes),
        1 => (MAX_BODY - 8..MAX_BODY + 8).prop_map(|len| {
            let mut body = vec![b' '; len];
            body[0] = b'[';
            body[len - 1] = b']';
            body
        }),
    ]
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        12 => Just(Framing::Exact),
        2 => Just(Framing::Chunked),
        1 => Just(Framing::BrokenChunks),
        1 => (1usize..20).prop_map(Framing::Shorter),
        1 => (1usize..20).prop_map(Framing::Longer),
        1 => Just(Framing::Huge),
    ]
}

fn request(addr: SocketAddr, scratch: String) -> impl Strategy<Value = Request> {
    let method = prop_oneof![
        4 => Just("GET".to_string()),
        4 => Just("POST".to_string()),
        1 => prop::sample::select(vec!["HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
            .prop_map(str::to_string),
        1 => "[A-Z]{1,10}",
    ];
    (
        method,
        prop::sample::select(vec![Route::Open, Route::Poll, Route::Poll, Route::Ws]),
        query(scratch),
        prop::collection::vec(header(addr), 0..4),
        body(),
        framing(),
    )
        .prop_map(|(method, route, query, headers, body, framing)| Request {
            method,
            route,
            query,
            headers,
            body,
            framing,
        })
}

// ---- what §7 allows ---------------------------------------------------------------------------

/// The error codes §7 documents for `status` on `route` (for a server without an
/// authentication hook and without a backend).
fn documented_codes(method: &str, route: Route, status: u16) -> &'static [&'static str] {
    let get = method == "GET" || method == "HEAD";
    match (route, get, method == "POST", status) {
        // The origin and declared-length checks come before the method is looked at.
        (_, _, _, 403) => &["origin_not_allowed"],
        (_, _, _, 413) => &["payload_too_large"],
        (Route::Open, _, true, 400) => &["bad_request", "unsupported_version"],
        (Route::Open, _, true, 503) => &["session_limit", "shutting_down"],
        (Route::Poll, true, _, 400) => &["bad_request", "unsupported_version"],
        (Route::Poll, true, _, 404) => &["unknown_session"],
        (Route::Poll, true, _, 409) => &["superseded"],
        (Route::Poll, _, true, 400) => &["bad_request", "malformed_frame", "unsupported_version"],
        (Route::Poll, _, true, 404) => &["unknown_session"],
        (Route::Poll, _, true, 429) => &["too_many_requests"],
        (Route::Ws, true, _, 400) => &["bad_request"],
        (Route::Open, _, false, 405) | (Route::Ws, false, _, 405) => &["method_not_allowed"],
        (Route::Poll, false, false, 405) => &["method_not_allowed"],
        _ => &[],
    }
}

/// Whether `status` is a success §4–§5 documents for the request.
fn documented_success(method: &str, route: Route, status: u16) -> bool {
    let get = method == "GET" || method == "HEAD";
    match (route, status) {
        (Route::Open, 200) => method == "POST",
        (Route::Poll, 200) => get || method == "POST",
        (Route::Ws, 101) => method == "GET",
        _ => false,
    }
}

fn check_answer(request: &Request, answer: &Answer) -> Result<(), TestCaseError> {
    let (method, route, status) = (request.method.as_str(), request.route, answer.status);
    if documented_success(method, route, status) {
        if status == 200 && !request.head_only() {
            prop_assert_eq!(answer.header("content-type"), Some("application/json"));
            let body: Value = serde_json::from_slice(&answer.body)
                .map_err(|err| TestCaseError::fail(format!("200 body is not JSON: {err}")))?;
            match route {
                Route::Open => prop_assert_eq!(&body["t"], "open", "{}", body),
                _ => prop_assert!(body.is_array(), "{}", body),
            }
        }
        return Ok(());
    }
    let codes = documented_codes(method, route, status);
    prop_assert!(
        !codes.is_empty(),
        "status {} is not documented for {} {:?}: {:?} {:?}",
        status,
        method,
        route,
        answer.headers,
        text(&answer.body)
    );
    if request.head_only() {
        return Ok(());
    }
    prop_assert_eq!(answer.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&answer.body).map_err(|err| {
        TestCaseError::fail(format!(
            "error body is not JSON ({err}): {:?}",
            text(&answer.body)
        ))
    })?;
    let object = body
        .as_object()
        .ok_or_else(|| TestCaseError::fail(format!("error body {body}")))?;
    prop_assert_eq!(object.len(), 2, "{}", body);
    prop_assert!(body["message"].is_string(), "{}", body);
    let code = body["error"].as_str().unwrap_or_default();
    prop_assert!(
        codes.contains(&code),
        "{} {} for {} {:?}",
        status,
        body,
        method,
        route
    );
    Ok(())
}

#[test]
fn generated_requests_get_documented_answers_and_hurt_no_other_session() {
    let harness = Harness::start();
    let scratch = harness.scratch.clone();
    harness.run(512, request(harness.addr, scratch), |harness, request| {
        let bytes = request.encode(harness.addr);
        let half_close = matches!(request.framing, Framing::Longer(_) | Framing::BrokenChunks);
        let answer = harness.runtime.block_on(exchange(
            harness.addr,
            &bytes,
            half_close,
            request.head_only(),
        ));
        match answer {
            Ok(answer) => check_answer(&request, &answer),
            // A request whose body never arrives whole may be dropped unanswered.
            Err(_) if !request.framing.well_formed() => Ok(()),
            Err(err) => Err(TestCaseError::fail(err)),
        }
    });
    harness.finish();
}

// ---- a live session's POSTs -----------------------------------------------------------------

/// A frame of a POST body to the victim, relative to the server's ack when the case starts.
#[derive(Clone, Debug)]
enum Op {
    /// Message `ack + offset` (a duplicate when offset <= 0, a gap when > 1); its payload is
    /// a function of its sequence number.
    Msg(i64),
    /// A message whose payload is larger than `max_message`.
    TooLarge(i64),
    Ack(u64),
    Ping,
    Pong,
    Unknown,
    /// A malformed frame.
    Broken(&'static str),
}

/// How the victim's POST travels.
#[derive(Clone, Copy, Debug)]
enum Transfer {
    Once(Framing),
    /// The same body on two connections at once.
    Twice,
}

fn victim_payload(seq: u64) -> Value {
    if seq.is_multiple_of(3) {
        let mut bytes = format!("바이너리 {seq}").into_bytes();
        bytes.extend_from_slice(&[0xff, 0x00, 0xfe]);
        json!({"b": base64_of(&bytes)})
    } else {
        json!({"d": format!("메시지 {seq} 🎉")})
    }
}

/// The payload the application received, in the shape of [`victim_payload`].
fn received_payload(message: &Message) -> Value {
    match message.as_bytes() {
        Some(bytes) => json!({"b": base64_of(bytes)}),
        None => json!({"d": message.as_text()}),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop_oneof![Just(1i64), -3i64..=4].prop_map(Op::Msg),
        1 => (0i64..=2).prop_map(Op::TooLarge),
        1 => (0u64..5).prop_map(Op::Ack),
        1 => Just(Op::Ping),
        1 => Just(Op::Pong),
        1 => Just(Op::Unknown),
        1 => prop::sample::select(vec![
            r#"{"t":"m","s":0,"d":1}"#, r#"{"t":"m","s":"1","d":1}"#, r#"{"t":"m","s":1}"#,
            r#"{"t":"m","s":1.0,"d":1}"#, r#"{"t":7}"#, r#"{"t":"ack","a":-1}"#, "[]", "null",
            r#"{"t":"m","s":1,"b":"%%%"}"#, r#"{"t":"m","s":1,"d":1,"b":"AA=="}"#,
        ])
        .prop_map(Op::Broken),
    ]
}

fn transfer() -> impl Strategy<Value = Transfer> {
    prop_oneof![
        8 => Just(Transfer::Once(Framing::Exact)),
        1 => Just(Transfer::Once(Framing::Chunked)),
        1 => Just(Transfer::Once(Framing::BrokenChunks)),
        1 => (1usize..10).prop_map(|less| Transfer::Once(Framing::Shorter(less))),
        1 => (1usize..10).prop_map(|more| Transfer::Once(Framing::Longer(more))),
        2 => Just(Transfer::Twice),
    ]
}

fn seq_of(ack: u64, offset: i64) -> u64 {
    (ack as i64 + offset).max(1) as u64
}

fn encode_ops(ops: &[Op], ack: u64) -> String {
    let frames: Vec<String> = ops
        .iter()
        .map(|op| match op {
            Op::Msg(offset) => {
                let seq = seq_of(ack, *offset);
                let mut frame = victim_payload(seq);
                frame["t"] = json!("m");
                frame["s"] = json!(seq);
                frame.to_string()
            }
            Op::TooLarge(offset) => {
                json!({"t":"m","s":seq_of(ack, *offset),"d":"한".repeat(MAX_MESSAGE / 3 + 1)})
                    .to_string()
            }
            Op::Ack(a) => json!({"t":"ack","a":a}).to_string(),
            Op::Ping => r#"{"t":"ping"}"#.to_string(),
            Op::Pong => r#"{"t":"pong"}"#.to_string(),
            Op::Unknown => r#"{"t":"sub","s":"방","d":[1,2]}"#.to_string(),
            Op::Broken(frame) => frame.to_string(),
        })
        .collect();
    format!("[{}]", frames.join(","))
}

/// What §5.5 says the answer to `ops` (encoded from ack `base`) is when the server's ack is
/// `ack`: `Err((status, code))` or `Ok((new ack, pong))`.
fn expected_answer(
    ops: &[Op],
    base: u64,
    ack: u64,
    body_len: usize,
) -> Result<(u64, bool), (u16, &'static str)> {
    if body_len > MAX_BODY {
        return Err((413, "payload_too_large"));
    }
    for op in ops {
        match op {
            Op::Broken(_) => return Err((400, "malformed_frame")),
            Op::TooLarge(_) => return Err((413, "payload_too_large")),
            _ => {}
        }
    }
    let mut next = ack;
    for op in ops {
        if let Op::Msg(offset) = op
            && seq_of(base, *offset) == next + 1
        {
            next += 1;
        }
    }
    Ok((next, ops.iter().any(|op| matches!(op, Op::Ping))))
}

/// Whether `answer` is the expected one: `Ok(Some(ack))` for the expected `200`, `Ok(None)`
/// for the expected refusal, `Err` with what differs.
fn matches_expected(
    answer: &Answer,
    expected: Result<(u64, bool), (u16, &'static str)>,
) -> Result<Option<u64>, String> {
    let body: Value = serde_json::from_slice(&answer.body)
        .map_err(|err| format!("{} {err}: {:?}", answer.status, text(&answer.body)))?;
    let got = format!("{} {body}", answer.status);
    match expected {
        Ok((ack, pong)) => {
            let mut frames = vec![json!({"t":"ack","a":ack})];
            if pong {
                frames.push(json!({"t":"pong"}));
            }
            if answer.status == 200 && body == Value::Array(frames) {
                Ok(Some(ack))
            } else {
                Err(format!("expected 200 ack {ack} (pong: {pong}), got {got}"))
            }
        }
        Err((status, code)) => {
            if answer.status == status && body["error"] == code {
                Ok(None)
            } else {
                Err(format!("expected {status} {code}, got {got}"))
            }
        }
    }
}

/// What the answer to the victim's body must be when the server read only a broken part of
/// it: refused, and nothing delivered.
fn refused_as(body_len: usize, code: &'static str) -> Result<(u64, bool), (u16, &'static str)> {
    if body_len > MAX_BODY {
        Err((413, "payload_too_large"))
    } else {
        Err((400, code))
    }
}

impl Harness {
    /// The victim's ack now (a POST of `[]`).
    async fn victim_ack(&self) -> u64 {
        let request = format!(
            "POST /rt/poll?v=1&sid={} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Length: 2\r\n\r\n[]",
            self.victim, self.addr
        );
        let answer = exchange(self.addr, request.as_bytes(), false, false)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&answer.body).unwrap();
        body[0]["a"].as_u64().unwrap()
    }

    /// Checks that the application received exactly messages 1 to `ack` of the victim, in
    /// order, each once.
    async fn check_victim_deliveries(&self, ack: u64) -> Result<(), TestCaseError> {
        let ok = common::eventually(Duration::from_secs(10), || {
            self.victim_received.lock().unwrap().len() as u64 >= ack
        })
        .await;
        let received = self.victim_received.lock().unwrap();
        prop_assert!(
            ok,
            "{} messages received, {} acknowledged",
            received.len(),
            ack
        );
        prop_assert_eq!(received.len() as u64, ack);
        for (index, message) in received.iter().enumerate() {
            prop_assert_eq!(received_payload(message), victim_payload(index as u64 + 1));
        }
        Ok(())
    }
}

#[test]
fn mutated_posts_of_a_live_session_deliver_each_message_once_and_in_order() {
    let harness = Harness::start();
    let cases = (
        prop::collection::vec(op(), 0..10),
        transfer(),
        any::<bool>(),
    );
    harness.run(256, cases, |harness, (ops, transfer, text_plain)| {
        harness.runtime.block_on(async {
            let ack = harness.victim_ack().await;
            let body = encode_ops(&ops, ack);
            let expected = expected_answer(&ops, ack, ack, body.len());
            let request = |framing| Request {
                method: "POST".into(),
                route: Route::Poll,
                query: format!("v=1&sid={}", harness.victim),
                headers: vec![(
                    "Content-Type".to_string(),
                    if text_plain {
                        "text/plain"
                    } else {
                        "application/json"
                    }
                    .to_string(),
                )],
                body: body.clone().into_bytes(),
                framing,
            };
            match transfer {
                Transfer::Once(framing) => {
                    let bytes = request(framing).encode(harness.addr);
                    let half_close = matches!(framing, Framing::Longer(_) | Framing::BrokenChunks);
                    let answer = exchange(harness.addr, &bytes, half_close, false).await;
                    let expected = match framing {
                        Framing::Exact | Framing::Chunked => expected,
                        // A prefix of a JSON array is never one.
                        Framing::Shorter(_) => refused_as(body.len(), "malformed_frame"),
                        // The body never arrives whole: unreadable.
                        _ => refused_as(body.len(), "bad_request"),
                    };
                    match answer {
                        Ok(answer) => {
                            matches_expected(&answer, expected).map_err(TestCaseError::fail)?;
                        }
                        // Only a body that never arrives whole may go unanswered.
                        Err(_) if !framing.well_formed() => {}
                        Err(err) => return Err(TestCaseError::fail(err)),
                    }
                }
                Transfer::Twice => {
                    let bytes = request(Framing::Exact).encode(harness.addr);
                    let (first, second) = tokio::join!(
                        exchange(harness.addr, &bytes, false, false),
                        exchange(harness.addr, &bytes, false, false),
                    );
                    let first = first.map_err(TestCaseError::fail)?;
                    let second = second.map_err(TestCaseError::fail)?;
                    // One ran alone while the other was refused with 429, or they ran one
                    // after the other (in either order), each answered as §5.5 says.
                    let busy = |answer: &Answer| {
                        matches_expected(answer, Err((429, "too_many_requests"))).is_ok()
                    };
                    let alone = |one: &Answer, other: &Answer| {
                        busy(other) && matches_expected(one, expected).is_ok()
                    };
                    let in_turn =
                        |one: &Answer, other: &Answer| match matches_expected(one, expected) {
                            Ok(Some(done)) => matches_expected(
                                other,
                                expected_answer(&ops, ack, done, body.len()),
                            )
                            .is_ok(),
                            Ok(None) => matches_expected(other, expected).is_ok(),
                            Err(_) => false,
                        };
                    prop_assert!(
                        alone(&first, &second)
                            || alone(&second, &first)
                            || in_turn(&first, &second)
                            || in_turn(&second, &first),
                        "expected {:?} from {}: {} {:?} and {} {:?}",
                        expected,
                        ack,
                        first.status,
                        text(&first.body),
                        second.status,
                        text(&second.body)
                    );
                }
            }
            let now = harness.victim_ack().await;
            prop_assert!(now >= ack);
            harness.check_victim_deliveries(now).await
        })
    });
    harness.finish();
}

// ---- WebSocket frames after a real upgrade ----------------------------------------------------

/// A WebSocket message a generated client sends.
#[derive(Clone, Debug)]
enum WsItem {
    /// Message `ack + offset`.
    Msg(i64),
    Ack(u64),
    Ping,
    Pong,
    Unknown,
    /// A malformed frame (answered with an error frame `malformed_frame`).
    Broken(&'static str),
    /// Text that is not JSON (malformed).
    Junk(String),
    /// A binary WebSocket message (malformed).
    Binary(Vec<u8>),
    /// A frame under the frame limit whose payload is too large (`payload_too_large`).
    TooLarge,
}

fn ws_item() -> impl Strategy<Value = WsItem> {
    prop_oneof![
        6 => prop_oneof![Just(1i64), -2i64..=3].prop_map(WsItem::Msg),
        1 => (0u64..5).prop_map(WsItem::Ack),
        1 => Just(WsItem::Ping),
        1 => Just(WsItem::Pong),
        1 => Just(WsItem::Unknown),
        1 => prop::sample::select(vec![
            r#"{"t":"m","s":0,"d":1}"#, r#"{"t":"m","s":"1","d":1}"#, r#"{"t":"m","s":1}"#,
            r#"{"t":7}"#, r#"{"t":"ack"}"#, "[]", "null", r#"{"t":"m","s":1,"b":"%%%"}"#,
        ])
        .prop_map(WsItem::Broken),
        1 => any_text(60).prop_map(|text| format!("x{text}")).prop_map(WsItem::Junk),
        1 => prop::collection::vec(any::<u8>(), 0..60).prop_map(WsItem::Binary),
        1 => Just(WsItem::TooLarge),
    ]
}

/// The query of a generated WebSocket: a new session, with or without batches.
fn ws_query() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "&batch=1", "&batch=0", "&att=3", "&batch=1&att=0"])
        .prop_map(str::to_string)
}

#[test]
fn random_websocket_frames_get_documented_replies_and_deliver_in_order() {
    let harness = Harness::start();
    let cases = (prop::collection::vec(ws_item(), 0..24), ws_query());
    harness.run(192, cases, |harness, (items, query)| {
        harness.runtime.block_on(async {
            let url = format!("ws://{}/rt/ws?v=1{query}", harness.addr);
            let (mut socket, _) = tokio_tungstenite::connect_async(&url)
                .await
                .map_err(|err| TestCaseError::fail(format!("upgrade: {err}")))?;
            let batch = query.contains("batch=1");
            let mut incoming = Frames {
                batch,
                queue: Vec::new(),
            };
            let open = incoming.next(&mut socket).await?;
            prop_assert_eq!(&open["t"], "open", "{}", open);
            let session = {
                let mut sessions = harness.sessions.lock().await;
                tokio::time::timeout(Duration::from_secs(10), sessions.recv())
                    .await
                    .map_err(|_| TestCaseError::fail("no session"))?
                    .unwrap()
            };
            // The model: a new session expects message 1 first.
            let mut ack = 0u64;
            let (mut errors, mut pongs) = (0usize, 1usize);
            for item in &items {
                let message = match item {
                    WsItem::Msg(offset) => {
                        let seq = seq_of(ack, *offset);
                        if seq == ack + 1 {
                            ack += 1;
                        }
                        let mut frame = victim_payload(seq);
                        frame["t"] = json!("m");
                        frame["s"] = json!(seq);
                        WsMessage::text(frame.to_string())
                    }
                    WsItem::Ack(a) => WsMessage::text(json!({"t":"ack","a":a}).to_string()),
                    WsItem::Ping => {
                        pongs += 1;
                        WsMessage::text(r#"{"t":"ping"}"#)
                    }
                    WsItem::Pong => WsMessage::text(r#"{"t":"pong"}"#),
                    WsItem::Unknown => WsMessage::text(r#"{"t":"hello","s":"방"}"#),
                    WsItem::Broken(frame) => {
                        errors += 1;
                        WsMessage::text(*frame)
                    }
                    WsItem::Junk(text) => {
                        errors += 1;
                        WsMessage::text(text.clone())
                    }
                    WsItem::Binary(bytes) => {
                        errors += 1;
                        WsMessage::binary(bytes.clone())
                    }
                    WsItem::TooLarge => {
                        errors += 1;
                        let payload = "한".repeat(MAX_MESSAGE / 3 + 1);
                        WsMessage::text(json!({"t":"m","s":ack + 1,"d":payload}).to_string())
                    }
                };
                socket
                    .send(message)
                    .await
                    .map_err(|err| TestCaseError::fail(format!("send: {err}")))?;
            }
            socket
                .send(WsMessage::text(r#"{"t":"ping"}"#))
                .await
                .map_err(|err| TestCaseError::fail(format!("send: {err}")))?;
            // Read until every pong has come and the last ack says what the model says.
            let (mut got_errors, mut got_pongs, mut last_ack) = (0usize, 0usize, 0u64);
            for _ in 0..1000 {
                if got_pongs == pongs && last_ack == ack {
                    break;
                }
                let frame = incoming.next(&mut socket).await?;
                match frame["t"].as_str() {
                    Some("pong") => got_pongs += 1,
                    Some("ping") => {}
                    Some("ack") => {
                        let a = frame["a"].as_u64().unwrap();
                        prop_assert!(a >= last_ack, "ack went back: {} after {}", a, last_ack);
                        last_ack = a;
                    }
                    Some("error") => {
                        let code = frame["code"].as_str().unwrap_or_default();
                        prop_assert!(
                            ["malformed_frame", "payload_too_large"].contains(&code),
                            "{}",
                            frame
                        );
                        prop_assert!(frame["message"].is_string(), "{}", frame);
                        got_errors += 1;
                    }
                    _ => prop_assert!(false, "unexpected frame {}", frame),
                }
            }
            prop_assert_eq!((got_pongs, last_ack), (pongs, ack));
            // Error frames come before the pong that follows their frame.
            prop_assert_eq!(got_errors, errors);
            // The application got messages 1 to ack, in order; the next one comes next.
            let next = ack + 1;
            let mut frame = victim_payload(next);
            frame["t"] = json!("m");
            frame["s"] = json!(next);
            socket
                .send(WsMessage::text(frame.to_string()))
                .await
                .map_err(|err| TestCaseError::fail(format!("send: {err}")))?;
            for seq in 1..=next {
                let message = tokio::time::timeout(Duration::from_secs(10), session.recv())
                    .await
                    .map_err(|_| TestCaseError::fail(format!("message {seq} not delivered")))?
                    .unwrap();
                prop_assert_eq!(received_payload(&message), victim_payload(seq));
            }
            let _ = socket.close(None).await;
            Ok(())
        })
    });
    harness.finish();
}

/// The frames of a socket, one at a time, whether they come one per message or in arrays.
struct Frames {
    batch: bool,
    queue: Vec<Value>,
}

impl Frames {
    async fn next(&mut self, socket: &mut common::Ws) -> Result<Value, TestCaseError> {
        for _ in 0..1000 {
            if !self.queue.is_empty() {
                return Ok(self.queue.remove(0));
            }
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .map_err(|_| TestCaseError::fail("no frame within 10 s"))?;
            let text = match message {
                Some(Ok(WsMessage::Text(text))) => text,
                Some(Ok(WsMessage::Close(frame))) => {
                    return Err(TestCaseError::fail(format!("closed: {frame:?}")));
                }
                Some(Ok(_)) => continue,
                other => return Err(TestCaseError::fail(format!("socket ended: {other:?}"))),
            };
            let value: Value = serde_json::from_str(text.as_str())
                .map_err(|err| TestCaseError::fail(format!("not JSON ({err}): {text}")))?;
            if self.batch {
                let frames = value
                    .as_array()
                    .filter(|frames| !frames.is_empty())
                    .ok_or_else(|| TestCaseError::fail(format!("not a batch: {value}")))?;
                self.queue.extend(frames.iter().cloned());
            } else {
                prop_assert!(value.is_object(), "{}", value);
                self.queue.push(value);
            }
        }
        Err(TestCaseError::fail("no frame in 1000 messages"))
    }
}

/// Generated WebSocket queries on a real upgrade: the socket opens, or is closed with a code
/// and reason of §5.1/§7.
#[test]
fn generated_websocket_queries_open_or_close_with_a_documented_code() {
    let harness = Harness::start();
    let scratch = harness.scratch.clone();
    harness.run(192, query(scratch), |harness, query| {
        harness.runtime.block_on(async {
            let url = format!("ws://{}/rt/ws?{query}", harness.addr);
            let socket = tokio_tungstenite::connect_async(&url).await;
            let mut socket = match socket {
                Ok((socket, _)) => socket,
                // A query the HTTP layer refuses before the upgrade gets a documented answer.
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    prop_assert!(
                        [400u16, 413].contains(&response.status().as_u16()),
                        "{:?}",
                        response
                    );
                    return Ok(());
                }
                Err(err) => return Err(TestCaseError::fail(format!("upgrade: {err}"))),
            };
            let first = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .map_err(|_| TestCaseError::fail("nothing within 10 s"))?;
            match first {
                Some(Ok(WsMessage::Text(text))) => {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap();
                    let open = if value.is_array() { &value[0] } else { &value };
                    prop_assert_eq!(&open["t"], "open", "{}", value);
                }
                Some(Ok(WsMessage::Close(Some(frame)))) => {
                    let code = u16::from(frame.code);
                    let reason = frame.reason.as_str();
                    let documented = matches!(
                        (code, reason),
                        (4400, "bad_request" | "unsupported_version")
                            | (4404, "unknown_session")
                            | (4100, "superseded")
                    );
                    prop_assert!(documented, "close {} {:?}", code, reason);
                }
                other => prop_assert!(false, "{:?}", other),
            }
            let _ = socket.close(None).await;
            Ok(())
        })
    });
    harness.finish();
}
