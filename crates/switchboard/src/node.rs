//! This node's link to the rest of its cluster, when it has a [`Backend`]: forwarding requests to
//! the node that owns their session and waiting for the answer, and the byte formats of what
//! nodes send each other (`docs/scale-out.md`, "How it works").
//!
//! Nothing here knows transports: the router's cluster layer ([`crate::cluster`]) decides what to
//! forward and runs what was forwarded here.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use tokio::sync::{Notify, oneshot};

use crate::backend::{Backend, BackendError, Owner, SessionRef};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::protocol::EncodedMessage;
use crate::room_log::Except;
use crate::session::Priority;
use crate::session::registry::Registry;

/// How long an asker waits for the answer to a forwarded request that is not a long poll.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwarded requests waiting for their answers, at most, on one node.
pub(crate) const MAX_PENDING: usize = 10_000;

/// Owners of other nodes' sessions remembered, at most (then the memory starts again empty):
/// a forwarded request to a known owner costs one Redis round trip less. An entry is dropped
/// when its owner says the session is not there, or has died.
const MAX_CACHED_OWNERS: usize = 100_000;

/// How often a node rewrites the ownership records of its sessions.
pub(crate) const REFRESH_PERIOD: Duration = Duration::from_secs(10);

/// What a node message asks its node to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `GET /poll` (long or short).
    Receive,
    /// `POST /poll`.
    Send,
    /// The first step of a handover: which rooms is the session in?
    Prepare,
    /// The second step: hand the session over to the asker (the body lists the rooms it
    /// prepared for).
    HandOver,
    /// From a node that shuts down: take this session over from me (the body is its id).
    Adopt,
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::Receive => 1,
            Op::Send => 2,
            Op::Prepare => 3,
            Op::HandOver => 4,
            Op::Adopt => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Op::Receive,
            2 => Op::Send,
            3 => Op::Prepare,
            4 => Op::HandOver,
            5 => Op::Adopt,
            _ => return None,
        })
    }
}

/// A request another node sent to this one, about the session whose key is `key` here.
#[derive(Debug)]
pub(crate) struct Forwarded {
    pub(crate) id: u64,
    pub(crate) from: String,
    pub(crate) op: Op,
    pub(crate) key: u64,
    /// The request's query without the session id (`docs/scale-out.md`: ids never travel).
    pub(crate) query: String,
    pub(crate) body: Bytes,
}

/// The kinds of node messages (the first byte).
const REQUEST: u8 = 1;
const ANSWER: u8 = 2;

/// The status a node answers a request about a session it does not hold (and is not taking
/// in) with: the asker looks the owner up again (the session may just have moved), at most
/// twice more.
pub(crate) const NOT_HERE: StatusCode = StatusCode::MISDIRECTED_REQUEST;

/// A node message, decoded.
#[derive(Debug)]
pub(crate) enum NodeMessage {
    Request(Forwarded),
    Answer(u64, Answer),
}

/// The answer to a request: an HTTP response with its whole body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Bytes,
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

    /// A bare answer: a status and a body.
    pub(crate) fn plain(status: StatusCode, body: Bytes) -> Self {
        Self {
            status: status.as_u16(),
            headers: Vec::new(),
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

/// Why a request to another node got no answer.
#[derive(Debug)]
pub(crate) enum Unanswered {
    /// The session has no owner: it is gone.
    Gone,
    /// The session's owner record names a node that is dead (or has just moved the session on
    /// and left: look again).
    Dead,
    /// The owner record names this node (the session is being taken in here, or has ended).
    Here(u64),
    /// The engine is unreachable (or the owner is alive but not listening).
    Unavailable(BackendError),
    /// Too many requests wait for answers already.
    Busy,
    /// No answer in time.
    Timeout,
}

impl Unanswered {
    /// The HTTP answer a client gets for it.
    fn into_response(self, on_timeout: fn() -> Response) -> Response {
        match self {
            Unanswered::Gone | Unanswered::Dead | Unanswered::Here(_) => {
                ApiError::unknown_session().into_response()
            }
            Unanswered::Unavailable(err) => unavailable(&err),
            Unanswered::Busy => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "forward_busy",
                "too many requests are waiting for other nodes; try again",
            )
            .into_response(),
            Unanswered::Timeout => on_timeout(),
        }
    }
}

/// A broadcast received while a session is being taken in (see [`Node::record`]).
pub(crate) struct Recorded {
    /// The room, or `None` for a broadcast to everyone (or to one session, `only`).
    pub(crate) room: Option<Arc<str>>,
    pub(crate) id: u64,
    pub(crate) message: EncodedMessage,
    pub(crate) except: Except,
    pub(crate) priority: Priority,
    /// A direct send: only the session of this key.
    pub(crate) only: Option<u64>,
    /// Not a message: close the target session (`only`), with the message's text as reason.
    pub(crate) close: bool,
}

/// Broadcasts to a set of rooms (and to everyone) received while a session is being taken in.
pub(crate) struct Recorder {
    id: u64,
    rooms: Vec<String>,
    log: Vec<Recorded>,
}

/// This node's link to its cluster.
pub(crate) struct Node {
    pub(crate) backend: Arc<dyn Backend>,
    /// The server's metrics (forwarded requests).
    metrics: Arc<Metrics>,
    pending: DashMap<u64, oneshot::Sender<Answer>>,
    /// The owners of sessions other nodes hold, as last looked up (see [`MAX_CACHED_OWNERS`]).
    owners: DashMap<SessionRef, Owner>,
    next_id: AtomicU64,
    /// Numbers this node's publications (with the node's number in the high bits).
    next_publication: AtomicU64,
    /// Keys of the sessions moving into or out of this node right now: requests for them wait.
    incoming: DashMap<u64, ()>,
    /// Recorders of sessions being taken in, and the lock that orders their end against
    /// deliveries (see [`Node::record`]).
    gate: Mutex<Vec<Recorder>>,
    recording: AtomicUsize,
    /// The id of the last broadcast to everyone delivered here.
    pub(crate) all_mark: AtomicU64,
    /// This node shuts down: requests forwarded from here stop waiting.
    stopped: AtomicBool,
    stopping: Notify,
}

impl Node {
    pub(crate) fn new(backend: Arc<dyn Backend>, metrics: Arc<Metrics>) -> Self {
        let first = (u64::from(backend.node_number()) << 44) + 1;
        Self {
            backend,
            metrics,
            pending: DashMap::new(),
            owners: DashMap::new(),
            next_id: AtomicU64::new(1),
            next_publication: AtomicU64::new(first),
            incoming: DashMap::new(),
            gate: Mutex::new(Vec::new()),
            recording: AtomicUsize::new(0),
            all_mark: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            stopping: Notify::new(),
        }
    }

    /// Answers every request forwarded from this node that still waits (a long poll with `[]`),
    /// and those to come at once: the node shuts down, and its clients' next requests reach
    /// another node.
    pub(crate) fn stop_forwarding(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stopping.notify_waiters();
    }

    /// This node's id.
    pub(crate) fn id(&self) -> &str {
        self.backend.node_id()
    }

    /// Stops every request to another node that waits for its answer (they get the answer of a
    /// time-out at once): the connection to the engine dropped, and answers sent meanwhile are
    /// lost.
    pub(crate) fn answers_lost(&self) {
        self.pending.clear();
    }

    /// Hands an answer that came back to the request waiting for it (if it still waits).
    pub(crate) fn answered(&self, id: u64, answer: Answer) {
        if let Some((_, waiting)) = self.pending.remove(&id) {
            waiting.send(answer).ok();
        }
    }

    /// Sends request `op` about `session` to the node that owns it, and waits at most
    /// `patience` for the answer.
    pub(crate) async fn request(
        &self,
        session: SessionRef,
        op: Op,
        query: &str,
        body: &[u8],
        patience: Duration,
    ) -> Result<Answer, Unanswered> {
        let cached = self.owners.get(&session).map(|owner| owner.clone());
        let owner = match cached {
            Some(owner) => owner,
            None => match self.backend.owner(session).await {
                Ok(Some(owner)) => {
                    if self.owners.len() >= MAX_CACHED_OWNERS {
                        self.owners.clear();
                    }
                    self.owners.insert(session, owner.clone());
                    owner
                }
                Ok(None) => {
                    tracing::debug!("request for a session without an owner record");
                    return Err(Unanswered::Gone);
                }
                Err(err) => return Err(Unanswered::Unavailable(err)),
            },
        };
        if owner.node == self.id() {
            self.owners.remove(&session);
            return Err(Unanswered::Here(owner.key));
        }
        let answer = self.request_from(&owner, op, query, body, patience).await;
        // The session moved, or its owner died: look it up again next time.
        let stale = match &answer {
            Ok(answer) => answer.status == NOT_HERE.as_u16(),
            Err(Unanswered::Dead | Unanswered::Gone) => true,
            Err(_) => false,
        };
        if stale {
            self.owners.remove(&session);
        }
        answer
    }

    /// [`request`](Self::request) to a known owner.
    pub(crate) async fn request_from(
        &self,
        owner: &Owner,
        op: Op,
        query: &str,
        body: &[u8],
        patience: Duration,
    ) -> Result<Answer, Unanswered> {
        if self.pending.len() >= MAX_PENDING {
            return Err(Unanswered::Busy);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        self.pending.insert(id, answer_tx);
        let _forget = Forget { node: self, id };
        let request = encode_request(id, self.id(), op, owner.key, query, body);
        match self.backend.send_to_node(&owner.node, request).await {
            Ok(true) => {}
            Ok(false) => {
                // Nobody listens on the owner's channel: it has died (or is between
                // connections to the engine, if it is still alive).
                return match self.backend.node_alive(&owner.node).await {
                    Ok(false) => {
                        tracing::debug!(owner = %owner.node, "request found its owner dead");
                        Err(Unanswered::Dead)
                    }
                    Ok(true) => Err(Unanswered::Unavailable(BackendError::new(
                        "the owner is alive but not listening",
                    ))),
                    Err(err) => Err(Unanswered::Unavailable(err)),
                };
            }
            Err(err) => return Err(Unanswered::Unavailable(err)),
        }
        match tokio::time::timeout(patience, answer_rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => {
                tracing::debug!(owner = %owner.node, "request to another node timed out");
                Err(Unanswered::Timeout)
            }
        }
    }

    /// Forwards a poll or POST for `session`, which this node does not hold, to its owner, and
    /// answers with the owner's answer; `on_timeout` makes the answer when none comes within
    /// `patience`. `Err(())`: the owner record names this node, which has just taken the session
    /// in, so the request is for the caller to run here.
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
    ) -> Result<Response, ()> {
        let started = std::time::Instant::now();
        let outcome = |outcome| self.metrics.forwarded(outcome, started.elapsed());
        // Three times at most: a session that moved between the look-up and the request (its
        // old owner says it is not there, or has left the cluster since) is looked up again.
        for attempt in 0..3 {
            let stopping = self.stopping.notified();
            tokio::pin!(stopping);
            stopping.as_mut().enable();
            if self.stopped.load(Ordering::SeqCst) {
                return Ok(on_timeout());
            }
            let asked = tokio::select! {
                asked = self.request(session, op, query, &body, patience) => asked,
                // This node shuts down: a forwarded request waiting here (a long poll held for
                // up to the hold time) must not hold the shutdown up.
                () = &mut stopping => Err(Unanswered::Timeout),
            };
            match asked {
                Ok(answer) if answer.status == NOT_HERE.as_u16() => {}
                Err(Unanswered::Dead) if attempt < 2 => {}
                Ok(answer) => {
                    if answer.status == 404 {
                        tracing::debug!(?op, "forwarded request answered 404 by the owner");
                    }
                    outcome("answered");
                    return Ok(answer.into_response());
                }
                Err(Unanswered::Here(key)) => {
                    // Taken in here meanwhile, or about to be: look here again (the caller's
                    // transport answers `404` if it is not here after all).
                    self.settled(key).await;
                    return Err(());
                }
                Err(err) => {
                    outcome(match err {
                        Unanswered::Busy => "busy",
                        Unanswered::Timeout => "timeout",
                        _ => "failed",
                    });
                    return Ok(err.into_response(on_timeout));
                }
            }
        }
        outcome("failed");
        Ok(ApiError::unknown_session().into_response())
    }

    /// Marks the session of `key` as being taken in; `None` if it already is (by another
    /// request). Requests for it wait until the returned guard is dropped.
    pub(crate) fn taking_in(&self, key: u64) -> Option<Incoming<'_>> {
        match self.incoming.entry(key) {
            dashmap::Entry::Occupied(_) => None,
            dashmap::Entry::Vacant(entry) => {
                entry.insert(());
                Some(Incoming { node: self, key })
            }
        }
    }

    /// Marks the session of `key` as moving out of this node (it has been forgotten here, and
    /// its ownership record does not name its new owner yet): requests for it wait, as for one
    /// being taken in, until [`moved_out`](Self::moved_out).
    pub(crate) fn moving_out(&self, key: u64) {
        self.incoming.insert(key, ());
    }

    /// Ends [`moving_out`](Self::moving_out).
    pub(crate) fn moved_out(&self, key: u64) {
        self.incoming.remove(&key);
    }

    /// Waits (at most 10 s) until the session of `key` is no longer moving into or out of this
    /// node; returns whether it was. Either way, the caller looks for it again: it may have
    /// arrived just before the call.
    pub(crate) async fn settled(&self, key: u64) -> bool {
        if !self.incoming.contains_key(&key) {
            return false;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.incoming.contains_key(&key) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Starts recording the broadcasts this node receives for `rooms` (and for everyone), for a
    /// session being taken in: those published after its old owner took its snapshot must be
    /// added to it. Returns the recorder's id, for [`Node::take_record`].
    pub(crate) fn record(&self, rooms: &[String]) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut gate = self.recorders();
        gate.push(Recorder {
            id,
            rooms: rooms.to_vec(),
            log: Vec::new(),
        });
        self.recording.fetch_add(1, Ordering::SeqCst);
        id
    }

    /// Ends recorder `id` under the held `gate`, and returns what it recorded.
    ///
    /// Deliveries keep taking the gate until the guard is released: whatever the caller does
    /// under it (the session joining its rooms) is, for every broadcast, either before it (and
    /// the broadcast is in the record) or after it (and the broadcast is delivered to the
    /// session as to any member).
    pub(crate) fn take_record(&self, gate: &mut RecordGate<'_>, id: u64) -> Vec<Recorded> {
        match gate.guard.iter().position(|recorder| recorder.id == id) {
            Some(at) => {
                gate.ended += 1;
                gate.guard.swap_remove(at).log
            }
            None => Vec::new(),
        }
    }

    /// Takes the lock that orders the end of a recording against deliveries.
    pub(crate) fn gate(&self) -> RecordGate<'_> {
        RecordGate {
            node: self,
            guard: self.recorders(),
            ended: 0,
        }
    }

    fn recorders(&self) -> MutexGuard<'_, Vec<Recorder>> {
        self.gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `deliver` for a broadcast received from the backend: at once when no session is
    /// being taken in; else under the gate, after recording it for every recorder that wants it.
    pub(crate) fn received(&self, recorded: Recorded, deliver: impl FnOnce(&Recorded)) {
        if self.recording.load(Ordering::SeqCst) == 0 {
            return deliver(&recorded);
        }
        let mut gate = self.recorders();
        deliver(&recorded);
        let wanted: Vec<usize> = gate
            .iter()
            .enumerate()
            .filter(|(_, recorder)| match &recorded.room {
                Some(room) => recorder.rooms.iter().any(|wanted| **wanted == **room),
                None => true,
            })
            .map(|(at, _)| at)
            .collect();
        for at in wanted {
            gate[at].log.push(Recorded {
                room: recorded.room.clone(),
                id: recorded.id,
                message: recorded.message.clone(),
                except: recorded.except.clone(),
                priority: recorded.priority,
                only: recorded.only,
                close: recorded.close,
            });
        }
    }

    /// Publishes a broadcast to `topic` (see [`encode_broadcast`]).
    pub(crate) fn publish(
        &self,
        topic: crate::backend::Topic<'_>,
        message: &EncodedMessage,
        except: Except,
        priority: Priority,
    ) -> Result<(), BackendError> {
        let id = self.next_publication.fetch_add(1, Ordering::Relaxed);
        let broadcast = Recorded {
            room: None,
            id,
            message: message.clone(),
            except,
            priority,
            only: None,
            close: false,
        };
        self.backend.publish(topic, encode_broadcast(&broadcast))
    }

    /// Publishes a direct send to (or, with `close`, the close of) the session of `key`,
    /// wherever it is: on the channel to everyone, so that it keeps its place among this node's
    /// other publications, and every node delivers it if the session is there.
    pub(crate) fn publish_direct(
        &self,
        key: u64,
        message: &EncodedMessage,
        priority: Priority,
        close: bool,
    ) -> Result<(), BackendError> {
        let id = self.next_publication.fetch_add(1, Ordering::Relaxed);
        let direct = Recorded {
            room: None,
            id,
            message: message.clone(),
            except: Except::None,
            priority,
            only: Some(key),
            close,
        };
        self.backend
            .publish(crate::backend::Topic::All, encode_broadcast(&direct))
    }
}

/// The held lock of [`Node::gate`]. Recordings ended under it stop making deliveries take the
/// lock only when it is released.
pub(crate) struct RecordGate<'a> {
    node: &'a Node,
    guard: MutexGuard<'a, Vec<Recorder>>,
    ended: usize,
}

impl Drop for RecordGate<'_> {
    fn drop(&mut self) {
        self.node.recording.fetch_sub(self.ended, Ordering::SeqCst);
    }
}

/// Marks a session as being taken in until dropped (see [`Node::taking_in`]).
pub(crate) struct Incoming<'a> {
    node: &'a Node,
    key: u64,
}

impl Drop for Incoming<'_> {
    fn drop(&mut self) {
        self.node.incoming.remove(&self.key);
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

fn unavailable(err: &BackendError) -> Response {
    crate::logs::warn_limited!(error = %err, "request for another node's session not forwarded");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        "the cluster backend is unavailable; try again",
    )
    .into_response()
}

// Byte formats. Every integer is big-endian; a string is its length then its UTF-8 bytes.
//
// request:   1, id u64, from (u16 len), op u8 (1 receive, 2 send, 3 prepare, 4 hand over,
//            5 adopt), key u64, query (u32 len), body (rest)
// answer:    2, id u64, status u16, header count u8, headers (name u8 len, value u16 len), body (rest)
// broadcast: id u64, close u8 (0 or 1), priority u8 (0 normal, 1 low), except count u16 and
//            as many keys u64 (increasing), only u64 (0: every target), payload length u32,
//            tail (rest)
// rooms:     count u16, names (u16 len)

fn encode_request(id: u64, from: &str, op: Op, key: u64, query: &str, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(24 + from.len() + query.len() + body.len());
    out.put_u8(REQUEST);
    out.put_u64(id);
    put_str16(&mut out, from);
    out.put_u8(op.code());
    out.put_u64(key);
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
            let op = Op::from_code(take_u8(&mut bytes)?)?;
            let key = take_u64(&mut bytes)?;
            let len = take_u32(&mut bytes)? as usize;
            let query = take_string(&mut bytes, len)?;
            Some(NodeMessage::Request(Forwarded {
                id,
                from,
                op,
                key,
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

/// A broadcast as published: its id (unique cluster-wide), the encoded message, the key of the
/// session left out, the priority, and for a direct send the key of its one session (and
/// whether it is a close).
pub(crate) fn encode_broadcast(broadcast: &Recorded) -> Bytes {
    let tail = broadcast.message.tail_text();
    let except = broadcast.except.keys();
    let mut out = BytesMut::with_capacity(24 + 8 * except.len() + tail.len());
    out.put_u64(broadcast.id);
    out.put_u8(u8::from(broadcast.close));
    out.put_u8(match broadcast.priority {
        Priority::Normal => 0,
        Priority::Low => 1,
    });
    // More than 65,535 left out cannot be said: `Broadcast::except` caps them (and a broadcast
    // leaving out that many would be better sent to a room).
    out.put_u16(except.len().min(usize::from(u16::MAX)) as u16);
    for key in except.iter().take(usize::from(u16::MAX)) {
        out.put_u64(*key);
    }
    out.put_u64(broadcast.only.unwrap_or(0));
    out.put_u32(broadcast.message.payload_len() as u32);
    out.put_slice(tail.as_bytes());
    out.freeze()
}

/// A published broadcast, decoded (its room left empty): `None` if it does not parse.
pub(crate) fn decode_broadcast(mut bytes: Bytes) -> Option<Recorded> {
    let id = take_u64(&mut bytes)?;
    let close = match take_u8(&mut bytes)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let priority = match take_u8(&mut bytes)? {
        0 => Priority::Normal,
        1 => Priority::Low,
        _ => return None,
    };
    let excepted = take_u16(&mut bytes)?;
    let mut except = Vec::with_capacity(usize::from(excepted));
    for _ in 0..excepted {
        except.push(take_u64(&mut bytes)?);
    }
    let only = take_u64(&mut bytes)?;
    let payload_len = take_u32(&mut bytes)? as usize;
    let tail = std::str::from_utf8(&bytes).ok()?;
    Some(Recorded {
        room: None,
        id,
        message: EncodedMessage::from_tail(tail, payload_len),
        except: Except::of(except),
        priority,
        only: (only != 0).then_some(only),
        close,
    })
}

/// A list of room names.
pub(crate) fn encode_rooms<S: AsRef<str>>(rooms: &[S]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u16(rooms.len().min(65_535) as u16);
    for room in rooms.iter().take(65_535) {
        put_str16(&mut out, room.as_ref());
    }
    out.freeze()
}

/// A list of room names, decoded.
pub(crate) fn decode_rooms(mut bytes: Bytes) -> Option<Vec<String>> {
    let count = take_u16(&mut bytes)?;
    (0..count).map(|_| take_str16(&mut bytes)).collect()
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
        let request = encode_request(
            7,
            "node-a",
            Op::Send,
            42,
            "v=1&ack=3",
            "[안녕 👋]".as_bytes(),
        );
        let Some(NodeMessage::Request(forwarded)) = decode_node_message(request) else {
            panic!("not a request");
        };
        assert_eq!(
            (
                forwarded.id,
                forwarded.from.as_str(),
                forwarded.op,
                forwarded.key
            ),
            (7, "node-a", Op::Send, 42)
        );
        assert_eq!(forwarded.query, "v=1&ack=3");
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
        let broadcast = Recorded {
            room: None,
            id: 5,
            message: message.clone(),
            except: Except::of(vec![9, 3]),
            priority: Priority::Low,
            only: Some(8),
            close: true,
        };
        let decoded = decode_broadcast(encode_broadcast(&broadcast)).unwrap();
        assert_eq!(decoded.message.tail_text(), message.tail_text());
        assert_eq!(decoded.message.payload_len(), 3);
        assert_eq!(
            (
                decoded.id,
                decoded.except.clone(),
                decoded.priority,
                decoded.only,
                decoded.close
            ),
            (5, Except::of(vec![3, 9]), Priority::Low, Some(8), true)
        );
        let rooms = ["로비", "", "emoji 🎉"];
        assert_eq!(decode_rooms(encode_rooms(&rooms)).unwrap(), rooms);
    }

    #[test]
    fn truncated_or_unknown_messages_are_refused() {
        let request = encode_request(1, "n", Op::Receive, 9, "q", b"body");
        for cut in 0..22 {
            assert!(decode_node_message(request.slice(..cut)).is_none(), "{cut}");
        }
        assert!(decode_node_message(Bytes::from_static(&[9, 0, 0, 0, 0, 0, 0, 0, 1])).is_none());
        let id = [0u8; 8];
        let keys = [0u8; 16];
        let len = [0u8, 0, 0, 1];
        let bad_close = [&id[..], &[2, 0], &keys, &len, b"x"].concat();
        assert!(decode_broadcast(Bytes::from(bad_close)).is_none());
        let bad_priority = [&id[..], &[0, 2], &keys, &len, b"x"].concat();
        assert!(decode_broadcast(Bytes::from(bad_priority)).is_none());
        let bad_text = [&id[..], &[0, 0], &keys, &len, &[0xff]].concat();
        assert!(decode_broadcast(Bytes::from(bad_text)).is_none());
        let good = [&id[..], &[0, 0], &keys, &len, b"x"].concat();
        assert!(decode_broadcast(Bytes::from(good)).is_some());
    }

    /// A backend whose engine says every session belongs to node "ghost", which takes every
    /// request and never answers.
    #[derive(Debug)]
    struct Ghost;

    impl Backend for Ghost {
        fn node_id(&self) -> &str {
            "here"
        }
        fn node_number(&self) -> u32 {
            1
        }
        fn start(&self, _deliver: Arc<dyn Fn(crate::backend::Delivery) + Send + Sync>) {}
        fn publish(
            &self,
            _topic: crate::backend::Topic<'_>,
            _payload: Bytes,
        ) -> Result<(), BackendError> {
            Ok(())
        }
        fn subscribe(&self, _room: &str) {}
        fn unsubscribe(&self, _room: &str) {}
        fn send_to_node<'a>(
            &'a self,
            _node: &'a str,
            _payload: Bytes,
        ) -> BoxFuture<'a, Result<bool, BackendError>> {
            Box::pin(async { Ok(true) })
        }
        fn claim(
            &self,
            _session: SessionRef,
            _key: u64,
        ) -> BoxFuture<'_, Result<(), BackendError>> {
            Box::pin(async { Ok(()) })
        }
        fn owner(
            &self,
            _session: SessionRef,
        ) -> BoxFuture<'_, Result<Option<Owner>, BackendError>> {
            Box::pin(async {
                Ok(Some(Owner {
                    node: "ghost".into(),
                    key: 7,
                }))
            })
        }
        fn release(&self, _session: SessionRef, _key: u64) {}
        fn refresh(
            &self,
            _sessions: Vec<(SessionRef, u64)>,
        ) -> BoxFuture<'_, Result<(), BackendError>> {
            Box::pin(async { Ok(()) })
        }
        fn hand_over<'a>(
            &'a self,
            _session: SessionRef,
            _key: u64,
            _to: &'a str,
            _state: Bytes,
        ) -> BoxFuture<'a, Result<bool, BackendError>> {
            Box::pin(async { Ok(false) })
        }
        fn take_state(
            &self,
            _session: SessionRef,
        ) -> BoxFuture<'_, Result<Option<Bytes>, BackendError>> {
            Box::pin(async { Ok(None) })
        }
        fn live_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
            Box::pin(async { Ok(vec!["here".into(), "ghost".into()]) })
        }
        fn node_alive<'a>(&'a self, _node: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
            Box::pin(async { Ok(true) })
        }
        fn set_presence(&self, _room: &str, _entry: Bytes) {}
        fn presence<'a>(
            &'a self,
            _room: &'a str,
        ) -> BoxFuture<'a, Result<Vec<(String, Bytes)>, BackendError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn flush(&self) -> BoxFuture<'_, Result<(), BackendError>> {
            Box::pin(async { Ok(()) })
        }
        fn stop(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    use crate::backend::BoxFuture;

    /// `docs/protocol.md` §7, `503 forward_busy` (the table test in
    /// `tests/documented_outcomes.rs` names this test): 10 000 requests waiting at once would
    /// take 20 000 sockets over HTTP, so the limit is checked on the node.
    #[tokio::test]
    async fn a_node_with_10_000_forwarded_requests_waiting_answers_503_forward_busy() {
        let node = Node::new(Arc::new(Ghost), Arc::default());
        let mut waiting = Vec::new();
        for id in 0..MAX_PENDING as u64 {
            let (answer_tx, answer_rx) = oneshot::channel();
            node.pending.insert(u64::MAX - id, answer_tx);
            waiting.push(answer_rx);
        }
        let response = node
            .forward(
                SessionRef([7; 16]),
                Op::Send,
                "v=1",
                Bytes::from_static(b"[]"),
                FORWARD_TIMEOUT,
                || panic!("no request may wait"),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "forward_busy");
        assert!(body["message"].is_string());
        // One answered: the next request is forwarded again (and waits for its answer).
        node.pending.remove(&u64::MAX);
        let forwarded = tokio::time::timeout(
            Duration::from_millis(50),
            node.forward(
                SessionRef([7; 16]),
                Op::Send,
                "v=1",
                Bytes::from_static(b"[]"),
                FORWARD_TIMEOUT,
                || panic!("not timed out yet"),
            ),
        )
        .await;
        assert!(
            forwarded.is_err(),
            "the request did not wait for its answer"
        );
        drop(waiting);
    }
}
