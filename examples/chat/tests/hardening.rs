//! The chat as a hardened app (issue 11, items 3 and 6), as a real process: no session id in any
//! log line at any level; one client cannot take every room; foreign host names are refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Chat;
use serde_json::json;
use switchboard_client::{Client, Message, Transport};

#[tokio::test]
async fn no_session_id_reaches_the_log_even_at_trace_level() {
    // Everything, the dependencies that print frames named explicitly too.
    let Chat {
        mut child,
        addr,
        log,
    } = Chat::start(
        &[],
        "trace,tungstenite=trace,tokio_tungstenite=trace,hyper=trace",
    )
    .await;
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

/// One person of the rooms test: a session from `client` (the address the trusted proxy, here
/// the test itself, forwards), in the lobby after its welcome.
async fn person(base: &str, nick: &str, client: &str) -> Client {
    let mut person = Client::builder(base)
        .transport(Transport::LongPoll)
        .header("x-forwarded-for", client)
        .auth(json!({ "nick": nick }))
        .connect()
        .await
        .unwrap();
    wait_for(&mut person, "joined").await;
    person
}

/// The data of the next event named `event` (others are skipped).
async fn wait_for(person: &mut Client, event: &str) -> serde_json::Value {
    loop {
        let message = person
            .recv_timeout(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no {event} event within 10 s"));
        if message.event() == Some(event) {
            return message.as_json().cloned().unwrap();
        }
    }
}

/// Asks to join `room`: the name of the room joined, or the problem the chat told.
async fn join(person: &mut Client, room: &str) -> Result<String, String> {
    person
        .send(Message::json(json!({ "room": room })).with_event("join"))
        .unwrap();
    loop {
        let message = person
            .recv_timeout(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("no answer to a join within 10 s");
        let data = message.as_json().cloned().unwrap_or_default();
        match message.event() {
            Some("joined") => return Ok(data["room"].as_str().unwrap().to_string()),
            Some("problem") => return Err(data["text"].as_str().unwrap().to_string()),
            _ => {}
        }
    }
}

#[tokio::test]
async fn one_client_cannot_take_every_room() {
    let chat = Chat::start(&["--trusted-proxy", "127.0.0.1"], "warn,chat=info").await;
    let base = format!("http://{}/realtime", chat.addr);
    // One client, many sessions, each asking for a room of its own.
    let mut sessions = Vec::new();
    let mut joined = Vec::new();
    for i in 0..8 {
        let mut session = person(&base, &format!("spam{i}"), "203.0.113.5").await;
        joined.push(join(&mut session, &format!("방-{i}")).await);
        sessions.push(session);
    }
    let refused: Vec<&String> = joined
        .iter()
        .filter_map(|joined| joined.as_ref().err())
        .collect();
    assert_eq!(refused.len(), 3, "{joined:?}");
    assert!(refused[0].contains("rooms already"), "{refused:?}");
    // Its sessions may still share the rooms it is in, and the default ones.
    assert_eq!(join(&mut sessions[7], "방-0").await.as_deref(), Ok("방-0"));
    assert_eq!(join(&mut sessions[6], "rust").await.as_deref(), Ok("rust"));
    // Anyone else creates rooms as before.
    let mut other = person(&base, "민지", "198.51.100.20").await;
    assert_eq!(
        join(&mut other, "우리 방 🎈").await.as_deref(),
        Ok("우리 방 🎈")
    );
    // A room the client leaves frees its place.
    assert_eq!(
        join(&mut sessions[1], "lobby").await.as_deref(),
        Ok("lobby")
    );
    assert_eq!(join(&mut sessions[5], "방-5").await.as_deref(), Ok("방-5"));
}

#[tokio::test]
async fn foreign_host_names_are_refused_and_the_loopback_names_served() {
    let chat = Chat::start(&[], "warn,chat=info").await;
    let port = chat.addr.rsplit(':').next().unwrap().to_string();
    let http = reqwest::Client::new();
    let open = |host: String| {
        http.post(format!("http://{}/realtime/open?v=1", chat.addr))
            .header("host", host.clone())
            .header("origin", format!("http://{host}"))
            .body(r#"{"auth":{"nick":"호스트"}}"#)
            .send()
    };
    let refused = open(format!("rebind.example:{port}")).await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "host_not_allowed");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        assert_eq!(open(host).await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn out_of_file_descriptors_the_chat_closes_idle_connections_and_serves_on() {
    let chat = Chat::start(&[], "warn,chat=info,switchboard=warn").await;
    // Lower the running process's open-file limit far below what it computed its connection
    // limit from, so that accepting fails for want of descriptors before that limit is reached.
    let pid = chat.child.id().unwrap().to_string();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=64:64"])
        .status();
    if !status.is_ok_and(|status| status.success()) {
        panic!("prlimit (util-linux) could not lower the chat's open-file limit");
    }
    // 200 connections that send nothing: most of them cannot even be accepted.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(&chat.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new connection for every request: each must be accepted while the descriptors run out.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let mut served = 0;
    for _ in 0..20 {
        let answer = http
            .get(format!("http://{}/realtime/client.js", chat.addr))
            .send()
            .await;
        if answer.is_ok_and(|answer| answer.status() == 200) {
            served += 1;
        }
        // The flood keeps coming back.
        for _ in 0..10 {
            if let Ok(stream) = tokio::net::TcpStream::connect(&chat.addr).await {
                idle.push(stream);
            }
        }
    }
    println!(
        "{served} of 20 normal requests served in {:?} with the open-file limit at 64 and {} idle connections thrown at it",
        started.elapsed(),
        idle.len()
    );
    assert!(
        served >= 19,
        "only {served} of 20 normal requests were served"
    );
    let log = chat.log.lock().unwrap().join("\n");
    assert!(log.contains("accepting a connection failed"), "{log}");
    assert!(
        log.matches("accepting a connection failed").count() <= 3,
        "the log line is not rate-limited:\n{log}"
    );
}
