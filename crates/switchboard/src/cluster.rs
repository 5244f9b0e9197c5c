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
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse as _, Response};
use futures_util::future::Either;

use crate::backend::{Delivery, SessionRef};
use crate::error::ApiError;
use crate::handover;
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
        Some(Elsewhere {
            node,
            session,
            query,
            wait,
        }) => Either::Right(Box::pin(async move {
            let hold = mounted.inner.config.poll_hold;
            let (patience, on_timeout): (Duration, fn() -> Response) = if wait {
                // Nothing was acknowledged by a poll whose answer never came, so an empty answer
                // loses nothing: the client polls again.
                (hold + LONG_POLL_GRACE, || json_response("[]"))
            } else {
                (node::FORWARD_TIMEOUT, forward_timeout)
            };
            match node
                .forward(
                    session,
                    Op::Receive,
                    &query,
                    Bytes::new(),
                    patience,
                    on_timeout,
                )
                .await
            {
                Ok(response) => response,
                // Taken in here meanwhile.
                Err(()) => transport::longpoll::receive(State(mounted), uri).await,
            }
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
        (Some(elsewhere), Ok(body)) => {
            let forwarded = elsewhere
                .node
                .forward(
                    elsewhere.session,
                    Op::Send,
                    &elsewhere.query,
                    body.clone(),
                    node::FORWARD_TIMEOUT,
                    forward_timeout,
                )
                .await;
            match forwarded {
                Ok(response) => response,
                Err(()) => transport::poll::send(State(mounted), uri, Ok(body)).await,
            }
        }
        // Unreadable here: the owner could not read it either (and the local transport, which
        // does not hold the session, would answer 404 and reset the client).
        (Some(_), Err(rejection)) => transport::poll::body_error(rejection).into_response(),
        (None, body) => transport::poll::send(State(mounted), uri, body).await,
    }
}

fn forward_timeout() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "forward_timeout",
        "the node that holds this session did not answer in time; try again",
    )
    .into_response()
}

/// A request for a session that this node does not hold.
struct Elsewhere {
    node: Arc<Node>,
    session: SessionRef,
    /// The request's parameters without the session id, which never leaves this node.
    query: String,
    /// Whether the poll may wait.
    wait: bool,
}

/// Where a request goes when `uri` names a well-formed session id that this node does not hold.
/// Anything else (no backend, a bad request, a session held here) is for the transport to
/// answer.
fn elsewhere<U>(mounted: &Mounted<U>, uri: &Uri) -> Option<Elsewhere> {
    let node = mounted.inner.node.as_ref()?;
    let params = Params::from_uri(uri).ok()?;
    let sid = SessionId::parse(params.sid.as_deref()?)?;
    if mounted.inner.registry.get(&sid).is_some() {
        return None;
    }
    let mut query = String::from("v=1");
    for (name, value) in [
        ("ack", params.ack),
        ("wait", params.wait),
        ("att", params.att),
    ] {
        if let Some(value) = value {
            query.push_str(&format!("&{name}={value}"));
        }
    }
    Some(Elsewhere {
        node: node.clone(),
        session: SessionRef(*sid.as_bytes()),
        query,
        wait: params.wait != Some(0),
    })
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
                Some(NodeMessage::Request(request)) => match request.op {
                    Op::Receive | Op::Send => {
                        tokio::spawn(run_forwarded(inner, node, request));
                    }
                    // In order with the broadcasts this node receives (see `handover`).
                    Op::Prepare | Op::HandOver => handover::give(&inner, &node, request),
                    Op::Adopt => {
                        tokio::spawn(handover::adopt(inner, node, request));
                    }
                },
                None => tracing::warn!("node message of an unknown kind ignored"),
            },
            Delivery::Room(room, bytes) => broadcast(&inner, &node, Some(room), bytes),
            Delivery::All(bytes) => broadcast(&inner, &node, None, bytes),
            Delivery::Presence(bytes) => inner.rooms.announcer.received(bytes),
            Delivery::Disconnected => node.answers_lost(),
            Delivery::Reconnected => {
                tracing::info!(node = node.id(), "cluster backend reconnected");
                inner.rooms.presence_lost();
                tokio::spawn(async move {
                    node::refresh(&inner.registry, &node).await;
                });
            }
        }
    })
}

/// Delivers a broadcast from the backend to this node's target sessions, and marks it as the
/// last one delivered to its room (for a handover, see [`handover`]).
fn broadcast<U>(inner: &Inner<U>, node: &Node, room: Option<Arc<str>>, bytes: Bytes) {
    let Some(mut broadcast) = node::decode_broadcast(bytes) else {
        tracing::warn!("broadcast that does not parse ignored");
        return;
    };
    broadcast.room = room;
    node.received(broadcast, |broadcast| {
        if let Some(key) = broadcast.only {
            node.all_mark
                .store(broadcast.id, std::sync::atomic::Ordering::Relaxed);
            if let Some(session) = inner.registry.by_key(key) {
                hub::deliver_direct(&session, broadcast);
            }
            return;
        }
        let target = match &broadcast.room {
            Some(room) => {
                inner.rooms.mark(room, broadcast.id);
                Target::Room(room)
            }
            None => {
                node.all_mark
                    .store(broadcast.id, std::sync::atomic::Ordering::Relaxed);
                Target::All
            }
        };
        hub::deliver(
            &inner.registry,
            &inner.rooms,
            target,
            &broadcast.message,
            &broadcast.except,
            broadcast.priority,
        );
    });
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
        key,
        query,
        body,
    } = request;
    let mut session = inner.registry.by_key(key);
    if session.is_none() {
        node.settled(key).await;
        session = inner.registry.by_key(key);
    }
    let answer = match (session, Mounted::first(inner)) {
        (Some(session), Some(mounted)) => {
            let sid = session.shared.sid.to_hex();
            drop(session);
            match format!("/poll?{query}&sid={sid}").parse::<Uri>() {
                Ok(uri) => {
                    let response = match op {
                        Op::Receive => transport::longpoll::receive(State(mounted), uri).await,
                        _ => transport::poll::send(State(mounted), uri, Ok(body)).await,
                    };
                    Answer::from_response(response).await
                }
                Err(_) => {
                    Answer::from_response(
                        ApiError::bad_request("unreadable forwarded query").into_response(),
                    )
                    .await
                }
            }
        }
        // Not here (it moved on, or ended): the asker looks again.
        _ => Answer::plain(node::NOT_HERE, Bytes::new()),
    };
    if let Err(err) = node
        .backend
        .send_to_node(&from, node::encode_answer(id, &answer))
        .await
    {
        tracing::debug!(error = %err, "answer to a forwarded request not sent");
    }
}
