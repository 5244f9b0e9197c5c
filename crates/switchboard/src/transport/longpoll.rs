//! `GET /poll`: long polling (`wait=1`) and short polling (`wait=0`).
//!
//! A poll carries the client's acknowledgement, attaches to the session (taking over from any
//! other transport), and answers with every buffered message after that acknowledgement, in one
//! response. A long poll with nothing to send waits, and is answered the moment a normal-priority
//! message arrives, when held low-priority messages are released, or when the hold time ends.
//! Nothing is considered delivered until the next request acknowledges it, so a lost response
//! costs nothing but a resend.

use std::convert::Infallible;
use std::future::{Future, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use futures_util::future::Either;
use tokio::time::{Instant, sleep_until};
use tower_service::Service;
use tracing::Instrument as _;

use crate::error::ApiError;
use crate::mount::Mounted;
use crate::protocol::{self, FrameArray};
use crate::session::{Drain, Session, TransportKind};
use crate::transport::{Params, json_response};

/// The `GET /poll` handler.
///
/// A plain function returning a future rather than an `async fn`: the query is parsed and the
/// session looked up before the future exists, so a waiting poll keeps neither the `Uri` nor
/// the parsed parameters, and a refused one never becomes a future of the waiting kind.
/// (`axum` keeps the handler's future boxed for as long as the request runs, and a parked long
/// poll runs for the whole hold time.)
pub(crate) fn receive<U: Clone + Send + Sync + 'static>(
    State(mounted): State<Mounted<U>>,
    uri: Uri,
) -> impl Future<Output = Response> + Send {
    match accept(&mounted, &uri) {
        Ok((session, request)) => {
            let parent = session.shared.span();
            let span = if request.wait {
                tracing::info_span!(parent: &parent, "longpoll")
            } else {
                tracing::info_span!(parent: &parent, "poll")
            };
            Either::Left(poll(mounted, session, request).instrument(span))
        }
        Err(err) => Either::Right(ready(refused(err))),
    }
}

/// `GET /poll` on a single node, as a service rather than an axum handler.
///
/// axum keeps a handler's future boxed with the request's head (`Parts`) beside it for as long
/// as the request runs, though the head is gone once the extractors have run: about 250 B of
/// every parked long poll. This service keeps only the URI until [`receive`] has read it, and its
/// box holds nothing but the poll's own future.
pub(crate) struct Receive<U> {
    pub(crate) mounted: Mounted<U>,
}

impl<U> Clone for Receive<U> {
    fn clone(&self) -> Self {
        Self {
            mounted: self.mounted.clone(),
        }
    }
}

impl<U: Clone + Send + Sync + 'static> Service<Request> for Receive<U> {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let uri = request.into_parts().0.uri;
        Box::pin(receive(State(self.mounted.clone()), uri).map(Ok))
    }
}

/// What a poll asks for (besides its session).
#[derive(Clone, Copy)]
struct PollRequest {
    /// The client's acknowledgement.
    ack: u64,
    /// Whether the poll may wait (long poll) or is answered at once (short poll).
    wait: bool,
    /// The request's attach number (`docs/protocol.md` §9).
    att: u64,
}

/// The session a poll is for and what the poll asks for.
fn accept<U: Clone + Send + Sync + 'static>(
    mounted: &Mounted<U>,
    uri: &Uri,
) -> Result<(Session<U>, PollRequest), ApiError> {
    let params = Params::from_uri(uri)?;
    let session = mounted.lookup(params.sid()?)?;
    let request = PollRequest {
        ack: params.ack.unwrap_or(0),
        wait: params.wait != Some(0),
        att: params.att(),
    };
    Ok((session, request))
}

fn refused(err: ApiError) -> Response {
    tracing::debug!(error = err.code, "poll refused");
    err.into_response()
}

/// Acknowledges, attaches, and answers once there is something to send (or at once for a short
/// poll, or with `[]` when the hold time ends). A stale poll (see [`Mounted::attach_transport`])
/// is answered `409` at once.
///
/// An `async` block rather than an `async fn`, so that the arguments are kept once (an `async fn`
/// keeps them as arguments and again as locals).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn poll<U: Clone + Send + Sync + 'static>(
    mounted: Mounted<U>,
    session: Session<U>,
    request: PollRequest,
) -> impl Future<Output = Response> + Send {
    async move {
        let shared = &session.shared;
        let PollRequest { ack, wait, att } = request;
        let ack = shared.ack(ack);
        let kind = if wait {
            TransportKind::LongPoll
        } else {
            TransportKind::ShortPoll
        };
        let attached = match mounted.attach_transport(&session, kind, att) {
            Ok(attached) => attached,
            Err(err) => return refused(err),
        };
        let generation = attached.generation();
        let hold_until = Instant::now() + shared.config.poll_hold;
        loop {
            let notified = shared.outbound.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The answer and the drain's outcome are gone by the time the poll waits: only the
            // wake-up and the timer are kept while it is parked.
            let wake_at = {
                let mut body = FrameArray::new();
                match shared.drain(generation, ack, shared.config.max_body, |seq, message| {
                    body.push_message(seq, message)
                }) {
                    Drain::Superseded => return refused(ApiError::superseded()),
                    // It moved to another node: nothing here to send; the client's next poll
                    // finds it there.
                    Drain::Moved => return json_response("[]"),
                    Drain::Ready { close, .. } => {
                        if let Some(reason) = close {
                            body.push_frame(&protocol::close_frame(reason.code(), reason.reason()));
                        }
                        return json_response(body.finish());
                    }
                    Drain::Idle { .. } if !wait => return json_response("[]"),
                    Drain::Idle { wake_at } => {
                        wake_at.map_or(hold_until, |at| Instant::from_std(at).min(hold_until))
                    }
                }
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = sleep_until(wake_at) => {
                    if Instant::now() >= hold_until {
                        return json_response("[]");
                    }
                }
            }
        }
    }
}
