//! Scenario 7, `memory` (issue 11, "Memory goes back"): what the server's RSS does after a burst
//! of slow consumers has ended, for each allocator, side by side in one run.
//!
//! For each [`Variant`] (a server binary and its environment) a fresh server is started and:
//!
//! 1. its RSS is read once it has settled after start-up (the **baseline**);
//! 2. N slow-consumer WebSocket sessions are opened. Each sends itself `e|…` messages of
//!    [`Plan::memory_payload`] bytes, which the server echoes into the session's own buffer (one
//!    encoding per session, so the memory is per session, unlike a broadcast's shared one). The
//!    client reads its socket but never acknowledges, so the server keeps every echo: each session
//!    is filled to about 90 % of the default `max_buffered_bytes` (8 MiB), and RSS is sampled every
//!    100 ms meanwhile (the **peak**);
//! 3. each session then sends as many messages again, which overflows its buffer: the server
//!    closes it (`overflow`) and frees it. The moment the last client saw its close is "ended";
//!    RSS is then sampled every 250 ms for the last of [`Plan::memory_samples`] seconds;
//! 4. a second fresh server of the same variant runs the fan-out of scenario 2, for a throughput
//!    figure (deliveries/s, server CPU per delivery), so that a choice is not bought with a
//!    slowdown.
//!
//! Every loop is bounded in count and time; servers and clients bind 127.0.0.1.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::Error;
use crate::proto::{self, Incoming};
use crate::report::Table;
use crate::scenarios::{self, Plan, Problems};
use crate::server::{Kind, Server};

/// The default `max_buffered_bytes` of a session (`Builder::max_buffered_bytes`), which every
/// variant runs with.
pub const SESSION_LIMIT: usize = 8 * 1024 * 1024;

/// One allocator set-up: a server binary and what its environment adds.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// Column name.
    pub label: &'static str,
    /// The binary (next to `load`).
    pub binary: &'static str,
    /// Added to the server's environment.
    pub env: &'static [(&'static str, &'static str)],
}

/// The set-ups measured, in column order (`load --only memory --alloc a,b` picks some by label).
pub const VARIANTS: [Variant; 9] = [
    Variant {
        label: "glibc",
        binary: "sb_server_system",
        env: &[],
    },
    Variant {
        label: "glibc-arena2",
        binary: "sb_server_system",
        env: &[("MALLOC_ARENA_MAX", "2")],
    },
    Variant {
        label: "glibc-tuned",
        binary: "sb_server_system",
        env: &[
            ("MALLOC_ARENA_MAX", "2"),
            ("MALLOC_TRIM_THRESHOLD_", "131072"),
            ("MALLOC_TOP_PAD_", "0"),
        ],
    },
    Variant {
        label: "mimalloc",
        binary: "sb_server_mimalloc",
        env: &[],
    },
    Variant {
        label: "mimalloc-purge0",
        binary: "sb_server_mimalloc",
        env: &[("MIMALLOC_PURGE_DELAY", "0")],
    },
    Variant {
        label: "jemalloc",
        binary: "sb_server_jemalloc",
        env: &[("_RJEM_MALLOC_CONF", "background_thread:false")],
    },
    Variant {
        label: "jemalloc-bg",
        binary: "sb_server_jemalloc",
        env: &[("_RJEM_MALLOC_CONF", "background_thread:true")],
    },
    Variant {
        label: "jemalloc-bg-1s",
        binary: "sb_server_jemalloc",
        env: &[(
            "_RJEM_MALLOC_CONF",
            "background_thread:true,dirty_decay_ms:1000",
        )],
    },
    Variant {
        label: "sb_server",
        binary: "sb_server",
        env: &[],
    },
];

/// What one variant measured.
#[derive(Debug, Clone, Default)]
struct Memory {
    baseline: u64,
    peak: u64,
    /// RSS at each of the plan's sample times, in order.
    samples: Vec<u64>,
    /// Seconds after the end until RSS was at most baseline + 25 % of the rise, if it got there.
    returned: Option<f64>,
    fill_secs: f64,
    end_secs: f64,
}

/// Scenario 7: RSS after slow consumers end, one column per allocator set-up.
pub async fn memory(plan: &Plan, problems: &mut Problems, only: Option<&[String]>) -> Table {
    let variants: Vec<Variant> = VARIANTS
        .into_iter()
        .filter(|v| only.is_none_or(|o| o.iter().any(|l| l == v.label)))
        .collect();
    let n = plan.memory_sessions;
    let labels: Vec<&str> = variants.iter().map(|v| v.label).collect();
    let mut t = Table::new(
        "memory",
        &format!(
            "7. memory after slow consumers end: {n} WebSocket sessions each filled to ~90 % of its 8 MiB buffer, then overflowed"
        ),
        &labels,
    );
    // the columns are alternatives, not a reference and its rivals
    t.ratios = false;
    let mut mem = Vec::new();
    let mut fan = Vec::new();
    for v in &variants {
        eprintln!("[memory] {}: {n} slow consumers", v.label);
        let run = memory_one(plan, v).await;
        mem.push(problems.keep(format!("memory {}", v.label), run));
        eprintln!("[memory] {}: fan-out", v.label);
        let run = match Server::start_binary(Kind::Switchboard, v.binary, &[], v.env).await {
            Ok(server) => {
                scenarios::fanout_on(
                    server,
                    plan.fanout_clients,
                    plan.fanout_messages,
                    plan.phase_limit(),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let r = problems.keep(format!("memory fan-out {}", v.label), run);
        if let Some(r) = &r
            && r.lost + r.dups > 0
        {
            problems.add(format!(
                "memory fan-out {}: {} lost, {} duplicate deliveries",
                v.label, r.lost, r.dups
            ));
        }
        fan.push(r);
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let col =
        |f: &dyn Fn(&Memory) -> Option<f64>| mem.iter().map(|m| m.as_ref().and_then(f)).collect();
    t.row(
        "baseline RSS after start-up",
        "MiB",
        1,
        col(&|m| Some(mib(m.baseline))),
    );
    t.row("peak RSS", "MiB", 1, col(&|m| Some(mib(m.peak))));
    for (i, s) in plan.memory_samples.iter().enumerate() {
        t.row(
            &format!("RSS {s} s after the last session ended"),
            "MiB",
            1,
            col(&|m| m.samples.get(i).map(|&b| mib(b))),
        );
    }
    t.row(
        "time to baseline + 25 % of the rise",
        "s",
        2,
        col(&|m| m.returned),
    );
    t.row("fill time", "s", 2, col(&|m| Some(m.fill_secs)));
    t.row(
        "overflow to last session ended",
        "s",
        2,
        col(&|m| Some(m.end_secs)),
    );
    let fcol =
        |f: &dyn Fn(&scenarios::FanOut) -> f64| fan.iter().map(|r| r.as_ref().map(f)).collect();
    t.row(
        &format!(
            "fan-out deliveries/s ({} clients x {} broadcasts)",
            plan.fanout_clients, plan.fanout_messages
        ),
        "msg/s",
        0,
        fcol(&|r| r.rate),
    );
    t.row(
        "fan-out server CPU per 1M deliveries",
        "s",
        2,
        fcol(&|r| r.cpu_per_m),
    );
    t.note(format!(
        "each session echoes {} B messages to itself and never acknowledges; default limits (8 MiB, 8,192 messages per session); '-' in the time row: RSS did not get there within {} s.",
        plan.memory_payload,
        plan.memory_samples.last().copied().unwrap_or(0)
    ));
    for v in &variants {
        let env: Vec<String> = v.env.iter().map(|(k, val)| format!("{k}={val}")).collect();
        let env = if env.is_empty() {
            "no environment".to_string()
        } else {
            env.join(" ")
        };
        t.note(format!("{}: {} ({env})", v.label, v.binary));
    }
    t
}

async fn memory_one(plan: &Plan, v: &Variant) -> Result<Memory, Error> {
    let limit = plan.phase_limit();
    let server = Server::start_binary(Kind::Switchboard, v.binary, &[], v.env).await?;
    let port = server.port();
    sleep(plan.settle).await;
    let baseline = server.rss()?;

    let n = plan.memory_sessions;
    let payload: Arc<str> =
        format!("e|{}", "x".repeat(plan.memory_payload.saturating_sub(2))).into();
    let per_message = proto::encode(Kind::Switchboard, 1, &payload).len();
    let fill = (SESSION_LIMIT * 9 / 10 / per_message) as u64;
    let filled = Arc::new(AtomicU64::new(0));
    let (go, go_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let consumer = SlowConsumer {
            port,
            index: i,
            fill,
            payload: payload.clone(),
            filled: filled.clone(),
            go: go_rx.clone(),
            limit,
        };
        set.spawn(consumer.run());
    }
    let mut peak = baseline;
    let deadline = Instant::now() + limit;
    while filled.load(Ordering::Relaxed) < n as u64 {
        if Instant::now() > deadline || set.len() < n {
            let _ = go.send(true);
            set.abort_all();
            return Err(format!(
                "only {} of {n} sessions filled in time",
                filled.load(Ordering::Relaxed)
            )
            .into());
        }
        peak = peak.max(server.rss()?);
        sleep(Duration::from_millis(100)).await;
    }
    let fill_secs = started.elapsed().as_secs_f64();
    peak = peak.max(server.rss()?);

    let overflow_at = Instant::now();
    let _ = go.send(true);
    let mut last_end = overflow_at;
    let mut failed = 0;
    while let Some(ended) = set.join_next().await {
        match ended {
            Ok(Ok(at)) => last_end = last_end.max(at),
            _ => failed += 1,
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of {n} sessions did not end by overflow").into());
    }
    let end_secs = last_end.duration_since(overflow_at).as_secs_f64();

    let rise = peak.saturating_sub(baseline);
    let bound = baseline + rise / 4;
    let mut returned = None;
    let mut samples = Vec::new();
    let mut wanted = plan.memory_samples.iter().copied().peekable();
    let last = plan.memory_samples.last().copied().unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let since = last_end.elapsed();
        let rss = server.rss()?;
        if returned.is_none() && rss <= bound {
            returned = Some(since.as_secs_f64());
        }
        while wanted
            .peek()
            .is_some_and(|&s| since + Duration::from_millis(125) >= Duration::from_secs(s))
        {
            samples.push(rss);
            wanted.next();
        }
        if wanted.peek().is_none() || since > Duration::from_secs(last + 5) {
            break;
        }
    }
    server.stop().await;
    Ok(Memory {
        baseline,
        peak,
        samples,
        returned,
        fill_secs,
        end_secs,
    })
}

/// One slow consumer: a Switchboard WebSocket session that echoes messages to itself, reads what
/// the server writes but never acknowledges it.
struct SlowConsumer {
    port: u16,
    index: usize,
    /// Echoes to fill the session with before `go`.
    fill: u64,
    payload: Arc<str>,
    /// Counts the consumers that have received all `fill` echoes.
    filled: Arc<AtomicU64>,
    /// Turns true when every session is filled: then send as many again, to overflow.
    go: watch::Receiver<bool>,
    limit: Duration,
}

impl SlowConsumer {
    /// Runs the session to its overflow; returns when the client saw the session end.
    async fn run(self) -> Result<Instant, Error> {
        let SlowConsumer {
            port,
            index,
            fill,
            payload,
            filled,
            mut go,
            limit,
        } = self;
        let stream = proto::tcp_connect(proto::source_addr(index), port).await?;
        let url = format!("ws://127.0.0.1:{port}/rt/ws?v=1&batch=1");
        let (ws, _) = timeout(
            Duration::from_secs(30),
            tokio_tungstenite::client_async(url, stream),
        )
        .await
        .map_err(|_| "connect timed out")??;
        let (mut sink, mut stream) = ws.split();
        let reader = async move {
            let mut got = 0u64;
            let mut pending = VecDeque::new();
            while let Some(frame) = stream.next().await {
                let Ok(WsMessage::Text(text)) = frame else {
                    break;
                };
                proto::decode_message(Kind::Switchboard, text.as_str(), &mut pending);
                for incoming in pending.drain(..) {
                    match incoming {
                        Incoming::Msg { .. } => {
                            got += 1;
                            if got == fill {
                                filled.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Incoming::Closed => return Instant::now(),
                        _ => {}
                    }
                }
            }
            Instant::now()
        };
        // Sends `fill` echoes, waits for `go`, sends as many again. A failed write means the
        // server has closed the session (or the socket): the reader sees that and ends.
        let writer = async move {
            let mut seq = 1;
            'rounds: for round in 0..2 {
                if round == 1 && go.wait_for(|go| *go).await.is_err() {
                    break;
                }
                for _ in 0..fill {
                    let frame = proto::encode(Kind::Switchboard, seq, &payload);
                    seq += 1;
                    if sink.feed(WsMessage::text(frame)).await.is_err() {
                        break 'rounds;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            // keep the socket open until the reader saw the end
            std::future::pending::<()>().await;
            sink
        };
        let ended = timeout(limit, async {
            tokio::select! {
                ended = reader => ended,
                _ = writer => Instant::now(),
            }
        })
        .await
        .map_err(|_| "the session did not end in time")?;
        Ok(ended)
    }
}
