//! The hub: rooms, broadcast and presence, the application-facing fan-out.
//!
//! A message sent through the hub is encoded once. A broadcast to a room is appended once to the
//! room's log (see [`crate::room_log`]), from which every member's session takes a
//! reference-counted handle to the same bytes when its transport drains it; a broadcast to all is
//! appended to every session's buffer. The hub never sees transports: whichever transport is
//! attached to each session drains it.
//!
//! ```no_run
//! use switchboard::{Hub, Message, Session};
//!
//! fn announce(hub: &Hub, sender: &Session, text: &str) {
//!     // Everyone in the room except the sender, at normal priority.
//!     hub.to("lobby").except(sender).send(&Message::text(text)).ok();
//!     // Everyone connected, as a named event; typing indicators and the like can go low priority.
//!     hub.all().low_priority().emit("typing", &serde_json::json!({"who": "alice"})).ok();
//! }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use dashmap::DashMap;
use serde::Serialize;

use crate::backend::{Backend, Topic};
use crate::config::{Config, UserCodec};
use crate::error::{JoinError, SendError};
use crate::message::Message;
use crate::node::{Node, Recorded};
use crate::presence::{Announcer, PresenceChange, PresenceWatch};
use crate::protocol::EncodedMessage;
use crate::room_log::Except;
use crate::room_log::RoomLog;
use crate::session::registry::Registry;
use crate::session::{Priority, Session, SessionKey};

/// Room membership: room name → member sessions by key.
///
/// On a node of a cluster, the index also keeps the node's subscriptions: it subscribes to a
/// room's publications when the room gets its first member here (or is held for a session being
/// taken in) and unsubscribes when the last one leaves, both under the room's lock, so that the
/// backend sees them in the order the room filled and emptied.
pub(crate) struct RoomIndex<U> {
    rooms: DashMap<Arc<str>, Room<U>>,
    backend: Option<Arc<dyn Backend>>,
    /// Stamps the entries of every room's log (see [`crate::room_log`]).
    stamps: AtomicU64,
    /// The limits the rooms' logs are swept by.
    config: Arc<Config>,
    /// On a node of a cluster: rooms whose members changed since this node last wrote its
    /// presence entries (see [`RoomIndex::start_presence`]).
    changed: Mutex<HashSet<Arc<str>>>,
    /// Joins and leaves, for [`Hub::watch_presence`].
    pub(crate) announcer: Announcer<U>,
    /// On a node of a cluster: the node, for what a session that moved away still sends (its
    /// replies, see [`Session::reply`]).
    pub(crate) node: OnceLock<Arc<Node>>,
}

/// One room of a [`RoomIndex`].
struct Room<U> {
    members: HashMap<u64, Session<U>>,
    /// The room's broadcasts, until every member has taken them.
    log: Arc<RoomLog<U>>,
    /// Sessions being taken in that will join (see [`RoomIndex::hold`]): the room is kept,
    /// and subscribed, while they are.
    holds: u32,
    /// On a node of a cluster: the id of the last broadcast to this room delivered here.
    mark: AtomicU64,
}

impl<U> Room<U> {
    fn new(name: Arc<str>, config: &Config) -> Self {
        Self {
            members: HashMap::new(),
            log: Arc::new(RoomLog::new(name, config)),
            holds: 0,
            mark: AtomicU64::new(0),
        }
    }
}

impl<U> RoomIndex<U> {
    pub(crate) fn new(backend: Option<Arc<dyn Backend>>, config: Arc<Config>) -> Self {
        Self {
            rooms: DashMap::new(),
            backend: backend.clone(),
            stamps: AtomicU64::new(0),
            config,
            changed: Mutex::new(HashSet::new()),
            announcer: Announcer::new(backend.clone()),
            node: OnceLock::new(),
        }
    }

    /// Notes that `room`'s members changed (on a node of a cluster).
    fn changed(&self, room: &Arc<str>) {
        if self.backend.is_some() {
            self.changed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(room.clone());
        }
    }

    /// The room `name`, created (and subscribed to) if it does not exist.
    fn entry(&self, name: Arc<str>) -> dashmap::mapref::one::RefMut<'_, Arc<str>, Room<U>> {
        self.rooms.entry(name.clone()).or_insert_with(|| {
            if let Some(backend) = &self.backend {
                backend.subscribe(&name);
            }
            Room::new(name, &self.config)
        })
    }

    fn name(&self, room: &str) -> Arc<str> {
        match self.rooms.get(room) {
            Some(entry) => entry.key().clone(),
            None => Arc::from(room),
        }
    }

    /// Adds `session` to `room`; a new member is announced (see [`crate::presence`]) unless
    /// `quietly` (a session taken over from another node, which was in the room there).
    pub(crate) fn join(
        &self,
        session: &Session<U>,
        room: &str,
        quietly: bool,
    ) -> Result<(), JoinError> {
        let name = self.name(room);
        // Insert first, then record it in the session: a concurrent close either sees the room in
        // the session's list and removes it, or we see the close and undo the insert.
        let (log, was_member) = {
            let mut entry = self.entry(name.clone());
            let was_member = entry
                .members
                .insert(session.shared.key, session.clone())
                .is_some();
            (entry.log.clone(), was_member)
        };
        self.changed(&name);
        let announce = || {
            if !quietly {
                let key = session.shared.key;
                let user = &session.shared.user;
                self.announcer
                    .announce(&name, key, user, PresenceChange::Joined);
            }
        };
        match session.shared.add_room(&name, &log, announce) {
            Ok(_) => Ok(()),
            Err(err) => {
                // Undo only an insert of our own: a member already there (joining twice while the
                // session closes) is the close's to remove, and to announce.
                if !was_member && !session.shared.in_room(room) {
                    self.remove(room, session.shared.key, None);
                }
                Err(err)
            }
        }
    }

    /// Removes the session `key` from `room`, announcing `change` if it was a member.
    pub(crate) fn remove(&self, room: &str, key: u64, change: Option<PresenceChange>) {
        if let Some(mut entry) = self.rooms.get_mut(room) {
            let member = entry.members.remove(&key);
            let name = entry.key().clone();
            drop(entry);
            self.changed(&name);
            if let (Some(member), Some(change)) = (member, change) {
                self.announcer
                    .announce(&name, key, &member.shared.user, change);
            }
        }
        self.drop_if_unused(room);
    }

    /// Removes `room` if nobody is in it or holds it. The predicate runs under the room's lock,
    /// and the room is removed under it too: a join that creates the room again subscribes after
    /// this unsubscribes.
    fn drop_if_unused(&self, room: &str) {
        self.rooms.remove_if(room, |_, entry| {
            let unused = entry.members.is_empty() && entry.holds == 0;
            if unused && let Some(backend) = &self.backend {
                backend.unsubscribe(room);
            }
            unused
        });
    }

    /// Keeps `rooms` (creating and subscribing to those that do not exist) for a session being
    /// taken in, until [`unhold`](Self::unhold).
    pub(crate) fn hold(&self, rooms: &[String]) {
        for room in rooms {
            self.entry(self.name(room)).holds += 1;
        }
    }

    /// Ends a [`hold`](Self::hold).
    pub(crate) fn unhold(&self, rooms: &[String]) {
        for room in rooms {
            if let Some(mut entry) = self.rooms.get_mut(room.as_str()) {
                entry.holds = entry.holds.saturating_sub(1);
            }
            self.drop_if_unused(room);
        }
    }

    /// Records broadcast `id` as the last one to `room` delivered here.
    pub(crate) fn mark(&self, room: &str, id: u64) {
        if let Some(entry) = self.rooms.get(room) {
            entry.mark.store(id, Ordering::Relaxed);
        }
    }

    /// The id of the last broadcast to `room` delivered here (0: none).
    pub(crate) fn mark_of(&self, room: &str) -> u64 {
        self.rooms
            .get(room)
            .map_or(0, |entry| entry.mark.load(Ordering::Relaxed))
    }

    /// Calls `f` on every member of `room` (with its key), under the index's read lock: `f` must
    /// not join, leave or close (those need the write lock).
    fn for_each_member(&self, room: &str, mut f: impl FnMut(u64, &Session<U>)) {
        if let Some(entry) = self.rooms.get(room) {
            for (key, session) in entry.members.iter() {
                f(*key, session);
            }
        }
    }

    fn members(&self, room: &str) -> Vec<Session<U>> {
        self.rooms
            .get(room)
            .map(|entry| entry.members.values().cloned().collect())
            .unwrap_or_default()
    }

    fn member_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |entry| entry.members.len())
    }

    /// This node's presence entry of `room`: its members' keys and user data (empty: none).
    fn presence_entry(&self, room: &str, codec: UserCodec<U>) -> Bytes {
        let Some(entry) = self.rooms.get(room) else {
            return Bytes::new();
        };
        if entry.members.is_empty() {
            return Bytes::new();
        }
        let mut out = BytesMut::new();
        out.put_u32(entry.members.len() as u32);
        for (key, session) in entry.members.iter() {
            let user = (codec.encode)(&session.shared.user).unwrap_or_else(|_| b"null".to_vec());
            out.put_u64(*key);
            out.put_u32(user.len() as u32);
            out.put_slice(&user);
        }
        out.freeze()
    }
}

impl<U: Send + Sync + 'static> RoomIndex<U> {
    /// Starts the task that writes this node's presence entries (on a node of a cluster): those
    /// of rooms whose members changed, every [`PRESENCE_BATCH`]; all of them every
    /// [`PRESENCE_REFRESH`] (they expire unless rewritten, and a restarted Redis has lost them).
    /// It stops when the index is dropped.
    pub(crate) fn start_presence(self: &Arc<Self>, codec: UserCodec<U>) {
        let Some(backend) = self.backend.clone() else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRESENCE_BATCH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_full = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let Some(index) = weak.upgrade() else {
                    break;
                };
                let rooms: Vec<Arc<str>> = if last_full.elapsed() >= PRESENCE_REFRESH {
                    last_full = tokio::time::Instant::now();
                    index.changed.lock().map(|mut changed| changed.clear()).ok();
                    index
                        .rooms
                        .iter()
                        .map(|entry| entry.key().clone())
                        .collect()
                } else {
                    index
                        .changed
                        .lock()
                        .map(|mut changed| changed.drain().collect())
                        .unwrap_or_default()
                };
                for room in rooms {
                    backend.set_presence(&room, index.presence_entry(&room, codec));
                }
            }
        });
    }

    /// Makes the presence task rewrite every room's entry at its next tick (after the backend
    /// reconnected to a Redis that may have lost them).
    pub(crate) fn presence_lost(&self) {
        let rooms: Vec<Arc<str>> = self.rooms.iter().map(|entry| entry.key().clone()).collect();
        if let Ok(mut changed) = self.changed.lock() {
            changed.extend(rooms);
        }
    }
}

/// How often a node writes the presence entries of rooms whose members changed.
const PRESENCE_BATCH: Duration = Duration::from_millis(100);

/// How often a node rewrites all its presence entries.
const PRESENCE_REFRESH: Duration = Duration::from_secs(10);

/// A member of a room, as [`Hub::presence`] reports it: on a node of a cluster, possibly a
/// session of another node, which has no [`Session`] handle here.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Member<U> {
    /// The session's key (unique cluster-wide).
    pub key: SessionKey,
    /// What the authentication hook returned for the session.
    pub user: U,
}

fn decode_presence<U>(mut entry: Bytes, codec: UserCodec<U>, into: &mut Vec<Member<U>>) {
    if entry.len() < 4 {
        return;
    }
    let count = entry.get_u32();
    for _ in 0..count {
        if entry.len() < 12 {
            return;
        }
        let key = entry.get_u64();
        let len = entry.get_u32() as usize;
        if entry.len() < len {
            return;
        }
        let user = entry.split_to(len);
        if into.iter().any(|member| member.key.0 == key) {
            continue;
        }
        if let Ok(user) = (codec.decode)(&user) {
            into.push(Member {
                key: SessionKey(key),
                user,
            });
        }
    }
}

/// Rooms, broadcast and presence. Cheap to clone; get it from
/// [`Switchboard::hub`](crate::Switchboard::hub).
pub struct Hub<U = ()> {
    pub(crate) registry: Arc<Registry<U>>,
    pub(crate) rooms: Arc<RoomIndex<U>>,
    pub(crate) max_message: usize,
    /// On a node of a cluster: broadcasts are published through it.
    pub(crate) node: Option<Arc<Node>>,
    /// On a node of a cluster: how other nodes' members' user data is read.
    pub(crate) codec: Option<UserCodec<U>>,
}

impl<U> Clone for Hub<U> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            rooms: self.rooms.clone(),
            max_message: self.max_message,
            node: self.node.clone(),
            codec: self.codec,
        }
    }
}

impl<U> fmt::Debug for Hub<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("sessions", &self.registry.len())
            .field("rooms", &self.rooms.rooms.len())
            .finish()
    }
}

impl<U> Hub<U> {
    /// `message` encoded once for every recipient; refused if its payload exceeds the message
    /// size limit.
    fn encode(&self, message: &Message) -> Result<EncodedMessage, SendError> {
        let encoded = EncodedMessage::new(message);
        if encoded.payload_len() > self.max_message {
            return Err(SendError::TooLarge {
                len: encoded.payload_len(),
                max: self.max_message,
            });
        }
        Ok(encoded)
    }

    /// Targets the members of `room`.
    pub fn to<'a>(&'a self, room: &'a str) -> Broadcast<'a, U> {
        Broadcast {
            hub: self,
            target: Target::Room(room),
            except: Except::None,
            priority: Priority::Normal,
        }
    }

    /// Targets every live session.
    pub fn all(&self) -> Broadcast<'_, U> {
        Broadcast {
            hub: self,
            target: Target::All,
            except: Except::None,
            priority: Priority::Normal,
        }
    }

    /// The sessions in `room` right now, on this node. (On a node of a cluster, see
    /// [`presence`](Self::presence) for every node's.)
    pub fn members(&self, room: &str) -> Vec<Session<U>> {
        self.rooms.members(room)
    }

    /// Everyone in `room`, cluster-wide: this node's members as they are now, and those of every
    /// other live node as that node last wrote them (at most about 100 ms ago). Members of a
    /// node that died disappear once its liveness record expires (3 s with the Redis backend).
    /// On a single node, the same as [`members`](Self::members).
    ///
    /// Fails only on a node of a cluster whose backend cannot be read
    /// ([`SendError::Backend`]).
    pub async fn presence(&self, room: &str) -> Result<Vec<Member<U>>, SendError>
    where
        U: Clone,
    {
        let mut members: Vec<Member<U>> = self
            .rooms
            .members(room)
            .into_iter()
            .map(|session| Member {
                key: session.key(),
                user: session.shared.user.clone(),
            })
            .collect();
        if let (Some(node), Some(codec)) = (&self.node, self.codec) {
            let entries = node
                .backend
                .presence(room)
                .await
                .map_err(|err| SendError::Backend(err.to_string()))?;
            for (id, entry) in entries {
                if id != node.id() {
                    decode_presence(entry, codec, &mut members);
                }
            }
        }
        Ok(members)
    }

    /// Watches every room's joins and leaves from now on (on a node of a cluster, every node's,
    /// in one order that every node's watchers share): [`PresenceWatch::recv`] returns them as
    /// they happen. A session that ends is announced as leaving each of its rooms
    /// ([`PresenceChange::Ended`]); one whose client lost its network ends, and is announced,
    /// once the resume window has passed with no transport attached. A session moving to
    /// another node of the cluster announces nothing. Watchers cost nothing when there are none;
    /// each event is copied to each watcher, and one that falls 4,096 events behind is told what
    /// it missed. On a node of a cluster every join and leave is published to every node (one
    /// small publication each, watched or not).
    ///
    /// [`PresenceChange::Ended`]: crate::PresenceChange::Ended
    pub fn watch_presence(&self) -> PresenceWatch<U>
    where
        U: Clone,
    {
        self.rooms.announcer.watch()
    }

    /// The number of sessions in `room` on this node.
    pub fn member_count(&self, room: &str) -> usize {
        self.rooms.member_count(room)
    }

    /// The names of all rooms that have members.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms
            .rooms
            .iter()
            .filter(|entry| !entry.members.is_empty())
            .map(|entry| entry.key().to_string())
            .collect()
    }

    /// On a node of a cluster: resolves once every broadcast sent and every room joined or left
    /// on this node before the call has reached the backend (so that, for example, a broadcast
    /// sent by another node after this returns reaches the rooms joined here). On a single node
    /// it resolves at once.
    pub async fn flush(&self) -> Result<(), SendError> {
        match &self.node {
            Some(node) => node
                .backend
                .flush()
                .await
                .map_err(|err| SendError::Backend(err.to_string())),
            None => Ok(()),
        }
    }

    /// Targets one session by its key, wherever it is: on a node of a cluster, possibly on
    /// another node (for example a user's session found through [`presence`](Self::presence)).
    pub fn session(&self, key: SessionKey) -> Direct<'_, U> {
        Direct {
            hub: self,
            key: key.0,
            priority: Priority::Normal,
        }
    }

    /// Every session the server holds (ended ones included until they are forgotten).
    pub fn sessions(&self) -> Vec<Session<U>> {
        self.registry.all()
    }

    /// The number of sessions the server holds.
    pub fn session_count(&self) -> usize {
        self.registry.len()
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Target<'a> {
    Room(&'a str),
    All,
}

/// A broadcast being set up: pick the target, optionally exclude one session and lower the
/// priority, then [`send`](Broadcast::send) or [`emit`](Broadcast::emit).
pub struct Broadcast<'a, U> {
    hub: &'a Hub<U>,
    target: Target<'a>,
    except: Except,
    priority: Priority,
}

impl<U> fmt::Debug for Broadcast<'_, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcast")
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl<U> Broadcast<'_, U> {
    /// Leaves `session` out (typically the sender). Called again, it leaves out that session
    /// too: `hub.to("lobby").except(&alice).except(&bob)`.
    pub fn except(mut self, session: &Session<U>) -> Self {
        self.except = self.except.with(session.shared.key);
        self
    }

    /// Leaves out every session of `keys` too (for example the members of a team, from their
    /// [`Session::key`]s), wherever they are in a cluster. At most 65,535 sessions can be left out
    /// of one broadcast on a node of a cluster (the keys beyond are not passed on); a broadcast
    /// that leaves out most of a room is better sent to a room of the others.
    pub fn except_keys(mut self, keys: impl IntoIterator<Item = SessionKey>) -> Self {
        self.except = self.except.with_all(keys.into_iter().map(|key| key.0));
        self
    }

    /// Sends at low priority: may be held back briefly to go out with others.
    pub fn low_priority(mut self) -> Self {
        self.priority = Priority::Low;
        self
    }

    /// Sends with the given priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sends `message` to every target session; returns how many sessions it was for. A broadcast
    /// to a room is written once into the room's log, and each member takes it when its
    /// transport next looks, or at the log's next sweep (every 256 messages or 1 MiB, or half
    /// the session buffer limits if lower); a member whose buffer it overflows is closed with
    /// reason `overflow` then, so the count includes it. A broadcast to all is buffered in every
    /// session at once, and does not count one that overflows. Ended sessions are skipped.
    ///
    /// On a node of a cluster the message is published once, and every node with target
    /// sessions (this one too) buffers it when the backend hands it back, so that every member
    /// of a room sees that room's messages in one order, cluster-wide. The number returned is
    /// then the number of target sessions on this node when it was sent.
    ///
    /// Fails, sending nothing, if the payload exceeds the message size limit, or (on a node of a
    /// cluster) if the backend cannot take the publication ([`SendError::Backend`]).
    pub fn send(self, message: &Message) -> Result<usize, SendError> {
        let encoded = self.hub.encode(message)?;
        let Some(node) = &self.hub.node else {
            return Ok(deliver(
                &self.hub.registry,
                &self.hub.rooms,
                self.target,
                &encoded,
                &self.except,
                self.priority,
            ));
        };
        let topic = match self.target {
            Target::Room(room) => Topic::Room(room),
            Target::All => Topic::All,
        };
        node.publish(topic, &encoded, self.except.clone(), self.priority)
            .map_err(|err| SendError::Backend(err.to_string()))?;
        let except = |key: &u64| !self.except.contains(*key);
        Ok(match self.target {
            Target::Room(room) => self.hub.rooms.rooms.get(room).map_or(0, |entry| {
                entry.members.keys().filter(|key| except(key)).count()
            }),
            Target::All => {
                let here = |key: &&u64| self.hub.registry.by_key(**key).is_some();
                let excepted = self.except.keys().iter().filter(here).count();
                self.hub.registry.len().saturating_sub(excepted)
            }
        })
    }

    /// Sends a named event whose payload is `data` as JSON; returns how many sessions buffered it.
    pub fn emit<T: Serialize + ?Sized>(self, event: &str, data: &T) -> Result<usize, SendError> {
        let message = Message::json(data)
            .map_err(|err| SendError::Encode(err.to_string()))?
            .with_event(event);
        self.send(&message)
    }
}

/// A direct send being set up (see [`Hub::session`]): optionally lower the priority, then
/// [`send`](Direct::send), [`emit`](Direct::emit) or [`close`](Direct::close).
pub struct Direct<'a, U> {
    hub: &'a Hub<U>,
    key: u64,
    priority: Priority,
}

impl<U> fmt::Debug for Direct<'_, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direct")
            .field("key", &self.key)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl<U> Direct<'_, U> {
    /// Sends at low priority (see [`Priority::Low`]).
    pub fn low_priority(mut self) -> Self {
        self.priority = Priority::Low;
        self
    }

    /// Sends with the given priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sends `message` to the session, as [`Session::send_with`] would on its node.
    ///
    /// On a single node it fails with [`SendError::NoSuchSession`] when no session has this key
    /// (and as `send_with` does otherwise). On a node of a cluster the message is published, in
    /// order with this node's broadcasts, and buffered by whichever node holds the session when
    /// it arrives (nothing, if none does); it fails only if the payload is too large or the
    /// backend cannot take it ([`SendError::Backend`]).
    pub fn send(self, message: &Message) -> Result<(), SendError> {
        let encoded = self.hub.encode(message)?;
        match &self.hub.node {
            Some(node) => node
                .publish_direct(self.key, &encoded, self.priority, false)
                .map_err(|err| SendError::Backend(err.to_string())),
            None => {
                let session = self
                    .hub
                    .registry
                    .by_key(self.key)
                    .ok_or(SendError::NoSuchSession)?;
                session
                    .shared
                    .push_or_close(&encoded, self.priority)
                    .map(|_| ())
            }
        }
    }

    /// Sends a named event whose payload is `data` as JSON (see [`send`](Self::send)).
    pub fn emit<T: Serialize + ?Sized>(self, event: &str, data: &T) -> Result<(), SendError> {
        let message = Message::json(data)
            .map_err(|err| SendError::Encode(err.to_string()))?
            .with_event(event);
        self.send(&message)
    }

    /// Ends the session with a reason its client receives (close code 4000), as
    /// [`Session::close`] would on its node; messages sent to it before (from this node) are
    /// delivered first. Fails as [`send`](Self::send) does.
    pub fn close(self, reason: impl Into<String>) -> Result<(), SendError> {
        let reason = Message::text(reason.into());
        match &self.hub.node {
            Some(node) => node
                .publish_direct(
                    self.key,
                    &EncodedMessage::new(&reason),
                    Priority::Normal,
                    true,
                )
                .map_err(|err| SendError::Backend(err.to_string())),
            None => {
                let session = self
                    .hub
                    .registry
                    .by_key(self.key)
                    .ok_or(SendError::NoSuchSession)?;
                session.close(reason.as_text().unwrap_or_default());
                Ok(())
            }
        }
    }
}

/// Delivers a direct send (or close) that came through the backend to `session`, held here.
pub(crate) fn deliver_direct<U>(session: &Session<U>, direct: &Recorded) {
    if direct.close {
        // The reason travels as the text of a JSON string message.
        let reason = serde_json::from_str::<String>(
            direct
                .message
                .tail_text()
                .strip_prefix("\"d\":")
                .and_then(|rest| rest.strip_suffix('}'))
                .unwrap_or("\"closed\""),
        )
        .unwrap_or_else(|_| "closed".into());
        session.close(reason);
    } else {
        session
            .shared
            .push_or_close(&direct.message, direct.priority)
            .ok();
    }
}

/// Sends `message` to every target session held here (all but `except`); returns how many it was
/// for. A broadcast to a room is appended to the room's log once, for its members to take (see
/// [`crate::room_log`]); one to all is buffered in every session. Sessions whose buffer overflows
/// are closed with reason `overflow` (for a room's members: when they take it, at the latest at
/// the log's next sweep); ended sessions are skipped.
pub(crate) fn deliver<U>(
    registry: &Registry<U>,
    rooms: &RoomIndex<U>,
    target: Target<'_>,
    message: &EncodedMessage,
    except: &Except,
    priority: Priority,
) -> usize {
    match target {
        Target::Room(room) => rooms.broadcast(room, message, except, priority),
        Target::All => {
            let mut delivered = 0;
            let mut overflowed = Vec::new();
            // Pushing happens under the registry's read lock, without copying the session list;
            // closing an overflowed session edits the room index, so it waits until the lock is
            // released.
            registry.for_each(|session| {
                if except.contains(session.shared.key) {
                    return;
                }
                match session.shared.push(message, priority) {
                    Ok(_) => delivered += 1,
                    Err(SendError::Overflow) => overflowed.push(session.clone()),
                    Err(_) => {}
                }
            });
            for session in overflowed {
                session.shared.close_overflowed();
            }
            delivered
        }
    }
}

impl<U> RoomIndex<U> {
    /// Appends a broadcast to `room`'s log, wakes the members waiting for it and, when the log is
    /// due, sweeps it; returns how many members it is for.
    fn broadcast(
        &self,
        room: &str,
        message: &EncodedMessage,
        except: &Except,
        priority: Priority,
    ) -> usize {
        let Some(entry) = self.rooms.get(room) else {
            return 0;
        };
        let mut appended = entry
            .log
            .append(&self.stamps, message, except.clone(), priority);
        let excepted = except
            .keys()
            .iter()
            .filter(|key| entry.members.contains_key(key))
            .count();
        let count = entry.members.len() - excepted;
        let log = entry.log.clone();
        drop(entry);
        appended.wake(&log);
        if let Some(position) = appended.sweep {
            self.sweep(room, &log, position);
        }
        count
    }

    /// Has every member of `room` take what its log holds for it, then drops the log's entries
    /// before `position` (see [`crate::room_log`]). Members join with the log's head, so one that
    /// joins meanwhile needs nothing before it either.
    fn sweep(&self, room: &str, log: &RoomLog<U>, position: u64) {
        let mut overflowed = Vec::new();
        self.for_each_member(room, |_, member| {
            if member.shared.catch_up().is_err() {
                overflowed.push(member.clone());
            }
        });
        log.trim(position);
        // Closing edits the room index, so it waits until its lock is released.
        for session in overflowed {
            session.shared.close_overflowed();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::session::{Drain, SessionId, Shared, TransportKind};

    fn hub(config: &Arc<Config>) -> Hub<()> {
        Hub {
            registry: Arc::new(Registry::new(None)),
            rooms: Arc::new(RoomIndex::new(None, config.clone())),
            max_message: 1 << 16,
            node: None,
            codec: None,
        }
    }

    fn sessions(hub: &Hub<()>, config: &Arc<Config>, count: u64) -> Vec<Session<()>> {
        (0..count)
            .map(|key| {
                Session::from_shared(Arc::new(Shared::new(
                    key,
                    SessionId::random().unwrap(),
                    (),
                    config.clone(),
                    Arc::downgrade(&hub.rooms),
                )))
            })
            .collect()
    }

    /// Everything `session` has to send, as text, drained by a transport that attaches now.
    fn texts(session: &Session<()>) -> Vec<String> {
        let generation = session.shared.attach(TransportKind::LongPoll, 0).unwrap();
        let mut texts = Vec::new();
        let mut after = 0;
        loop {
            let mut last_seq = after;
            let drained = session
                .shared
                .drain(generation, after, usize::MAX, |seq, message| {
                    assert_eq!(seq, last_seq + 1, "sequence numbers without a gap");
                    last_seq = seq;
                    texts.push(message.tail_text().to_string());
                });
            match drained {
                Drain::Ready {
                    last: Some(last), ..
                } => after = last,
                _ => return texts,
            }
        }
    }

    /// The text of the frame tail of a text message `text`.
    fn tail(text: &str) -> String {
        crate::protocol::EncodedMessage::new(&Message::text(text))
            .tail_text()
            .to_string()
    }

    fn log_len(hub: &Hub<()>, room: &str) -> usize {
        let entry = hub.rooms.rooms.get(room).unwrap();
        let log = entry.log.lock();
        log.from(log.base()).count()
    }

    #[test]
    fn one_senders_broadcasts_to_several_rooms_and_direct_messages_arrive_in_order() {
        let config = Arc::new(Config::default());
        let hub = hub(&config);
        let sessions = sessions(&hub, &config, 3);
        let (both, second_only, first_only) = (&sessions[0], &sessions[1], &sessions[2]);
        both.join("eins").unwrap();
        both.join("zwei").unwrap();
        second_only.join("zwei").unwrap();
        first_only.join("eins").unwrap();
        let mut expected = [Vec::new(), Vec::new(), Vec::new()];
        // Enough for several sweeps of both logs, in an irregular pattern.
        for i in 0..2_000u32 {
            let text = format!("{i} 방송 📣");
            match i % 7 {
                0 | 3 | 5 => {
                    hub.to("eins").send(&Message::text(&text)).unwrap();
                    expected[0].push(tail(&text));
                    expected[2].push(tail(&text));
                }
                1 | 4 => {
                    hub.to("zwei").send(&Message::text(&text)).unwrap();
                    expected[0].push(tail(&text));
                    expected[1].push(tail(&text));
                }
                2 => {
                    both.send(Message::text(&text)).unwrap();
                    expected[0].push(tail(&text));
                }
                _ => {
                    hub.to("zwei")
                        .except(both)
                        .send(&Message::text(&text))
                        .unwrap();
                    expected[1].push(tail(&text));
                }
            }
        }
        for (session, expected) in sessions.iter().zip(&expected) {
            assert_eq!(&texts(session), expected);
        }
    }

    #[test]
    fn a_waiting_transport_is_woken_by_a_room_it_joined_while_it_waited() {
        use futures_util::FutureExt as _;
        let config = Arc::new(Config::default());
        let hub = hub(&config);
        let session = &sessions(&hub, &config, 1)[0];
        session.join("early").unwrap();
        let generation = session.shared.attach(TransportKind::WebSocket, 0).unwrap();
        for (sent, room) in ["late", "later"].into_iter().enumerate() {
            let notified = session.shared.outbound.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let drained = session
                .shared
                .drain(generation, sent as u64, usize::MAX, |_, _| {});
            assert!(matches!(drained, Drain::Idle { .. }));
            session.join(room).unwrap();
            hub.to(room).send(&Message::text(room)).unwrap();
            assert!(notified.now_or_never().is_some(), "woken by {room}");
        }
    }

    #[test]
    fn a_rooms_log_keeps_only_what_a_member_has_not_taken() {
        let config = Arc::new(Config::default());
        let hub = hub(&config);
        let sessions = sessions(&hub, &config, 2);
        for session in &sessions {
            session.join("room").unwrap();
        }
        for i in 0..1_000 {
            hub.to("room").send(&Message::text(format!("{i}"))).unwrap();
            assert!(log_len(&hub, "room") < crate::room_log::SWEEP_ENTRIES);
        }
        // Whatever the log dropped was taken by both members first: nothing is lost.
        for session in &sessions {
            let texts = texts(session);
            assert_eq!(texts.len(), 1_000);
            assert_eq!(texts[999], tail("999"));
        }
        // A member that leaves takes what was sent before, and nothing after.
        hub.to("room").send(&Message::text("before")).unwrap();
        assert!(sessions[0].leave("room"));
        hub.to("room").send(&Message::text("after")).unwrap();
        assert_eq!(sessions[0].buffered().0, 1_001);
        assert_eq!(sessions[1].buffered().0, 1_002);
        // A member's close sends what was broadcast before it.
        hub.to("room").send(&Message::text("last")).unwrap();
        sessions[1].close("bye");
        let texts = texts(&sessions[1]);
        assert_eq!(texts.len(), 1_003);
        assert_eq!(texts[1_002], tail("last"));
    }

    #[test]
    fn a_broadcast_leaves_out_several_sessions() {
        let config = Arc::new(Config::default());
        let hub = hub(&config);
        let sessions = sessions(&hub, &config, 5);
        for session in &sessions {
            session.join("room").unwrap();
            hub.registry.adopt(session.clone());
        }
        let message = Message::text("모두에게, 둘만 빼고 🙈");
        // Chained, and by keys; a key left out twice, or of no member, changes nothing.
        let sent = hub
            .to("room")
            .except(&sessions[0])
            .except_keys([sessions[3].key(), sessions[0].key(), SessionKey(999_999)])
            .send(&message);
        assert_eq!(sent, Ok(3));
        let sent = hub
            .all()
            .except(&sessions[1])
            .except(&sessions[4])
            .send(&message);
        assert_eq!(sent, Ok(3));
        let got: Vec<usize> = sessions
            .iter()
            .map(|session| session.buffered().0)
            .collect();
        assert_eq!(got, [1, 1, 2, 1, 1]);
    }

    #[test]
    fn except_keeps_its_keys_sorted_and_single() {
        let except = Except::None.with(7).with_all([3, 7, 5]);
        assert_eq!(except.keys(), [3, 5, 7]);
        assert!(except.contains(5) && !except.contains(4));
        assert_eq!(Except::of(vec![4, 4]), Except::One(4));
        assert_eq!(Except::of(Vec::new()), Except::None);
    }

    #[test]
    fn a_broadcast_is_encoded_once_and_shared_by_every_buffer() {
        let config = Arc::new(Config::default());
        let hub = hub(&config);
        let sessions = sessions(&hub, &config, 3);
        for session in &sessions {
            session.join("room").unwrap();
        }
        let message = Message::text("x".repeat(1000));
        assert_eq!(hub.to("room").except(&sessions[2]).send(&message), Ok(2));
        let mut tails = Vec::new();
        for session in &sessions[..2] {
            let generation = session.shared.attach(TransportKind::LongPoll, 0).unwrap();
            let drained = session
                .shared
                .drain(generation, 0, usize::MAX, |_, message| {
                    tails.push(message.tail_ptr())
                });
            assert!(matches!(drained, Drain::Ready { last: Some(1), .. }));
        }
        assert_eq!(
            tails[0], tails[1],
            "both buffers must point at the same bytes"
        );
        assert_eq!(sessions[2].buffered(), (0, 0));
    }
}
