//! Per-address limits on opening sessions (issue 11, item 2), over real sockets: one address
//! flooding `POST /open` is refused `429` while other clients' opens go on succeeding, an address
//! cannot hold more than its cap, forwarded addresses count only from trusted proxies, and
//! sessions nobody uses expire after the handshake window.
//!
//! Every client here connects from 127.0.0.1; the tests trust 127.0.0.1 as a proxy and give each
//! simulated client its own `X-Forwarded-For`, as a reverse proxy in front would.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TEXTS, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::Switchboard;

/// `POST /open` as the client at `client` (sent as `X-Forwarded-For`): the status, the body and
/// the `Retry-After` header.
async fn open_as(
    http: &reqwest::Client,
    base: &str,
    client: &str,
) -> (StatusCode, Value, Option<String>) {
    let response = http
        .post(format!("{base}/open?v=1"))
        .header("x-forwarded-for", client)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_string());
    (status, response.json().await.unwrap_or(Value::Null), retry)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_flood_from_one_address_leaves_other_clients_opening() {
    let realtime = Switchboard::builder()
        .trusted_proxies(["127.0.0.1"])
        .max_sessions(2000)
        .build();
    let server = TestServer::start_served(realtime, |serve| serve).await;
    let http = reqwest::Client::new();

    // Quiet: the normal clients' opens alone.
    let mut quiet = Vec::new();
    for i in 0..50 {
        let started = Instant::now();
        let (status, _, _) = open_as(&http, &server.base, &format!("198.51.100.{i}")).await;
        assert_eq!(status, 200);
        quiet.push(started.elapsed());
    }

    // The attacker: 16 connections opening sessions back to back, for 4 s or 40 000 opens.
    let attack_ends = Instant::now() + Duration::from_secs(4);
    let tally = Arc::new(Mutex::new((0u32, 0u32, 0u32)));
    let mut attackers = Vec::new();
    for _ in 0..16 {
        let http = reqwest::Client::new();
        let base = server.base.clone();
        let tally = tally.clone();
        attackers.push(tokio::spawn(async move {
            for _ in 0..2500 {
                if Instant::now() >= attack_ends {
                    break;
                }
                let (status, body, retry) = open_as(&http, &base, "203.0.113.66").await;
                let mut tally = tally.lock().unwrap();
                match status.as_u16() {
                    200 => tally.0 += 1,
                    429 => {
                        assert_eq!(body["error"], "open_rate_limited", "{body}");
                        assert!(retry.is_some_and(|seconds| seconds.parse::<u32>().unwrap() >= 1));
                        tally.1 += 1;
                    }
                    _ => tally.2 += 1,
                }
            }
        }));
    }
    // Meanwhile, normal clients (each its own address) open sessions and use them.
    let mut during = Vec::new();
    let mut failed = 0;
    let mut i = 0;
    while Instant::now() < attack_ends && i < 400 {
        let started = Instant::now();
        let client = format!("198.51.100.{}", 50 + i % 200);
        let (status, body, _) = open_as(&http, &server.base, &client).await;
        during.push(started.elapsed());
        if status == 200 {
            let sid = body["sid"].as_str().unwrap();
            let message = json!([{"t": "m", "s": 1, "d": TEXTS[i % TEXTS.len()]}]).to_string();
            let (status, _) = common::post(&http, &server.base, sid, message).await;
            assert_eq!(status, 200);
        } else {
            failed += 1;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for attacker in attackers {
        attacker.await.unwrap();
    }
    let (opened, limited, other) = *tally.lock().unwrap();
    quiet.sort();
    during.sort();
    let success = 100.0 * (during.len() - failed) as f64 / during.len() as f64;
    println!(
        "attacker: {opened} sessions opened, {limited} refused 429, {other} other answers; \
         normal clients: {} opens, {success:.1} % succeeded; open round trip p50/p99 quiet \
         {:?}/{:?}, under attack {:?}/{:?}",
        during.len(),
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
    );
    assert!(during.len() >= 20, "too few normal opens to judge");
    assert!(
        success >= 99.0,
        "only {success:.1} % of normal opens succeeded"
    );
    // The attacker got its burst and the rate (100 + 10/s over about 4 s), not the server.
    assert!(
        opened <= 100 + 10 * 6,
        "the attacker opened {opened} sessions"
    );
    assert!(limited > 0);
    assert_eq!(other, 0);
}

#[tokio::test]
async fn an_address_holds_at_most_its_cap_over_every_transport() {
    let realtime = Switchboard::builder()
        .trusted_proxies(["127.0.0.1"])
        .sessions_per_address(3)
        .open_rate_per_address(0, 1)
        .resume_window(Duration::from_millis(400))
        .build();
    let server = TestServer::start_served(realtime, |serve| serve).await;
    let http = reqwest::Client::new();
    let mut sids = Vec::new();
    for _ in 0..3 {
        let (status, body, _) = open_as(&http, &server.base, "192.0.2.7").await;
        assert_eq!(status, 200);
        sids.push(body["sid"].as_str().unwrap().to_string());
    }
    let (status, body, retry) = open_as(&http, &server.base, "192.0.2.7").await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str(), retry.as_deref()),
        (429, Some("address_session_limit"), Some("5"))
    );
    // Over WebSocket the same refusal is close 4429 (after the upgrade).
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.ws_url(""),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", "192.0.2.7".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        common::next_json(&mut socket).await,
        json!({"ws_close": 4429})
    );
    // Another address, and an IPv6 client, are not affected.
    assert_eq!(open_as(&http, &server.base, "192.0.2.8").await.0, 200);
    assert_eq!(open_as(&http, &server.base, "2001:db8::1").await.0, 200);
    // A session of the address ends (the client closes it) and is forgotten after the resume
    // window: its place is free again.
    let (status, _) = common::post(&http, &server.base, &sids[0], r#"[{"t":"close"}]"#).await;
    assert_eq!(status, 200);
    let mut reopened = false;
    for _ in 0..100 {
        if open_as(&http, &server.base, "192.0.2.7").await.0 == 200 {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened, "the address never got its place back");
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    // No trusted proxy: every client here is 127.0.0.1, whatever its headers say.
    let seen = Arc::new(Mutex::new(Vec::<Option<IpAddr>>::new()));
    let record = seen.clone();
    let realtime = Switchboard::builder()
        .sessions_per_address(2)
        .open_rate_per_address(0, 1)
        .authenticate(move |handshake| {
            record.lock().unwrap().push(handshake.client_addr());
            async { Ok(()) }
        })
        .build();
    let server = TestServer::start_served(realtime, |serve| serve).await;
    let http = reqwest::Client::new();
    assert_eq!(open_as(&http, &server.base, "198.51.100.1").await.0, 200);
    assert_eq!(open_as(&http, &server.base, "198.51.100.2").await.0, 200);
    let (status, body, _) = open_as(&http, &server.base, "198.51.100.3").await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (429, Some("address_session_limit"))
    );
    let localhost: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(localhost), Some(localhost)]
    );

    // Trusting 127.0.0.1: the address the proxy appended counts (read from the right, so a
    // client's forged entry in front changes nothing), IPv6 per /64.
    let seen = Arc::new(Mutex::new(Vec::<Option<IpAddr>>::new()));
    let record = seen.clone();
    let realtime = Switchboard::builder()
        .trusted_proxies(["127.0.0.0/8", "10.0.0.0/8"])
        .sessions_per_address(1)
        .open_rate_per_address(0, 1)
        .authenticate(move |handshake| {
            record.lock().unwrap().push(handshake.client_addr());
            async { Ok(()) }
        })
        .build();
    let server = TestServer::start_served(realtime, |serve| serve).await;
    assert_eq!(
        open_as(&http, &server.base, "1.1.1.1, 198.51.100.9, 10.0.0.3")
            .await
            .0,
        200
    );
    assert_eq!(
        open_as(&http, &server.base, "2.2.2.2, 198.51.100.9")
            .await
            .0,
        429
    );
    assert_eq!(open_as(&http, &server.base, "2001:db8:0:1::5").await.0, 200);
    assert_eq!(open_as(&http, &server.base, "2001:db8:0:1::6").await.0, 429);
    assert_eq!(open_as(&http, &server.base, "2001:db8:0:2::6").await.0, 200);
    let response = http
        .post(format!("{}/open?v=1", server.base))
        .header("forwarded", "for=\"[2001:db8:0:3::1]:4711\";proto=https")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let addr = |text: &str| Some(text.parse::<IpAddr>().unwrap());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            addr("198.51.100.9"),
            addr("2001:db8:0:1::5"),
            addr("2001:db8:0:2::6"),
            addr("2001:db8:0:3::1"),
        ]
    );
}

#[tokio::test]
async fn a_session_nobody_uses_expires_after_the_handshake_window() {
    let realtime = Switchboard::builder()
        .handshake_window(Duration::from_millis(300))
        .resume_window(Duration::from_secs(30))
        .build();
    let server = TestServer::start_served(realtime, |serve| serve).await;
    let http = reqwest::Client::new();
    let unused = common::open(&http, &server.base).await;
    let used = common::open(&http, &server.base).await;
    // One poll is enough to count as used: the resume window applies from then on.
    let (status, _) = common::get(&http, server.poll_url(&used, 0, false)).await;
    assert_eq!(status, 200);
    let gone = common::eventually(Duration::from_secs(10), || {
        server.realtime.session_count() == 1
    })
    .await;
    assert!(gone, "the unused session did not expire");
    let (status, body) = common::get(&http, server.poll_url(&unused, 0, false)).await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (404, Some("unknown_session"))
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _) = common::get(&http, server.poll_url(&used, 0, false)).await;
    assert_eq!(
        status, 200,
        "a used session expired with the handshake window"
    );
}
