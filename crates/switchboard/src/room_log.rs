//! A room's log: a broadcast to a room is written once, here, rather than into every member's
//! buffer; each member's session takes what it has not yet taken whenever it looks at its buffer
//! (see [`Shared`]'s `pull`), and only then numbers it.
//!
//! Entries are numbered by *position* (every entry ever appended to this log, from 0) and carry a
//! *stamp* from a counter shared by all rooms of the hub, taken under the log's lock: a session in
//! several rooms merges their logs by stamp, holding all their locks at once, so that two
//! broadcasts one after the other (to different rooms) reach it in that order.
//!
//! The log stays small: once it holds [`SWEEP_ENTRIES`] entries or [`SWEEP_BYTES`] bytes (or half a
//! session's buffer limits, if lower), the broadcaster that appended the last one has every member
//! take what it has not taken yet (a member that cannot, because its own buffer is full, overflows
//! then, with the documented close), and drops what everyone has taken. A member therefore never
//! finds an entry gone that it had not taken.
//!
//! A session whose transport waits registers in the logs of its rooms (once per wake-up: see
//! [`LogState::register`]); an append wakes the registered sessions and only those, so a broadcast
//! touches the state of waiting members only, as a broadcast channel's receivers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::config::Config;
use crate::protocol::EncodedMessage;
use crate::session::{Priority, Shared};

/// Most entries a room's log holds before a sweep.
pub(crate) const SWEEP_ENTRIES: usize = 256;
/// Most bytes of messages a room's log holds before a sweep.
pub(crate) const SWEEP_BYTES: usize = 1024 * 1024;

/// One room's log (see the module documentation).
pub(crate) struct RoomLog<U> {
    /// The room's name.
    pub(crate) name: Arc<str>,
    state: Mutex<LogState<U>>,
    sweep_entries: usize,
    sweep_bytes: usize,
}

/// The log's content, under its lock.
pub(crate) struct LogState<U> {
    entries: VecDeque<Entry>,
    /// The position of `entries[0]`.
    base: u64,
    /// Bytes of the messages in `entries`.
    bytes: usize,
    /// Sessions whose transport waits for this room's next broadcast. (A low-priority broadcast
    /// wakes them too: it may complete a batch of held messages, which is then due at once.)
    waiters: Vec<Weak<Shared<U>>>,
    /// An empty list with room, to take the waiters' place when they are woken (so that the list
    /// does not grow again from nothing after every broadcast).
    spare: Vec<Weak<Shared<U>>>,
    /// Counts the appends: each wakes and forgets the waiters.
    appends: u64,
    /// A sweep is under way (one at a time).
    sweeping: bool,
}

/// When a member last registered in a room's log (see [`LogState::register`]): the log's count
/// of appends at the time, plus one; 0 for never. A count that has moved on since means the list
/// it was in has been woken and emptied.
#[derive(Clone, Copy, Default)]
pub(crate) struct Registered(u64);

/// The sessions (by key) a broadcast leaves out: none, one (the common case: the sender, no
/// allocation), or several, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Except {
    #[default]
    None,
    One(u64),
    Many(Arc<[u64]>),
}

impl Except {
    /// Whether the session of `key` is left out.
    pub(crate) fn contains(&self, key: u64) -> bool {
        match self {
            Except::None => false,
            Except::One(one) => *one == key,
            Except::Many(many) => many.binary_search(&key).is_ok(),
        }
    }

    /// The same, leaving out `key` too.
    pub(crate) fn with(self, key: u64) -> Self {
        self.with_all([key])
    }

    /// The same, leaving out `keys` too.
    pub(crate) fn with_all(self, keys: impl IntoIterator<Item = u64>) -> Self {
        let mut all: Vec<u64> = self.keys().to_vec();
        all.extend(keys);
        Self::of(all)
    }

    /// Leaves out exactly `keys`.
    pub(crate) fn of(mut keys: Vec<u64>) -> Self {
        keys.sort_unstable();
        keys.dedup();
        match keys.as_slice() {
            [] => Except::None,
            [one] => Except::One(*one),
            _ => Except::Many(keys.into()),
        }
    }

    /// The keys left out, in increasing order.
    pub(crate) fn keys(&self) -> &[u64] {
        match self {
            Except::None => &[],
            Except::One(one) => std::slice::from_ref(one),
            Except::Many(many) => many,
        }
    }
}

/// One broadcast in a room's log.
pub(crate) struct Entry {
    pub(crate) stamp: u64,
    pub(crate) message: EncodedMessage,
    /// The sessions the broadcast leaves out.
    pub(crate) except: Except,
    pub(crate) priority: Priority,
}

/// What an append leaves the broadcaster to do once the log's lock is released.
#[must_use]
pub(crate) struct Appended<U> {
    waiters: Vec<Weak<Shared<U>>>,
    /// Sweep (see the module documentation) up to this position.
    pub(crate) sweep: Option<u64>,
}

impl<U> Appended<U> {
    /// Wakes the sessions that waited for the entry, and gives their list back to `log` to use
    /// again.
    pub(crate) fn wake(&mut self, log: &RoomLog<U>) {
        if self.waiters.capacity() == 0 {
            return;
        }
        for waiter in self.waiters.drain(..) {
            if let Some(shared) = waiter.upgrade() {
                shared.outbound.notify_waiters();
            }
        }
        let mut state = log.lock();
        if state.spare.capacity() < self.waiters.capacity() {
            state.spare = std::mem::take(&mut self.waiters);
        }
    }
}

impl<U> RoomLog<U> {
    pub(crate) fn new(name: Arc<str>, config: &Config) -> Self {
        Self {
            name,
            state: Mutex::new(LogState {
                entries: VecDeque::new(),
                base: 0,
                bytes: 0,
                waiters: Vec::new(),
                spare: Vec::new(),
                appends: 0,
                sweeping: false,
            }),
            sweep_entries: SWEEP_ENTRIES.min(config.max_buffered_messages.div_ceil(2)),
            sweep_bytes: SWEEP_BYTES.min(config.max_buffered_bytes.div_ceil(2)),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LogState<U>> {
        // Every update leaves the log consistent before anything that could panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a broadcast, stamped from `stamps`, and takes the sessions it wakes.
    pub(crate) fn append(
        &self,
        stamps: &AtomicU64,
        message: &EncodedMessage,
        except: Except,
        priority: Priority,
    ) -> Appended<U> {
        let mut log = self.lock();
        let stamp = stamps.fetch_add(1, Ordering::Relaxed);
        log.bytes += message.buffered_len();
        log.entries.push_back(Entry {
            stamp,
            message: message.clone(),
            except,
            priority,
        });
        log.appends += 1;
        let spare = std::mem::take(&mut log.spare);
        let waiters = std::mem::replace(&mut log.waiters, spare);
        let sweep = (!log.sweeping
            && (log.entries.len() >= self.sweep_entries || log.bytes >= self.sweep_bytes))
            .then(|| {
                log.sweeping = true;
                log.head()
            });
        Appended { waiters, sweep }
    }

    /// Ends a sweep up to `position`: every member has taken the entries before it.
    pub(crate) fn trim(&self, position: u64) {
        let mut log = self.lock();
        while log.base < position {
            let Some(entry) = log.entries.pop_front() else {
                break;
            };
            log.bytes -= entry.message.buffered_len();
            log.base += 1;
        }
        log.sweeping = false;
        if log.entries.is_empty() {
            // A burst leaves a large ring behind; an idle room should not keep it.
            log.entries.shrink_to(self.sweep_entries.min(16));
        }
    }
}

impl<U> LogState<U> {
    /// The position the next entry gets.
    pub(crate) fn head(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// The position of the oldest entry the log still holds.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// The entries from `position` on (`position` at least [`base`](Self::base)).
    pub(crate) fn from(&self, position: u64) -> impl Iterator<Item = &Entry> {
        let start = position.saturating_sub(self.base) as usize;
        self.entries.range(start.min(self.entries.len())..)
    }

    /// The entry at `position`, if the log holds it.
    pub(crate) fn at(&self, position: u64) -> Option<&Entry> {
        let index = position.checked_sub(self.base)?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    /// Registers `waiter` to be woken by the next broadcast, unless it is already. `registered`
    /// is the member's record of when it registered last (see [`Registered`]), so that a session
    /// woken through another room (or by a direct message) that registers again is not listed
    /// twice.
    /// (`waiter` is called only then.)
    pub(crate) fn register(
        &mut self,
        waiter: impl FnOnce() -> Weak<Shared<U>>,
        registered: &mut Registered,
    ) {
        if registered.0 != self.appends + 1 {
            self.waiters.push(waiter());
            registered.0 = self.appends + 1;
        }
    }
}
