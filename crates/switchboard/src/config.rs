//! Configuration: every limit and time-out, with its documented default.
//!
//! All settings are made on [`Builder`], returned by [`Switchboard::builder`](crate::Switchboard::builder).
//! The defaults are meant for production: a long-poll hold below the 30 s that common proxies allow,
//! bounded buffers everywhere, and WebSocket buffers sized so that an idle connection costs a few
//! kilobytes rather than the 128 KiB axum uses by default.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthHook, Handshake, Refusal};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::address::{AddressConfig, Net};
use crate::backend::Backend;
use crate::metrics::{Metrics, Source};

/// Thresholds after which held-back low-priority messages are released.
///
/// A low-priority message (see [`Priority::Low`](crate::Priority::Low)) may wait in the session's
/// buffer until one of these is reached, counted over the low-priority messages waiting; then all
/// of them go out together. A normal-priority message releases everything before it at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalescing {
    /// Release when this many low-priority messages wait. Default: 32.
    pub max_count: usize,
    /// Release when the waiting low-priority messages hold this many bytes. Default: 16 KiB.
    pub max_bytes: usize,
    /// Release when the oldest waiting low-priority message has waited this long. Default: 50 ms.
    pub max_delay: Duration,
}

impl Default for Coalescing {
    fn default() -> Self {
        Self {
            max_count: 32,
            max_bytes: 16 * 1024,
            max_delay: Duration::from_millis(50),
        }
    }
}

/// Longest duration any setting accepts (one year): longer values are cut to it, so that
/// adding them to a point in time cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn capped(duration: Duration) -> Duration {
    duration.min(MAX_DURATION)
}

/// Which origins may use the endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origins {
    /// Only the server's own origin (the `Origin` host equals the `Host` header).
    SameOrigin,
    /// The listed origins (`scheme://host[:port]`), plus the server's own.
    List(Vec<String>),
    /// Any origin. Only for development or for APIs that need no browser protection.
    Any,
}

/// The resolved settings of one [`Switchboard`](crate::Switchboard).
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) origins: Origins,
    /// The `Host` values requests may carry (lowercase; without a port: any port); `None`: any.
    pub(crate) hosts: Option<Vec<String>>,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) poll_hold: Duration,
    pub(crate) resume_window: Duration,
    pub(crate) max_message: usize,
    pub(crate) max_body: usize,
    pub(crate) max_buffered_messages: usize,
    pub(crate) max_buffered_bytes: usize,
    pub(crate) inbound_queue: usize,
    pub(crate) max_sessions: usize,
    pub(crate) max_rooms_per_session: usize,
    pub(crate) coalescing: Coalescing,
    pub(crate) ws_read_buffer: usize,
    pub(crate) ws_write_buffer: usize,
    pub(crate) shutdown_grace: Duration,
    pub(crate) handshake_window: Duration,
    pub(crate) addresses: AddressConfig,
    /// Where the server's metrics go (made by [`Builder::build`](crate::Builder::build)).
    pub(crate) metrics: Arc<Metrics>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            origins: Origins::SameOrigin,
            hosts: None,
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            write_timeout: Duration::from_secs(20),
            poll_hold: Duration::from_secs(20),
            resume_window: Duration::from_secs(30),
            max_message: 64 * 1024,
            max_body: 1024 * 1024,
            max_buffered_messages: 8192,
            max_buffered_bytes: 8 * 1024 * 1024,
            inbound_queue: 256,
            max_sessions: 100_000,
            max_rooms_per_session: 256,
            coalescing: Coalescing::default(),
            ws_read_buffer: 4 * 1024,
            ws_write_buffer: 4 * 1024,
            shutdown_grace: Duration::from_secs(5),
            handshake_window: Duration::from_secs(10),
            addresses: AddressConfig::default(),
            metrics: Arc::default(),
        }
    }
}

/// Builds a [`Switchboard`](crate::Switchboard). Every setting has a documented default; call only what you change.
///
/// ```
/// use std::time::Duration;
/// use switchboard::Switchboard;
///
/// let realtime = Switchboard::builder()
///     .allowed_origins(["https://example.com"])
///     .poll_hold(Duration::from_secs(15))
///     .build();
/// # let _ = realtime;
/// ```
pub struct Builder<U> {
    pub(crate) config: Config,
    pub(crate) auth: AuthHook<U>,
    pub(crate) backend: Option<Arc<dyn Backend>>,
    pub(crate) codec: Option<UserCodec<U>>,
    pub(crate) recorder: Source,
}

/// How a session's user data moves between nodes (as JSON), when it is handed over.
pub(crate) struct UserCodec<U> {
    pub(crate) encode: fn(&U) -> Result<Vec<u8>, serde_json::Error>,
    pub(crate) decode: fn(&[u8]) -> Result<U, serde_json::Error>,
}

impl<U> Clone for UserCodec<U> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<U> Copy for UserCodec<U> {}

impl<U: Serialize + DeserializeOwned> UserCodec<U> {
    fn json() -> Self {
        Self {
            encode: |user| serde_json::to_vec(user),
            decode: |bytes| serde_json::from_slice(bytes),
        }
    }
}

impl<U> std::fmt::Debug for Builder<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Builder<()> {
    pub(crate) fn new() -> Self {
        Self {
            config: Config::default(),
            auth: Arc::new(|_handshake| Box::pin(async { Ok(()) })),
            backend: None,
            codec: None,
            recorder: Source::Global,
        }
    }
}

impl<U: Clone + Send + Sync + 'static> Builder<U> {
    /// Sets the authentication hook, which decides who may open a session.
    ///
    /// The hook sees the request headers (cookies included), the URI and the client's `auth` data
    /// (see [`Handshake`]); it returns the user data that the session then carries
    /// ([`Session::user`](crate::Session::user)), or a [`Refusal`] with the HTTP status the client
    /// receives. Default: every session is accepted with user data `()`.
    ///
    /// ```
    /// use switchboard::{Refusal, Switchboard};
    ///
    /// let realtime = Switchboard::builder()
    ///     .authenticate(|handshake| async move {
    ///         match handshake.auth().and_then(|auth| auth.get("token")?.as_str()) {
    ///             Some("letmein") => Ok("alice".to_string()),
    ///             _ => Err(Refusal::unauthorized("a valid token is required")),
    ///         }
    ///     })
    ///     .build();
    /// # let _ = realtime;
    /// ```
    pub fn authenticate<V, F, Fut>(self, hook: F) -> Builder<V>
    where
        V: Clone + Send + Sync + 'static,
        F: Fn(Handshake) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, Refusal>> + Send + 'static,
    {
        Builder {
            config: self.config,
            auth: Arc::new(move |handshake| Box::pin(hook(handshake))),
            // The user data's type changed: a backend set before cannot move it (see
            // `backend`, and the error `build` logs).
            backend: self.backend,
            codec: None,
            recorder: self.recorder,
        }
    }

    /// Makes this server one node of a cluster: sessions, rooms and broadcasts are shared with
    /// the other nodes through `backend` (for example `switchboard_redis::RedisBackend`), so a
    /// load balancer may send any request of a session to any node. Default: no backend, a
    /// single node that needs nothing external.
    ///
    /// See `docs/scale-out.md` for what changes: broadcasts are delivered when the backend hands
    /// them back (so every member of a room sees one order cluster-wide), and a request for a
    /// session another node owns is forwarded there.
    ///
    /// The user data the authentication hook returns moves with a session that is handed over
    /// to another node, as JSON: hence the `Serialize + DeserializeOwned` bound, and call this
    /// *after* [`authenticate`](Self::authenticate).
    pub fn backend(mut self, backend: impl Backend) -> Self
    where
        U: Serialize + DeserializeOwned,
    {
        self.backend = Some(Arc::new(backend));
        self.codec = Some(UserCodec::json());
        self
    }

    /// Allows these origins (`scheme://host[:port]`, exactly as browsers send them in `Origin`) in
    /// addition to the server's own. Cross-origin requests from them get CORS headers.
    /// Default: only the server's own origin.
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.origins = Origins::List(
            origins
                .into_iter()
                .map(|origin| origin.into().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        );
        self
    }

    /// Allows every origin. Use only in development: any web page can then open sessions with the
    /// credentials (cookies) of its visitors.
    pub fn allow_any_origin(mut self) -> Self {
        self.config.origins = Origins::Any;
        self
    }

    /// Accepts only requests whose `Host` header names one of `hosts`: `example.com` (any port),
    /// `example.com:8443` (that port only), `[::1]`. Other requests get `403 host_not_allowed`
    /// (WebSocket: refused before the upgrade) and change nothing. Default: any host.
    ///
    /// This is the defence against DNS rebinding: a page on `evil.example` whose name the
    /// attacker points at your server's address (`127.0.0.1` for a server on a developer's
    /// machine) is same-origin with itself, so the `Origin` check cannot see it; but its
    /// requests say `Host: evil.example`. List every name the server is reached by (behind a
    /// proxy, the public names the proxy passes on).
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.hosts = Some(
            hosts
                .into_iter()
                .map(|host| host.into().trim().to_ascii_lowercase())
                .collect(),
        );
        self
    }

    /// How often the server pings an attached WebSocket. Default: 25 s.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.config.ping_interval = capped(interval).max(Duration::from_millis(10));
        self
    }

    /// How long after a missed ping a silent WebSocket is considered dead (it is dropped after
    /// `ping_interval + ping_timeout` without any frame). Default: 20 s.
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.config.ping_timeout = capped(timeout);
        self
    }

    /// How long a write to a WebSocket may stall before the transport is dropped. Default: 20 s.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_timeout = capped(timeout);
        self
    }

    /// How long a long poll is held when there is nothing to send. Default: 20 s (below the 30 s
    /// after which common proxies cut requests).
    pub fn poll_hold(mut self, hold: Duration) -> Self {
        self.config.poll_hold = capped(hold);
        self
    }

    /// How long a session survives with no transport attached. Default: 30 s.
    ///
    /// A client request after the window finds the session expired at once; otherwise the
    /// application sees the session end with [`CloseReason::Expired`](crate::CloseReason) when
    /// the server next checks, every window / 4 (at least every second, at most every 20 ms).
    pub fn resume_window(mut self, window: Duration) -> Self {
        self.config.resume_window = capped(window);
        self
    }

    /// Largest message payload in bytes, in either direction. Default: 64 KiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message = bytes;
        self
    }

    /// Largest POST body in bytes. Default: 1 MiB. Raised to at least twice the message size.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.config.max_body = bytes;
        self
    }

    /// Most unacknowledged messages a session buffers before it is closed with reason `overflow`.
    /// Default: 8192.
    pub fn max_buffered_messages(mut self, messages: usize) -> Self {
        self.config.max_buffered_messages = messages.max(1);
        self
    }

    /// Most unacknowledged bytes a session buffers before it is closed with reason `overflow`.
    /// Default: 8 MiB.
    pub fn max_buffered_bytes(mut self, bytes: usize) -> Self {
        self.config.max_buffered_bytes = bytes.max(1);
        self
    }

    /// Most received messages waiting for the application per session; when full, transports stop
    /// reading from that client (back-pressure). Default: 256.
    pub fn inbound_queue(mut self, messages: usize) -> Self {
        self.config.inbound_queue = messages.max(1);
        self
    }

    /// Most sessions this server holds at once; further opens get `503 session_limit`.
    /// Default: 100 000.
    pub fn max_sessions(mut self, sessions: usize) -> Self {
        self.config.max_sessions = sessions;
        self
    }

    /// How long a new session may go without a transport attaching or a `POST` arriving before it
    /// expires: a client that opens sessions and never uses them holds each for this long rather
    /// than the whole [resume window](Self::resume_window). Once a session has been used, the
    /// resume window applies. Default: 10 s (never longer than the resume window).
    pub fn handshake_window(mut self, window: Duration) -> Self {
        self.config.handshake_window = capped(window);
        self
    }

    /// Most sessions one client address may hold at once (an IPv4 address, or an IPv6 /64
    /// network); further opens from it are refused with `429 address_session_limit` (WebSocket:
    /// close `4429`) and `Retry-After: 5`. Ended sessions count until they are forgotten.
    /// Default: 1000, room for a large office behind one NAT address. `usize::MAX`: no cap.
    ///
    /// The limits per address need the client's address: serve the app with
    /// [`serve`](crate::serve()), or with axum's `into_make_service_with_connect_info`. Behind a
    /// reverse proxy, list it in [`trusted_proxies`](Self::trusted_proxies), or every client
    /// counts as the proxy's address.
    pub fn sessions_per_address(mut self, sessions: usize) -> Self {
        self.config.addresses.max_sessions = sessions.max(1);
        self
    }

    /// How fast one client address may open sessions: `per_second` on average, and up to `burst`
    /// at once. Past it, opens are refused with `429 open_rate_limited` (WebSocket: close `4429`)
    /// and `Retry-After` (seconds until the next open is allowed). Resuming a session is not
    /// opening one. Default: 10 per second, bursts of 100. `per_second` 0: no rate limit.
    pub fn open_rate_per_address(mut self, per_second: u32, burst: u32) -> Self {
        self.config.addresses.opens_per_second = per_second;
        self.config.addresses.burst = burst.max(1);
        self
    }

    /// The reverse proxies whose `Forwarded` or `X-Forwarded-For` headers are believed, as
    /// networks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses (`127.0.0.1`). A request
    /// whose connection comes from one of them counts as coming from the nearest address in
    /// those headers that is not a trusted proxy (read from the right: each proxy appends the
    /// address it received the request from, so what a client writes itself is ignored). From
    /// anyone else the headers are ignored. Default: none, the connection's peer is the client.
    ///
    /// # Panics
    ///
    /// If an entry is not an address or network: a mistyped trust list would otherwise make
    /// every client count as the proxy, or trust nobody, without a word.
    pub fn trusted_proxies<I, S>(mut self, proxies: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.config.addresses.trusted = proxies
            .into_iter()
            .map(|proxy| {
                let proxy = proxy.as_ref();
                Net::parse(proxy).unwrap_or_else(|| {
                    panic!("trusted_proxies: {proxy:?} is not an address or network (a.b.c.d/n)")
                })
            })
            .collect();
        self
    }

    /// Most rooms one session may be in. Default: 256.
    pub fn max_rooms_per_session(mut self, rooms: usize) -> Self {
        self.config.max_rooms_per_session = rooms;
        self
    }

    /// Thresholds for releasing low-priority messages. Default: [`Coalescing::default`].
    pub fn coalescing(mut self, coalescing: Coalescing) -> Self {
        self.config.coalescing = Coalescing {
            max_delay: capped(coalescing.max_delay),
            ..coalescing
        };
        self
    }

    /// WebSocket read buffer size per connection. Default: 4 KiB.
    pub fn websocket_read_buffer(mut self, bytes: usize) -> Self {
        self.config.ws_read_buffer = bytes;
        self
    }

    /// WebSocket write buffer size per connection: frames are collected up to this size before a
    /// write to the socket. Default: 4 KiB.
    pub fn websocket_write_buffer(mut self, bytes: usize) -> Self {
        self.config.ws_write_buffer = bytes;
        self
    }

    /// Records this server's metrics with `recorder` rather than with the global recorder.
    /// Default: the recorder installed globally (`metrics::set_global_recorder`, or an
    /// exporter's `install`) *when [`build`](crate::Builder::build) is called*, so install it
    /// before; without one, nothing is recorded and counting costs nothing.
    ///
    /// Every metric, its unit and labels are listed in `docs/deployment.md` ("Metrics"). A
    /// recorder of its own suits a server among several in one process (each scraped on its
    /// own) and tests.
    ///
    /// ```
    /// use metrics_exporter_prometheus::PrometheusBuilder;
    /// use switchboard::Switchboard;
    ///
    /// let recorder = PrometheusBuilder::new().build_recorder();
    /// let scrape = recorder.handle();
    /// let realtime = Switchboard::builder().metrics_recorder(recorder).build();
    /// // Serve `scrape.render()` at /metrics, next to `realtime.router(…)`.
    /// assert!(scrape.render().contains("switchboard_sessions"));
    /// # let _ = realtime;
    /// ```
    pub fn metrics_recorder(
        mut self,
        recorder: impl metrics::Recorder + Send + Sync + 'static,
    ) -> Self {
        self.recorder = Source::Given(Arc::new(recorder));
        self
    }

    /// How long [`Switchboard::shutdown`](crate::Switchboard::shutdown) waits for attached transports to say goodbye.
    /// Default: 5 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = capped(grace);
        self
    }
}
