//! The Switchboard server of the benchmark: the system under test.
//!
//! Switchboard with default settings (only `allow_any_origin`), mounted at `/rt`, so clients
//! connect to `ws://127.0.0.1:PORT/rt/ws?v=1` (or open a polling session with
//! `POST /rt/open?v=1`). Every session joins the room `"all"`. A text message starting with `e|`
//! is echoed to its sender; one starting with `b|` is broadcast to the whole room, sender
//! included; anything else is ignored.
//!
//! The load generator starts it as a child process:
//!
//! ```text
//! sb_server [--port N] [--coalescing-ms N] [--low] [--redis URL] [--serve axum|switchboard]
//! ```
//!
//! - `--port N`: port on 127.0.0.1 (default 0: ephemeral).
//! - `--redis URL`: run as one node of a cluster on the Redis at `URL`
//!   ([`RedisBackend`](switchboard_redis::RedisBackend), prefix `bench`); every node started with the
//!   same `URL` shares the room. Default: a single node, no Redis.
//! - `--coalescing-ms N`: the longest a low-priority message may be held back
//!   ([`Coalescing::max_delay`]); the other coalescing thresholds keep their defaults.
//! - `--low`: broadcasts go out at [`Priority::Low`](switchboard::Priority::Low), so they may be
//!   batched (the long-polling scenario with batching).
//! - `--serve switchboard`: serve with [`switchboard::serve`] (connection time-outs and limits)
//!   instead of `axum::serve` (the default). Its requests then carry the client's address, so the
//!   per-address session limits apply; they are lifted here (the load generator's thousands of
//!   clients come from 8 loopback addresses), and the connection limit is raised to
//!   [`SWITCHBOARD_MAX_CONNECTIONS`](switchboard_bench::serve::SWITCHBOARD_MAX_CONNECTIONS).
//!
//! Like the other two servers it sets TCP_NODELAY on every accepted connection and runs on a
//! multi-threaded tokio runtime. When ready it prints `listening on 127.0.0.1:PORT` on stdout; it
//! exits when its stdin reaches EOF, so a harness that dies cannot leak it.

use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use switchboard::{Coalescing, Hub, Session, Switchboard};
use switchboard_bench::serve::{Serving, exit_code, flag_value, run_with};

const USAGE: &str = "usage: sb_server [--port N] [--coalescing-ms N] [--low] [--redis URL] [--serve axum|switchboard]";

/// The command line.
#[derive(Debug, Default)]
struct Args {
    port: u16,
    coalescing_ms: Option<u64>,
    low: bool,
    redis: Option<String>,
    serve: Serving,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Args::default();
        let mut iter = std::env::args().skip(1);
        while let Some(arg) = iter.next() {
            match arg.as_str() {
                "--port" => args.port = flag_value(&arg, iter.next(), USAGE)?,
                "--coalescing-ms" => {
                    args.coalescing_ms = Some(flag_value(&arg, iter.next(), USAGE)?)
                }
                "--low" => args.low = true,
                "--redis" => args.redis = Some(flag_value(&arg, iter.next(), USAGE)?),
                "--serve" => args.serve = flag_value(&arg, iter.next(), USAGE)?,
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        Ok(args)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Args::parse() {
        Ok(args) => Ok(serve(args).await),
        Err(usage) => Err(usage),
    };
    exit_code("sb_server", outcome)
}

async fn serve(args: Args) -> std::io::Result<()> {
    let mut builder = Switchboard::builder().allow_any_origin();
    if let Some(ms) = args.coalescing_ms {
        builder = builder.coalescing(Coalescing {
            max_delay: Duration::from_millis(ms),
            ..Coalescing::default()
        });
    }
    if let Some(url) = &args.redis {
        let backend = switchboard_redis::RedisBackend::builder(url.as_str())
            .prefix("bench")
            .connect()
            .await
            .map_err(|e| std::io::Error::other(format!("cannot connect to Redis at {url}: {e}")))?;
        builder = builder.backend(backend);
    }
    if args.serve == Serving::Switchboard {
        builder = builder
            .sessions_per_address(usize::MAX)
            .open_rate_per_address(0, 1);
    }
    let realtime = builder.build();
    let hub = realtime.hub();
    let low = args.low;
    let app = Router::new().nest(
        "/rt",
        realtime.router(move |session| on_session(session, hub.clone(), low)),
    );
    run_with(args.serve, args.port, app, || {}).await
}

async fn on_session(session: Session, hub: Hub, low: bool) {
    if session.join("all").is_err() {
        return;
    }
    while let Some(message) = session.recv().await {
        let Some(text) = message.as_text() else {
            continue;
        };
        if text.starts_with("e|") {
            session.send(message).ok();
        } else if text.starts_with("b|") {
            let room = hub.to("all");
            let room = if low { room.low_priority() } else { room };
            room.send(&message).ok();
        }
    }
}
