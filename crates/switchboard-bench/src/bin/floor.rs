//! The floor of the benchmark: the same work as `sb_server` with no framework at all.
//!
//! A minimal axum WebSocket server written the way an expert would write it by hand, to show what
//! the bare transport costs: the gap between it and Switchboard is the framework's price. No
//! sessions, no sequence numbers, no acknowledgements, no resumption; every WebSocket text message
//! is an application message.
//!
//! Clients connect to `ws://127.0.0.1:PORT/ws`. Every connection is in the one room. A text message
//! starting with `e|` is echoed to its sender; one starting with `b|` is broadcast, unchanged, to
//! every connection, sender included; anything else is ignored.
//!
//! How: the WebSocket uses the same 4 KiB read and write buffers as Switchboard's default. The
//! room is one [`broadcast`] channel (capacity 16384). Each connection has one task that waits on
//! either the socket or the room; when it writes, it takes what woke it plus everything else
//! already waiting (up to [`BATCH`] messages), feeds them all and flushes once. A connection that
//! falls more than the channel's capacity behind skips what it missed (counted, and printed to
//! stderr on exit).
//!
//! The load generator starts it as a child process:
//!
//! ```text
//! floor [--port N]
//! ```
//!
//! - `--port N`: port on 127.0.0.1 (default 0: ephemeral).
//!
//! Like the other two servers it sets TCP_NODELAY on every accepted connection and runs on a
//! multi-threaded tokio runtime. When ready it prints `listening on 127.0.0.1:PORT` on stdout; it
//! exits when its stdin reaches EOF, so a harness that dies cannot leak it.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::SinkExt as _;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

const USAGE: &str = "usage: floor [--port N]";

/// The room's channel capacity, in messages.
const CAPACITY: usize = 16384;
/// Most messages written with one flush.
const BATCH: usize = 1024;
/// WebSocket read and write buffer sizes: Switchboard's defaults.
const BUFFER: usize = 4096;

/// Broadcast messages skipped by connections that fell behind, over the whole run.
static LAGGED: AtomicU64 = AtomicU64::new(0);

/// The same allocator as `sb_server` (jemalloc with background threads, issue 11), so that the
/// servers compared differ in their work only.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match switchboard_bench::serve::port_only(USAGE) {
        Ok(port) => Ok(serve(port).await),
        Err(usage) => Err(usage),
    };
    switchboard_bench::serve::exit_code("floor", outcome)
}

async fn serve(port: u16) -> std::io::Result<()> {
    let (room, _) = broadcast::channel::<Utf8Bytes>(CAPACITY);
    let app = Router::new().route("/ws", get(upgrade)).with_state(room);
    let report_lag = || {
        eprintln!(
            "floor: broadcast messages skipped by lagging connections: {}",
            LAGGED.load(Ordering::Relaxed)
        );
    };
    switchboard_bench::serve::run(port, app, report_lag).await
}

async fn upgrade(
    State(room): State<broadcast::Sender<Utf8Bytes>>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.read_buffer_size(BUFFER)
        .write_buffer_size(BUFFER)
        .on_upgrade(move |socket| connection(socket, room))
}

/// One connection's only task: reads the client, writes what it must, until either side ends.
async fn connection(mut socket: WebSocket, room: broadcast::Sender<Utf8Bytes>) {
    let mut inbox = room.subscribe();
    loop {
        let first = tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if text.starts_with("e|") {
                        text
                    } else {
                        if text.starts_with("b|") {
                            // Fails only when nobody listens, and we do.
                            room.send(text).ok();
                        }
                        continue;
                    }
                }
                // Pings are answered by the WebSocket itself; binary frames are not ours.
                Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
            broadcast = inbox.recv() => match broadcast {
                Ok(text) => text,
                Err(RecvError::Lagged(missed)) => {
                    LAGGED.fetch_add(missed, Ordering::Relaxed);
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
        };
        if write_batch(&mut socket, first, &mut inbox).await.is_err() {
            return;
        }
    }
}

/// Writes `first` and every broadcast already waiting (up to [`BATCH`] in all), then flushes once.
async fn write_batch(
    socket: &mut WebSocket,
    first: Utf8Bytes,
    inbox: &mut broadcast::Receiver<Utf8Bytes>,
) -> Result<(), axum::Error> {
    socket.feed(Message::Text(first)).await?;
    let mut written = 1;
    while written < BATCH {
        match inbox.try_recv() {
            Ok(text) => {
                socket.feed(Message::Text(text)).await?;
                written += 1;
            }
            Err(TryRecvError::Lagged(missed)) => {
                LAGGED.fetch_add(missed, Ordering::Relaxed);
            }
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    socket.flush().await
}
