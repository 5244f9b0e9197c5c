//! Switchboard: realtime channels for axum that survive real networks.
//!
//! A [`Switchboard`] gives each client **one logical, ordered, lossless channel** (a [`Session`]),
//! carried over whichever transport the network allows: WebSocket, HTTP long polling or HTTP short
//! polling. A session outlives its transports: the client can lose its socket, fall back to
//! polling, and upgrade again, and every message in either direction arrives exactly once, in
//! order. Your code never sees a transport.
//!
//! # Layers
//!
//! - [`protocol`]: the wire frames (specified in `docs/protocol.md`), pure encode/decode.
//! - [`session`](Session): per-client state: the sequence-numbered outbound buffer, inbound
//!   dedup, expiry, limits.
//! - transports (`/ws`, `/poll`): thin adapters that attach to a session and drain it.
//! - [`Hub`]: rooms, broadcast and presence; a broadcast is encoded once and shared by every
//!   recipient's buffer.
//! - [`Switchboard::router`]: the axum router, configured through [`Builder`].
//! - [`serve`](mod@serve): serving the app with connection-level limits (time-outs, header size, connection
//!   count), in place of `axum::serve`.
//! - [`backend`]: the seam to the other nodes of a cluster (`switchboard-redis` implements it on
//!   Redis; `docs/scale-out.md`). Without a backend the server is a single node that needs nothing
//!   external.
//!
//! # Example
//!
//! A chat server: every message a client sends goes to everyone else in the lobby.
//!
//! ```no_run
//! use axum::Router;
//! use switchboard::{Hub, Session, Switchboard};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let realtime = Switchboard::builder().build();
//!     let hub = realtime.hub();
//!     let app = Router::new().nest(
//!         "/realtime",
//!         realtime.router(move |session| on_session(session, hub.clone())),
//!     );
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     // Like `axum::serve`, with time-outs and limits on every connection (see `serve`).
//!     switchboard::serve(listener, app)
//!         .with_graceful_shutdown(async move {
//!             tokio::signal::ctrl_c().await.ok();
//!             realtime.shutdown().await;
//!         })
//!         .await
//! }
//!
//! async fn on_session(session: Session, hub: Hub) {
//!     session.join("lobby").ok();
//!     while let Some(message) = session.recv().await {
//!         hub.to("lobby").except(&session).send(&message).ok();
//!     }
//! }
//! ```
//!
//! And a complete round trip you can run (`cargo test --doc`): the server echoes, a raw HTTP
//! client opens a session by long polling, sends Korean text and reads the echo back.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard::Switchboard;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let realtime = Switchboard::builder().build();
//! let app = axum::Router::new().nest("/rt", realtime.router(|session| async move {
//!     while let Some(message) = session.recv().await {
//!         session.send(message).ok();
//!     }
//! }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! async fn request(addr: std::net::SocketAddr, head: &str, body: &str) -> std::io::Result<String> {
//!     let mut stream = tokio::net::TcpStream::connect(addr).await?;
//!     let request = format!(
//!         "{head} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
//!          Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
//!         body.len()
//!     );
//!     stream.write_all(request.as_bytes()).await?;
//!     let mut response = String::new();
//!     stream.read_to_string(&mut response).await?;
//!     Ok(response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
//! }
//!
//! let open: serde_json::Value = serde_json::from_str(&request(addr, "POST /rt/open?v=1", "").await?)?;
//! let sid = open["sid"].as_str().ok_or("no sid")?;
//! request(addr, &format!("POST /rt/poll?v=1&sid={sid}"), r#"[{"t":"m","s":1,"d":"안녕하세요"}]"#).await?;
//! let echoed = request(addr, &format!("GET /rt/poll?v=1&sid={sid}&ack=0"), "").await?;
//! assert_eq!(echoed, r#"[{"t":"m","s":1,"d":"안녕하세요"}]"#);
//! # Ok(())
//! # }
//! ```
//!
//! The guide (`docs/guide.md`) walks through authentication, rooms, priorities and the JavaScript
//! client; `docs/protocol.md` specifies the wire protocol.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod address;
mod auth;
pub mod backend;
mod cluster;
mod config;
mod error;
mod handover;
mod hub;
mod logs;
mod message;
mod metrics;
mod mount;
mod node;
mod presence;
pub mod protocol;
mod room_log;
mod router;
pub mod serve;
mod session;
mod transport;

pub use auth::{Handshake, Refusal};
pub use config::{Builder, Coalescing};
pub use error::{CloseReason, JoinError, SendError};
pub use hub::{Broadcast, Direct, Hub, Member};
pub use logs::QUIET_DEPENDENCIES;
pub use message::{Message, Payload};
pub use presence::{Missed, PresenceChange, PresenceEvent, PresenceWatch};
pub use router::Switchboard;
pub use serve::{Serve, serve};
pub use session::{Priority, Session, SessionKey, TransportKind};

/// The README's code blocks, compiled as doc tests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// The guide's code blocks (`docs/guide.md`), compiled as doc tests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/guide.md")]
struct GuideDoctests;
