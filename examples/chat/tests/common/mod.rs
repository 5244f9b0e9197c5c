//! The chat as a real process, for the tests that run it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// Collects every line `from` yields into `into`; sends the chat's address once it is logged.
fn collect(
    from: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
    listening: Option<tokio::sync::oneshot::Sender<String>>,
) {
    tokio::spawn(async move {
        let mut listening = listening;
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(at) = line.find("chat on http://") {
                let addr: String = line[at + "chat on http://".len()..]
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != ',')
                    .collect();
                if let Some(tx) = listening.take() {
                    let _ = tx.send(addr);
                }
            }
            into.lock().unwrap().push(line);
        }
    });
}

/// A chat process on a free port, its log collected.
pub struct Chat {
    pub child: tokio::process::Child,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Chat {
    pub async fn start(args: &[&str], rust_log: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        collect(child.stdout.take().unwrap(), log.clone(), Some(tx));
        collect(child.stderr.take().unwrap(), log.clone(), None);
        let addr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("the chat did not start within 30 s")
            .unwrap();
        Self { child, addr, log }
    }
}

/// The value of the sample whose series (name and labels, as rendered) is `series`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

pub async fn scrape(http: &reqwest::Client, addr: &str) -> String {
    let response = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}
