//! Switchboard on many nodes, through Redis.
//!
//! [`RedisBackend`] is a [`Backend`] for
//! [`Builder::backend`](switchboard::Builder::backend): every node of a cluster connects to the
//! same Redis, and a load balancer may then send any request of a session to any node, with no
//! sticky sessions. `docs/scale-out.md` describes the design, its failure modes and how to run a
//! cluster; in short:
//!
//! - A session lives on the node that opened it (its *owner*), in memory. Redis holds only who
//!   owns which session (`P:owner:{h}`, where `h` is a SHA-256 of the session id: ids never reach
//!   Redis), which nodes are alive (`P:alive:{node}`, and the set `P:nodes`), a counter that
//!   numbers nodes (`P:counter`), and for a moment the state of a session that moves between
//!   nodes (`P:handover:{h}`).
//! - A poll or POST that lands on another node is forwarded to the owner over the owner's channel
//!   (`P:node:{node}`), and its answer comes back over the asker's.
//! - A broadcast is published once, on `P:room:{room}` or `P:all`; every node with members in
//!   the room is subscribed, the sender too, and delivers it when Redis hands it over, so that
//!   every member sees a room's messages in one order. Joins and leaves (for
//!   `Hub::watch_presence`) are published on `P:membership`, to which every node subscribes.
//!
//! One RESP3 connection per node carries commands and subscriptions (redis-rs's reconnecting
//! `ConnectionManager`), so that a node's subscriptions and publications reach Redis in the
//! order it made them. After a lost connection it reconnects by itself, subscribes again, and
//! the node rewrites its records.
//!
//! ```no_run
//! use switchboard::Switchboard;
//! use switchboard_redis::RedisBackend;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = RedisBackend::builder("redis://127.0.0.1:6379")
//!     .prefix("chat")
//!     .connect()
//!     .await?;
//! let realtime = Switchboard::builder().backend(backend).build();
//! # let _ = realtime;
//! # Ok(())
//! # }
//! ```

pub use redis;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, ProtocolVersion, PushInfo, PushKind, Value};
use sha2::{Digest as _, Sha256};
use switchboard::backend::{Backend, BackendError, BoxFuture, Delivery, Owner, SessionRef, Topic};
use tokio::sync::{mpsc, oneshot};

/// How long an ownership record lives unless its node rewrites it (every 10 s).
const OWNER_TTL: Duration = Duration::from_secs(30);

/// How long a node's liveness record lives unless it rewrites it (every [`ALIVE_PERIOD`]).
const ALIVE_TTL: Duration = Duration::from_secs(3);

/// How often a node rewrites its liveness record.
const ALIVE_PERIOD: Duration = Duration::from_secs(1);

/// Most publications, subscription changes and releases queued on one node.
const QUEUE: usize = 65_536;

/// Most commands sent to Redis in one pipeline.
const BATCH: usize = 512;

/// How long a command may wait for Redis's answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Node numbers (the high bits of session keys) are below this.
const NODE_NUMBERS: u64 = 1 << 20;

/// Rewrites ownership records: `KEYS` the records, `ARGV[1]` the time to live in ms,
/// `ARGV[i + 1]` the value of `KEYS[i]` (`node:key`). A record that names another node (the
/// session moved) is left alone.
const REFRESH: &str = r"
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner == false or owner == ARGV[i + 1] then
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
  end
end
return #KEYS
";

/// Deletes the ownership records `KEYS` that still hold `ARGV` (this node's values).
const RELEASE: &str = r"
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('DEL', key)
  end
end
return #KEYS
";

/// Moves a session: `KEYS[1]` its ownership record, `KEYS[2]` its handover record; `ARGV[1]`
/// the record's value here, `ARGV[2]` the new owner's, `ARGV[3]` its time to live, `ARGV[4]` the
/// state, `ARGV[5]` the state's time to live. Done only if the record still names this node (or
/// has gone, with a Redis that lost its data).
const HAND_OVER: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner ~= false and owner ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// How long a room's presence record lives unless a node rewrites its entry (every 10 s).
const PRESENCE_TTL: Duration = Duration::from_secs(60);

/// For how long after a Redis lost its data (or was new) a missing ownership record is not
/// taken to mean the session has gone: long enough for every live node to have written its
/// records again (each does within about a second of reconnecting, and every 10 s anyway).
const REBUILD: Duration = Duration::from_secs(15);

/// How long a handed-over session's state waits for its new owner.
const HANDOVER_TTL: Duration = Duration::from_secs(10);

/// Connects a node to Redis; see [`RedisBackend::builder`].
#[derive(Clone)]
pub struct RedisBackendBuilder {
    url: String,
    prefix: String,
    root_certificates: Option<Vec<u8>>,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("RedisBackendBuilder")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBackendBuilder {
    /// The prefix of every key and channel, so that several applications can share one Redis.
    /// Default: `switchboard`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// With a `rediss://` URL: trust these root certificates (PEM) for the Redis server's
    /// certificate instead of the system's (a private certificate authority). Needs the `tls`
    /// feature (on by default).
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// Connects, numbers this node, subscribes to its channels and starts its liveness record.
    ///
    /// Fails if Redis cannot be reached or refuses (wrong password, no RESP3: Redis 6 or later
    /// is needed).
    pub async fn connect(self) -> Result<RedisBackend, BackendError> {
        RedisBackend::start_with(self).await
    }
}

/// A cluster backend on Redis (standalone, or a primary with replicas). Redis Cluster is not
/// supported: a publication's receiver count, which tells a dead node at once, is not reliable
/// there.
///
/// The URL is redis-rs's: `redis://[:password@]host:port[/db]`, with a user as
/// `redis://user:password@host:port`, and `rediss://…` for TLS (the `tls` feature, on by
/// default; see [`RedisBackendBuilder::tls_root_certificates`] for a private certificate
/// authority).
pub struct RedisBackend {
    shared: Arc<Shared>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("node", &self.shared.id)
            .field("prefix", &self.shared.names.prefix)
            .finish_non_exhaustive()
    }
}

/// Key and channel names of one prefix.
#[derive(Debug)]
struct Names {
    prefix: String,
    /// `P:room:`, before a room's name.
    room: String,
    /// `P:node:`, before a node's id.
    node: String,
    /// `P:all`.
    all: String,
    /// `P:membership`: joins and leaves of every node's rooms.
    membership: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            room: format!("{prefix}:room:"),
            node: format!("{prefix}:node:"),
            all: format!("{prefix}:all"),
            membership: format!("{prefix}:membership"),
        }
    }

    fn node_channel(&self, node: &str) -> String {
        format!("{}{node}", self.node)
    }

    fn room_channel(&self, room: &str) -> Vec<u8> {
        let mut channel = self.room.as_bytes().to_vec();
        channel.extend_from_slice(room.as_bytes());
        channel
    }

    fn alive(&self, node: &str) -> String {
        format!("{}:alive:{node}", self.prefix)
    }

    fn owner(&self, session: SessionRef) -> String {
        self.session_key("owner", session)
    }

    fn handover(&self, session: SessionRef) -> String {
        self.session_key("handover", session)
    }

    fn session_key(&self, kind: &str, session: SessionRef) -> String {
        let digest = Sha256::digest(session.secret_bytes());
        let mut key = format!("{}:{kind}:", self.prefix);
        for byte in &digest[..16] {
            key.push_str(&format!("{byte:02x}"));
        }
        key
    }

    fn presence(&self, room: &str) -> Vec<u8> {
        let mut key = format!("{}:presence:", self.prefix).into_bytes();
        key.extend_from_slice(room.as_bytes());
        key
    }

    /// Since when (ms since 1970) the records of an emptied Redis are being rebuilt, or 0 for a
    /// Redis the nodes met for the first time: set by the first node that finds it missing.
    fn since(&self) -> String {
        format!("{}:since", self.prefix)
    }

    fn counter(&self) -> String {
        format!("{}:counter", self.prefix)
    }

    /// The set of live nodes, scored by when their liveness runs out (ms since 1970).
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

/// The backend's metrics (`docs/deployment.md`, "Metrics"), registered with the global recorder
/// when the backend connects.
struct RedisMetrics {
    published: metrics::Counter,
    publish_errors: metrics::Counter,
    subscribes: metrics::Counter,
    unsubscribes: metrics::Counter,
    subscribe_errors: metrics::Counter,
    /// Messages received on a room's channel, the all-sessions channel and this node's own.
    received: [metrics::Counter; 4],
    errors: metrics::Counter,
    disconnects: metrics::Counter,
    reconnects: metrics::Counter,
}

impl RedisMetrics {
    fn new() -> Self {
        use metrics::{Unit, describe_counter};
        describe_counter!(
            "switchboard_redis_published_total",
            Unit::Count,
            "Publications (broadcasts to rooms and to all sessions) Redis took."
        );
        describe_counter!(
            "switchboard_redis_publish_errors_total",
            Unit::Count,
            "Publications lost: Redis unreachable, or the publication queue full."
        );
        describe_counter!(
            "switchboard_redis_subscriptions_total",
            Unit::Count,
            "Room subscriptions made and dropped, by op (subscribe, unsubscribe)."
        );
        describe_counter!(
            "switchboard_redis_subscribe_errors_total",
            Unit::Count,
            "Room subscriptions that failed (renewed when Redis is back)."
        );
        describe_counter!(
            "switchboard_redis_received_total",
            Unit::Count,
            "Messages received from Redis, by channel (room, all, node: requests and answers between nodes, membership: joins and leaves)."
        );
        describe_counter!(
            "switchboard_redis_errors_total",
            Unit::Count,
            "Commands to Redis that failed."
        );
        describe_counter!(
            "switchboard_redis_disconnects_total",
            Unit::Count,
            "Connections to Redis lost."
        );
        describe_counter!(
            "switchboard_redis_reconnects_total",
            Unit::Count,
            "Connections to Redis back, with every subscription renewed."
        );
        let channel = |channel: &'static str| metrics::counter!("switchboard_redis_received_total", "channel" => channel);
        Self {
            published: metrics::counter!("switchboard_redis_published_total"),
            publish_errors: metrics::counter!("switchboard_redis_publish_errors_total"),
            subscribes: metrics::counter!("switchboard_redis_subscriptions_total", "op" => "subscribe"),
            unsubscribes: metrics::counter!("switchboard_redis_subscriptions_total", "op" => "unsubscribe"),
            subscribe_errors: metrics::counter!("switchboard_redis_subscribe_errors_total"),
            received: [
                channel("room"),
                channel("all"),
                channel("node"),
                channel("membership"),
            ],
            errors: metrics::counter!("switchboard_redis_errors_total"),
            disconnects: metrics::counter!("switchboard_redis_disconnects_total"),
            reconnects: metrics::counter!("switchboard_redis_reconnects_total"),
        }
    }
}

/// What the push handler (which runs in redis-rs's connection task) shares with the backend.
struct Pushes {
    metrics: RedisMetrics,
    names: Arc<Names>,
    node_channel: Vec<u8>,
    deliver: OnceLock<Arc<dyn Fn(Delivery) + Send + Sync>>,
    /// The connection was lost since the last look: subscriptions and records must be redone.
    lost: AtomicBool,
    /// The connection is up and the last command to Redis succeeded: publications fail at once
    /// while it is not (set false the moment the connection drops).
    healthy: AtomicBool,
}

impl Pushes {
    fn handle(&self, push: PushInfo) {
        match push.kind {
            PushKind::Message => {
                let mut data = push.data.into_iter();
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                else {
                    return;
                };
                let Some(deliver) = self.deliver.get() else {
                    return;
                };
                let payload = Bytes::from(payload);
                let received = &self.metrics.received;
                if channel == self.node_channel {
                    received[2].increment(1);
                    deliver(Delivery::Node(payload));
                } else if channel == self.names.all.as_bytes() {
                    received[1].increment(1);
                    deliver(Delivery::All(payload));
                } else if channel == self.names.membership.as_bytes() {
                    received[3].increment(1);
                    deliver(Delivery::Presence(payload));
                } else if let Some(room) = channel.strip_prefix(self.names.room.as_bytes())
                    && let Ok(room) = std::str::from_utf8(room)
                {
                    received[0].increment(1);
                    deliver(Delivery::Room(Arc::from(room), payload));
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("connection to Redis lost");
                self.metrics.disconnects.increment(1);
                self.healthy.store(false, Ordering::SeqCst);
                self.lost.store(true, Ordering::SeqCst);
                if let Some(deliver) = self.deliver.get() {
                    deliver(Delivery::Disconnected);
                }
            }
            _ => {}
        }
    }
}

/// A presence record's entries: node id and entry.
type Entries = Vec<(String, Vec<u8>)>;

/// Work done in order by the backend's queue task.
enum Job {
    Publish(Vec<u8>, Bytes),
    Subscribe(String),
    Unsubscribe(String),
    Release(String, String),
    /// This node's presence entry of a room (empty: none).
    Presence(String, Bytes),
    Flush(oneshot::Sender<Result<(), BackendError>>),
}

struct Shared {
    id: String,
    number: u32,
    names: Arc<Names>,
    conn: ConnectionManager,
    queue: mpsc::Sender<Job>,
    pushes: Arc<Pushes>,
    /// Rooms this node is subscribed to, as the core asked (subscribed again after a lost
    /// connection).
    rooms: Mutex<HashSet<String>>,
    stopped: AtomicBool,
}

impl RedisBackend {
    /// Starts configuring a connection to the Redis at `url` (see [`RedisBackendBuilder`]).
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            prefix: "switchboard".into(),
            root_certificates: None,
        }
    }

    /// Connects to the Redis at `url` with the default prefix.
    pub async fn connect(url: impl Into<String>) -> Result<Self, BackendError> {
        Self::builder(url).connect().await
    }

    async fn start_with(builder: RedisBackendBuilder) -> Result<Self, BackendError> {
        let info = redis::IntoConnectionInfo::into_connection_info(builder.url.as_str())
            .map_err(redis_error)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let client = client(info, builder.root_certificates)?;
        let names = Arc::new(Names::new(&builder.prefix));
        let id = random_id().ok_or_else(|| BackendError::new("no random numbers for a node id"))?;
        let node_channel = names.node_channel(&id);
        let pushes = Arc::new(Pushes {
            metrics: RedisMetrics::new(),
            names: names.clone(),
            node_channel: node_channel.clone().into_bytes(),
            deliver: OnceLock::new(),
            lost: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
        });
        let handler = pushes.clone();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(move |push: PushInfo| {
                handler.handle(push);
                Ok::<(), ()>(())
            })
            .set_automatic_resubscription()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(Duration::from_millis(500));
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(redis_error)?;
        let count: u64 = conn.incr(names.counter(), 1).await.map_err(redis_error)?;
        let number = (count % (NODE_NUMBERS - 1) + 1) as u32;
        conn.subscribe(&node_channel).await.map_err(redis_error)?;
        conn.subscribe(&names.all).await.map_err(redis_error)?;
        conn.subscribe(&names.membership)
            .await
            .map_err(redis_error)?;
        let (queue, jobs) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            id,
            number,
            names,
            conn,
            queue,
            pushes,
            rooms: Mutex::new(HashSet::new()),
            stopped: AtomicBool::new(false),
        });
        shared.write_alive().await.map_err(redis_error)?;
        tokio::spawn(run_queue(Arc::downgrade(&shared), jobs));
        tokio::spawn(keep_alive(Arc::downgrade(&shared)));
        tracing::info!(node = %shared.id, number, prefix = %shared.names.prefix, "cluster node connected to Redis");
        Ok(Self { shared })
    }
}

/// The redis-rs client for `info`, with `root_certificates` trusted for TLS if given.
#[cfg(feature = "tls")]
fn client(
    info: redis::ConnectionInfo,
    root_certificates: Option<Vec<u8>>,
) -> Result<redis::Client, BackendError> {
    // rustls needs a process-wide crypto provider; the application may have installed one
    // already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match root_certificates {
        Some(root_cert) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        )
        .map_err(redis_error),
        None => redis::Client::open(info).map_err(redis_error),
    }
}

#[cfg(not(feature = "tls"))]
fn client(
    info: redis::ConnectionInfo,
    root_certificates: Option<Vec<u8>>,
) -> Result<redis::Client, BackendError> {
    if root_certificates.is_some() {
        return Err(BackendError::new(
            "TLS root certificates given, but switchboard-redis was built without its `tls` feature",
        ));
    }
    redis::Client::open(info).map_err(redis_error)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl RedisBackend {
    /// A handle on this node's connection to Redis, for the application's own data (a chat's
    /// history, say). Cheap to clone; it reconnects by itself.
    pub fn connection(&self) -> ConnectionManager {
        self.shared.conn.clone()
    }

    /// The key and channel prefix.
    pub fn prefix(&self) -> &str {
        &self.shared.names.prefix
    }
}

fn random_id() -> Option<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn redis_error(err: redis::RedisError) -> BackendError {
    BackendError::new(format!("redis: {err}"))
}

impl Shared {
    /// The value of an ownership record naming this node.
    fn owner_value(&self, key: u64) -> String {
        format!("{}:{key}", self.id)
    }

    /// Writes this node's liveness record, and its entry in the set of live nodes (scored by
    /// when it expires; expired entries are dropped on the way).
    async fn write_alive(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let now = now_ms();
        let until = now + ALIVE_TTL.as_millis() as u64;
        redis::pipe()
            .cmd("SET")
            .arg(self.names.alive(&self.id))
            .arg(1)
            .arg("PX")
            .arg(ALIVE_TTL.as_millis() as u64)
            .ignore()
            // A node back from a lost connection that finds the records gone marks them as
            // being rebuilt (see `REBUILD`); a Redis that nodes meet for the first time has
            // nothing to rebuild (0).
            .cmd("SET")
            .arg(self.names.since())
            .arg(if self.pushes.lost.load(Ordering::SeqCst) {
                now
            } else {
                0
            })
            .arg("NX")
            .ignore()
            .cmd("ZADD")
            .arg(self.names.nodes())
            .arg(until)
            .arg(&self.id)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.names.nodes())
            .arg("-inf")
            .arg(now)
            .ignore()
            .query_async(&mut conn)
            .await
    }

    fn result<T>(&self, result: redis::RedisResult<T>) -> Result<T, BackendError> {
        self.pushes.healthy.store(result.is_ok(), Ordering::SeqCst);
        if result.is_err() {
            self.pushes.metrics.errors.increment(1);
        }
        result.map_err(redis_error)
    }

    /// After a lost connection: subscribes again to this node's channels and rooms (redis-rs
    /// does it too; this also covers subscriptions that failed while Redis was away) and tells
    /// the core, which rewrites its records.
    async fn recover(&self) {
        let mut channels: Vec<Vec<u8>> = vec![
            self.pushes.node_channel.clone(),
            self.names.all.as_bytes().to_vec(),
            self.names.membership.as_bytes().to_vec(),
        ];
        if let Ok(rooms) = self.rooms.lock() {
            channels.extend(rooms.iter().map(|room| self.names.room_channel(room)));
        }
        let mut conn = self.conn.clone();
        for channel in channels {
            if let Err(err) = conn.subscribe(channel).await {
                tracing::warn!(error = %err, "subscription not renewed; trying again");
                self.pushes.lost.store(true, Ordering::SeqCst);
                return;
            }
        }
        // A Redis that lost its data numbers nodes from 1 again: keep the counter above this
        // node's number, so that nodes started from now on get numbers no live node has.
        let counter: redis::RedisResult<u64> = redis::Script::new(
            "local n = tonumber(redis.call('GET', KEYS[1]) or '0') \
             if n < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end return n",
        )
        .key(self.names.counter())
        .arg(self.number)
        .invoke_async(&mut conn)
        .await;
        if let Err(err) = counter {
            tracing::warn!(error = %err, "node counter not checked");
        }
        tracing::info!(node = %self.id, "connection to Redis back, subscriptions renewed");
        self.pushes.metrics.reconnects.increment(1);
        if let Some(deliver) = self.pushes.deliver.get() {
            deliver(Delivery::Reconnected);
        }
    }
}

/// Rewrites this node's liveness record every [`ALIVE_PERIOD`], and recovers after a lost
/// connection; stops with the backend.
async fn keep_alive(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(ALIVE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            break;
        };
        if shared.stopped.load(Ordering::SeqCst) {
            break;
        }
        let written = shared.write_alive().await;
        let ok = written.is_ok();
        shared.result(written).ok();
        if ok && shared.pushes.lost.swap(false, Ordering::SeqCst) {
            shared.recover().await;
        }
    }
}

/// Does the queued work in order: consecutive publications and releases go out as one pipeline;
/// a subscription change waits for what came before it.
///
/// It holds the backend weakly: once the backend is dropped, the queue's sender goes with it and
/// the task ends.
async fn run_queue(shared: std::sync::Weak<Shared>, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Batch {
        pipe: redis::pipe(),
        pending: 0,
        publications: 0,
        releases: Vec::new(),
        release: redis::Script::new(RELEASE),
    };
    let mut received = Vec::with_capacity(BATCH);
    while jobs.recv_many(&mut received, BATCH).await > 0 {
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let mut conn = shared.conn.clone();
        for job in received.drain(..) {
            match job {
                Job::Publish(channel, payload) => {
                    batch
                        .pipe
                        .cmd("PUBLISH")
                        .arg(channel)
                        .arg(&payload[..])
                        .ignore();
                    batch.pending += 1;
                    batch.publications += 1;
                }
                Job::Release(key, value) => batch.releases.push((key, value)),
                Job::Presence(room, entry) => {
                    let key = shared.names.presence(&room);
                    if entry.is_empty() {
                        batch.pipe.cmd("HDEL").arg(&key).arg(&shared.id).ignore();
                    } else {
                        batch
                            .pipe
                            .cmd("HSET")
                            .arg(&key)
                            .arg(&shared.id)
                            .arg(&entry[..])
                            .ignore();
                        batch
                            .pipe
                            .cmd("PEXPIRE")
                            .arg(&key)
                            .arg(PRESENCE_TTL.as_millis() as u64)
                            .ignore();
                    }
                    batch.pending += 1;
                }
                Job::Subscribe(room) => {
                    batch.send(&shared, &mut conn).await;
                    let result = conn.subscribe(shared.names.room_channel(&room)).await;
                    shared.pushes.metrics.subscribes.increment(1);
                    if let Err(err) = shared.result(result) {
                        shared.pushes.metrics.subscribe_errors.increment(1);
                        tracing::warn!(%err, "room subscription failed; renewed when Redis is back");
                        shared.pushes.lost.store(true, Ordering::SeqCst);
                    }
                }
                Job::Unsubscribe(room) => {
                    batch.send(&shared, &mut conn).await;
                    let result = conn.unsubscribe(shared.names.room_channel(&room)).await;
                    shared.pushes.metrics.unsubscribes.increment(1);
                    shared.result(result).ok();
                }
                Job::Flush(done) => {
                    batch.send(&shared, &mut conn).await;
                    let result = if shared.pushes.healthy.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err(BackendError::new("redis is unreachable"))
                    };
                    done.send(result).ok();
                }
            }
        }
        batch.send(&shared, &mut conn).await;
    }
}

/// Queued work gathered into one pipeline (publications, presence writes) and one script call
/// (releases of ownership records).
struct Batch {
    pipe: redis::Pipeline,
    /// Commands in `pipe`.
    pending: usize,
    /// Of those, publications.
    publications: u64,
    /// Ownership records to release: key and the value that names this node.
    releases: Vec<(String, String)>,
    release: redis::Script,
}

impl Batch {
    /// Sends what was gathered, and starts again empty.
    async fn send(&mut self, shared: &Shared, conn: &mut ConnectionManager) {
        if self.pending > 0 {
            let result: redis::RedisResult<()> = self.pipe.query_async(conn).await;
            let metrics = &shared.pushes.metrics;
            match shared.result(result) {
                Ok(()) => metrics.published.increment(self.publications),
                Err(err) => {
                    metrics.publish_errors.increment(self.publications);
                    tracing::warn!(%err, publications = self.pending, "publications lost: Redis did not take them");
                }
            }
            self.pipe.clear();
            self.pending = 0;
            self.publications = 0;
        }
        if !self.releases.is_empty() {
            let mut invocation = self.release.prepare_invoke();
            for (key, value) in self.releases.drain(..) {
                invocation.key(key).arg(value);
            }
            let result: redis::RedisResult<u64> = invocation.invoke_async(conn).await;
            shared.result(result).ok();
        }
    }
}

impl Backend for RedisBackend {
    fn node_id(&self) -> &str {
        &self.shared.id
    }

    fn node_number(&self) -> u32 {
        self.shared.number
    }

    fn start(&self, deliver: Arc<dyn Fn(Delivery) + Send + Sync>) {
        self.shared.pushes.deliver.set(deliver).ok();
    }

    fn publish(&self, topic: Topic<'_>, payload: Bytes) -> Result<(), BackendError> {
        if !self.shared.pushes.healthy.load(Ordering::SeqCst) {
            self.shared.pushes.metrics.publish_errors.increment(1);
            return Err(BackendError::new("redis is unreachable"));
        }
        let channel = match topic {
            Topic::Room(room) => self.shared.names.room_channel(room),
            Topic::All => self.shared.names.all.as_bytes().to_vec(),
            Topic::Presence => self.shared.names.membership.as_bytes().to_vec(),
        };
        self.shared
            .queue
            .try_send(Job::Publish(channel, payload))
            .map_err(|_| {
                self.shared.pushes.metrics.publish_errors.increment(1);
                BackendError::new("the publication queue is full")
            })
    }

    fn subscribe(&self, room: &str) {
        if let Ok(mut rooms) = self.shared.rooms.lock() {
            rooms.insert(room.to_owned());
        }
        if self
            .shared
            .queue
            .try_send(Job::Subscribe(room.to_owned()))
            .is_err()
        {
            // Renewed with the others after the next lost connection; until then the room's
            // broadcasts do not reach this node.
            tracing::warn!("room subscription not queued: the queue is full");
            self.shared.pushes.lost.store(true, Ordering::SeqCst);
        }
    }

    fn unsubscribe(&self, room: &str) {
        if let Ok(mut rooms) = self.shared.rooms.lock() {
            rooms.remove(room);
        }
        self.shared
            .queue
            .try_send(Job::Unsubscribe(room.to_owned()))
            .ok();
    }

    fn send_to_node<'a>(
        &'a self,
        node: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn.clone();
            let receivers: redis::RedisResult<u64> = conn
                .publish(self.shared.names.node_channel(node), &payload[..])
                .await;
            self.shared.result(receivers).map(|receivers| receivers > 0)
        })
    }

    fn claim(&self, session: SessionRef, key: u64) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn.clone();
            let result: redis::RedisResult<()> = redis::cmd("SET")
                .arg(self.shared.names.owner(session))
                .arg(self.shared.owner_value(key))
                .arg("PX")
                .arg(OWNER_TTL.as_millis() as u64)
                .query_async(&mut conn)
                .await;
            self.shared.result(result)
        })
    }

    fn owner(&self, session: SessionRef) -> BoxFuture<'_, Result<Option<Owner>, BackendError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn.clone();
            let read: redis::RedisResult<(Option<String>, Option<u64>)> = redis::pipe()
                .get(self.shared.names.owner(session))
                .get(self.shared.names.since())
                .query_async(&mut conn)
                .await;
            let (owner, since) = self.shared.result(read)?;
            let rebuilding = since
                .is_none_or(|since| now_ms() < since.saturating_add(REBUILD.as_millis() as u64));
            if owner.is_none() && rebuilding {
                // Redis lost its data a moment ago: the nodes are writing their records again.
                // A session without one may well live: try again shortly.
                return Err(BackendError::new(
                    "redis lost its records a moment ago; they are being written again",
                ));
            }
            Ok(owner.and_then(|value| {
                let (node, key) = value.rsplit_once(':')?;
                Some(Owner {
                    node: node.to_owned(),
                    key: key.parse().ok()?,
                })
            }))
        })
    }

    fn release(&self, session: SessionRef, key: u64) {
        // If the queue is full, the record expires by itself.
        self.shared
            .queue
            .try_send(Job::Release(
                self.shared.names.owner(session),
                self.shared.owner_value(key),
            ))
            .ok();
    }

    fn refresh(&self, sessions: Vec<(SessionRef, u64)>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let script = redis::Script::new(REFRESH);
            let mut conn = self.shared.conn.clone();
            for chunk in sessions.chunks(1000) {
                let mut invocation = script.prepare_invoke();
                invocation.arg(OWNER_TTL.as_millis() as u64);
                for (session, key) in chunk {
                    invocation
                        .key(self.shared.names.owner(*session))
                        .arg(self.shared.owner_value(*key));
                }
                let result: redis::RedisResult<u64> = invocation.invoke_async(&mut conn).await;
                self.shared.result(result)?;
            }
            Ok(())
        })
    }

    fn hand_over<'a>(
        &'a self,
        session: SessionRef,
        key: u64,
        to: &'a str,
        state: Bytes,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn.clone();
            let moved: redis::RedisResult<u64> = redis::Script::new(HAND_OVER)
                .key(self.shared.names.owner(session))
                .key(self.shared.names.handover(session))
                .arg(self.shared.owner_value(key))
                .arg(format!("{to}:{key}"))
                .arg(OWNER_TTL.as_millis() as u64)
                .arg(&state[..])
                .arg(HANDOVER_TTL.as_millis() as u64)
                .invoke_async(&mut conn)
                .await;
            self.shared.result(moved).map(|moved| moved == 1)
        })
    }

    fn take_state(
        &self,
        session: SessionRef,
    ) -> BoxFuture<'_, Result<Option<Bytes>, BackendError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn.clone();
            let state: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("GETDEL")
                .arg(self.shared.names.handover(session))
                .query_async(&mut conn)
                .await;
            self.shared
                .result(state)
                .map(|state| state.map(Bytes::from))
        })
    }

    fn live_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn.clone();
            let nodes: redis::RedisResult<Vec<String>> = conn
                .zrangebyscore(self.shared.names.nodes(), now_ms(), "+inf")
                .await;
            self.shared.result(nodes)
        })
    }

    fn node_alive<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn.clone();
            let alive: redis::RedisResult<bool> = conn.exists(self.shared.names.alive(node)).await;
            self.shared.result(alive)
        })
    }

    fn set_presence(&self, room: &str, entry: Bytes) {
        // If the queue is full, the periodic rewrite puts it right.
        self.shared
            .queue
            .try_send(Job::Presence(room.to_owned(), entry))
            .ok();
    }

    fn presence<'a>(
        &'a self,
        room: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Bytes)>, BackendError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn.clone();
            let key = self.shared.names.presence(room);
            let read: redis::RedisResult<(Entries, Vec<String>)> = redis::pipe()
                .cmd("HGETALL")
                .arg(&key)
                .cmd("ZRANGEBYSCORE")
                .arg(self.shared.names.nodes())
                .arg(now_ms())
                .arg("+inf")
                .query_async(&mut conn)
                .await;
            let (entries, alive) = self.shared.result(read)?;
            let (live, dead): (Vec<_>, Vec<_>) = entries
                .into_iter()
                .partition(|(node, _)| alive.contains(node));
            if !dead.is_empty() {
                // A dead node's members: gone. Removed here, by whoever reads first.
                let mut hdel = redis::cmd("HDEL");
                hdel.arg(&key);
                for (node, _) in &dead {
                    hdel.arg(node);
                }
                let _: redis::RedisResult<()> = hdel.query_async(&mut conn).await;
            }
            Ok(live
                .into_iter()
                .map(|(node, entry)| (node, Bytes::from(entry)))
                .collect())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let (done, flushed) = oneshot::channel();
            self.shared
                .queue
                .send(Job::Flush(done))
                .await
                .map_err(|_| BackendError::new("the backend has stopped"))?;
            flushed
                .await
                .map_err(|_| BackendError::new("the backend has stopped"))?
        })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.shared.stopped.swap(true, Ordering::SeqCst) {
                return;
            }
            self.flush().await.ok();
            let mut conn = self.shared.conn.clone();
            conn.unsubscribe(&self.shared.pushes.node_channel)
                .await
                .ok();
            conn.unsubscribe(&self.shared.names.all).await.ok();
            conn.unsubscribe(&self.shared.names.membership).await.ok();
            let rooms: Vec<String> = self
                .shared
                .rooms
                .lock()
                .map(|rooms| rooms.iter().cloned().collect())
                .unwrap_or_default();
            for room in rooms {
                conn.unsubscribe(self.shared.names.room_channel(&room))
                    .await
                    .ok();
            }
            let _: redis::RedisResult<()> = redis::pipe()
                .del(self.shared.names.alive(&self.shared.id))
                .ignore()
                .zrem(self.shared.names.nodes(), &self.shared.id)
                .ignore()
                .query_async(&mut conn)
                .await;
            tracing::info!(node = %self.shared.id, "cluster node left");
        })
    }
}
