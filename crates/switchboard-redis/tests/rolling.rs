//! Rolling deploys without resets: every node of the cluster is shut down gracefully and
//! replaced, one after another, under steady traffic both ways; the nodes hand their sessions
//! over, and the clients go on (issue 10, "Rolling deploys without resets").
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Cluster, text};
use switchboard_client::{Message as ClientMessage, Transport};

async fn rolling_restart_under_traffic(transport: Transport) {
    let mut cluster = Cluster::start(3, |builder| builder).await;
    let current = cluster.follow();
    let mut client = cluster.through_proxy(transport).connect().await.unwrap();
    let sid = client.sid().to_string();
    let done = Arc::new(AtomicBool::new(false));
    // Down: the application sends a numbered message every 2 ms, from whichever node holds the
    // session; a send refused by a session that moved is made again on the next node.
    let producer = tokio::spawn({
        let mut current = current.clone();
        let done = done.clone();
        async move {
            let mut i = 0usize;
            while !done.load(Ordering::SeqCst) {
                loop {
                    let session = current.live().await;
                    if session.send(switchboard::Message::text(text(i))).is_ok() {
                        break;
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            i
        }
    });
    // Up: the application takes every message the client sends, in order.
    let consumer = tokio::spawn({
        let mut current = current.clone();
        async move {
            let mut received = Vec::new();
            loop {
                let session = current.live().await;
                match tokio::time::timeout(Duration::from_secs(5), session.recv()).await {
                    Ok(Some(message)) => received.push(message.as_text().unwrap()),
                    Ok(None) => {}
                    Err(_) => return received,
                }
            }
        }
    });
    let sender = client.sender();
    let mut sent = 0usize;
    let mut down = Vec::new();
    let mut restarts = 0;
    let started = tokio::time::Instant::now();
    // About a second of traffic, a restart, and so on, for each of the three nodes; then a
    // second more.
    while restarts < 3 || started.elapsed() < Duration::from_secs(4) {
        let until = tokio::time::Instant::now() + Duration::from_millis(700);
        while tokio::time::Instant::now() < until {
            sender.send(ClientMessage::text(&text(sent))).unwrap();
            sent += 1;
            while let Some(message) = client.recv_timeout(Duration::from_millis(2)).await.unwrap() {
                down.push(message.as_text().unwrap().to_string());
            }
        }
        if restarts < 3 {
            cluster.restart(restarts).await;
            restarts += 1;
        }
    }
    done.store(true, Ordering::SeqCst);
    let produced = producer.await.unwrap();
    while down.len() < produced {
        match tokio::time::timeout(Duration::from_secs(20), client.recv()).await {
            Ok(Ok(message)) => down.push(message.as_text().unwrap().to_string()),
            other => panic!("{} of {produced} messages arrived: {other:?}", down.len()),
        }
    }
    client.wait_acked(Duration::from_secs(30)).await.unwrap();
    let up = consumer.await.unwrap();
    // Same session all along: no reset.
    assert_eq!(client.sid(), sid);
    let stats = client.stats();
    assert_eq!(stats.gaps, 0, "{stats:?}");
    // Down: every message once, in order.
    assert_eq!(down.len(), produced);
    for (i, message) in down.iter().enumerate() {
        assert_eq!(*message, text(i), "message {i} down");
    }
    // Up: likewise.
    assert_eq!(up.len(), sent, "{} of {sent} messages up", up.len());
    for (i, message) in up.iter().enumerate() {
        assert_eq!(*message, text(i), "message {i} up");
    }
    // The restart of its node moved the session at least once (a WebSocket client moves it
    // itself, too, each time it reconnects through the proxy).
    let handlers = current.handlers.load(Ordering::SeqCst);
    assert!(handlers >= 2, "{handlers} handlers");
    assert!(produced > 500 && sent > 500, "{produced} down, {sent} up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_rides_a_rolling_restart_of_all_three_nodes() {
    rolling_restart_under_traffic(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_polling_client_rides_a_rolling_restart_of_all_three_nodes() {
    rolling_restart_under_traffic(Transport::LongPoll).await;
}
