//! The chat gives memory back after a burst (issue 11, item 5, "Memory goes back"): a crowd of
//! slow consumers fills the chat process with buffered lines, leaves, and the process's resident
//! memory falls back near where it started, within a bound (`docs/deployment.md`, "Sizing
//! memory"). With glibc's malloc it stays near the peak.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard_client::raw::Http;
use switchboard_client::{ClientFrame, Message, ServerFrame};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Slow consumers, each in a room of its own (so that the lines it buffers are its own, not
/// shared encodings).
const SESSIONS: usize = 16;
/// Lines each one says in its room and never fetches before the peak is measured: 1.5 KB of text
/// each, about 1.6 KB as buffered, so about 90 % of the default 8 MiB buffer limit.
const FILL: usize = 4_800;
/// Most lines said in all (the session overflows long before).
const MOST: usize = 6_400;
/// Lines per POST.
const PER_POST: usize = 32;
/// How long the memory may take to come back.
const RETURN_WITHIN: Duration = Duration::from_secs(60);

/// The chat, a process of its own.
struct Chat {
    child: Child,
    addr: SocketAddr,
}

impl Chat {
    async fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
            // Every consumer here connects from 127.0.0.1: trusting it as a proxy lets each give
            // its own address, so that the chat's limit of rooms per client (each consumer has
            // a room of its own) counts each on its own.
            .args(["--addr", "127.0.0.1:0", "--trusted-proxy", "127.0.0.1"])
            .env("RUST_LOG", "warn,chat=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(at) = line.find("chat on http://") {
                    let rest = &line[at + "chat on http://".len()..];
                    let addr: String = rest
                        .chars()
                        .take_while(|c| *c != ',' && !c.is_whitespace())
                        .collect();
                    return addr.parse::<SocketAddr>().unwrap();
                }
            }
            panic!("the chat exited before it listened");
        })
        .await
        .expect("the chat did not start within 30 s");
        // Keep reading, so that the chat never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, addr }
    }

    /// Resident set size in bytes (`VmRSS` of `/proc/<pid>/status`).
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: u64 = line
            .trim_start_matches("VmRSS:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib * 1024
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A long-polling session that never polls (so never acknowledges), in a room of its own.
struct SlowConsumer {
    http: Http,
    sid: String,
    seq: u64,
    said: usize,
}

impl SlowConsumer {
    async fn open(http: Http, i: usize) -> Self {
        let open = http
            .open(Some(&json!({ "nick": format!("slow{i}") })))
            .await
            .unwrap();
        let join = Message::json(json!({ "room": format!("slow-{i}") })).with_event("join");
        http.post(&open.sid, &[ClientFrame::msg(1, join)])
            .await
            .unwrap();
        Self {
            http,
            sid: open.sid,
            seq: 2,
            said: 0,
        }
    }

    /// Says lines in its room, which the chat buffers for it, until it has said `until` or the
    /// chat closed the session; returns whether it is closed (and with which code).
    async fn say_until(&mut self, until: usize) -> Option<u16> {
        // 500 characters (the chat's limit) of three bytes each
        let text = "가".repeat(500);
        while self.said < until {
            let frames: Vec<ClientFrame> = (0..PER_POST)
                .map(|k| {
                    let say = Message::json(json!({ "text": text })).with_event("say");
                    ClientFrame::msg(self.seq + k as u64, say)
                })
                .collect();
            self.seq += PER_POST as u64;
            self.said += PER_POST;
            let answer = self.http.post(&self.sid, &frames).await.unwrap();
            if let Some(code) = answer.iter().find_map(|f| match f {
                ServerFrame::Close { code, .. } => Some(*code),
                _ => None,
            }) {
                return Some(code);
            }
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_after_a_burst_of_slow_consumers_ends() {
    let chat = Chat::start().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = chat.rss();
    println!("baseline RSS {:.1} MiB", mib(baseline));

    let http = Http::new(&format!("http://{}/realtime", chat.addr));
    let filling = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..SESSIONS {
        let http = http
            .clone()
            .with_header("x-forwarded-for", &format!("198.51.100.{}", i + 1));
        tasks.spawn(async move {
            let mut consumer = SlowConsumer::open(http, i).await;
            let closed = consumer.say_until(FILL).await;
            assert_eq!(closed, None, "slow{i}'s session ended while filling");
            consumer
        });
    }
    let mut consumers = Vec::new();
    let filled = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(consumer) = tasks.join_next().await {
            consumers.push(consumer.unwrap());
        }
    })
    .await;
    assert!(
        filled.is_ok(),
        "the slow consumers did not fill within 120 s"
    );
    let peak = chat.rss();
    println!(
        "peak RSS {:.1} MiB with {SESSIONS} sessions of {FILL} unacknowledged lines each ({:.1} s to fill)",
        mib(peak),
        filling.elapsed().as_secs_f64()
    );
    assert!(
        peak > baseline + 80 * 1024 * 1024,
        "the burst did not raise RSS well above the baseline ({:.1} -> {:.1} MiB)",
        mib(baseline),
        mib(peak)
    );

    // Every session ends: it goes on talking until its buffer overflows and the chat closes it
    // (4003), which drops what it held at once. (A session that the page closes keeps its
    // undelivered messages for the resume window, 30 s, and would measure that instead.)
    for mut consumer in consumers {
        tasks.spawn(async move {
            let closed = consumer.say_until(MOST).await;
            assert_eq!(closed, Some(4003), "no overflow after {MOST} lines");
            consumer
        });
    }
    while let Some(consumer) = tasks.join_next().await {
        consumer.unwrap();
    }
    let ended = Instant::now();

    let bound = baseline + (peak - baseline) / 4;
    println!(
        "sessions ended; waiting for RSS <= {:.1} MiB (baseline + 25 % of the rise)",
        mib(bound)
    );
    let mut rss = chat.rss();
    while rss > bound && ended.elapsed() < RETURN_WITHIN {
        println!(
            "  {:5.1} s: {:.1} MiB",
            ended.elapsed().as_secs_f64(),
            mib(rss)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss = chat.rss();
    }
    println!(
        "  {:5.1} s: {:.1} MiB",
        ended.elapsed().as_secs_f64(),
        mib(rss)
    );
    assert!(
        rss <= bound,
        "RSS still {:.1} MiB {} s after every session ended (baseline {:.1}, peak {:.1})",
        mib(rss),
        RETURN_WITHIN.as_secs(),
        mib(baseline),
        mib(peak)
    );
}
