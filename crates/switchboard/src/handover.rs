//! Handover: moving a live session from one node of a cluster to another, so that a WebSocket
//! that lands on a node that does not own its session drains it there (`docs/scale-out.md`,
//! "A WebSocket for a session this node does not own: handover").
//!
//! The node that takes the session in (the *taker*) and its owner (the *giver*) talk in two
//! steps over node messages:
//!
//! 1. **Prepare.** The taker asks which rooms the session is in. It holds those rooms in its
//!    room index (subscribing to those it has no members in), starts recording the broadcasts it
//!    receives for them (and for everyone), and waits until its subscriptions are in place.
//! 2. **Hand over.** The giver, on receiving the request, in order with the broadcasts it
//!    receives (the same task delivers both), takes a snapshot of the session and ends it here
//!    (its transports are told they were taken over, its handler sees
//!    [`CloseReason::HandedOver`](crate::CloseReason::HandedOver)), notes for each room the id
//!    of the last broadcast it delivered, and moves ownership and the snapshot to the taker in
//!    one atomic step of the backend (fenced: only if it still owns the session). If the session
//!    joined a room the taker did not prepare for, it answers with the new list instead, and
//!    the taker prepares again.
//!
//! The taker then restores the session from the snapshot and adds the recorded broadcasts that
//! the giver had not delivered: in each room's log, everything after the giver's last one (a
//! room's broadcasts reach every node in one order, so the giver's last one is in the taker's
//! log, or the whole log is newer). It does that, joins the rooms and registers the session
//! under the lock that deliveries take while anything is recorded, so that no broadcast is
//! missed or added twice; then it starts the application's handler, which sees
//! [`Session::handed_over`].

use std::sync::Arc;

use axum::http::StatusCode;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

use crate::backend::{BackendError, SessionRef};
use crate::error::ApiError;
use crate::message::{Message, Payload};
use crate::mount::{Inner, Mounted};
use crate::node::{self, Answer, Forwarded, Node, Op, Recorded, Unanswered};
use crate::protocol::EncodedMessage;
use crate::room_log::Except;
use crate::session::{Session, SessionId, Shared, Snapshot};

/// The giver's side: answers a `Prepare` or `HandOver` request. Called by the task that also
/// delivers broadcasts, so that the snapshot and the rooms' last broadcast ids agree.
pub(crate) fn give<U: Clone + Send + Sync + 'static>(
    inner: &Arc<Inner<U>>,
    node: &Arc<Node>,
    request: Forwarded,
) {
    let Forwarded {
        id,
        from,
        op,
        key,
        body,
        ..
    } = request;
    let answer = match (inner.registry.by_key(key), op) {
        (None, _) => Answer::plain(node::NOT_HERE, Bytes::new()),
        (Some(session), Op::Prepare) => {
            Answer::plain(StatusCode::OK, node::encode_rooms(&session.rooms()))
        }
        (Some(session), _) => match snapshot(inner, node, &session, body) {
            Ok((state, sid)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    let sref = SessionRef(*sid.as_bytes());
                    let moved = node.backend.hand_over(sref, key, &from, state).await;
                    node.moved_out(key);
                    let answer = match moved {
                        Ok(true) => {
                            tracing::debug!(session = key, to = %from, "session handed over");
                            Answer::plain(StatusCode::OK, Bytes::new())
                        }
                        outcome => {
                            // The session has ended here and did not reach the taker: its
                            // client starts over.
                            tracing::warn!(session = key, to = %from, ?outcome, "handover failed; session lost");
                            Answer::plain(StatusCode::SERVICE_UNAVAILABLE, Bytes::new())
                        }
                    };
                    answer_to(&node, &from, id, answer).await;
                });
                return;
            }
            Err(answer) => answer,
        },
    };
    let node = node.clone();
    tokio::spawn(async move { answer_to(&node, &from, id, answer).await });
}

/// Takes the snapshot of `session` and ends it here (see the module documentation); `Err` is
/// the answer when it cannot move (yet).
fn snapshot<U>(
    inner: &Inner<U>,
    node: &Node,
    session: &Session<U>,
    prepared: Bytes,
) -> Result<(Bytes, SessionId), Answer> {
    let Some(codec) = inner.user_codec else {
        tracing::error!(
            "a session cannot be handed over: call Builder::backend after Builder::authenticate"
        );
        return Err(Answer::plain(StatusCode::SERVICE_UNAVAILABLE, Bytes::new()));
    };
    let prepared = node::decode_rooms(prepared).unwrap_or_default();
    let rooms = session.rooms();
    if rooms.iter().any(|room| !prepared.contains(room)) {
        return Err(Answer::plain(
            StatusCode::CONFLICT,
            node::encode_rooms(&rooms),
        ));
    }
    let user = (codec.encode)(session.user()).map_err(|err| {
        tracing::error!(error = %err, "user data cannot be encoded; session not handed over");
        Answer::plain(StatusCode::SERVICE_UNAVAILABLE, Bytes::new())
    })?;
    // Read before the snapshot ends the session, which leaves its rooms (and may drop them).
    let marks: Vec<(String, u64)> = rooms
        .iter()
        .map(|room| (room.clone(), inner.rooms.mark_of(room)))
        .collect();
    let all_mark = inner.node.as_ref().map_or(0, |node| {
        node.all_mark.load(std::sync::atomic::Ordering::Relaxed)
    });
    let snapshot = session
        .shared
        .hand_over()
        .ok_or_else(|| Answer::plain(node::NOT_HERE, Bytes::new()))?;
    let sid = session.shared.sid;
    // Requests that reach this node before the ownership record names the taker wait, then
    // are sent on (see `Node::forward`).
    node.moving_out(session.shared.key);
    inner.registry.forget_moved(&sid);
    Ok((encode_state(&snapshot, &marks, all_mark, &user), sid))
}

async fn answer_to(node: &Node, to: &str, id: u64, answer: Answer) {
    if let Err(err) = node
        .backend
        .send_to_node(to, node::encode_answer(id, &answer))
        .await
    {
        tracing::debug!(error = %err, "answer to another node not sent");
    }
}

/// Why a taker did not get a session.
enum Refused {
    /// The node asked does not hold it (it may just have moved on): look again.
    NotHere,
    /// The answer for the client.
    Err(ApiError),
}

impl From<ApiError> for Refused {
    fn from(err: ApiError) -> Self {
        Refused::Err(err)
    }
}

/// The taker's side of a node's shutdown: node `from` asks this one to take over the session
/// whose id is in the request's body.
pub(crate) async fn adopt<U: Clone + Send + Sync + 'static>(
    inner: Arc<Inner<U>>,
    node: Arc<Node>,
    request: Forwarded,
) {
    let Forwarded {
        id,
        from,
        key,
        body,
        ..
    } = request;
    let sid = <[u8; 16]>::try_from(&body[..])
        .ok()
        .map(SessionId::from_bytes);
    let taken = match (sid, Mounted::first(inner)) {
        (Some(sid), Some(mounted)) => match node.taking_in(key) {
            Some(_incoming) => {
                let owner = crate::backend::Owner {
                    node: from.clone(),
                    key,
                };
                match mounted.take_from(&node, sid, &owner).await {
                    Ok(_) => true,
                    Err(Refused::NotHere) => {
                        tracing::debug!(session = key, "session to adopt not found at its giver");
                        false
                    }
                    Err(Refused::Err(err)) => {
                        tracing::debug!(session = key, error = err.code, "session not adopted");
                        false
                    }
                }
            }
            // Its client is moving it here already.
            None => {
                node.settled(key).await;
                mounted.inner.registry.by_key(key).is_some()
            }
        },
        _ => false,
    };
    let status = if taken {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    answer_to(&node, &from, id, Answer::plain(status, Bytes::new())).await;
}

/// The giver's side of a shutdown: hands every live session to the other live nodes, in turn,
/// until `deadline`. Returns how many moved; the others are left to the caller to end.
pub(crate) async fn hand_over_all<U>(
    inner: &Inner<U>,
    node: &Node,
    deadline: tokio::time::Instant,
) -> usize {
    use futures_util::StreamExt as _;
    let nodes: Vec<String> = match node.backend.live_nodes().await {
        Ok(nodes) => nodes.into_iter().filter(|id| id != node.id()).collect(),
        Err(err) => {
            tracing::warn!(error = %err, "no other node found to hand sessions over to");
            return 0;
        }
    };
    tracing::debug!(
        me = node.id(),
        ?nodes,
        "handing sessions over to these nodes"
    );
    if nodes.is_empty() {
        return 0;
    }
    let sessions: Vec<Session<U>> = inner
        .registry
        .all()
        .into_iter()
        .filter(|session| !session.is_closed())
        .collect();
    let count = sessions.len();
    let nodes = &nodes;
    let moved = futures_util::stream::iter(sessions.into_iter().enumerate())
        .map(|(at, session)| async move {
            let key = session.shared.key;
            let sid = session.shared.sid;
            drop(session);
            // Its own node first, then the next, if that one cannot take it.
            for attempt in 0..2 {
                let target = &nodes[(at + attempt) % nodes.len()];
                let owner = crate::backend::Owner {
                    node: target.clone(),
                    key,
                };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let asked = node
                    .request_from(&owner, Op::Adopt, "", sid.as_bytes(), left.min(node::FORWARD_TIMEOUT))
                    .await;
                match asked {
                    Ok(answer) if answer.status == 200 => return 1,
                    Ok(answer) => {
                        tracing::debug!(session = key, to = %target, status = answer.status, "session not adopted");
                    }
                    Err(err) => {
                        tracing::debug!(session = key, to = %target, ?err, "session not adopted");
                    }
                }
                if nodes.len() == 1 {
                    break;
                }
            }
            0
        })
        .buffer_unordered(64)
        .fold(0, |moved, one| async move { moved + one })
        .await;
    tracing::info!(moved, of = count, "sessions handed over before shutdown");
    moved
}

impl<U: Clone + Send + Sync + 'static> Mounted<U> {
    /// The taker's side: takes session `sid`, which this node does not hold, over from its
    /// owner, and returns it (restored here, its handler started). `404 unknown_session` if no
    /// live node owns it; `503` if the cluster cannot move it now (the client tries again).
    pub(crate) async fn take_over(&self, sid: SessionId) -> Result<Session<U>, ApiError> {
        let inner = &self.inner;
        let node = inner.node.clone().ok_or_else(ApiError::unknown_session)?;
        let sref = SessionRef(*sid.as_bytes());
        let here = || {
            inner
                .registry
                .get(&sid)
                .ok_or_else(ApiError::unknown_session)
        };
        // A few rounds: the session may be moving between other nodes meanwhile (a node that
        // shuts down hands it to another as this node asks for it).
        for round in 1..=5u32 {
            if inner
                .shutting_down
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(ApiError::shutting_down());
            }
            let owner = match node.backend.owner(sref).await {
                Ok(Some(owner)) => owner,
                Ok(None) => return Err(ApiError::unknown_session()),
                Err(err) => return Err(unavailable(&err)),
            };
            if owner.node == node.id() {
                // Taken in here a moment ago (or ended here).
                node.settled(owner.key).await;
                return here();
            }
            let Some(_incoming) = node.taking_in(owner.key) else {
                // Another request of the client is taking it in already.
                node.settled(owner.key).await;
                return here();
            };
            match self.take_from(&node, sid, &owner).await {
                Ok(session) => return Ok(session),
                Err(Refused::Err(err)) => return Err(err),
                Err(Refused::NotHere) => {}
            }
            tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(round))).await;
        }
        Err(ApiError::unknown_session())
    }

    /// Takes session `sid` over from `owner` (the caller marked it as being taken in).
    async fn take_from(
        &self,
        node: &Node,
        sid: SessionId,
        owner: &crate::backend::Owner,
    ) -> Result<Session<U>, Refused> {
        let inner = &self.inner;
        if inner
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(ApiError::shutting_down().into());
        }
        let mut rooms = match node
            .request_from(owner, Op::Prepare, "", &[], node::FORWARD_TIMEOUT)
            .await
        {
            Ok(answer) if answer.status == 200 => {
                node::decode_rooms(answer.body).unwrap_or_default()
            }
            Ok(answer) if answer.status == node::NOT_HERE.as_u16() => {
                return Err(Refused::NotHere);
            }
            Ok(_) | Err(Unanswered::Timeout | Unanswered::Busy | Unanswered::Here(_)) => {
                return Err(handover_unavailable().into());
            }
            Err(Unanswered::Gone) => return Err(ApiError::unknown_session().into()),
            // Its owner has left: it may have handed the session on first.
            Err(Unanswered::Dead) => return Err(Refused::NotHere),
            Err(Unanswered::Unavailable(err)) => return Err(unavailable(&err).into()),
        };
        for attempt in 0..3 {
            inner.rooms.hold(&rooms);
            let recorder = node.record(&rooms);
            let asked = match node.backend.flush().await {
                Ok(()) => {
                    node.request_from(
                        owner,
                        Op::HandOver,
                        "",
                        &node::encode_rooms(&rooms),
                        node::FORWARD_TIMEOUT,
                    )
                    .await
                }
                Err(err) => Err(Unanswered::Unavailable(err)),
            };
            let outcome = match asked {
                Ok(answer) if answer.status == 200 => Ok(()),
                // The answer may be lost while the session did move: look for its state.
                Err(Unanswered::Timeout) => Ok(()),
                Ok(answer) if answer.status == 409 && attempt < 2 => {
                    let again = node::decode_rooms(answer.body).unwrap_or_default();
                    self.abandon(node, recorder, &rooms);
                    rooms = again;
                    continue;
                }
                Ok(answer) if answer.status == node::NOT_HERE.as_u16() => Err(Refused::NotHere),
                Err(Unanswered::Gone) => Err(ApiError::unknown_session().into()),
                Err(Unanswered::Dead) => Err(Refused::NotHere),
                Err(Unanswered::Unavailable(err)) => Err(unavailable(&err).into()),
                _ => Err(handover_unavailable().into()),
            };
            let result = match outcome {
                Ok(()) => self
                    .restore(node, sid, recorder, &rooms)
                    .await
                    .map_err(Refused::from),
                Err(refused) => Err(refused),
            };
            if result.is_err() {
                self.abandon(node, recorder, &rooms);
            }
            return result;
        }
        Err(handover_unavailable().into())
    }

    /// Gives up a handover attempt: ends its recorder and its hold on the rooms.
    fn abandon(&self, node: &Node, recorder: u64, rooms: &[String]) {
        {
            let mut gate = node.gate();
            node.take_record(&mut gate, recorder);
        }
        self.inner.rooms.unhold(rooms);
    }

    /// Restores session `sid` from the state its giver stored, with the broadcasts recorded
    /// since, and starts its handler here.
    async fn restore(
        &self,
        node: &Node,
        sid: SessionId,
        recorder: u64,
        held: &[String],
    ) -> Result<Session<U>, ApiError> {
        let inner = &self.inner;
        let codec = inner.user_codec.ok_or_else(handover_unavailable)?;
        let sref = SessionRef(*sid.as_bytes());
        let state = match node.backend.take_state(sref).await {
            Ok(Some(state)) => state,
            Ok(None) => return Err(ApiError::unknown_session()),
            Err(err) => return Err(unavailable(&err)),
        };
        let Some(state) = decode_state(state) else {
            tracing::error!("handed-over session state does not parse; session lost");
            return Err(ApiError::unknown_session());
        };
        let user = (codec.decode)(&state.user).map_err(|err| {
            tracing::error!(error = %err, "handed-over user data does not decode; session lost");
            ApiError::unknown_session()
        })?;
        let mut snapshot = state.snapshot;
        let rooms = std::mem::take(&mut snapshot.rooms);
        let key = snapshot.key;
        let session = Session::from_shared(Arc::new(Shared::restore(
            snapshot,
            sid,
            user,
            inner.config.clone(),
            Arc::downgrade(&inner.rooms),
        )));
        let mut overflowed = false;
        let mut closed = None;
        {
            let mut gate = node.gate();
            let log = node.take_record(&mut gate, recorder);
            for (at, entry) in log.iter().enumerate() {
                let mark = match &entry.room {
                    Some(room) => {
                        if !rooms.iter().any(|joined| **joined == **room) {
                            continue;
                        }
                        state
                            .marks
                            .iter()
                            .find(|(name, _)| **name == **room)
                            .map_or(0, |(_, mark)| *mark)
                    }
                    None => state.all_mark,
                };
                if delivered_by_giver(&log, at, mark)
                    || entry.except.contains(key)
                    || entry.only.is_some_and(|only| only != key)
                {
                    continue;
                }
                if entry.close {
                    closed = Some(entry.message.clone());
                    continue;
                }
                if session
                    .shared
                    .push(&entry.message, entry.priority)
                    .is_err_and(|err| err == crate::error::SendError::Overflow)
                {
                    overflowed = true;
                }
            }
            for room in &rooms {
                if let Err(err) = inner.rooms.join(&session, room, true) {
                    tracing::warn!(session = key, error = %err, "handed-over session left a room");
                }
            }
            inner.registry.adopt(session.clone());
        }
        inner.rooms.unhold(held);
        if overflowed {
            session.shared.close_overflowed();
        }
        // Closed by the application (from some node) while it moved: it ends here.
        if let Some(reason) = closed {
            crate::hub::deliver_direct(
                &session,
                &Recorded {
                    room: None,
                    id: 0,
                    message: reason,
                    except: Except::None,
                    priority: crate::session::Priority::Normal,
                    only: Some(key),
                    close: true,
                },
            );
        }
        self.started();
        (self.handler)(session.clone());
        tracing::debug!(session = key, "session taken over from another node");
        Ok(session)
    }
}

/// Whether entry `at` of `log` was delivered by the giver already: the giver's last broadcast
/// to its room (or to everyone), `mark`, comes at or after it in the log.
fn delivered_by_giver(log: &[Recorded], at: usize, mark: u64) -> bool {
    if mark == 0 {
        return false;
    }
    let room = &log[at].room;
    log[at..]
        .iter()
        .any(|later| later.id == mark && later.room == *room)
}

fn unavailable(err: &BackendError) -> ApiError {
    crate::logs::warn_limited!(error = %err, "session not taken over");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        "the cluster backend is unavailable; try again",
    )
}

fn handover_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "handover_unavailable",
        "the session could not be moved to this node now; try again",
    )
}

/// A session's state in transit, decoded.
struct State {
    snapshot: Snapshot,
    /// The last broadcast the giver delivered, per room.
    marks: Vec<(String, u64)>,
    all_mark: u64,
    user: Vec<u8>,
}

/// The version of the stored state below (2: inbox messages carry request ids).
const STATE_VERSION: u8 = 2;

// The state, as stored: version u8 (2); key, acked, next_seq, released, in_seq, att (u64 each);
// low: u8 flag, count u32, bytes u32; out: u32 count, each payload length u32 and tail (u32
// len); inbox: u32 count, each flags u8 (1: event, 2: request id), event (u16 len) if flagged,
// request id u64 if flagged, kind u8 (0 JSON, 1 binary), payload
// (u32 len); rooms: u16 count, each name (u16 len) and mark u64; all mark u64; user data (rest).

fn encode_state(snapshot: &Snapshot, marks: &[(String, u64)], all_mark: u64, user: &[u8]) -> Bytes {
    let size: usize = snapshot
        .out
        .iter()
        .map(|message| message.buffered_len() + 8)
        .sum();
    let mut out = BytesMut::with_capacity(size + 128 + user.len());
    out.put_u8(STATE_VERSION);
    for value in [
        snapshot.key,
        snapshot.acked,
        snapshot.next_seq,
        snapshot.released,
        snapshot.in_seq,
        snapshot.att,
    ] {
        out.put_u64(value);
    }
    let (low, count, bytes) = match snapshot.low {
        Some((count, bytes)) => (1, count, bytes),
        None => (0, 0, 0),
    };
    out.put_u8(low);
    out.put_u32(count as u32);
    out.put_u32(bytes as u32);
    out.put_u32(snapshot.out.len() as u32);
    for message in &snapshot.out {
        out.put_u32(message.payload_len() as u32);
        put_bytes32(&mut out, message.tail_text().as_bytes());
    }
    out.put_u32(snapshot.inbox.len() as u32);
    for message in &snapshot.inbox {
        // Flags: 1, an event name follows; 2, a request id follows (u64).
        let flags =
            u8::from(message.event().is_some()) | (u8::from(message.request_id().is_some()) << 1);
        out.put_u8(flags);
        if let Some(event) = message.event() {
            put_bytes16(&mut out, event.as_bytes());
        }
        if let Some(id) = message.request_id() {
            out.put_u64(id);
        }
        match message.payload() {
            Payload::Json(raw) => {
                out.put_u8(0);
                put_bytes32(&mut out, raw.get().as_bytes());
            }
            Payload::Binary(bytes) => {
                out.put_u8(1);
                put_bytes32(&mut out, bytes);
            }
        }
    }
    out.put_u16(marks.len() as u16);
    for (room, mark) in marks {
        put_bytes16(&mut out, room.as_bytes());
        out.put_u64(*mark);
    }
    out.put_u64(all_mark);
    out.put_slice(user);
    out.freeze()
}

fn decode_state(mut bytes: Bytes) -> Option<State> {
    // Version 1 is version 2 without request ids (its flags are 0 or 1): a session handed over
    // by a node of the version before still parses.
    if !matches!(take(&mut bytes, 1)?.get_u8(), 1 | STATE_VERSION) {
        return None;
    }
    let mut fixed = take(&mut bytes, 6 * 8 + 9)?;
    let [key, acked, next_seq, released, in_seq, att] = [(); 6].map(|_| fixed.get_u64());
    let low = fixed.get_u8() == 1;
    let (count, low_bytes) = (fixed.get_u32() as usize, fixed.get_u32() as usize);
    let messages = take(&mut bytes, 4)?.get_u32();
    let mut out = Vec::new();
    for _ in 0..messages {
        let payload_len = take(&mut bytes, 4)?.get_u32() as usize;
        let tail = take_bytes32(&mut bytes)?;
        out.push(EncodedMessage::from_tail(
            std::str::from_utf8(&tail).ok()?,
            payload_len,
        ));
    }
    let received = take(&mut bytes, 4)?.get_u32();
    let mut inbox = Vec::new();
    for _ in 0..received {
        let flags = take(&mut bytes, 1)?.get_u8();
        let event = match flags & 1 {
            1 => Some(String::from_utf8(take_bytes16(&mut bytes)?.to_vec()).ok()?),
            _ => None,
        };
        let request = match flags & 2 {
            2 => Some(take(&mut bytes, 8)?.get_u64()),
            _ => None,
        };
        let kind = take(&mut bytes, 1)?.get_u8();
        let payload = take_bytes32(&mut bytes)?;
        let payload = match kind {
            0 => Payload::Json(
                RawValue::from_string(String::from_utf8(payload.to_vec()).ok()?).ok()?,
            ),
            _ => Payload::Binary(payload),
        };
        let mut message = Message::from_payload(payload);
        if let Some(event) = event {
            message = message.with_event(event);
        }
        if let Some(id) = request {
            message = message.into_request(id);
        }
        inbox.push(message);
    }
    let rooms = take(&mut bytes, 2)?.get_u16();
    let mut marks = Vec::new();
    for _ in 0..rooms {
        let name = String::from_utf8(take_bytes16(&mut bytes)?.to_vec()).ok()?;
        marks.push((name, take(&mut bytes, 8)?.get_u64()));
    }
    let all_mark = take(&mut bytes, 8)?.get_u64();
    Some(State {
        snapshot: Snapshot {
            key,
            out,
            acked,
            next_seq,
            released,
            low: low.then_some((count, low_bytes)),
            inbox,
            in_seq,
            att,
            rooms: marks
                .iter()
                .map(|(name, _)| Arc::from(name.as_str()))
                .collect(),
        },
        marks,
        all_mark,
        user: bytes.to_vec(),
    })
}

fn put_bytes16(out: &mut BytesMut, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(65_535)];
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

fn put_bytes32(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(bytes.len() as u32);
    out.put_slice(bytes);
}

fn take(bytes: &mut Bytes, len: usize) -> Option<Bytes> {
    (bytes.len() >= len).then(|| bytes.split_to(len))
}

fn take_bytes16(bytes: &mut Bytes) -> Option<Bytes> {
    let len = usize::from(take(bytes, 2)?.get_u16());
    take(bytes, len)
}

fn take_bytes32(bytes: &mut Bytes) -> Option<Bytes> {
    let len = take(bytes, 4)?.get_u32() as usize;
    take(bytes, len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::session::Priority;

    #[test]
    fn a_state_survives_its_encoding() {
        let out = vec![
            EncodedMessage::new(&Message::text("안녕 👋")),
            EncodedMessage::new(&Message::binary(vec![0u8, 255, 128]).with_event("blob")),
        ];
        let snapshot = Snapshot {
            key: 7,
            out,
            acked: 10,
            next_seq: 13,
            released: 12,
            low: Some((1, 20)),
            inbox: vec![
                Message::text("받은 메시지"),
                Message::binary(vec![1u8, 2, 3]).with_event("e"),
                Message::text("질문?").with_event("ask").into_request(42),
                Message::text("질문 2").into_request(7),
            ],
            in_seq: 5,
            att: 3,
            rooms: vec![Arc::from("로비")],
        };
        let marks = vec![("로비".to_string(), 99)];
        let encoded = encode_state(&snapshot, &marks, 4, b"{\"name\":\"kim\"}");
        let state = decode_state(encoded.clone()).unwrap();
        let decoded = &state.snapshot;
        assert_eq!(
            (
                decoded.key,
                decoded.acked,
                decoded.next_seq,
                decoded.released
            ),
            (7, 10, 13, 12)
        );
        assert_eq!(
            (decoded.in_seq, decoded.att, decoded.low),
            (5, 3, Some((1, 20)))
        );
        assert_eq!(decoded.out.len(), 2);
        assert_eq!(decoded.out[1].tail_text(), snapshot.out[1].tail_text());
        assert_eq!(decoded.inbox[0].as_text().as_deref(), Some("받은 메시지"));
        assert_eq!(decoded.inbox[1].event(), Some("e"));
        assert_eq!(&decoded.inbox[1].as_bytes().unwrap()[..], &[1, 2, 3]);
        assert_eq!(decoded.inbox[1].request_id(), None);
        assert_eq!(decoded.inbox[2].event(), Some("ask"));
        assert_eq!(decoded.inbox[2].request_id(), Some(42));
        assert_eq!(decoded.inbox[3].request_id(), Some(7));
        assert_eq!(decoded.inbox[3].event(), None);
        assert_eq!(state.marks, marks);
        assert_eq!(state.all_mark, 4);
        assert_eq!(state.user, b"{\"name\":\"kim\"}");
        for cut in 0..encoded.len() - 14 {
            assert!(decode_state(encoded.slice(..cut)).is_none(), "{cut}");
        }
    }

    #[test]
    fn a_state_of_version_1_still_parses_and_unknown_versions_do_not() {
        let snapshot = Snapshot {
            key: 9,
            out: vec![EncodedMessage::new(&Message::text("보낸"))],
            acked: 1,
            next_seq: 3,
            released: 2,
            low: None,
            inbox: vec![
                Message::text("받은").with_event("chat"),
                Message::binary(vec![7u8]),
            ],
            in_seq: 2,
            att: 1,
            rooms: vec![Arc::from("방")],
        };
        // Without requests in its inbox, version 2's bytes are version 1's but for the first.
        let mut encoded = encode_state(&snapshot, &[("방".to_string(), 5)], 0, b"null").to_vec();
        encoded[0] = 1;
        let state = decode_state(Bytes::from(encoded.clone())).unwrap();
        assert_eq!(state.snapshot.inbox[0].event(), Some("chat"));
        assert_eq!(state.snapshot.inbox[0].as_text().as_deref(), Some("받은"));
        assert_eq!(&state.snapshot.inbox[1].as_bytes().unwrap()[..], &[7]);
        assert_eq!(state.marks, [("방".to_string(), 5)]);
        for version in [0, 3, 255] {
            encoded[0] = version;
            assert!(decode_state(Bytes::from(encoded.clone())).is_none());
        }
    }

    #[test]
    fn what_the_giver_delivered_is_not_added_again() {
        let entry = |room: &str, id| Recorded {
            room: Some(Arc::from(room)),
            id,
            message: EncodedMessage::new(&Message::text("x")),
            except: Except::None,
            priority: Priority::Normal,
            only: None,
            close: false,
        };
        let log = vec![entry("a", 5), entry("b", 9), entry("a", 3), entry("a", 8)];
        // The giver's last one in room a was id 3: entries 0 and 2 were delivered, 3 was not.
        assert!(delivered_by_giver(&log, 0, 3));
        assert!(delivered_by_giver(&log, 2, 3));
        assert!(!delivered_by_giver(&log, 3, 3));
        // Room b's mark is from before the log: nothing in b was delivered.
        assert!(!delivered_by_giver(&log, 1, 7));
        assert!(!delivered_by_giver(&log, 1, 0));
    }
}
