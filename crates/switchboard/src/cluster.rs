//! The cluster layer of the router: on a node with a backend, a request for a session that
//! another node owns is forwarded there, requests forwarded here are run as if they had arrived
//! here, and broadcasts published by any node are delivered to this node's sessions.
//!
//! Between the router (which mounts these handlers instead of the transports' own when the
//! server has a backend) and the transports (which run what is forwarded, unchanged).
//! `docs/scale-out.md` has the design; [`crate::node`] the forwarding itself.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::Uri;
use axum::response::Response;
use futures_util::future::Either;

use crate::backend::{Delivery, SessionRef};
use crate::hub::{self, Target};
use crate::mount::{Inner, Mounted};
use crate::node::{self, Answer, Forwarded, Node, NodeMessage, Op};
use crate::session::SessionId;
use crate::transport::{self, Params, json_response};

/// How much longer than the hold time an asker waits for the answer to a forwarded long poll.
const LONG_POLL_GRACE: Duration = Duration::from_secs(5);

/// `GET /poll` on a node of a cluster: run here when the session is here, else forwarded to its
/// owner.
pub(crate) fn receive<U: Clone + Send + Sync + 'static>(
    State(mounted): State<Mounted<U>>,
    uri: Uri,
) -> impl Future<Output = Response> + Send {
    match elsewhere(&mounted, &uri) {
        None => Either::Left(transport::longpoll::receive(State(mounted), uri)),
        Some((node, session, wait)) => Either::Right(Box::pin(async move {
            let hold = mounted.inner.config.poll_hold;
            let (patience, on_timeout): (Duration, fn() -> Response) = if wait {
                // Nothing was acknowledged by a poll whose answer never came, so an empty answer
                // loses nothing: the client polls again.
                (hold + LONG_POLL_GRACE, || json_response("[]"))
            } else {
                (node::FORWARD_TIMEOUT, forward_timeout)
            };
            node.forward(
                session,
                Op::Receive,
                uri.query().unwrap_or(""),
                Bytes::new(),
                patience,
                on_timeout,
            )
            .await
        })),
    }
}

/// `POST /poll` on a node of a cluster: run here when the session is here, else forwarded.
pub(crate) async fn send<U: Clone + Send + Sync + 'static>(
    State(mounted): State<Mounted<U>>,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match (elsewhere(&mounted, &uri), body) {
        (Some((node, session, _)), Ok(body)) => {
            node.forward(
                session,
                Op::Send,
                uri.query().unwrap_or(""),
                body,
                node::FORWARD_TIMEOUT,
                forward_timeout,
            )
            .await
        }
        (_, body) => transport::poll::send(State(mounted), uri, body).await,
    }
}

fn forward_timeout() -> Response {
    use axum::response::IntoResponse as _;
    crate::error::ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "forward_timeout",
        "the node that holds this session did not answer in time; try again",
    )
    .into_response()
}

/// The node link, the session and whether the poll may wait, when `uri` names a well-formed
/// session id that this node does not hold. Anything else (no backend, a bad request, a session
/// held here) is for the transport to answer.
fn elsewhere<U>(mounted: &Mounted<U>, uri: &Uri) -> Option<(Arc<Node>, SessionRef, bool)> {
    let node = mounted.inner.node.as_ref()?;
    let params = Params::from_uri(uri).ok()?;
    let sid = SessionId::parse(params.sid.as_deref()?)?;
    if mounted.inner.registry.get(&sid).is_some() {
        return None;
    }
    Some((
        node.clone(),
        SessionRef(*sid.as_bytes()),
        params.wait != Some(0),
    ))
}

/// The callback a backend hands what arrives for this node to.
pub(crate) fn deliveries<U: Clone + Send + Sync + 'static>(
    inner: Weak<Inner<U>>,
) -> Arc<dyn Fn(Delivery) + Send + Sync> {
    Arc::new(move |delivery| {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(node) = inner.node.clone() else {
            return;
        };
        match delivery {
            Delivery::Node(bytes) => match node::decode_node_message(bytes) {
                Some(NodeMessage::Answer(id, answer)) => node.answered(id, answer),
                Some(NodeMessage::Request(request)) => {
                    tokio::spawn(run_forwarded(inner, node, request));
                }
                None => tracing::warn!("node message of an unknown kind ignored"),
            },
            Delivery::Room(room, bytes) => broadcast(&inner, Target::Room(&room), bytes),
            Delivery::All(bytes) => broadcast(&inner, Target::All, bytes),
            Delivery::Reconnected => {
                tracing::info!(node = node.id(), "cluster backend reconnected");
                tokio::spawn(async move {
                    node::refresh(&inner.registry, &node).await;
                });
            }
        }
    })
}

fn broadcast<U>(inner: &Inner<U>, target: Target<'_>, bytes: Bytes) {
    match node::decode_broadcast(bytes) {
        Some((message, except, priority)) => {
            hub::deliver(
                &inner.registry,
                &inner.rooms,
                target,
                &message,
                except,
                priority,
            );
        }
        None => tracing::warn!("broadcast that does not parse ignored"),
    }
}

/// Runs a request another node forwarded here, through the same code as a local one, and sends
/// the answer back.
async fn run_forwarded<U: Clone + Send + Sync + 'static>(
    inner: Arc<Inner<U>>,
    node: Arc<Node>,
    request: Forwarded,
) {
    let Forwarded {
        id,
        from,
        op,
        query,
        body,
    } = request;
    let response = match (
        Mounted::first(inner),
        format!("/poll?{query}").parse::<Uri>(),
    ) {
        (Some(mounted), Ok(uri)) => match op {
            Op::Receive => transport::longpoll::receive(State(mounted), uri).await,
            Op::Send => transport::poll::send(State(mounted), uri, Ok(body)).await,
        },
        // No router yet, or a query that is no URI: nothing here can answer it.
        _ => {
            use axum::response::IntoResponse as _;
            crate::error::ApiError::unknown_session().into_response()
        }
    };
    let answer = Answer::from_response(response).await;
    if let Err(err) = node
        .backend
        .send_to_node(&from, node::encode_answer(id, &answer))
        .await
    {
        tracing::debug!(error = %err, "answer to a forwarded request not sent");
    }
}
