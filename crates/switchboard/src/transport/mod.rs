//! Transports: thin adapters that attach to a session, drain its buffer and feed it client frames.
//!
//! - [`websocket`]: one socket carries frames both ways; the server pings, detects dead peers, and
//!   writes every queued frame before flushing once.
//! - [`longpoll`]: `GET /poll` drains the session, held until there is something to send
//!   (`wait=1`, long polling) or answered at once (`wait=0`, short polling).
//! - [`sse`]: `GET /sse` streams the session's frames as Server-Sent Events down one response.
//! - [`poll`]: the HTTP side shared by both polling modes and SSE: `POST /open` opens a session and
//!   `POST /poll` carries client frames up in batches.
//!
//! Transports never talk to the hub, and the hub never knows which transport is attached.

pub(crate) mod longpoll;
pub(crate) mod poll;
pub(crate) mod sse;
pub(crate) mod websocket;

use axum::http::Uri;
use axum::response::Response;
use serde::Deserialize;

use crate::error::ApiError;
use crate::protocol;

/// Query parameters of every endpoint (`docs/protocol.md` §4–5).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Params {
    /// Any value other than exactly `1` is an unsupported version (§2).
    pub(crate) v: Option<String>,
    pub(crate) sid: Option<String>,
    #[serde(default, deserialize_with = "decimal")]
    pub(crate) ack: Option<u64>,
    /// `0`: short poll; any other number: long poll (§5.2, §16).
    #[serde(default, deserialize_with = "decimal")]
    pub(crate) wait: Option<u64>,
    pub(crate) auth: Option<String>,
    /// WebSocket only: exactly `1` asks the server to send JSON arrays of frames; any other
    /// value means one frame per message (§5.1).
    pub(crate) batch: Option<String>,
    /// `GET /ws` and `GET /poll`: the attach number, which orders a client's transport requests
    /// (§9, "Ordering attaches"); absent means 0.
    #[serde(default, deserialize_with = "decimal")]
    pub(crate) att: Option<u64>,
}

/// Only the version of a request, whatever the other parameters hold.
#[derive(Deserialize)]
struct Version {
    v: Option<String>,
}

impl Params {
    pub(crate) fn from_uri(uri: &Uri) -> Result<Self, ApiError> {
        let params: Params = match uri.query() {
            Some(query) => serde_urlencoded_query(query).map_err(|err| {
                // The version comes first: a request of another version may carry parameters
                // that version 1 cannot read.
                match serde_urlencoded_query::<Version>(query) {
                    Ok(Version { v: Some(v) }) if !is_supported(&v) => unsupported_version(),
                    _ => err,
                }
            })?,
            None => Params::default(),
        };
        if let Some(version) = &params.v
            && !is_supported(version)
        {
            return Err(unsupported_version());
        }
        if params.ack.is_some_and(|ack| ack > protocol::MAX_SEQ) {
            return Err(ApiError::bad_request("ack must be at most 2^53-1"));
        }
        if params.wait.is_some_and(|wait| wait > protocol::MAX_SEQ) {
            return Err(ApiError::bad_request("wait must be at most 2^53-1"));
        }
        if params.att.is_some_and(|att| att > protocol::MAX_SEQ) {
            return Err(ApiError::bad_request("att must be at most 2^53-1"));
        }
        Ok(params)
    }

    /// The attach number (§9): `att`, or 0 when absent.
    pub(crate) fn att(&self) -> u64 {
        self.att.unwrap_or(0)
    }

    pub(crate) fn sid(&self) -> Result<&str, ApiError> {
        self.sid
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("missing query parameter sid"))
    }
}

fn is_supported(version: &str) -> bool {
    version == "1"
}

fn unsupported_version() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "unsupported_version",
        format!("this server speaks protocol version {}", protocol::VERSION),
    )
}

/// A query number: decimal digits only (no sign, fraction, exponent or spaces), `docs/protocol.md`
/// §16.
fn decimal<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(serde::de::Error::custom(format!(
            "{text:?} is not a decimal integer"
        )));
    }
    text.parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is too large")))
}

fn serde_urlencoded_query<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{query}")
            .parse::<Uri>()
            .map_err(|_| ApiError::bad_request("unreadable query string"))?,
    )
    .map(|axum::extract::Query(params)| params)
    .map_err(|err| ApiError::bad_request(format!("bad query parameter: {}", err.body_text())))
}

/// A `200` answer with a JSON body that no cache may keep.
pub(crate) fn json_response(body: impl Into<axum::body::Body>) -> Response {
    crate::error::json_response(axum::http::StatusCode::OK, body)
}
