//! Presence events: joins and leaves of rooms, as they happen, for [`Hub::watch_presence`].
//!
//! The room index announces a change where it happens: a join while the session's state is
//! locked (so that no end of the same session can be announced before it), a leave once the
//! session is out of the room's member list. Only changes the application can see are announced:
//! a session taken over by another node of a cluster (a handover) leaves and joins nothing.
//!
//! On a single node the announcement goes straight to this node's watchers, and costs nothing
//! but a counter load when nobody watches. On a node of a cluster it is published once to every
//! node ([`Topic::Presence`]) and delivered to watchers when it comes back, on the announcing
//! node too, so that every node's watchers see one order; if the backend cannot take it, this
//! node's watchers still get it. A node that dies announces nothing for its sessions: their
//! clients come back on other nodes as new sessions (a reset), which join again.
//!
//! [`Hub::watch_presence`]: crate::Hub::watch_presence

use std::sync::{Arc, OnceLock};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::broadcast;

use crate::backend::{Backend, Topic};
use crate::config::UserCodec;
use crate::hub::Member;
use crate::session::SessionKey;

/// How many events a watcher may fall behind before it misses some (see [`PresenceWatch::recv`]).
pub(crate) const WATCH_CAPACITY: usize = 4096;

/// A change of a room's members, as [`PresenceWatch::recv`] reports it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PresenceEvent<U> {
    /// The room.
    pub room: Arc<str>,
    /// The session that joined or left (on a node of a cluster, possibly another node's).
    pub member: Member<U>,
    /// What happened.
    pub change: PresenceChange,
}

/// What a [`PresenceEvent`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PresenceChange {
    /// The session joined the room ([`Session::join`](crate::Session::join); joining a room it is
    /// in already announces nothing).
    Joined,
    /// The session left the room with [`Session::leave`](crate::Session::leave).
    Left,
    /// The session ended, and so left all its rooms: closed by either side, refused for a
    /// protocol error or an overflow, or expired once no transport had been attached for the
    /// resume window. A client that loses its network is announced here that late: the resume
    /// window ([`Builder::resume_window`](crate::Builder::resume_window), 30 s by default) after
    /// its last transport went away.
    Ended,
}

impl PresenceChange {
    fn code(self) -> u8 {
        match self {
            PresenceChange::Joined => 1,
            PresenceChange::Left => 2,
            PresenceChange::Ended => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(PresenceChange::Joined),
            2 => Some(PresenceChange::Left),
            3 => Some(PresenceChange::Ended),
            _ => None,
        }
    }
}

/// A watcher's receiving end: every room's joins and leaves from the moment it was made. Each
/// session's events come in the order they happened; on a node of a cluster every node's
/// watchers see the same order, in which the events of sessions on different nodes interleave
/// as their announcements reached the backend. From
/// [`Hub::watch_presence`](crate::Hub::watch_presence).
pub struct PresenceWatch<U> {
    receiver: broadcast::Receiver<PresenceEvent<U>>,
}

/// A watcher fell so far behind (more than 4,096 events) that it missed some: read the rooms it
/// cares about again with [`Hub::presence`](crate::Hub::presence) and go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Missed(pub u64);

impl std::fmt::Display for Missed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} presence events missed", self.0)
    }
}

impl std::error::Error for Missed {}

impl<U: Clone> PresenceWatch<U> {
    /// The next event. Fails with [`Missed`] (once, then goes on with the oldest event it still
    /// has) if the watcher fell more than 4,096 events behind. Never ends while the server lives.
    pub async fn recv(&mut self) -> Result<PresenceEvent<U>, Missed> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Ok(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => return Err(Missed(missed)),
                // The index (and its sender) lives as long as the server; wait for ever.
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

impl<U> std::fmt::Debug for PresenceWatch<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceWatch").finish_non_exhaustive()
    }
}

/// This node's watchers: the channel, made by the first [`Hub::watch_presence`], and how to copy
/// a user for an event (only `watch_presence` knows that `U: Clone`).
///
/// [`Hub::watch_presence`]: crate::Hub::watch_presence
struct Watchers<U> {
    sender: broadcast::Sender<PresenceEvent<U>>,
    copy: fn(&U) -> U,
}

/// Announces the joins and leaves of one node's rooms (see the module's documentation).
pub(crate) struct Announcer<U> {
    watchers: OnceLock<Watchers<U>>,
    /// On a node of a cluster: the backend, and (once the node has started) the codec of users.
    backend: Option<Arc<dyn Backend>>,
    codec: OnceLock<UserCodec<U>>,
}

impl<U> Announcer<U> {
    pub(crate) fn new(backend: Option<Arc<dyn Backend>>) -> Self {
        Self {
            watchers: OnceLock::new(),
            backend,
            codec: OnceLock::new(),
        }
    }

    /// On a node of a cluster: announcements go through the backend from now on.
    pub(crate) fn start(&self, codec: UserCodec<U>) {
        self.codec.set(codec).ok();
    }

    /// A new watcher.
    pub(crate) fn watch(&self) -> PresenceWatch<U>
    where
        U: Clone,
    {
        let watchers = self.watchers.get_or_init(|| Watchers {
            sender: broadcast::Sender::new(WATCH_CAPACITY),
            copy: U::clone,
        });
        PresenceWatch {
            receiver: watchers.sender.subscribe(),
        }
    }

    /// Announces that the session `key` (whose user is `user`) joined or left `room`.
    pub(crate) fn announce(&self, room: &Arc<str>, key: u64, user: &U, change: PresenceChange) {
        if let (Some(backend), Some(codec)) = (&self.backend, self.codec.get()) {
            match (codec.encode)(user) {
                Ok(user) => {
                    let frame = encode(room, key, change, &user);
                    match backend.publish(Topic::Presence, frame) {
                        Ok(()) => return,
                        Err(err) => {
                            crate::logs::warn_limited!(error = %err, "presence event not published to the cluster");
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(session = key, error = %err, "presence event of a user that does not serialise");
                }
            }
        }
        if let Some(watchers) = self.watchers.get()
            && watchers.sender.receiver_count() > 0
        {
            let member = Member {
                key: SessionKey(key),
                user: (watchers.copy)(user),
            };
            self.deliver(room.clone(), member, change);
        }
    }

    /// An announcement published by a node of the cluster (this one included).
    pub(crate) fn received(&self, frame: Bytes) {
        let Some(watchers) = self.watchers.get() else {
            return;
        };
        if watchers.sender.receiver_count() == 0 {
            return;
        }
        let Some(codec) = self.codec.get() else {
            return;
        };
        let Some((room, key, change, user)) = decode(frame) else {
            tracing::warn!("presence event that does not parse ignored");
            return;
        };
        match (codec.decode)(&user) {
            Ok(user) => {
                let member = Member {
                    key: SessionKey(key),
                    user,
                };
                self.deliver(Arc::from(room), member, change);
            }
            Err(err) => {
                tracing::warn!(session = key, error = %err, "presence event's user ignored")
            }
        }
    }

    fn deliver(&self, room: Arc<str>, member: Member<U>, change: PresenceChange) {
        if let Some(watchers) = self.watchers.get() {
            // Fails only when nobody watches any more.
            watchers
                .sender
                .send(PresenceEvent {
                    room,
                    member,
                    change,
                })
                .ok();
        }
    }
}

// The announcement's bytes: change u8 (1 joined, 2 left, 3 ended), key u64, room (u32 length,
// UTF-8), user (rest, as the user codec wrote it). Integers big-endian.

fn encode(room: &str, key: u64, change: PresenceChange, user: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(13 + room.len() + user.len());
    out.put_u8(change.code());
    out.put_u64(key);
    out.put_u32(room.len() as u32);
    out.put_slice(room.as_bytes());
    out.put_slice(user);
    out.freeze()
}

fn decode(mut frame: Bytes) -> Option<(String, u64, PresenceChange, Bytes)> {
    if frame.len() < 13 {
        return None;
    }
    let change = PresenceChange::from_code(frame.get_u8())?;
    let key = frame.get_u64();
    let len = frame.get_u32() as usize;
    if frame.len() < len {
        return None;
    }
    let room = String::from_utf8(frame.split_to(len).to_vec()).ok()?;
    Some((room, key, change, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_short_or_unknown_ones_do_not_parse() {
        let frame = encode(
            "로비 🎉",
            7 << 44 | 3,
            PresenceChange::Ended,
            r#"{"name":"민지"}"#.as_bytes(),
        );
        let (room, key, change, user) = decode(frame.clone()).expect("parses");
        assert_eq!(room, "로비 🎉");
        assert_eq!(key, 7 << 44 | 3);
        assert_eq!(change, PresenceChange::Ended);
        assert_eq!(&user[..], r#"{"name":"민지"}"#.as_bytes());
        for cut in 0..frame.len() - user.len() {
            assert!(decode(frame.slice(..cut)).is_none(), "cut at {cut}");
        }
        let mut unknown = frame.to_vec();
        unknown[0] = 9;
        assert!(decode(Bytes::from(unknown)).is_none());
    }
}
