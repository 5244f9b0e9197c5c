//! Low-level access to the protocol: one HTTP request or one WebSocket at a time, exactly as the
//! caller crafts it. Nothing is retried, acknowledged or deduplicated here (except that WebSocket
//! pings of RFC 6455 are answered by the WebSocket library).

mod http;
mod ws;

pub use http::{Http, RawResponse, SseEvent, SseStream};
pub use ws::WsConn;

use crate::error::Error;

/// Builds an [`Error::Http`] from a status and an error body of protocol §7.
pub(crate) fn http_error(status: u16, body: &[u8]) -> Error {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    match field("error") {
        Some(code) => Error::Http {
            status,
            code,
            message: field("message").unwrap_or_default(),
        },
        None => Error::Http {
            status,
            code: String::new(),
            message: String::from_utf8_lossy(body).into_owned(),
        },
    }
}
