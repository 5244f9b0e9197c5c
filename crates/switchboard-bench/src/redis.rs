//! A `redis-server` of the harness's own for the cluster scenario, and Redis's own counters
//! (`INFO commandstats`, `INFO stats`) read over a raw RESP connection.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::Error;
use crate::sys;

/// The `redis-server` binary: `$REDIS_SERVER` if set, else `redis-server` on the `PATH`.
fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running `redis-server` on 127.0.0.1 with no persistence (`--save "" --appendonly no`).
///
/// It runs under `sh`, which starts it, prints its pid and waits for its own stdin to reach EOF,
/// then stops it: like the benchmark's servers, a harness that dies cannot leak it.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    port: u16,
}

/// The shell that runs Redis until its stdin reaches EOF.
const WRAPPER: &str =
    r#""$0" "$@" & pid=$!; echo "pid $pid"; cat >/dev/null; kill "$pid"; wait "$pid""#;

impl RedisServer {
    /// Starts Redis on a free port and waits (at most 10 s) until it answers `PING` and reports
    /// the process id it was started with (so the port is proven to be ours). Tries 3 ports.
    pub async fn start() -> Result<RedisServer, Error> {
        let mut last = Error::from("not tried");
        for _ in 0..3 {
            match RedisServer::start_on(free_port()?).await {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn start_on(port: u16) -> Result<RedisServer, Error> {
        let mut child = Command::new("sh")
            .args(["-c", WRAPPER, &binary()])
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // the cluster scenario opens a few thousand sockets
            .args(["--maxclients", "10000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start sh for {}: {e}", binary()))?;
        let stdin = child.stdin.take();
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err("no stdout pipe".into());
        };
        // the first line is `pid N`; Redis's own log follows and is thrown away
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(pid) = line
                    .strip_prefix("pid ")
                    .and_then(|p| p.trim().parse().ok())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(pid);
                }
            }
        });
        let mut server = RedisServer {
            child,
            stdin,
            pid: 0,
            port,
        };
        server.pid = match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(pid)) => pid,
            _ => return Err("redis-server wrapper did not report a pid".into()),
        };
        for _ in 0..1000 {
            if let Ok(info) = info(port, "server").await {
                let pid: Option<u32> = field(&info, "process_id");
                if pid == Some(server.pid) {
                    return Ok(server);
                }
                return Err(format!("port {port} is taken by another Redis").into());
            }
            if matches!(server.child.try_wait(), Ok(Some(_))) {
                return Err(format!("redis-server exited (port {port} taken?)").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("redis-server did not answer on port {port} within 10 s").into())
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// CPU seconds (user + system) the `redis-server` process used so far.
    pub fn cpu(&self) -> Result<f64, Error> {
        Ok(sys::cpu_seconds(self.pid)?)
    }

    /// Redis's counters now.
    pub async fn counters(&self) -> Result<Counters, Error> {
        let text = info(self.port, "stats commandstats").await?;
        let mut c = Counters::parse(&text);
        // `$LEN\r\n`, the text, `\r\n`
        c.info_reply_bytes = (format!("${}\r\n", text.len()).len() + text.len() + 2) as u64;
        Ok(c)
    }

    /// Closes the wrapper's stdin (it stops Redis and exits) and waits up to 5 s, then kills it.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        for _ in 0..500 {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // give the wrapper a moment to stop Redis before it is killed
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `INFO section` on a fresh connection and returns the answer (RESP2 bulk string). At most
/// 2 s.
pub async fn info(port: u16, section: &str) -> Result<String, Error> {
    tokio::time::timeout(Duration::from_secs(2), async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let words: Vec<&str> = std::iter::once("INFO")
            .chain(section.split_whitespace())
            .collect();
        let mut request = format!("*{}\r\n", words.len());
        for w in &words {
            request.push_str(&format!("${}\r\n{w}\r\n", w.len()));
        }
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(Error::from("Redis closed the connection"));
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            if let Some(text) = bulk_string(&buf)? {
                return Ok(text);
            }
        }
    })
    .await
    .map_err(|_| Error::from("INFO timed out"))?
}

/// The bulk string `$LEN\r\n...\r\n` at the start of `buf`, once complete.
fn bulk_string(buf: &[u8]) -> Result<Option<String>, Error> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(buf.get(..eol).unwrap_or_default())?;
    let len: usize = match head.strip_prefix('$') {
        Some(n) => n.parse()?,
        None => return Err(format!("unexpected Redis answer {head:?}").into()),
    };
    match buf.get(eol + 2..eol + 2 + len) {
        Some(body) => Ok(Some(String::from_utf8_lossy(body).into_owned())),
        None => Ok(None),
    }
}

/// `name:VALUE` of an `INFO` answer, parsed.
fn field<T: std::str::FromStr>(info: &str, name: &str) -> Option<T> {
    info.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(':')?;
        (k == name).then(|| v.parse().ok())?
    })
}

/// A reading of Redis's counters.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Calls per command (`cmdstat_publish` → `publish`), from `INFO commandstats`.
    pub calls: BTreeMap<String, u64>,
    /// `total_net_input_bytes`: bytes Redis read from its clients.
    pub net_in: u64,
    /// `total_net_output_bytes`: bytes Redis wrote to its clients (replies and pub/sub pushes).
    pub net_out: u64,
    /// The length of the `INFO` answer this reading came with, as sent (it counts in the next
    /// reading's `net_out`).
    pub info_reply_bytes: u64,
}

impl Counters {
    /// Parses an `INFO stats commandstats` answer.
    pub fn parse(info: &str) -> Counters {
        let mut c = Counters {
            net_in: field(info, "total_net_input_bytes").unwrap_or(0),
            net_out: field(info, "total_net_output_bytes").unwrap_or(0),
            ..Counters::default()
        };
        for line in info.lines() {
            let Some((name, rest)) = line.trim().split_once(':') else {
                continue;
            };
            let Some(cmd) = name.strip_prefix("cmdstat_") else {
                continue;
            };
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            c.calls.insert(cmd.to_owned(), calls);
        }
        c
    }

    /// What happened between `self` (earlier) and `later`, without the harness's own `INFO`
    /// requests and answers.
    pub fn delta(&self, later: &Counters) -> Delta {
        let mut calls = BTreeMap::new();
        for (cmd, &n) in &later.calls {
            if cmd == "info" {
                continue;
            }
            let d = n.saturating_sub(self.calls.get(cmd).copied().unwrap_or(0));
            if d > 0 {
                calls.insert(cmd.clone(), d);
            }
        }
        // the later INFO's request was read before it answered; the earlier one's answer
        // (with its `$LEN\r\n` header and final `\r\n`) was written after it
        let request = INFO_REQUEST_BYTES;
        let reply = self.info_reply_bytes;
        Delta {
            calls,
            net_in: later.net_in.saturating_sub(self.net_in + request),
            net_out: later.net_out.saturating_sub(self.net_out + reply),
        }
    }
}

/// Length of `*3\r\n$4\r\nINFO\r\n$5\r\nstats\r\n$12\r\ncommandstats\r\n`.
const INFO_REQUEST_BYTES: u64 = 44;

/// Redis's work between two readings.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// Calls per command.
    pub calls: BTreeMap<String, u64>,
    /// Bytes read from clients.
    pub net_in: u64,
    /// Bytes written to clients.
    pub net_out: u64,
}

impl Delta {
    /// Every command called.
    pub fn commands(&self) -> u64 {
        self.calls.values().sum()
    }

    /// Calls per command, the most called first, as `publish 1000, evalsha 3`.
    pub fn describe(&self) -> String {
        let mut v: Vec<(&String, &u64)> = self.calls.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let parts: Vec<String> = v.iter().map(|(c, n)| format!("{c} {n}")).collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_and_bulk_strings() {
        let info = "# Stats\r\ntotal_net_input_bytes:100\r\ntotal_net_output_bytes:5000\r\n\r\n# Commandstats\r\ncmdstat_publish:calls=7,usec=10,usec_per_call=1.4\r\ncmdstat_info:calls=3,usec=1\r\n";
        let a = Counters::parse(info);
        assert_eq!(a.calls.get("publish"), Some(&7));
        assert_eq!((a.net_in, a.net_out), (100, 5000));
        let later = Counters::parse(&info.replace("calls=7", "calls=9").replace(":100", ":244"));
        let d = a.delta(&later);
        assert_eq!(d.commands(), 2);
        assert_eq!(d.net_in, 100);
        assert_eq!(d.describe(), "publish 2");
        assert_eq!(bulk_string(b"$3\r\nab").ok().flatten(), None);
        assert_eq!(
            bulk_string(b"$3\r\nabc\r\n").ok().flatten().as_deref(),
            Some("abc")
        );
    }
}
