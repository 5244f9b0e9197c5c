//! Presence events (issue 15): `Hub::watch_presence` reports joins and leaves as they happen,
//! with the member's key and user data; a session's end leaves each of its rooms; a client whose
//! network is lost leaves once the resume window has passed, not while it may resume; a watcher
//! that falls behind is told it missed events.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use futures_util::SinkExt;
use serde_json::Value;
use switchboard::{Missed, PresenceChange, PresenceEvent, PresenceWatch, Switchboard};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Clone, Debug, PartialEq)]
struct User {
    name: String,
}

/// A server whose users are named by the `name` field of their auth data.
async fn server(resume: Duration) -> TestServer<User> {
    let realtime = Switchboard::builder()
        .resume_window(resume)
        .authenticate(|handshake| {
            let name = handshake
                .auth()
                .and_then(|auth| auth["name"].as_str())
                .unwrap_or("anonymous")
                .to_owned();
            async move { Ok(User { name }) }
        })
        .build();
    TestServer::start(realtime).await
}

/// The next event, which must come within 10 s.
async fn next(watch: &mut PresenceWatch<User>) -> PresenceEvent<User> {
    tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("no presence event within 10 s")
        .unwrap()
}

/// An event as `(room, name, change)`, for comparing.
fn seen(event: &PresenceEvent<User>) -> (String, String, PresenceChange) {
    (
        event.room.to_string(),
        event.member.user.name.clone(),
        event.change,
    )
}

/// Nothing more within `wait`.
async fn quiet(watch: &mut PresenceWatch<User>, wait: Duration) {
    if let Ok(event) = tokio::time::timeout(wait, watch.recv()).await {
        panic!("unexpected presence event: {event:?}");
    }
}

/// Opens a WebSocket session as `name`; returns the socket and its sid.
async fn connect(server: &TestServer<User>, name: &str) -> (common::Ws, String) {
    let auth = serde_json::json!({ "name": name }).to_string();
    let query = format!("&auth={}", urlencode(&auth));
    let mut socket = server.ws(&query).await;
    let open: Value = common::next_json(&mut socket).await;
    assert_eq!(open["t"], "open");
    (socket, open["sid"].as_str().unwrap().to_owned())
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn joins_leaves_and_ends_are_announced_in_order_with_the_member() {
    let mut server = server(Duration::from_secs(30)).await;
    let hub = server.realtime.hub();
    let mut watch = hub.watch_presence();
    let mut second = hub.watch_presence();

    let (mut alice_socket, _) = connect(&server, "민지 🎉").await;
    let alice = server.next_session().await;
    let (_bob_socket, _) = connect(&server, "Bob").await;
    let bob = server.next_session().await;

    alice.join("로비").unwrap();
    // Joining a room again announces nothing.
    alice.join("로비").unwrap();
    bob.join("로비").unwrap();
    alice.join("🎲 games").unwrap();
    assert!(bob.leave("로비"));
    // Leaving a room one is not in announces nothing.
    assert!(!bob.leave("로비"));

    let expected = [
        ("로비", "민지 🎉", PresenceChange::Joined),
        ("로비", "Bob", PresenceChange::Joined),
        ("🎲 games", "민지 🎉", PresenceChange::Joined),
        ("로비", "Bob", PresenceChange::Left),
    ];
    for (room, name, change) in expected {
        let event = next(&mut watch).await;
        assert_eq!(seen(&event), (room.into(), name.into(), change));
        let key = if name == "Bob" {
            bob.key()
        } else {
            alice.key()
        };
        assert_eq!(event.member.key, key);
        // Every watcher gets every event.
        assert_eq!(seen(&next(&mut second).await), seen(&event));
    }

    // The client closes: the session ends and leaves both its rooms.
    alice_socket
        .send(WsMessage::text(r#"{"t":"close"}"#))
        .await
        .unwrap();
    let mut ended = vec![seen(&next(&mut watch).await), seen(&next(&mut watch).await)];
    ended.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        ended,
        [
            ("로비".into(), "민지 🎉".into(), PresenceChange::Ended),
            ("🎲 games".into(), "민지 🎉".into(), PresenceChange::Ended),
        ]
    );
    // The server closes a session: the same.
    bob.join("끝").unwrap();
    assert_eq!(
        seen(&next(&mut watch).await),
        ("끝".into(), "Bob".into(), PresenceChange::Joined)
    );
    bob.close("bye");
    assert_eq!(
        seen(&next(&mut watch).await),
        ("끝".into(), "Bob".into(), PresenceChange::Ended)
    );
    quiet(&mut watch, Duration::from_millis(200)).await;
    assert_eq!(hub.member_count("로비"), 0);
}

#[tokio::test]
async fn a_lost_connection_is_announced_when_the_resume_window_has_passed_not_before() {
    let resume = Duration::from_millis(800);
    let mut server = server(resume).await;
    let hub = server.realtime.hub();
    let mut watch = hub.watch_presence();
    let (socket, sid) = connect(&server, "잠깐").await;
    let session = server.next_session().await;
    session.join("lobby").unwrap();
    assert_eq!(next(&mut watch).await.change, PresenceChange::Joined);

    // The network goes: the socket is dropped without a close frame. The session waits for the
    // client to resume, and stays in its room meanwhile.
    drop(socket);
    tokio::time::sleep(resume / 4).await;
    let (mut socket, _) = {
        let query = format!("&sid={sid}&ack=0");
        let mut socket = server.ws(&query).await;
        let open: Value = common::next_json(&mut socket).await;
        assert_eq!(open["resumed"], true, "{open}");
        (socket, ())
    };
    quiet(&mut watch, resume + resume / 2).await;
    assert!(!session.is_closed());
    assert_eq!(hub.member_count("lobby"), 1);

    // Gone again, for good this time: announced once the window has passed.
    socket.close(None).await.ok();
    drop(socket);
    let event = next(&mut watch).await;
    assert_eq!(
        seen(&event),
        ("lobby".into(), "잠깐".into(), PresenceChange::Ended)
    );
    assert!(session.is_closed());
}

#[tokio::test]
async fn watchers_made_later_see_only_later_events_and_one_that_lags_is_told() {
    let mut server = server(Duration::from_secs(30)).await;
    let hub = server.realtime.hub();
    let (_socket, _) = connect(&server, "many").await;
    let session = server.next_session().await;
    session.join("before").unwrap();

    let mut watch = hub.watch_presence();
    // 5,000 joins and leaves, more than a watcher may fall behind (4,096).
    for _ in 0..2_500 {
        session.join("busy").unwrap();
        assert!(session.leave("busy"));
    }
    let Err(Missed(missed)) = watch.recv().await else {
        panic!("a watcher 5,000 events behind must be told it missed some");
    };
    assert_eq!(missed, 5_000 - 4_096);
    // Then it goes on with the oldest event it still has: number 904 (from 0), a join (joins
    // are the even ones), and the rest in order. The join before the watcher is not replayed.
    for number in 904..5_000 {
        let event = watch.recv().await.unwrap();
        assert_eq!(event.room.as_ref(), "busy");
        let change = if number % 2 == 0 {
            PresenceChange::Joined
        } else {
            PresenceChange::Left
        };
        assert_eq!(event.change, change, "event {number}");
    }
    quiet(&mut watch, Duration::from_millis(100)).await;
}

/// Joining a room again while the session closes (from another thread) must not lose the
/// session's `Ended`: every member that was announced joining is announced ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_racing_the_close_loses_no_end() {
    const SESSIONS: usize = 200;
    let mut server = server(Duration::from_secs(30)).await;
    let hub = server.realtime.hub();
    let mut watch = hub.watch_presence();
    let http = reqwest::Client::new();
    let mut keys = Vec::new();
    for _ in 0..SESSIONS {
        common::open(&http, &server.base).await;
        let session = server.next_session().await;
        session.join("race").unwrap();
        keys.push(session.key());
        let closer = session.clone();
        let closing = tokio::spawn(async move { closer.close("bye") });
        // Harmless whether it comes before, during or after the close.
        session.join("race").ok();
        closing.await.unwrap();
    }
    let mut joined = std::collections::HashSet::new();
    let mut ended = std::collections::HashSet::new();
    for _ in 0..2 * SESSIONS {
        let event = next(&mut watch).await;
        match event.change {
            PresenceChange::Joined => assert!(joined.insert(event.member.key), "joined twice"),
            PresenceChange::Ended => {
                assert!(joined.contains(&event.member.key), "ended before it joined");
                assert!(ended.insert(event.member.key), "ended twice");
            }
            PresenceChange::Left => panic!("nobody left"),
            _ => panic!("unexpected {event:?}"),
        }
    }
    assert_eq!(ended.len(), SESSIONS);
    assert_eq!(hub.member_count("race"), 0);
    quiet(&mut watch, Duration::from_millis(200)).await;
}
