//! No session id in any log line, at any level (issue 11, item 3): the chat runs with
//! `RUST_LOG=trace`, people talk over every transport, and the whole log (its own lines and its
//! dependencies') is searched for their session ids.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use switchboard_client::{Client, Message, Transport};
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

#[tokio::test]
async fn no_session_id_reaches_the_log_even_at_trace_level() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(["--addr", "127.0.0.1:0"])
        // Everything, the dependencies that print frames named explicitly too.
        .env(
            "RUST_LOG",
            "trace,tungstenite=trace,tokio_tungstenite=trace,hyper=trace",
        )
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
    let base = format!("http://{addr}/realtime");

    let mut sids = Vec::new();
    let transports = [
        Transport::WebSocket,
        Transport::LongPoll,
        Transport::ShortPoll {
            interval: Duration::from_millis(50),
        },
    ];
    let mut people = Vec::new();
    for (i, transport) in transports.into_iter().enumerate() {
        let client = Client::builder(&base)
            .transport(transport)
            .auth(json!({ "nick": format!("사람{i}") }))
            .connect()
            .await
            .unwrap();
        sids.push(client.sid().to_string());
        people.push(client);
    }
    for (i, person) in people.iter().enumerate() {
        person
            .send(Message::json(json!({ "text": format!("안녕 👋 #{i}") })).with_event("say"))
            .unwrap();
    }
    // Everyone hears everyone: the messages went through every transport both ways.
    for person in &mut people {
        let mut heard = 0;
        while heard < 3 {
            let message = person
                .recv_timeout(Duration::from_secs(10))
                .await
                .unwrap()
                .expect("a line did not arrive");
            if message.event() == Some("line") {
                heard += 1;
            }
        }
    }
    // A WebSocket that resumes a session carries its sid in the URL; a poll does on every
    // request.
    let resumed = Client::builder(&base)
        .transport(Transport::WebSocket)
        .resume(&sids[1], 0)
        .connect()
        .await
        .unwrap();
    drop(resumed);
    drop(people);
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let log = log.lock().unwrap();
    println!("{} log lines at trace level", log.len());
    // The log is the verbose one: sessions, transports and the HTTP layer all spoke.
    assert!(
        log.iter().any(|line| line.contains("session opened")),
        "no session line: trace was not on"
    );
    assert!(log.iter().any(|line| line.contains("transport attached")));
    let leaks: Vec<&String> = log
        .iter()
        .filter(|line| sids.iter().any(|sid| line.contains(sid.as_str())))
        .collect();
    assert!(
        leaks.is_empty(),
        "session ids in {} log lines:\n{}",
        leaks.len(),
        leaks
            .iter()
            .map(|line| &line[..line.len().min(300)])
            .collect::<Vec<_>>()
            .join("\n")
    );
}
