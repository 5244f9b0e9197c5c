//! The seam between one node and the rest of a cluster.
//!
//! A [`Switchboard`](crate::Switchboard) built without a backend is a single node: every
//! session lives in this process, and a broadcast is appended to its members' buffers at once.
//! That is the in-process default and needs nothing external.
//!
//! A backend connects several nodes through a shared engine (the `switchboard-redis` crate
//! implements one on Redis). It provides the few things the core cannot do alone:
//!
//! - **Ownership records**: which node owns which session ([`Backend::claim`],
//!   [`Backend::owner`], [`Backend::release`], [`Backend::refresh`]). A session lives on exactly
//!   one node, its *owner*, as on a single node.
//! - **Node messages**: a byte string to one node ([`Backend::send_to_node`]), whose result says
//!   whether any node was listening. The core uses them to forward a request that landed on the
//!   wrong node to the owner, and to carry the answer back.
//! - **Publications**: a byte string to every node subscribed to a room, or to every node
//!   ([`Backend::publish`]). Publications of one node are delivered in the order it published
//!   them, and every subscriber of a room receives that room's publications in one order: the
//!   core delivers broadcasts only when they come back from the backend, on the sending node too,
//!   so that every member of a room sees its messages in the same order cluster-wide.
//!
//! The core decides what the bytes mean (forwarded requests, answers, broadcasts); a backend
//! only moves them. What arrives for this node is handed to the callback given to
//! [`Backend::start`], as a [`Delivery`].
//!
//! `docs/scale-out.md` describes the whole design and its failure modes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

/// A boxed future, as returned by [`Backend`]'s asynchronous methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a publication goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic<'a> {
    /// Every node subscribed to this room (see [`Backend::subscribe`]).
    Room(&'a str),
    /// Every node.
    All,
    /// Every node: announcements of joins and leaves (presence events), kept apart from
    /// broadcasts so that a node of a version without them never sees them.
    Presence,
}

/// What a backend hands to the core (through the callback given to [`Backend::start`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Delivery {
    /// A message sent to this node with [`Backend::send_to_node`].
    Node(Bytes),
    /// A publication to a room this node is subscribed to.
    Room(Arc<str>, Bytes),
    /// A publication to every node.
    All(Bytes),
    /// A publication of [`Topic::Presence`] (every node receives them).
    Presence(Bytes),
    /// The backend lost its connection to the shared engine: answers to requests sent to other
    /// nodes may be lost, so the core stops waiting for them.
    Disconnected,
    /// The backend lost its connection to the shared engine and has it back: records it holds
    /// for this node may have been lost, so the core rewrites them (with [`Backend::refresh`]).
    Reconnected,
}

/// What a backend could not do: the shared engine is unreachable, or refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendError {
    message: String,
}

impl BackendError {
    /// An error with a message for the log.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cluster backend: {}", self.message)
    }
}

impl std::error::Error for BackendError {}

/// The session a record is about: the session's secret id, which a backend must not store or
/// show as is (the Redis backend keeps only a hash of it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionRef(pub(crate) [u8; 16]);

impl SessionRef {
    /// The id's 16 bytes. They are a bearer credential: hash them before they leave the process.
    pub fn secret_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for SessionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionRef(<redacted>)")
    }
}

/// Who owns a session: the node, and the session's key there (which requests forwarded to
/// that node name it by, so that the secret id never leaves the node it arrived at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The owner's node id.
    pub node: String,
    /// The session's key.
    pub key: u64,
}

/// A cluster backend: ownership records, node messages and publications over a shared engine.
///
/// Implementations must not block: methods that talk to the engine return futures, and the
/// synchronous ones ([`publish`](Backend::publish), [`subscribe`](Backend::subscribe),
/// [`unsubscribe`](Backend::unsubscribe), [`release`](Backend::release)) only queue work, in
/// order, to be done by the backend's own task.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// This node's id: unique among the nodes that share the engine, shown in tracing spans.
    fn node_id(&self) -> &str;

    /// A number no other live node of the cluster has, below 2^20: the high bits of this node's
    /// session keys, so that keys are unique cluster-wide.
    fn node_number(&self) -> u32;

    /// Starts delivering what arrives for this node (node messages, publications of its rooms
    /// and of everyone) to `deliver`. Called once, when the server is built. `deliver` must be
    /// called from one task at a time, in the order things arrived.
    fn start(&self, deliver: Arc<dyn Fn(Delivery) + Send + Sync>);

    /// Queues a publication. Publications (and subscription changes) of this node reach the
    /// engine in the order they were queued. Fails at once when the queue is full or the
    /// engine has been unreachable for a while: then nobody receives it.
    fn publish(&self, topic: Topic<'_>, payload: Bytes) -> Result<(), BackendError>;

    /// Queues a subscription to `room`'s publications (the first local member joined).
    fn subscribe(&self, room: &str);

    /// Queues the end of a subscription to `room` (its last local member left).
    fn unsubscribe(&self, room: &str);

    /// Sends `payload` to node `node`. `Ok(false)`: no node of that id was listening.
    fn send_to_node<'a>(
        &'a self,
        node: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Records this node as the owner of `session`, whose key is `key` (a new session).
    fn claim(&self, session: SessionRef, key: u64) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Who owns `session`, if anyone.
    fn owner(&self, session: SessionRef) -> BoxFuture<'_, Result<Option<Owner>, BackendError>>;

    /// Queues the removal of the ownership record of `session` (key `key`) if it still names
    /// this node (the session has ended here).
    fn release(&self, session: SessionRef, key: u64);

    /// Rewrites the ownership records of `sessions` (with their keys), all owned by this node,
    /// so that they do not expire; records that name another node are left alone. Called
    /// periodically, and at once after [`Delivery::Reconnected`].
    fn refresh(&self, sessions: Vec<(SessionRef, u64)>) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Moves `session` (key `key`) from this node to node `to`: stores `state` for `to` to
    /// take, and rewrites the ownership record, both at once and only if the record still names
    /// this node (or is gone). `Ok(false)`: it names another node, nothing was done.
    fn hand_over<'a>(
        &'a self,
        session: SessionRef,
        key: u64,
        to: &'a str,
        state: Bytes,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Takes (reads and deletes) the state [`hand_over`](Backend::hand_over) stored for
    /// `session`.
    fn take_state(&self, session: SessionRef)
    -> BoxFuture<'_, Result<Option<Bytes>, BackendError>>;

    /// The ids of the nodes alive now (this one included), for a node that shuts down to hand its
    /// sessions to.
    fn live_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>>;

    /// Whether node `node` is alive (it refreshed its liveness record recently).
    fn node_alive<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Queues this node's presence entry for `room` (its members there, encoded by the core);
    /// an empty `entry` removes it.
    fn set_presence(&self, room: &str, entry: Bytes);

    /// The presence entries of `room` of every live node (with their node ids): entries of
    /// nodes that are no longer alive are left out (and may be removed).
    fn presence<'a>(
        &'a self,
        room: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Bytes)>, BackendError>>;

    /// Resolves once everything queued before it (publications, subscriptions, releases) has
    /// been done by the engine.
    fn flush(&self) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Stops: no more deliveries, this node's liveness record is removed.
    fn stop(&self) -> BoxFuture<'_, ()>;
}
