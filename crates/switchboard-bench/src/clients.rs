//! Client tasks shared by the scenarios: many WebSocket clients of any [`Kind`], Switchboard
//! long-polling clients, and the counters they report into.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use switchboard_client::ServerFrame;
use switchboard_client::raw::Http;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::Error;
use crate::payload::{self, Parsed};
use crate::proto::{self, Driver, SOURCE_ADDRS};
use crate::server::Kind;
use crate::stats::{Latencies, Recorder};

/// Handshakes in flight at once while opening many connections.
pub const CONNECT_CONCURRENCY: usize = 128;

/// Counters every client task of one scenario run reports into.
#[derive(Debug, Default)]
pub struct Shared {
    /// Delivery latencies (broadcasts and echoes).
    pub lat: Latencies,
    /// Measured broadcasts delivered (first delivery of each index per client).
    pub deliveries: AtomicU64,
    /// Echo answers received.
    pub echoes: AtomicU64,
    /// Clients that received a warm-up broadcast.
    pub warmed: AtomicU64,
    /// Time of the last delivery, ns since the payload epoch.
    pub last_ns: AtomicU64,
    /// Broadcasts delivered again to the application (same index twice).
    pub app_dups: AtomicU64,
    /// Broadcasts that arrived before an earlier index (reordering; after a lost message, every
    /// later one counts here too).
    pub out_of_order: AtomicU64,
    /// Broadcasts that arrived after a higher index had (overtaken: reordering proper, which a
    /// lost message does not inflate).
    pub late: AtomicU64,
    /// Measured broadcasts whose text after the header was not what the sender wrote
    /// ([`payload::tail_intact`]).
    pub garbled: AtomicU64,
    /// Switchboard frames dropped by sequence-number dedup (redelivered after resume).
    pub dup_frames: AtomicU64,
    /// Switchboard sequence gaps (must be 0).
    pub seq_gaps: AtomicU64,
    /// HTTP GET polls issued (after the client's warm-up).
    pub gets: AtomicU64,
    /// Errors seen by client tasks (failed polls, failed resumes, socket errors).
    pub errors: AtomicU64,
    /// Reconnect storm: index of the last broadcast sent before the drop.
    pub k_drop: AtomicU64,
    /// Reconnect storm: clients resumed on a new socket.
    pub resumed: AtomicU64,
    /// Reconnect storm: time the last client resumed (ns since epoch).
    pub resumed_last_ns: AtomicU64,
    /// Reconnect storm: clients that resumed and hold every broadcast up to `k_drop`.
    pub caught_up: AtomicU64,
    /// Reconnect storm: time the last client caught up (ns since epoch).
    pub caught_up_last_ns: AtomicU64,
}

/// Per-client bookkeeping of broadcast indices (indices start at 1). Out-of-order arrival is
/// allowed (socketioxide reorders bursts); a second arrival of an index is a duplicate.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Bit `i` set: index `i` received.
    seen: Vec<u64>,
    /// Lowest index not received yet (everything below it arrived).
    next_idx: u64,
    /// Highest index received.
    max_idx: u64,
    warmed: bool,
    rec: Recorder,
}

impl Tracker {
    pub(crate) fn new(shared: &Shared) -> Tracker {
        Tracker {
            seen: Vec::new(),
            next_idx: 1,
            max_idx: 0,
            warmed: false,
            rec: shared.lat.recorder(),
        }
    }

    /// Merges the latencies recorded so far into the shared histogram.
    pub(crate) fn flush(&mut self) {
        self.rec.flush();
    }

    /// Marks `idx` received; false if it already was.
    fn mark(&mut self, idx: u64) -> bool {
        let (word, bit) = ((idx / 64) as usize, idx % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        let Some(w) = self.seen.get_mut(word) else {
            return false;
        };
        if *w & (1 << bit) != 0 {
            return false;
        }
        *w |= 1 << bit;
        while self
            .seen
            .get((self.next_idx / 64) as usize)
            .is_some_and(|w| w & (1 << (self.next_idx % 64)) != 0)
        {
            self.next_idx += 1;
        }
        true
    }

    /// Accounts for one received payload; true for a new measured broadcast.
    pub(crate) fn on_payload(&mut self, shared: &Shared, p: &str) -> bool {
        match payload::parse(p) {
            Parsed::Warmup => {
                if !self.warmed {
                    self.warmed = true;
                    shared.warmed.fetch_add(1, Ordering::Relaxed);
                }
                false
            }
            Parsed::Measured {
                kind: 'e', ts_ns, ..
            } => {
                let now = payload::now_ns();
                self.rec.record_ns(now.saturating_sub(ts_ns));
                shared.echoes.fetch_add(1, Ordering::Relaxed);
                shared.last_ns.fetch_max(now, Ordering::Relaxed);
                false
            }
            Parsed::Measured { ts_ns, idx, .. } => {
                // indices are bounded by what the harness sends; refuse absurd ones
                if idx == 0 || idx > 1 << 24 {
                    return false;
                }
                if idx < self.next_idx || !self.mark(idx) {
                    shared.app_dups.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                if idx >= self.next_idx {
                    // arrived before an earlier index
                    shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                if idx < self.max_idx {
                    shared.late.fetch_add(1, Ordering::Relaxed);
                }
                self.max_idx = self.max_idx.max(idx);
                if !payload::tail_intact(p) {
                    shared.garbled.fetch_add(1, Ordering::Relaxed);
                }
                let now = payload::now_ns();
                self.rec.record_ns(now.saturating_sub(ts_ns));
                shared.deliveries.fetch_add(1, Ordering::Relaxed);
                shared.last_ns.fetch_max(now, Ordering::Relaxed);
                true
            }
            Parsed::Unknown => false,
        }
    }
}

/// What a WebSocket client task is told to send.
#[derive(Debug)]
pub enum Cmd {
    /// Broadcasts `count` messages with indices `first..first+count`, timestamped when written.
    Burst {
        /// First index.
        first: u64,
        /// How many.
        count: u64,
    },
    /// Sends this payload as is.
    Raw(String),
}

/// Options of one WebSocket client task.
#[derive(Debug, Clone)]
pub struct WsRole {
    /// The server's port (to resume on).
    pub port: u16,
    /// Counts its deliveries and warm-ups into [`Shared`] (false for a dedicated sender).
    pub counted: bool,
    /// Reconnect storm: drop the socket abruptly when this flips to true, then resume.
    pub storm: Option<watch::Receiver<bool>>,
}

impl WsRole {
    /// A client whose deliveries are counted.
    pub fn counted(port: u16) -> WsRole {
        WsRole {
            port,
            counted: true,
            storm: None,
        }
    }

    /// A client whose deliveries are not counted (a dedicated sender, an idle session).
    pub fn uncounted(port: u16) -> WsRole {
        WsRole {
            port,
            counted: false,
            storm: None,
        }
    }

    /// A counted client that drops its socket and resumes when `storm` flips to true.
    pub fn storm(port: u16, storm: watch::Receiver<bool>) -> WsRole {
        WsRole {
            port,
            counted: true,
            storm: Some(storm),
        }
    }
}

/// Opens `n` WebSocket clients of `kind` (client `i` from [`proto::source_addr`]`(i)`).
/// Returns the connected drivers (with their index) and the number that failed.
pub async fn connect_many(kind: Kind, port: u16, n: usize) -> (Vec<(usize, Driver)>, usize) {
    connect_spread(kind, &[port], n).await
}

/// Like [`connect_many`], with client `i` on `ports[i % ports.len()]` (the nodes of a cluster).
pub async fn connect_spread(kind: Kind, ports: &[u16], n: usize) -> (Vec<(usize, Driver)>, usize) {
    if ports.is_empty() {
        return (Vec::new(), n);
    }
    let results: Vec<(usize, Result<Driver, Error>)> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let port = ports.get(i % ports.len()).copied().unwrap_or_default();
            let mut last = Err(Error::from("not tried"));
            for attempt in 0..3u64 {
                last = Driver::connect(kind, port, proto::source_addr(i)).await;
                if last.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            }
            (i, last)
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let mut ok = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_err = None;
    for (i, r) in results {
        match r {
            Ok(d) => ok.push((i, d)),
            Err(e) => {
                failed += 1;
                first_err.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = first_err {
        eprintln!("  {failed} of {n} {kind} connections failed; first error: {e}");
    }
    (ok, failed)
}

/// Spawns one WebSocket client task into `set`. It runs until `stop` flips to true or its
/// connection ends, receiving (and accounting for) payloads and executing `cmds`.
pub fn spawn_ws(
    set: &mut JoinSet<()>,
    driver: Driver,
    index: usize,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    cmds: Option<mpsc::UnboundedReceiver<Cmd>>,
    role: WsRole,
) {
    set.spawn(ws_client(driver, index, shared, stop, cmds, role));
}

/// What woke a client task.
enum Wake {
    Stop,
    Storm,
    Cmd(Option<Cmd>),
    Recv(Result<Option<String>, Error>),
}

async fn ws_client(
    mut d: Driver,
    index: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut cmds: Option<mpsc::UnboundedReceiver<Cmd>>,
    mut role: WsRole,
) {
    let mut tracker = Tracker::new(&shared);
    let mut burst: Option<(u64, u64)> = None; // (next index, remaining)
    let mut resumed = false;
    let mut caught_up = false;
    loop {
        if *stop.borrow() {
            break;
        }
        if let Some((next, remaining)) = burst {
            // write one chunk, then give reads a turn
            let chunk = remaining.min(32);
            let batch: Vec<String> = (next..next + chunk)
                .map(|i| payload::make('b', payload::now_ns(), i))
                .collect();
            if d.send(&batch).await.is_err() {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            burst = (remaining > chunk).then_some((next + chunk, remaining - chunk));
        }
        let storm_armed = role.storm.is_some() && !resumed;
        let wake = tokio::select! {
            r = stop.changed() => match r { Ok(()) => Wake::Stop, Err(_) => Wake::Stop },
            r = async {
                match role.storm.as_mut() {
                    Some(s) => s.wait_for(|v| *v).await.map(|_| ()),
                    None => std::future::pending().await,
                }
            }, if storm_armed => match r { Ok(()) => Wake::Storm, Err(_) => Wake::Stop },
            c = async {
                match cmds.as_mut() {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            }, if burst.is_none() && cmds.is_some() => Wake::Cmd(c),
            r = d.recv() => Wake::Recv(r),
            () = std::future::ready(()), if burst.is_some() => continue,
        };
        match wake {
            Wake::Stop => break,
            Wake::Cmd(None) => cmds = None,
            Wake::Cmd(Some(Cmd::Burst { first, count })) => burst = Some((first, count)),
            Wake::Cmd(Some(Cmd::Raw(p))) => {
                let mut batch = vec![p];
                if let Some(c) = cmds.as_mut() {
                    while batch.len() < 64 {
                        match c.try_recv() {
                            Ok(Cmd::Raw(p)) => batch.push(p),
                            Ok(Cmd::Burst { first, count }) => {
                                burst = Some((first, count));
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                if d.send(&batch).await.is_err() {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            Wake::Recv(Ok(Some(p))) => {
                if role.counted {
                    let _ = tracker.on_payload(&shared, &p);
                    if resumed && !caught_up {
                        caught_up = check_caught_up(&shared, &tracker);
                    }
                }
            }
            Wake::Recv(Ok(None)) | Wake::Recv(Err(_)) => {
                if !*stop.borrow() {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            Wake::Storm => {
                let kind = d.kind();
                let Some(sid) = d.opened.as_ref().map(|o| o.sid.clone()) else {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                };
                let rx = d.rx;
                shared
                    .dup_frames
                    .fetch_add(d.stats.dup_frames, Ordering::Relaxed);
                shared.seq_gaps.fetch_add(d.stats.gaps, Ordering::Relaxed);
                d.drop_abruptly();
                match resume(kind, role.port, index, &sid, rx).await {
                    Ok(new) => d = new,
                    Err(e) => {
                        eprintln!("  resume of client {index} failed: {e}");
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                resumed = true;
                shared.resumed.fetch_add(1, Ordering::Relaxed);
                shared
                    .resumed_last_ns
                    .fetch_max(payload::now_ns(), Ordering::Relaxed);
                caught_up = check_caught_up(&shared, &tracker);
            }
        }
    }
    shared
        .dup_frames
        .fetch_add(d.stats.dup_frames, Ordering::Relaxed);
    shared.seq_gaps.fetch_add(d.stats.gaps, Ordering::Relaxed);
    tracker.rec.flush();
    drop(d);
}

/// Marks the client caught up if it holds every broadcast up to `k_drop`.
fn check_caught_up(shared: &Shared, tracker: &Tracker) -> bool {
    let k = shared.k_drop.load(Ordering::Relaxed);
    if tracker.next_idx > k {
        shared.caught_up.fetch_add(1, Ordering::Relaxed);
        shared
            .caught_up_last_ns
            .fetch_max(payload::now_ns(), Ordering::Relaxed);
        true
    } else {
        false
    }
}

/// Resumes Switchboard session `sid` from `rx`, retrying for up to 10 s.
async fn resume(kind: Kind, port: u16, index: usize, sid: &str, rx: u64) -> Result<Driver, Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Driver::connect_resume(kind, port, proto::source_addr(index), Some((sid, rx))).await {
            Ok(d) if d.opened.as_ref().is_some_and(|o| o.resumed) => return Ok(d),
            Ok(_) => return Err("server opened a new session instead of resuming".into()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `reqwest` clients bound to each loopback source address, for polling clients.
pub fn http_clients() -> Result<Vec<reqwest::Client>, Error> {
    (0..usize::from(SOURCE_ADDRS))
        .map(|i| {
            let src: Ipv4Addr = proto::source_addr(i);
            reqwest::Client::builder()
                .local_address(IpAddr::V4(src))
                .no_proxy()
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
                .map_err(Error::from)
        })
        .collect()
}

/// Spawns one Server-Sent Events client (protocol §5.7) that opens a session with `GET url`
/// (`.../sse?v=1`), reads up to the end of the first event (the open frame), counts it in
/// `opened`, and then holds the stream (reading what comes, the 15 s heartbeats) until `stop`.
/// A refused or broken stream counts in `errors`.
pub fn spawn_sse_holder(
    set: &mut JoinSet<()>,
    http: reqwest::Client,
    url: String,
    opened: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    set.spawn(async move {
        let response = tokio::select! {
            _ = stop.changed() => return,
            r = http.get(&url).send() => r,
        };
        let mut response = match response {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                eprintln!("  SSE open refused: {}", r.status());
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                eprintln!("  SSE open failed: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let mut head = Vec::new();
        let mut counted = false;
        loop {
            let chunk = tokio::select! {
                _ = stop.changed() => break,
                c = response.chunk() => c,
            };
            match chunk {
                Ok(Some(bytes)) => {
                    if !counted {
                        head.extend_from_slice(&bytes);
                        if head.windows(6).any(|w| w == b"data: ") && head.ends_with(b"\n\n") {
                            counted = true;
                            head = Vec::new();
                            opened.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    if !counted {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
    });
}

/// How a polling client receives (protocol §5.2–5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Long polling: `wait=1`, the next poll as soon as an answer arrives.
    Long,
    /// Short polling: `wait=0`, answered at once; the next poll this long after an answer (the
    /// JavaScript client's `pollInterval`).
    Short(Duration),
}

/// Spawns one Switchboard polling client: opens a session over HTTP, then polls in `mode`
/// (acknowledging what it received) until `stop`, or until it has `expected` measured
/// broadcasts (when `expected > 0`). `opened` counts sessions opened.
pub fn spawn_poller(
    set: &mut JoinSet<()>,
    http: Http,
    mode: PollMode,
    shared: Arc<Shared>,
    opened: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    expected: u64,
) {
    set.spawn(async move {
        let sid = match http.open(None).await {
            Ok(o) => o.sid,
            Err(e) => {
                eprintln!("  long-poll open failed: {e}");
                shared.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let mut tracker = Tracker::new(&shared);
        let mut rx = 0u64;
        let mut got = 0u64;
        let mut failures = 0u32;
        loop {
            if *stop.borrow() || (expected > 0 && got >= expected) {
                break;
            }
            if tracker.warmed {
                shared.gets.fetch_add(1, Ordering::Relaxed);
            }
            let frames = tokio::select! {
                _ = stop.changed() => break,
                r = http.poll(&sid, rx, mode == PollMode::Long) => r,
            };
            let frames = match frames {
                Ok(f) => f,
                Err(_) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    if failures > 20 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            for f in frames {
                match f {
                    ServerFrame::Msg { seq, message } => {
                        if seq <= rx {
                            shared.dup_frames.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if seq > rx + 1 {
                            shared.seq_gaps.fetch_add(1, Ordering::Relaxed);
                        }
                        rx = seq;
                        if let Some(text) = message.as_text()
                            && tracker.on_payload(&shared, text)
                        {
                            got += 1;
                        }
                    }
                    ServerFrame::Close { .. } => return,
                    _ => {}
                }
            }
            if let PollMode::Short(interval) = mode {
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(interval) => {}
                }
            }
        }
        tracker.rec.flush();
    });
}

/// Sends `stop`, then waits up to 10 s for every task of `set` and aborts the rest.
pub async fn stop_all(stop: &watch::Sender<bool>, set: &mut JoinSet<()>) {
    let _ = stop.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
}

/// Sends warm-up broadcasts through `sender` every 250 ms until `n` clients received one or
/// `timeout` passed. Returns whether all did.
pub async fn warm_up(
    sender: &mpsc::UnboundedSender<Cmd>,
    shared: &Shared,
    n: u64,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut k = 0u64;
    while tokio::time::Instant::now() < deadline {
        k += 1;
        if sender.send(Cmd::Raw(payload::make('w', 0, k))).is_err() {
            return false;
        }
        for _ in 0..25 {
            if shared.warmed.load(Ordering::Relaxed) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    shared.warmed.load(Ordering::Relaxed) >= n
}
