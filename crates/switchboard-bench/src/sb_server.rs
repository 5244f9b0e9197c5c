//! The Switchboard server of the benchmark, the system under test: what the `sb_server*`
//! binaries run. They differ only in their global allocator (issue 11, "Memory goes back";
//! `docs/benchmarks.md`): `sb_server` (the one every scenario uses), `sb_server_system`
//! (glibc's malloc), `sb_server_mimalloc` and `sb_server_jemalloc`.
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
//! sb_server [--port N] [--coalescing-ms N] [--low] [--redis URL] [--hardened | --unprotected | --serve axum|switchboard] [--metrics] [--max-files N]
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
//! - `--hardened`: deployed as recommended against hostile clients (issue 11): served by
//!   [`switchboard::serve`](fn@switchboard::serve) with its default connection limits instead of `axum::serve`, the
//!   per-address limits at their defaults, and `trusted_proxies(["127.0.0.1"])`, so that the
//!   load generator (every socket of which comes from 127.0.0.1) can give each simulated client
//!   its own address in `X-Forwarded-For`, as a reverse proxy in front would.
//! - `--unprotected`: the same application with no protection at all, to show what the
//!   protection buys: `axum::serve`, `sessions_per_address(usize::MAX)` and
//!   `open_rate_per_address(0, 1)`.
//! - `--serve switchboard`: serve with [`switchboard::serve`](fn@switchboard::serve) (connection time-outs and limits)
//!   instead of `axum::serve` (the default), for the parked-session memory of the idle scenario
//!   (issue 12). Its requests then carry the client's address, so the per-address session limits
//!   apply; they are lifted here (the load generator's thousands of clients come from 8 loopback
//!   addresses), and the connection limit is raised to
//!   [`SWITCHBOARD_MAX_CONNECTIONS`](crate::serve::SWITCHBOARD_MAX_CONNECTIONS).
//! - `--metrics`: installs a Prometheus recorder (`metrics-exporter-prometheus`, as the chat
//!   example does) before the server is built, so every metric is recorded, and serves its text at
//!   `GET /metrics` (the metrics scenario, issue 14). Without it no recorder is installed and
//!   Switchboard's counting costs nothing.
//! - `--max-files N`: lowers this process's open-file limit to `N` at start (before
//!   [`switchboard::serve`](fn@switchboard::serve) reads it for its connection limit).
//!
//! Without `--hardened` or `--unprotected` it runs as every other scenario measures it:
//! `axum::serve` (so the per-address limits, which need the peer's address, do not apply).
//!
//! Like the other two servers it sets TCP_NODELAY on every accepted connection and runs on a
//! multi-threaded tokio runtime. When ready it prints `listening on 127.0.0.1:PORT` on stdout; it
//! exits when its stdin reaches EOF, so a harness that dies cannot leak it.

use std::process::ExitCode;
use std::time::Duration;

use crate::serve::{Serving, exit_code, flag_value, run_hardened, run_with};
use axum::Router;
use switchboard::{Coalescing, Hub, Session, Switchboard};

const USAGE: &str = "usage: sb_server [--port N] [--coalescing-ms N] [--low] [--redis URL] [--hardened | --unprotected | --serve axum|switchboard] [--metrics] [--max-files N]";

/// The command line.
#[derive(Debug, Default)]
struct Args {
    port: u16,
    coalescing_ms: Option<u64>,
    low: bool,
    redis: Option<String>,
    hardened: bool,
    unprotected: bool,
    serve: Serving,
    max_files: Option<u64>,
    metrics: bool,
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
                "--hardened" => args.hardened = true,
                "--serve" => args.serve = flag_value(&arg, iter.next(), USAGE)?,
                "--unprotected" => args.unprotected = true,
                "--metrics" => args.metrics = true,
                "--max-files" => args.max_files = Some(flag_value(&arg, iter.next(), USAGE)?),
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if args.hardened && args.unprotected {
            return Err(format!(
                "--hardened and --unprotected exclude each other\n{USAGE}"
            ));
        }
        Ok(args)
    }
}

/// Parses the command line and serves until stdin reaches EOF: the whole of an `sb_server*` binary.
#[tokio::main]
pub async fn main() -> ExitCode {
    let outcome = match Args::parse() {
        Ok(args) => Ok(serve(args).await),
        Err(usage) => Err(usage),
    };
    exit_code("sb_server", outcome)
}

async fn serve(args: Args) -> std::io::Result<()> {
    if let Some(files) = args.max_files {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
        rlimit::setrlimit(rlimit::Resource::NOFILE, files.min(hard), hard)?;
    }
    let scrape = if args.metrics {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .map_err(std::io::Error::other)?;
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        Some(handle)
    } else {
        None
    };
    let mut builder = Switchboard::builder().allow_any_origin();
    if args.hardened {
        builder = builder.trusted_proxies(["127.0.0.1"]);
    }
    if args.unprotected || args.serve == Serving::Switchboard {
        builder = builder
            .sessions_per_address(usize::MAX)
            .open_rate_per_address(0, 1);
    }
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
    let realtime = builder.build();
    let hub = realtime.hub();
    let low = args.low;
    let mut app = Router::new().nest(
        "/rt",
        realtime.router(move |session| on_session(session, hub.clone(), low)),
    );
    if let Some(scrape) = scrape {
        app = app.route(
            "/metrics",
            axum::routing::get(move || std::future::ready(scrape.render())),
        );
    }
    if args.hardened {
        run_hardened(args.port, app, || {}).await
    } else {
        run_with(args.serve, args.port, app, || {}).await
    }
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
