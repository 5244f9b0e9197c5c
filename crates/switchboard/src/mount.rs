//! The state every transport shares, below both the router (which only wires) and the
//! transports (which use it): the server's core ([`Inner`]: configuration, sessions, rooms, the
//! authentication hook), the per-router [`Mounted`] (the core plus the application's session
//! handler: opening, looking up and attaching to sessions), and the [`Attached`] guard a
//! transport holds while it drains a session.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::address::Addresses;
use crate::auth::{AuthHook, Handshake};
use crate::backend::Backend;
use crate::config::{Config, UserCodec};
use crate::error::{ApiError, CloseReason};
use crate::hub::RoomIndex;
use crate::node::Node;
use crate::session::registry::Registry;
use crate::session::{AttachError, Session, SessionId, Shared, TransportKind};

/// Starts the application's handler for a new session, in a task of its own (see
/// [`spawn_handler`]).
pub(crate) type Handler<U> = Arc<dyn Fn(Session<U>) + Send + Sync>;

/// The core of one server, shared by its routers, its hub handles and its transports.
pub(crate) struct Inner<U> {
    pub(crate) config: Arc<Config>,
    pub(crate) registry: Arc<Registry<U>>,
    pub(crate) rooms: Arc<RoomIndex<U>>,
    auth: AuthHook<U>,
    pub(crate) shutting_down: AtomicBool,
    /// Transports attached right now, across all sessions (for graceful shutdown).
    pub(crate) attached: AtomicUsize,
    pub(crate) attached_changed: Notify,
    /// Starts the reaper with the first session.
    reaper: Once,
    /// This node's link to its cluster, if it has a backend.
    pub(crate) node: Option<Arc<Node>>,
    /// The handler of the first router made, which runs requests other nodes forward here.
    pub(crate) handler: OnceLock<Handler<U>>,
    /// How user data moves with a session handed over to another node.
    pub(crate) user_codec: Option<UserCodec<U>>,
    /// Sessions and opens per client address.
    pub(crate) addresses: Arc<Addresses>,
    /// Whether the missing client address has been logged (see [`Mounted::open_session`]).
    unknown_address_logged: AtomicBool,
}

/// The per-router state: the shared core plus the application's session handler.
pub(crate) struct Mounted<U> {
    pub(crate) inner: Arc<Inner<U>>,
    pub(crate) handler: Handler<U>,
}

impl<U> Clone for Mounted<U> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            handler: self.handler.clone(),
        }
    }
}

impl<U> Inner<U> {
    /// A server with nothing in it yet; a node of a cluster if it has a `backend`.
    pub(crate) fn new(
        config: Config,
        auth: AuthHook<U>,
        backend: Option<Arc<dyn Backend>>,
        user_codec: Option<UserCodec<U>>,
    ) -> Self {
        let config = Arc::new(config);
        let metrics = config.metrics.clone();
        let rooms = RoomIndex::new(backend.clone(), config.clone());
        if let Some(codec) = user_codec.filter(|_| backend.is_some()) {
            rooms.announcer.start(codec);
        }
        let node = backend
            .clone()
            .map(|backend| Arc::new(Node::new(backend, metrics)));
        if let Some(node) = &node {
            rooms.node.set(node.clone()).ok();
        }
        Self {
            addresses: Arc::new(Addresses::new(config.addresses.clone())),
            unknown_address_logged: AtomicBool::new(false),
            rooms: Arc::new(rooms),
            config,
            registry: Arc::new(Registry::new(backend.clone())),
            auth,
            shutting_down: AtomicBool::new(false),
            attached: AtomicUsize::new(0),
            attached_changed: Notify::new(),
            reaper: Once::new(),
            node,
            handler: OnceLock::new(),
            user_codec,
        }
    }
}

impl<U: Clone + Send + Sync + 'static> Mounted<U> {
    /// The state of a router whose sessions are handled by `on_session`.
    pub(crate) fn new<F, Fut>(inner: Arc<Inner<U>>, on_session: F) -> Self
    where
        F: Fn(Session<U>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_session = Arc::new(on_session);
        let node: Option<Arc<str>> = inner.node.as_ref().map(|node| Arc::from(node.id()));
        let handler: Handler<U> =
            Arc::new(move |session| spawn_handler(on_session.clone(), session, node.as_deref()));
        inner.handler.get_or_init(|| handler.clone());
        Self { inner, handler }
    }

    /// The state of the first router made on `inner`, if one has been (see [`Inner::handler`]).
    pub(crate) fn first(inner: Arc<Inner<U>>) -> Option<Self> {
        let handler = inner.handler.get()?.clone();
        Some(Self { inner, handler })
    }

    /// Opens a new session: checks the limits, runs the authentication hook, registers the
    /// session and starts the application's handler for it.
    pub(crate) async fn open_session(
        &self,
        mut handshake: Handshake,
    ) -> Result<Session<U>, ApiError> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::shutting_down());
        }
        // The per-address limits come first: a refusal there costs no session and no hook call.
        handshake.client_addr = inner.addresses.client(handshake.peer, &handshake.headers);
        let address = match handshake.client_addr {
            Some(addr) => Some(
                inner
                    .addresses
                    .admit(addr)
                    .inspect_err(|err| inner.config.metrics.address_refusal(err.code))?,
            ),
            None => {
                if !inner.unknown_address_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the client address of a new session is unknown, so the limits per \
                         address do not apply: serve the app with switchboard::serve (or with \
                         ConnectInfo<SocketAddr>)"
                    );
                }
                None
            }
        };
        let reservation = inner
            .registry
            .reserve(inner.config.max_sessions)
            .ok_or_else(ApiError::session_limit)?;
        let user = (inner.auth)(handshake).await.map_err(|refusal| {
            crate::logs::info_limited!(
                status = refusal.status.as_u16(),
                "session refused by authentication hook"
            );
            ApiError::refused(refusal.status, refusal.message)
        })?;
        let sid = SessionId::random().ok_or_else(|| {
            tracing::error!("the operating system's random generator failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "cannot create a session id right now",
            )
        })?;
        let key = inner.registry.next_key();
        let sid_ref = crate::backend::SessionRef(*sid.as_bytes());
        let shared = Arc::new(
            Shared::new(
                key,
                sid,
                user,
                inner.config.clone(),
                Arc::downgrade(&inner.rooms),
            )
            .counted_for(address),
        );
        let session = Session::from_shared(shared);
        reservation.insert(session.clone());
        // `shutdown` sets its flag before it snapshots the sessions, and we registered before
        // looking at the flag: either its snapshot holds this session or we see the flag here.
        if inner.shutting_down.load(Ordering::SeqCst) {
            session.shared.close(CloseReason::Shutdown);
            inner.registry.remove(&session.shared.sid);
            return Err(ApiError::shutting_down());
        }
        if let Some(node) = &inner.node {
            // Before the client learns the session id: its next request may land on another
            // node, which must find this one as the owner.
            if let Err(err) = node.backend.claim(sid_ref, key).await {
                tracing::warn!(session = key, error = %err, "session opened without an ownership record");
            }
        }
        self.started();
        (self.handler)(session.clone());
        tracing::debug!(session = key, "session opened");
        Ok(session)
    }

    /// Starts the background tasks with the first session: the reaper, and on a node of a
    /// cluster the refresher of ownership records.
    pub(crate) fn started(&self) {
        let inner = &self.inner;
        inner.reaper.call_once(|| {
            let period = (inner.config.resume_window / 4)
                .clamp(Duration::from_millis(20), Duration::from_secs(1));
            inner.registry.start_reaper(period);
            if let Some(node) = &inner.node {
                crate::node::start_refresher(&inner.registry, node.clone());
                if let Some(codec) = inner.user_codec {
                    inner.rooms.start_presence(codec);
                }
            }
        });
    }

    /// The session `sid` names. An expired session answers as an unknown one (a client never
    /// receives close code 4002, `docs/protocol.md` §8).
    pub(crate) fn lookup(&self, sid: &str) -> Result<Session<U>, ApiError> {
        let sid = SessionId::parse(sid)
            .ok_or_else(|| ApiError::bad_request("sid must be 32 hexadecimal digits"))?;
        let session = self
            .inner
            .registry
            .get(&sid)
            .ok_or_else(ApiError::unknown_session)?;
        if session.shared.is_expired() {
            return Err(self.refusal(&session, AttachError::Expired));
        }
        Ok(session)
    }

    /// Attaches a transport of `kind`, whose request carried attach number `att`, to `session`,
    /// taking over from the one attached before (if any), and marks it attached until the
    /// returned guard is dropped. A stale request (`att` lower than one attached already) is
    /// refused with `409 superseded` and supersedes nothing (its `ack` has been applied: acknowledgements
    /// are cumulative); an expired session with
    /// `404 unknown_session` (see [`Shared::attach`]).
    pub(crate) fn attach_transport(
        &self,
        session: &Session<U>,
        kind: TransportKind,
        att: u64,
    ) -> Result<Attached<U>, ApiError> {
        let generation = session
            .shared
            .attach(kind, att)
            .map_err(|err| self.refusal(session, err))?;
        self.inner.attached.fetch_add(1, Ordering::SeqCst);
        Ok(Attached {
            inner: self.inner.clone(),
            session: session.clone(),
            generation,
            rejected: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// The answer to a request that found `session` unusable: an expired session is forgotten and
    /// answers as an unknown one; a stale request is told it was superseded.
    pub(crate) fn refusal(&self, session: &Session<U>, err: AttachError) -> ApiError {
        match err {
            AttachError::Expired => {
                self.inner.registry.remove(&session.shared.sid);
                ApiError::unknown_session()
            }
            AttachError::Stale => ApiError::superseded(),
        }
    }
}

/// Runs `on_session` for a new session in a task of its own, in a `session` span; the session is
/// closed when it returns or panics.
///
/// The application's future is held in the task itself rather than boxed behind the type-erased
/// [`Handler`]: one allocation per session instead of two, and a few pointers fewer. It is still
/// made inside the task, as the application may expect.
fn spawn_handler<U, F, Fut>(on_session: Arc<F>, session: Session<U>, node: Option<&str>)
where
    U: Send + Sync + 'static,
    F: Fn(Session<U>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let span = match node {
        Some(node) => tracing::info_span!("session", key = session.shared.key, node = %node),
        None => tracing::info_span!("session", key = session.shared.key),
    };
    session.shared.set_span(&span);
    tokio::spawn(
        async move {
            // Closes the session when the handler returns, and also if it panics.
            let _close = CloseOnDrop(session.clone());
            on_session(session).await;
        }
        .instrument(span),
    );
}

/// Ends a session when its handler task finishes, whether it returned or panicked.
struct CloseOnDrop<U>(Session<U>);

impl<U> Drop for CloseOnDrop<U> {
    fn drop(&mut self) {
        self.0.shared.close(CloseReason::Closed("closed".into()));
    }
}

/// Detaches a transport from its session when dropped, however the transport ends (including a
/// client that disconnects in the middle of a long poll).
pub(crate) struct Attached<U> {
    inner: Arc<Inner<U>>,
    session: Session<U>,
    generation: u64,
    /// Frames of this transport the server rejected (see [`Attached::rejected`]).
    rejected: std::sync::atomic::AtomicU32,
}

impl<U> Attached<U> {
    /// The session the transport is attached to.
    pub(crate) fn session(&self) -> &Session<U> {
        &self.session
    }

    /// The transport's generation (see [`Shared::attach`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Counts one more frame of this transport that the server rejected; returns how many so far.
    pub(crate) fn rejected(&self) -> u32 {
        self.rejected
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }
}

impl<U> Drop for Attached<U> {
    fn drop(&mut self) {
        self.session.shared.detach(self.generation);
        self.inner.attached.fetch_sub(1, Ordering::SeqCst);
        self.inner.attached_changed.notify_waiters();
    }
}
