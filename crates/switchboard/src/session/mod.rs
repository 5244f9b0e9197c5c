//! Sessions: one logical, ordered, lossless channel per client.
//!
//! # A session outlives its transports
//!
//! A session is created when a client connects for the first time and is named by a secret session
//! id. Transports (a WebSocket, a long poll, a short poll) *attach* to it, drain its outbound buffer,
//! and detach; the session does not care which one is attached or how often it changes. It ends
//! only when the application or the client closes it, when no transport has been attached for the
//! resume window, or when its buffer overflows.
//!
//! # Exactly once, in order, both ways
//!
//! Every message the application sends gets the next sequence number of the session and stays in
//! the buffer until the client acknowledges it (cumulatively); a transport that attaches resumes
//! from the client's acknowledgement, and the client drops anything it has already seen. Messages
//! from the client carry the client's own sequence numbers, so a retried POST or a frame resent
//! after a reconnect is recognised and delivered to the application only once.
//!
//! # Bounded
//!
//! The outbound buffer is bounded in messages and bytes: exceeding it closes the session with
//! [`CloseReason::Overflow`](crate::CloseReason::Overflow), which the application sees as the close
//! reason and the client as close code 4003 (it then opens a fresh session and tells its
//! application to resynchronise). The inbound queue is bounded too: when the application does not
//! keep up, transports stop reading from that client.

pub(crate) mod registry;
mod shared;

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

pub(crate) use shared::{AttachError, Drain, Expiry, Shared, Snapshot};

use crate::error::{CloseReason, JoinError, SendError};
use crate::message::Message;
use crate::presence::PresenceChange;
use crate::protocol::EncodedMessage;

/// A session's secret id: 128 random bits from the operating system's generator.
///
/// It is a bearer credential, so it has no `Display` and its `Debug` output is redacted: the
/// library never logs it. Use [`Session::key`] to refer to a session in logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SessionId(uuid::Uuid);

impl SessionId {
    /// A fresh id: all 128 bits from the operating system's random generator (a version-4 UUID
    /// would fix 6 of them). `None` if the generator fails: then no session can be opened safely.
    pub(crate) fn random() -> Option<Self> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).ok()?;
        Some(Self(uuid::Uuid::from_bytes(bytes)))
    }

    /// Parses the 32-hex-digit form; `None` for anything else.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        uuid::Uuid::try_parse(text).ok().map(Self)
    }

    /// The id whose bytes are `bytes`.
    pub(crate) fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }

    /// The id's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The 32-lowercase-hex-digit form sent to the client.
    pub(crate) fn to_hex(self) -> String {
        self.0.simple().to_string()
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

/// The kind of transport carrying a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// A WebSocket.
    WebSocket,
    /// HTTP long polling: a `GET` held until there is something to send.
    LongPoll,
    /// HTTP short polling: a `GET` answered at once, repeated on an interval.
    ShortPoll,
    /// Server-Sent Events: one `GET` whose response streams every frame.
    Sse,
}

impl TransportKind {
    /// The name the JavaScript client uses: `"websocket"`, `"sse"`, `"longpoll"` or `"poll"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::WebSocket => "websocket",
            TransportKind::LongPoll => "longpoll",
            TransportKind::ShortPoll => "poll",
            TransportKind::Sse => "sse",
        }
    }
}

/// How urgently a message should go out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Written to a WebSocket at once; answers a waiting long poll at once.
    #[default]
    Normal,
    /// May be held back briefly so that several go out together (see
    /// [`Coalescing`](crate::Coalescing)). Use it for chatter such as typing indicators or cursor
    /// positions. Order is never changed: a later normal message releases it.
    Low,
}

/// One client's session, as the application sees it. Cheap to clone.
///
/// ```no_run
/// use switchboard::{Hub, Session};
///
/// async fn on_session(session: Session, hub: Hub) {
///     session.join("lobby").ok();
///     while let Some(message) = session.recv().await {
///         hub.to("lobby").except(&session).send(&message).ok();
///     }
///     tracing::info!(session = %session.key(), reason = ?session.close_reason(), "ended");
/// }
/// ```
pub struct Session<U = ()> {
    pub(crate) shared: Arc<Shared<U>>,
}

impl<U> Clone for Session<U> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<U> fmt::Debug for Session<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("key", &self.shared.key)
            .finish_non_exhaustive()
    }
}

impl<U> PartialEq for Session<U> {
    fn eq(&self, other: &Self) -> bool {
        self.shared.key == other.shared.key
    }
}

impl<U> Eq for Session<U> {}

/// A session's public, non-secret number: unique within one server process, fine to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey(pub u64);

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

impl<U> Session<U> {
    pub(crate) fn from_shared(shared: Arc<Shared<U>>) -> Self {
        Self { shared }
    }

    /// This session's loggable number.
    pub fn key(&self) -> SessionKey {
        SessionKey(self.shared.key)
    }

    /// Whether this session was handed over from another node of the cluster (the client is
    /// the same and the session went on: same key, rooms, user data and buffered messages), so
    /// that a handler that greets or announces newcomers can skip it. Always `false` on a single
    /// node.
    pub fn handed_over(&self) -> bool {
        self.shared.handed_over()
    }

    /// What the authentication hook returned for this session.
    pub fn user(&self) -> &U {
        &self.shared.user
    }

    /// The next message from the client, in the client's order, each exactly once. `None` once the
    /// session has ended and every message received before that has been taken.
    pub async fn recv(&self) -> Option<Message> {
        self.shared.recv().await
    }

    /// Sends a message to this client at normal priority. Returns once it is buffered; delivery
    /// continues across transport switches until the client acknowledges it.
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        self.send_with(message.into(), Priority::Normal)
    }

    /// Sends a message with the given priority.
    pub fn send_with(&self, message: Message, priority: Priority) -> Result<(), SendError> {
        self.shared
            .push_or_close(&EncodedMessage::new(&message), priority)
            .map(|_| ())
    }

    /// Answers the client's `request` (a message whose [`Message::request_id`] is set: the
    /// JavaScript client's `conn.request(…)`) with `reply`: the client's promise resolves with
    /// it. The reply is an ordinary message of the session's ordered, exactly-once sequence, so it
    /// reaches the client once, whichever transport carries it and however often the client
    /// switches while it is on its way (`docs/protocol.md` §3.1). Answer each request once: a
    /// second reply to the same id is dropped by the client. A request left unanswered fails on
    /// the client's side after its time-out.
    ///
    /// On a node of a cluster, a session that moved to another node after this handler took the
    /// request (a WebSocket there took it over) still gets the reply: it follows the session by
    /// its key, as [`Hub::session`](crate::Hub::session)`(key).send` would.
    ///
    /// Fails with [`SendError::NotARequest`] (sending nothing) if `request` is not a request, and
    /// as [`send`](Self::send) does otherwise (on a session that moved: only when the backend
    /// cannot take it, [`SendError::Backend`]).
    pub fn reply(&self, request: &Message, reply: impl Into<Message>) -> Result<(), SendError> {
        let id = request.request_id().ok_or(SendError::NotARequest)?;
        let reply = EncodedMessage::new(&reply.into().into_reply(id));
        match self.shared.push_or_close(&reply, Priority::Normal) {
            Err(SendError::Closed(CloseReason::HandedOver)) => {
                let node = self
                    .shared
                    .rooms_index()
                    .and_then(|index| index.node.get().cloned());
                match node {
                    Some(node) => node
                        .publish_direct(self.shared.key, &reply, Priority::Normal, false)
                        .map_err(|err| SendError::Backend(err.to_string())),
                    None => Err(SendError::Closed(CloseReason::HandedOver)),
                }
            }
            pushed => pushed.map(|_| ()),
        }
    }

    /// Sends a named event whose payload is `data` encoded as JSON.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<(), SendError> {
        let message = Message::json(data)
            .map_err(|err| SendError::Encode(err.to_string()))?
            .with_event(event);
        self.send_with(message, Priority::Normal)
    }

    /// Adds this session to a room. Joining a room twice is harmless.
    pub fn join(&self, room: &str) -> Result<(), JoinError> {
        match self.shared.rooms_index() {
            Some(index) => index.join(self, room, false),
            None => Err(JoinError::Closed),
        }
    }

    /// Removes this session from a room; returns whether it was in it.
    pub fn leave(&self, room: &str) -> bool {
        let was_in = self.shared.remove_room(room);
        if was_in && let Some(index) = self.shared.rooms_index() {
            index.remove(room, self.shared.key, Some(PresenceChange::Left));
        }
        was_in
    }

    /// The rooms this session is in.
    pub fn rooms(&self) -> Vec<String> {
        self.shared.rooms()
    }

    /// Whether this session is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        self.shared.in_room(room)
    }

    /// The transport attached right now, if any.
    pub fn transport(&self) -> Option<TransportKind> {
        self.shared.transport()
    }

    /// Ends the session with a reason the client receives (close code 4000). Messages already
    /// buffered are delivered first to the attached transport.
    pub fn close(&self, reason: impl Into<String>) {
        self.shared.close(CloseReason::Closed(reason.into()));
    }

    /// Waits until the session has ended and says why.
    pub async fn closed(&self) -> CloseReason {
        self.shared.closed().await
    }

    /// Why the session ended, or `None` while it lives.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close_reason()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.close_reason().is_some()
    }

    /// Messages and bytes sent but not yet acknowledged by the client.
    pub fn buffered(&self) -> (usize, usize) {
        self.shared.buffered()
    }
}
