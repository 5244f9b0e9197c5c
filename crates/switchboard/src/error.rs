//! Errors: what the application and the client see when something is refused.

use std::fmt;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Why a session ended. Sent to the client as the close frame's code and reason
/// (`docs/protocol.md` §8) and returned by [`Session::closed`](crate::Session::closed).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The application closed the session ([`Session::close`](crate::Session::close)) or its
    /// session handler returned. Code 4000; the text is the application's reason.
    Closed(String),
    /// The client asked to close. Code 4001.
    ClientClosed,
    /// No transport was attached for the resume window. Code 4002.
    Expired,
    /// The outbound buffer exceeded its message or byte limit (the client did not keep up).
    /// Code 4003.
    Overflow,
    /// The server is shutting down. Code 4004.
    Shutdown,
    /// The client broke the protocol. Code 4005.
    ProtocolError(String),
    /// On a node of a cluster: the session moved to another node, where it goes on (its
    /// handler there sees [`Session::handed_over`](crate::Session::handed_over)). The client
    /// never sees this: its transports here are told they were taken over (`409`, `4100`).
    HandedOver,
}

impl CloseReason {
    /// The close code sent to the client.
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::Closed(_) => 4000,
            CloseReason::ClientClosed => 4001,
            CloseReason::Expired => 4002,
            CloseReason::Overflow => 4003,
            CloseReason::Shutdown => 4004,
            CloseReason::ProtocolError(_) => 4005,
            CloseReason::HandedOver => 4100,
        }
    }

    /// The reason text sent to the client.
    pub fn reason(&self) -> &str {
        match self {
            CloseReason::Closed(text) => text,
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Expired => "expired",
            CloseReason::Overflow => "overflow",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ProtocolError(_) => "protocol_error",
            CloseReason::HandedOver => "handed_over",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ProtocolError(why) => write!(f, "{} (protocol_error: {why})", self.code()),
            _ => write!(f, "{} ({})", self.code(), self.reason()),
        }
    }
}

/// Why a message could not be sent to a session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The session has ended; the reason says why.
    Closed(CloseReason),
    /// The payload is larger than the configured message size limit. Nothing was sent.
    TooLarge {
        /// Payload size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Buffering the message would have exceeded the session's buffer limit; the session has been
    /// closed with [`CloseReason::Overflow`] and the client will start a fresh session.
    Overflow,
    /// The value could not be encoded as JSON.
    Encode(String),
    /// On a node of a cluster: the backend could not take the broadcast (its queue is full, or
    /// the shared engine is unreachable). Nobody received it.
    Backend(String),
    /// No session has this key (a direct send on a single node, see
    /// [`Hub::session`](crate::Hub::session)).
    NoSuchSession,
    /// [`Session::reply`](crate::Session::reply) was given a message that is not a client's
    /// request (its [`Message::request_id`](crate::Message::request_id) is `None`). Nothing was
    /// sent.
    NotARequest,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed(reason) => write!(f, "session closed: {reason}"),
            SendError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max} bytes")
            }
            SendError::Overflow => write!(f, "session buffer overflowed; session closed"),
            SendError::Encode(why) => write!(f, "cannot encode message: {why}"),
            SendError::Backend(why) => write!(f, "broadcast not published: {why}"),
            SendError::NoSuchSession => write!(f, "no session has this key"),
            SendError::NotARequest => {
                write!(f, "the message is not a request: nothing to reply to")
            }
        }
    }
}

impl std::error::Error for SendError {}

/// Why a room could not be joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinError {
    /// The session has ended.
    Closed,
    /// The session is already in the maximum number of rooms.
    TooManyRooms {
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Closed => write!(f, "session closed"),
            JoinError::TooManyRooms { max } => write!(f, "session is already in {max} rooms"),
        }
    }
}

impl std::error::Error for JoinError {}

/// An HTTP error answer of the protocol (`docs/protocol.md` §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// Seconds after which the client may try again (`Retry-After`), for a refusal that passes.
    pub(crate) retry_after: Option<u32>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same answer, telling the client to try again after `seconds` (`Retry-After`).
    pub(crate) fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn malformed_frame(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_frame", message)
    }

    pub(crate) fn unknown_session() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_session",
            "no such session: it never existed, expired, or has ended",
        )
    }

    pub(crate) fn superseded() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "superseded",
            "another transport took over this session",
        )
    }

    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub(crate) fn busy() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "a POST for this session is already being processed",
        )
    }

    pub(crate) fn origin_not_allowed() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not use this server",
        )
    }

    pub(crate) fn host_not_allowed() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "this server does not answer to this host name",
        )
    }

    pub(crate) fn session_limit() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "session_limit",
            "the server holds its maximum number of sessions",
        )
    }

    pub(crate) fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
    }

    pub(crate) fn refused(status: StatusCode, message: String) -> Self {
        let code = match status {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
            _ => "refused",
        };
        Self::new(status, code, message)
    }

    /// The WebSocket close code for this error when it is delivered after an upgrade: `4100` for
    /// a stale request (`superseded`, as for a socket that was taken over), otherwise
    /// `4000 + status`.
    pub(crate) fn close_code(&self) -> u16 {
        if self.status == StatusCode::CONFLICT {
            return 4100;
        }
        4000 + self.status.as_u16()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "message": self.message}).to_string();
        let mut response = json_response(self.status, body);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(Rejected(self.code));
        response
    }
}

/// Marks a response as a refusal with this error code, for the metrics (see
/// [`crate::router`]'s origin check, which counts them on the way out).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rejected(pub(crate) &'static str);

/// A JSON answer that no cache may keep.
pub(crate) fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
