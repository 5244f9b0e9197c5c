//! No sticky sessions: a load balancer sends every request of a session to the next of three
//! nodes, and every message still arrives exactly once, in order, both ways (issue 10's first
//! test), through real Redis and real servers.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Cluster, no_keep_alive, payload_bytes, text};
use switchboard_client::{Client, Message as ClientMessage, Transport};

const COUNT: usize = 10_000;
const SHORT_POLL: Transport = Transport::ShortPoll {
    interval: Duration::from_millis(5),
};

fn server_message(i: usize) -> switchboard::Message {
    if i % 7 == 3 {
        switchboard::Message::binary(payload_bytes(i))
    } else {
        switchboard::Message::text(text(i))
    }
}

fn client_message(i: usize) -> ClientMessage {
    if i % 7 == 3 {
        ClientMessage::binary(payload_bytes(i))
    } else {
        ClientMessage::text(&text(i))
    }
}

/// Switches transports (and drops them) as the stream goes on. Every request and every socket
/// goes to the next node: a poll is forwarded to the session's owner, a WebSocket takes the
/// session over.
async fn step(client: &mut Client, i: usize) {
    match i {
        1_500 | 7_000 => client.switch(SHORT_POLL).await.unwrap(),
        3_000 | 8_500 => client.switch(Transport::LongPoll).await.unwrap(),
        5_000 | 6_500 | 8_000 | 9_000 => client.switch(Transport::WebSocket).await.unwrap(),
        4_500 | 6_000 | 9_500 => client.drop_transport_abruptly().await.unwrap(),
        _ => {}
    }
}

async fn connect(cluster: &Cluster) -> Client {
    cluster
        .through_proxy(Transport::LongPoll)
        .connect()
        .await
        .unwrap()
}

/// Every node served part of the session.
fn assert_spread(cluster: &Cluster) {
    let hits = cluster.proxy.hits();
    assert_eq!(hits.len(), cluster.nodes.len(), "{hits:?}");
    assert!(hits.iter().all(|(_, count)| *count >= 3), "{hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_to_the_client_across_three_nodes_round_robin() {
    let mut cluster = Cluster::start(3, |builder| builder).await;
    let mut current = cluster.follow();
    let mut client = connect(&cluster).await;
    // The application sends from whichever node holds the session now: a message refused by
    // a session that was handed over is sent again on the new one.
    let producer = tokio::spawn({
        let mut current = current.clone();
        async move {
            for i in 0..COUNT {
                loop {
                    let session = current.live().await;
                    while session.buffered().0 >= 2_000 && !session.is_closed() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if session.send(server_message(i)).is_ok() {
                        break;
                    }
                }
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    for i in 0..COUNT {
        step(&mut client, i).await;
        let message = tokio::time::timeout(Duration::from_secs(20), client.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} did not arrive"))
            .unwrap();
        if i % 7 == 3 {
            assert_eq!(
                message.as_binary().unwrap(),
                &payload_bytes(i)[..],
                "message {i}"
            );
        } else {
            assert_eq!(message.as_text().unwrap(), text(i), "message {i}");
        }
    }
    producer.await.unwrap();
    assert_eq!(
        client
            .recv_timeout(Duration::from_millis(300))
            .await
            .unwrap(),
        None
    );
    let stats = client.stats();
    assert_eq!((stats.received, stats.gaps), (COUNT as u64, 0), "{stats:?}");
    // Each of the four WebSockets landed on another node than the session's and took it over.
    let handlers = current.handlers.load(std::sync::atomic::Ordering::SeqCst);
    assert!(handlers >= 4, "{handlers} handlers");
    let session = current.live().await;
    assert!(session.handed_over());
    assert!(common::eventually(Duration::from_secs(10), || session.buffered().0 == 0).await);
    assert_spread(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_from_the_client_across_three_nodes_round_robin() {
    let mut cluster = Cluster::start(3, |builder| builder).await;
    let current = cluster.follow();
    let mut client = connect(&cluster).await;
    let consumer = tokio::spawn({
        let mut current = current.clone();
        async move {
            for i in 0..COUNT {
                let message = loop {
                    let session = current.live().await;
                    let received = tokio::time::timeout(Duration::from_secs(20), session.recv())
                        .await
                        .unwrap_or_else(|_| panic!("message {i} did not arrive"));
                    // `None`: this session was handed over; go on with the next handler.
                    if let Some(message) = received {
                        break message;
                    }
                };
                if i % 7 == 3 {
                    assert_eq!(
                        message.as_bytes().unwrap().as_ref(),
                        &payload_bytes(i)[..],
                        "message {i}"
                    );
                } else {
                    assert_eq!(message.as_text().unwrap(), text(i), "message {i}");
                }
            }
            let session = current.live().await;
            assert!(
                tokio::time::timeout(Duration::from_millis(300), session.recv())
                    .await
                    .is_err(),
                "a message arrived twice"
            );
        }
    });
    let sender = client.sender();
    for i in 0..COUNT {
        step(&mut client, i).await;
        sender.send(client_message(i)).unwrap();
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    client.wait_acked(Duration::from_secs(60)).await.unwrap();
    consumer.await.unwrap();
    assert_eq!(client.server_ack(), COUNT as u64);
    let handlers = current.handlers.load(std::sync::atomic::Ordering::SeqCst);
    assert!(handlers >= 4, "{handlers} handlers");
    assert_spread(&cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ended_is_unknown_on_every_node() {
    let mut cluster = Cluster::start(3, |builder| builder).await;
    let http = no_keep_alive();
    let sid = common::open(&http, &cluster.proxy.base).await;
    let session = cluster.next_session().await;
    // Every node answers a short poll of the session.
    for node in &cluster.nodes {
        let answer = http
            .get(format!("{}/poll?v=1&sid={sid}&wait=0", node.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    // A message sent on the owner is picked up through another node.
    session
        .send(switchboard::Message::text("한국어 👋"))
        .unwrap();
    let mut texts = Vec::new();
    for node in &cluster.nodes {
        let frames: serde_json::Value = http
            .get(format!("{}/poll?v=1&sid={sid}&wait=0&ack=0", node.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        texts.push(frames[0]["d"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(texts, ["한국어 👋"; 3]);
    session.close("done");
    session.closed().await;
    // Once the close frame has gone out and the session is forgotten, no node knows it.
    let frames: serde_json::Value = http
        .get(format!(
            "{}/poll?v=1&sid={sid}&wait=0&ack=1",
            cluster.nodes[0].base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(frames[0]["t"], "close", "{frames}");
    // A session id nobody owns gets 404 from every node, forwarded or not.
    let unknown = "0123456789abcdef0123456789abcdef";
    for node in &cluster.nodes {
        let answer = http
            .get(format!("{}/poll?v=1&sid={unknown}&wait=0", node.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404);
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "unknown_session");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_body_for_another_nodes_session_is_refused_as_such_not_as_unknown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start(2, |builder| builder).await;
    let http = no_keep_alive();
    let sid = common::open(&http, &cluster.nodes[0].base).await;
    // Chunked, so no length is declared up front: the body is found too large while read.
    let mut stream = tokio::net::TcpStream::connect(cluster.nodes[1].addr)
        .await
        .unwrap();
    // Above max_body (1 MiB by default).
    let chunk = "x".repeat(1_100_000);
    let request = format!(
        "POST /rt/poll?v=1&sid={sid} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        cluster.nodes[1].addr,
        chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .ok();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}
