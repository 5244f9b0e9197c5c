//! A request that arrives as its session's resume window ends finds the session either alive or
//! unknown (`404` / close `4404`): a client never receives close code 4002 (`docs/protocol.md`
//! §8; issue 9, finding 7).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestServer, next_json};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::{CloseReason, Switchboard};
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_millis(300);
/// How far before and after the end of the window the requests are spread.
const SPREAD: Duration = Duration::from_millis(60);

/// What one request at the end of a window got.
#[derive(Debug)]
enum Outcome {
    /// The session was alive.
    Alive,
    /// `404 unknown_session` or close `4404`.
    Unknown,
}

/// Sends request kind `kind` for `sid` at `at` and says what came back; panics on anything but a
/// live session's answer or an unknown session's, and on any close frame with code 4002.
async fn request_at(server: &Server, sid: &str, kind: usize, at: Instant) -> Outcome {
    tokio::time::sleep_until(at).await;
    let base = &server.base;
    let (status, body) = match kind % 4 {
        wait @ (0 | 1) => {
            let wait = wait == 0;
            let url = format!(
                "{base}/poll?v=1&sid={sid}&ack=0&wait={}&att=1",
                u8::from(wait)
            );
            let response = server.http.get(url).send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
        2 => {
            let response = server
                .http
                .post(format!("{base}/poll?v=1&sid={sid}"))
                .header("content-type", "application/json")
                .body("[]")
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        }
        _ => {
            let url = format!("ws://{}/rt/ws?v=1&sid={sid}&ack=0&att=1", server.addr);
            let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let first = next_json(&mut socket).await;
            assert_ne!(first, json!({"ws_close": 4002}), "{sid}");
            if first == json!({"ws_close": 4404}) {
                return Outcome::Unknown;
            }
            assert_eq!(first["t"], "open", "{first}");
            // Attached: the session cannot expire under it. Anything else that comes is not 4002.
            if let Ok(Some(Ok(next))) =
                tokio::time::timeout(Duration::from_millis(50), socket.next()).await
            {
                assert!(!next.to_string().contains("4002"), "{next}");
            }
            return Outcome::Alive;
        }
    };
    assert!(!body.contains("4002"), "{status} {body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    match status {
        StatusCode::NOT_FOUND => {
            assert_eq!(body["error"], "unknown_session");
            Outcome::Unknown
        }
        StatusCode::OK => Outcome::Alive,
        other => panic!("unexpected answer {other} {body}"),
    }
}

struct Server {
    base: String,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_the_end_of_the_resume_window_get_the_live_session_or_404_never_4002() {
    let mut test = TestServer::start(
        Switchboard::builder()
            .resume_window(WINDOW)
            .poll_hold(Duration::from_millis(200))
            .build(),
    )
    .await;
    let server = std::sync::Arc::new(Server {
        base: test.base.clone(),
        addr: test.addr,
        http: reqwest::Client::new(),
    });
    const SESSIONS: usize = 300;
    let (mut alive, mut unknown) = (0, 0);
    for _round in 0..8 {
        // Sessions opened together expire together, in one pass of the reaper; the requests are
        // spread from a little before the end of their window to past the reaper's next pass
        // (it runs every window / 4), so that many arrive while the reaper is at work.
        let opening: Vec<_> = (0..SESSIONS)
            .map(|_| {
                let server = server.clone();
                tokio::spawn(async move {
                    // Taken before the open is sent: the session's window starts later, never
                    // earlier, so a request before `opened_at + WINDOW` finds it alive.
                    let opened_at = Instant::now();
                    let sid = common::open(&server.http, &server.base).await;
                    (sid, opened_at)
                })
            })
            .collect();
        let mut opened = Vec::new();
        for open in opening {
            let (sid, opened_at) = open.await.unwrap();
            opened.push((sid, opened_at));
        }
        let mut sessions = std::collections::HashMap::new();
        for _ in 0..SESSIONS {
            let session = test.next_session().await;
            sessions.insert(session.key(), session);
        }
        let mut requests = Vec::new();
        for (i, (sid, opened_at)) in opened.iter().enumerate() {
            // From SPREAD before the end of the window to SPREAD after it.
            let offset = SPREAD * 2 * i as u32 / SESSIONS as u32;
            let at = *opened_at + WINDOW - SPREAD + offset;
            let (server, sid) = (server.clone(), sid.clone());
            requests.push(tokio::spawn(async move {
                request_at(&server, &sid, i, at).await
            }));
        }
        let mut unknown_now = 0;
        for request in requests {
            match request.await.unwrap() {
                Outcome::Alive => alive += 1,
                Outcome::Unknown => unknown_now += 1,
            }
        }
        // The application saw an expiry for every session the client was told was unknown.
        let expired = sessions
            .values()
            .filter(|session| session.close_reason() == Some(CloseReason::Expired))
            .count();
        assert!(expired >= unknown_now, "{expired} < {unknown_now}");
        unknown += unknown_now;
    }
    eprintln!("requests racing the window: {alive} found the session, {unknown} found it expired");
    // Both outcomes happened, so the requests did straddle the end of the window.
    assert!(alive > 0 && unknown > 0, "alive {alive}, unknown {unknown}");
}

#[tokio::test]
async fn a_request_just_after_the_resume_window_finds_the_session_expired() {
    // With this window the reaper runs every second, from the first session on. The session
    // under test opens half a second later, so its window ends half a second before the
    // reaper's next pass; a request just after the window does not wait for that pass.
    let window = Duration::from_secs(4);
    let mut server = TestServer::start(Switchboard::builder().resume_window(window).build()).await;
    let http = reqwest::Client::new();
    common::open(&http, &server.base).await;
    server.next_session().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sid = common::open(&http, &server.base).await;
    let opened = Instant::now();
    let session = server.next_session().await;
    tokio::time::sleep_until(opened + window + Duration::from_millis(20)).await;
    let (status, body) = common::get(&http, server.poll_url(&sid, 0, false)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "unknown_session");
    assert_eq!(session.close_reason(), Some(CloseReason::Expired));
}
