//! The state one session shares between its transports, the hub and the application.
//!
//! Everything lives behind one short-held `std::sync::Mutex`; nothing awaits while holding it.
//! Waiting goes through two [`Notify`]s, always with the `enable`-before-check pattern so that no
//! wake-up is lost: `outbound` for the attached transport (messages released, takeover, close),
//! `inbound` for the application and inbound deliveries (a message received or taken, room in the
//! inbound queue, takeover, close). A new message notifies the transport only when it has said it
//! waits (`drain` answered [`Drain::Idle`]); a broadcast to one of its rooms then wakes it through
//! the room's log, where `drain` registered it.
//!
//! Broadcasts to the session's rooms are not pushed here: the session takes them from its rooms'
//! logs (`pull`) before anything that looks at or adds to its buffer (a drain, a direct message,
//! a close, leaving a room, a handover), so they get their sequence numbers in the order they
//! were sent (see [`crate::room_log`]). Lock order: a room index's lock, then a session's, then
//! rooms' logs (several at once in the order of their addresses).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use tokio::sync::Notify;

use crate::address::AddressSlot;
use crate::config::Config;
use crate::error::{CloseReason, JoinError, SendError};
use crate::hub::RoomIndex;
use crate::message::Message;
use crate::metrics::Origin;
use crate::presence::PresenceChange;
use crate::protocol::EncodedMessage;
use crate::room_log::{Entry, Registered, RoomLog};
use crate::session::{Priority, SessionId, TransportKind};

// Field order is fixed (`repr(C)`) and matters: a broadcast to all touches every recipient's
// `Shared` once (and a room's sweep every member's), so what `push` reads and writes (the limits
// through `config`, the lock, the buffer and its counters, the priority state and the waiting flag)
// comes first, in as few cache lines as it fits.
#[repr(C)]
pub(crate) struct Shared<U> {
    pub(crate) config: Arc<Config>,
    state: Mutex<State<U>>,
    pub(crate) key: u64,
    pub(crate) sid: SessionId,
    pub(crate) user: U,
    rooms: Weak<RoomIndex<U>>,
    /// Wakes the attached transport: messages released, takeover, close.
    pub(crate) outbound: Notify,
    /// Wakes the application and inbound deliveries: a message received or taken, takeover, close.
    inbound: Notify,
    inbound_lock: tokio::sync::Mutex<()>,
}

/// What moves with a session handed over to another node of the cluster: everything but the
/// transports and the application's handler (`docs/scale-out.md`, "Handover").
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) key: u64,
    /// Unacknowledged messages, numbered from `acked + 1` on.
    pub(crate) out: Vec<EncodedMessage>,
    pub(crate) acked: u64,
    pub(crate) next_seq: u64,
    pub(crate) released: u64,
    /// Held low-priority messages: how many and their bytes.
    pub(crate) low: Option<(usize, usize)>,
    /// Messages received but not yet taken by the application.
    pub(crate) inbox: Vec<Message>,
    pub(crate) in_seq: u64,
    pub(crate) att: u64,
    pub(crate) rooms: Vec<Arc<str>>,
}

// What `push` touches first (see `Shared`).
#[repr(C)]
struct State<U> {
    /// Unacknowledged outbound messages, numbered from `acked + 1` on (the number of `out[i]` is
    /// `acked + 1 + i`, so it is not stored).
    out: VecDeque<EncodedMessage>,
    out_bytes: usize,
    next_seq: u64,
    /// Messages up to this sequence number may be sent (low-priority ones wait until released).
    released: u64,
    /// The attached transport found nothing to send and waits for [`Shared::outbound`]; only then
    /// does a new message notify it (a busy transport drains again before it waits).
    waiting: bool,
    /// A POST is in progress (see [`Shared::begin_post`]).
    post_busy: bool,
    /// A transport has attached or a POST has come: the session is in use, and expires after
    /// the resume window rather than the handshake window.
    used: bool,
    /// The session came from another node of the cluster (see [`Shared::restore`]).
    handed_over: bool,
    /// The kind of the transport attached last, if any has (for the metrics: which transport a
    /// session is on, and whether a change of transport was a fallback or an upgrade).
    last: Option<TransportKind>,
    close: Option<CloseReason>,
    low: Option<LowPending>,
    acked: u64,
    inbox: VecDeque<Message>,
    /// Highest client sequence number delivered to the application.
    in_seq: u64,
    generation: u64,
    attached: Option<(u64, TransportKind)>,
    /// The highest attach number (`att`) a transport has attached with (`docs/protocol.md` §9):
    /// a transport request with a lower one is stale and does not attach.
    att: u64,
    /// While the session lives: since when no transport has been attached (or a POST was seen).
    /// Once it has ended: when it ended. (One field for both keeps every session 16 bytes smaller.)
    since: Instant,
    /// The rooms the session is in, and how far it has taken each one's log.
    rooms: Vec<Membership<U>>,
    /// Counts the session against its client's address while the registry holds it (see
    /// [`Addresses`](crate::address::Addresses)).
    address: Option<AddressSlot>,
    /// The session's span (see [`Shared::span`]); `None` while spans at its level are off.
    span: Option<Box<tracing::Span>>,
}

/// A room a session is in (see [`crate::room_log`]).
struct Membership<U> {
    /// The room's log, which knows the room's name.
    log: Arc<RoomLog<U>>,
    /// The position of the next entry of the room's log for this session.
    next: u64,
    registered: Registered,
}

#[derive(Clone, Copy)]
struct LowPending {
    since: Instant,
    count: usize,
    bytes: usize,
}

/// What a transport should do next.
pub(crate) enum Drain {
    /// A newer transport took over; release this one.
    Superseded,
    /// The session moved to another node of the cluster (see [`Shared::hand_over`]); release
    /// this transport and tell the client to come again.
    Moved,
    /// Frames were handed to the writer, the last with sequence number `last` (`None`: only a
    /// close is due); then, if `close` is set, write the close frame.
    Ready {
        last: Option<u64>,
        close: Option<CloseReason>,
    },
    /// Nothing to send. Wait for a notification, or until `wake_at` (held low-priority messages).
    Idle { wake_at: Option<Instant> },
}

/// What the reaper should do with a session.
pub(crate) enum Expiry {
    Keep,
    /// No transport for the resume window: close it as expired and forget it (if it is still
    /// due then: see [`Shared::expire`]).
    Expire,
    /// Closed long enough ago, or expired: forget it.
    Remove,
}

/// Why a transport did not attach (see [`Shared::attach`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttachError {
    /// The session has expired: the client is answered as for an unknown session, since a client
    /// never receives close code 4002 (`docs/protocol.md` §8).
    Expired,
    /// The request's attach number is lower than one that has attached already: it was overtaken
    /// by a newer request of the client and supersedes nothing (`docs/protocol.md` §9).
    Stale,
}

impl<U> Shared<U> {
    /// A new session, opened by a client.
    pub(crate) fn new(
        key: u64,
        sid: SessionId,
        user: U,
        config: Arc<Config>,
        rooms: Weak<RoomIndex<U>>,
    ) -> Self {
        config.metrics.session_opened(Origin::Client);
        Self::fresh(key, sid, user, config, rooms)
    }

    fn fresh(
        key: u64,
        sid: SessionId,
        user: U,
        config: Arc<Config>,
        rooms: Weak<RoomIndex<U>>,
    ) -> Self {
        Self {
            key,
            sid,
            user,
            config,
            rooms,
            state: Mutex::new(State {
                out: VecDeque::new(),
                out_bytes: 0,
                next_seq: 1,
                acked: 0,
                released: 0,
                waiting: false,
                post_busy: false,
                used: false,
                handed_over: false,
                low: None,
                inbox: VecDeque::new(),
                in_seq: 0,
                generation: 0,
                attached: None,
                last: None,
                att: 0,
                since: Instant::now(),
                close: None,
                rooms: Vec::new(),
                address: None,
                span: None,
            }),
            outbound: Notify::new(),
            inbound: Notify::new(),
            inbound_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The same new session, counted against its client's address by `address` until it is
    /// forgotten (see [`release_address`](Self::release_address)).
    pub(crate) fn counted_for(mut self, address: Option<AddressSlot>) -> Self {
        self.state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .address = address;
        self
    }

    /// Stops counting the session against its client's address: the registry has forgotten it.
    pub(crate) fn release_address(&self) {
        // Taken out under the lock, dropped (which takes the per-address map's lock) after it.
        let address = self.state().address.take();
        drop(address);
    }

    /// A session handed over from another node, as it was there (its rooms are joined by the
    /// caller: see [`Snapshot`]).
    pub(crate) fn restore(
        snapshot: Snapshot,
        sid: SessionId,
        user: U,
        config: Arc<Config>,
        rooms: Weak<RoomIndex<U>>,
    ) -> Self {
        config.metrics.session_opened(Origin::Handover);
        let mut shared = Self::fresh(snapshot.key, sid, user, config, rooms);
        let state = shared
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.handed_over = true;
        state.out_bytes = snapshot.out.iter().map(EncodedMessage::buffered_len).sum();
        state.out = snapshot.out.into();
        state.acked = snapshot.acked;
        state.next_seq = snapshot.next_seq;
        state.released = snapshot.released;
        state.low = snapshot.low.map(|(count, bytes)| LowPending {
            since: Instant::now(),
            count,
            bytes,
        });
        state.inbox = snapshot.inbox.into();
        state.in_seq = snapshot.in_seq;
        state.att = snapshot.att;
        shared
    }

    /// Ends the session here because it moves to another node, and returns what moves with it;
    /// `None` if it has ended already. Atomic: nothing is buffered, acknowledged or received
    /// here after the snapshot (a POST that comes later is answered with the acknowledgement of
    /// the snapshot, and its client sends the rest again, to the new owner).
    pub(crate) fn hand_over(&self) -> Option<Snapshot> {
        let state = self.state();
        if state.close.is_some() {
            return None;
        }
        let mut state = self.pulled(state)?;
        let snapshot = Snapshot {
            key: self.key,
            out: state.out.iter().cloned().collect(),
            acked: state.acked,
            next_seq: state.next_seq,
            released: state.released,
            low: state.low.map(|low| (low.count, low.bytes)),
            inbox: std::mem::take(&mut state.inbox).into(),
            in_seq: state.in_seq,
            att: state.att,
            rooms: state
                .rooms
                .iter()
                .map(|room| room.log.name.clone())
                .collect(),
        };
        self.close_locked(state, CloseReason::HandedOver);
        Some(snapshot)
    }

    /// Whether the session came from another node of the cluster (see [`Shared::restore`]).
    pub(crate) fn handed_over(&self) -> bool {
        self.state().handed_over
    }

    /// The session's span, which its handler runs in: the parent of its transports' spans, so
    /// that one client's story reads as one in the log. A disabled span while spans at `info`
    /// are off.
    pub(crate) fn span(&self) -> tracing::Span {
        match &self.state().span {
            Some(span) => (**span).clone(),
            None => tracing::Span::none(),
        }
    }

    /// Makes `span` the session's span (see [`span`](Self::span)).
    pub(crate) fn set_span(&self, span: &tracing::Span) {
        if !span.is_disabled() {
            self.state().span = Some(Box::new(span.clone()));
        }
    }

    pub(crate) fn rooms_index(&self) -> Option<Arc<RoomIndex<U>>> {
        self.rooms.upgrade()
    }

    fn state(&self) -> MutexGuard<'_, State<U>> {
        // A panic while holding this lock cannot leave the state half-updated in a way that
        // matters more than losing the session, so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends an encoded message to the outbound buffer; on overflow, closes the session.
    pub(crate) fn push_or_close(
        &self,
        message: &EncodedMessage,
        priority: Priority,
    ) -> Result<u64, SendError> {
        let pushed = self.push(message, priority);
        if pushed == Err(SendError::Overflow) {
            self.close_overflowed();
        }
        pushed
    }

    /// Closes the session after [`push`](Self::push) reported an overflow.
    pub(crate) fn close_overflowed(&self) {
        crate::logs::info_limited!(
            session = self.key,
            "outbound buffer overflow; closing session"
        );
        self.close(CloseReason::Overflow);
    }

    /// Appends an encoded message to the outbound buffer. On overflow it returns
    /// `Err(SendError::Overflow)` and leaves closing the session to the caller (see
    /// [`push_or_close`](Self::push_or_close)), who may be holding the room index's lock, which
    /// closing needs.
    pub(crate) fn push(
        &self,
        message: &EncodedMessage,
        priority: Priority,
    ) -> Result<u64, SendError> {
        let max = self.config.max_message;
        if message.payload_len() > max {
            return Err(SendError::TooLarge {
                len: message.payload_len(),
                max,
            });
        }
        let mut state = self.state();
        if let Some(reason) = &state.close {
            return Err(SendError::Closed(reason.clone()));
        }
        // Broadcasts sent before this message come before it.
        let pulled = self.pull(&mut state)?;
        let (seq, release) = self.enqueue(&mut state, message, priority)?;
        // Waking a transport that has not yet drained what was there before would only cost the
        // sender a trip through the notifier.
        let wake = (pulled || release) && std::mem::take(&mut state.waiting);
        drop(state);
        if wake {
            self.outbound.notify_waiters();
        }
        Ok(seq)
    }

    /// Takes what the logs of the session's rooms hold for it and it has not taken yet into its
    /// buffer, in the order of their stamps (see [`crate::room_log`]). Returns whether that
    /// released messages to send; `Err(SendError::Overflow)` if they do not fit (the caller
    /// closes the session once it has released the lock).
    fn pull(&self, state: &mut State<U>) -> Result<bool, SendError> {
        match state.rooms.len() {
            0 => Ok(false),
            1 => {
                let mut rooms = std::mem::take(&mut state.rooms);
                let pulled = self.pull_one(state, &mut rooms[0], None);
                state.rooms = rooms;
                pulled.map(|(released, _)| released)
            }
            _ => self.pull_merged(state),
        }
    }

    /// [`pull`](Self::pull) for a transport's drain: when that leaves nothing to send after
    /// `after`, a session in one room also registers in its log, under the same lock (the one
    /// lock a waiting member takes per wake-up). Returns whether it registered.
    fn pull_for_drain(
        self: &Arc<Self>,
        state: &mut State<U>,
        after: u64,
    ) -> Result<bool, SendError> {
        if state.rooms.len() != 1 {
            return self.pull(state).map(|_| false);
        }
        let mut rooms = std::mem::take(&mut state.rooms);
        let pulled = self.pull_one(state, &mut rooms[0], Some((self, after)));
        state.rooms = rooms;
        pulled.map(|(_, registered)| registered)
    }

    /// [`pull`](Self::pull) for a session in one room; with `register`, as
    /// [`pull_for_drain`](Self::pull_for_drain). Returns whether it released messages and
    /// whether it registered.
    fn pull_one(
        &self,
        state: &mut State<U>,
        room: &mut Membership<U>,
        register: Option<(&Arc<Self>, u64)>,
    ) -> Result<(bool, bool), SendError> {
        let mut log = room.log.lock();
        if room.next < log.base() {
            // Not reached (a sweep has every member take the entries it drops): a gap is never
            // silent.
            return Err(SendError::Overflow);
        }
        let mut released = false;
        for entry in log.from(room.next) {
            room.next += 1;
            if !entry.except.contains(self.key) {
                released |= self.enqueue(state, &entry.message, entry.priority)?.1;
            }
        }
        if let Some((me, after)) = register
            && state.close.is_none()
            && state.released <= after.max(state.acked)
        {
            log.register(|| Arc::downgrade(me), &mut room.registered);
            return Ok((released, true));
        }
        Ok((released, false))
    }

    /// [`pull`](Self::pull) for a session in several rooms: their logs are locked together (in
    /// the order of their addresses, as every such pull does) and merged by stamp.
    fn pull_merged(&self, state: &mut State<U>) -> Result<bool, SendError> {
        let mut rooms = std::mem::take(&mut state.rooms);
        // A cheap look first: most pulls find nothing, and the merge allocates.
        let pending = rooms.iter().any(|room| room.log.lock().head() > room.next);
        let pulled = if pending {
            self.merge(state, &mut rooms)
        } else {
            Ok(false)
        };
        state.rooms = rooms;
        pulled
    }

    /// Merges the logs of `rooms` by stamp into the session's buffer (see
    /// [`pull_merged`](Self::pull_merged)).
    fn merge(&self, state: &mut State<U>, rooms: &mut [Membership<U>]) -> Result<bool, SendError> {
        // (room index, its log), in the order of the logs' addresses, then locked in that order.
        let mut logs: Vec<(usize, Arc<RoomLog<U>>)> = rooms
            .iter()
            .enumerate()
            .map(|(at, room)| (at, room.log.clone()))
            .collect();
        logs.sort_by_key(|(_, log)| Arc::as_ptr(log) as usize);
        let locked: Vec<_> = logs.iter().map(|(at, log)| (*at, log.lock())).collect();
        let mut released = false;
        loop {
            // The room whose next entry has the lowest stamp, and that entry.
            let mut earliest: Option<(usize, &Entry)> = None;
            for (at, log) in &locked {
                let next = rooms[*at].next;
                if next < log.base() {
                    return Err(SendError::Overflow);
                }
                if let Some(entry) = log.at(next)
                    && earliest.is_none_or(|(_, first)| entry.stamp < first.stamp)
                {
                    earliest = Some((*at, entry));
                }
            }
            let Some((at, entry)) = earliest else {
                return Ok(released);
            };
            rooms[at].next += 1;
            if !entry.except.contains(self.key) {
                released |= self.enqueue(state, &entry.message, entry.priority)?.1;
            }
        }
    }

    /// [`pull`](Self::pull) for the open session whose locked state is `state`; on overflow, closes
    /// the session and returns `None`.
    fn pulled<'a>(&self, mut state: MutexGuard<'a, State<U>>) -> Option<MutexGuard<'a, State<U>>> {
        if self.pull(&mut state).is_ok() {
            return Some(state);
        }
        drop(state);
        self.close_overflowed();
        None
    }

    /// Has the session take what its rooms' logs hold for it (see [`pull`](Self::pull)), waking
    /// its transport if that released messages while it waits. `Err(SendError::Overflow)` if
    /// they do not fit: the caller closes the session (see [`push`](Self::push)).
    pub(crate) fn catch_up(&self) -> Result<(), SendError> {
        let mut state = self.state();
        if state.close.is_some() {
            return Ok(());
        }
        let released = self.pull(&mut state)?;
        let wake = released && std::mem::take(&mut state.waiting);
        drop(state);
        if wake {
            self.outbound.notify_waiters();
        }
        Ok(())
    }

    /// Appends `message` to the buffer of the open session whose state is `state`: its sequence
    /// number and whether it released messages to send (a low-priority one may wait).
    fn enqueue(
        &self,
        state: &mut State<U>,
        message: &EncodedMessage,
        priority: Priority,
    ) -> Result<(u64, bool), SendError> {
        let len = message.buffered_len();
        if state.out.len() >= self.config.max_buffered_messages
            || state.out_bytes + len > self.config.max_buffered_bytes
        {
            return Err(SendError::Overflow);
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.out.push_back(message.clone());
        state.out_bytes += len;
        let release = match priority {
            Priority::Normal => {
                state.released = seq;
                if state.low.is_some() {
                    state.low = None;
                }
                true
            }
            Priority::Low => {
                let coalescing = self.config.coalescing;
                let low = state.low.get_or_insert(LowPending {
                    since: Instant::now(),
                    count: 0,
                    bytes: 0,
                });
                low.count += 1;
                low.bytes += len;
                let first = low.count == 1;
                if low.count >= coalescing.max_count || low.bytes >= coalescing.max_bytes {
                    state.released = seq;
                    state.low = None;
                    true
                } else {
                    // The first held message tells a waiting transport when to wake up.
                    first
                }
            }
        };
        Ok((seq, release))
    }

    /// Applies the client's cumulative acknowledgement and returns the acknowledged position.
    /// A value beyond what may have been sent (released) is clamped to it, so that a bogus ack can
    /// neither skip messages nor drop held ones unsent.
    pub(crate) fn ack(&self, ack: u64) -> u64 {
        let mut state = self.state();
        let ack = ack.min(state.released);
        if ack <= state.acked {
            return state.acked;
        }
        let count = (ack - state.acked) as usize;
        let freed: usize = state
            .out
            .drain(..count)
            .map(|message| message.buffered_len())
            .sum();
        state.out_bytes -= freed;
        state.acked = ack;
        ack
    }

    /// Makes a new transport, whose request carried attach number `att` (0 when absent), the one
    /// that drains this session; the previous one (if any) sees [`Drain::Superseded`] on its next
    /// call. Returns the new transport's generation.
    ///
    /// Refused, with nothing changed, when the request is stale (`att` lower than the highest one
    /// attached so far) or the session has expired, or is due to (then it expires now). Both
    /// checks and the attach happen under one lock, so that neither a newer request nor the
    /// reaper can come in between.
    pub(crate) fn attach(&self, kind: TransportKind, att: u64) -> Result<u64, AttachError> {
        let mut state = self.state();
        if matches!(state.close, Some(CloseReason::Expired)) {
            return Err(AttachError::Expired);
        }
        if self.expiry_due(&state, Instant::now()) {
            self.close_locked(state, CloseReason::Expired);
            return Err(AttachError::Expired);
        }
        if att < state.att {
            return Err(AttachError::Stale);
        }
        state.att = att;
        state.used = true;
        state.generation += 1;
        let generation = state.generation;
        let previous = state.attached.replace((generation, kind));
        let metrics = &self.config.metrics;
        if let Some((_, previous)) = previous {
            metrics.detached(previous);
        }
        // A session that has ended no longer counts as open (a transport may still come for its
        // close frame): then only the attach is counted.
        let open = state.close.is_none();
        metrics.attached(kind, state.last.replace(kind), previous.is_some(), open);
        drop(state);
        if previous.is_some() {
            tracing::debug!(session = self.key, ?kind, "transport takes over");
            self.outbound.notify_waiters();
            self.inbound.notify_waiters();
        } else {
            tracing::debug!(session = self.key, ?kind, "transport attached");
        }
        Ok(generation)
    }

    /// Releases the transport of this generation (no-op if another has taken over since).
    pub(crate) fn detach(&self, generation: u64) {
        let mut state = self.state();
        if let Some((current, kind)) = state.attached
            && current == generation
        {
            self.config.metrics.detached(kind);
            state.attached = None;
            if state.close.is_none() {
                state.since = Instant::now();
            }
            tracing::debug!(session = self.key, "transport detached");
        }
    }

    /// Counts a request that does not attach (a POST) as a sign of life for expiry. Refused when
    /// the session has expired, or is due to (then it expires now), as [`attach`](Self::attach).
    pub(crate) fn touch(&self) -> Result<(), AttachError> {
        let mut state = self.state();
        if matches!(state.close, Some(CloseReason::Expired)) {
            return Err(AttachError::Expired);
        }
        let now = Instant::now();
        if self.expiry_due(&state, now) {
            self.close_locked(state, CloseReason::Expired);
            return Err(AttachError::Expired);
        }
        if state.attached.is_none() && state.close.is_none() {
            state.since = now;
        }
        state.used = true;
        Ok(())
    }

    /// Whether the session has expired (see [`AttachError::Expired`]).
    pub(crate) fn is_expired(&self) -> bool {
        matches!(self.state().close, Some(CloseReason::Expired))
    }

    /// The transport currently attached.
    pub(crate) fn transport(&self) -> Option<TransportKind> {
        self.state().attached.map(|(_, kind)| kind)
    }

    /// Hands what the transport of `generation` should send after `after` (the highest sequence
    /// number it has already written or the client has acknowledged), up to about `max_bytes`, to
    /// `write`, in order, while holding the session's lock: the frames are written straight into
    /// the transport's output, without copying the buffer or touching the messages' reference
    /// counts. A transport that is told [`Drain::Idle`] is woken by the next message released.
    pub(crate) fn drain(
        self: &Arc<Self>,
        generation: u64,
        after: u64,
        max_bytes: usize,
        mut write: impl FnMut(u64, &EncodedMessage),
    ) -> Drain {
        let mut state = self.state();
        loop {
            if matches!(state.close, Some(CloseReason::HandedOver)) {
                return Drain::Moved;
            }
            if !matches!(state.attached, Some((current, _)) if current == generation) {
                return Drain::Superseded;
            }
            let Ok(registered) = self.pull_for_drain(&mut state, after) else {
                drop(state);
                self.close_overflowed();
                state = self.state();
                continue;
            };
            if let Some(low) = state.low
                && low.since + self.config.coalescing.max_delay <= Instant::now()
            {
                state.released = state.next_seq - 1;
                state.low = None;
            }
            // Messages up to `after` were written already; start right after them (in O(1),
            // however many are written but not yet acknowledged).
            let start = (after.saturating_sub(state.acked) as usize).min(state.out.len());
            let mut last = None;
            let mut bytes = 0;
            let (mut count, mut payload) = (0, 0);
            let first_seq = state.acked + 1 + start as u64;
            for (seq, message) in (first_seq..).zip(state.out.range(start..)) {
                if seq > state.released || (bytes > 0 && bytes + message.buffered_len() > max_bytes)
                {
                    break;
                }
                bytes += message.buffered_len() + 24;
                count += 1;
                payload += message.payload_len();
                write(seq, message);
                last = Some(seq);
            }
            if let (Some((_, kind)), true) = (state.attached, count > 0) {
                self.config.metrics.sent(kind, count, payload as u64);
            }
            let last_sent = last.unwrap_or(after.max(state.acked));
            if let Some(reason) = &state.close {
                let everything = last_sent >= state.next_seq - 1;
                return Drain::Ready {
                    last,
                    close: everything.then(|| reason.clone()),
                };
            }
            if last.is_some() {
                return Drain::Ready { last, close: None };
            }
            // Nothing to send: wait, unless a broadcast came since the pull (then take it).
            if registered || self.register(&mut state) {
                state.waiting = true;
                return Drain::Idle {
                    wake_at: state
                        .low
                        .map(|low| low.since + self.config.coalescing.max_delay),
                };
            }
        }
    }

    /// Registers the session's transport to be woken by the next broadcast to any of its rooms;
    /// `false` (with some registrations perhaps made) if one of them has an entry it has not taken
    /// yet. Each check and registration is made under the log's lock, so that no broadcast comes
    /// in between unnoticed.
    fn register(self: &Arc<Self>, state: &mut State<U>) -> bool {
        for room in &mut state.rooms {
            let mut log = room.log.lock();
            if log.head() > room.next {
                return false;
            }
            log.register(|| Arc::downgrade(self), &mut room.registered);
        }
        true
    }

    /// The highest client sequence number delivered to the application.
    pub(crate) fn inbound_ack(&self) -> u64 {
        self.state().in_seq
    }

    /// Delivers client messages in order, exactly once. Each message is judged on its own, in the
    /// order given: a duplicate (`seq <= delivered`) or one after a gap (`seq > delivered + 1`) is
    /// dropped, the next one (`seq = delivered + 1`) is delivered (`docs/protocol.md` §5.5), so the
    /// outcome does not depend on how a transport's reads were grouped. Waits while the
    /// application's inbound queue is full, unless the
    /// session ends or, for a transport (`generation` set), another transport takes over. Returns
    /// the highest client sequence number delivered.
    ///
    /// Cancel-safe: each message is delivered entirely or not at all.
    pub(crate) async fn deliver(
        &self,
        generation: Option<u64>,
        messages: Vec<(u64, Message)>,
    ) -> u64 {
        let _one_at_a_time = self.inbound_lock.lock().await;
        let cap = self.config.inbound_queue;
        for (seq, message) in messages {
            let mut message = Some(message);
            let mut waited = false;
            loop {
                let notified = self.inbound.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut state = self.state();
                    let superseded = generation.is_some_and(|generation| {
                        !matches!(state.attached, Some((current, _)) if current == generation)
                    });
                    if state.close.is_some() || superseded {
                        return state.in_seq;
                    }
                    if seq != state.in_seq + 1 {
                        break;
                    }
                    if state.inbox.len() < cap {
                        if let Some(message) = message.take() {
                            if let Some(kind) = state.last {
                                self.config.metrics.received(kind, message.payload_len());
                            }
                            state.inbox.push_back(message);
                        }
                        state.in_seq = seq;
                        drop(state);
                        self.inbound.notify_waiters();
                        break;
                    }
                    if !waited {
                        waited = true;
                        self.config.metrics.inbound_wait();
                    }
                }
                notified.await;
            }
        }
        self.inbound_ack()
    }

    /// Takes the next received message; `None` once the session has ended and the queue is empty.
    pub(crate) async fn recv(&self) -> Option<Message> {
        loop {
            let notified = self.inbound.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state();
                let was_full = state.inbox.len() >= self.config.inbound_queue;
                if let Some(message) = state.inbox.pop_front() {
                    drop(state);
                    if was_full {
                        self.inbound.notify_waiters();
                    }
                    return Some(message);
                }
                if state.close.is_some() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Waits until the session has ended.
    pub(crate) async fn closed(&self) -> CloseReason {
        loop {
            let notified = self.inbound.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.close_reason() {
                return reason;
            }
            notified.await;
        }
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.state().close.clone()
    }

    /// Ends the session. Returns `false` if it had already ended.
    pub(crate) fn close(&self, reason: CloseReason) -> bool {
        let state = self.state();
        if state.close.is_some() {
            return false;
        }
        self.close_locked(state, reason);
        true
    }

    /// Closes the session as expired if it is due to expire at `now`: still open, nothing
    /// attached, and no sign of life for the resume window. The check and the close happen under
    /// one lock, so a transport that attached (or a POST that came) since the reaper looked keeps
    /// the session. Returns whether it expired.
    ///
    /// A POST in progress keeps the session too (it may be waiting for the application to take
    /// its messages, for up to the poll hold time): its answer must carry the acknowledgement of
    /// what was delivered, not a `404`. The window starts again when the POST ends.
    pub(crate) fn expire(&self, now: Instant) -> bool {
        let state = self.state();
        if state.post_busy || !self.expiry_due(&state, now) {
            return false;
        }
        self.close_locked(state, CloseReason::Expired);
        true
    }

    /// Whether the session is open, has nothing attached and no sign of life for the resume
    /// window at `now`.
    fn expiry_due(&self, state: &State<U>, now: Instant) -> bool {
        state.close.is_none()
            && state.attached.is_none()
            && state.since + self.open_window(state) <= now
    }

    /// How long the open session whose state is `state` lives with nothing attached: the resume
    /// window once it has been used, the (shorter) handshake window before.
    fn open_window(&self, state: &State<U>) -> std::time::Duration {
        let config = &self.config;
        if state.used || state.handed_over {
            config.resume_window
        } else {
            config.handshake_window.min(config.resume_window)
        }
    }

    /// Ends the open session whose locked state is `state` (the lock is released before the rooms
    /// are left and the waiters woken).
    fn close_locked(&self, mut state: MutexGuard<'_, State<U>>, mut reason: CloseReason) {
        let mut discard = matches!(
            reason,
            CloseReason::Overflow
                | CloseReason::ProtocolError(_)
                | CloseReason::Expired
                | CloseReason::HandedOver
        );
        // What was broadcast to its rooms before the close is sent before it, as a direct message
        // would be; if it does not fit, the session overflows instead.
        if !discard && self.pull(&mut state).is_err() {
            reason = CloseReason::Overflow;
            discard = true;
        }
        if discard {
            state.out.clear();
            state.out_bytes = 0;
            state.acked = state.next_seq - 1;
        }
        state.released = state.next_seq - 1;
        state.low = None;
        tracing::debug!(session = self.key, reason = %reason, "session closed");
        self.config.metrics.session_ended(&reason, state.last);
        // A session that moved to another node is in its rooms there: nothing to announce.
        let change = (!matches!(reason, CloseReason::HandedOver)).then_some(PresenceChange::Ended);
        state.close = Some(reason);
        state.since = Instant::now();
        let rooms = std::mem::take(&mut state.rooms);
        drop(state);
        if let Some(index) = self.rooms.upgrade() {
            for room in rooms {
                index.remove(&room.log.name, self.key, change);
            }
        }
        self.outbound.notify_waiters();
        self.inbound.notify_waiters();
    }

    /// Records that the session is in `room`, whose log is `log`: it gets the broadcasts appended
    /// from now on. The caller has already added it to the room index; on `Err` the caller removes
    /// it again. `joined` runs if the session was not in the room, under the session's lock (so
    /// that it comes before anything the session's end does).
    pub(crate) fn add_room(
        self: &Arc<Self>,
        room: &Arc<str>,
        log: &Arc<RoomLog<U>>,
        joined: impl FnOnce(),
    ) -> Result<bool, JoinError> {
        let mut state = self.state();
        if state.close.is_some() {
            return Err(JoinError::Closed);
        }
        if state.rooms.iter().any(|joined| joined.log.name == *room) {
            return Ok(false);
        }
        if state.rooms.len() >= self.config.max_rooms_per_session {
            return Err(JoinError::TooManyRooms {
                max: self.config.max_rooms_per_session,
            });
        }
        if state.rooms.is_empty() {
            // Most sessions join one room or two: room for one, not the four a first push makes.
            state.rooms.reserve_exact(1);
        }
        let mut locked = log.lock();
        let mut registered = Registered::default();
        if state.waiting {
            // The transport waits already: the room's next broadcast must wake it too.
            locked.register(|| Arc::downgrade(self), &mut registered);
        }
        let next = locked.head();
        drop(locked);
        state.rooms.push(Membership {
            log: log.clone(),
            next,
            registered,
        });
        joined();
        Ok(true)
    }

    /// Forgets `room`, once what was broadcast to it before has been taken (on overflow the
    /// session closes); returns whether the session was in it.
    pub(crate) fn remove_room(&self, room: &str) -> bool {
        let state = self.state();
        let Some(at) = state
            .rooms
            .iter()
            .position(|joined| &*joined.log.name == room)
        else {
            return false;
        };
        // Closing (on overflow) leaves every room.
        if let Some(mut state) = self.pulled(state) {
            state.rooms.remove(at);
        }
        true
    }

    pub(crate) fn rooms(&self) -> Vec<String> {
        self.state()
            .rooms
            .iter()
            .map(|room| room.log.name.to_string())
            .collect()
    }

    pub(crate) fn in_room(&self, room: &str) -> bool {
        self.state()
            .rooms
            .iter()
            .any(|joined| &*joined.log.name == room)
    }

    /// Number of messages and bytes waiting for acknowledgement (broadcasts to the session's
    /// rooms included).
    pub(crate) fn buffered(&self) -> (usize, usize) {
        match self.pulled(self.state()) {
            Some(state) => (state.out.len(), state.out_bytes),
            None => (0, 0),
        }
    }

    /// Whether the reaper should expire or forget this session.
    pub(crate) fn expiry(&self, now: Instant) -> Expiry {
        let state = self.state();
        if state.close.is_none() {
            self.config.metrics.buffer_depth(depth(&state));
        }
        let window = self.config.resume_window;
        // An expired session answers as unknown already: nothing is kept for its client.
        if matches!(state.close, Some(CloseReason::Expired)) {
            return Expiry::Remove;
        }
        if state.attached.is_some() {
            return Expiry::Keep;
        }
        match &state.close {
            Some(_) if state.since + window <= now => Expiry::Remove,
            None if state.since + self.open_window(&state) <= now => Expiry::Expire,
            _ => Expiry::Keep,
        }
    }

    /// Claims the session's single POST slot; `None` if a POST is already in progress.
    pub(crate) fn begin_post(self: &Arc<Self>) -> Option<PostSlot<U>> {
        let mut state = self.state();
        if state.post_busy {
            return None;
        }
        state.post_busy = true;
        Some(PostSlot(self.clone()))
    }
}

/// Holds a session's POST slot until dropped.
pub(crate) struct PostSlot<U>(Arc<Shared<U>>);

impl<U> Drop for PostSlot<U> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.post_busy = false;
        // The POST was a sign of life until its end (see `Shared::expire`).
        if state.attached.is_none() && state.close.is_none() {
            state.since = Instant::now();
        }
    }
}

/// Messages a session holds for its client and the client has not acknowledged: its buffer,
/// plus the broadcasts to its rooms it has not taken from their logs yet (those sent to all but
/// it included: an upper bound by a few).
fn depth<U>(state: &State<U>) -> usize {
    let pending: u64 = state
        .rooms
        .iter()
        .map(|room| room.log.lock().head().saturating_sub(room.next))
        .sum();
    state.out.len().saturating_add(pending as usize)
}

impl<U> Drop for Shared<U> {
    fn drop(&mut self) {
        // A session dropped without ever being closed (one whose opening failed half-way) stops
        // counting as open.
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.close.is_none() {
            self.config.metrics.session_dropped(state.last);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn shared() -> Arc<Shared<()>> {
        Arc::new(Shared::new(
            1,
            SessionId::random().unwrap(),
            (),
            Arc::new(Config::default()),
            Weak::new(),
        ))
    }

    #[test]
    fn expiry_counts_from_the_last_detach_then_from_the_close() {
        let session = shared();
        let window = session.config.resume_window;
        let generation = session.attach(TransportKind::WebSocket, 0).unwrap();
        let later = Instant::now() + window * 2;
        assert!(matches!(session.expiry(later), Expiry::Keep));
        session.detach(generation);
        let detached = Instant::now();
        assert!(matches!(session.expiry(detached), Expiry::Keep));
        assert!(matches!(session.expiry(later), Expiry::Expire));

        std::thread::sleep(Duration::from_millis(5));
        let generation = session.attach(TransportKind::LongPoll, 0).unwrap();
        assert!(session.close(CloseReason::ClientClosed));
        let closed = Instant::now();
        // A detach (or a POST) after the close does not postpone forgetting the session.
        std::thread::sleep(Duration::from_millis(5));
        session.detach(generation);
        session.touch().unwrap();
        assert!(matches!(session.expiry(closed), Expiry::Keep));
        assert!(matches!(session.expiry(closed + window), Expiry::Remove));
    }

    #[test]
    fn the_reaper_does_not_expire_a_session_that_got_a_transport_or_a_post_since_it_looked() {
        let session = shared();
        let window = session.config.resume_window;
        let later = Instant::now() + window * 2;
        // The reaper looks: the session is due to expire.
        assert!(matches!(session.expiry(later), Expiry::Expire));
        // A transport attaches before the reaper closes it: the close does not happen.
        let generation = session.attach(TransportKind::LongPoll, 0).unwrap();
        assert!(!session.expire(later));
        assert_eq!(session.close_reason(), None);
        // The transport detaches, the reaper looks again, a POST comes: the same.
        session.detach(generation);
        let detached = Instant::now();
        assert!(matches!(session.expiry(detached + window), Expiry::Expire));
        std::thread::sleep(Duration::from_millis(5));
        session.touch().unwrap();
        assert!(!session.expire(detached + window));
        assert_eq!(session.close_reason(), None);
        // Nothing comes: it expires, and is forgotten at the next look.
        assert!(session.expire(later));
        assert_eq!(session.close_reason(), Some(CloseReason::Expired));
        assert!(!session.expire(later));
        assert!(matches!(session.expiry(Instant::now()), Expiry::Remove));
    }

    #[test]
    fn nothing_attaches_to_an_expired_session() {
        let session = shared();
        assert!(session.expire(Instant::now() + session.config.resume_window));
        assert_eq!(
            session.attach(TransportKind::LongPoll, 0),
            Err(AttachError::Expired)
        );
        assert_eq!(
            session.attach(TransportKind::WebSocket, 9),
            Err(AttachError::Expired)
        );
        assert_eq!(session.touch(), Err(AttachError::Expired));
        assert_eq!(session.transport(), None);
    }

    #[test]
    fn a_request_after_the_resume_window_expires_the_session_at_once() {
        let config = Config {
            resume_window: Duration::from_millis(1),
            ..Config::default()
        };
        for attach in [true, false] {
            let session = Arc::new(Shared::new(
                1,
                SessionId::random().unwrap(),
                (),
                Arc::new(config.clone()),
                Weak::new(),
            ));
            std::thread::sleep(Duration::from_millis(20));
            // The reaper has not run; the request finds the window over all the same.
            let refused = if attach {
                session.attach(TransportKind::ShortPoll, 0).err()
            } else {
                session.touch().err()
            };
            assert_eq!(refused, Some(AttachError::Expired));
            assert_eq!(session.close_reason(), Some(CloseReason::Expired));
        }
    }

    #[test]
    fn a_stale_attach_number_takes_nothing_over_and_an_equal_one_does() {
        let session = shared();
        let first = session.attach(TransportKind::WebSocket, 5).unwrap();
        assert_eq!(
            session.attach(TransportKind::LongPoll, 4),
            Err(AttachError::Stale)
        );
        assert_eq!(
            session.attach(TransportKind::LongPoll, 0),
            Err(AttachError::Stale)
        );
        assert_eq!(session.transport(), Some(TransportKind::WebSocket));
        assert!(matches!(
            session.drain(first, 0, usize::MAX, |_, _| {}),
            Drain::Idle { .. }
        ));
        let second = session.attach(TransportKind::LongPoll, 5).unwrap();
        assert_eq!(session.transport(), Some(TransportKind::LongPoll));
        assert!(matches!(
            session.drain(first, 0, usize::MAX, |_, _| {}),
            Drain::Superseded
        ));
        // Once a higher number attached, the lower one is stale even after its holder left.
        session.detach(second);
        assert_eq!(
            session.attach(TransportKind::WebSocket, 4),
            Err(AttachError::Stale)
        );
        assert!(session.attach(TransportKind::WebSocket, 6).is_ok());
    }

    #[test]
    fn without_attach_numbers_every_transport_takes_over() {
        let session = shared();
        let mut previous = None;
        for kind in [
            TransportKind::WebSocket,
            TransportKind::LongPoll,
            TransportKind::ShortPoll,
            TransportKind::WebSocket,
        ] {
            let generation = session.attach(kind, 0).unwrap();
            assert_eq!(session.transport(), Some(kind));
            if let Some(previous) = previous {
                assert!(matches!(
                    session.drain(previous, 0, usize::MAX, |_, _| {}),
                    Drain::Superseded
                ));
            }
            previous = Some(generation);
        }
    }

    #[test]
    fn a_post_in_progress_keeps_the_session_and_its_end_restarts_the_window() {
        let session = shared();
        let window = session.config.resume_window;
        let slot = session.begin_post();
        assert!(slot.is_some());
        session.touch().unwrap();
        // The POST waits (back-pressure) past the window: the reaper leaves the session alone,
        // so the POST's answer can still acknowledge what was delivered.
        assert!(!session.expire(Instant::now() + window * 2));
        assert_eq!(session.close_reason(), None);
        std::thread::sleep(Duration::from_millis(5));
        let before_end = Instant::now();
        drop(slot);
        // The window counts from the POST's end, not its start.
        assert!(!session.expire(before_end + window));
        assert!(session.expire(Instant::now() + window));
    }

    #[test]
    fn one_post_at_a_time() {
        let session = shared();
        let slot = session.begin_post();
        assert!(slot.is_some());
        assert!(session.begin_post().is_none());
        drop(slot);
        assert!(session.begin_post().is_some());
    }
}
