//! `GET /poll`: long polling (`wait=1`) and short polling (`wait=0`).
//!
//! A poll carries the client's acknowledgement, attaches to the session (taking over from any
//! other transport), and answers with every buffered message after that acknowledgement, in one
//! response. A long poll with nothing to send waits, and is answered the moment a normal-priority
//! message arrives, when held low-priority messages are released, or when the hold time ends.
//! Nothing is considered delivered until the next request acknowledges it, so a lost response
//! costs nothing but a resend.

use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use tokio::time::{Instant, sleep_until};

use crate::error::ApiError;
use crate::protocol::{self, FrameArray};
use crate::router::Mounted;
use crate::session::{Drain, TransportKind};
use crate::transport::{Params, json_response};

pub(crate) async fn receive<U: Clone + Send + Sync + 'static>(
    State(mounted): State<Mounted<U>>,
    uri: Uri,
) -> Response {
    match poll(mounted, uri).await {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(error = err.code, "poll refused");
            err.into_response()
        }
    }
}

async fn poll<U: Clone + Send + Sync + 'static>(
    mounted: Mounted<U>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = Params::from_uri(&uri)?;
    let session = mounted.lookup(params.sid()?)?;
    let shared = &session.shared;
    let ack = shared.ack(params.ack.unwrap_or(0));
    let wait = params.wait != Some(0);
    let kind = if wait {
        TransportKind::LongPoll
    } else {
        TransportKind::ShortPoll
    };
    let generation = shared.attach(kind);
    let _attached = mounted.track_transport(&session, generation);
    let hold_until = Instant::now() + shared.config.poll_hold;
    loop {
        let notified = shared.outbound.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut body = FrameArray::new();
        match shared.drain(generation, ack, shared.config.max_body, |seq, message| {
            body.push_message(seq, message)
        }) {
            Drain::Superseded => return Err(ApiError::superseded()),
            Drain::Ready { close, .. } => {
                if let Some(reason) = close {
                    body.push_frame(&protocol::close_frame(reason.code(), reason.reason()));
                }
                return Ok(json_response(body.finish()));
            }
            Drain::Idle { wake_at } => {
                if !wait {
                    return Ok(json_response("[]"));
                }
                let wake_at =
                    wake_at.map_or(hold_until, |at| Instant::from_std(at).min(hold_until));
                tokio::select! {
                    _ = &mut notified => {}
                    _ = sleep_until(wake_at) => {
                        if Instant::now() >= hold_until {
                            return Ok(json_response("[]"));
                        }
                    }
                }
            }
        }
    }
}
