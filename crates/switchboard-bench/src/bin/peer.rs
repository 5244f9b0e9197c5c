//! The peer of the benchmark: the same work as `sb_server`, done with socketioxide (Socket.IO).
//!
//! socketioxide is the established realtime framework for axum, so it is what Switchboard is
//! compared with. Its layer wraps an axum router at the default path `/socket.io/`; the load
//! generator speaks Engine.IO v4 / Socket.IO v5 over WebSocket only:
//! `ws://127.0.0.1:PORT/socket.io/?EIO=4&transport=websocket`, then `40` to join the namespace `/`.
//!
//! Every socket joins the room `"all"` when it connects. The event `e` with a string payload is
//! emitted back (`e`, same payload) to its sender; the event `b` is broadcast (`b`, same payload)
//! to the whole room, sender included. The payloads are the same strings the other servers get
//! (`e|…`, `b|…`); the event name, not the prefix, decides what happens. Other events are
//! ignored.
//!
//! The per-socket buffer is raised from 128 to [`MAX_BUFFER`] packets so that a burst of
//! broadcasts is not dropped (a packet that does not fit is not sent to that socket); other
//! settings keep their defaults (ping every 25 s, 20 s timeout, 4 KiB WebSocket read buffer).
//!
//! socketioxide runs every event handler in a task of its own, so on a multi-threaded runtime the
//! events of one socket are not handled in the order they arrived: in a burst, broadcasts (and
//! echoes) come back reordered. That is socketioxide's behaviour, measured as it is.
//!
//! The load generator starts it as a child process:
//!
//! ```text
//! peer [--port N] [--redis URL]
//! ```
//!
//! - `--port N`: port on 127.0.0.1 (default 0: ephemeral).
//! - `--redis URL`: run as one node of a cluster on the Redis at `URL`, through socketioxide's own
//!   Redis adapter (socketioxide-redis with its `redis` driver, RESP3, channel prefix `bench-sio`).
//!   Its stream of messages from Redis is raised from 1024 to [`MAX_BUFFER`] like the socket
//!   buffer, since the adapter drops what does not fit. Default: a single node, no Redis.
//!
//! Like the other two servers it sets TCP_NODELAY on every accepted connection and runs on a
//! multi-threaded tokio runtime. When ready it prints `listening on 127.0.0.1:PORT` on stdout; it
//! exits when its stdin reaches EOF, so a harness that dies cannot leak it.

use std::process::ExitCode;

use axum::Router;
use axum::routing::get;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{Data, SocketRef};
use socketioxide::layer::SocketIoLayer;
use socketioxide_redis::drivers::redis::redis_client;
use socketioxide_redis::{RedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

const USAGE: &str = "usage: peer [--port N] [--redis URL]";

/// Packets each socket may have waiting to be written.
const MAX_BUFFER: usize = 65536;

/// The same allocator as `sb_server` (jemalloc with background threads, issue 11), so that the
/// servers compared differ in their work only.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match switchboard_bench::serve::port_and_redis(USAGE) {
        Ok((port, redis)) => Ok(serve(port, redis).await),
        Err(usage) => Err(usage),
    };
    switchboard_bench::serve::exit_code("peer", outcome)
}

async fn serve(port: u16, redis: Option<String>) -> std::io::Result<()> {
    let builder = SocketIo::builder().max_buffer_size(MAX_BUFFER);
    let app = match redis {
        None => {
            let (layer, io) = builder.build_layer();
            io.ns("/", on_connect);
            app(layer)
        }
        Some(url) => {
            let failed = |e: redis_client::RedisError| {
                std::io::Error::other(format!("cannot connect to Redis at {url}: {e}"))
            };
            let client =
                redis_client::Client::open(format!("{url}?protocol=resp3")).map_err(failed)?;
            let config = RedisAdapterConfig::new()
                .with_prefix("bench-sio")
                .with_stream_buffer(MAX_BUFFER);
            let adapter = RedisAdapterCtr::new_with_redis_config(&client, config)
                .await
                .map_err(failed)?;
            let (layer, io) = builder
                .with_adapter::<RedisAdapter<_>>(adapter)
                .build_layer();
            io.ns("/", on_connect)
                .await
                .map_err(|e| std::io::Error::other(format!("Redis adapter: {e}")))?;
            app(layer)
        }
    };
    switchboard_bench::serve::run(port, app, || {}).await
}

/// The router: Socket.IO at `/socket.io/` (the layer), a plain text at `/`.
fn app<A: Adapter>(layer: SocketIoLayer<A>) -> Router {
    Router::new()
        .route("/", get(async || "peer: Socket.IO at /socket.io/"))
        .layer(layer)
}

/// Every socket joins the room; `e` is echoed to its sender, `b` broadcast to the room.
async fn on_connect<A: Adapter>(socket: SocketRef<A>) {
    socket.join("all");
    socket.on(
        "e",
        async |socket: SocketRef<A>, Data(text): Data<String>| {
            socket.emit("e", &text).ok();
        },
    );
    socket.on("b", async |io: SocketIo<A>, Data(text): Data<String>| {
        io.to("all").emit("b", &text).await.ok();
    });
}
