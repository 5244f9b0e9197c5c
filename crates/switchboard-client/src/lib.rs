//! A Rust client for the Switchboard realtime protocol (`docs/protocol.md`, version 1).
//!
//! Two layers:
//!
//! - [`raw`]: one HTTP request or one WebSocket at a time, exactly as the caller crafts it
//!   ([`raw::Http`], [`raw::WsConn`]). Meant for protocol tests: retried POSTs, polls whose
//!   answer is thrown away, abrupt socket drops, malformed input.
//! - [`Client`]: one logical session with exactly-once, in-order delivery in both directions,
//!   automatic resume after a dropped transport and transport switching (protocol §9).
//!
//! Frames (protocol §3) are [`ServerFrame`] and [`ClientFrame`]; payloads are [`Message`]s.
//!
//! Only plain `http://` mount points are supported (no TLS).
//!
//! ```no_run
//! use std::time::Duration;
//! use switchboard_client::{Client, Message, Transport};
//!
//! # async fn demo() -> Result<(), switchboard_client::Error> {
//! let mut client = Client::builder("http://127.0.0.1:3000/realtime")
//!     .auth(serde_json::json!({"token": "t0k"}))
//!     .transport(Transport::WebSocket)
//!     .connect()
//!     .await?;
//! let seq = client.send(Message::text("안녕하세요 👋").with_event("chat"))?;
//! assert_eq!(seq, 1);
//! let reply = client.recv().await?;
//! println!("{:?}", reply.as_text());
//! client.switch(Transport::LongPoll).await?; // nothing lost or doubled
//! client.wait_acked(Duration::from_secs(5)).await?;
//! client.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The raw layer, for tests that craft exact requests:
//!
//! ```no_run
//! use switchboard_client::raw::{Http, WsConn};
//! use switchboard_client::{ClientFrame, Message};
//!
//! # async fn demo() -> Result<(), switchboard_client::Error> {
//! let http = Http::new("http://127.0.0.1:3000/realtime");
//! let open = http.open(None).await?;
//! let answer = http.post(&open.sid, &[ClientFrame::msg(1, Message::text("hi"))]).await?;
//! let frames = http.poll(&open.sid, 0, false).await?;
//! let (ws, _open) = WsConn::connect(http.base(), Some(&open.sid), 0, None, None).await?;
//! ws.drop_abruptly(); // TCP RST, no close frame
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod frame;
pub mod raw;
mod url;

pub use client::{Client, ClientBuilder, ClientSender, ClientStats, Transport};
pub use error::Error;
pub use frame::{ClientFrame, MAX_EVENT_LEN, MAX_SEQ, Message, OpenFrame, Payload, ServerFrame};
