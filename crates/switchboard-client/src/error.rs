//! The error type shared by the raw and the high-level API.

use std::fmt;

/// Everything that can go wrong when talking to a Switchboard server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The server answered an HTTP request (or refused a WebSocket upgrade) with a non-success
    /// status. `code` and `message` come from the JSON error body of protocol §7
    /// (`{"error":"<code>","message":"<text>"}`); when the body is not such an object, `code` is
    /// empty and `message` holds the body text.
    Http {
        /// HTTP status code.
        status: u16,
        /// The `error` field of the body (protocol §7), or `""`.
        code: String,
        /// The `message` field of the body, or the raw body text.
        message: String,
    },
    /// The WebSocket was closed by the server (close frame with `code`), or died without a close
    /// frame (`code: None`, the equivalent of close code 1006).
    WsClosed {
        /// The WebSocket close code, `None` when the connection died without a close handshake.
        code: Option<u16>,
        /// The close reason (for handshake refusals, the error code of protocol §7) or a
        /// description of how the connection died.
        reason: String,
    },
    /// The session ended: the server sent a `close` frame (protocol §3.5, §8).
    SessionClosed {
        /// Close code of protocol §8 (4000..=4005).
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// A network or I/O error (connection refused, reset, ...).
    Io(String),
    /// The peer violated the protocol document (malformed frame, unexpected frame, bad value).
    Protocol(String),
    /// An operation did not finish in time.
    Timeout,
    /// The base URL could not be used (only `http://` and `ws://` mount points are supported).
    InvalidUrl(String),
    /// A message handed to [`Client::send`](crate::Client::send) is not acceptable (payload
    /// larger than `max_message`, event name longer than 128 bytes).
    InvalidMessage(String),
    /// The outbound queue of the high-level client is full (too many unacknowledged messages).
    QueueFull,
    /// The high-level client's background task is gone (the client was closed or failed).
    Closed,
}

impl Error {
    /// The HTTP status, if this is an [`Error::Http`].
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The protocol error code (§7): the `error` field of an HTTP error, or the close reason of a
    /// WebSocket handshake refusal (close code >= 4400).
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Error::Http { code, .. } => Some(code),
            Error::WsClosed {
                code: Some(c),
                reason,
            } if *c >= 4400 => Some(reason),
            _ => None,
        }
    }

    /// `true` for `404 unknown_session` over HTTP and close code `4404` over WebSocket.
    pub fn is_unknown_session(&self) -> bool {
        matches!(
            self,
            Error::Http { status: 404, .. }
                | Error::WsClosed {
                    code: Some(4404),
                    ..
                }
        )
    }

    /// `true` when this error means "the transport died, the session may live on": network
    /// errors, time-outs, WebSocket closures without code, `4101`, `4102`, `1009`, `1001`, `1011`
    /// and HTTP `5xx` answers other than the session-ending ones.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io(_) | Error::Timeout => true,
            Error::WsClosed { code, .. } => match code {
                None => true,
                Some(c) => matches!(c, 1001 | 1006 | 1009 | 1011 | 1012 | 1013 | 4101 | 4102),
            },
            Error::Http { status, code, .. } => {
                *status == 429
                    || (*status >= 500 && code != "session_limit" && code != "shutting_down")
            }
            _ => false,
        }
    }

    pub(crate) fn io(e: impl fmt::Display) -> Error {
        Error::Io(e.to_string())
    }

    pub(crate) fn protocol(e: impl Into<String>) -> Error {
        Error::Protocol(e.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Http {
                status,
                code,
                message,
            } => write!(f, "HTTP {status} {code}: {message}"),
            Error::WsClosed {
                code: Some(code),
                reason,
            } => write!(f, "WebSocket closed with code {code}: {reason}"),
            Error::WsClosed { code: None, reason } => {
                write!(f, "WebSocket closed without close frame: {reason}")
            }
            Error::SessionClosed { code, reason } => {
                write!(f, "session closed with code {code}: {reason}")
            }
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Protocol(e) => write!(f, "protocol violation: {e}"),
            Error::Timeout => write!(f, "timed out"),
            Error::InvalidUrl(e) => write!(f, "invalid URL: {e}"),
            Error::InvalidMessage(e) => write!(f, "invalid message: {e}"),
            Error::QueueFull => write!(f, "outbound queue full"),
            Error::Closed => write!(f, "client closed"),
        }
    }
}

impl std::error::Error for Error {}
