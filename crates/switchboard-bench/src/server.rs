//! Starting and stopping the server binaries under test.

use std::fmt;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::Error;
use crate::sys;

/// Which server implementation is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `sb_server`: Switchboard, the framework under test.
    Switchboard,
    /// `floor`: plain axum WebSocket with a broadcast channel: the lower bound of the overhead.
    Floor,
    /// `peer`: socketioxide (Socket.IO v5 over Engine.IO v4 WebSocket).
    Peer,
}

impl Kind {
    /// All three, in report order.
    pub const ALL: [Kind; 3] = [Kind::Switchboard, Kind::Floor, Kind::Peer];

    /// The binary's file name.
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Switchboard => "sb_server",
            Kind::Floor => "floor",
            Kind::Peer => "peer",
        }
    }

    /// Short name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Switchboard => "switchboard",
            Kind::Floor => "floor",
            Kind::Peer => "peer",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The directory holding the server binaries: the one `load` itself lives in.
pub fn bin_dir() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "current executable has no parent directory".into())
}

/// A running server process. Dropping it closes its stdin (the server exits at EOF) and kills it.
#[derive(Debug)]
pub struct Server {
    kind: Kind,
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    port: u16,
}

impl Server {
    /// Starts `kind` with `--port 0` plus `extra` arguments and waits (at most 30 s) for its
    /// `listening on 127.0.0.1:PORT` line.
    pub async fn start(kind: Kind, extra: &[&str]) -> Result<Server, Error> {
        Server::start_binary(kind, kind.binary(), extra, &[]).await
    }

    /// Like [`start`](Server::start), with the binary `binary` (a variant of `kind`'s, such as
    /// `sb_server_jemalloc`, or `sb_heap`) and `env` added to its environment.
    pub async fn start_binary(
        kind: Kind,
        binary: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, Error> {
        let path = bin_dir()?.join(binary);
        if !path.exists() {
            return Err(format!("server binary {} not found", path.display()).into());
        }
        let mut child = Command::new(&path)
            .args(["--port", "0"])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err("no stdout pipe".into());
        };
        // a plain thread reads stdout: it reports the port, then drains the pipe until EOF
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = parse_listening(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let mut server = Server {
            kind,
            child,
            stdin,
            pid,
            port: 0,
        };
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(port)) => {
                server.port = port;
                Ok(server)
            }
            Ok(Err(_)) => Err(format!("{kind} exited before printing `listening on`").into()),
            Err(_) => Err(format!("{kind} did not print `listening on` within 30 s").into()),
        }
    }

    /// Which implementation this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The TCP port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its resident set size in bytes.
    pub fn rss(&self) -> Result<u64, Error> {
        Ok(sys::rss_bytes(self.pid)?)
    }

    /// CPU seconds (user + system) it used so far.
    pub fn cpu(&self) -> Result<f64, Error> {
        Ok(sys::cpu_seconds(self.pid)?)
    }

    /// Closes its stdin and waits up to 5 s for it to exit, then kills it.
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

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The port of a `listening on 127.0.0.1:PORT` line.
pub fn parse_listening(line: &str) -> Option<u16> {
    let addr = line.trim().strip_prefix("listening on ")?;
    addr.rsplit(':').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_line() {
        assert_eq!(parse_listening("listening on 127.0.0.1:4321\n"), Some(4321));
        assert_eq!(parse_listening("starting"), None);
    }
}
