//! The HTTP side of polling: `POST /open` opens a session, `POST /poll` carries client frames.
//!
//! A POST body is a JSON array of client frames. It is validated whole before anything in it is
//! delivered, so a bad batch changes nothing. Message frames are delivered by sequence number:
//! a retried POST whose answer was lost is recognised and its messages are not delivered twice.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use crate::auth::Handshake;
use crate::error::{ApiError, CloseReason};
use crate::mount::Mounted;
use crate::protocol::{self, ClientFrame, FrameError, OpenInfo};
use crate::session::{AttachError, Session, TransportKind};
use crate::transport::{Params, json_response};

/// The answer to a body that could not be read (too large, or broken off).
pub(crate) fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large("request body exceeds the size limit")
    } else if timed_out(&rejection) {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive within the body time-out",
        )
    } else {
        ApiError::bad_request(format!("unreadable body: {}", rejection.body_text()))
    }
}

/// Whether the body broke off because [`serve`](crate::serve())'s body time-out passed.
fn timed_out(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(err) = source {
        if err.is::<crate::serve::BodyTimedOut>() {
            return true;
        }
        source = err.source();
    }
    false
}

pub(crate) async fn open<U: Clone + Send + Sync + 'static>(
    State(mounted): State<Mounted<U>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(peer))| peer);
    match open_session(mounted, peer, headers, uri, body).await {
        Ok(response) => response,
        Err(err) => {
            crate::logs::info_limited!(error = err.code, "session open refused");
            err.into_response()
        }
    }
}

async fn open_session<U: Clone + Send + Sync + 'static>(
    mounted: Mounted<U>,
    peer: Option<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    Params::from_uri(&uri)?;
    let body = body.map_err(body_error)?;
    let auth = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        // A JSON object (not an array, which serde would also read into a struct): its `auth`
        // member, if any and not `null`, is the auth data; other members are ignored.
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
            .map_err(|err| {
                ApiError::bad_request(format!("open body must be {{\"auth\": ...}}: {err}"))
            })?
            .remove("auth")
            .filter(|auth| !auth.is_null())
    };
    let session = mounted
        .open_session(Handshake {
            headers,
            uri,
            auth,
            transport: TransportKind::LongPoll,
            peer,
            client_addr: None,
        })
        .await?;
    let config = &session.shared.config;
    let sid = session.shared.sid.to_hex();
    let frame = protocol::open_frame(&OpenInfo {
        sid: &sid,
        resumed: false,
        ack: 0,
        ping_ms: config.ping_interval.as_millis() as u64,
        hold_ms: config.poll_hold.as_millis() as u64,
        resume_ms: config.resume_window.as_millis() as u64,
        max_message: config.max_message,
        max_body: config.max_body,
    });
    Ok(json_response(frame))
}

pub(crate) async fn send<U: Clone + Send + Sync + 'static>(
    State(mounted): State<Mounted<U>>,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match receive_frames(mounted, uri, body).await {
        Ok(response) => response,
        Err(err) => {
            if err.status == StatusCode::NOT_FOUND || err.status == StatusCode::TOO_MANY_REQUESTS {
                tracing::debug!(error = err.code, "POST refused");
            } else {
                crate::logs::info_limited!(error = err.code, message = %err.message, "POST refused");
            }
            err.into_response()
        }
    }
}

async fn receive_frames<U: Clone + Send + Sync + 'static>(
    mounted: Mounted<U>,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from_uri(&uri)?;
    let session = mounted.lookup(params.sid()?)?;
    let span = tracing::info_span!(parent: &session.shared.span(), "post");
    receive_into(mounted, session, body).instrument(span).await
}

/// [`receive_frames`] once the session is found, in a span of the session's.
async fn receive_into<U: Clone + Send + Sync + 'static>(
    mounted: Mounted<U>,
    session: Session<U>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let shared = &session.shared;
    let body = body.map_err(body_error)?;
    let _slot = shared.begin_post().ok_or_else(ApiError::busy)?;
    shared
        .touch()
        .map_err(|err| mounted.refusal(&session, err))?;
    let frames =
        protocol::decode_batch(&body, shared.config.max_message).map_err(|err| match err {
            FrameError::Malformed(_) => ApiError::malformed_frame(err.to_string()),
            FrameError::TooLarge { .. } => ApiError::too_large(err.to_string()),
        })?;
    let mut messages = Vec::new();
    let mut pong = false;
    let mut close = false;
    for frame in frames {
        match frame {
            ClientFrame::Message { seq, message } => messages.push((seq, message)),
            ClientFrame::Ack(ack) => {
                shared.ack(ack);
            }
            ClientFrame::Ping => pong = true,
            // A pong answers nothing over HTTP (the server pings only WebSockets); frames of a
            // type this version does not know are ignored (`docs/protocol.md` §3).
            ClientFrame::Pong | ClientFrame::Unknown => {}
            ClientFrame::Close => close = true,
        }
    }
    // Back-pressure holds the answer while the application's queue is full, but not beyond the
    // poll hold time: then the answer acknowledges what was delivered and the client resends the
    // rest later.
    let hold = shared.config.poll_hold;
    let ack = match tokio::time::timeout(hold, shared.deliver(None, messages)).await {
        Ok(ack) => ack,
        Err(_) => shared.inbound_ack(),
    };
    if close {
        shared.close(CloseReason::ClientClosed);
    }
    let mut answer = vec![protocol::ack_frame(ack)];
    if pong {
        answer.push(protocol::PONG_FRAME.to_string());
    }
    match shared.close_reason() {
        // It expired while the POST waited for the application: the client is answered as for an
        // unknown session, never with close code 4002 (`docs/protocol.md` §8).
        Some(CloseReason::Expired) => {
            return Err(mounted.refusal(&session, AttachError::Expired));
        }
        // It moved to another node: the client goes on there, and sends again what this answer
        // does not acknowledge.
        Some(CloseReason::HandedOver) | None => {}
        Some(reason) => answer.push(protocol::close_frame(reason.code(), reason.reason())),
    }
    Ok(json_response(format!("[{}]", answer.join(","))))
}
