//! Authentication: the application decides who may open a session.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, Uri};

use crate::session::TransportKind;

/// What the authentication hook sees of a request that opens a session.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub(crate) headers: HeaderMap,
    pub(crate) uri: Uri,
    pub(crate) auth: Option<serde_json::Value>,
    pub(crate) transport: TransportKind,
    /// The address the connection came from, if the server knows it (see
    /// [`client_addr`](Self::client_addr)).
    pub(crate) peer: Option<std::net::SocketAddr>,
    pub(crate) client_addr: Option<std::net::IpAddr>,
}

impl Handshake {
    /// The request headers, cookies included.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The request URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The authentication data the client sent (`auth` option of the JavaScript client): from the
    /// `auth` query parameter on WebSocket, from the body of `POST /open` on polling. `None` when
    /// the client sent none, or sent `null` (`docs/protocol.md` §4).
    pub fn auth(&self) -> Option<&serde_json::Value> {
        self.auth.as_ref()
    }

    /// The client's address: the connection's peer, or, when the peer is one of the
    /// [trusted proxies](crate::Builder::trusted_proxies), the client address the proxies
    /// forwarded. `None` when the server does not know the peer (an app served by
    /// `axum::serve` without `ConnectInfo`; [`serve`](crate::serve()) always tells it).
    pub fn client_addr(&self) -> Option<std::net::IpAddr> {
        self.client_addr
    }

    /// The transport that opens the session.
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// The value of the named cookie, if the request carries it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }
}

/// The authentication hook's refusal: the HTTP status and message the client receives.
///
/// On polling the client gets this status with body `{"error": code, "message": message}`; on
/// WebSocket the connection is closed with code `4000 + status` (see `docs/protocol.md` §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl Refusal {
    /// Refuses with `401 Unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::UNAUTHORIZED, message)
    }

    /// Refuses with `403 Forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::with_status(StatusCode::FORBIDDEN, message)
    }

    /// Refuses with another status. Statuses outside 400–599 are replaced by 401, and so are 404
    /// and 409, which mean "unknown session" and "superseded" to clients (`docs/protocol.md` §7):
    /// a refusal must not make a client believe its session was lost.
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        let reserved = status == StatusCode::NOT_FOUND || status == StatusCode::CONFLICT;
        let status = if (status.is_client_error() || status.is_server_error()) && !reserved {
            status
        } else {
            StatusCode::UNAUTHORIZED
        };
        Self {
            status,
            message: message.into(),
        }
    }

    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

pub(crate) type AuthFuture<U> = Pin<Box<dyn Future<Output = Result<U, Refusal>> + Send>>;
pub(crate) type AuthHook<U> = Arc<dyn Fn(Handshake) -> AuthFuture<U> + Send + Sync>;
