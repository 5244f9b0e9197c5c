//! Redis killed and restarted (empty) under traffic: sessions keep working on their nodes,
//! broadcasts fail visibly while Redis is away, subscriptions and records come back by
//! themselves, and nothing is delivered twice (issue 10, "Redis outage and restart").
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Cluster, text};
use switchboard_client::{Client, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_traffic() {
    let mut cluster = Cluster::start(2, |builder| builder).await;
    // A member on each node, connected to its node directly, in one room.
    let mut a = Client::connect(&cluster.nodes[0].base, Transport::WebSocket)
        .await
        .unwrap();
    let session_a = cluster.next_session().await;
    let mut b = Client::connect(&cluster.nodes[1].base, Transport::LongPoll)
        .await
        .unwrap();
    let session_b = cluster.next_session().await;
    session_a.join("room").unwrap();
    session_b.join("room").unwrap();
    // And one through the round-robin proxy, whose requests are forwarded half of the time.
    let mut c = cluster
        .through_proxy(Transport::LongPoll)
        .max_attempts(1_000)
        .connect()
        .await
        .unwrap();
    let session_c = cluster.next_session().await;
    for node in &cluster.nodes {
        node.realtime.hub().flush().await.unwrap();
    }
    let hub = cluster.nodes[0].realtime.hub();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    let mut direct = 0usize;
    let tick = |phase: &str, i: usize, accepted: &mut Vec<String>, refused: &mut Vec<String>| {
        let line = format!("{phase} {i} 📣");
        match hub.to("room").send(&switchboard::Message::text(&line)) {
            Ok(_) => accepted.push(line),
            Err(switchboard::SendError::Backend(_)) => refused.push(line),
            Err(err) => panic!("{err}"),
        }
    };
    // Before, during and after the outage, every 10 ms: a broadcast from node 0, and a direct
    // message to each session (which needs no Redis at all).
    for (phase, rounds) in [("before", 30), ("during", 100), ("after", 0)] {
        if phase == "during" {
            cluster.redis.kill();
        }
        for i in 0..rounds {
            tick(phase, i, &mut accepted, &mut refused);
            for session in [&session_a, &session_b, &session_c] {
                session
                    .send(switchboard::Message::text(text(direct)))
                    .unwrap();
            }
            direct += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    cluster.redis.restart().await;
    // Recovery: broadcasts are accepted again, and reach both nodes again, by themselves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    // What B receives meanwhile is kept for the checks.
    let mut b_early = Vec::new();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery within 20 s"
        );
        let probe = format!("probe {i}");
        i += 1;
        if hub
            .to("room")
            .send(&switchboard::Message::text(&probe))
            .is_ok()
        {
            accepted.push(probe.clone());
            // Node 1 resubscribed (its member hears node 0 again)?
            let heard = tokio::time::timeout(Duration::from_millis(300), async {
                loop {
                    if let Ok(Some(message)) = b.recv_timeout(Duration::from_millis(300)).await {
                        let text = message.as_text().unwrap().to_string();
                        let found = text == probe;
                        b_early.push(text);
                        if found {
                            return;
                        }
                    }
                }
            })
            .await;
            if heard.is_ok() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..50 {
        tick("after", i, &mut accepted, &mut refused);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !refused.is_empty(),
        "no broadcast was refused while Redis was away"
    );
    // What each member got: texts in order; direct messages and broadcasts apart.
    let mut lines = Vec::new();
    for (at, client) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        let mut got = if at == 1 {
            std::mem::take(&mut b_early)
        } else {
            Vec::new()
        };
        // Until every direct message is in and nothing more comes for 500 ms (C's requests,
        // refused while Redis was away, are retried with backoff).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match client.recv_timeout(Duration::from_millis(500)).await {
                Ok(Some(message)) => got.push(message.as_text().unwrap().to_string()),
                Ok(None) => {
                    let complete = got.contains(&text(direct - 1));
                    if complete || tokio::time::Instant::now() > deadline {
                        break;
                    }
                }
                Err(err) => panic!("client {at}: {err:?} after {} messages", got.len()),
            }
        }
        lines.push(got);
    }
    // C's session stayed reachable through the proxy after Redis lost its records: its node
    // wrote them again. Direct messages: all of them, once, in order, for all three.
    for (at, got) in lines.iter().enumerate() {
        let direct_got: Vec<&String> = got
            .iter()
            .filter(|line| !line.contains('📣') && !line.starts_with("probe"))
            .collect();
        let expected: Vec<String> = (0..direct).map(text).collect();
        let missing: Vec<&String> = expected
            .iter()
            .filter(|line| !direct_got.contains(line))
            .collect();
        assert_eq!(
            direct_got,
            expected.iter().collect::<Vec<_>>(),
            "client {at}: {} of {}, missing {missing:?}",
            direct_got.len(),
            expected.len()
        );
    }
    // Broadcasts: A (node 0, the sender's) and B (node 1) saw the same ones in the same order,
    // none twice, none that was refused, and every one accepted after the recovery.
    let room_of = |got: &Vec<String>| -> Vec<String> {
        got.iter()
            .filter(|line| line.contains('📣') || line.starts_with("probe"))
            .cloned()
            .collect()
    };
    let (room_a, room_b) = (room_of(&lines[0]), room_of(&lines[1]));
    for room in [&room_a, &room_b] {
        let mut unique = room.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), room.len(), "a broadcast arrived twice");
        assert!(room.iter().all(|line| !refused.contains(line)));
        for i in 0..50 {
            assert!(room.contains(&format!("after {i} 📣")), "after {i} missing");
        }
    }
    // B may have missed what node 0 published while node 1 was resubscribing (the probes
    // cover that): compare the broadcasts both have.
    let common_a: Vec<&String> = room_a.iter().filter(|line| room_b.contains(line)).collect();
    let common_b: Vec<&String> = room_b.iter().filter(|line| room_a.contains(line)).collect();
    assert_eq!(common_a, common_b, "the two members saw different orders");
    // Everything accepted before the outage reached both.
    for i in 0..30 {
        let line = format!("before {i} 📣");
        assert!(
            room_a.contains(&line) && room_b.contains(&line),
            "{line} missing"
        );
    }
    assert_eq!(c.stats().gaps, 0);
}
