//! The registry of live sessions: lookup by session id, the session limit, and the reaper that
//! expires sessions whose client went away.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::backend::{Backend, SessionRef};
use crate::session::{Expiry, Session, SessionId};

pub(crate) struct Registry<U> {
    sessions: DashMap<SessionId, Session<U>>,
    next_key: AtomicU64,
    /// Sessions counted against the limit (reserved before the authentication hook runs).
    count: AtomicUsize,
    /// The cluster backend, told when a session is forgotten.
    backend: Option<Arc<dyn Backend>>,
    /// Session ids by key: for direct sends by key ([`Hub::session`](crate::Hub::session)),
    /// and on a node of a cluster for requests other nodes forward here (they name sessions by
    /// key, so that ids never travel between nodes).
    by_key: DashMap<u64, SessionId>,
}

impl<U> Registry<U> {
    /// An empty registry. On a node of a cluster, session keys start at the node's number
    /// times 2^32, so that they are unique cluster-wide.
    pub(crate) fn new(backend: Option<Arc<dyn Backend>>) -> Self {
        let first = backend
            .as_ref()
            .map_or(1, |backend| (u64::from(backend.node_number()) << 32) + 1);
        Self {
            sessions: DashMap::new(),
            next_key: AtomicU64::new(first),
            count: AtomicUsize::new(0),
            by_key: DashMap::new(),
            backend,
        }
    }

    /// The session whose key is `key`.
    pub(crate) fn by_key(&self, key: u64) -> Option<Session<U>> {
        let sid = *self.by_key.get(&key)?;
        self.get(&sid)
    }

    /// Takes in a session handed over from another node (over the session limit if need be:
    /// it exists already, and refusing it would end it).
    pub(crate) fn adopt(&self, session: Session<U>) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.by_key.insert(session.shared.key, session.shared.sid);
        self.sessions.insert(session.shared.sid, session);
    }

    /// Forgets a session that moved to another node: its ownership record is the new owner's
    /// now, so it is left alone.
    pub(crate) fn forget_moved(&self, sid: &SessionId) {
        if let Some((_, session)) = self.sessions.remove(sid) {
            session.shared.release_address();
            self.count.fetch_sub(1, Ordering::AcqRel);
            self.by_key.remove(&session.shared.key);
        }
    }

    /// Reserves room for one more session; `None` when `max` are already held.
    pub(crate) fn reserve(self: &Arc<Self>, max: usize) -> Option<Reservation<U>> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                (count < max).then_some(count + 1)
            })
            .ok()
            .map(|_| Reservation {
                registry: self.clone(),
                used: false,
            })
    }

    pub(crate) fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn get(&self, sid: &SessionId) -> Option<Session<U>> {
        self.sessions.get(sid).map(|entry| entry.value().clone())
    }

    /// Forgets a session (it has ended and its close frame was delivered, or it expired).
    pub(crate) fn remove(&self, sid: &SessionId) {
        if let Some((_, session)) = self.sessions.remove(sid) {
            session.shared.release_address();
            self.count.fetch_sub(1, Ordering::AcqRel);
            let key = session.shared.key;
            self.by_key.remove(&key);
            if let Some(backend) = &self.backend {
                backend.release(SessionRef(*sid.as_bytes()), key);
            }
        }
    }

    /// The ids and keys of every live session (for the cluster's ownership records).
    pub(crate) fn live_refs(&self) -> Vec<(SessionRef, u64)> {
        self.sessions
            .iter()
            .filter(|entry| entry.value().shared.close_reason().is_none())
            .map(|entry| {
                (
                    SessionRef(*entry.key().as_bytes()),
                    entry.value().shared.key,
                )
            })
            .collect()
    }

    /// Number of sessions held, ended-but-not-yet-forgotten ones included.
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// A snapshot of every session.
    pub(crate) fn all(&self) -> Vec<Session<U>> {
        self.sessions
            .iter()
            .map(|entry| entry.value().clone())
            .collect()
    }

    /// Calls `f` on every session without copying the list.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Session<U>)) {
        for entry in self.sessions.iter() {
            f(entry.value());
        }
    }

    /// One pass of the reaper: [`scan`](Self::scan), then [`sweep`](Self::sweep).
    pub(crate) fn reap(&self, now: Instant) -> usize {
        let found = self.scan(now);
        self.sweep(found, now)
    }

    /// The first half of a reaper pass: the sessions that look due to expire at `now`, and the
    /// ids of those to forget. (Closing a session takes other locks, such as the room index's,
    /// so nothing is closed while the map is being walked.)
    fn scan(&self, now: Instant) -> Reaping<U> {
        let mut found = Reaping {
            expired: Vec::new(),
            gone: Vec::new(),
        };
        for entry in self.sessions.iter() {
            match entry.value().shared.expiry(now) {
                Expiry::Keep => {}
                Expiry::Expire => found.expired.push(entry.value().clone()),
                Expiry::Remove => found.gone.push(*entry.key()),
            }
        }
        found
    }

    /// The second half of a reaper pass: expires the sessions `scan` found due that still are,
    /// and forgets the others it found. Returns how many sessions were forgotten.
    fn sweep(&self, found: Reaping<U>, now: Instant) -> usize {
        let Reaping { expired, gone } = found;
        let mut reaped = gone.len();
        for session in expired {
            // Decided again, atomically with the close: a transport may have attached (or a POST
            // come, or the application closed the session) since the look above. A session the
            // application closed meanwhile is kept until its close frame has had the resume
            // window to be picked up.
            if session.shared.expire(now) {
                tracing::debug!(session = session.shared.key, "session expired");
                self.remove(&session.shared.sid);
                reaped += 1;
            }
        }
        for sid in gone {
            self.remove(&sid);
        }
        reaped
    }
}

impl<U: Send + Sync + 'static> Registry<U> {
    /// Starts the reaper task; it stops when the registry is dropped.
    pub(crate) fn start_reaper(self: &Arc<Self>, period: Duration) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(registry) = weak.upgrade() else {
                    break;
                };
                registry.reap(Instant::now());
            }
        });
    }
}

/// What [`Registry::scan`] found.
struct Reaping<U> {
    /// Sessions that looked due to expire.
    expired: Vec<Session<U>>,
    /// Sessions to forget.
    gone: Vec<SessionId>,
}

/// A reserved place for a session that is being opened; released if not used.
pub(crate) struct Reservation<U> {
    registry: Arc<Registry<U>>,
    used: bool,
}

impl<U> Reservation<U> {
    /// Puts the session into the registry.
    pub(crate) fn insert(mut self, session: Session<U>) {
        self.used = true;
        self.registry
            .by_key
            .insert(session.shared.key, session.shared.sid);
        self.registry.sessions.insert(session.shared.sid, session);
    }
}

impl<U> Drop for Reservation<U> {
    fn drop(&mut self) {
        if !self.used {
            self.registry.count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::error::CloseReason;
    use crate::session::{Shared, TransportKind};

    fn registry_with_one_session() -> (Arc<Registry<()>>, Session<()>) {
        let registry = Arc::new(Registry::new(None));
        let session = Session::from_shared(Arc::new(Shared::new(
            registry.next_key(),
            SessionId::random().unwrap(),
            (),
            Arc::new(Config::default()),
            Weak::new(),
        )));
        registry.reserve(10).unwrap().insert(session.clone());
        (registry, session)
    }

    #[test]
    fn a_transport_that_attaches_during_a_reaper_pass_keeps_its_session() {
        let (registry, session) = registry_with_one_session();
        let later = Instant::now() + session.shared.config.resume_window * 2;
        let found = registry.scan(later);
        assert_eq!(found.expired.len(), 1);
        // Between the reaper's look and its close, a poll attaches.
        let generation = session.shared.attach(TransportKind::LongPoll, 0).unwrap();
        assert_eq!(registry.sweep(found, later), 0);
        assert_eq!(session.close_reason(), None);
        assert_eq!(registry.len(), 1);

        // Once it has gone again for the window, the next pass expires and forgets it.
        session.shared.detach(generation);
        let later = Instant::now() + session.shared.config.resume_window * 2;
        assert_eq!(registry.reap(later), 1);
        assert_eq!(session.close_reason(), Some(CloseReason::Expired));
        assert_eq!(registry.len(), 0);
    }

    #[test]
    fn a_session_the_application_closes_during_a_reaper_pass_is_kept_for_its_close_frame() {
        let (registry, session) = registry_with_one_session();
        let later = Instant::now() + session.shared.config.resume_window * 2;
        let found = registry.scan(later);
        session.close("bye");
        assert_eq!(registry.sweep(found, later), 0);
        assert_eq!(
            session.close_reason(),
            Some(CloseReason::Closed("bye".into()))
        );
        assert_eq!(registry.len(), 1);
    }
}
