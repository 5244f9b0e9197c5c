//! This node's link to the rest of its cluster, when it has a [`Backend`]: forwarding requests to
//! the node that owns their session and waiting for the answer, and the byte formats of what
//! nodes send each other (`docs/scale-out.md`, "Request paths").
//!
//! Nothing here knows transports: the router's cluster layer ([`crate::cluster`]) decides what to
//! forward and runs what was forwarded here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::backend::{Backend, SessionRef};
use crate::error::ApiError;
use crate::protocol::EncodedMessage;
use crate::session::Priority;
use crate::session::registry::Registry;

/// How long an asker waits for the answer to a forwarded request that is not a long poll.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwarded requests waiting for their answers, at most, on one node.
pub(crate) const MAX_PENDING: usize = 10_000;

/// How often a node rewrites the ownership records of its sessions.
pub(crate) const REFRESH_PERIOD: Duration = Duration::from_secs(10);

/// What a forwarded request asks the owner to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `GET /poll` (long or short).
    Receive,
    /// `POST /poll`.
    Send,
}

/// A request forwarded to this node by node `from`.
#[derive(Debug)]
pub(crate) struct Forwarded {
    pub(crate) id: u64,
    pub(crate) from: String,
    pub(crate) op: Op,
    pub(crate) query: String,
    pub(crate) body: Bytes,
}

/// The kinds of node messages (the first byte).
const REQUEST: u8 = 1;
const ANSWER: u8 = 2;

/// A node message, decoded.
#[derive(Debug)]
pub(crate) enum NodeMessage {
    Request(Forwarded),
    Answer(u64, Answer),
}

/// The answer to a forwarded request: an HTTP response with its whole body.
#[derive(Debug)]
pub(crate) struct Answer {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
}

impl Answer {
    /// The answer `response` makes, its body read whole (every answer of `/poll` is a small,
    /// complete body).
    pub(crate) async fn from_response(response: Response) -> Self {
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        Self {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
            body,
        }
    }

    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut headers = HeaderMap::new();
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value),
            ) {
                headers.append(name, value);
            }
        }
        (status, headers, self.body).into_response()
    }
}

/// This node's link to its cluster.
pub(crate) struct Node {
    pub(crate) backend: Arc<dyn Backend>,
    pending: DashMap<u64, oneshot::Sender<Answer>>,
    next_id: AtomicU64,
}

impl Node {
    pub(crate) fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            pending: DashMap::new(),
            next_id: AtomicU64::new(1),
        }
    }

    /// This node's id.
    pub(crate) fn id(&self) -> &str {
        self.backend.node_id()
    }

    /// Hands an answer that came back to the request waiting for it (if it still waits).
    pub(crate) fn answered(&self, id: u64, answer: Answer) {
        if let Some((_, waiting)) = self.pending.remove(&id) {
            waiting.send(answer).ok();
        }
    }

    /// Sends a request for `session`, which this node does not hold, to the node that owns it,
    /// and answers with the owner's answer. `patience` is how long to wait for it; when it runs
    /// out, the answer is `on_timeout`.
    ///
    /// No owner, or an owner that is no longer alive: `404 unknown_session`, as for a session
    /// that never existed (the client starts over). The engine unreachable: `503
    /// backend_unavailable`. Too many forwarded requests waiting already: `503 forward_busy`.
    pub(crate) async fn forward(
        &self,
        session: SessionRef,
        op: Op,
        query: &str,
        body: Bytes,
        patience: Duration,
        on_timeout: fn() -> Response,
    ) -> Response {
        let owner = match self.backend.owner(session).await {
            Ok(Some(owner)) if owner != self.id() => owner,
            // No record, or a record that names this node, which does not hold the session: it
            // has ended.
            Ok(_) => return ApiError::unknown_session().into_response(),
            Err(err) => return unavailable(&err),
        };
        if self.pending.len() >= MAX_PENDING {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "forward_busy",
                "too many requests are waiting for other nodes; try again",
            )
            .into_response();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        self.pending.insert(id, answer_tx);
        let _forget = Forget { node: self, id };
        let request = encode_request(id, self.id(), op, query, &body);
        match self.backend.send_to_node(&owner, request).await {
            Ok(true) => {}
            Ok(false) => {
                // Nobody listens on the owner's channel: it has died (or is between
                // connections to the engine, if it is still alive).
                return match self.backend.node_alive(&owner).await {
                    Ok(false) => {
                        tracing::debug!(owner = %owner, "forwarded request found its owner dead");
                        ApiError::unknown_session().into_response()
                    }
                    Ok(true) => unavailable(&crate::backend::BackendError::new(
                        "the owner is alive but not listening",
                    )),
                    Err(err) => unavailable(&err),
                };
            }
            Err(err) => return unavailable(&err),
        }
        match tokio::time::timeout(patience, answer_rx).await {
            Ok(Ok(answer)) => answer.into_response(),
            _ => {
                tracing::debug!(owner = %owner, "forwarded request timed out");
                on_timeout()
            }
        }
    }

    /// Publishes a broadcast to `topic` (see [`encode_broadcast`]).
    pub(crate) fn publish(
        &self,
        topic: crate::backend::Topic<'_>,
        message: &EncodedMessage,
        except: Option<u64>,
        priority: Priority,
    ) -> Result<(), crate::backend::BackendError> {
        self.backend
            .publish(topic, encode_broadcast(message, except, priority))
    }
}

/// Rewrites the ownership records of every live session `registry` holds.
pub(crate) async fn refresh<U>(registry: &Registry<U>, node: &Node) {
    let sessions = registry.live_refs();
    if sessions.is_empty() {
        return;
    }
    if let Err(err) = node.backend.refresh(sessions).await {
        tracing::warn!(error = %err, "ownership records not refreshed");
    }
}

/// Starts the task that refreshes the ownership records of `registry`'s sessions every
/// [`REFRESH_PERIOD`]; it stops when the registry is dropped.
pub(crate) fn start_refresher<U: Send + Sync + 'static>(
    registry: &Arc<Registry<U>>,
    node: Arc<Node>,
) {
    let weak = Arc::downgrade(registry);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(registry) = weak.upgrade() else {
                break;
            };
            refresh(&registry, &node).await;
        }
    });
}

/// Removes a pending request's entry when its asker stops waiting, whatever the reason (answered,
/// timed out, or the client went away).
struct Forget<'a> {
    node: &'a Node,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.node.pending.remove(&self.id);
    }
}

fn unavailable(err: &crate::backend::BackendError) -> Response {
    tracing::warn!(error = %err, "request for another node's session not forwarded");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        "the cluster backend is unavailable; try again",
    )
    .into_response()
}

// Byte formats. Every integer is big-endian; a string is its length then its UTF-8 bytes.
//
// request:   1, id u64, from (u16 len), op u8 (1 receive, 2 send), query (u32 len), body (rest)
// answer:    2, id u64, status u16, header count u8, headers (name u8 len, value u16 len), body (rest)
// broadcast: priority u8 (0 normal, 1 low), except u64 (0: none), payload length u32, tail (rest)

fn encode_request(id: u64, from: &str, op: Op, query: &str, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + from.len() + query.len() + body.len());
    out.put_u8(REQUEST);
    out.put_u64(id);
    put_str16(&mut out, from);
    out.put_u8(match op {
        Op::Receive => 1,
        Op::Send => 2,
    });
    out.put_u32(query.len() as u32);
    out.put_slice(query.as_bytes());
    out.put_slice(body);
    out.freeze()
}

/// The node message that carries `answer` to request `id`.
pub(crate) fn encode_answer(id: u64, answer: &Answer) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + answer.body.len() + 64 * answer.headers.len());
    out.put_u8(ANSWER);
    out.put_u64(id);
    out.put_u16(answer.status);
    let headers: Vec<_> = answer
        .headers
        .iter()
        .filter(|(name, value)| name.len() <= 255 && value.len() <= 65_535)
        .take(255)
        .collect();
    out.put_u8(headers.len() as u8);
    for (name, value) in headers {
        out.put_u8(name.len() as u8);
        out.put_slice(name.as_bytes());
        out.put_u16(value.len() as u16);
        out.put_slice(value);
    }
    out.put_slice(&answer.body);
    out.freeze()
}

/// Decodes a node message; `None` if it is not one this version knows.
pub(crate) fn decode_node_message(mut bytes: Bytes) -> Option<NodeMessage> {
    let kind = take_u8(&mut bytes)?;
    let id = take_u64(&mut bytes)?;
    match kind {
        REQUEST => {
            let from = take_str16(&mut bytes)?;
            let op = match take_u8(&mut bytes)? {
                1 => Op::Receive,
                2 => Op::Send,
                _ => return None,
            };
            let len = take_u32(&mut bytes)? as usize;
            let query = take_string(&mut bytes, len)?;
            Some(NodeMessage::Request(Forwarded {
                id,
                from,
                op,
                query,
                body: bytes,
            }))
        }
        ANSWER => {
            let status = take_u16(&mut bytes)?;
            let count = take_u8(&mut bytes)?;
            let mut headers = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let len = usize::from(take_u8(&mut bytes)?);
                let name = take_string(&mut bytes, len)?;
                let len = usize::from(take_u16(&mut bytes)?);
                if bytes.len() < len {
                    return None;
                }
                headers.push((name, bytes.split_to(len).to_vec()));
            }
            Some(NodeMessage::Answer(
                id,
                Answer {
                    status,
                    headers,
                    body: bytes,
                },
            ))
        }
        _ => None,
    }
}

/// A broadcast as published: the encoded message, the key of the session left out, and the
/// priority.
pub(crate) fn encode_broadcast(
    message: &EncodedMessage,
    except: Option<u64>,
    priority: Priority,
) -> Bytes {
    let tail = message.tail_text();
    let mut out = BytesMut::with_capacity(13 + tail.len());
    out.put_u8(match priority {
        Priority::Normal => 0,
        Priority::Low => 1,
    });
    out.put_u64(except.unwrap_or(0));
    out.put_u32(message.payload_len() as u32);
    out.put_slice(tail.as_bytes());
    out.freeze()
}

/// A published broadcast, decoded: `None` if it does not parse.
pub(crate) fn decode_broadcast(
    mut bytes: Bytes,
) -> Option<(EncodedMessage, Option<u64>, Priority)> {
    let priority = match take_u8(&mut bytes)? {
        0 => Priority::Normal,
        1 => Priority::Low,
        _ => return None,
    };
    let except = take_u64(&mut bytes)?;
    let payload_len = take_u32(&mut bytes)? as usize;
    let tail = std::str::from_utf8(&bytes).ok()?;
    Some((
        EncodedMessage::from_tail(tail, payload_len),
        (except != 0).then_some(except),
        priority,
    ))
}

fn put_str16(out: &mut BytesMut, text: &str) {
    let text = &text.as_bytes()[..text.len().min(65_535)];
    out.put_u16(text.len() as u16);
    out.put_slice(text);
}

fn take_u8(bytes: &mut Bytes) -> Option<u8> {
    (bytes.remaining() >= 1).then(|| bytes.get_u8())
}

fn take_u16(bytes: &mut Bytes) -> Option<u16> {
    (bytes.remaining() >= 2).then(|| bytes.get_u16())
}

fn take_u32(bytes: &mut Bytes) -> Option<u32> {
    (bytes.remaining() >= 4).then(|| bytes.get_u32())
}

fn take_u64(bytes: &mut Bytes) -> Option<u64> {
    (bytes.remaining() >= 8).then(|| bytes.get_u64())
}

fn take_string(bytes: &mut Bytes, len: usize) -> Option<String> {
    if bytes.len() < len {
        return None;
    }
    String::from_utf8(bytes.split_to(len).to_vec()).ok()
}

fn take_str16(bytes: &mut Bytes) -> Option<String> {
    let len = usize::from(take_u16(bytes)?);
    take_string(bytes, len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::message::Message;

    #[test]
    fn requests_answers_and_broadcasts_survive_their_encoding() {
        let request = encode_request(7, "node-a", Op::Send, "v=1&sid=ab", "[안녕 👋]".as_bytes());
        let Some(NodeMessage::Request(forwarded)) = decode_node_message(request) else {
            panic!("not a request");
        };
        assert_eq!(
            (forwarded.id, forwarded.from.as_str(), forwarded.op),
            (7, "node-a", Op::Send)
        );
        assert_eq!(forwarded.query, "v=1&sid=ab");
        assert_eq!(&forwarded.body[..], "[안녕 👋]".as_bytes());

        let answer = Answer {
            status: 409,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: Bytes::from_static(b"{\"error\":\"superseded\"}"),
        };
        let Some(NodeMessage::Answer(9, decoded)) = decode_node_message(encode_answer(9, &answer))
        else {
            panic!("not an answer");
        };
        assert_eq!(decoded.status, 409);
        assert_eq!(decoded.headers, answer.headers);
        assert_eq!(decoded.body, answer.body);

        let message = EncodedMessage::new(&Message::binary(vec![0u8, 159, 255]).with_event("e"));
        let (decoded, except, priority) =
            decode_broadcast(encode_broadcast(&message, Some(3), Priority::Low)).unwrap();
        assert_eq!(decoded.tail_text(), message.tail_text());
        assert_eq!(decoded.payload_len(), 3);
        assert_eq!((except, priority), (Some(3), Priority::Low));
    }

    #[test]
    fn truncated_or_unknown_messages_are_refused() {
        let request = encode_request(1, "n", Op::Receive, "q", b"body");
        for cut in 0..14 {
            assert!(decode_node_message(request.slice(..cut)).is_none(), "{cut}");
        }
        assert!(decode_node_message(Bytes::from_static(&[9, 0, 0, 0, 0, 0, 0, 0, 1])).is_none());
        assert!(
            decode_broadcast(Bytes::from_static(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]))
                .is_none()
        );
        assert!(
            decode_broadcast(Bytes::from_static(&[
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff
            ]))
            .is_none()
        );
    }
}
