//! The server the JavaScript client's browser tests (`client-js/test/browser/`) run against.
//!
//! ```text
//! cargo run -p switchboard --example e2e_server -- --port 0 [--hold-ms N] [--ping-ms N] [--resume-ms N] [--allowed-origin O]... [--exit-on-eof]
//! ```
//!
//! With `--exit-on-eof` the server exits when its stdin closes, so that it cannot outlive a test
//! runner that dies without killing it.
//!
//! Binds 127.0.0.1 (port 0 = ephemeral), prints `listening on 127.0.0.1:PORT` once ready, mounts
//! Switchboard at `/rt` (any origin allowed: the tests put proxies in between; with
//! `--allowed-origin`, given once per origin, only the server's own origin and those) and serves a
//! blank test page at `/` that loads `/rt/client.js`. Each session echoes what it receives, except for
//! these JSON commands:
//!
//! - `{"cmd":"stream","count":N,"prefix":P,"ms":M}`: sends the texts `"P 0"` … `"P N-1"`, spread
//!   evenly over `M` ms (back to back without `ms`);
//! - `{"cmd":"lowstream","count":N}`: sends `"low 0"` … `"low N-1"` at low priority;
//! - `{"cmd":"close","reason":R}`: closes the session with reason `R`.
//!
//! A request (the client's `conn.request`) is answered with its own payload and event name,
//! except for these:
//!
//! - `{"cmd":"later","ms":M,"value":V}`: answered with `V` after `M` ms;
//! - `{"cmd":"ignore"}`: never answered.
//!
//! Startup errors (a bad flag, a port that is taken) are reported on stderr as
//! `e2e_server: <what went wrong>`, and the server exits with status 1.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use serde_json::Value;
use switchboard::{Message, Priority, Session, Switchboard};

const PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>switchboard e2e</title><link rel=\"icon\" href=\"data:,\">\
<script src=\"/rt/client.js\"></script></head><body></body></html>";

const USAGE: &str = "usage: e2e_server [--port N] [--hold-ms N] [--ping-ms N] [--resume-ms N] \
                     [--allowed-origin ORIGIN]... [--exit-on-eof]";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("e2e_server: {problem}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the flags, listens, and serves until the server fails (or stdin closes, with
/// `--exit-on-eof`); `Err` says what went wrong.
async fn run() -> Result<(), String> {
    let mut port = 0u16;
    let mut exit_on_eof = false;
    let mut origins = Vec::new();
    let mut builder = Switchboard::builder().allow_any_origin();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--exit-on-eof" {
            exit_on_eof = true;
            continue;
        }
        if flag == "--allowed-origin" {
            origins.push(
                args.next()
                    .ok_or_else(|| format!("{flag} needs an origin\n{USAGE}"))?,
            );
            continue;
        }
        if !matches!(
            flag.as_str(),
            "--port" | "--hold-ms" | "--ping-ms" | "--resume-ms"
        ) {
            return Err(format!("unknown flag {flag:?}\n{USAGE}"));
        }
        let value: u64 = args
            .next()
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number\n{USAGE}"))?;
        let ms = Duration::from_millis(value);
        builder = match flag.as_str() {
            "--port" => {
                port = u16::try_from(value)
                    .map_err(|_| format!("--port {value}: a port is at most 65535"))?;
                builder
            }
            "--hold-ms" => builder.poll_hold(ms),
            "--ping-ms" => builder.ping_interval(ms),
            _ => builder.resume_window(ms),
        };
    }
    if !origins.is_empty() {
        builder = builder.allowed_origins(origins);
    }
    let realtime = builder.build();
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .nest("/rt", realtime.router(on_session));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|err| format!("cannot listen on 127.0.0.1:{port}: {err}"))?;
    let addr = listener
        .local_addr()
        .map_err(|err| format!("cannot listen on 127.0.0.1:{port}: {err}"))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")
        .and_then(|()| stdout.flush())
        .map_err(|err| format!("cannot write to stdout: {err}"))?;
    if exit_on_eof {
        tokio::spawn(async {
            let mut sink = tokio::io::sink();
            tokio::io::copy(&mut tokio::io::stdin(), &mut sink)
                .await
                .ok();
            std::process::exit(0);
        });
    }
    axum::serve(listener, app)
        .await
        .map_err(|err| format!("server failed: {err}"))
}

async fn on_session(session: Session) {
    while let Some(message) = session.recv().await {
        let command = message.decode::<Value>().ok();
        let field = |name: &str| command.as_ref().and_then(|value| value.get(name));
        let count = field("count").and_then(Value::as_u64).unwrap_or(0);
        if message.request_id().is_some() {
            match field("cmd").and_then(Value::as_str) {
                Some("later") => {
                    let ms = field("ms").and_then(Value::as_u64).unwrap_or(0);
                    let value = field("value").cloned().unwrap_or(Value::Null);
                    let session = session.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        if let Ok(reply) = Message::json(&value) {
                            session.reply(&message, reply).ok();
                        }
                    });
                }
                Some("ignore") => {}
                _ => {
                    if session.reply(&message, message.clone()).is_err() {
                        break;
                    }
                }
            }
            continue;
        }
        match field("cmd").and_then(Value::as_str) {
            Some("stream") => {
                let prefix = field("prefix").and_then(Value::as_str).unwrap_or("");
                let spread = field("ms").and_then(Value::as_u64);
                // Its own task, so that echoes keep flowing while the stream runs.
                tokio::spawn(stream(session.clone(), count, prefix.to_owned(), spread));
            }
            Some("lowstream") => {
                for i in 0..count {
                    let text = Message::text(format!("low {i}"));
                    if session.send_with(text, Priority::Low).is_err() {
                        break;
                    }
                }
            }
            Some("close") => {
                session.close(field("reason").and_then(Value::as_str).unwrap_or(""));
            }
            // Anything else, binary included, goes back unchanged (payload and event name).
            _ => {
                if session.send(message).is_err() {
                    break;
                }
            }
        }
    }
}

/// Sends `count` texts `"{prefix} {i}"`, message `i` at `i * ms / count` after the start.
async fn stream(session: Session, count: u64, prefix: String, ms: Option<u64>) {
    let start = tokio::time::Instant::now();
    for i in 0..count {
        if let Some(ms) = ms {
            let at = start + Duration::from_millis(i * ms / count.max(1));
            tokio::time::sleep_until(at).await;
        }
        if session
            .send(Message::text(format!("{prefix} {i}")))
            .is_err()
        {
            break;
        }
    }
}
