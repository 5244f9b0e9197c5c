//! The metrics (issue 14): sessions driven through every transport, a fallback and an upgrade,
//! overflow and refusals, then `/metrics` scraped over HTTP in the Prometheus text format and
//! the counters and gauges checked against `docs/deployment.md` ("Metrics"), with exact values
//! where the test controls them. Each test has a recorder of its own
//! ([`Builder::metrics_recorder`](switchboard::Builder::metrics_recorder)), so they run in
//! parallel without seeing each other's counts.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Captured, TEXTS, TestServer, Ws, binary_payload, next_json, open, post};
use futures_util::SinkExt as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use switchboard::{Builder, Message, Switchboard};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A server built from `builder` with a Prometheus recorder of its own, serving the recorder's
/// text at `/metrics` beside the realtime mount `/rt`.
async fn start(builder: Builder<()>) -> (TestServer, Scraper) {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("switchboard_buffer_depth".into()),
            &[0.0, 1.0, 4.0, 16.0, 64.0],
        )
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    let realtime = builder.metrics_recorder(recorder).build();
    let render = handle.clone();
    let server = TestServer::start_with(realtime, move |listener, app| async move {
        let app = app.route(
            "/metrics",
            axum::routing::get(move || std::future::ready(render.render())),
        );
        axum::serve(listener, app).await.unwrap();
    })
    .await;
    let scraper = Scraper {
        url: format!("http://{}/metrics", server.addr),
        http: reqwest::Client::new(),
        _handle: handle,
    };
    (server, scraper)
}

/// Reads `/metrics` over HTTP.
struct Scraper {
    url: String,
    http: reqwest::Client,
    _handle: PrometheusHandle,
}

impl Scraper {
    async fn scrape(&self) -> Scrape {
        let response = self.http.get(&self.url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        Scrape(response.text().await.unwrap())
    }

    /// Scrapes until `name{labels}` reads `value` (gauges that follow a disconnect move a moment
    /// after it), for at most 5 s; the last value read if it never does.
    async fn until(&self, name: &str, labels: &[(&str, &str)], value: f64) -> f64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let read = self.scrape().await.value(name, labels);
            if read == value || tokio::time::Instant::now() > deadline {
                return read;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One scrape's text.
struct Scrape(String);

impl Scrape {
    /// The sample `name` with exactly the labels `labels`; 0 when absent (a counter never
    /// incremented is not rendered by every exporter).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
        for line in self
            .0
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (series_name, found) = match series.split_once('{') {
                Some((series_name, rest)) => {
                    (series_name, parse_labels(rest.trim_end_matches('}')))
                }
                None => (series, BTreeMap::new()),
            };
            if series_name == name && found == want {
                return value.parse().unwrap();
            }
        }
        0.0
    }

    fn has(&self, text: &str) -> bool {
        self.0.contains(text)
    }
}

fn parse_labels(text: &str) -> BTreeMap<&str, &str> {
    text.split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap();
            (key, value.trim_matches('"'))
        })
        .collect()
}

/// The server's open frame on a fresh WebSocket, and its sid.
async fn ws_session(server: &TestServer, query: &str) -> (Ws, String) {
    let mut socket = server.ws(query).await;
    let open = next_json(&mut socket).await;
    assert_eq!(open["t"], "open", "{open}");
    (socket, open["sid"].as_str().unwrap().to_string())
}

fn payload_bytes(messages: &[Message]) -> f64 {
    messages.iter().map(Message::payload_len).sum::<usize>() as f64
}

/// Korean, emoji, escapes and a binary payload.
fn messages() -> Vec<Message> {
    let mut messages: Vec<Message> = TEXTS.iter().map(Message::text).collect();
    messages.push(Message::binary(binary_payload()));
    messages
}

#[tokio::test]
async fn transports_fallback_upgrade_and_messages_are_counted() {
    let (mut server, metrics) = start(Switchboard::builder()).await;
    let http = reqwest::Client::new();

    // A WebSocket session: opened, attached, sessions{websocket}.
    let (mut socket, sid) = ws_session(&server, "").await;
    let session = server.next_session().await;
    let scrape = metrics.scrape().await;
    assert!(scrape.has("# HELP switchboard_sessions "), "{}", scrape.0);
    assert_eq!(
        scrape.value("switchboard_sessions_opened_total", &[("origin", "client")]),
        1.0
    );
    assert_eq!(
        scrape.value("switchboard_sessions", &[("transport", "websocket")]),
        1.0
    );
    assert_eq!(
        scrape.value("switchboard_sessions", &[("transport", "none")]),
        0.0
    );
    assert_eq!(
        scrape.value(
            "switchboard_transports_attached",
            &[("transport", "websocket")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value(
            "switchboard_transport_attaches_total",
            &[("transport", "websocket")]
        ),
        1.0
    );

    // Messages out: handed to the WebSocket, in payload bytes.
    let out = messages();
    for message in &out {
        session.send(message.clone()).unwrap();
    }
    for _ in 0..out.len() {
        assert_eq!(next_json(&mut socket).await["t"], "m");
    }
    let scrape = metrics.scrape().await;
    let ws = [("transport", "websocket")];
    assert_eq!(
        scrape.value("switchboard_messages_out_total", &ws),
        out.len() as f64
    );
    assert_eq!(
        scrape.value("switchboard_bytes_out_total", &ws),
        payload_bytes(&out)
    );

    // Messages in: delivered to the application once, a duplicate not counted.
    let sent = ["안녕하세요", "🎉 emoji"];
    for (seq, text) in sent.iter().enumerate() {
        let frame = json!({"t": "m", "s": seq + 1, "d": text}).to_string();
        socket.send(WsMessage::text(frame)).await.unwrap();
    }
    let duplicate = json!({"t": "m", "s": 1, "d": sent[0]}).to_string();
    socket.send(WsMessage::text(duplicate)).await.unwrap();
    for text in sent {
        assert_eq!(session.recv().await.unwrap().as_text().unwrap(), text);
    }
    let received: Vec<Message> = sent.iter().map(Message::text).collect();
    assert_eq!(
        metrics
            .until("switchboard_messages_in_total", &ws, 2.0)
            .await,
        2.0
    );
    let scrape = metrics.scrape().await;
    assert_eq!(
        scrape.value("switchboard_bytes_in_total", &ws),
        payload_bytes(&received)
    );

    // The WebSocket drops; the client falls back to long polling (nothing was acknowledged, so
    // the four messages go out again, now on long polling).
    drop(socket);
    assert_eq!(
        metrics
            .until("switchboard_transports_attached", &ws, 0.0)
            .await,
        0.0
    );
    let (status, answer) = common::get(&http, server.poll_url(&sid, 0, true)).await;
    assert_eq!(status, 200, "{answer}");
    let scrape = metrics.scrape().await;
    let lp = [("transport", "longpoll")];
    assert_eq!(
        scrape.value(
            "switchboard_transport_fallbacks_total",
            &[("from", "websocket"), ("to", "longpoll")]
        ),
        1.0
    );
    assert_eq!(scrape.value("switchboard_sessions", &lp), 1.0);
    assert_eq!(scrape.value("switchboard_sessions", &ws), 0.0);
    assert_eq!(
        scrape.value("switchboard_messages_out_total", &lp),
        out.len() as f64
    );
    assert_eq!(
        scrape.value("switchboard_bytes_out_total", &lp),
        payload_bytes(&out)
    );

    // A long poll parks, then a WebSocket takes over from it: an upgrade and a takeover.
    let parked = common::spawn_get(&http, server.poll_url(&sid, out.len() as u64, true));
    assert_eq!(
        metrics
            .until("switchboard_transports_attached", &lp, 1.0)
            .await,
        1.0
    );
    let query = format!("&sid={sid}&ack={}", out.len());
    let (socket, _) = ws_session(&server, &query).await;
    let (status, _) = parked.await.unwrap();
    assert_eq!(status, 409, "the parked poll is superseded");
    let scrape = metrics.scrape().await;
    assert_eq!(
        scrape.value(
            "switchboard_transport_upgrades_total",
            &[("from", "longpoll"), ("to", "websocket")]
        ),
        1.0
    );
    assert_eq!(
        scrape.value("switchboard_transport_takeovers_total", &ws),
        1.0
    );
    assert_eq!(
        scrape.value("switchboard_transport_attaches_total", &ws),
        2.0
    );
    assert_eq!(
        scrape.value("switchboard_transport_attaches_total", &lp),
        2.0
    );
    assert_eq!(scrape.value("switchboard_sessions", &ws), 1.0);
    assert_eq!(scrape.value("switchboard_sessions", &lp), 0.0);
    assert_eq!(
        metrics
            .until("switchboard_transports_attached", &lp, 0.0)
            .await,
        0.0
    );

    // A short-polling session: from none to poll is neither a fallback nor an upgrade; its
    // POSTed messages count as the poll's.
    let poll_sid = open(&http, &server.base).await;
    let poll_session = server.next_session().await;
    assert_eq!(
        metrics
            .scrape()
            .await
            .value("switchboard_sessions", &[("transport", "none")]),
        1.0
    );
    let (status, _) = common::get(&http, server.poll_url(&poll_sid, 0, false)).await;
    assert_eq!(status, 200);
    let body = json!([{"t": "m", "s": 1, "d": "짧은 폴링 👋"}]).to_string();
    let (status, answer) = post(&http, &server.base, &poll_sid, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        poll_session.recv().await.unwrap().as_text().unwrap(),
        "짧은 폴링 👋"
    );
    let scrape = metrics.scrape().await;
    let poll = [("transport", "poll")];
    assert_eq!(scrape.value("switchboard_sessions", &poll), 1.0);
    assert_eq!(
        scrape.value("switchboard_sessions", &[("transport", "none")]),
        0.0
    );
    assert_eq!(scrape.value("switchboard_messages_in_total", &poll), 1.0);
    assert_eq!(
        scrape.value("switchboard_bytes_in_total", &poll),
        Message::text("짧은 폴링 👋").payload_len() as f64
    );
    assert_eq!(
        scrape.value(
            "switchboard_transport_fallbacks_total",
            &[("from", "websocket"), ("to", "poll")]
        ),
        0.0
    );

    // An SSE stream.
    let response = http
        .get(format!("{}/sse?v=1", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _sse_session = server.next_session().await;
    let sse = [("transport", "sse")];
    assert_eq!(metrics.until("switchboard_sessions", &sse, 1.0).await, 1.0);
    assert_eq!(
        metrics
            .scrape()
            .await
            .value("switchboard_transports_attached", &sse),
        1.0
    );
    drop(response);
    assert_eq!(
        metrics
            .until("switchboard_transports_attached", &sse, 0.0)
            .await,
        0.0
    );

    // Ends, by reason; the gauges go back down.
    session.close("bye");
    poll_session.close("bye");
    assert_eq!(
        metrics
            .until(
                "switchboard_sessions_ended_total",
                &[("reason", "closed")],
                2.0
            )
            .await,
        2.0
    );
    let scrape = metrics.scrape().await;
    assert_eq!(scrape.value("switchboard_sessions", &ws), 0.0);
    assert_eq!(scrape.value("switchboard_sessions", &poll), 0.0);
    assert_eq!(scrape.value("switchboard_sessions", &sse), 1.0);
    assert_eq!(
        scrape.value("switchboard_sessions_opened_total", &[("origin", "client")]),
        3.0
    );
    drop(socket);
}

#[tokio::test]
async fn overflow_backpressure_and_buffer_depth_are_counted() {
    let builder = Switchboard::builder()
        .max_buffered_messages(8)
        .inbound_queue(1)
        // The reaper samples the buffer depth on every pass: every 20 ms at this window.
        .resume_window(Duration::from_millis(80));
    let (mut server, metrics) = start(builder).await;

    // Back-pressure: with a queue of one, the second message waits until the application takes
    // the first, the third until it takes the second.
    let (mut socket, _) = ws_session(&server, "").await;
    let session = server.next_session().await;
    for seq in 1..=3 {
        let frame = json!({"t": "m", "s": seq, "d": format!("메시지 {seq}")}).to_string();
        socket.send(WsMessage::text(frame)).await.unwrap();
    }
    assert_eq!(
        metrics
            .until("switchboard_inbound_waits_total", &[], 1.0)
            .await,
        1.0
    );
    for seq in 1..=3 {
        assert_eq!(
            session.recv().await.unwrap().as_text().unwrap(),
            format!("메시지 {seq}")
        );
    }
    assert_eq!(
        metrics
            .until("switchboard_inbound_waits_total", &[], 2.0)
            .await,
        2.0
    );

    // Five unacknowledged messages: the sampled depth reaches the bucket of 16 but not of 4.
    for i in 0..5 {
        session.send(format!("깊이 {i}")).unwrap();
    }
    let mut taken = 0;
    while taken < 5 {
        let frame = next_json(&mut socket).await;
        match frame["t"].as_str() {
            Some("m") => taken += 1,
            Some("ack" | "ping") => {}
            _ => panic!("unexpected {frame}"),
        }
    }
    // The reaper runs every 20 ms.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let scrape = metrics.scrape().await;
    let count = scrape.value("switchboard_buffer_depth_count", &[]);
    let deep = count - scrape.value("switchboard_buffer_depth_bucket", &[("le", "4")]);
    assert!(count >= 1.0, "{}", scrape.0);
    assert!(
        deep >= 1.0,
        "a sample of 5 unacknowledged messages: {}",
        scrape.0
    );

    // Overflow: more than 8 unacknowledged messages.
    for i in 0..10 {
        let _ = session.send(format!("넘침 {i} 🌊"));
    }
    assert_eq!(
        metrics
            .until(
                "switchboard_sessions_ended_total",
                &[("reason", "overflow")],
                1.0
            )
            .await,
        1.0
    );
    assert_eq!(
        metrics
            .scrape()
            .await
            .value("switchboard_sessions", &[("transport", "websocket")]),
        0.0
    );
}

#[tokio::test]
async fn refusals_are_counted_by_code() {
    let builder = Switchboard::builder()
        .allowed_origins(["https://app.example"])
        .ping_interval(Duration::from_millis(100))
        .ping_timeout(Duration::from_millis(100));
    let (server, metrics) = start(builder).await;
    let http = reqwest::Client::new();
    let refused = |code| [("kind", "request"), ("code", code)];

    // Requests.
    let (status, _) = common::get(&http, format!("{}/poll?v=1&sid=nothex", server.base)).await;
    assert_eq!(status, 400);
    let unknown = "0123456789abcdef0123456789abcdef";
    for _ in 0..2 {
        let (status, _) = common::get(&http, server.poll_url(unknown, 0, false)).await;
        assert_eq!(status, 404);
    }
    let response = http
        .post(format!("{}/open?v=1", server.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let scrape = metrics.scrape().await;
    assert_eq!(
        scrape.value("switchboard_rejected_total", &refused("bad_request")),
        1.0
    );
    assert_eq!(
        scrape.value("switchboard_rejected_total", &refused("unknown_session")),
        2.0
    );
    assert_eq!(
        scrape.value("switchboard_rejected_total", &refused("origin_not_allowed")),
        1.0
    );

    // A WebSocket for an unknown session, refused after the upgrade with a close code.
    let mut socket = server.ws(&format!("&sid={unknown}")).await;
    assert!(next_json(&mut socket).await["ws_close"].is_number());
    assert_eq!(
        metrics
            .until(
                "switchboard_rejected_total",
                &refused("unknown_session"),
                3.0
            )
            .await,
        3.0
    );

    // Frames: malformed, then silence until the heartbeat time-out (ping 100 ms + 100 ms).
    let (mut socket, _) = ws_session(&server, "").await;
    socket.send(WsMessage::text("{not json")).await.unwrap();
    socket
        .send(WsMessage::binary(vec![0xff, 0x00]))
        .await
        .unwrap();
    let frame = [("kind", "frame"), ("code", "malformed_frame")];
    assert_eq!(
        metrics
            .until("switchboard_rejected_total", &frame, 2.0)
            .await,
        2.0
    );
    let timeouts = [("transport", "websocket")];
    assert_eq!(
        metrics
            .until("switchboard_heartbeat_timeouts_total", &timeouts, 1.0)
            .await,
        1.0
    );
    drop(socket);
}

#[tokio::test]
async fn limits_per_address_are_counted() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let realtime = Switchboard::builder()
        .sessions_per_address(1)
        .metrics_recorder(recorder)
        .build();
    let server = TestServer::start_served(realtime, |serve| serve).await;
    let http = reqwest::Client::new();
    let _first = open(&http, &server.base).await;
    let response = http
        .post(format!("{}/open?v=1", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let scrape = Scrape(handle.render());
    let limit = [("limit", "address_session_limit")];
    assert_eq!(
        scrape.value("switchboard_address_refusals_total", &limit),
        1.0
    );
    let code = [("kind", "request"), ("code", "address_session_limit")];
    assert_eq!(scrape.value("switchboard_rejected_total", &code), 1.0);
}

#[tokio::test]
async fn transports_run_in_their_sessions_span() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("switchboard=debug"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        );
    let _guard = tracing::subscriber::set_default(subscriber);
    let (mut server, _metrics) = start(Switchboard::builder()).await;
    let (socket, sid) = ws_session(&server, "").await;
    let session = server.next_session().await;
    let key = session
        .key()
        .to_string()
        .trim_start_matches('s')
        .to_string();
    drop(socket);
    let http = reqwest::Client::new();
    let (status, _) = common::get(&http, server.poll_url(&sid, 0, false)).await;
    assert_eq!(status, 200);
    session.close("done");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let session_span = format!("session{{key={key}}}");
    assert!(
        log.lines()
            .any(|line| line.contains(&format!("{session_span}:websocket"))),
        "a WebSocket's events are in its session's span:\n{log}"
    );
    assert!(
        log.lines()
            .any(|line| line.contains(&format!("{session_span}:poll"))),
        "a poll's events are in its session's span:\n{log}"
    );
    assert!(!log.contains(&sid), "the session id is never logged");
}

#[tokio::test]
async fn a_transport_that_fetches_the_close_frame_does_not_count_the_session_again() {
    let (mut server, metrics) = start(Switchboard::builder()).await;
    let http = reqwest::Client::new();
    let (socket, sid) = ws_session(&server, "").await;
    let session = server.next_session().await;
    drop(socket);
    let ws = [("transport", "websocket")];
    assert_eq!(
        metrics
            .until("switchboard_transports_attached", &ws, 0.0)
            .await,
        0.0
    );
    session.close("끝");
    let closed = [("reason", "closed")];
    assert_eq!(
        metrics
            .until("switchboard_sessions_ended_total", &closed, 1.0)
            .await,
        1.0
    );
    // The client comes back over long polling and gets the close frame.
    let (status, frames) = common::get(&http, server.poll_url(&sid, 0, true)).await;
    assert_eq!(status, 200);
    assert_eq!(frames[0]["t"], "close", "{frames}");
    let scrape = metrics.scrape().await;
    for transport in ["none", "websocket", "longpoll"] {
        let labels = [("transport", transport)];
        assert_eq!(
            scrape.value("switchboard_sessions", &labels),
            0.0,
            "{}",
            scrape.0
        );
    }
    let fallback = [("from", "websocket"), ("to", "longpoll")];
    assert_eq!(
        scrape.value("switchboard_transport_fallbacks_total", &fallback),
        0.0
    );
    assert_eq!(
        scrape.value(
            "switchboard_transport_attaches_total",
            &[("transport", "longpoll")]
        ),
        1.0
    );
}
